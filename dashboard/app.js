// Hash router: #/ (runs), #/runs/<id> (one run; also MLflow's #/experiments/<eid>/runs/<id>), #/experiments/<eid>
// (MLflow's experiment link: the runs list of that experiment), #/compare?runs=a,b (compare), #/compute (compute targets).
import { api, ApiError, live } from "./api.js";
import { clear, h, put, refreshTimes } from "./util.js";
import * as runsView from "./runs.js";
import * as runView from "./run.js";
import * as compareView from "./compare.js";
import "./keyentry.js"; // the key-entry screen on 401
import * as computeView from "./compute.js";

const view = document.getElementById("view");
let current = null; // {cleanup}
let renderSeq = 0;

export function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = raw.split("?");
  return { path: path || "/", params: new URLSearchParams(query) };
}

/** Replace the query part of the current route without re-rendering. */
export function setQuery(params, { replace = true } = {}) {
  const { path } = parseHash();
  const q = params.toString();
  const url = `#${path}${q ? `?${q}` : ""}`;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
}

/**
 * MLflow's "View experiment at: <tracking uri>/#/experiments/<id>": the id is MLflow's (derived from
 * project and name, docs/mlflow.md), so the MLflow API names the experiment, then the runs list opens
 * with it chosen, as the experiment picker chooses it (`#/?experiment=<name>`, replacing the link in the
 * history; the link's own query, e.g. `?metrics=loss`, is kept).
 */
async function openExperiment(eid, params, seq) {
  view.append(h("p.muted", `Opening experiment ${eid}…`));
  let name;
  try {
    const res = await api.mlflowExperiment(eid);
    name = res?.experiment?.name;
  } catch (e) {
    if (seq !== renderSeq) return;
    if (e instanceof ApiError && e.status === 404) name = null;
    else {
      put(view, h("div.msg.error", `Could not open experiment ${eid}: ${e.message}`));
      return;
    }
  }
  if (seq !== renderSeq) return; // the user went elsewhere meanwhile
  if (!name) {
    put(view, h("div.empty", h("h2", "Not found"), h("p", `experiment ${eid} not found. `, h("a", { href: "#/" }, "Back to the runs"))));
    return;
  }
  params.set("experiment", name);
  history.replaceState(null, "", `#/?${params}`);
  route();
}

function route() {
  const { path, params } = parseHash();
  if (current?.cleanup) {
    try { current.cleanup(); } catch (e) { console.warn(e); }
  }
  current = null;
  clear(view);
  window.scrollTo(0, 0);
  const seq = ++renderSeq;
  let m;
  let mod;
  let arg;
  if (path === "/" || path === "/runs") {
    mod = runsView;
  } else if ((m = path.match(/^\/runs\/(.+)$/) || path.match(/^\/experiments\/[^/]+\/runs\/([^/]+)$/))) {
    // the second form is the link MLflow's client prints ("View run ... at: <tracking uri>/#/experiments/<id>/runs/<id>")
    mod = runView;
    arg = decodeURIComponent(m[1]);
  } else if ((m = path.match(/^\/experiments\/([^/]+)\/?$/))) {
    openExperiment(decodeURIComponent(m[1]), params, seq);
    return;
  } else if (path === "/compare") {
    mod = compareView;
  } else if (path === "/compute") {
    mod = computeView;
  } else {
    view.append(h("div.empty", h("h2", "Not found"), h("p", "No page at ", h("code", path), ". ", h("a", { href: "#/" }, "Back to the runs"))));
    return;
  }
  document.querySelectorAll("[data-nav]").forEach((a) => {
    a.classList.toggle("active", a.dataset.nav === (mod === compareView ? "compare" : mod === computeView ? "compute" : "runs"));
  });
  const ctx = { view, params, arg, isCurrent: () => seq === renderSeq, setQuery };
  current = { cleanup: null };
  try {
    current.cleanup = mod.mount(ctx);
  } catch (e) {
    console.error(e);
    view.append(h("div.msg.error", `This page failed to render: ${e.message}`));
  }
}

window.addEventListener("hashchange", route);

// live indicator
const liveEl = document.getElementById("live");
live.onState((s) => {
  liveEl.dataset.state = s;
  liveEl.querySelector(".label").textContent = s === "open" ? "live" : s === "connecting" ? "connecting" : s === "idle" ? "idle" : "offline";
});

// theme toggle: auto -> dark -> light -> auto
document.getElementById("theme").addEventListener("click", () => {
  const root = document.documentElement;
  const dark = root.dataset.theme ? root.dataset.theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  const next = dark ? "light" : "dark";
  root.dataset.theme = next;
  try { localStorage.setItem("runstream_theme", next); } catch { /* private mode */ }
  route(); // charts read their colours at creation
});

setInterval(() => refreshTimes(view), 5000);
route();
