// Compare page: overlaid metric charts (one series per run, any number of runs), summary table,
// grouped mean ± std, images side by side (compare_images.js); #/compare?experiment=<name> is the
// sweep view of an experiment (sweep.js).
import { api, get, live, numOrNull } from "./api.js";
import { color, createChart, joinSeries } from "./charts.js";
import { X_LABEL, controlsBar, ema, parseZoom } from "./chartctl.js";
import { imagesSection } from "./compare_images.js";
import { mountSweep } from "./sweep.js";
import { clear, put, fmtNum, frameThrottle, h, isNum, message, rafThrottle, setBadge, statusBadge, throttle } from "./util.js";

const MAX_RUNS = 1000; // the /compare api's own bound
const DEFAULT_METRICS = 12;
const LEGEND_RUNS = 12; // above this, a chart's legend would be taller than the chart
const PARALLEL = 6; // series requests in flight per page
const BATCH_FROM = 8; // more runs than this: their series in batched reads (GET /api/v1/series)
const BATCH = 100;
const LIVE_EVERY_FRAME = 20; // up to this many runs, live points are drawn in the next frame

function chunks(list, n) {
  const out = [];
  for (let i = 0; i < list.length; i += n) out.push(list.slice(i, i + n));
  return out;
}

/** limiter(n)(fn) runs fn when fewer than n are pending: one queue for the page, first come first served,
 * so the first chart's series all arrive before the second chart's. */
function limiter(n) {
  let active = 0;
  const waiting = [];
  const next = () => {
    if (active >= n || !waiting.length) return;
    active++;
    const [fn, resolve, reject] = waiting.shift();
    fn().then(resolve, reject).finally(() => { active--; next(); });
  };
  return (fn) => new Promise((resolve, reject) => { waiting.push([fn, resolve, reject]); next(); });
}

/** Run fn over items with at most `n` promises pending. */
async function pool(items, n, fn) {
  let next = 0;
  const worker = async () => { while (next < items.length) { const i = next++; await fn(items[i], i); } };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}

