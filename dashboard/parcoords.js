// Parallel coordinates in plain SVG (no library: an axis per param or metric, a polyline per run,
// a vertical brush per axis; about 150 lines against d3's 80 kB). Brushes are owned by the caller
// (sweep.js) so the scatter and the list share them: onBrush(axisKey, [lo, hi] | null).
import { fmtNum } from "./util.js";

const NS = "http://www.w3.org/2000/svg";
const M = { top: 34, bottom: 24, left: 60, right: 44 };

export function svg(tag, attrs = {}) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null) el.setAttribute(k, String(v));
  return el;
}

/**
 * An axis: {key, label, values: number|null per run (categories already numbered), categories?: [names]}.
 * scaleOf(axis, y0, y1) -> {y(v), v(y), ticks: [[value, label]]}; categories spread evenly.
 */
export function scaleOf(axis, y0, y1) {
  const vals = axis.values.filter((v) => v != null);
  let lo = vals.length ? Math.min(...vals) : 0;
  let hi = vals.length ? Math.max(...vals) : 1;
  if (axis.categories) { lo = 0; hi = Math.max(1, axis.categories.length - 1); }
  if (lo === hi) { lo -= 0.5; hi += 0.5; }
  const y = (v) => y0 + ((hi - v) / (hi - lo)) * (y1 - y0);
  const v = (py) => hi - ((py - y0) / (y1 - y0)) * (hi - lo);
  const ticks = axis.categories
    ? axis.categories.map((c, i) => [i, c === "" ? "(none)" : c])
    : [0, 0.25, 0.5, 0.75, 1].map((f) => { const t = lo + f * (hi - lo); return [t, fmtNum(Number(t.toPrecision(4)))]; });
  return { y, v, ticks, lo, hi };
}

/** Whether run i lies inside every brush. */
export function inside(axes, brushes, i) {
  for (const a of axes) {
    const b = brushes.get(a.key);
    if (!b) continue;
    const v = a.values[i];
    if (v == null || v < b[0] || v > b[1]) return false;
  }
  return true;
}

/** parcoords(host, {axes, runs, brushes, onBrush, height}) -> {svg}; call again to redraw. */
export function parcoords(host, { axes, runs, brushes, onBrush, height = 320 }) {
  const width = Math.max(360, host.clientWidth || 800);
  const root = svg("svg", { class: "parcoords", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "parallel coordinates" });
  const n = axes.length;
  const xAt = (j) => (n === 1 ? width / 2 : M.left + (j * (width - M.left - M.right)) / (n - 1));
  const y0 = M.top;
  const y1 = height - M.bottom;
  const scales = axes.map((a) => scaleOf(a, y0, y1));
  const colorAxis = axes[n - 1];
  const cs = scales[n - 1];
  const lines = svg("g", { class: "lines" });
  let selected = 0;
  runs.forEach((run, i) => {
    let d = "";
    let pen = false;
    axes.forEach((a, j) => {
      const v = a.values[i];
      if (v == null) { pen = false; return; }
      d += `${pen ? "L" : "M"}${xAt(j).toFixed(1)},${scales[j].y(v).toFixed(1)}`;
      pen = true;
    });
    if (!d) return;
    const on = inside(axes, brushes, i);
    if (on) selected++;
    const cv = colorAxis.values[i];
    const t = cv == null ? 0.5 : (cv - cs.lo) / (cs.hi - cs.lo || 1);
    const path = svg("path", { d, class: on ? "line on" : "line off", stroke: on ? `hsl(${(1 - t) * 220},70%,50%)` : null, "data-run": run.id });
    const title = svg("title");
    title.textContent = run.name || run.id;
    path.append(title);
    lines.append(path);
  });
  root.append(lines);
  axes.forEach((a, j) => {
    const x = xAt(j);
    const g = svg("g", { class: "axis", "data-axis": a.key, transform: `translate(${x},0)` });
    g.append(svg("line", { x1: 0, x2: 0, y1: y0, y2: y1 }));
    for (const [v, label] of scales[j].ticks) {
      const ty = scales[j].y(v);
      g.append(svg("line", { class: "tick", x1: -4, x2: 0, y1: ty, y2: ty }));
      const t = svg("text", { x: -7, y: ty + 3, "text-anchor": "end" });
      t.textContent = label;
      g.append(t);
    }
    const name = svg("text", { class: "name", x: 0, y: y0 - 14, "text-anchor": "middle" });
    name.textContent = a.label;
    g.append(name);
    const b = brushes.get(a.key);
    if (b) {
      const ya = scales[j].y(b[1]);
      const yb = scales[j].y(b[0]);
      g.append(svg("rect", { class: "brush", x: -9, width: 18, y: Math.min(ya, yb), height: Math.max(2, Math.abs(yb - ya)) }));
    }
    const area = svg("rect", { class: "brush-area", x: -14, width: 28, y: y0 - 4, height: y1 - y0 + 8, "data-axis": a.key });
    let start = null;
    let live = null;
    area.addEventListener("pointerdown", (e) => {
      const box = root.getBoundingClientRect();
      start = e.clientY - box.top;
      area.setPointerCapture(e.pointerId);
      live?.remove();
      live = svg("rect", { class: "brush drawing", x: -9, width: 18, y: start, height: 0 });
      g.append(live);
      e.preventDefault();
    });
    area.addEventListener("pointermove", (e) => {
      if (start == null) return;
      const yy = Math.min(y1, Math.max(y0, e.clientY - root.getBoundingClientRect().top));
      live.setAttribute("y", Math.min(start, yy));
      live.setAttribute("height", Math.abs(yy - start));
    });
    area.addEventListener("pointerup", (e) => {
      if (start == null) return;
      const yy = Math.min(y1, Math.max(y0, e.clientY - root.getBoundingClientRect().top));
      const s = start;
      start = null;
      if (Math.abs(yy - s) < 3) { onBrush(a.key, null); return; } // a click clears the axis
      const va = scales[j].v(Math.max(s, yy));
      const vb = scales[j].v(Math.min(s, yy));
      onBrush(a.key, [va, vb]);
    });
    g.append(area);
    root.append(g);
  });
  root.dataset.selected = String(selected);
  root.dataset.runs = String(runs.length);
  host.replaceChildren(root);
  return { svg: root };
}
