// RunDetails notebook widget (runstream/widgets.py, not the dashboard: it ships here as package data beside uPlot): status, duration, a chart per metric,
// child runs with their primary metric and a chart of it across children, the output tail.
// History comes from the kernel (the `initial` trait: the api is another origin, so the page
// cannot read it); everything after comes from the api's /ws pushes, not polling.
// uPlot is the package's own copy, prepended to this module by widgets.py.

const TERMINAL = new Set(["Completed", "Failed", "Canceled"]);
const MAX_POINTS = 5000;
const LOG_TAIL = 200;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function fmtDuration(start, end) {
  if (!start) return "";
  const s = Math.max(0, (end || Date.now() / 1000) - start);
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = (s % 60).toFixed(0).padStart(2, "0");
  return `${hh}:${String(mm).padStart(2, "0")}:${ss}`;
}

function fmt(v) {
  return typeof v === "number" ? (Math.abs(v) >= 1000 || Math.abs(v) < 0.01 ? v.toPrecision(4) : v.toFixed(4)) : v == null ? "" : String(v);
}

function render({ model, el: root }) {
  const init = model.get("initial") || {};
  const runId = model.get("run_id");
  const st = {
    status: init.status || "Unknown",
    created_at: init.created_at || null,
    ended_at: init.ended_at || null,
    experiment: init.experiment || "",
    series: {},
    logs: (init.logs || []).slice(-LOG_TAIL),
    children: new Map((init.children || []).map((c) => [c.id, c])),
    primary: init.primary_metric || "",
  };
  for (const [name, s] of Object.entries(init.series || {})) st.series[name] = { s: s.s.slice(), v: s.v.slice() };

  root.classList.add("runstream-widget");
  const badge = el("span", { class: "rs-badge" });
  const dur = el("span", { class: "rs-duration" });
  const link = el("a", { href: model.get("portal_url"), target: "_blank", rel: "noopener", textContent: "run page" });
  const conn = el("span", { class: "rs-conn", textContent: "connecting" });
  const charts = el("div", { class: "rs-charts" });
  const kids = el("div", { class: "rs-children" });
  const logs = el("pre", { class: "rs-logs" });
  root.append(
    el("div", { class: "rs-head" }, el("b", { textContent: init.name || runId }), badge, dur, link, conn),
    el("div", { class: "rs-error" }),
    charts, kids, logs,
  );
  const plots = new Map(); // metric -> {plot, box}

  function showStatus() {
    badge.textContent = st.status;
    badge.className = `rs-badge rs-${st.status.toLowerCase()}`;
    root.dataset.status = st.status;
    dur.textContent = fmtDuration(st.created_at, st.ended_at);
  }

  function chart(name) {
    let entry = plots.get(name);
    const data = st.series[name];
    const xs = data.s, ys = data.v.map((v) => (typeof v === "number" ? v : null));
    if (!entry) {
      const box = el("div", { class: "rs-chart", "data-metric": name }, el("div", { class: "rs-chart-title", textContent: name }));
      charts.append(box);
      const plot = new uPlot({ width: 320, height: 160, legend: { show: false }, scales: { x: { time: false } },
        series: [{}, { label: name, stroke: "#4e8fe0", width: 1.5 }], axes: [{ size: 28 }, { size: 48 }] }, [xs, ys], box);
      entry = { plot, box };
      plots.set(name, entry);
    } else {
      entry.plot.setData([xs, ys]);
    }
    entry.box.setAttribute("data-points", String(xs.length));
  }

  function addPoints(name, slot) {
    const data = (st.series[name] ||= { s: [], v: [] });
    const last = data.s.length ? data.s[data.s.length - 1] : -Infinity;
    if (slot.truncated && slot.s.length && (slot.n || 0) > slot.s.length) {
      // The update carried only the newest points of a burst: the kernel reads the rest.
      model.send({ type: "series", name, from_step: Number.isFinite(last) ? last + 1 : 0 });
    }
    slot.s.forEach((s, i) => {
      if (s > last) { data.s.push(s); data.v.push(slot.v[i]); }
    });
    if (data.s.length > MAX_POINTS) { data.s.splice(0, data.s.length - MAX_POINTS); data.v.splice(0, data.v.length - MAX_POINTS); }
    chart(name);
  }

  let kidsPlot = null;
  function showChildren() {
    kids.replaceChildren();
    if (!st.children.size) return;
    const rows = [...st.children.values()];
    const primary = st.primary;
    kids.append(el("div", { class: "rs-chart-title", textContent: `Child runs (${rows.length})${primary ? ` · ${primary}` : ""}` }));
    const table = el("table", { class: "rs-kids" }, el("tr", {}, el("th", { textContent: "Run" }), el("th", { textContent: "Status" }), el("th", { textContent: primary || "metric" })));
    rows.forEach((c) => table.append(el("tr", { "data-run": c.id }, el("td", { textContent: c.name || c.id }),
      el("td", { class: `rs-${(c.status || "").toLowerCase()}`, textContent: c.status || "" }), el("td", { textContent: fmt(c.primary) }))));
    kids.append(table);
    const values = rows.map((c) => (typeof c.primary === "number" ? c.primary : null));
    const box = el("div", { class: "rs-chart rs-kids-chart", "data-points": String(values.filter((v) => v != null).length) });
    kids.append(box);
    if (kidsPlot) kidsPlot.destroy();
    kidsPlot = new uPlot({ width: 320, height: 140, legend: { show: false }, scales: { x: { time: false } },
      series: [{}, { label: primary, stroke: "#e0864e", width: 1.5, points: { size: 6 } }], axes: [{ size: 28 }, { size: 48 }] },
      [rows.map((_, i) => i), values], box);
  }

  function showLogs() {
    logs.textContent = st.logs.map((l) => l.line).join("\n");
    logs.dataset.lines = String(st.logs.length);
    logs.scrollTop = logs.scrollHeight;
  }

  function apply(u) {
    if (u.run === runId) {
      if (u.status) {
        st.status = u.status;
        if (TERMINAL.has(u.status) && !st.ended_at) st.ended_at = u.server_time || Date.now() / 1000;
      }
      for (const [name, slot] of Object.entries(u.metrics || {})) addPoints(name, slot);
      if (u.logs?.length) { st.logs.push(...u.logs); st.logs.splice(0, Math.max(0, st.logs.length - LOG_TAIL)); showLogs(); }
      showStatus();
    } else if (st.children.has(u.run)) {
      const c = st.children.get(u.run);
      if (u.status) c.status = u.status;
      const slot = st.primary && u.metrics?.[st.primary];
      if (slot?.v?.length) c.primary = slot.v[slot.v.length - 1];
      showChildren();
    }
  }

  let ws = null;
  let closed = false;
  function connect() {
    const key = model.get("api_key");
    ws = new WebSocket(model.get("ws_url") + (key ? `?api_key=${encodeURIComponent(key)}` : ""));
    ws.onopen = () => {
      conn.textContent = "live";
      ws.send(JSON.stringify({ subscribe: { run: runId } }));
      if (st.children.size && st.experiment) ws.send(JSON.stringify({ subscribe: { experiment: st.experiment } }));
    };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "snapshot") {
        for (const r of msg.runs || []) {
          if (r.id === runId) {
            st.status = r.status; st.created_at = r.created_at || st.created_at; st.ended_at = r.ended_at || st.ended_at;
            st.experiment = r.experiment || st.experiment;
            showStatus();
          } else if (st.children.has(r.id)) {
            st.children.get(r.id).status = r.status;
            showChildren();
          }
        }
      } else if (msg.type === "updates") {
        msg.updates.forEach(apply);
      } else if (msg.type === "update") {
        apply(msg);
      }
    };
    ws.onclose = () => {
      conn.textContent = TERMINAL.has(st.status) ? "ended" : "reconnecting";
      if (!closed && !TERMINAL.has(st.status)) setTimeout(connect, 1000);
    };
  }

  model.on("msg:custom", (msg) => {
    if (msg?.type !== "series" || !Array.isArray(msg.s)) return;
    const data = (st.series[msg.name] ||= { s: [], v: [] });
    // Points from from_step on, as stored: they replace what the live tail had there.
    const keep = data.s.findIndex((s) => s >= msg.from_step);
    const cut = keep < 0 ? data.s.length : keep;
    const tailS = data.s.slice(cut), tailV = data.v.slice(cut);
    data.s.length = cut; data.v.length = cut;
    msg.s.forEach((s, i) => { data.s.push(s); data.v.push(msg.v[i]); });
    const top = data.s.length ? data.s[data.s.length - 1] : -Infinity;
    tailS.forEach((s, i) => { if (s > top) { data.s.push(s); data.v.push(tailV[i]); } });
    chart(msg.name);
    const box = plots.get(msg.name).box;
    box.dataset.refetched = String(Number(box.dataset.refetched || 0) + 1);
  });

  showStatus();
  for (const name of Object.keys(st.series)) chart(name);
  showChildren();
  showLogs();
  connect();
  const ticker = setInterval(showStatus, 1000);
  return () => {
    closed = true;
    clearInterval(ticker);
    if (ws) ws.close();
    for (const { plot } of plots.values()) plot.destroy();
    if (kidsPlot) kidsPlot.destroy();
  };
}

export default { render };