export function mount(ctx) {
  const p = ctx.params;
  const ids = [...new Set((p.get("runs") || "").split(",").map((s) => s.trim()).filter(Boolean))].slice(0, MAX_RUNS);
  let metrics = (p.get("metrics") || "").split(",").filter(Boolean);
  const explicitMetrics = metrics.length > 0;
  const root = h("div.compare-page");
  ctx.view.append(root);
  let disposed = false;

  const head = h("div.page-head", h("div.title-row", h("h1", "Compare runs")));
  root.append(head);
  const sweepOf = p.get("experiment");
  if (!ids.length && sweepOf) {
    head.querySelector("h1").textContent = "Sweep";
    const sweepBox = h("section.section.sweep");
    root.append(sweepBox);
    return mountSweep(sweepBox, { experiment: sweepOf, ctx });
  }
  if (!ids.length) {
    root.append(h("div.empty.card", h("p", "Pick runs to compare: tick them in the ", h("a", { href: "#/" }, "runs list"), " and press Compare."),
      h("p.muted", "Or open ", h("code", "#/compare?runs=<id>,<id>&metrics=<name>,<name>"), ".")));
    return () => {};
  }

  const runsBar = h("div.run-legend");
  const metricPicker = h("div.metric-toggle");
  // Page-wide chart controls (chartctl.js draws the run page's): smoothing with the raw lines faint
  // behind, y scale, x as step / relative time / wall time, a shared cursor, drag-zoom to a step range.
  let smooth = Math.min(0.99, Math.max(0, Number(p.get("smooth")) || 0));
  let yLog = p.get("y") === "log";
  let xAxis = ["rel", "wall"].includes(p.get("x")) ? p.get("x") : "step";
  let zoom = parseZoom(p.get("zoom"));
  const syncKey = `rs-compare-${Math.random().toString(36).slice(2, 8)}`;
  const smoothIn = h("input", { type: "range", min: 0, max: 0.99, step: 0.01, value: smooth, "aria-label": "smoothing",
    oninput: () => { smooth = Number(smoothIn.value); smoothOut.textContent = smooth.toFixed(2); syncUrl(); for (const c of charts.values()) c.redraw(); } });
  const smoothOut = h("output.smooth-val", smooth.toFixed(2));
  const ySel = h("select", { "aria-label": "y scale", onchange: () => { yLog = ySel.value === "log"; syncUrl(); rebuildCharts(); } },
    h("option", { value: "lin" }, "linear"), h("option", { value: "log" }, "log"));
  ySel.value = yLog ? "log" : "lin";
  const xSel = h("select", { "aria-label": "x axis", onchange: () => { xAxis = xSel.value; syncUrl(); rebuildCharts(); } },
    h("option", { value: "step" }, "step"), h("option", { value: "rel" }, "relative time"), h("option", { value: "wall" }, "wall time"));
  xSel.value = xAxis;
  const bar = controlsBar({ smoothIn, smoothOut, ySel, xSel, onReset: () => setZoom(null) });
  const controls = bar.el;
  const renderZoomInfo = () => bar.render(zoom);
  renderZoomInfo();
  /** Zoom the page to steps [from, to] (null: back): every chart re-reads its runs' points in the range. */
  function setZoom(z) {
    zoom = z;
    renderZoomInfo();
    syncUrl();
    rebuildCharts();
  }
  const notice = h("div");
  const summaryBox = h("div.card.table-card", h("p.muted.pad", "Loading summary…"));
  const chartsGrid = h("div.charts");
  const aggBox = h("section.section");
  const imagesBox = h("section.section.compare-images", { hidden: true });
  root.append(runsBar, notice,
    h("section.section", h("div.section-head", h("h2", "Metrics"), metricPicker), controls, chartsGrid),
    h("section.section", h("h2", "Summary"), summaryBox),
    aggBox, imagesBox);

  const runs = new Map(); // id -> run details (or {id, missing:true})
  const colorOf = (id) => color(ids.indexOf(id));
  const charts = new Map(); // metric -> {chart, per: Map(runId -> {xs, ys, lastRest}), redraw, el}
  const fetchSeries = limiter(PARALLEL);
  const unsubs = [];

  function syncUrl() {
    const q = new URLSearchParams({ runs: ids.join(",") });
    if (explicitMetrics || metrics.length) q.set("metrics", metrics.join(","));
    if (smooth) q.set("smooth", String(smooth));
    if (yLog) q.set("y", "log");
    if (xAxis !== "step") q.set("x", xAxis);
    if (zoom) q.set("zoom", `${zoom[0]}..${zoom[1]}`);
    ctx.setQuery(q);
  }

  function renderRunsBar() {
    put(runsBar, ...ids.map((id) => {
      const r = runs.get(id);
      const others = ids.filter((x) => x !== id);
      const q = new URLSearchParams({ runs: others.join(",") });
      if (metrics.length) q.set("metrics", metrics.join(","));
      const badge = statusBadge(r?.status);
      badge.dataset.run = id;
      return h("span.run-chip", { style: { "--c": colorOf(id) } },
        h("span.swatch"), h("a", { href: `#/runs/${encodeURIComponent(id)}`, title: id }, r?.name || id), badge,
        others.length ? h("a.remove", { href: `#/compare?${q}`, title: "remove from the comparison" }, "×") : null);
    }));
  }

  function allMetricNames() {
    const names = new Set();
    for (const r of runs.values()) for (const m of Object.keys(r.metrics || {})) names.add(m);
    return [...names].sort((a, b) => a.localeCompare(b, undefined, { sensitivity: "base", numeric: true }));
  }

  function renderMetricPicker() {
    const names = allMetricNames();
    for (const m of metrics) if (!names.includes(m)) names.push(m);
    put(metricPicker, ...names.map((m) => {
      const on = metrics.includes(m);
      return h(`button.chip.toggle${on ? ".on" : ""}`, { type: "button", "aria-pressed": on ? "true" : "false", onclick: () => {
        metrics = on ? metrics.filter((x) => x !== m) : allMetricNames().filter((x) => x === m || metrics.includes(x));
        syncUrl();
        renderCharts();
        loadSummary();
        renderMetricPicker();
      } }, m);
    }));
  }

  // --- overlaid charts ---
  function dropChart(m) {
    const c = charts.get(m);
    c.dead = true;
    c.chart.destroy();
    c.el.remove();
    charts.delete(m);
  }

  /** Every chart again (a new y scale, x axis or zoom): its runs' series are read afresh. */
  function rebuildCharts() {
    for (const m of [...charts.keys()]) dropChart(m);
    renderCharts();
  }

  function renderCharts() {
    for (const m of [...charts.keys()]) if (!metrics.includes(m)) dropChart(m);
    for (const m of metrics) if (!charts.has(m)) addChart(m);
    // keep DOM in metric order
    for (const m of metrics) chartsGrid.append(charts.get(m).el);
    if (!metrics.length) chartsGrid.append(h("p.muted.empty-charts", "No metrics selected."));
    else chartsGrid.querySelector(".empty-charts")?.remove();
  }

  function addChart(m) {
    const box = h("div.chart", { dataset: { metric: m, points: "0" } });
    const sub = h("span.sub");
    const desc = [...runs.values()].map((r) => r.descriptions?.[m]).find(Boolean);
    const el = h("section.card.chart-card", { dataset: { metric: m } }, h("header", h("h3", { title: m }, m)),
      desc ? h("p.desc", { title: desc }, desc) : null, box, h("footer", sub));
    chartsGrid.append(el);
    const withMetric = ids.filter((id) => runs.get(id)?.metrics?.[m] || !runs.get(id));
    const per = new Map(ids.map((id) => [id, { xs: [], ys: [], ts: [], lastRest: -Infinity, loaded: false, queue: [] }]));
    const c = { chart: null, smoothed: null, per, el, sub, shown: [], dead: false };
    const label = (id) => runs.get(id)?.name || id;
    // Smoothed: every run's raw line faint (drawn first, so behind all the smoothed ones), then the smoothed lines.
    const build = () => {
      c.chart?.destroy();
      box.replaceChildren();
      c.smoothed = smooth > 0;
      const lines = ids.map((id) => ({ label: label(id), color: colorOf(id) }));
      c.chart = createChart(box, {
        series: c.smoothed ? [...ids.map((id) => ({ label: `${label(id)} (raw)`, color: colorOf(id), faint: true })), ...lines] : lines,
        xLabel: X_LABEL[xAxis], height: 220, legend: ids.length <= LEGEND_RUNS, yLog, xTime: xAxis === "wall", syncKey,
        onSelect: (lo, hi) => selected(c, lo, hi),
      });
      c.chart.plot.over.addEventListener("dblclick", () => { if (zoom) setZoom(null); });
      box.dataset.x = xAxis;
    };
    build();
    const chart = c.chart;
    c.redraw = rafThrottle(() => {
      if (c.dead) return;
      if ((smooth > 0) !== c.smoothed) build();
      // Each run's line on its own x (steps, or its points' times), smoothed on its own points, then joined.
      const raw = [];
      const shown = [];
      for (const id of ids) {
        const s = per.get(id);
        let x = s.xs;
        if (xAxis !== "step") {
          const t0 = xAxis === "rel" ? (runs.get(id)?.created_at ?? s.ts[0] ?? 0) : 0;
          x = s.ts.length === s.xs.length ? s.ts.map((t) => t - t0) : [];
        }
        const ys = x.length ? (yLog ? s.ys.map((v) => (v != null && v > 0 ? v : null)) : s.ys) : [];
        raw.push([x, ys]);
        shown.push([x, x.length ? s.xs : []]);
      }
      c.shown = shown;
      c.chart.setData(joinSeries(smooth > 0 ? [...raw, ...raw.map(([x, ys]) => [x, ema(ys, smooth)])] : raw));
      box.dataset.smooth = String(smooth);
    });
    // Live points of many runs: one re-join and redraw of every line a second, not every frame
    // (100 runs' join and draw is tens of ms; bench/dashboard.py measured 80% of frames busy).
    c.liveRedraw = ids.length > LIVE_EVERY_FRAME ? frameThrottle(c.redraw, 1000) : c.redraw;
    charts.set(m, c);
    // Many runs: fewer points each (the chart has only so many pixels), a few requests at a time.
    // Zoomed: the range at the chart's width, full resolution once the range has fewer points.
    const width = zoom ? Math.max(200, chart.width()) : Math.max(200, Math.round(chart.width() / (ids.length > 20 ? 2 : 1)));
    const range = zoom ? { from_step: zoom[0], to_step: zoom[1] } : {};
    if (zoom) box.dataset.zoom = "loading";
    let failed = 0;
    const took = (id, r) => {
      const s = per.get(id);
      s.xs = r.steps.slice();
      s.ys = r.values.map(numOrNull);
      s.ts = r.timestamps?.length === r.steps.length ? r.timestamps.slice() : [];
      s.lastRest = s.xs.length ? s.xs[s.xs.length - 1] : -Infinity;
      s.loaded = true;
      for (const slot of s.queue) appendPoints(c, id, slot);
      s.queue = [];
    };
    // A few runs, or time on x: one request each (text values and times included). Many: GET /series,
    // BATCH runs per request, drawn as each batch arrives.
    const reads = withMetric.length <= BATCH_FROM || xAxis !== "step"
      ? withMetric.map((id) => fetchSeries(() => api.series(id, m, { max_points: width, ...range })).then((r) => took(id, r)).catch((e) => { if (e.status !== 404) failed++; }))
      : chunks(withMetric, BATCH).map((part) => fetchSeries(() => get("/series", { metric: m, runs: part, max_points: width, ...range })).then((r) => {
        for (const id of part) {
          if (r.runs[id]) took(id, r.runs[id]);
          else { per.get(id).loaded = true; }
        }
        c.redraw();
      }).catch(() => { failed += part.length; }));
    Promise.all(reads).then(() => {
      if (disposed) return;
      const have = ids.filter((id) => per.get(id).xs.length).length;
      sub.textContent = `${have} of ${ids.length} runs${failed ? ` · ${failed} failed to load` : ""}`;
      if (zoom) box.dataset.zoom = `${zoom[0]}..${zoom[1]}`;
      c.redraw();
    });
  }

  /** A drag selected [lo, hi] in x units: zoom the page to the steps of the points inside (any run's). */
  function selected(c, lo, hi) {
    if (xAxis === "step") {
      const a = Math.ceil(lo);
      const b = Math.floor(hi);
      if (b > a) setZoom([a, b]);
      return;
    }
    let a = Infinity;
    let b = -Infinity;
    for (const [xs, steps] of c.shown) {
      for (let i = 0; i < xs.length; i++) {
        if (xs[i] >= lo && xs[i] <= hi) { a = Math.min(a, steps[i]); b = Math.max(b, steps[i]); }
      }
    }
    if (b > a) setZoom([a, b]);
  }

  function appendPoints(c, id, slot) {
    if (zoom) return; // while zoomed, live points are not added (as on the run page)
    const s = c.per.get(id);
    if (!s.loaded) { s.queue.push(slot); return; }
    for (let i = 0; i < slot.s.length; i++) {
      const x = slot.s[i];
      if (x <= s.lastRest) continue;
      if (s.xs.length && x <= s.xs[s.xs.length - 1]) continue; // keep x strictly increasing for the join
      if (s.ts.length === s.xs.length) s.ts.push(slot.t?.[i] ?? Date.now() / 1000);
      s.xs.push(x);
      s.ys.push(numOrNull(slot.v[i]));
    }
    c.liveRedraw();
  }

  // --- summary table ---
  async function loadSummary() {
    if (!metrics.length) { put(summaryBox, h("p.muted.pad", "No metrics selected.")); return; }
    let data = null;
    let note = null;
    try {
      data = (await api.compare(ids, metrics)).metrics;
    } catch (e) {
      note = e.status === 404 ? "The compare endpoint is not available yet; figures come from each run's summary." : `Compare failed (${e.message}); figures come from each run's summary.`;
      data = {};
      for (const m of metrics) {
        data[m] = {};
        for (const id of ids) if (runs.get(id)?.metrics?.[m]) data[m][id] = runs.get(id).metrics[m];
      }
    }
    if (disposed) return;
    const stats = ["last", "min", "max"];
    const best = {}; // metric -> {stat -> [min, max]} for highlighting
    for (const m of metrics) {
      best[m] = {};
      for (const s of stats) {
        const vals = ids.map((id) => data[m]?.[id]?.[s]).filter(isNum);
        const lo = Math.min(...vals);
        const hi = Math.max(...vals);
        best[m][s] = vals.length > 1 && lo !== hi ? [lo, hi] : null;
      }
    }
    const table = h("table.runs.summary",
      h("thead",
        h("tr", h("th", { rowSpan: 2 }, "Run"), metrics.map((m) => h("th.metric-group", { colSpan: 3, title: m }, m))),
        h("tr.sub", metrics.flatMap(() => stats.map((s) => h("th.num", s))))),
      h("tbody", ids.map((id) => h("tr",
        h("td.name", h("span.swatch", { style: { background: colorOf(id) } }), h("a", { href: `#/runs/${encodeURIComponent(id)}` }, runs.get(id)?.name || id)),
        metrics.flatMap((m) => stats.map((s) => {
          const v = data[m]?.[id]?.[s];
          const b = best[m][s];
          const cls = b && isNum(v) ? (v === b[0] ? ".lo" : v === b[1] ? ".hi" : "") : "";
          return h(`td.num${cls}`, { title: cls === ".lo" ? "lowest" : cls === ".hi" ? "highest" : null }, fmtNum(v ?? null));
        }))))));
    put(summaryBox, note ? h("p.muted.pad", note) : null, h("div.scroll", table));
  }

  // --- grouped aggregate ---
  let aggChart = null;
  function renderAggregate() {
    const experiments = [...new Set([...runs.values()].map((r) => r.experiment).filter(Boolean))];
    const keys = new Set();
    for (const r of runs.values()) {
      for (const k of Object.keys(r.tags || {})) keys.add(`tag.${k}`);
      for (const k of Object.keys(r.params || {})) keys.add(`param.${k}`);
    }
    const expSel = h("select", { "aria-label": "experiment" }, experiments.map((x) => h("option", { value: x }, x)));
    const metricSel = h("select", { "aria-label": "metric" }, allMetricNames().map((m) => h("option", { value: m }, m)));
    if (metrics.length) metricSel.value = metrics[0];
    const groupIn = h("input", { type: "text", list: "group-keys", placeholder: "tag.<key> or param.<key>", value: [...keys][0] || "", "aria-label": "group by" });
    const scopeSel = h("select", { "aria-label": "aggregate over" }, h("option", { value: "runs" }, "the compared runs"), h("option", { value: "experiment" }, "every run of the experiment"));
    const out = h("div");
    const go = h("button.primary", { type: "button", onclick: () => loadAggregate(expSel.value, metricSel.value, groupIn.value.trim(), out, scopeSel.value === "runs" ? ids : null) }, "Show");
    put(aggBox, 
      h("div.section-head", h("h2", "Grouped mean ± std"), h("span.muted", "per group of runs sharing a tag or param value")),
      h("div.toolbar",
        h("label.field", h("span", "Over"), scopeSel),
        h("label.field", h("span", "Experiment"), expSel),
        h("label.field", h("span", "Metric"), metricSel),
        h("label.field", h("span", "Group by"), groupIn, h("datalist", { id: "group-keys" }, [...keys].sort().map((k) => h("option", { value: k })))),
        h("div.field", h("span", "\u00a0"), go)),
      out);
    if (experiments.length && metricSel.value && groupIn.value) go.click();
  }

  async function loadAggregate(experiment, metric, groupBy, out, runIds) {
    aggChart?.destroy();
    aggChart = null;
    if (!experiment || !metric || !groupBy) {
      put(out, message("info", "Choose an experiment, a metric and a tag.<key> or param.<key> to group by."));
      return;
    }
    put(out, h("p.muted", "Loading…"));
    const box = h("div.chart.agg", { dataset: { metric } });
    const card = h("section.card.chart-card.wide", h("header", h("h3", `${metric} by ${groupBy}`)), box);
    let res;
    try {
      put(out, card);
      res = await api.aggregate({ experiment, metric, group_by: groupBy, max_points: Math.max(200, box.clientWidth || 600), runs: runIds ? runIds.join(",") : null });
    } catch (e) {
      if (disposed) return;
      put(out, message(e.status === 404 ? "info" : "error", e.status === 404
        ? `Grouped aggregates are not available (${e.message}).`
        : `Could not compute the aggregate: ${e.message}`));
      return;
    }
    if (disposed) return;
    const groups = (res.groups || []).slice(0, 8);
    if (!groups.length) { put(out, message("info", "No runs of this experiment have that metric and key.")); return; }
    const series = [];
    const bands = [];
    const tables = [];
    groups.forEach((g, i) => {
      const c = color(i);
      const label = `${g.key === "" || g.key == null ? "(none)" : g.key} · ${g.runs} run${g.runs === 1 ? "" : "s"}`;
      const mean = g.mean.map(numOrNull);
      const std = g.std.map((s) => (isNum(s) ? s : 0));
      series.push({ label, color: c }, { label: "+σ", color: c, band: true }, { label: "−σ", color: c, band: true });
      const base = 1 + i * 3;
      bands.push({ series: [base + 1, base + 2], color: c });
      const up = mean.map((m, j) => (m == null ? null : m + std[j]));
      const lo = mean.map((m, j) => (m == null ? null : m - std[j]));
      tables.push([g.steps, mean], [g.steps, up], [g.steps, lo]);
    });
    aggChart = createChart(box, { series, bands, height: 260 });
    box.classList.add("hide-band-legend");
    aggChart.setData(joinSeries(tables));
    box.dataset.groups = String(groups.length);
  }

  // --- live ---
  function onLive(msg) {
    if (disposed || msg.type !== "update" || !ids.includes(msg.run)) return;
    if (msg.files?.length) imagesSoon();
    if (msg.status) {
      const r = runs.get(msg.run);
      if (r) r.status = msg.status;
      const b = runsBar.querySelector(`.badge[data-run="${CSS.escape(msg.run)}"]`);
      if (b) setBadge(b, msg.status);
      summarySoon();
    }
    if (msg.metrics) {
      for (const [m, slot] of Object.entries(msg.metrics)) {
        const c = charts.get(m);
        if (!c) continue;
        if (slot.truncated) { refetchChart(m); continue; }
        appendPoints(c, msg.run, slot);
      }
      summarySoon();
    }
  }
  const summarySoon = throttle(() => !disposed && loadSummary(), 3000);
  let images = null; // compare_images.js, re-read when a run reports new files
  const imagesSoon = throttle(() => !disposed && images?.reload(), 2000);
  const refetchChart = throttle((m) => {
    if (!charts.has(m)) return;
    dropChart(m);
    renderCharts();
  }, 2000);

  // --- load ---
  pool(ids, PARALLEL, (id) => api.run(id).then((r) => runs.set(id, r)).catch((e) => runs.set(id, { id, missing: true, error: e.message }))).then(() => {
    if (disposed) return;
    const missing = ids.filter((id) => runs.get(id).missing);
    if (missing.length) notice.append(message("error", `Could not load ${missing.length} run${missing.length === 1 ? "" : "s"}: ${missing.join(", ")}`));
    for (const id of missing) runs.delete(id);
    if (!metrics.length) metrics = allMetricNames().slice(0, DEFAULT_METRICS);
    document.title = `Compare ${ids.length} runs · runstream`;
    renderRunsBar();
    renderMetricPicker();
    renderCharts();
    loadSummary();
    renderAggregate();
    images = imagesSection(imagesBox, { ids, runs, colorOf });
    const exps = [...new Set([...runs.values()].map((r) => r.experiment).filter(Boolean))];
    if (exps.length) head.querySelector(".title-row").append(...exps.slice(0, 3).map((x) => h("a.btn.small", { href: `#/compare?experiment=${encodeURIComponent(x)}` }, `Sweep of ${x}`)));
    // Many runs: one experiment subscription instead of a socket subscription per run.
    if (ids.length > 20 && exps.length <= 3) for (const x of exps) unsubs.push(live.subscribe({ experiment: x }, onLive));
    else for (const id of ids) unsubs.push(live.subscribe({ run: id }, onLive));
  });

  return () => {
    disposed = true;
    images?.cleanup();
    for (const u of unsubs) u();
    for (const m of [...charts.keys()]) dropChart(m);
    aggChart?.destroy();
  };
}
