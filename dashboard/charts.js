// Thin wrapper over uPlot: themed line charts that size themselves to their box.
import uPlot from "./vendor/uPlot.esm.js";
import { fmtNum } from "./util.js";

export const PALETTE = ["#4e8fe0", "#f28e2b", "#e15759", "#3fb8af", "#59a14f", "#e6b730", "#b07aa1", "#ff9da7", "#9c755f", "#8f9bb3"];

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

function withAlpha(hex, a) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${a})`;
}

/** An axis of `axis`'s look with uPlot's own (time) tick labels. */
function timeAxis(axis) {
  const { values, ...rest } = axis;
  return { ...rest, labelFont: "11px system-ui, sans-serif" };
}

const axisValues = (u, vals) => vals.map((v) => (v == null ? "" : fmtNum(v)));

/**
 * createChart(box, {series:[{label, color?, dash?, width?, band?, faint?}], xLabel, height, bands,
 *                   xTime?, yLog?, syncKey?, hooks?, onSelect?})
 * Returns {setData(data), plot, destroy(), width()}; `box` gets data-points = number of x values.
 * xTime: x holds epoch seconds (time axis); yLog: log10 y scale; syncKey: uPlot cursor.sync key
 * shared by a page's charts; onSelect(min, max): a drag on x selected [min, max] in x units
 * (the chart does not zoom itself: the caller fetches the range).
 */
export function createChart(box, { series, xLabel = "step", height = 220, bands, legend = true, xTime = false, yLog = false, syncKey, hooks, onSelect } = {}) {
  const text = cssVar("--muted", "#888");
  const grid = cssVar("--grid", "rgba(128,128,128,0.15)");
  const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, values: axisValues, font: "11px system-ui, sans-serif" };
  const width = () => Math.max(160, Math.floor(box.clientWidth || box.parentElement?.clientWidth || 400));
  const opts = {
    width: width(),
    height,
    scales: { x: { time: xTime }, y: yLog ? { distr: 3, log: 10 } : {} },
    legend: { show: legend, live: true },
    cursor: {
      drag: { x: true, y: false, setScale: !onSelect },
      points: { size: 6 },
      ...(syncKey ? { sync: { key: syncKey, setSeries: false } } : {}),
    },
    hooks: { ...(hooks || {}) },
    axes: [
      xTime ? { ...timeAxis(axis), label: xLabel, labelSize: 16 } : { ...axis, label: xLabel, labelSize: 16, labelFont: "11px system-ui, sans-serif" },
      { ...axis, size: 56 },
    ],
    series: [
      { label: xLabel, value: (u, v) => (v == null ? "–" : xTime ? new Date(v * 1000).toLocaleString() : fmtNum(v)) },
      ...series.map((s, i) => {
        const c = s.color || color(i);
        return {
          label: s.label,
          stroke: s.band ? withAlpha(c, 0.35) : s.faint ? withAlpha(c, 0.28) : c,
          width: s.width ?? (s.band || s.faint ? 1 : 1.75),
          dash: s.dash,
          spanGaps: false,
          points: s.band || s.faint ? { show: false } : { size: 4, fill: c },
          value: (u, v) => (v == null ? "–" : fmtNum(v)),
        };
      }),
    ],
  };
  if (onSelect) {
    opts.hooks.setSelect = [...(opts.hooks.setSelect || []), (u) => {
      if (u.select.width < 4) return;
      const lo = u.posToVal(u.select.left, "x");
      const hi = u.posToVal(u.select.left + u.select.width, "x");
      u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
      onSelect(lo, hi);
    }];
  }
  if (bands) opts.bands = bands.map((b) => ({ series: b.series, fill: withAlpha(b.color, 0.16) }));
  const empty = [[], ...series.map(() => [])];
  const plot = new uPlot(opts, empty, box);
  box.dataset.points = "0";
  box._plot = plot; // for tests and bench/dashboard.py
  let ro = null;
  if (typeof ResizeObserver !== "undefined") {
    let lastW = opts.width;
    ro = new ResizeObserver(() => {
      const w = width();
      if (Math.abs(w - lastW) > 2) {
        lastW = w;
        plot.setSize({ width: w, height });
      }
    });
    ro.observe(box);
  }
  return {
    plot,
    width,
    setData(data, resetScales = true) {
      plot.setData(data, resetScales);
      box.dataset.points = String(data[0].length);
    },
    destroy() {
      ro?.disconnect();
      plot.destroy();
    },
  };
}

/** Align several [xs, ys] series on a shared x (alignment gaps are spanned, real nulls stay gaps). */
export function joinSeries(list) {
  if (!list.length) return [[]];
  if (list.length === 1) return [list[0][0], list[0][1]];
  return uPlot.join(list.map(([xs, ys]) => [xs, ys]));
}

export { uPlot };
