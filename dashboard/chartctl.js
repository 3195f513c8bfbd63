// Chart controls for a page of metric charts: smoothing (debiased EMA, the raw line faint behind
// it, as TensorBoard draws it), linear or log y, x as step / relative time / wall time / another
// metric of the run, one cursor synchronised across the page's charts, and zoom that fetches the
// zoomed step range at full resolution from the api. The page's choices and per-chart overrides
// live in the URL: smooth=0.6, y=log, x=step|rel|wall|metric:<name>, zoom=<from>..<to>,
// c.<metric>=smooth:0.9;y:log;x:wall.
import { api, numOrNull } from "./api.js";
import { color, createChart } from "./charts.js";
import { h } from "./util.js";

const SMOOTH_MAX = 0.99;
export const X_LABEL = { step: "step", rel: "relative time (s)", wall: "wall time" };

/** TensorBoard's smoothing: an EMA debiased at the start (weight 0 = the raw values); gaps stay gaps. */
export function ema(ys, weight) {
  if (!(weight > 0)) return ys.slice();
  const out = new Array(ys.length);
  let last = 0;
  let n = 0;
  for (let i = 0; i < ys.length; i++) {
    const y = ys[i];
    if (y == null || !Number.isFinite(y)) { out[i] = null; continue; }
    last = last * weight + (1 - weight) * y;
    n++;
    out[i] = last / (1 - weight ** n);
  }
  return out;
}

/** Value of the series (steps ascending) at `step`, linear between neighbours; null outside. */
function interpAt(steps, values, step) {
  let lo = 0;
  let hi = steps.length - 1;
  if (hi < 0 || step < steps[0] || step > steps[hi]) return null;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (steps[mid] <= step) lo = mid; else hi = mid;
  }
  if (steps[lo] === step) return values[lo];
  if (steps[hi] === step) return values[hi];
  const a = values[lo];
  const b = values[hi];
  if (a == null || b == null) return null;
  return a + ((b - a) * (step - steps[lo])) / (steps[hi] - steps[lo]);
}

function parseOverride(text) {
  const o = {};
  for (const part of (text || "").split(";")) {
    const i = part.indexOf(":");
    if (i < 0) continue;
    const k = part.slice(0, i);
    const v = part.slice(i + 1);
    if (k === "smooth" && v !== "" && Number.isFinite(Number(v))) o.smooth = Math.min(SMOOTH_MAX, Math.max(0, Number(v)));
    else if (k === "y" && (v === "log" || v === "lin")) o.y = v;
    else if (k === "x" && v) o.x = v;
  }
  return o;
}

function formatOverride(o) {
  return ["smooth", "y", "x"].filter((k) => o[k] != null).map((k) => `${k}:${o[k]}`).join(";");
}

/** "<from>..<to>" (the URL's zoom=) -> [from, to], or null. */
/** The page-wide controls bar (smoothing, y, x, zoom), shared by the run and compare pages.
 * `onReset` backs out of the zoom; `render(zoom)` shows the current step range. */
export function controlsBar({ smoothIn, smoothOut, ySel, xSel, onReset }) {
  const zoomBtn = h("button.small", { type: "button", onclick: onReset }, "Reset zoom");
  const zoomInfo = h("span.muted.zoom-info");
  const el = h("div.chart-controls",
    h("label.field", h("span", "Smoothing"), h("div.inline", smoothIn, smoothOut)),
    h("label.field", h("span", "Y"), ySel),
    h("label.field", h("span", "X"), xSel),
    h("div.field", h("span", "Zoom"), h("div.inline", zoomBtn, zoomInfo)));
  function render(zoom) {
    zoomBtn.hidden = !zoom;
    zoomInfo.textContent = zoom ? `steps ${zoom[0]}–${zoom[1]}` : "drag on a chart";
  }
  return { el, render };
}

export function parseZoom(text) {
  const m = /^(-?\d+)\.\.(-?\d+)$/.exec(text || "");
  if (!m) return null;
  const a = Number(m[1]);
  const b = Number(m[2]);
  return a < b ? [a, b] : null;
}

/**
 * createChartControls(ctx, {runId, metricNames}) -> controller for one run page.
 *   controller.bar          the page-wide control row
 *   controller.chart(box, name, {height}) -> chart with setData([xs, ys], ts), width(), destroy()
 *   controller.setRunStart(ts)   t0 of relative time (the run's created_at)
 */
