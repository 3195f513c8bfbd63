// REST and WebSocket client for the runstream api (same origin as the dashboard).

const BASE = "/api/v1";
const MLFLOW = "/api/2.0/mlflow";
// Query parameters the api takes repeated (?filter=a&filter=b) rather than comma-separated.
const REPEATED = new Set(["filter", "meta"]);

function apiKey() {
  try {
    return localStorage.getItem("runstream_api_key") || "";
  } catch {
    return "";
  }
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** GET <base, /api/v1 unless given><path>?params -> JSON; throws ApiError (status 0 for network errors). */
export async function get(path, params, { signal, base = BASE } = {}) {
  const url = new URL(base + path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v == null || v === "") continue;
    if (REPEATED.has(k) && Array.isArray(v)) for (const x of v) url.searchParams.append(k, String(x));
    else url.searchParams.set(k, Array.isArray(v) ? v.join(",") : String(v));
  }
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  let res;
  try {
    res = await fetch(url, { headers, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `network error: ${e.message}`);
  }
  if (!res.ok) {
    if (res.status === 401) window.dispatchEvent(new CustomEvent("runstream:unauthorized")); // keyentry.js asks for a key
    let detail = res.statusText;
    try {
      const body = await res.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
    } catch { /* not JSON */ }
    throw new ApiError(res.status, `${res.status}: ${detail}`);
  }
  return res.json();
}

export function fileUrl(runId, path) {
  const p = path.split("/").map(encodeURIComponent).join("/");
  const key = apiKey();
  return `${BASE}/runs/${encodeURIComponent(runId)}/files/${p}${key ? `?api_key=${encodeURIComponent(key)}` : ""}`;
}

export const api = {
  experiments: (o) => get("/experiments", null, o),
  runs: (params, o) => get("/runs", params, o),
  runGroups: (params, o) => get("/run-groups", params, o),
  seriesOfRuns: (metric, runs, maxPoints, o) => get("/series", { metric, runs, max_points: maxPoints }, o),
  run: (id, o) => get(`/runs/${encodeURIComponent(id)}`, null, o),
  series: (id, name, params, o) => get(`/runs/${encodeURIComponent(id)}/metrics/${name.split("/").map(encodeURIComponent).join("/")}`, params, o),
  table: (id, name, o) => get(`/runs/${encodeURIComponent(id)}/tables/${name.split("/").map(encodeURIComponent).join("/")}`, null, o),
  logs: (id, since, o) => get(`/runs/${encodeURIComponent(id)}/logs`, { since }, o),
  files: (id, o) => get(`/runs/${encodeURIComponent(id)}/files`, null, o),
  compare: (runs, metrics, o) => get("/compare", { runs, metrics }, o),
  aggregate: (params, o) => get("/aggregate", params, o),
  // MLflow's experiment id (the links the MLflow client prints) -> {experiment: {name, ...}}
  mlflowExperiment: (id, o) => get("/experiments/get", { experiment_id: id }, { ...o, base: MLFLOW }),
};

/**
 * One shared WebSocket with reference-counted subscriptions and reconnects.
 * live.subscribe({run: id}, handler) -> unsubscribe function.
 * handler(msg) receives "snapshot" and "update" messages for that target.
 */
class Live {
  constructor() {
    this.ws = null;
    this.subs = new Map(); // key -> {target, handlers:Set}
    this.state = "idle"; // idle | connecting | open | closed
    this.listeners = new Set();
    this.retry = 0;
    this.timer = null;
    this.lastMessage = 0;
  }

  key(target) {
    return target.run != null ? `run:${target.run}` : `experiment:${target.experiment}`;
  }

  onState(fn) {
    this.listeners.add(fn);
    fn(this.state);
    return () => this.listeners.delete(fn);
  }

  setState(s) {
    this.state = s;
    for (const fn of this.listeners) fn(s);
  }

  connect() {
    if (this.ws || typeof WebSocket === "undefined") return;
    const key = apiKey();
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws${key ? `?api_key=${encodeURIComponent(key)}` : ""}`;
    this.setState("connecting");
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.retry = 0;
      this.setState("open");
      for (const { target } of this.subs.values()) this.send({ subscribe: target });
    };
    ws.onmessage = (ev) => {
      this.lastMessage = Date.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.dispatch(msg);
    };
    ws.onclose = (ev) => {
      this.ws = null;
      this.setState("closed");
      if (ev.code === 4401) { window.dispatchEvent(new CustomEvent("runstream:unauthorized")); return; } // no retry without a key
      if (this.subs.size) this.scheduleReconnect();
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  scheduleReconnect() {
    if (this.timer) return;
    const delay = Math.min(10000, 500 * 2 ** this.retry++);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.subs.size) this.connect();
    }, delay);
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
  }

  dispatch(msg) {
    if (msg.type === "updates" && Array.isArray(msg.updates)) {
      // Several runs' updates in one frame (the server batches per subscriber).
      for (const u of msg.updates) this.dispatch(u);
      return;
    }
    if (msg.type === "snapshot" && msg.target) {
      const sub = this.subs.get(this.key(msg.target));
      if (sub) for (const fn of sub.handlers) fn(msg);
    } else if (msg.type === "update") {
      // An update may match a run subscription and an experiment subscription.
      const seen = new Set();
      for (const k of [`run:${msg.run}`, `experiment:${msg.experiment}`]) {
        const sub = this.subs.get(k);
        if (!sub) continue;
        for (const fn of sub.handlers) {
          if (seen.has(fn)) continue;
          seen.add(fn);
          fn(msg);
        }
      }
    } else if (msg.type === "error") {
      console.warn("runstream live:", msg.message);
    }
  }

  subscribe(target, handler) {
    const k = this.key(target);
    let sub = this.subs.get(k);
    if (!sub) {
      sub = { target, handlers: new Set() };
      this.subs.set(k, sub);
      this.send({ subscribe: target });
    }
    sub.handlers.add(handler);
    this.connect();
    return () => {
      sub.handlers.delete(handler);
      if (!sub.handlers.size && this.subs.get(k) === sub) {
        this.subs.delete(k);
        this.send({ unsubscribe: target });
      }
    };
  }
}

export const live = new Live();

/** Plot-friendly value: finite numbers stay, everything else (strings, null) becomes null. */
export function numOrNull(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}
