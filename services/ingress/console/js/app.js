// The console's router: `#/section/...?query` hashes, so every page is linkable and the back
// button works. Each page renders into <main> and may return a function that stops its polling.

import { ApiError, call, onKeyRefused, session } from "./api.js";
import { flowPage, flowsPage, newFlowPage } from "./flows.js";
import { keysPage } from "./keys.js";
import { forgetFlows } from "./names.js";
import { runPage, runsPage } from "./runs.js";
import { editTriggerPage, newTriggerPage, triggerPage, triggersPage } from "./triggers.js";
import { field, formError, h, showError } from "./ui.js";

const routes = [
  [/^\/flows$/, flowsPage],
  [/^\/flows\/new$/, newFlowPage],
  [/^\/flows\/([^/]+)$/, flowPage],
  [/^\/triggers$/, triggersPage],
  [/^\/triggers\/new$/, newTriggerPage],
  [/^\/triggers\/([^/]+)\/edit$/, editTriggerPage],
  [/^\/triggers\/([^/]+)$/, triggerPage],
  [/^\/runs$/, runsPage],
  [/^\/runs\/([^/]+)$/, runPage],
  [/^\/keys$/, keysPage],
];

const main = document.getElementById("main");
let stopPage = null;
let refusal = null;

function parseHash() {
  const hash = window.location.hash.replace(/^#/, "") || "/flows";
  const [path, query = ""] = hash.split("?");
  return { path, params: new URLSearchParams(query) };
}

async function render() {
  if (!window.location.hash.startsWith("#/")) {
    window.location.replace("#/flows");
    return;
  }
  if (stopPage) stopPage();
  stopPage = null;
  forgetFlows(); // names are looked up again per page: a renamed or new flow shows as it is
  const { path, params } = parseHash();
  const signedIn = Boolean(session.key);
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  if (!signedIn || path === "/sign-in") {
    // A page opened signed out (a bookmark, a link: a new tab has no key) is shown once signed in.
    const next = path === "/sign-in" ? params.get("next") : window.location.hash.slice(1);
    main.replaceChildren(signInPage(next));
    main.querySelector("input").focus();
    return;
  }
  const section = path.split("/")[1];
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const found = routes.find(([pattern]) => pattern.test(path));
  main.replaceChildren(h("p", { class: "loading" }, "Loading…"));
  if (!found) {
    main.replaceChildren(h("h1", {}, "Not found"), h("p", {}, `No page ${path}.`));
    return;
  }
  const [pattern, page] = found;
  const [, ...ids] = path.match(pattern);
  const rendered = hashAtRender();
  const stop = await page({ main, params, ids: ids.map(decodeURIComponent) });
  if (rendered !== hashAtRender()) {
    if (stop) stop(); // the user moved on while this page loaded
    return;
  }
  stopPage = stop || null;
  document.title = `${main.querySelector("h1")?.textContent || "Console"} · Trigger plane`;
  main.querySelector("h1")?.focus({ preventScroll: true });
}

const hashAtRender = () => window.location.hash;

function signInPage(next) {
  const input = h("input", {
    type: "password",
    name: "key",
    autocomplete: "off",
    spellcheck: false,
    required: true,
    placeholder: "tpk_…",
  });
  const form = h(
    "form",
    { class: "card sign-in", "aria-labelledby": "sign-in-title" },
    h("h1", { id: "sign-in-title" }, "Sign in"),
    h(
      "p",
      {},
      "Paste a workspace admin key. It stays in this browser tab only (session storage) and is " +
        "forgotten when you sign out or close the tab.",
    ),
    field("Workspace admin key", input),
    formError(),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Sign in")),
  );
  if (refusal) {
    showError(form, refusal, { invalid_key: "key", malformed_key: "key", expired_key: "key" });
    refusal = null;
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    try {
      // Any admin call proves the key; a trigger key is refused with 403 admin_key_required.
      await call("GET", "/v1/flows", { query: { limit: 1 }, key });
    } catch (error) {
      showError(form, error, { [error.code]: "key" }); // every refusal is about the key
      return;
    }
    session.signIn(key);
    const target = next && next.startsWith("/") && next !== "/sign-in" ? `#${next}` : "#/flows";
    if (window.location.hash === target) render();
    else window.location.hash = target;
  });
  return form;
}

onKeyRefused((error) => {
  session.signOut();
  refusal = error instanceof ApiError ? error : null;
  const here = window.location.hash.slice(1); // the page, with its filters, to come back to
  const next = here.startsWith("/sign-in") ? "/flows" : here;
  window.location.hash = `#/sign-in?next=${encodeURIComponent(next)}`;
});

document.getElementById("sign-out").addEventListener("click", () => {
  session.signOut();
  window.location.hash = "#/sign-in";
  render();
});

window.addEventListener("hashchange", render);
render();
