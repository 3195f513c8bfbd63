// A param-vs-metric scatter in plain SVG: a point per run, a rectangle brush that sets the
// brushes of both axes (the same brushes as parcoords.js, so each view filters the other).
import { inside, scaleOf, svg } from "./parcoords.js";

const M = { top: 16, bottom: 36, left: 64, right: 16 };

/** scatter(host, {x, y, axes, runs, brushes, onBrush, height}): x and y are axes of `axes`. */
export function scatter(host, { x, y, axes, runs, brushes, onBrush, height = 320 }) {
  const width = Math.max(320, host.clientWidth || 480);
  const root = svg("svg", { class: "scatter", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${y.label} against ${x.label}` });
  // scaleOf works top-down (y); x reuses it by mapping [left, right] onto it reversed.
  const sy = scaleOf(y, M.top, height - M.bottom);
  const sx = scaleOf(x, width - M.right, M.left);
  const px = (v) => sx.y(v);
  const vx = (p) => sx.v(p);
  const frame = svg("g", { class: "axis" });
  frame.append(svg("line", { x1: M.left, x2: width - M.right, y1: height - M.bottom, y2: height - M.bottom }));
  frame.append(svg("line", { x1: M.left, x2: M.left, y1: M.top, y2: height - M.bottom }));
  for (const [v, label] of sx.ticks) {
    const t = svg("text", { x: px(v), y: height - M.bottom + 14, "text-anchor": "middle" });
    t.textContent = label;
    frame.append(t);
  }
  for (const [v, label] of sy.ticks) {
    const t = svg("text", { x: M.left - 6, y: sy.y(v) + 3, "text-anchor": "end" });
    t.textContent = label;
    frame.append(t);
  }
  const xl = svg("text", { class: "name", x: (M.left + width - M.right) / 2, y: height - 6, "text-anchor": "middle" });
  xl.textContent = x.label;
  const yl = svg("text", { class: "name", x: 12, y: M.top + (height - M.top - M.bottom) / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${M.top + (height - M.top - M.bottom) / 2})` });
  yl.textContent = y.label;
  frame.append(xl, yl);
  root.append(frame);
  const dots = svg("g", { class: "dots" });
  runs.forEach((run, i) => {
    const a = x.values[i];
    const b = y.values[i];
    if (a == null || b == null) return;
    const on = inside(axes, brushes, i);
    const c = svg("circle", { cx: px(a).toFixed(1), cy: sy.y(b).toFixed(1), r: on ? 4.5 : 3, class: on ? "dot on" : "dot off", "data-run": run.id });
    const title = svg("title");
    title.textContent = `${run.name || run.id}: ${x.label}=${x.categories ? x.categories[a] : a}, ${y.label}=${b}`;
    c.append(title);
    dots.append(c);
  });
  root.append(dots);
  const bx = brushes.get(x.key);
  const by = brushes.get(y.key);
  if (bx || by) {
    const x0 = bx ? px(bx[0]) : M.left;
    const x1 = bx ? px(bx[1]) : width - M.right;
    const y0 = by ? sy.y(by[1]) : M.top;
    const y1 = by ? sy.y(by[0]) : height - M.bottom;
    root.append(svg("rect", { class: "brush", x: Math.min(x0, x1), y: Math.min(y0, y1), width: Math.abs(x1 - x0), height: Math.abs(y1 - y0) }));
  }
  const area = svg("rect", { class: "brush-area", x: M.left, y: M.top, width: width - M.left - M.right, height: height - M.top - M.bottom });
  let start = null;
  let live = null;
  const at = (e) => {
    const r = root.getBoundingClientRect();
    return [Math.min(width - M.right, Math.max(M.left, e.clientX - r.left)), Math.min(height - M.bottom, Math.max(M.top, e.clientY - r.top))];
  };
  area.addEventListener("pointerdown", (e) => {
    start = at(e);
    area.setPointerCapture(e.pointerId);
    live?.remove();
    live = svg("rect", { class: "brush drawing", x: start[0], y: start[1], width: 0, height: 0 });
    root.append(live);
    e.preventDefault();
  });
  area.addEventListener("pointermove", (e) => {
    if (!start) return;
    const p = at(e);
    live.setAttribute("x", Math.min(p[0], start[0]));
    live.setAttribute("y", Math.min(p[1], start[1]));
    live.setAttribute("width", Math.abs(p[0] - start[0]));
    live.setAttribute("height", Math.abs(p[1] - start[1]));
  });
  area.addEventListener("pointerup", (e) => {
    if (!start) return;
    const p = at(e);
    const s = start;
    start = null;
    if (Math.abs(p[0] - s[0]) < 3 && Math.abs(p[1] - s[1]) < 3) { onBrush(x.key, null); onBrush(y.key, null); return; }
    onBrush(x.key, [vx(Math.min(p[0], s[0])), vx(Math.max(p[0], s[0]))].sort((m, n) => m - n));
    onBrush(y.key, [sy.v(Math.max(p[1], s[1])), sy.v(Math.min(p[1], s[1]))]);
  });
  root.insertBefore(area, dots); // dots above the area keep their tooltips; the area takes drags
  host.replaceChildren(root);
  return { svg: root };
}
