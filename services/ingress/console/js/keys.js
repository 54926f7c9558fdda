// Keys: create (the secret shown once), list with prefix, scope and last use, rotate, revoke.

import { get, post, remove } from "./api.js";
import {
  ago,
  badge,
  button,
  clearErrors,
  confirmDialog,
  copyButton,
  field,
  formError,
  h,
  heading,
  pagedTable,
  problemText,
  row,
  select,
  showError,
  toast,
  when,
} from "./ui.js";

function secretPanel(title, issued) {
  return h(
    "section",
    { class: "card secret", role: "alert" },
    h("h2", {}, title),
    h(
      "p",
      { class: "warning" },
      h("strong", {}, "Copy this secret now: it will not be shown again. "),
      "Only its digest is stored; if it is lost, rotate or revoke the key.",
    ),
    h(
      "div",
      { class: "secret-line" },
      h("code", { class: "secret-value", "data-secret": "" }, issued.secret),
      copyButton(issued.secret, "Copy secret"),
    ),
    h("p", {}, `Key ${issued.key.name} (${issued.key.scope}), prefix `, h("code", {}, issued.key.prefix)),
  );
}

export async function keysPage({ main }) {
  const revealed = h("div", { "aria-live": "polite" });
  const actionsError = h("div", { class: "form-error", role: "alert" });

  const name = h("input", { name: "name", required: true, maxlength: 200, autocomplete: "off" });
  const scope = select(
    "scope",
    [
      ["trigger", "Trigger: may only call triggers"],
      ["admin", "Admin: manages the workspace"],
    ],
    "trigger",
  );
  const expires = h("input", { name: "expires_at", type: "datetime-local" });
  const form = h(
    "form",
    { class: "card form-grid" },
    h("h2", { class: "wide" }, "Create a key"),
    field("Name", name),
    field("Scope", scope),
    field("Expires (optional)", expires),
    formError(),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Create key")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const body = { name: name.value.trim(), scope: scope.value };
    if (expires.value) body.expires_at = new Date(expires.value).toISOString();
    try {
      const issued = await post("/v1/keys", body);
      revealed.replaceChildren(secretPanel("New key created", issued));
      form.reset();
      await redrawList();
      revealed.querySelector("button").focus();
    } catch (error) {
      showError(form, error, { invalid_name: "name" });
    }
  });

  const listSlot = h("div");
  function keyRow(key) {
    const revoke = button(
      "Revoke",
      async () => {
        const sure = await confirmDialog(
          "Revoke this key?",
          `“${key.name}” (${key.prefix}…) stops working at once, everywhere. This cannot be undone.`,
          "Revoke key",
        );
        if (!sure) return;
        try {
          await remove(`/v1/keys/${key.id}`);
          toast(`Key ${key.name} revoked`);
          actionsError.replaceChildren();
          await redrawList();
        } catch (error) {
          actionsError.replaceChildren(problemText(error));
        }
      },
      { class: "danger small" },
    );
    const rotate = button(
      "Rotate",
      async () => {
        const sure = await confirmDialog(
          "Rotate this key?",
          `“${key.name}” gets a new secret, shown once; the old secret keeps working for 24 hours.`,
          "Rotate key",
        );
        if (!sure) return;
        try {
          const issued = await post(`/v1/keys/${key.id}/rotate`, { grace_seconds: 86400 });
          revealed.replaceChildren(secretPanel("Key rotated", issued));
          actionsError.replaceChildren();
          await redrawList();
        } catch (error) {
          actionsError.replaceChildren(problemText(error));
        }
      },
      { class: "ghost small" },
    );
    const tr = row(
      key.name,
      badge(key.scope),
      h("code", {}, `${key.prefix}…`),
      when(key.created_at),
      ago(key.last_used_at),
      key.expires_at ? when(key.expires_at) : "never",
      h("div", { class: "row-actions" }, rotate, revoke),
    );
    tr.dataset.keyId = key.id;
    return tr;
  }
  async function redrawList() {
    listSlot.replaceChildren(
      await pagedTable({
        headers: ["Name", "Scope", "Prefix", "Created", "Last used", "Expires", ""],
        load: (cursor) => get("/v1/keys", { limit: 50, cursor }),
        toRow: keyRow,
        empty: "No keys.",
      }),
    );
  }
  await redrawList();
  main.replaceChildren(heading("API keys"), revealed, actionsError, listSlot, form);
}
