// Runs list: experiment picker, sortable paged table with live status, metric and param columns,
// filters (filters.js), parents that expand to their children, grouping (groups.js), selection for compare.
import { api, ApiError, live } from "./api.js";
import { filterBar } from "./filters.js";
import { groupChoices, groupTable } from "./groups.js";
import {
  clear, put, duration, fmtNum, frameThrottle, h, isNum, message, relTime, setBadge, setText, statusBadge, STATUSES, tagChips, TERMINAL, throttle, timeEl,
} from "./util.js";

const selected = new Set(); // survives navigation within the session
const STATS = ["last", "min", "max"];
const PAGE_SIZES = [50, 100, 200, 500, 1000];

function storedMetrics(exp) {
  try {
    const v = localStorage.getItem(`runstream_metrics:${exp || "*"}`);
    return v == null ? null : v.split(",").filter(Boolean);
  } catch {
    return null;
  }
}

function storeMetrics(exp, metrics) {
  try { localStorage.setItem(`runstream_metrics:${exp || "*"}`, metrics.join(",")); } catch { /* private mode */ }
}

export function mount(ctx) {
  const p = ctx.params;
  const state = {
    experiment: p.get("experiment") || "",
    status: p.get("status") || "",
    metrics: (p.get("metrics") ?? "").split(",").filter(Boolean),
    metricsChosen: p.has("metrics"),
    params: (p.get("params") ?? "").split(",").filter(Boolean),
    filters: p.getAll("filter").filter(Boolean),
    group: p.get("group") || "",
    nest: p.get("nest") === "1",
    order: p.get("order") || "-created_at",
    offset: Math.max(0, Number(p.get("offset")) || 0),
    limit: PAGE_SIZES.includes(Number(p.get("limit"))) ? Number(p.get("limit")) : 100,
    total: 0,
  };
  if (!state.metricsChosen) {
    const stored = storedMetrics(state.experiment);
    if (stored) { state.metrics = stored; state.metricsChosen = true; }
  }
  let disposed = false;
  let rows = new Map(); // id -> {run, tr, cells}
  const knownMetrics = new Set();
  const knownParams = new Set();
  const knownTags = new Set();
  const expanded = new Set(); // parent runs shown with their children (nest mode)
  let groups = null; // groupTable in group mode
  const known = new Set(); // run ids the page has seen (rows, snapshots); a new id means a new run
  const subs = new Map(); // experiment -> unsubscribe
  // Runs seen ending live: a listing read just before the end arrived must not revive them.
  const ended = new Map(); // id -> {status, ended_at}
  let abort = null;

  // --- skeleton ---
  const expSelect = h("select", { "aria-label": "experiment", onchange: () => { state.experiment = expSelect.value; state.offset = 0; onExperimentChange(); } },
    h("option", { value: "" }, "All experiments"));
  const statusSelect = h("select", { "aria-label": "status", onchange: () => { state.status = statusSelect.value; state.offset = 0; reload(); } },
    h("option", { value: "" }, "Any status"), STATUSES.map((s) => h("option", { value: s }, s)));
  statusSelect.value = state.status;
  const metricChips = h("span.metric-chips");
  const metricInput = h("input", { type: "text", list: "metric-names", placeholder: "Add metric column…", size: 18, onkeydown: (e) => { if (e.key === "Enter") addMetric(); } });
  const datalist = h("datalist", { id: "metric-names" });
  const paramChips = h("span.metric-chips.param-chips");
  const paramInput = h("input", { type: "text", list: "param-names", placeholder: "Add param column…", size: 16, "aria-label": "add param column",
    onkeydown: (e) => { if (e.key === "Enter") addParam(); } });
  const paramList = h("datalist", { id: "param-names" });
  const filters = filterBar({ filters: state.filters, onChange: (list) => { state.filters = list; state.offset = 0; reload(); } });
  const groupSelect = h("select", { "aria-label": "group by", onchange: () => { state.group = groupSelect.value; state.offset = 0; reload(); } });
  const nestBox = h("input", { type: "checkbox", "aria-label": "nest child runs", checked: state.nest,
    onchange: () => { state.nest = nestBox.checked; state.offset = 0; reload(); } });
  const toolbar = h("div.toolbar",
    h("label.field", h("span", "Experiment"), expSelect),
    h("label.field", h("span", "Status"), statusSelect),
    h("div.field.metrics-field", h("span", "Metric columns"), h("div.metric-picker", metricChips, metricInput, datalist,
      h("button.small", { type: "button", onclick: addMetric }, "Add"))),
    h("div.field.metrics-field", h("span", "Param columns"), h("div.metric-picker", paramChips, paramInput, paramList,
      h("button.small", { type: "button", onclick: addParam }, "Add"))),
    h("label.field", h("span", "Group by"), groupSelect),
    h("label.field.check-field", h("span", "Children"), h("span.inline", nestBox, " under parents")));
  const toolbar2 = h("div.toolbar", filters.el);
  const summary = h("span.muted");
  const sweepLink = h("a.btn.small.sweep-link", { hidden: !state.experiment, title: "parallel coordinates and a scatter of this experiment's runs" }, "Sweep view");
  const head = h("div.page-head", h("div.title-row", h("h1", "Runs"), summary, sweepLink), toolbar, toolbar2);
  const notice = h("div");
  const thead = h("thead");
  const tbody = h("tbody");
  const table = h("table.runs");
  table.append(thead, tbody);
  const pager = h("div.pager");
  const selBar = h("div.selbar");
  const tableCard = h("div.card.table-card", h("div.scroll", table));
  const groupCard = h("div.card.table-card.group-card", { hidden: true });
  const root = h("div.runs-page", head, notice, tableCard, groupCard, pager, selBar);
  ctx.view.append(root);

  function syncUrl() {
    sweepLink.hidden = !state.experiment;
    sweepLink.href = `#/compare?${new URLSearchParams({ experiment: state.experiment, ...(state.metrics[0] ? { metric: state.metrics[0] } : {}) })}`;
    const q = new URLSearchParams();
    if (state.experiment) q.set("experiment", state.experiment);
    if (state.status) q.set("status", state.status);
    if (state.metricsChosen) q.set("metrics", state.metrics.join(","));
    if (state.params.length) q.set("params", state.params.join(","));
    for (const f of state.filters) q.append("filter", f);
    if (state.group) q.set("group", state.group);
    if (state.nest) q.set("nest", "1");
    if (state.order !== "-created_at") q.set("order", state.order);
    if (state.offset) q.set("offset", String(state.offset));
    if (state.limit !== 100) q.set("limit", String(state.limit));
    ctx.setQuery(q);
  }

  // --- metric columns ---
  function renderMetricChips() {
    put(metricChips, ...state.metrics.map((m) => h("span.chip.removable", m,
      h("button", { type: "button", title: `remove ${m}`, "aria-label": `remove ${m}`, onclick: () => removeMetric(m) }, "×"))));
  }
  function setMetrics(list) {
    state.metrics = list;
    state.metricsChosen = true;
    storeMetrics(state.experiment, list);
    renderMetricChips();
    reload();
  }
  function addMetric() {
    const m = metricInput.value.trim();
    metricInput.value = "";
    if (m && !state.metrics.includes(m)) setMetrics([...state.metrics, m]);
  }
  function removeMetric(m) {
    if (state.order.replace(/^-/, "").startsWith(`metric.${m}:`)) state.order = "-created_at";
    setMetrics(state.metrics.filter((x) => x !== m));
  }
  // --- param columns ---
  function renderParamChips() {
    put(paramChips, ...state.params.map((k) => h("span.chip.removable", k,
      h("button", { type: "button", title: `remove ${k}`, "aria-label": `remove param ${k}`, onclick: () => setParams(state.params.filter((x) => x !== k)) }, "×"))));
  }
  function setParams(list) {
    if (!list.some((k) => state.order.replace(/^-/, "") === `params.${k}`) && state.order.replace(/^-/, "").startsWith("params.")) state.order = "-created_at";
    state.params = list;
    renderParamChips();
    reload();
  }
  function addParam() {
    const k = paramInput.value.trim();
    paramInput.value = "";
    if (k && !state.params.includes(k)) setParams([...state.params, k]);
  }
  function learnKeys(list) {
    let added = false;
    for (const r of list) {
      for (const k of Object.keys(r.params || {})) if (!knownParams.has(k)) { knownParams.add(k); added = true; }
      for (const k of Object.keys(r.tags || {})) if (!knownTags.has(k)) { knownTags.add(k); added = true; }
    }
    if (added || !groupSelect.options.length) renderGroupChoices();
    if (added) put(paramList, ...[...knownParams].sort().map((n) => h("option", { value: n })));
  }
  function renderGroupChoices() {
    const choices = groupChoices(knownTags, knownParams);
    if (state.group && !choices.some(([v]) => v === state.group)) choices.unshift([state.group, state.group]);
    put(groupSelect, h("option", { value: "" }, "no grouping"), choices.map(([v, label]) => h("option", { value: v }, label)));
    groupSelect.value = state.group;
  }

  function learnMetrics(names) {
    let added = false;
    for (const n of names) if (!knownMetrics.has(n)) { knownMetrics.add(n); added = true; }
    if (!added) return;
    put(datalist, ...[...knownMetrics].sort().map((n) => h("option", { value: n })));
    if (!state.metricsChosen && !state.metrics.length && knownMetrics.size) {
      // a sensible default: the first two metrics, without pinning the choice
      const names = [...knownMetrics].sort();
      const key = names.filter((n) => /loss|mse|rmse|mae|acc|error|score|reward|f1|auc/i.test(n));
      state.metrics = [...key, ...names.filter((n) => !key.includes(n))].slice(0, 2);
      renderMetricChips();
      reload();
    }
  }

  // --- header with sorting ---
  function sortKey(key) {
    return state.order.replace(/^-/, "") === key ? (state.order.startsWith("-") ? "desc" : "asc") : null;
  }
  function sortable(label, key, cls = "", title) {
    const dir = sortKey(key);
    return h(`th.sortable${cls ? `.${cls}` : ""}`, {
      title: title || `sort by ${label}`,
      "aria-sort": dir ? (dir === "asc" ? "ascending" : "descending") : "none",
      onclick: () => {
        // first click: ascending for names and metrics (lowest loss first), newest first for times
        const timeKey = key === "created_at" || key === "last_seen";
        state.order = dir ? (dir === "desc" ? key : `-${key}`) : timeKey ? `-${key}` : key;
        state.offset = 0;
        reload();
      },
    }, label, h("span.arrow", dir === "asc" ? "▲" : dir === "desc" ? "▼" : ""));
  }
  function renderHead() {
    renderHeadInto(thead);
  }
  function renderHeadInto(target) {
    const allOnPage = [...rows.keys()];
    const all = h("input", { type: "checkbox", title: "select the runs on this page", "aria-label": "select page" });
    all.checked = allOnPage.length > 0 && allOnPage.every((id) => selected.has(id));
    all.indeterminate = !all.checked && allOnPage.some((id) => selected.has(id));
    all.addEventListener("change", () => {
      for (const id of rows.keys()) all.checked ? selected.add(id) : selected.delete(id); // every row by now, chunks included
      for (const r of rows.values()) {
        r.check.checked = selected.has(r.run.id);
        r.tr.classList.toggle("selected", r.check.checked);
      }
      renderSelBar();
    });
    const top = h("tr", h("th.check", { rowspan: 2 }, all), sortable("Status", "status", "", null), sortable("Name", "name"),
      state.experiment ? null : sortable("Experiment", "experiment"),
      sortable("Started", "created_at"), sortable("Duration", "duration"), sortable("Last seen", "last_seen"), h("th", "Tags"),
      state.params.map((k) => sortable(k, `params.${k}`, "param", `sort by param ${k}`)),
      state.metrics.map((m) => h("th.metric-group", { colspan: 3, title: m }, m)));
    for (const th of [...top.children].slice(1)) if (!th.classList.contains("metric-group")) th.rowSpan = 2;
    const sub = h("tr.sub", state.metrics.flatMap((m) => STATS.map((s) => sortable(s, `metric.${m}:${s}`, "num", `sort by ${s} of ${m}`))));
    put(target, top, sub);
  }
  function colCount() {
    return 9 + state.params.length + state.metrics.length * 3 - (state.experiment ? 1 : 0);
  }

  // --- children under their parents (nest mode) ---
  async function toggleChildren(r, btn) {
    const id = r.run.id;
    const open = btn.getAttribute("aria-expanded") === "true";
    for (const c of [...rows.values()]) if (c.parentRow === id) { c.tr.remove(); rows.delete(c.run.id); }
    btn.setAttribute("aria-expanded", open ? "false" : "true");
    btn.textContent = open ? "▸" : "▾";
    if (open) { expanded.delete(id); return; }
    expanded.add(id);
    let res;
    try {
      res = await api.runs({ parent: id, metrics: state.metrics.join(","), order_by: "created_at", limit: 1000, children: 1 });
    } catch (e) {
      put(notice, message("error", `Could not load the child runs: ${e.message}`));
      return;
    }
    if (disposed || !expanded.has(id) || !r.tr.isConnected) return;
    let after = r.tr;
    for (const run of res.runs) {
      const c = buildRow(run, 1);
      c.parentRow = id;
      rows.set(run.id, c);
      after.after(c.tr);
      after = c.tr;
    }
  }

  // --- rows ---
  function metricCells(run) {
    return state.metrics.map((m) => STATS.map((s) => h("td.num", fmtNum(run.metrics?.[m]?.[s] ?? null))));
  }
  function buildRow(run, depth = 0) {
    const check = h("input", { type: "checkbox", "aria-label": `select ${run.name}` });
    check.checked = selected.has(run.id);
    check.addEventListener("change", () => {
      check.checked ? selected.add(run.id) : selected.delete(run.id);
      tr.classList.toggle("selected", check.checked);
      renderSelBar();
      renderHead();
    });
    const badge = statusBadge(run.status);
    const lastSeen = h("td.time", timeEl(run.last_seen));
    const dur = h("td.time", duration(run.created_at, run.ended_at));
    const mcells = metricCells(run);
    const href = `#/runs/${encodeURIComponent(run.id)}`;
    const kids = state.nest && run.children > 0
      ? h("button.expand.small", { type: "button", "aria-expanded": "false", "aria-label": `child runs of ${run.name || run.id}`, title: `${run.children} child run${run.children === 1 ? "" : "s"}` }, "▸")
      : null;
    const nameLink = h("a", { href, title: run.id }, run.name || run.id);
    const tagsCell = h("td.tags", tagChips(run.tags, 3));
    const pcells = state.params.map((k) => h("td.param", { dataset: { param: k } }, run.params?.[k] ?? ""));
    const tr = h(`tr${selected.has(run.id) ? ".selected" : ""}${depth ? ".child-row" : ""}`, { dataset: { run: run.id } },
      h("td.check", check), h("td", badge),
      h("td.name", { style: depth ? { paddingLeft: `${10 + depth * 22}px` } : null }, kids, kids ? " " : null,
        nameLink, run.parent ? h("span.muted.child", " child") : null,
        kids ? h("span.muted.kids", ` (${run.children})`) : null),
      state.experiment ? null : h("td", h("a.muted-link", { href: `#/?experiment=${encodeURIComponent(run.experiment)}` }, run.experiment)),
      h("td.time", timeEl(run.created_at)), dur, lastSeen, tagsCell, pcells, mcells.flat());
    const r = { run, tr, check, badge, lastSeen, dur, mcells, nameLink, tagsCell, pcells, dirty: false };
    if (kids) kids.addEventListener("click", () => toggleChildren(r, kids));
    return r;
  }
  // A long page renders its first rows at once and the rest a chunk per frame (first rows sooner,
  // the page stays responsive); a newer render drops the older one's remaining chunks.
  const FIRST_ROWS = 100;
  const CHUNK_ROWS = 250;
  let renderSeq = 0;
  function appendRows(list) {
    const frag = document.createDocumentFragment();
    for (const run of list) {
      const r = buildRow(run);
      rows.set(run.id, r);
      frag.append(r.tr);
    }
    tbody.append(frag);
  }
  function renderRows(list) {
    rows = new Map();
    const seq = ++renderSeq;
    clear(tbody);
    appendRows(list.slice(0, FIRST_ROWS));
    const more = (from) => {
      if (disposed || seq !== renderSeq || from >= list.length) return;
      appendRows(list.slice(from, from + CHUNK_ROWS));
      requestAnimationFrame(() => more(from + CHUNK_ROWS));
    };
    if (list.length > FIRST_ROWS) requestAnimationFrame(() => more(FIRST_ROWS));
    if (!list.length) {
      tbody.append(h("tr", h("td.empty-row", { colSpan: colCount() },
        state.filters.length ? "No runs match the filters." : state.total ? "No runs on this page." : "No runs yet. Start one with Experiment(\"name\").start_logging().")));
    }
    for (const r of [...rows.values()]) {
      if (!expanded.has(r.run.id)) continue;
      const btn = r.tr.querySelector("button.expand");
      if (btn) { expanded.delete(r.run.id); toggleChildren(r, btn); }
    }
  }

  /** A nested table of one group's runs (groups.js), rows live like the list's own. */
  function groupRunsTable(filterList) {
    const body = h("tbody", h("tr", h("td.muted", { colSpan: colCount() }, "Loading…")));
    const nestedHead = thead.cloneNode(false);
    const t = h("table.runs.nested", nestedHead, body);
    renderHeadInto(nestedHead);
    const ready = api.runs({ ...baseQuery(), filter: filterList, limit: 500, offset: 0 }).then((res) => {
      if (disposed) return;
      for (const run of res.runs) known.add(run.id);
      learnKeys(res.runs);
      const built = res.runs.map((run) => buildRow(run));
      for (const r of built) rows.set(r.run.id, r);
      put(body, ...built.map((r) => r.tr));
      if (res.total > res.runs.length) body.append(h("tr", h("td.muted", { colSpan: colCount() }, `${res.runs.length} of ${res.total} runs shown`)));
    }).catch((e) => put(body, h("tr", h("td.msg.error", { colSpan: colCount() }, `Could not load the runs: ${e.message}`))));
    return { el: t, ready };
  }
  // live rows re-render at most 4 times a second (once a second beyond 50 rows: each text change in
  // a big table lays the table out again), in an animation frame, touching only changed text
  const flushSmall = frameThrottle(() => flushRows(), 250);
  const flushBig = frameThrottle(() => flushRows(), 1000);
  const flush = () => (rows.size > 50 ? flushBig() : flushSmall());
  const flushRows = (() => {
    if (disposed) return;
    const now = Date.now() / 1000;
    for (const r of rows.values()) {
      if (!r.dirty) continue;
      r.dirty = false;
      if (!r.badge.classList.contains(`st-${(r.run.status || "unknown").toLowerCase()}`)) setBadge(r.badge, r.run.status);
      const t = r.lastSeen.firstChild;
      t.dataset.ts = r.run.last_seen || "";
      setText(t, relTime(r.run.last_seen, now));
      setText(r.dur, duration(r.run.created_at, r.run.ended_at));
      // a row built before the metric columns changed has fewer cells until the reload redraws it
      state.metrics.forEach((m, i) => STATS.forEach((s, j) => { const c = r.mcells[i]?.[j]; if (c) setText(c, fmtNum(r.run.metrics?.[m]?.[s] ?? null)); }));
    }
  });

  // --- paging & selection ---
  function renderPager() {
    const from = state.total ? state.offset + 1 : 0;
    const to = Math.min(state.offset + state.limit, state.total);
    const size = h("select", { "aria-label": "page size", onchange: () => { state.limit = Number(size.value); state.offset = 0; reload(); } },
      PAGE_SIZES.map((n) => h("option", { value: n }, `${n} / page`)));
    size.value = String(state.limit);
    const page = Math.floor(state.offset / state.limit) + 1;
    const pages = Math.max(1, Math.ceil(state.total / state.limit));
    put(pager, 
      h("span.muted", `${from.toLocaleString()}–${to.toLocaleString()} of ${state.total.toLocaleString()}`),
      h("span.spacer"),
      size,
      h("button.small", { type: "button", disabled: state.offset === 0, onclick: () => { state.offset = 0; reload(); } }, "«"),
      h("button.small", { type: "button", disabled: state.offset === 0, onclick: () => { state.offset = Math.max(0, state.offset - state.limit); reload(); } }, "‹ Prev"),
      h("span.page", `page ${page} / ${pages}`),
      h("button.small", { type: "button", disabled: to >= state.total, onclick: () => { state.offset += state.limit; reload(); } }, "Next ›"),
      h("button.small", { type: "button", disabled: to >= state.total, onclick: () => { state.offset = (pages - 1) * state.limit; reload(); } }, "»"),
    );
    summary.textContent = `${state.total.toLocaleString()} run${state.total === 1 ? "" : "s"}`;
  }
  function renderSelBar() {
    const n = selected.size;
    selBar.classList.toggle("show", n > 0);
    const ids = [...selected];
    const q = new URLSearchParams({ runs: ids.join(",") });
    if (state.metrics.length) q.set("metrics", state.metrics.join(","));
    put(selBar, 
      h("span", `${n} run${n === 1 ? "" : "s"} selected`),
      h("button.small.ghost", { type: "button", onclick: () => { selected.clear(); for (const r of rows.values()) { r.check.checked = false; r.tr.classList.remove("selected"); } renderSelBar(); renderHead(); } }, "Clear"),
      h("a.btn.primary", { href: `#/compare?${q}`, "aria-disabled": n < 1 ? "true" : null }, `Compare ${n}`),
    );
  }

  // --- data ---
  /** The list's filters as /runs parameters (the api parses and binds them, api/run_filters.py). */
  function baseQuery() {
    return {
      experiment: state.experiment || null, status: state.status || null, order_by: state.order,
      metrics: state.metrics.join(","), filter: state.filters,
    };
  }
  /** A refused filter (HTTP 400 naming it) goes back to the input with the api's message. */
  function refusedFilter(e) {
    if (!(e instanceof ApiError) || e.status !== 400 || !state.filters.length || !/filter/.test(e.message)) return false;
    const bad = state.filters[state.filters.length - 1];
    state.filters = filters.reject(bad, e.message.replace(/^400: /, ""));
    reload();
    return true;
  }
  async function reloadGroups(ctrl) {
    tableCard.hidden = true;
    pager.hidden = true;
    groupCard.hidden = false;
    rows = new Map();
    if (!groups || groups.groupBy !== state.group || groups.key !== groupKey()) {
      groups = groupTable({ query: baseQuery(), groupBy: state.group, metrics: state.metrics, runTable: groupRunsTable, onError: (e) => {
        if (!refusedFilter(e)) put(notice, message("error", `Could not group the runs: ${e.message}`));
      } });
      groups.groupBy = state.group;
      groups.key = groupKey();
      put(groupCard, h("div.scroll", groups.el));
    }
    const res = await groups.load(ctrl.signal);
    if (disposed || abort !== ctrl) return;
    root.classList.remove("loading");
    if (!res) return;
    clear(notice);
    filters.clearError();
    state.total = res.total;
    summary.textContent = `${res.total.toLocaleString()} run${res.total === 1 ? "" : "s"} in ${res.groups.length} group${res.groups.length === 1 ? "" : "s"}`;
    renderSelBar();
  }
  function groupKey() {
    return JSON.stringify([baseQuery(), state.params]);
  }
  async function reload() {
    syncUrl();
    abort?.abort();
    const ctrl = new AbortController();
    abort = ctrl;
    root.classList.add("loading");
    if (state.group) { await reloadGroups(ctrl); return; }
    groups = null;
    tableCard.hidden = false;
    pager.hidden = false;
    groupCard.hidden = true;
    let res;
    try {
      res = await api.runs({
        ...baseQuery(), limit: state.limit, offset: state.offset,
        parent: state.nest ? "none" : null, children: state.nest ? 1 : null,
      }, { signal: ctrl.signal });
    } catch (e) {
      if (e.name === "AbortError" || disposed) return;
      root.classList.remove("loading");
      if (refusedFilter(e)) return;
      put(notice, message("error", `Could not load runs: ${e.message}`));
      return;
    }
    if (disposed || abort !== ctrl) return;
    root.classList.remove("loading");
    clear(notice);
    filters.clearError();
    learnKeys(res.runs);
    state.total = res.total;
    if (state.offset >= res.total && res.total > 0) {
      state.offset = Math.floor((res.total - 1) / state.limit) * state.limit;
      reload();
      return;
    }
    for (const r of res.runs) {
      known.add(r.id);
      const end = ended.get(r.id);
      if (end && !TERMINAL.has(r.status)) Object.assign(r, end);
    }
    renderRows(res.runs);
    renderHead();
    renderPager();
    renderSelBar();
  }
  const reloadSoon = throttle(() => { if (!disposed) reload(); }, 3000);

  // --- tags and params (a live update's `meta`): reread the changed rows only ---
  // Each run at most once per META_MS (a burst of set_tag calls is one or two reads), at most
  // META_PARALLEL reads at a time; more than META_ROWS rows due at once read the page once instead.
  const META_MS = 250;
  const META_PARALLEL = 4;
  const META_ROWS = 25;
  const metaDue = new Set(); // rows whose tags/params changed since their last reread began
  const metaBusy = new Set(); // rows being reread
  const metaLast = new Map(); // id -> when its last reread began (ms)
  let metaTimer = null;
  function metaChanged(id) {
    metaDue.add(id);
    if (!metaTimer) metaTimer = setTimeout(rereadMeta, META_MS); // the rest of the burst comes meanwhile
  }
  function rereadMeta() {
    metaTimer = null;
    if (disposed) return;
    for (const id of metaDue) if (!rows.has(id)) metaDue.delete(id); // paged or filtered away: a reload reads it
    if (metaDue.size > META_ROWS) {
      metaDue.clear();
      reloadSoon();
      return;
    }
    const now = Date.now();
    let wait = Infinity;
    for (const id of metaDue) {
      if (metaBusy.size >= META_PARALLEL) return; // the next read to end goes on
      if (metaBusy.has(id)) continue; // ditto
      const left = (metaLast.get(id) ?? -Infinity) + META_MS - now;
      if (left > 0) { wait = Math.min(wait, left); continue; }
      metaDue.delete(id);
      rereadRow(id);
    }
    if (wait !== Infinity && !metaTimer) metaTimer = setTimeout(rereadMeta, Math.max(wait, 20));
  }
  async function rereadRow(id) {
    metaBusy.add(id);
    metaLast.set(id, Date.now());
    let fresh = null;
    try {
      fresh = await api.run(id);
    } catch {
      // the row keeps what it shows; the next reload reads it again
    } finally {
      metaBusy.delete(id);
    }
    if (disposed) return;
    const r = rows.get(id);
    if (fresh && r) applyMeta(r, fresh);
    if (metaDue.size && !metaTimer) metaTimer = setTimeout(rereadMeta, 0);
  }
  /** A row's tags, params and name from a fresher read of its run (a reread, a live snapshot). */
  function applyMeta(r, fresh) {
    const tags = fresh.tags || {};
    if (JSON.stringify(tags) !== JSON.stringify(r.run.tags || {})) {
      r.run.tags = tags;
      put(r.tagsCell, tagChips(tags, 3));
    }
    r.run.params = fresh.params || {};
    if (fresh.name) r.run.name = fresh.name;
    learnKeys([fresh]);
    state.params.forEach((k, i) => { if (r.pcells[i]) setText(r.pcells[i], String(r.run.params[k] ?? "")); });
    setText(r.nameLink, r.run.name || r.run.id);
  }

  // --- live ---
  function applyUpdate(msg) {
    // Groups' counts and statistics, and a filtered list's membership, follow the data: re-read.
    if (state.group && (msg.status || msg.metrics || !known.has(msg.run))) reloadSoon();
    else if (state.filters.length && (msg.status || (msg.metrics && state.filters.some((f) => /metric/.test(f))))) reloadSoon();
    // ... and so do a list grouped, filtered or ordered by tags or params when they change
    if (msg.meta && (/^(tags|params)\./.test(state.group) || /^-?(tags|params)\./.test(state.order)
      || state.filters.some((f) => /\b(tags?|params?|name)\b/.test(f)))) reloadSoon();
    if (msg.meta && rows.has(msg.run)) metaChanged(msg.run);
    const r = rows.get(msg.run);
    if (!r) {
      if (!known.has(msg.run)) {
        known.add(msg.run);
        if (state.offset === 0) reloadSoon(); // a new run: show it
      }
      if (msg.metrics) learnMetrics(Object.keys(msg.metrics));
      return;
    }
    const run = r.run;
    if (msg.status) {
      expSoon();
      run.status = msg.status;
      if (TERMINAL.has(msg.status)) {
        run.ended_at = msg.server_time;
        ended.set(run.id, { status: run.status, ended_at: run.ended_at });
      }
    }
    if (msg.server_time) run.last_seen = msg.server_time;
    if (msg.metrics) {
      learnMetrics(Object.keys(msg.metrics));
      run.metrics ||= {};
      for (const m of state.metrics) {
        const slot = msg.metrics[m];
        if (!slot) continue;
        const sm = (run.metrics[m] ||= {});
        for (const v of slot.v) {
          if (!isNum(v)) continue;
          sm.last = v;
          sm.min = sm.min == null || v < sm.min ? v : sm.min;
          sm.max = sm.max == null || v > sm.max ? v : sm.max;
        }
        // Experiment updates carry only the newest point, plus the batch's range.
        if (isNum(slot.min)) sm.min = sm.min == null || slot.min < sm.min ? slot.min : sm.min;
        if (isNum(slot.max)) sm.max = sm.max == null || slot.max > sm.max ? slot.max : sm.max;
      }
    }
    r.dirty = true;
    flush();
  }
  function applySnapshot(msg) {
    for (const s of msg.runs || []) {
      known.add(s.id);
      learnMetrics(Object.keys(s.metrics || {}));
      const r = rows.get(s.id);
      if (!r) continue;
      if (TERMINAL.has(r.run.status) && !TERMINAL.has(s.status)) continue; // older than what the row shows
      r.run.status = s.status;
      r.run.last_seen = s.last_seen;
      if (s.ended_at) r.run.ended_at = s.ended_at;
      if (TERMINAL.has(s.status)) ended.set(s.id, { status: s.status, ended_at: s.ended_at });
      for (const m of state.metrics) if (s.metrics?.[m]) r.run.metrics = { ...r.run.metrics, [m]: { ...r.run.metrics?.[m], ...s.metrics[m] } };
      // tags and params changed between the list's read and the subscription sent no update
      if (s.tags && s.params) applyMeta(r, s);
      r.dirty = true;
    }
    flush();
  }
  function onLive(msg) {
    if (disposed) return;
    if (msg.type === "snapshot") applySnapshot(msg);
    else if (msg.type === "update") applyUpdate(msg);
  }
  function subscribeLive(names) {
    const want = new Set(names.slice(0, 50));
    for (const [name, unsub] of subs) if (!want.has(name)) { unsub(); subs.delete(name); }
    for (const name of want) if (!subs.has(name)) subs.set(name, live.subscribe({ experiment: name }, onLive));
  }

  let experiments = [];
  async function loadExperiments() {
    try {
      experiments = await api.experiments();
    } catch (e) {
      put(notice, message("error", `Could not load experiments: ${e.message}`));
      return;
    }
    if (disposed) return;
    put(expSelect, h("option", { value: "" }, "All experiments"),
      experiments.map((x) => h("option", { value: x.name }, `${x.name} (${x.runs}${x.running ? `, ${x.running} running` : ""})`)));
    if (state.experiment && !experiments.some((x) => x.name === state.experiment)) expSelect.append(h("option", { value: state.experiment }, state.experiment));
    expSelect.value = state.experiment;
    subscribeLive(state.experiment ? [state.experiment] : experiments.map((x) => x.name));
  }
  const expSoon = throttle(() => { if (!disposed) loadExperiments(); }, 5000);
  function onExperimentChange() {
    const stored = storedMetrics(state.experiment);
    if (stored) { state.metrics = stored; state.metricsChosen = true; }
    knownMetrics.clear();
    known.clear();
    renderMetricChips();
    subscribeLive(state.experiment ? [state.experiment] : experiments.map((x) => x.name));
    reload();
  }

  renderMetricChips();
  renderParamChips();
  renderGroupChoices();
  renderHead();
  loadExperiments();
  reload();
  const expTimer = setInterval(() => { if (!state.experiment) loadExperiments(); }, 30000);
  const durTimer = setInterval(() => {
    for (const r of rows.values()) if (!r.run.ended_at && r.run.status === "Running") setText(r.dur, duration(r.run.created_at, null));
  }, 5000);

  return () => {
    disposed = true;
    abort?.abort();
    for (const u of subs.values()) u();
    clearInterval(expTimer);
    clearInterval(durTimer);
    clearTimeout(metaTimer);
  };
}
