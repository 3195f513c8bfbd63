// Small DOM and formatting helpers. All text goes through textContent, never innerHTML.

/** h("div.card", {title: "x", onclick: fn}, child, "text", [more]) -> HTMLElement */
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className += (el.className ? " " : "") + v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
      else if (k in el && typeof v !== "string") el[k] = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace el's children; accepts nested arrays, skips null/false. */
export function put(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function isNum(v) {
  return typeof v === "number" && Number.isFinite(v);
}

/** Compact, readable number: 0.001234 -> 0.001234, 1234567 -> 1.235e6, 12.3456789 -> 12.3457 */
export function fmtNum(v) {
  if (v == null) return "–";
  if (typeof v !== "number") return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e9) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-4)) return v.toExponential(3);
  return String(Number(v.toPrecision(6)));
}

export function fmtBytes(n) {
  if (!isNum(n)) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function relTime(ts, now = Date.now() / 1000) {
  if (!ts) return "–";
  const d = now - ts;
  const a = Math.abs(d);
  const fmt = (n, u) => `${Math.round(n)}${u}`;
  let s;
  if (a < 5) return "just now";
  if (a < 60) s = fmt(a, "s");
  else if (a < 3600) s = fmt(a / 60, "m");
  else if (a < 86400) s = fmt(a / 3600, "h");
  else if (a < 86400 * 30) s = fmt(a / 86400, "d");
  else return new Date(ts * 1000).toLocaleDateString();
  return d >= 0 ? `${s} ago` : `in ${s}`;
}

export function absTime(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "";
}

export function duration(start, end) {
  if (!start) return "–";
  const s = Math.max(0, (end || Date.now() / 1000) - start);
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.round(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.round((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.round((s % 86400) / 3600)}h`;
}

/** <time> element that the app's ticker refreshes every few seconds. */
export function timeEl(ts) {
  return h("time.rel", { datetime: ts ? new Date(ts * 1000).toISOString() : "", title: absTime(ts), dataset: { ts: ts || "" } }, relTime(ts));
}

export function refreshTimes(root = document) {
  const now = Date.now() / 1000;
  for (const el of root.querySelectorAll("time.rel")) {
    const ts = Number(el.dataset.ts);
    if (ts) {
      const t = relTime(ts, now);
      if (el.textContent !== t) el.textContent = t;
    }
  }
}

// Crashed is shown, never stored: the api derives it from stopped heartbeats (runstream/lifecycle.py).
export const STATUSES = ["Running", "Queued", "NotStarted", "Completed", "Failed", "Canceled", "Crashed"];
/** Statuses a run does not leave. */
export const TERMINAL = new Set(["Completed", "Failed", "Canceled"]);

export function statusBadge(status) {
  const s = status || "Unknown";
  return h(`span.badge.st-${s.toLowerCase()}`, { title: s }, s);
}

export function setBadge(el, status) {
  const s = status || "Unknown";
  el.className = `badge st-${s.toLowerCase()}`;
  el.textContent = s;
  el.title = s;
}

/** Coalesce calls into one per animation frame. */
export function rafThrottle(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}

/** Like rafThrottle, but at most one frame per `ms` (for big tables under a storm of updates). */
export function frameThrottle(fn, ms) {
  const t = throttle(() => requestAnimationFrame(() => fn()), ms);
  return t;
}

/** Set text only when it changed: avoids needless style/layout work. */
export function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

/** At most one call per `ms`, trailing call guaranteed. */
export function throttle(fn, ms) {
  let last = 0;
  let timer = null;
  return (...args) => {
    const wait = last + ms - Date.now();
    if (wait <= 0 && !timer) {
      last = Date.now();
      fn(...args);
    } else if (!timer) {
      timer = setTimeout(() => {
        timer = null;
        last = Date.now();
        fn(...args);
      }, Math.max(0, wait));
    }
  };
}

/** The tags MLflow's client sets on every run (mlflow.user, mlflow.source.*, mlflow.runName,
 * mlflow.parentRunId): not the user's; the run page shows them in its "Run" card. */
export const isSystemTag = (k) => k.startsWith("mlflow.");

export function userTags(tags) {
  return Object.fromEntries(Object.entries(tags || {}).filter(([k]) => !isSystemTag(k)));
}

export function tagChips(tags, max = 6) {
  const entries = Object.entries(userTags(tags));
  const chips = entries.slice(0, max).map(([k, v]) => h("span.chip", { title: v ? `${k}=${v}` : k }, v ? [h("b", k), `=${v}`] : k));
  if (entries.length > max) chips.push(h("span.chip.more", `+${entries.length - max}`));
  return chips;
}

export function kvTable(obj, emptyText) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h("p.muted", emptyText);
  return h("table.kv", h("tbody", entries.map(([k, v]) => h("tr", h("th", k), h("td", v === "" ? h("span.muted", "(no value)") : String(v))))));
}

export function message(kind, text) {
  return h(`div.msg.${kind}`, text);
}

export function encodePath(p) {
  return p.split("/").map(encodeURIComponent).join("/");
}
