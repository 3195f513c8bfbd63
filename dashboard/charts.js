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

const axisValues = (u, vals) => vals.map((v) => (v == null ? "" : fmtNum(v)));

/**
 * createChart(box, {series:[{label, color?, dash?, width?, band?}], xLabel, height, bands})
 * Returns {setData(data), plot, destroy(), width()}; `box` gets data-points = number of x values.
 */
export function createChart(box, { series, xLabel = "step", height = 220, bands, legend = true } = {}) {
  const text = cssVar("--muted", "#888");
  const grid = cssVar("--grid", "rgba(128,128,128,0.15)");
  const axis = { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, values: axisValues, font: "11px system-ui, sans-serif" };
  const width = () => Math.max(160, Math.floor(box.clientWidth || box.parentElement?.clientWidth || 400));
  const opts = {
    width: width(),
    height,
    scales: { x: { time: false } },
    legend: { show: legend, live: true },
    cursor: { drag: { x: true, y: false }, points: { size: 6 } },
    axes: [{ ...axis, label: xLabel, labelSize: 16, labelFont: "11px system-ui, sans-serif" }, { ...axis, size: 56 }],
    series: [
      { label: xLabel, value: (u, v) => (v == null ? "–" : fmtNum(v)) },
      ...series.map((s, i) => {
        const c = s.color || color(i);
        return {
          label: s.label,
          stroke: s.band ? withAlpha(c, 0.35) : c,
          width: s.width ?? (s.band ? 1 : 1.75),
          dash: s.dash,
          spanGaps: false,
          points: s.band ? { show: false } : { size: 4, fill: c },
          value: (u, v) => (v == null ? "–" : fmtNum(v)),
        };
      }),
    ],
  };
  if (bands) opts.bands = bands.map((b) => ({ series: b.series, fill: withAlpha(b.color, 0.16) }));
  const empty = [[], ...series.map(() => [])];
  const plot = new uPlot(opts, empty, box);
  box.dataset.points = "0";
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
