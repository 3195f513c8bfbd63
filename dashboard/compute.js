// Compute page: per compute target, the runs queued and active on it now (the reference's
// "training cluster -> runs"). Live: each shown run's experiment is watched over /ws, so a
// status change moves or removes its row at once; the list is re-read every few seconds
// for runs that started since (nothing pushes "a run appeared on target X").
import { api, live } from "./api.js";
import { clear, duration, h, message, put, statusBadge, timeEl } from "./util.js";

const ACTIVE = new Set(["Running", "Queued"]);
const RELOAD_MS = 3000;

export function mount(ctx) {
  const { view, isCurrent } = ctx;
  document.title = "Compute · runstream";
  const body = h("div.compute-targets", h("p.muted", "Loading…"));
  view.append(h("section.page.compute", h("div.page-head", h("h1", "Compute"),
    h("p.muted", "Runs queued and active now, per compute target. Finished runs leave this page; find them under their experiment.")), body));

  const runs = new Map(); // id -> run
  const watched = new Map(); // experiment -> unsubscribe
  let failed = null;

  function target(run) {
    return (run.meta && run.meta.compute) || "unknown";
  }

  function render() {
    if (failed) {
      put(body, message("error", `Could not read the runs: ${failed}`));
      return;
    }
    const byTarget = new Map();
    for (const run of runs.values()) {
      if (!byTarget.has(target(run))) byTarget.set(target(run), []);
      byTarget.get(target(run)).push(run);
    }
    if (!byTarget.size) {
      put(body, h("div.empty", h("p", "No run is queued or running on any compute target.")));
      return;
    }
    clear(body);
    for (const name of [...byTarget.keys()].sort()) {
      const list = byTarget.get(name).sort((a, b) => (a.created_at || 0) - (b.created_at || 0));
      const running = list.filter((r) => r.status === "Running").length;
      const queued = list.filter((r) => r.status === "Queued").length;
      const row = (r) => h("tr", { "data-run": r.id },
        h("td", statusBadge(r.status)),
        h("td", h("a", { href: `#/runs/${encodeURIComponent(r.id)}` }, r.name || r.id)),
        h("td", h("a", { href: `#/?experiment=${encodeURIComponent(r.experiment)}` }, r.experiment)),
        h("td", r.parent ? h("a", { href: `#/runs/${encodeURIComponent(r.parent)}` }, "parent") : ""),
        h("td", timeEl(r.created_at)),
        h("td.duration", duration(r.created_at, null)));
      const head = h("thead", h("tr", ["Status", "Run", "Experiment", "Parent", "Submitted", "Duration"].map((t) => h("th", t))));
      body.append(h("section.card.compute-target", { "data-target": name },
        h("h2", name, h("span.muted.counts", ` ${running} running · ${queued} queued`)),
        h("table.runs", head, h("tbody", list.map(row)))));
    }
  }

  function onMessage(msg) {
    const updates = msg.type === "updates" ? msg.updates : [msg];
    let changed = false;
    for (const u of updates) {
      const run = u && runs.get(u.run);
      if (!run || !u.status || u.status === run.status) continue;
      if (ACTIVE.has(u.status)) run.status = u.status;
      else runs.delete(u.run); // finished (or Crashed): it leaves the page
      changed = true;
    }
    if (changed && isCurrent()) render();
  }

  function watch() {
    const experiments = new Set([...runs.values()].map((r) => r.experiment));
    for (const [exp, unsubscribe] of watched) {
      if (!experiments.has(exp)) { unsubscribe(); watched.delete(exp); }
    }
    for (const exp of experiments) {
      if (!watched.has(exp)) watched.set(exp, live.subscribe({ experiment: exp }, onMessage));
    }
  }

  async function load() {
    try {
      const listing = await api.runs({ status: "Running,Queued", order_by: "created_at", limit: 1000 });
      if (!isCurrent()) return;
      failed = null;
      runs.clear();
      for (const r of listing.runs) runs.set(r.id, r);
      watch();
    } catch (e) {
      failed = e.message;
    }
    if (isCurrent()) render();
  }

  load();
  const timer = setInterval(load, RELOAD_MS);
  const ticker = setInterval(() => {
    for (const row of body.querySelectorAll("tr[data-run]")) {
      const run = runs.get(row.dataset.run);
      const cell = row.querySelector("td.duration");
      if (run && cell) cell.textContent = duration(run.created_at, null);
    }
  }, 1000);
  return () => {
    clearInterval(timer);
    clearInterval(ticker);
    for (const unsubscribe of watched.values()) unsubscribe();
  };
}
