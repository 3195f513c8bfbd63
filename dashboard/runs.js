// Runs list: experiment picker, sortable paged table with live status and metric columns, selection for compare.
import { api, live } from "./api.js";
import {
  clear, put, duration, fmtNum, frameThrottle, h, isNum, message, relTime, setBadge, setText, statusBadge, STATUSES, tagChips, TERMINAL, throttle, timeEl,
} from "./util.js";

const selected = new Set(); // survives navigation within the session
const STATS = ["last", "min", "max"];
const PAGE_SIZES = [50, 100, 200];

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
  const toolbar = h("div.toolbar",
    h("label.field", h("span", "Experiment"), expSelect),
    h("label.field", h("span", "Status"), statusSelect),
    h("div.field.metrics-field", h("span", "Metric columns"), h("div.metric-picker", metricChips, metricInput, datalist,
      h("button.small", { type: "button", onclick: addMetric }, "Add"))));
  const summary = h("span.muted");
  const head = h("div.page-head", h("div.title-row", h("h1", "Runs"), summary), toolbar);
  const notice = h("div");
  const thead = h("thead");
  const tbody = h("tbody");
  const table = h("table.runs");
  table.append(thead, tbody);
  const pager = h("div.pager");
  const selBar = h("div.selbar");
  const root = h("div.runs-page", head, notice, h("div.card.table-card", h("div.scroll", table)), pager, selBar);
  ctx.view.append(root);

  function syncUrl() {
    const q = new URLSearchParams();
    if (state.experiment) q.set("experiment", state.experiment);
    if (state.status) q.set("status", state.status);
    if (state.metricsChosen) q.set("metrics", state.metrics.join(","));
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
    const allOnPage = [...rows.keys()];
    const all = h("input", { type: "checkbox", title: "select the runs on this page", "aria-label": "select page" });
    all.checked = allOnPage.length > 0 && allOnPage.every((id) => selected.has(id));
    all.indeterminate = !all.checked && allOnPage.some((id) => selected.has(id));
    all.addEventListener("change", () => {
      for (const id of allOnPage) all.checked ? selected.add(id) : selected.delete(id);
      for (const r of rows.values()) {
        r.check.checked = selected.has(r.run.id);
        r.tr.classList.toggle("selected", r.check.checked);
      }
      renderSelBar();
    });
    const top = h("tr", h("th.check", { rowspan: 2 }, all), sortable("Status", "status", "", null), sortable("Name", "name"),
      state.experiment ? null : sortable("Experiment", "experiment"),
      sortable("Started", "created_at"), h("th", "Duration"), sortable("Last seen", "last_seen"), h("th", "Tags"),
      state.metrics.map((m) => h("th.metric-group", { colspan: 3, title: m }, m)));
    for (const th of [...top.children].slice(1)) if (!th.classList.contains("metric-group")) th.rowSpan = 2;
    const sub = h("tr.sub", state.metrics.flatMap((m) => STATS.map((s) => sortable(s, `metric.${m}:${s}`, "num", `sort by ${s} of ${m}`))));
    put(thead, top, sub);
  }

  // --- rows ---
  function metricCells(run) {
    return state.metrics.map((m) => STATS.map((s) => h("td.num", fmtNum(run.metrics?.[m]?.[s] ?? null))));
  }
  function buildRow(run) {
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
    const tr = h(`tr${selected.has(run.id) ? ".selected" : ""}`, { dataset: { run: run.id } },
      h("td.check", check), h("td", badge),
      h("td.name", h("a", { href, title: run.id }, run.name || run.id), run.parent ? h("span.muted.child", " child") : null),
      state.experiment ? null : h("td", h("a.muted-link", { href: `#/?experiment=${encodeURIComponent(run.experiment)}` }, run.experiment)),
      h("td.time", timeEl(run.created_at)), dur, lastSeen, h("td.tags", tagChips(run.tags, 3)), mcells.flat());
    return { run, tr, check, badge, lastSeen, dur, mcells, dirty: false };
  }
  function renderRows(list) {
    rows = new Map();
    const frag = document.createDocumentFragment();
    for (const run of list) {
      const r = buildRow(run);
      rows.set(run.id, r);
      frag.append(r.tr);
    }
    put(tbody, frag);
    if (!list.length) {
      tbody.append(h("tr", h("td.empty-row", { colSpan: 9 + state.metrics.length * 3 },
        state.total ? "No runs on this page." : "No runs yet. Start one with Experiment(\"name\").start_logging().")));
    }
  }
  // live rows re-render at most 4 times a second, in an animation frame, touching only changed text
  const flush = frameThrottle(() => {
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
      state.metrics.forEach((m, i) => STATS.forEach((s, j) => setText(r.mcells[i][j], fmtNum(r.run.metrics?.[m]?.[s] ?? null))));
    }
  }, 250);

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
  async function reload() {
    syncUrl();
    abort?.abort();
    const ctrl = new AbortController();
    abort = ctrl;
    root.classList.add("loading");
    let res;
    try {
      res = await api.runs({
        experiment: state.experiment || null, status: state.status || null, order_by: state.order,
        limit: state.limit, offset: state.offset, metrics: state.metrics.join(","),
      }, { signal: ctrl.signal });
    } catch (e) {
      if (e.name === "AbortError" || disposed) return;
      root.classList.remove("loading");
      put(notice, message("error", `Could not load runs: ${e.message}`));
      return;
    }
    if (disposed || abort !== ctrl) return;
    root.classList.remove("loading");
    clear(notice);
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

  // --- live ---
  function applyUpdate(msg) {
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
  };
}
