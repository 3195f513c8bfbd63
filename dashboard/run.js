// Run page: live metric charts, tables, images, files, tags, params, children, log tail.
import { api, ApiError, fileUrl, live, numOrNull } from "./api.js";
import { createChart } from "./charts.js";
import { createChartControls } from "./chartctl.js";
import {
  clear, put, duration, fmtBytes, fmtNum, h, isNum, isSystemTag, kvTable, message, rafThrottle, setBadge, statusBadge, TERMINAL, throttle, timeEl,
  userTags,
} from "./util.js";

const byName = (a, b) => a.localeCompare(b, undefined, { sensitivity: "base", numeric: true });
const LOG_KEEP = 2000;

/** One metric's card: lazily created uPlot, REST load, live appends. */
class MetricCard {
  constructor(runId, name, summary, observer, ctl) {
    this.runId = runId;
    this.name = name;
    this.ctl = ctl;
    this.ts = [];
    this.summary = { ...(summary || {}) };
    this.xs = [];
    this.ys = [];
    this.count = 0;
    this.restLastStep = -Infinity;
    this.loaded = false;
    this.loading = null;
    this.queue = [];
    this.chart = null;
    this.lastText = null;
    this.unsorted = false;
    this.redraw = rafThrottle(() => this.draw());
    this.refetchSoon = throttle(() => this.load(), 1500);
    this.statEl = h("span.stat");
    this.subEl = h("span.sub");
    this.descEl = h("p.desc", { hidden: true });
    this.box = h("div.chart", { dataset: { metric: name, points: "0" } });
    this.el = h("section.card.chart-card", { dataset: { metric: name } },
      h("header", h("h3", { title: name }, name), this.statEl),
      this.descEl,
      this.box,
      h("footer", this.subEl));
    this.el._card = this;
    this.renderStats();
    observer ? observer.observe(this.el) : this.activate();
  }

  activate() {
    if (this.chart) return;
    this.chart = this.ctl.chart(this.box, this.name, { height: 200 }); // chartctl.js: smoothing, axes, zoom
    this.load();
  }

  /** The metric's stored description (Run.log(..., description=)), under the title. */
  describe(text) {
    this.descEl.hidden = !text;
    this.descEl.textContent = text || "";
    this.descEl.title = text || "";
  }

  async load() {
    if (!this.chart) return;
    const want = Math.max(200, this.chart.width());
    const p = api.series(this.runId, this.name, { max_points: want }).then((r) => {
      // A later load is under way: its answer is newer, and the live points queued meanwhile are for it.
      if (this.loading !== p) return;
      this.xs = r.steps.slice();
      this.ys = r.values.map(numOrNull);
      this.ts = r.timestamps?.length === r.steps.length ? r.timestamps.slice() : r.steps.map(() => null);
      for (let i = r.values.length - 1; i >= 0; i--) {
        if (typeof r.values[i] === "string") { this.lastText = r.values[i]; break; }
      }
      this.count = r.count;
      this.downsampled = r.downsampled;
      this.restLastStep = this.xs.length ? this.xs[this.xs.length - 1] : -Infinity;
      this.loaded = true;
      const q = this.queue;
      this.queue = [];
      for (const slot of q) this.append(slot);
      this.el.classList.remove("failed");
      this.redraw();
    }).catch((e) => {
      if (e.status === 404) return; // summary seen before the first point is readable
      this.el.classList.add("failed");
      this.subEl.textContent = `could not load: ${e.message}`;
    }).finally(() => { if (this.loading === p) this.loading = null; });
    this.loading = p;
    return p;
  }

  /** slot = {s:[steps], v:[values], n, truncated?} from a live update */
  append(slot) {
    this.updateSummary(slot);
    if (!this.chart) return;
    // While a read is in flight its answer replaces the arrays: points appended now would be lost
    // if they were stored after the read. Queued, they are replayed onto the answer (steps it has are skipped).
    if (!this.loaded || this.loading) {
      this.queue.push(slot);
      if (!this.loading) this.load();
      return;
    }
    if (slot.truncated) {
      this.refetchSoon();
      return;
    }
    const { s, v } = slot;
    let added = 0;
    for (let i = 0; i < s.length; i++) {
      if (s[i] <= this.restLastStep) continue; // already in the REST answer (and in its count)
      added++;
      const last = this.xs.length ? this.xs[this.xs.length - 1] : -Infinity;
      if (s[i] < last) this.unsorted = true;
      this.xs.push(s[i]);
      this.ys.push(numOrNull(v[i]));
      this.ts.push(slot.t?.[i] ?? Date.now() / 1000);
      if (typeof v[i] === "string") this.lastText = v[i];
    }
    this.count += added;
    // Raw points appended to a downsampled series: refetch once it grows well past the chart width.
    if (this.xs.length > 4 * Math.max(200, this.chart.width())) this.refetchSoon();
    this.redraw();
  }

