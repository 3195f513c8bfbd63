// Sweep view of one experiment (compare page, #/compare?experiment=<name>): every run's params
// and one metric in parallel coordinates (parcoords.js) and a param-vs-metric scatter
// (scatter.js) that share their brushes; the brushed runs are the list below, best first,
// with links to the runs list filtered the same way (filters.js language) and to compare them.
import { api, live } from "./api.js";
import { field } from "./filters.js";
import { parcoords } from "./parcoords.js";
import { scatter } from "./scatter.js";
import { fmtNum, h, message, put, statusBadge, throttle } from "./util.js";

const PAGE = 1000;
const MAX_AXES = 8;

async function allRuns(experiment, metric, signal) {
  const out = [];
  for (let offset = 0; ; offset += PAGE) {
    const res = await api.runs({ experiment, metrics: metric, limit: PAGE, offset, order_by: "created_at" }, { signal });
    out.push(...res.runs);
    if (out.length >= res.total || !res.runs.length) return out;
  }
}

function numeric(values) {
  return values.every((v) => v == null || v === "" || Number.isFinite(Number(v)));
}

/** Axes for the params seen in the runs (numbers as numbers, text as categories) and the metric. */
function buildAxes(runs, paramKeys, metric, stat) {
  const axes = paramKeys.map((k) => {
    const raw = runs.map((r) => r.params?.[k]);
    if (numeric(raw)) return { key: `params.${k}`, label: k, kind: "param", name: k, values: raw.map((v) => (v == null || v === "" ? null : Number(v))) };
    const categories = [...new Set(raw.map((v) => v ?? ""))].sort();
    return { key: `params.${k}`, label: k, kind: "param", name: k, categories, values: raw.map((v) => categories.indexOf(v ?? "")) };
  });
  const mv = runs.map((r) => r.metrics?.[metric]?.[stat]);
  axes.push({ key: `metric.${metric}`, label: `${metric} (${stat})`, kind: "metric", name: metric, values: mv.map((v) => (typeof v === "number" && Number.isFinite(v) ? v : null)) });
  return axes;
}

/** The brushes as conditions of the runs list's filter language. */
export function brushFilters(axes, brushes) {
  const out = [];
  for (const a of axes) {
    const b = brushes.get(a.key);
    if (!b) continue;
    const f = a.kind === "metric" ? `${field("metric", a.name)}` : field("params", a.name);
    if (a.categories) {
      const cats = a.categories.filter((_, i) => i >= b[0] && i <= b[1]);
      if (cats.length === 1) out.push(`${f} = "${cats[0].replace(/"/g, '\\"')}"`);
      continue;
    }
    out.push(`${f} >= ${Number(b[0].toPrecision(6))} and ${f} <= ${Number(b[1].toPrecision(6))}`);
  }
  return out;
}

