// Key entry: when the api answers 401 (or the live socket closes with 4401), a screen asks for
// an API key (`runstream keys create --project P`), keeps it in this browser's localStorage
// (runstream_api_key) and reloads the page with it; a refused key says so. Sign out forgets it.
import { h } from "./util.js";

const STORE = "runstream_api_key";
let shown = null;

function storedKey() {
  try { return localStorage.getItem(STORE) || ""; } catch { return ""; }
}

export function showKeyEntry() {
  if (shown) return;
  const had = storedKey();
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off", spellcheck: false, placeholder: "rs_…", "aria-label": "API key", size: 40 });
  const error = h("p.msg.error", { hidden: !had, role: "alert" }, had ? "The saved API key was refused (revoked, or for no project here). Enter another." : "");
  const save = () => {
    const key = input.value.trim();
    if (!key) { error.hidden = false; error.textContent = "Enter a key."; return; }
    try { localStorage.setItem(STORE, key); } catch { error.hidden = false; error.textContent = "This browser does not allow storing the key."; return; }
    location.reload();
  };
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") save(); });
  shown = h("div.key-entry", { role: "dialog", "aria-modal": "true", "aria-labelledby": "key-entry-title" },
    h("form.card.key-card", { onsubmit: (e) => { e.preventDefault(); save(); } },
      h("h2", { id: "key-entry-title" }, "API key required"),
      h("p", "This runstream server asks for an API key. Create one with ", h("code", "runstream keys create --project <name>"), " and paste it here."),
      h("label.field", h("span", "API key"), input),
      error,
      h("div.inline", h("button.primary", { type: "submit" }, "Use this key"),
        had ? h("button.ghost", { type: "button", onclick: () => { try { localStorage.removeItem(STORE); } catch { /* ignore */ } location.reload(); } }, "Forget the saved key") : null),
      h("p.muted", "The key stays in this browser (localStorage) and is sent with each request.")));
  document.body.append(shown);
  input.focus();
}

window.addEventListener("runstream:unauthorized", showKeyEntry);