  updateSummary(slot) {
    const sm = this.summary;
    for (const v of slot.v) {
      if (isNum(v)) {
        sm.last = v;
        sm.min = sm.min == null || v < sm.min ? v : sm.min;
        sm.max = sm.max == null || v > sm.max ? v : sm.max;
      } else if (typeof v === "string") sm.last = v;
    }
    // A truncated slot carries a short tail; its min/max cover every point of the batch.
    if (isNum(slot.min)) sm.min = sm.min == null || slot.min < sm.min ? slot.min : sm.min;
    if (isNum(slot.max)) sm.max = sm.max == null || slot.max > sm.max ? slot.max : sm.max;
    sm.count = (sm.count || 0) + (slot.n ?? slot.s.length);
    if (slot.s.length) sm.last_step = slot.s[slot.s.length - 1];
    this.renderStats();
  }

  renderStats() {
    const sm = this.summary;
    this.statEl.textContent = sm.last == null ? "" : fmtNum(sm.last);
    this.statEl.title = "last value";
    const parts = [`${(sm.count ?? 0).toLocaleString()} pt${sm.count === 1 ? "" : "s"}`];
    if (isNum(sm.min)) parts.push(`min ${fmtNum(sm.min)}`);
    if (isNum(sm.max)) parts.push(`max ${fmtNum(sm.max)}`);
    if (this.downsampled) parts.push("downsampled");
    this.subEl.textContent = parts.join(" · ");
  }

  draw() {
    if (!this.chart) return;
    if (this.unsorted) {
      const idx = this.xs.map((_, i) => i).sort((a, b) => this.xs[a] - this.xs[b]);
      this.xs = idx.map((i) => this.xs[i]);
      this.ys = idx.map((i) => this.ys[i]);
      this.ts = idx.map((i) => this.ts[i]);
      this.unsorted = false;
    }
    const numeric = this.ys.some((y) => y != null);
    this.el.classList.toggle("textual", !numeric && this.lastText != null);
    if (!numeric && this.lastText != null) this.subEl.textContent = `text values · last: ${this.lastText}`;
    this.chart.setData([this.xs, this.ys], this.ts);
    this.box.dataset.count = String(this.count);
    this.renderStats();
  }

  destroy() {
    this.chart?.destroy();
  }
}

/** A row/table metric: first numeric column on x, other numeric columns as lines. */
class TableCard {
  constructor(runId, name) {
    this.runId = runId;
    this.name = name;
    this.box = h("div.chart");
    this.note = h("span.sub");
    this.preview = h("div.preview");
    this.el = h("section.card.chart-card", { dataset: { table: name } },
      h("header", h("h3", { title: name }, name), h("span.kind", "table")), this.box, h("footer", this.note), this.preview);
    this.chart = null;
    this.refetch = throttle(() => this.load(), 1000);
  }

  async load() {
    let t;
    try {
      t = await api.table(this.runId, this.name);
    } catch (e) {
      this.note.textContent = `could not load: ${e.message}`;
      return;
    }
    const cols = Object.entries(t.columns);
    const numeric = cols.filter(([, vals]) => vals.length && vals.every((v) => v == null || isNum(v)) && vals.some(isNum));
    clear(this.preview);
    if (numeric.length >= 2) {
      const [xName, xVals] = numeric[0];
      const ys = numeric.slice(1, 7);
      const order = xVals.map((_, i) => i).filter((i) => isNum(xVals[i])).sort((a, b) => xVals[a] - xVals[b]);
      const data = [order.map((i) => xVals[i]), ...ys.map(([, vals]) => order.map((i) => numOrNull(vals[i])))];
      if (!this.chart || this.chart.series !== ys.length) {
        this.chart?.destroy();
        clear(this.box);
        this.chart = createChart(this.box, { series: ys.map(([n]) => ({ label: n })), xLabel: xName, height: 200 });
        this.chart.series = ys.length;
      }
      this.chart.setData(data);
      this.note.textContent = `${t.rows.toLocaleString()} rows · ${ys.map(([n]) => n).join(", ")} against ${xName}`;
    } else {
      this.box.hidden = true;
      this.note.textContent = `${t.rows.toLocaleString()} rows · fewer than two numeric columns, shown as a table`;
      const names = cols.map(([n]) => n);
      const rows = Math.min(t.rows, 50);
      this.preview.append(h("div.scroll", h("table.grid-table",
        h("thead", h("tr", names.map((n) => h("th", n)))),
        h("tbody", Array.from({ length: rows }, (_, r) => h("tr", cols.map(([, vals]) => h("td", vals[r] == null ? "" : isNum(vals[r]) ? fmtNum(vals[r]) : String(vals[r])))))))));
    }
  }