/** mountSweep(host, {experiment, ctx}) -> cleanup */
export function mountSweep(host, { experiment, ctx }) {
  const p = ctx.params;
  let metric = p.get("metric") || "";
  let stat = p.get("stat") || "last";
  let chosen = (p.get("axes") || "").split(",").filter(Boolean);
  let xParam = p.get("xparam") || "";
  const brushes = new Map();
  let runs = [];
  let axes = [];
  let disposed = false;
  let ctrl = null;

  const metricSel = h("select", { "aria-label": "sweep metric", onchange: () => { metric = metricSel.value; sync(); load(); } });
  const statSel = h("select", { "aria-label": "sweep statistic", onchange: () => { stat = statSel.value; sync(); load(); } },
    ["last", "min", "max", "mean"].map((s) => h("option", { value: s }, s)));
  statSel.value = stat;
  const axisChips = h("div.metric-toggle.axis-chips");
  const xSel = h("select", { "aria-label": "scatter x", onchange: () => { xParam = xSel.value; sync(); draw(); } });
  const clearBtn = h("button.small", { type: "button", onclick: () => { brushes.clear(); draw(); } }, "Clear brushes");
  const pcHost = h("div.parcoords-host");
  const scHost = h("div.scatter-host");
  const info = h("span.muted.sweep-info");
  const links = h("span.sweep-links");
  const listBox = h("div.card.table-card.sweep-list");
  const notice = h("div");
  host.append(
    h("div.section-head", h("h2", `Sweep · ${experiment}`), info),
    h("div.toolbar",
      h("label.field", h("span", "Metric"), metricSel),
      h("label.field", h("span", "Statistic"), statSel),
      h("div.field", h("span", "Param axes"), axisChips),
      h("label.field", h("span", "Scatter x"), xSel),
      h("div.field", h("span", "\u00a0"), h("div.inline", clearBtn, links))),
    notice,
    h("div.sweep-views", h("section.card.chart-card.pc-card", h("header", h("h3", "Parallel coordinates"), h("span.muted", "drag on an axis to brush")), pcHost),
      h("section.card.chart-card.sc-card", h("header", h("h3", "Scatter"), h("span.muted", "drag a rectangle")), scHost)),
    listBox);

  function sync() {
    const q = new URLSearchParams(location.hash.split("?")[1] || "");
    q.set("experiment", experiment);
    const set = (k, v) => (v ? q.set(k, v) : q.delete(k));
    set("metric", metric);
    set("stat", stat === "last" ? "" : stat);
    set("axes", chosen.join(","));
    set("xparam", xParam);
    ctx.setQuery(q);
  }

  function paramKeys() {
    const count = new Map();
    for (const r of runs) for (const k of Object.keys(r.params || {})) count.set(k, (count.get(k) || 0) + 1);
    return [...count.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([k]) => k);
  }

  function onBrush(key, range) {
    if (range) brushes.set(key, range); else brushes.delete(key);
    draw();
  }

  function draw() {
    if (disposed) return;
    const keys = paramKeys();
    if (!chosen.length) chosen = keys.slice(0, MAX_AXES - 1);
    put(axisChips, ...keys.map((k) => {
      const on = chosen.includes(k);
      return h(`button.chip.toggle${on ? ".on" : ""}`, { type: "button", "aria-pressed": on ? "true" : "false", onclick: () => {
        chosen = on ? chosen.filter((x) => x !== k) : keys.filter((x) => x === k || chosen.includes(x));
        brushes.delete(`params.${k}`);
        sync();
        draw();
      } }, k);
    }));
    const use = chosen.filter((k) => keys.includes(k));
    put(xSel, ...use.map((k) => h("option", { value: k }, k)));
    if (!use.includes(xParam)) xParam = use[0] || "";
    xSel.value = xParam;
    axes = buildAxes(runs, use, metric, stat);
    const ids = new Set(axes.map((a) => a.key));
    for (const k of [...brushes.keys()]) if (!ids.has(k)) brushes.delete(k);
    const { svg } = parcoords(pcHost, { axes, runs, brushes, onBrush });
    const xa = axes.find((a) => a.key === `params.${xParam}`);
    if (xa) scatter(scHost, { x: xa, y: axes[axes.length - 1], axes, runs, brushes, onBrush });
    else put(scHost, h("p.muted", "No param to put on x."));
    renderList(Number(svg.dataset.selected));
  }

  function renderList() {
    const m = axes[axes.length - 1];
    const picked = runs.map((r, i) => [r, i]).filter(([, i]) => axes.every((a) => {
      const b = brushes.get(a.key);
      return !b || (a.values[i] != null && a.values[i] >= b[0] && a.values[i] <= b[1]);
    }));
    picked.sort((a, b) => (m.values[a[1]] ?? Infinity) - (m.values[b[1]] ?? Infinity));
    info.textContent = `${picked.length} of ${runs.length} runs${brushes.size ? " brushed" : ""}`;
    const filters = brushFilters(axes, brushes);
    const q = new URLSearchParams({ experiment, metrics: metric });
    for (const f of filters) q.append("filter", f);
    const ids = picked.slice(0, 100).map(([r]) => r.id);
    put(links,
      h("a.btn.small", { href: `#/?${q}`, title: filters.join(" and ") || "every run" }, "Open in runs list"),
      h("a.btn.small", { href: `#/compare?${new URLSearchParams({ runs: ids.join(","), metrics: metric })}`, "aria-disabled": ids.length ? null : "true" },
        `Compare ${ids.length}`));
    const keys = axes.slice(0, -1);
    const shown = picked.slice(0, 200);
    put(listBox, h("div.scroll", h("table.runs.sweep-runs",
      h("thead", h("tr", h("th", "Status"), h("th", "Run"), keys.map((a) => h("th", a.label)), h("th.num", m.label))),
      h("tbody", shown.map(([r, i], rank) => h(`tr${rank === 0 && picked.length > 1 ? ".best" : ""}`, { dataset: { run: r.id } },
        h("td", statusBadge(r.status)),
        h("td.name", h("a", { href: `#/runs/${encodeURIComponent(r.id)}` }, r.name || r.id)),
        keys.map((a) => h("td.param", r.params?.[a.name] ?? "")),
        h("td.num", fmtNum(m.values[i]))))))),
    picked.length > shown.length ? h("p.muted.pad", `${shown.length} of ${picked.length} shown`) : null);
  }

  async function load() {
    ctrl?.abort();
    const c = new AbortController();
    ctrl = c;
    try {
      if (!metric) {
        // the experiment's metrics, from its newest run
        const first = await api.runs({ experiment, limit: 1 }, { signal: c.signal });
        const detail = first.runs[0] ? await api.run(first.runs[0].id, { signal: c.signal }) : null;
        const names = Object.keys(detail?.metrics || {}).sort();
        put(metricSel, ...names.map((n) => h("option", { value: n }, n)));
        metric = names.find((n) => /loss|mse|rmse|mae|error/i.test(n)) || names[0] || "";
        sync();
      } else if (![...metricSel.options].some((o) => o.value === metric)) metricSel.append(h("option", { value: metric }, metric));
      metricSel.value = metric;
      if (!metric) { put(notice, message("info", "No metrics logged in this experiment yet.")); return; }
      runs = await allRuns(experiment, metric, c.signal);
    } catch (e) {
      if (e.name === "AbortError" || disposed) return;
      put(notice, message("error", `Could not load the sweep: ${e.message}`));
      return;
    }
    if (disposed || ctrl !== c) return;
    put(notice);
    draw();
  }

  // names of the experiment's metrics for the picker (once loaded, from a run's summaries)
  api.runs({ experiment, limit: 1 }).then((r) => (r.runs[0] ? api.run(r.runs[0].id) : null)).then((d) => {
    if (disposed || !d) return;
    const names = Object.keys(d.metrics || {}).sort();
    put(metricSel, ...names.map((n) => h("option", { value: n }, n)));
    if (metric && !names.includes(metric)) metricSel.append(h("option", { value: metric }, metric));
    metricSel.value = metric;
  }).catch(() => {});

  const reloadSoon = throttle(() => { if (!disposed) load(); }, 5000);
  const unsub = live.subscribe({ experiment }, (msg) => {
    if (msg.type === "update" && (msg.status || msg.metrics?.[metric] || !runs.some((r) => r.id === msg.run))) reloadSoon();
  });
  load();
  return () => {
    disposed = true;
    ctrl?.abort();
    unsub();
  };
}
