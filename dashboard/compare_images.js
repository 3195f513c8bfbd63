// Images of several runs side by side (compare page): one row per image name, one column per run.
// Images carry no step in the wire format (ingest's log_image overwrites images/<name>); a name
// ending in a step (`samples@200`, `samples_step200`, `samples/200`) is read as that image at that
// step, and a slider picks the step: each run shows its image at the latest step not after it.
import { api, fileUrl } from "./api.js";
import { h, put } from "./util.js";

const STEP = /^(.*?)(?:@|\/|[_-]step[_-]?|[_-]s)(\d+)$/;

/** "samples@200" -> ["samples", 200]; a name without a step -> [name, null]. */
export function imageKey(name) {
  const m = STEP.exec(name);
  return m ? [m[1], Number(m[2])] : [name, null];
}

/** imagesSection(box, {ids, runs, colorOf}) -> {reload, cleanup}; the box stays hidden without images. */
export function imagesSection(box, { ids, runs, colorOf }) {
  let disposed = false;
  let seq = 0;
  const shown = ids.slice(0, 12); // side by side: a dozen columns at most
  let chosenStep = null; // the slider's step once the user moved it
  const load = () => {
  const mine = ++seq;
  const byName = new Map(); // base name -> Map(run id -> [[step, file]])
  Promise.all(shown.map((id) => api.files(id).then((files) => {
    for (const f of files) {
      if (f.kind !== "image") continue;
      const [base, step] = imageKey(f.name || f.path.replace(/^images\//, "").replace(/\.\w+$/, ""));
      if (!byName.has(base)) byName.set(base, new Map());
      const per = byName.get(base);
      if (!per.has(id)) per.set(id, []);
      per.get(id).push([step ?? -1, f]);
    }
  }).catch(() => {}))).then(() => {
    if (disposed || mine !== seq || !byName.size) return;
    const steps = [...new Set([...byName.values()].flatMap((per) => [...per.values()].flatMap((l) => l.map(([s]) => s))))].filter((s) => s >= 0).sort((a, b) => a - b);
    const start = chosenStep != null && steps.includes(chosenStep) ? steps.indexOf(chosenStep) : Math.max(0, steps.length - 1);
    const slider = h("input", { type: "range", min: 0, max: Math.max(0, steps.length - 1), step: 1, value: start, "aria-label": "image step" });
    const stepOut = h("output.muted");
    const grid = h("div.image-grid");
    const render = () => {
      const at = steps.length ? steps[Number(slider.value)] : Infinity;
      stepOut.textContent = steps.length ? `step ${at}` : "";
      put(grid, h("table.image-compare",
        h("thead", h("tr", h("th", "image"), shown.map((id) => h("th", h("span.swatch", { style: { background: colorOf(id) } }), runs.get(id)?.name || id)))),
        h("tbody", [...byName.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([base, per]) => h("tr", { dataset: { image: base } },
          h("th", base),
          shown.map((id) => {
            const list = (per.get(id) || []).filter(([s]) => s <= at).sort((a, b) => a[0] - b[0]);
            const pick = list[list.length - 1];
            if (!pick) return h("td.muted", "–");
            const [s, f] = pick;
            return h("td", { dataset: { run: id, step: s >= 0 ? String(s) : "" } },
              h("a", { href: fileUrl(id, f.path), target: "_blank", rel: "noopener" }, h("img", { src: fileUrl(id, f.path), alt: `${base} of ${runs.get(id)?.name || id}`, loading: "lazy" })),
              s >= 0 ? h("div.muted", `step ${s}`) : null);
          }))))));
    };
    slider.addEventListener("input", () => { chosenStep = steps[Number(slider.value)] ?? null; render(); });
    put(box, h("div.section-head", h("h2", "Images"), steps.length > 1 ? h("div.inline", slider, stepOut) : null,
      ids.length > shown.length ? h("span.muted", `the first ${shown.length} of ${ids.length} runs`) : null), grid);
    box.hidden = false;
    render();
  });
  };
  load();
  return { reload: load, cleanup: () => { disposed = true; } };
}