  destroy() {
    this.chart?.destroy();
  }
}

export function mount(ctx) {
  const id = ctx.arg;
  const root = h("div.run-page");
  ctx.view.append(root);

  let run = null;
  let disposed = false;
  const cards = new Map(); // metric -> MetricCard
  const tableCards = new Map();
  let logSince = 0;
  let logCount = 0;
  let snapshots = 0;
  let firstLoad = true;

  // --- skeleton ---
  const crumbs = h("nav.crumbs", h("a", { href: "#/" }, "Runs"));
  const title = h("h1", id);
  const badge = statusBadge(null);
  const metaLine = h("div.meta-line");
  const head = h("div.page-head", crumbs, h("div.title-row", title, badge), metaLine);
  const notice = h("div");
  const metricFilter = h("input.filter", { type: "search", placeholder: "Filter metrics…", hidden: true, oninput: () => filterCards() });
  const metricsGrid = h("div.charts");
  const ctl = createChartControls(ctx, { runId: id, metricNames: () => [...cards.keys()].sort(byName) });
  const metricsSec = h("section.section", h("div.section-head", h("h2", "Metrics"), metricFilter), ctl.bar, metricsGrid);
  const tablesGrid = h("div.charts");
  const tablesSec = h("section.section", { hidden: true }, h("h2", "Tables & rows"), tablesGrid);
  const imagesGrid = h("div.images");
  const imagesSec = h("section.section", { hidden: true }, h("h2", "Images"), imagesGrid);
  const logPre = h("pre.log", { tabindex: "0" });
  const logInfo = h("span.muted");
  const logSec = h("section.section", h("div.section-head", h("h2", "Output"), logInfo), logPre);
  const side = h("aside.side");
  root.append(head, notice, h("div.run-layout", h("div.run-main", metricsSec, tablesSec, imagesSec, logSec), side));

  const observer = typeof IntersectionObserver !== "undefined"
    ? new IntersectionObserver((entries) => {
      for (const e of entries) {
        if (e.isIntersecting) {
          observer.unobserve(e.target);
          e.target._card?.activate();
        }
      }
    }, { rootMargin: "300px" })
    : null;

  function filterCards() {
    const q = metricFilter.value.trim().toLowerCase();
    for (const [name, card] of cards) card.el.hidden = q !== "" && !name.toLowerCase().includes(q);
  }

  function ensureCard(name, summary) {
    let card = cards.get(name);
    if (!card) {
      card = new MetricCard(id, name, summary, observer, ctl);
      cards.set(name, card);
      // keep cards in name order
      const after = [...cards.keys()].find((n) => byName(n, name) > 0 && cards.get(n).el.isConnected);
      if (after) metricsGrid.insertBefore(card.el, cards.get(after).el);
      else metricsGrid.append(card.el);
      metricFilter.hidden = cards.size < 9;
      metricsGrid.querySelector(".empty-charts")?.remove();
    }
    return card;
  }

  function ensureTable(name) {
    let card = tableCards.get(name);
    if (!card) {
      card = new TableCard(id, name);
      tableCards.set(name, card);
      tablesGrid.append(card.el);
      tablesSec.hidden = false;
      card.load();
    }
    return card;
  }

  // --- header / side panel ---
  function renderHead() {
    document.title = `${run.name} · runstream`;
    put(crumbs, h("a", { href: "#/" }, "Runs"), h("span.sep", "/"),
      h("a", { href: `#/?experiment=${encodeURIComponent(run.experiment)}` }, run.experiment));
    if (run.parent) crumbs.append(h("span.sep", "/"), h("a", { href: `#/runs/${encodeURIComponent(run.parent)}` }, "parent run"));
    title.textContent = run.name;
    setBadge(badge, run.status);
    put(metaLine, 
      h("span", h("span.muted", "id "), h("code", run.id)),
      h("span", h("span.muted", "started "), timeEl(run.created_at)),
      h("span", h("span.muted", "duration "), h("span.duration", duration(run.created_at, run.ended_at))),
      run.ended_at ? h("span", h("span.muted", "ended "), timeEl(run.ended_at)) : null,
      h("span", h("span.muted", "points "), (run.points ?? 0).toLocaleString()),
      h("a.btn.small", { href: `#/compare?runs=${encodeURIComponent(run.id)}` }, "Compare…"),
    );
    clear(notice);
    if (run.error) notice.append(message("error", run.error));
  }

  function orderedMeta(meta, tags) {
    const order = ["compute", "host", "user", "pid", "python", "git_branch", "git_commit", "git_dirty", "source_dir", "command", "python_executable"];
    const m = meta || {};
    const out = {};
    for (const k of order) if (k in m) out[k] = k === "git_commit" ? m[k].slice(0, 12) : m[k];
    for (const k of Object.keys(m)) if (!(k in out)) out[k] = m[k];
    // MLflow's own tags (user, source, git commit); its run name is the title, its parent the crumb
    for (const [k, v] of Object.entries(tags || {})) {
      if (isSystemTag(k) && k !== "mlflow.runName" && k !== "mlflow.parentRunId") out[k] = v;
    }
    return out;
  }

  function renderSide() {
    clear(side);
    side.append(
      h("section.card.side-card", h("h2", "Tags"), kvTable(userTags(run.tags), "No tags")),
      h("section.card.side-card", h("h2", "Params"), kvTable(run.params, "No params")),
      // Where it ran (ingest/metadata.py): compute target first, the command line last.
      h("section.card.side-card.run-meta", h("h2", "Run"), kvTable(orderedMeta(run.meta, run.tags), "No metadata")),
    );
    if (run.children?.length) {
      side.append(h("section.card.side-card", h("h2", `Child runs (${run.children.length})`),
        h("ul.children", run.children.map((c) => h("li", statusBadge(c.status), h("a", { href: `#/runs/${encodeURIComponent(c.id)}` }, c.name || c.id))))));
    }
    side.append(filesCard);
  }

  // --- files & images ---
  const filesCard = h("section.card.side-card", h("h2", "Files"), h("p.muted", "Loading…"));
  async function loadFiles() {
    let files;
    try {
      files = await api.files(id);
    } catch (e) {
      put(filesCard, h("h2", "Files"), h("p.muted", `Could not list files: ${e.message}`));
      return;
    }
    if (disposed) return;
    const images = files.filter((f) => f.kind === "image");
    const others = files.filter((f) => f.kind !== "image");
    put(filesCard, h("h2", `Files (${others.length})`), others.length
      ? h("ul.files", others.map((f) => h("li", h("a", { href: fileUrl(id, f.path), download: f.path.split("/").pop() }, f.path), h("span.muted", fmtBytes(f.size)))))
      : h("p.muted", "No files"));
    imagesSec.hidden = !images.length;
    put(imagesGrid, ...images.map((f) => h("figure.card",
      h("a", { href: fileUrl(id, f.path), target: "_blank", rel: "noopener" }, h("img", { src: fileUrl(id, f.path), alt: f.name || f.path, loading: "lazy" })),
      h("figcaption", f.name || f.path))));
  }
  const reloadFiles = throttle(loadFiles, 1000);

  // --- logs ---
  function appendLogs(lines) {
    if (!lines.length) return;
    const stick = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 24;
    const frag = document.createDocumentFragment();
    for (const l of lines) {
      if (l.ts <= logSince) continue;
      logSince = l.ts;
      frag.append(h(`span.ln${l.stream === "stderr" ? ".err" : ""}`, { title: `${l.stream} · ${new Date(l.ts * 1000).toLocaleTimeString()}` }, l.line + "\n"));
      logCount++;
    }
    logPre.append(frag);
    while (logPre.childElementCount > LOG_KEEP) logPre.firstElementChild.remove();
    logInfo.textContent = `${logCount.toLocaleString()} line${logCount === 1 ? "" : "s"}${logCount > LOG_KEEP ? ` · showing the last ${LOG_KEEP}` : ""}`;
    logPre.classList.remove("empty");
    if (stick) logPre.scrollTop = logPre.scrollHeight;
  }
  async function loadLogs() {
    try {
      for (let page = 0; page < 20 && !disposed; page++) {
        const r = await api.logs(id, logSince);
        appendLogs(r.lines);
        if (r.lines.length < 1000) break;
      }
    } catch (e) {
      logInfo.textContent = `could not load the log: ${e.message}`;
    }
    if (!logCount) {
      logPre.classList.add("empty");
      logPre.textContent = "";
      logInfo.textContent = "no output yet";
    }
  }

  // --- run details ---
  async function loadRun() {
    try {
      run = await api.run(id);
    } catch (e) {
      if (disposed) return false;
      put(notice, e instanceof ApiError && e.status === 404
        ? message("info", `Run ${id} is not known yet. This page will fill in as soon as it reports.`)
        : message("error", `Could not load the run: ${e.message}`));
      return false;
    }
    if (disposed) return false;
    renderHead();
    renderSide();
    ctl.setRunStart(run.created_at);
    for (const [name, sm] of Object.entries(run.metrics || {}).sort(([a], [b]) => byName(a, b))) {
      const card = ensureCard(name, sm);
      card.summary = { ...sm };
      card.renderStats();
      card.describe(run.descriptions?.[name]);
    }
    if (!cards.size && !metricsGrid.querySelector(".empty-charts")) metricsGrid.append(h("p.muted.empty-charts", "No metrics logged yet."));
    for (const t of run.tables || []) ensureTable(t);
    if (firstLoad) {
      firstLoad = false;
      loadFiles();
      loadLogs();
    }
    return true;
  }
  const reloadRun = throttle(loadRun, 1000);

  // --- live ---
  function onLive(msg) {
    if (disposed) return;
    if (msg.type === "snapshot") {
      snapshots++;
      const snap = (msg.runs || []).find((r) => r.id === id);
      if (!snap) return;
      if (!run) { reloadRun(); return; }
      if (snap.status !== run.status) { run.status = snap.status; setBadge(badge, snap.status); reloadRun(); }
      for (const [name, sm] of Object.entries(snap.metrics || {})) {
        const card = ensureCard(name, sm);
        // points published between our REST read and the subscription (or during a reconnect)
        if (card.loaded && (sm.count ?? 0) > card.count) card.load();
      }
      if (snapshots > 1) { loadLogs(); reloadFiles(); for (const t of tableCards.values()) t.refetch(); }
      return;
    }
    if (msg.type !== "update" || msg.run !== id) return;
    if (!run) { reloadRun(); }
    for (const [name, slot] of Object.entries(msg.metrics || {})) ensureCard(name).append(slot);
    if (msg.logs) appendLogs(msg.logs);
    if (msg.logs_truncated) loadLogs();
    for (const t of msg.tables || []) ensureTable(t).refetch();
    if (msg.files?.length) reloadFiles();
    if (run && msg.status && msg.status !== run.status) {
      run.status = msg.status;
      setBadge(badge, msg.status);
      reloadRun();
    }
    if (msg.meta) reloadRun();
    if (run && msg.metrics) {
      let n = 0;
      for (const slot of Object.values(msg.metrics)) n += slot.n ?? slot.s.length;
      run.points = (run.points || 0) + n;
    }
  }
  const unsubscribe = live.subscribe({ run: id }, onLive);

  // duration ticks while running; details refresh (children, ended_at) every 15 s
  const ticker = setInterval(() => {
    if (!run) return;
    const d = root.querySelector(".duration");
    if (d) d.textContent = duration(run.created_at, run.ended_at);
  }, 1000);
  const refresher = setInterval(() => { if (!run || !TERMINAL.has(run.status)) loadRun(); }, 15000);

  loadRun();

  return () => {
    disposed = true;
    unsubscribe();
    clearInterval(ticker);
    clearInterval(refresher);
    observer?.disconnect();
    for (const c of cards.values()) c.destroy();
    ctl.destroy();
    for (const c of tableCards.values()) c.destroy();
  };
}
