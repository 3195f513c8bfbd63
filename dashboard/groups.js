// Grouped runs list: one row per value of a tag or param (GET /api/v1/run-groups) with the
// group's run count and the mean, min and max of each chosen metric's last value across its
// runs; a group row expands to a nested table of its runs (the list's own filters plus
// `<group_by> = "<key>"`).
import { api } from "./api.js";
import { field, quote } from "./filters.js";
import { fmtNum, h, put } from "./util.js";

const AGG = ["mean", "min", "max"];

/** The filter that selects one group's runs. */
export function groupFilter(groupBy, key) {
  if (groupBy === "experiment" || groupBy === "status") return `${groupBy} = ${quote(key ?? "")}`;
  const [prefix, ...rest] = groupBy.split(".");
  return `${field(prefix, rest.join("."))} = ${quote(key ?? "")}`;
}

/** Options for the group-by picker from the keys seen in the list's rows. */
export function groupChoices(tagKeys, paramKeys) {
  return [
    ...[...paramKeys].sort().map((k) => [`params.${k}`, `param ${k}`]),
    ...[...tagKeys].sort().map((k) => [`tags.${k}`, `tag ${k}`]),
    ["status", "status"],
    ["experiment", "experiment"],
  ];
}

/**
 * groupTable({query, groupBy, metrics, runTable}) -> {el, load(signal)}
 * query: the list's /runs parameters (filters included); runTable(filters) -> {el, ready} with a
 * group's runs, built by the runs list so its columns and live updates are the list's own.
 */
export function groupTable({ query, groupBy, metrics, runTable, onError }) {
  const tbody = h("tbody");
  const table = h("table.runs.groups", { dataset: { groupBy } },
    h("thead",
      h("tr", h("th", { rowSpan: 2 }, groupBy), h("th.num", { rowSpan: 2 }, "Runs"),
        metrics.map((m) => h("th.metric-group", { colSpan: 3, title: `${m}: the last value of each run in the group` }, m))),
      h("tr.sub", metrics.flatMap((m) => AGG.map((a) => h("th.num", { title: `${a} of ${m} across the group's runs` }, a))))),
    tbody);
  const open = new Set();

  function row(g) {
    const key = g.key ?? "";
    const toggle = h("button.expand.small", { type: "button", "aria-expanded": "false", "aria-label": `runs of ${groupBy} ${key || "(none)"}` }, "▸");
    const tr = h("tr.group", { dataset: { group: key } },
      h("td.name", toggle, " ", key === "" ? h("span.muted", "(none)") : h("b", key)),
      h("td.num.count", String(g.count)),
      metrics.flatMap((m) => AGG.map((a) => h("td.num", { dataset: { metric: m, agg: a } }, fmtNum(g.metrics?.[m]?.[a] ?? null)))));
    const sub = h("tr.group-runs", { hidden: true, dataset: { group: key } }, h("td", { colSpan: 2 + metrics.length * 3 }));
    const expand = (on, previous) => {
      toggle.setAttribute("aria-expanded", on ? "true" : "false");
      toggle.textContent = on ? "▾" : "▸";
      sub.hidden = !on;
      if (on) {
        open.add(key);
        const t = runTable([...(query.filter || []), groupFilter(groupBy, key)]);
        // After a live re-read the group's old runs stay until the new ones are in.
        if (previous) { put(sub.firstChild, previous); t.ready.then(() => put(sub.firstChild, t.el)); }
        else put(sub.firstChild, t.el);
      } else {
        open.delete(key);
        put(sub.firstChild);
      }
    };
    toggle.addEventListener("click", () => expand(toggle.getAttribute("aria-expanded") !== "true"));
    return { tr, sub, expand, key };
  }

  async function load(signal) {
    let res;
    try {
      res = await api.runGroups({ ...query, group_by: groupBy, metrics: metrics.join(",") }, { signal });
    } catch (e) {
      if (e.name !== "AbortError") onError?.(e);
      return null;
    }
    const before = new Map([...tbody.querySelectorAll("tr.group-runs")].map((tr) => [tr.dataset.group, tr.firstChild.firstChild]));
    const rows = res.groups.map(row);
    put(tbody, ...rows.flatMap((r) => [r.tr, r.sub]));
    if (!rows.length) tbody.append(h("tr", h("td.empty-row", { colSpan: 2 + metrics.length * 3 }, "No runs match.")));
    for (const r of rows) if (open.has(r.key)) r.expand(true, before.get(r.key));
    return res;
  }

  return { el: table, load };
}
