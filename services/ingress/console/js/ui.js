// Small DOM helpers shared by the pages: element building, formatting, errors, dialogs.

/** `h("a", {href: "#/x", class: "y", onclick: f}, "text", child)`: an element. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      element.className = value;
    } else if (name === "dataset") {
      Object.assign(element.dataset, value);
    } else if (name in element && typeof value !== "string") {
      element[name] = value;
    } else {
      element.setAttribute(name, value === true ? "" : value);
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

let uniqueCount = 0;
export const uniqueId = (prefix) => `${prefix}-${++uniqueCount}`;

/** A labelled field: label, control, hint and an error slot tied by aria-describedby. */
export function field(label, control, { hint, wide } = {}) {
  if (!control.id) control.id = uniqueId("f");
  const errorId = `${control.id}-error`;
  const described = [errorId];
  const parts = [h("label", { for: control.id }, label), control];
  if (hint) {
    const hintId = `${control.id}-hint`;
    described.push(hintId);
    parts.push(h("small", { id: hintId, class: "hint" }, hint));
  }
  parts.push(h("small", { id: errorId, class: "field-error", "aria-live": "polite" }));
  control.setAttribute("aria-describedby", described.join(" "));
  return h("div", { class: wide ? "field wide" : "field" }, parts);
}

export function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map(([optionValue, text]) =>
      h("option", { value: optionValue, selected: optionValue === value }, text),
    ),
  );
}

/** Shows `message` under `control` (or clears it with an empty message). */
export function setFieldError(control, message) {
  const slot =
    control.closest(".field")?.querySelector(".field-error") ||
    document.getElementById(`${control.id}-error`);
  if (slot) slot.textContent = message || "";
  if (message) control.setAttribute("aria-invalid", "true");
  else control.removeAttribute("aria-invalid");
}

/** Clears every field error of `form` and its form-level error. */
export function clearErrors(form) {
  for (const control of form.querySelectorAll("[aria-invalid]")) setFieldError(control, "");
  const slot = form.querySelector(".form-error");
  if (slot) slot.replaceChildren();
}

/** The form-level error region (an aria-live alert) of `form`. */
export function formError() {
  return h("div", { class: "form-error", role: "alert", "aria-live": "assertive" });
}

/**
 * Shows an API error next to the field it names (a backquoted field name or `$.path` in its
 * detail, or the fields `byCode` assigns to its code), else in the form's error region.
 */
export function showError(form, error, byCode = {}) {
  const detail = error.detail || String(error);
  const controls = [...form.querySelectorAll("[name]")].filter((c) => !c.disabled);
  // A control hidden with its fieldset is not the one meant (a form not shown yet has no layout).
  const shown = (c) => !c.isConnected || c.offsetParent !== null;
  const named = (name) => controls.find((c) => c.name === name && shown(c));
  let target = byCode[error.code] ? named(byCode[error.code]) : undefined;
  if (!target) {
    for (const match of detail.matchAll(/`\$?\.?([A-Za-z_][\w.]*)`/g)) {
      const path = match[1];
      target = named(path) || named(path.split(".").pop());
      if (target) break;
    }
  }
  const text = error.code ? `${detail} (${error.code})` : detail;
  if (target) {
    setFieldError(target, text);
    target.focus();
  }
  const slot = form.querySelector(".form-error");
  if (slot) slot.replaceChildren(problemText(error, target ? "See the field above." : ""));
}

export function problemText(error, suffix = "") {
  const title = error.title ? `${error.title}: ` : "";
  const detail = error.detail || String(error);
  return h(
    "p",
    { class: "problem" },
    h("strong", {}, title || "Error: "),
    detail,
    error.code ? h("code", { class: "code" }, ` ${error.code}`) : null,
    suffix ? ` ${suffix}` : null,
  );
}

/** An error shown where a whole page failed to load. */
export function pageError(error) {
  return h("div", { class: "form-error", role: "alert" }, problemText(error));
}

export function toast(message) {
  const region = document.getElementById("toast");
  region.textContent = message;
  region.classList.add("shown");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => region.classList.remove("shown"), 4000);
}

/** Asks for confirmation in a modal dialog; resolves true when confirmed. */
export function confirmDialog(title, text, confirmLabel = "Confirm") {
  const dialog = document.getElementById("confirm");
  dialog.querySelector("#confirm-title").textContent = title;
  dialog.querySelector("#confirm-text").textContent = text;
  dialog.querySelector("#confirm-ok").textContent = confirmLabel;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), {
      once: true,
    });
    dialog.showModal();
  });
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No Clipboard API outside a secure context (plain http to another host): copy from a
    // selected textarea, then give the focus back to the button, so the keyboard keeps its place.
    const before = document.activeElement;
    const area = h("textarea", { readonly: true }, text);
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    before?.focus?.();
    if (!copied) {
      toast("Could not copy: select the text and copy it yourself");
      return;
    }
  }
  toast("Copied to the clipboard");
}