export function createChartControls(ctx, { runId, metricNames }) {
  const p = ctx.params;
  const page = {
    smooth: Math.min(SMOOTH_MAX, Math.max(0, Number(p.get("smooth")) || 0)),
    y: p.get("y") === "log" ? "log" : "lin",
    x: p.get("x") || "step",
  };
  const overrides = new Map();
  for (const [k, v] of p) if (k.startsWith("c.")) overrides.set(k.slice(2), parseOverride(v));
  let zoom = parseZoom(p.get("zoom"));
  let runStart = null;
  const charts = new Set();
  const xSeries = new Map(); // `${metric}|${zoom}` -> Promise<{steps, values}>
  const syncKey = `rs-run-${runId}-${Math.random().toString(36).slice(2, 8)}`;

  function syncUrl() {
    const q = new URLSearchParams(location.hash.split("?")[1] || "");
    const set = (k, v) => (v == null || v === "" ? q.delete(k) : q.set(k, v));
    set("smooth", page.smooth ? String(page.smooth) : null);
    set("y", page.y === "log" ? "log" : null);
    set("x", page.x === "step" ? null : page.x);
    set("zoom", zoom ? `${zoom[0]}..${zoom[1]}` : null);
    for (const k of [...q.keys()]) if (k.startsWith("c.")) q.delete(k);
    for (const [name, o] of overrides) if (formatOverride(o)) q.set(`c.${name}`, formatOverride(o));
    ctx.setQuery(q);
  }

  function xOptions(select, withPage) {
    const cur = select.value;
    const names = metricNames();
    select.replaceChildren(
      ...(withPage ? [h("option", { value: "" }, "x: page")] : []),
      h("option", { value: "step" }, "step"),
      h("option", { value: "rel" }, "relative time"),
      h("option", { value: "wall" }, "wall time"),
      ...names.map((n) => h("option", { value: `metric:${n}` }, `metric: ${n}`)),
    );
    if ([...select.options].some((o) => o.value === cur)) select.value = cur;
  }

  // --- the page's bar ---
  const smoothIn = h("input", { type: "range", min: 0, max: SMOOTH_MAX, step: 0.01, value: page.smooth, "aria-label": "smoothing" });
  const smoothOut = h("output.smooth-val", page.smooth.toFixed(2));
  smoothIn.addEventListener("input", () => {
    page.smooth = Number(smoothIn.value);
    smoothOut.textContent = page.smooth.toFixed(2);
    renderAll();
    syncUrl();
  });
  const ySel = h("select", { "aria-label": "y scale", onchange: () => { page.y = ySel.value; renderAll(); syncUrl(); } },
    h("option", { value: "lin" }, "linear"), h("option", { value: "log" }, "log"));
  ySel.value = page.y;
  const xSel = h("select", { "aria-label": "x axis", onfocus: () => xOptions(xSel, false), onchange: () => { page.x = xSel.value; renderAll(); syncUrl(); } });
  xOptions(xSel, false);
  if (![...xSel.options].some((o) => o.value === page.x)) xSel.append(h("option", { value: page.x }, page.x));
  xSel.value = page.x;
  const controls = controlsBar({ smoothIn, smoothOut, ySel, xSel, onReset: () => setZoom(null) });
  const bar = controls.el;
  const renderZoomInfo = () => controls.render(zoom);
  renderZoomInfo();

  function setZoom(z) {
    zoom = z;
    renderZoomInfo();
    syncUrl();
    for (const c of charts) c.zoomChanged();
  }

  // The x choices list the run's metrics: refreshed when a chart joins the page (and on focus).
  let namesKey = "";
  function refreshXChoices() {
    const key = metricNames().join("\u0000");
    if (key === namesKey) return;
    namesKey = key;
    xOptions(xSel, false);
    for (const c of charts) xOptions(c.xSelect, true);
  }

  function renderAll() {
    for (const c of charts) c.render();
  }

  function xMetric(name) {
    const key = `${name}|${zoom ? zoom.join("..") : ""}`;
    let pr = xSeries.get(key);
    if (!pr) {
      const params = { max_points: 4000 };
      if (zoom) { params.from_step = zoom[0]; params.to_step = zoom[1]; }
      pr = api.series(runId, name, params).then((r) => ({ steps: r.steps, values: r.values.map(numOrNull) }));
      xSeries.set(key, pr);
      pr.catch(() => xSeries.delete(key));
    }
    return pr;
  }

  class ControlledChart {
    constructor(box, name, { height = 200 } = {}) {
      this.box = box;
      this.name = name;
      this.height = height;
      this.xs = [];
      this.ys = [];
      this.ts = [];
      this.zoomed = null; // {range, xs, ys, ts} at full resolution
      this.xm = null; // {name, steps, values} of the metric on x
      this.config = "";
      this.plot = null;
      this.fetchSeq = 0;
      this.buildOverrideRow();
      charts.add(this);
      namesKey = "";
      refreshXChoices();
      this.zoomChanged();
    }

    opts() {
      const o = overrides.get(this.name) || {};
      return { smooth: o.smooth ?? page.smooth, y: o.y ?? page.y, x: o.x ?? page.x };
    }

    buildOverrideRow() {
      const o = overrides.get(this.name) || {};
      const sm = h("input.small-num", { type: "number", min: 0, max: SMOOTH_MAX, step: 0.05, placeholder: "page", value: o.smooth ?? "", "aria-label": `smoothing of ${this.name}` });
      const y = h("select", { "aria-label": `y scale of ${this.name}` }, h("option", { value: "" }, "y: page"), h("option", { value: "lin" }, "linear"), h("option", { value: "log" }, "log"));
      y.value = o.y ?? "";
      const x = h("select", { "aria-label": `x axis of ${this.name}`, onfocus: () => xOptions(x, true) });
      xOptions(x, true);
      if (o.x && ![...x.options].some((opt) => opt.value === o.x)) x.append(h("option", { value: o.x }, o.x));
      x.value = o.x ?? "";
      const apply = () => {
        const next = {};
        if (sm.value !== "" && Number.isFinite(Number(sm.value))) next.smooth = Math.min(SMOOTH_MAX, Math.max(0, Number(sm.value)));
        if (y.value) next.y = y.value;
        if (x.value) next.x = x.value;
        if (formatOverride(next)) overrides.set(this.name, next); else overrides.delete(this.name);
        this.render();
        syncUrl();
      };
      sm.addEventListener("change", apply);
      y.addEventListener("change", apply);
      x.addEventListener("change", apply);
      this.row = h("div.chart-ctl", { hidden: !formatOverride(o) }, sm, y, x);
      this.xSelect = x;
      const toggle = h("button.icon.small.ctl-toggle", { type: "button", title: "this chart's smoothing, y scale and x axis", "aria-label": `controls of ${this.name}`,
        onclick: () => { this.row.hidden = !this.row.hidden; } }, "⚙");
      this.box.before(this.row);
      this.box.closest(".chart-card")?.querySelector("header")?.append(toggle);
      this.toggle = toggle;
    }

    width() {
      return Math.max(160, Math.floor(this.box.clientWidth || this.box.parentElement?.clientWidth || 400));
    }

    /** The card's data: steps, values (numbers or null) and each point's time in epoch seconds. */
    setData(data, ts) {
      this.xs = data[0];
      this.ys = data[1];
      this.ts = ts || [];
      if (!this.zoomed) this.render();
    }

    zoomChanged() {
      const seq = ++this.fetchSeq;
      if (!zoom) {
        this.zoomed = null;
        delete this.box.dataset.zoom;
        this.render();
        return;
      }
      const range = zoom.slice();
      this.box.dataset.zoom = "loading";
      api.series(runId, this.name, { from_step: range[0], to_step: range[1], max_points: Math.max(200, this.width()) }).then((r) => {
        if (seq !== this.fetchSeq) return;
        this.zoomed = { range, xs: r.steps, ys: r.values.map(numOrNull), ts: r.timestamps || [], downsampled: r.downsampled };
        this.box.dataset.zoom = `${range[0]}..${range[1]}`;
        this.box.dataset.zoomDownsampled = String(!!r.downsampled);
        this.render();
      }).catch((e) => {
        if (seq !== this.fetchSeq) return;
        this.zoomed = { range, xs: [], ys: [], ts: [] };
        this.box.dataset.zoom = `${range[0]}..${range[1]}`;
        if (e.status !== 404) console.warn(`zoom of ${this.name}: ${e.message}`);
        this.render();
      });
    }

    ensurePlot(o) {
      const xKind = o.x.startsWith("metric:") ? "metric" : o.x;
      const config = `${xKind}|${o.x}|${o.y}|${o.smooth > 0}`;
      if (this.plot && config === this.config) return;
      this.plot?.destroy();
      this.box.replaceChildren();
      this.config = config;
      const label = xKind === "metric" ? o.x.slice("metric:".length) : X_LABEL[o.x] || o.x;
      const smoothed = o.smooth > 0;
      this.plot = createChart(this.box, {
        series: smoothed ? [{ label: `${this.name} (raw)`, faint: true, color: color(0) }, { label: this.name, color: color(0) }] : [{ label: this.name }],
        xLabel: label,
        height: this.height,
        xTime: o.x === "wall",
        yLog: o.y === "log",
        syncKey,
        onSelect: (lo, hi) => this.selected(lo, hi),
      });
      this.plot.plot.over.addEventListener("dblclick", () => { if (zoom) setZoom(null); });
      this.box.dataset.x = o.x;
      this.box.dataset.y = o.y;
    }

    /** A drag selected [lo, hi] in x units: zoom the page to the steps of the points inside. */
    selected(lo, hi) {
      const o = this.opts();
      if (o.x === "step") {
        const a = Math.ceil(lo);
        const b = Math.floor(hi);
        if (b > a) setZoom([a, b]);
        return;
      }
      const d = this.plot.plot.data;
      let a = Infinity;
      let b = -Infinity;
      for (let i = 0; i < d[0].length; i++) {
        if (d[0][i] >= lo && d[0][i] <= hi) {
          const s = this.shownSteps[i];
          if (s < a) a = s;
          if (s > b) b = s;
        }
      }
      if (b > a) setZoom([a, b]);
    }

    render() {
      const o = this.opts();
      this.ensurePlot(o);
      const src = this.zoomed || this;
      let steps = src.xs;
      let ys = src.ys;
      if (o.y === "log") ys = ys.map((v) => (v != null && v > 0 ? v : null));
      let sm = o.smooth > 0 ? ema(ys, o.smooth) : null;
      let x;
      if (o.x === "step") x = steps;
      else if (o.x === "rel" || o.x === "wall") {
        const ts = src.ts;
        if (ts.length !== steps.length) { x = []; ys = []; sm = sm && []; steps = []; }
        else {
          const t0 = o.x === "rel" ? (runStart ?? ts[0] ?? 0) : 0;
          x = ts.map((t) => t - t0);
        }
      } else if (o.x.startsWith("metric:")) {
        const other = o.x.slice("metric:".length);
        const key = `${other}|${zoom ? zoom.join("..") : ""}`;
        if (!this.xm || this.xm.key !== key) {
          this.xm = { key, steps: [], values: [] };
          xMetric(other).then((r) => { if (this.xm?.key === key) { this.xm = { key, ...r }; this.render(); } }, () => {});
        }
        const xv = steps.map((s) => interpAt(this.xm.steps, this.xm.values, s));
        const idx = [];
        for (let i = 0; i < xv.length; i++) if (xv[i] != null) idx.push(i);
        idx.sort((a, b) => xv[a] - xv[b] || steps[a] - steps[b]);
        x = idx.map((i) => xv[i]);
        ys = idx.map((i) => ys[i]);
        if (sm) sm = idx.map((i) => sm[i]);
        steps = idx.map((i) => steps[i]);
      } else x = steps;
      this.shownSteps = steps;
      this.plot.setData(sm ? [x, ys, sm] : [x, ys]);
      this.box.dataset.smooth = String(o.smooth);
      if (this.zoomed) this.plot.plot.setScale("x", { min: x.length ? x[0] : 0, max: x.length ? x[x.length - 1] : 1 });
    }

    destroy() {
      charts.delete(this);
      this.fetchSeq++;
      this.plot?.destroy();
      this.row.remove();
      this.toggle.remove();
    }
  }

  return {
    bar,
    chart: (box, name, o) => new ControlledChart(box, name, o),
    setRunStart(ts) {
      if (ts !== runStart) { runStart = ts; if (page.x === "rel" || [...overrides.values()].some((o) => o.x === "rel")) renderAll(); }
    },
    destroy() {
      for (const c of [...charts]) c.destroy();
    },
  };
}
