// The runs list's filter bar: conditions in the api's filter language (api/run_filters.py:
// metric.mse < 3400, params.alpha >= 0.5, tags.model = ridge, status != Failed), each applied
// condition a removable chip. The api parses them; a condition it refuses comes back to the input.
import { h, put } from "./util.js";

export const FILTER_HELP = "metric.mse < 3400 · params.alpha >= 0.5 · tags.model = ridge · status != Failed · name ~ text; join with and";

/** Quote a tag/param value for a filter: "ridge" -> "ridge" with escapes. */
export function quote(v) {
  return `"${String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

/** A field name for the filter language: params.alpha, or params.`a b` when it needs quoting. */
export function field(prefix, name) {
  return /^[^\s=!<>~`"':]+$/.test(name) ? `${prefix}.${name}` : `${prefix}.\`${name}\``;
}

/**
 * filterBar({filters, onChange}) -> {el, set(list), reject(text, message)}
 * onChange(list) is called with the new list of condition strings.
 */
export function filterBar({ filters, onChange }) {
  let list = [...filters];
  const chips = h("span.filter-chips");
  const input = h("input.filter-input", {
    type: "text", placeholder: "metric.mse < 3400 and params.alpha >= 0.5", size: 36, "aria-label": "filter runs", title: FILTER_HELP,
    onkeydown: (e) => { if (e.key === "Enter") add(); },
  });
  const error = h("span.filter-error", { role: "alert" });
  function render() {
    put(chips, ...list.map((f) => h("span.chip.removable.filter-chip", { dataset: { filter: f } }, f,
      h("button", { type: "button", title: `remove ${f}`, "aria-label": `remove filter ${f}`, onclick: () => { list = list.filter((x) => x !== f); render(); onChange(list); } }, "×"))));
  }
  function add() {
    const f = input.value.trim();
    if (!f || list.includes(f)) return;
    input.value = "";
    error.textContent = "";
    list = [...list, f];
    render();
    onChange(list);
  }
  render();
  return {
    el: h("div.field.filter-field", h("span", "Filter"), h("div.filter-box", chips, input,
      h("button.small", { type: "button", onclick: add }, "Apply")), error),
    set(next) { list = [...next]; render(); },
    /** The api refused `text`: take it off the list, back into the input, with the api's message. */
    reject(text, message) {
      list = list.filter((x) => x !== text);
      render();
      input.value = text;
      error.textContent = message;
      return list;
    },
    clearError() { error.textContent = ""; },
  };
}