export function copyButton(text, label = "Copy") {
  return h("button", { type: "button", class: "ghost small", onclick: () => copyText(text) }, label);
}

// --- formatting -------------------------------------------------------------------------

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

export function when(iso) {
  if (!iso) return "—";
  const moment = new Date(iso);
  return h("time", { datetime: iso, title: iso }, dateTime.format(moment));
}

export function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  const format = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  const span =
    Math.abs(seconds) < 60
      ? format.format(-seconds, "second")
      : Math.abs(seconds) < 3600
        ? format.format(-Math.round(seconds / 60), "minute")
        : Math.abs(seconds) < 86400
          ? format.format(-Math.round(seconds / 3600), "hour")
          : format.format(-Math.round(seconds / 86400), "day");
  return h("time", { datetime: iso, title: iso }, span);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(2)} s`;
  return `${Math.round(seconds / 60)} min`;
}

export function badge(status) {
  return h("span", { class: `badge status-${status}` }, String(status).replace("_", " "));
}

export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

/** A table that scrolls sideways in a narrow window. */
export function table(headers, rows, empty = "Nothing here yet.") {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "div",
    { class: "table-wrap", tabindex: "0" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, headers.map((text) => h("th", { scope: "col" }, text)))),
      h("tbody", {}, rows),
    ),
  );
}

export const row = (...cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell)));

export function heading(title, ...actions) {
  return h(
    "div",
    { class: "page-head" },
    h("h1", { tabindex: "-1" }, title),
    h("div", { class: "actions" }, actions),
  );
}

export const link = (href, text, attributes = {}) => h("a", { href, ...attributes }, text);
export const button = (text, onclick, attributes = {}) =>
  h("button", { type: "button", onclick, ...attributes }, text);

export function debounce(fn, milliseconds) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), milliseconds);
  };
}

/** Runs `fn` every `milliseconds` while the page is visible; returns the stop function. */
export function whileVisible(fn, milliseconds) {
  let timer = null;
  const tick = async () => {
    timer = null;
    if (document.visibilityState === "visible") {
      try {
        await fn();
      } catch {
        // a failed refresh is shown by the next one; keep polling
      }
    }
    if (!stopped) timer = setTimeout(tick, milliseconds);
  };
  let stopped = false;
  timer = setTimeout(tick, milliseconds);
  const onVisible = () => {
    if (document.visibilityState === "visible" && timer !== null) {
      clearTimeout(timer);
      tick();
    }
  };
  document.addEventListener("visibilitychange", onVisible);
  return () => {
    stopped = true;
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisible);
  };
}

/**
 * A table fed page by page from a cursor-paginated list (`load(cursor)` answers
 * `{items, next_cursor}`), with a "Load more" button while there are more pages.
 */
export async function pagedTable({ headers, load, toRow, empty = "Nothing here yet." }) {
  const body = h("tbody");
  const wrap = h(
    "div",
    { class: "table-wrap", tabindex: "0" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, headers.map((text) => h("th", { scope: "col" }, text)))),
      body,
    ),
  );
  const emptyNote = h("p", { class: "empty" }, empty);
  const problems = h("div", { class: "form-error", role: "alert" });
  let cursor = null;
  const more = h("button", { type: "button", class: "ghost" }, "Load more");
  async function next() {
    if (more.getAttribute("aria-disabled")) return;
    // Not `disabled`: a focused button that is disabled loses the focus to the page.
    more.setAttribute("aria-disabled", "true");
    try {
      const page = await load(cursor);
      body.append(...page.items.map(toRow));
      cursor = page.next_cursor || null;
      problems.replaceChildren();
    } catch (error) {
      problems.replaceChildren(problemText(error));
    }
    more.removeAttribute("aria-disabled");
    more.hidden = !cursor;
    wrap.hidden = body.children.length === 0;
    emptyNote.hidden = body.children.length > 0;
  }
  more.addEventListener("click", next);
  await next();
  return h("div", { class: "paged" }, problems, wrap, emptyNote, h("div", { class: "more" }, more));
}

/** Replaces the children of `element` (arrays flattened, null and false left out). */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
}
