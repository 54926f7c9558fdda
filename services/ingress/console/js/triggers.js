// Triggers: the list, the create and edit form (with the live preview of a schedule's next
// fires), and a trigger's page: curl command or webhook URL and secret rotation, pause/resume,
// Run now, delete, fire ledger, refused deliveries.

import { call, get, patch, post, remove } from "./api.js";
import { allFlows, flowLink, flowName, resolveFlows } from "./names.js";
import { runRow, RUN_HEADERS, runsWithFlows } from "./runs.js";
import {
  ago,
  badge,
  button,
  clearErrors,
  confirmDialog,
  copyButton,
  debounce,
  field,
  formError,
  h,
  heading,
  json,
  link,
  pagedTable,
  pageError,
  problemText,
  row,
  select,
  setFieldError,
  showError,
  table,
  toast,
  when,
} from "./ui.js";

export const TRIGGER_HEADERS = ["Name", "Type", "Flow", "State", "Schedule or sender", "Updated"];

export const SCHEMES = {
  standard_webhooks: "Standard Webhooks",
  github: "GitHub",
  stripe: "Stripe",
  hmac: "HMAC-SHA256 (generic)",
};

/** The webhook URL a sender must call. */
export const hookUrl = (trigger) => `${window.location.origin}/hooks/${trigger.id}`;

export function describeSchedule(schedule) {
  if (!schedule) return "—";
  const zone = schedule.timezone || "UTC";
  switch (schedule.kind) {
    case "hourly":
      return `hourly at :${String(schedule.minute ?? 0).padStart(2, "0")}`;
    case "daily":
      return `daily at ${schedule.at} (${zone})`;
    case "weekly":
      return `${schedule.days.join(", ")} at ${schedule.at} (${zone})`;
    case "cron":
      return `cron ${schedule.cron} (${zone})`;
    case "interval":
      return `every ${schedule.every} ${schedule.unit || "seconds"}`;
    case "once":
      return `once at ${schedule.at} (${zone})`;
    default:
      return schedule.kind;
  }
}

function triggerDetail(trigger) {
  if (trigger.type === "schedule") return describeSchedule(trigger.schedule);
  if (trigger.type === "webhook") return `${SCHEMES[trigger.scheme] || trigger.scheme} webhook`;
  return "—";
}

/** A row of the triggers table (its flow's name from names.js: call resolveFlows first). */
export function triggerRow(trigger) {
  return row(
    link(`#/triggers/${trigger.id}`, trigger.name || trigger.id),
    h("span", { class: `type type-${trigger.type}` }, trigger.type),
    flowLink(trigger.flow_id),
    trigger.enabled ? badge("active") : badge("paused"),
    triggerDetail(trigger),
    ago(trigger.updated_at),
  );
}

/** A page of triggers with their flows' names resolved (one request per unknown flow). */
export async function triggersWithFlows(query) {
  const page = await get("/v1/triggers", query);
  await resolveFlows(page.items.map((trigger) => trigger.flow_id));
  return page;
}

export async function triggersPage({ main }) {
  const list = await pagedTable({
    headers: TRIGGER_HEADERS,
    load: (cursor) => triggersWithFlows({ limit: 25, cursor }),
    toRow: triggerRow,
    empty: "No triggers yet.",
  });
  main.replaceChildren(
    heading("Triggers", link("#/triggers/new", "New trigger", { class: "button" })),
    list,
  );
}

// --- the form ---------------------------------------------------------------------------

const FREQUENCIES = [
  ["hourly", "Hourly"],
  ["daily", "Daily"],
  ["weekly", "Weekly"],
  ["cron", "Custom (cron)"],
  ["interval", "Every … (interval)"],
  ["once", "Once (one-off)"],
];
const WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

function timeZones() {
  try {
    return Intl.supportedValuesOf("timeZone");
  } catch {
    return ["UTC", "Europe/London", "Europe/Berlin", "America/New_York", "Asia/Tokyo"];
  }
}

const localZone = () => Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

/** `YYYY-MM-DDTHH:MM` (a datetime-local value) as the API's time without offset. */
function wallTime(value) {
  if (!value) return null;
  return value.length === 16 ? `${value}:00` : value;
}

/** A stored time (with or without offset) as a datetime-local value. */
function asLocalInput(text) {
  if (!text) return "";
  return String(text).replace(/(Z|[+-]\d\d:\d\d)$/, "").slice(0, 19);
}

function input(name, attributes = {}) {
  return h("input", { name, autocomplete: "off", ...attributes });
}

/**
 * The trigger form. `trigger` is the stored trigger when editing (its type is then fixed).
 * Resolves when built; submitting creates (POST) or changes (PATCH) the trigger.
 */
async function triggerForm(main, { trigger, flowId }) {
  const editing = Boolean(trigger);
  const flows = await allFlows(); // every page of them: any flow of the workspace can be picked
  const schedule = trigger?.schedule || {};
  const type = trigger?.type || "api";

  const name = input("name", { maxlength: 200, value: trigger?.name || "" });
  const flowOptions = flows.map((f) => [f.id, f.name ? `${f.name} (${f.id})` : f.id]);
  const flow = select(
    "flow_id",
    flowOptions.length ? flowOptions : [["", "No flows: register one first"]],
    trigger?.flow_id || flowId || flowOptions[0]?.[0],
  );
  const types = h(
    "fieldset",
    { class: "type-picker" },
    h("legend", {}, "Type"),
    [
      ["api", "API", "Started by POST /trigger/{flow_id} with a key"],
      ["schedule", "Schedule", "Started by the scheduler at every occurrence"],
      ["manual", "Manual", "Started only by Run now"],
      ["webhook", "Webhook", "Started by a signed delivery from GitHub, Stripe, …"],
    ].map(([value, label, hint]) =>
      h(
        "label",
        { class: "choice" },
        h("input", {
          type: "radio",
          name: "type",
          value,
          checked: value === type,
          disabled: editing,
        }),
        h("span", {}, h("strong", {}, label), h("small", {}, hint)),
      ),
    ),
  );
  const overlap = select(
    "overlap",
    [
      ["allow", "Allow: runs may overlap"],
      ["skip", "Skip a start while a run is going"],
      ["buffer_one", "Buffer one start"],
      ["cancel_previous", "Cancel the previous run"],
    ],
    trigger?.overlap || "allow",
  );

  // API settings
  const syncWait = input("sync_wait_seconds", { type: "number", min: 0, max: 60, step: "any" });
  syncWait.value = String(trigger?.sync_wait_seconds ?? 10);
  const responseMode = select(
    "response_mode",
    [
      ["result", "Wait for the result (up to the wait)"],
      ["accepted", "Answer 202 at once"],
    ],
    trigger?.response_mode || "result",
  );
  const apiPart = h(
    "fieldset",
    { class: "form-grid" },
    h("legend", {}, "Answer to the caller"),
    field("Wait for the run (seconds)", syncWait, { hint: "0 to 60; a caller may ask for more" }),
    field("Response", responseMode),
  );
  // A webhook's default is to answer 202 at once (senders time out and retry); an API call's
  // is the result. The default follows the type until the operator picks one.
  let responseChosen = editing;
  responseMode.addEventListener("change", () => {
    responseChosen = true;
  });

  // Webhook settings (the scheme, the secret and where an HMAC is are fixed once created)
  const scheme = select("scheme", Object.entries(SCHEMES), trigger?.scheme || "standard_webhooks");
  scheme.disabled = editing;
  const secret = input("secret", {
    type: "password",
    minlength: 16,
    maxlength: 512,
    spellcheck: false,
    placeholder: "empty: one is generated",
  });
  const events = input("events", {
    spellcheck: false,
    value: (trigger?.events || []).join(", "),
    placeholder: "every event",
  });
  const includeHeaders = input("include_headers", {
    spellcheck: false,
    value: (trigger?.include_headers || []).join(", "),
    placeholder: "none",
  });
  const tolerance = input("tolerance_seconds", { type: "number", min: 30, max: 3600 });
  tolerance.value = String(trigger?.tolerance_seconds ?? 300);
  const hmacSettings = trigger?.hmac || {};
  const signatureHeader = input("signature_header", {
    spellcheck: false,
    value: hmacSettings.signature_header || "",
    placeholder: "X-Shopify-Hmac-Sha256",
  });
  const encoding = select(
    "encoding",
    [
      ["hex", "hex"],
      ["base64", "base64"],
    ],
    hmacSettings.encoding || "hex",
  );
  const prefix = input("prefix", {
    spellcheck: false,
    value: hmacSettings.prefix || "",
    placeholder: "such as sha256=",
  });
  const deliveryIdHeader = input("delivery_id_header", {
    spellcheck: false,
    value: hmacSettings.delivery_id_header || "",
    placeholder: "X-Shopify-Webhook-Id",
  });
  const eventHeader = input("event_header", {
    spellcheck: false,
    value: hmacSettings.event_header || "",
    placeholder: "X-Shopify-Topic",
  });
  for (const control of [signatureHeader, encoding, prefix, deliveryIdHeader, eventHeader]) {
    control.disabled = editing;
  }
  const secretField = field("Signing secret (optional)", secret, { hint: "…" });
  const secretHint = secretField.querySelector(".hint");
  const SECRET_HINTS = {
    standard_webhooks: "Paste the sender's whsec_… secret (Svix, Clerk, …), or leave empty and give the sender the generated one.",
    github: "Leave empty and paste the generated secret into GitHub's “Secret” field, or paste the one GitHub has.",
    stripe: "Paste the endpoint's signing secret (whsec_…) from Stripe's dashboard: Stripe makes its own.",
    hmac: "The shared secret the sender signs with; empty generates one.",
  };
  const hmacPart = h(
    "fieldset",
    { class: "form-grid" },
    h("legend", {}, "Where the signature is"),
    field("Signature header", signatureHeader, {
      hint: "Holds the HMAC-SHA256 of the raw body",
    }),
    field("Encoding", encoding),
    field("Prefix (optional)", prefix),
    field("Delivery id header", deliveryIdHeader, {
      hint: "Without one, a captured delivery could be sent again",
    }),
    field("Event header (optional)", eventHeader),
  );
  const toleranceField = field("Timestamp tolerance (seconds)", tolerance, {
    hint: "30 to 3600: an older signed timestamp is refused",
  });
  const webhookPart = h(
    "fieldset",
    { class: "form-grid webhook" },
    h("legend", {}, "Webhook"),
    field("Sender (signature scheme)", scheme),
    editing ? null : secretField,
    field("Accepted events (optional)", events, {
      hint: "Comma-separated, such as push, pull_request; others are answered and ignored",
    }),
    field("Headers passed to the flow (optional)", includeHeaders, {
      hint: "Comma-separated header names, copied into the input's delivery.headers",
    }),
    toleranceField,
    hmacPart,
  );

  // Schedule settings
  const frequency = select("kind", FREQUENCIES, schedule.kind || "daily");
  const minute = input("minute", { type: "number", min: 0, max: 59 });
  minute.value = String(schedule.minute ?? 0);
  const at = input("at", { type: "time", step: 1 });
  at.value = schedule.kind === "daily" || schedule.kind === "weekly" ? schedule.at : "09:00";
  const days = h(
    "fieldset",
    { class: "days" },
    h("legend", {}, "Days"),
    WEEKDAYS.map((day) =>
      h(
        "label",
        { class: "day" },
        h("input", {
          type: "checkbox",
          name: "days",
          value: day,
          checked: (schedule.days || ["mon", "tue", "wed", "thu", "fri"]).includes(day),
        }),
        day,
      ),
    ),
  );
  const cron = input("cron", { placeholder: "*/5 * * * *", spellcheck: false });
  cron.value = schedule.cron || "0 9 * * 1-5";
  const every = input("every", { type: "number", min: 1 });
  every.value = String(schedule.every ?? 15);
  const unit = select(
    "unit",
    [
      ["seconds", "seconds"],
      ["minutes", "minutes"],
      ["hours", "hours"],
    ],
    schedule.unit || "minutes",
  );
  const onceAt = input("once_at", { type: "datetime-local", step: 1 });
  onceAt.value = schedule.kind === "once" ? asLocalInput(schedule.at) : "";
  const zoneList = h(
    "datalist",
    { id: "time-zones" },
    timeZones().map((zone) => h("option", { value: zone })),
  );
  const timezone = input("timezone", { list: "time-zones", spellcheck: false });
  timezone.value = schedule.timezone || localZone();
  const start = input("start", { type: "datetime-local", step: 1 });
  start.value = asLocalInput(schedule.start);
  const end = input("end", { type: "datetime-local", step: 1 });
  end.value = asLocalInput(schedule.end);
  const dstGap = select(
    "dst_gap",
    [
      ["shift", "Shift: fire right after the gap"],
      ["skip", "Skip the fire"],
    ],
    schedule.dst_gap || "shift",
  );
  const dstRepeat = select(
    "dst_repeat",
    [
      ["once", "Once: the first of the two"],
      ["twice", "Twice: both"],
    ],
    schedule.dst_repeat || "once",
  );
  const misfire = select(
    "misfire",
    [
      ["run_once", "Run the latest missed fire once"],
      ["run_all", "Run every missed fire"],
      ["skip", "Skip missed fires"],
    ],
    schedule.misfire || "run_once",
  );
  const jitter = input("jitter", { type: "number", min: 0, max: 3600 });
  jitter.value = String(schedule.jitter ?? 0);

  const byKind = {
    hourly: () => [field("Minute past the hour", minute)],
    daily: () => [field("At (wall clock)", at)],
    weekly: () => [days, field("At (wall clock)", at)],
    cron: () => [
      field("Cron expression", cron, {
        hint: "minute hour day month weekday; a sixth leading field is seconds",
      }),
    ],
    interval: () => [field("Every", every), field("Unit", unit)],
    once: () => [field("At", onceAt)],
  };
  const recurrence = h("div", { class: "form-grid recurrence" });
  const previewList = h("ol", { class: "preview-list" });
  const previewStatus = h("p", { class: "preview-status", "aria-live": "polite" });
  const preview = h(
    "section",
    { class: "preview", "aria-labelledby": "preview-title" },
    h("h3", { id: "preview-title" }, "Next fires"),
    previewStatus,
    previewList,
  );
  const schedulePart = h(
    "fieldset",
    { class: "schedule" },
    h("legend", {}, "Schedule"),
    h(
      "div",
      { class: "schedule-columns" },
      h(
        "div",
        {},
        h("div", { class: "form-grid" }, field("Frequency", frequency)),
        recurrence,
        h(
          "div",
          { class: "form-grid" },
          field("Time zone", timezone, { hint: "IANA name, such as Europe/Berlin" }),
          zoneList,
          field("Start (optional)", start, { hint: "In the time zone; intervals count from it" }),
          field("End (optional)", end),
          field("Clocks go forward (DST gap)", dstGap),
          field("Clocks go back (repeated time)", dstRepeat),
          field("Missed fires (misfire)", misfire),
          field("Jitter (seconds)", jitter, { hint: "A fixed delay of 0 to this per trigger" }),
        ),
      ),
      preview,
    ),
  );

  const form = h(
    "form",
    { class: "card trigger-form", novalidate: true },
    h("div", { class: "form-grid" }, field("Name", name), field("Flow", flow)),
    types,
    webhookPart,
    apiPart,
    schedulePart,
    h("div", { class: "form-grid" }, field("Overlap", overlap)),
    formError(),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit" }, editing ? "Save changes" : "Create trigger"),
      editing ? link(`#/triggers/${trigger.id}`, "Cancel", { class: "button ghost" }) : null,
    ),
  );

  const chosenType = () => form.querySelector("input[name=type]:checked").value;
  const names = (text) =>
    text
      .split(/[\s,]+/)
      .map((part) => part.trim())
      .filter(Boolean);

  function webhookBody() {
    const body = {
      events: names(events.value),
      include_headers: names(includeHeaders.value),
      tolerance_seconds: Number(tolerance.value || 300),
    };
    if (editing) return body; // the scheme, secret and HMAC settings stay as created
    body.scheme = scheme.value;
    if (secret.value) body.secret = secret.value;
    if (scheme.value === "hmac") {
      body.hmac = { signature_header: signatureHeader.value.trim(), encoding: encoding.value };
      if (prefix.value) body.hmac.prefix = prefix.value;
      if (deliveryIdHeader.value.trim()) body.hmac.delivery_id_header = deliveryIdHeader.value.trim();
      if (eventHeader.value.trim()) body.hmac.event_header = eventHeader.value.trim();
    }
    return body;
  }

  function scheduleBody() {
    const kind = frequency.value;
    const body = { kind, timezone: timezone.value.trim() || "UTC" };
    if (kind === "hourly") body.minute = Number(minute.value);
    if (kind === "daily") body.at = at.value;
    if (kind === "weekly") {
      body.at = at.value;
      body.days = [...days.querySelectorAll("input:checked")].map((box) => box.value);
    }
    if (kind === "cron") body.cron = cron.value.trim();
    if (kind === "interval") {
      body.every = Number(every.value);
      body.unit = unit.value;
    }
    if (kind === "once") body.at = wallTime(onceAt.value);
    if (start.value) body.start = wallTime(start.value);
    if (end.value) body.end = wallTime(end.value);
    body.dst_gap = dstGap.value;
    body.dst_repeat = dstRepeat.value;
    body.misfire = misfire.value;
    body.jitter = Number(jitter.value || 0);
    return body;
  }

  // The field a schedule problem is about, read from its words (the API names the value).
  function scheduleField(detail) {
    const text = detail.toLowerCase();
    const kind = frequency.value;
    if (/time ?zone/.test(text)) return timezone;
    if (text.includes("jitter")) return jitter;
    if (/^end|end \(/.test(text)) return end;
    if (text.includes("start")) return start;
    const own = { hourly: minute, daily: at, weekly: at, cron, interval: every, once: onceAt };
    if (kind === "weekly" && text.includes("day")) return days.querySelector("input");
    return own[kind];
  }

  const scheduleControls = [minute, at, cron, every, onceAt, timezone, start, end, jitter];
  let previewRequest = 0;
  async function refreshPreview() {
    if (chosenType() !== "schedule") return;
    const asked = ++previewRequest;
    previewStatus.textContent = "Computing…";
    try {
      const answer = await post("/v1/schedules/preview", scheduleBody(), {
        query: { count: 5 },
      });
      if (asked !== previewRequest) return;
      for (const control of scheduleControls) setFieldError(control, "");
      previewStatus.textContent = answer.fires.length
        ? `In ${answer.timezone}, and in your browser's time:`
        : "This schedule has no fire to come.";
      previewList.replaceChildren(
        ...answer.fires.map((fire) =>
          h(
            "li",
            { class: fire.fires ? "" : "non-fire" },
            h("strong", {}, fire.local_time.replace("T", " ")),
            " · ",
            when(fire.scheduled_at),
            fire.fires ? null : ` · not fired (${fire.skip})`,
            fire.note ? h("small", {}, fire.note) : null,
          ),
        ),
      );
    } catch (error) {
      if (asked !== previewRequest) return;
      previewList.replaceChildren();
      previewStatus.textContent = "No preview: the schedule cannot be saved as it is.";
      for (const control of scheduleControls) setFieldError(control, "");
      const target = scheduleField(error.detail || "");
      if (target) setFieldError(target, error.detail);
      else previewStatus.textContent = error.detail;
    }
  }
  const previewSoon = debounce(refreshPreview, 300);

  let shownKind = null;
  function sync() {
    const current = chosenType();
    apiPart.hidden = current !== "api" && current !== "webhook";
    schedulePart.hidden = current !== "schedule";
    webhookPart.hidden = current !== "webhook";
    if (!responseChosen) responseMode.value = current === "webhook" ? "accepted" : "result";
    hmacPart.hidden = scheme.value !== "hmac";
    toleranceField.hidden = scheme.value !== "standard_webhooks" && scheme.value !== "stripe";
    secretHint.textContent = SECRET_HINTS[scheme.value];
    if (shownKind !== frequency.value) {
      shownKind = frequency.value;
      recurrence.replaceChildren(...byKind[shownKind]());
    }
    if (current === "schedule") previewSoon();
  }
  form.addEventListener("change", sync);
  form.addEventListener("input", (event) => {
    if (schedulePart.contains(event.target)) previewSoon();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const current = chosenType();
    const body = { name: name.value.trim(), flow_id: flow.value, overlap: overlap.value };
    if (current === "api" || current === "webhook") {
      body.sync_wait_seconds = Number(syncWait.value || 0);
      body.response_mode = responseMode.value;
    }
    if (current === "schedule") body.schedule = scheduleBody();
    if (current === "webhook") Object.assign(body, webhookBody());
    try {
      let saved;
      if (editing) {
        if (current === "schedule") {
          // A merge (RFC 7396): null removes the bounds the form left empty.
          body.schedule.start = body.schedule.start ?? null;
          body.schedule.end = body.schedule.end ?? null;
        }
        saved = await patch(`/v1/triggers/${trigger.id}`, body);
        toast("Trigger saved");
      } else {
        saved = await post("/v1/triggers", { type: current, ...body });
        // Shown once on the trigger's page; kept in memory only, never in the URL or storage.
        if (saved.new_secret) issuedSecret = { triggerId: saved.id, secret: saved.new_secret };
        toast("Trigger created");
      }
      window.location.hash = `#/triggers/${saved.id}`;
    } catch (error) {
      if (error.code === "invalid_schedule") {
        const target = scheduleField(error.detail || "");
        if (target) {
          setFieldError(target, `${error.detail} (${error.code})`);
          target.focus();
          form.querySelector(".form-error").replaceChildren(problemText(error));
          return;
        }
      }
      showError(form, error, {
        flow_not_found: "flow_id",
        invalid_name: "name",
        invalid_secret: "secret",
      });
    }
  });
  sync();
  return form;
}

export async function newTriggerPage({ main, params }) {
  try {
    const form = await triggerForm(main, { flowId: params.get("flow") });
    main.replaceChildren(heading("New trigger"), form);
  } catch (error) {
    main.replaceChildren(heading("New trigger"), pageError(error));
  }
}

export async function editTriggerPage({ main, ids: [triggerId] }) {
  try {
    const trigger = await get(`/v1/triggers/${encodeURIComponent(triggerId)}`);
    const form = await triggerForm(main, { trigger });
    main.replaceChildren(heading(`Edit ${trigger.name || trigger.id}`), form);
  } catch (error) {
    main.replaceChildren(heading("Edit trigger"), pageError(error));
  }
}

// --- a trigger's page -------------------------------------------------------------------

/** A webhook secret just issued (create or rotate), shown once by the trigger's next page. */
let issuedSecret = null;

function takeIssuedSecret(triggerId) {
  const issued = issuedSecret?.triggerId === triggerId ? issuedSecret.secret : null;
  issuedSecret = null;
  return issued;
}

function webhookSecretPanel(trigger, secret) {
  const fingerprint = trigger.secrets?.[0]?.fingerprint;
  return h(
    "section",
    { class: "card secret", role: "alert" },
    h("h2", {}, "Signing secret"),
    h(
      "p",
      { class: "warning" },
      h("strong", {}, "Copy this secret now: it will not be shown again. "),
      "Give it to the sender; it is stored encrypted and only its fingerprint is shown later.",
    ),
    h(
      "div",
      { class: "secret-line" },
      h("code", { class: "secret-value", "data-secret": "" }, secret),
      copyButton(secret, "Copy secret"),
    ),
    fingerprint ? h("p", {}, "Fingerprint ", h("code", {}, fingerprint)) : null,
  );
}

const SENDER_STEPS = {
  standard_webhooks:
    "Give the sender this URL and the secret; it signs with the webhook-id, webhook-timestamp " +
    "and webhook-signature headers.",
  github:
    "In the repository's Settings → Webhooks: Payload URL is this URL, Content type " +
    "application/json, Secret is the signing secret.",
  stripe:
    "In Stripe's dashboard (Developers → Webhooks), add an endpoint with this URL; its signing " +
    "secret must be the trigger's (rotate with Stripe's whsec_… pasted, if the trigger made its own).",
  hmac: "The sender posts to this URL with the HMAC-SHA256 of the raw body in the signature header.",
};

function webhookSection(trigger) {
  const url = hookUrl(trigger);
  const hmac = trigger.hmac;
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Where the sender posts"),
    h("p", {}, SENDER_STEPS[trigger.scheme] || ""),
    h(
      "div",
      { class: "secret-line" },
      h("code", { class: "hook-url" }, url),
      copyButton(url, "Copy URL"),
    ),
    hmac
      ? h(
          "p",
          { class: "hint" },
          `Signature in ${hmac.signature_header} (${hmac.encoding}`,
          hmac.prefix ? `, after “${hmac.prefix}”` : "",
          ")",
          hmac.delivery_id_header ? `; delivery id in ${hmac.delivery_id_header}` : "",
          hmac.event_header ? `; event in ${hmac.event_header}` : "",
          ".",
        )
      : null,
  );
}

const GRACES = [
  ["3600", "1 hour"],
  ["86400", "24 hours"],
  ["604800", "7 days"],
  ["0", "no longer: end it now"],
];

function rotateSecretForm(trigger, redraw) {
  const grace = select("previous_valid_seconds", GRACES, "86400");
  const supplied = input("secret", {
    type: "password",
    minlength: 16,
    maxlength: 512,
    spellcheck: false,
    placeholder: "empty: one is generated",
  });
  const form = h(
    "form",
    { class: "card rotate" },
    h("h2", {}, "Rotate the signing secret"),
    h(
      "p",
      {},
      "A new secret verifies at once; the current one keeps verifying for the time chosen, so " +
        "the sender can be switched over without refusals.",
    ),
    h(
      "div",
      { class: "form-grid" },
      field("Keep the current secret for", grace),
      field("New secret (optional)", supplied, {
        hint: "Paste the sender's own when it makes them (Stripe, Svix)",
      }),
    ),
    formError(),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Rotate secret")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const seconds = Number(grace.value);
    const label = GRACES.find(([value]) => value === grace.value)[1];
    const sure = await confirmDialog(
      "Rotate the signing secret?",
      seconds
        ? `The new secret is shown once. The current one stops verifying in ${label}.`
        : "The new secret is shown once. The current one stops verifying now: deliveries " +
            "signed with it are refused from this moment.",
      "Rotate secret",
    );
    if (!sure) return;
    try {
      const body = { previous_valid_seconds: seconds };
      if (supplied.value) body.secret = supplied.value;
      const rotated = await post(`/v1/triggers/${trigger.id}/secrets`, body);
      issuedSecret = { triggerId: trigger.id, secret: rotated.new_secret };
      toast("Secret rotated");
      await redraw();
    } catch (error) {
      showError(form, error);
    }
  });
  return form;
}

function secretRow(secret, index) {
  return row(
    h("code", {}, secret.fingerprint),
    index === 0 && !secret.expires_at ? badge("current") : badge("previous"),
    when(secret.created_at),
    secret.expires_at ? when(secret.expires_at) : "—",
  );
}

async function refusalsSection(trigger) {
  const shown = await get(`/v1/triggers/${trigger.id}/refusals`).then(
    (answer) => {
      const counts = Object.entries(answer.by_code || {})
        .map(([code, count]) => `${count} ${code}`)
        .join(", ");
      return [
        h(
          "p",
          { class: "refusal-total" },
          answer.total
            ? `${answer.total} refused in all (${counts}); the latest first:`
            : "No delivery refused.",
        ),
        answer.total
          ? table(
              ["When", "Code", "Detail", "Delivery", "Sender"],
              answer.latest.map((refusal) =>
                row(
                  when(refusal.at),
                  h("code", {}, `${refusal.status} ${refusal.code}`),
                  refusal.detail,
                  refusal.delivery_id || "—",
                  refusal.remote || "—",
                ),
              ),
            )
          : null,
      ];
    },
    (error) => pageError(error),
  );
  return h("section", { class: "refusals" }, h("h2", {}, "Refused deliveries"), shown);
}

function curlCommand(trigger) {
  const origin = window.location.origin;
  return [
    `curl -X POST '${origin}/trigger/${trigger.flow_id}' \\`,
    `  -H "Authorization: Bearer $TRIGGER_KEY" \\`,
    `  -H 'Content-Type: application/json' \\`,
    `  -d '{"hello": "world"}'`,
  ].join("\n");
}

function runNowPanel(trigger) {
  const payload = h("textarea", {
    name: "input",
    rows: 4,
    spellcheck: false,
    placeholder: '{"hello": "world"}  (optional: empty sends null)',
  });
  const outcome = h("div", { class: "outcome", "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Run now");
  const form = h(
    "form",
    { class: "card run-now" },
    h("h2", {}, "Run now"),
    field("Input (JSON)", payload, { wide: true, hint: "Ctrl+Enter runs" }),
    formError(),
    h("div", { class: "actions" }, submit),
    outcome,
  );
  payload.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (submit.getAttribute("aria-disabled")) return; // the run before is still going
    clearErrors(form);
    outcome.replaceChildren();
    const text = payload.value.trim();
    if (text) {
      try {
        JSON.parse(text);
      } catch (error) {
        setFieldError(payload, `not valid JSON: ${error.message}`);
        payload.focus();
        return;
      }
    }
    // Not `disabled`: a focused button that is disabled loses the focus to the page.
    submit.setAttribute("aria-disabled", "true");
    outcome.replaceChildren(h("p", { class: "loading" }, "Started; waiting for the result…"));
    try {
      const { status, data } = await call("POST", `/v1/triggers/${trigger.id}/run`, {
        body: text || undefined,
        accept: [409, 502, 504],
      });
      const runLink = link(`#/runs/${data.run_id}`, data.run_id);
      if (status === 200) {
        outcome.replaceChildren(
          h("p", {}, badge(data.status), " in ", `${(data.duration_seconds ?? 0).toFixed(3)} s · run `, runLink),
          json(data.result),
        );
      } else if (status === 202) {
        outcome.replaceChildren(
          h("p", {}, badge(data.status), " still going: follow run ", runLink),
        );
      } else if (data && data.run_id) {
        outcome.replaceChildren(
          h("p", {}, badge(data.run_status), " run ", runLink),
          problemText({ ...data, detail: data.detail }),
        );
      } else {
        showError(form, { detail: JSON.stringify(data) });
      }
    } catch (error) {
      outcome.replaceChildren();
      showError(form, error);
    }
    submit.removeAttribute("aria-disabled");
  });
  return form;
}

function ledgerRow(fire) {
  return row(
    when(fire.scheduled_at),
    fire.local_time.replace("T", " "),
    badge(fire.status),
    fire.reason,
    fire.run_id ? link(`#/runs/${fire.run_id}`, fire.run_id) : "—",
  );
}

export async function triggerPage({ main, ids: [triggerId] }) {
  let trigger;
  try {
    trigger = await get(`/v1/triggers/${encodeURIComponent(triggerId)}`);
  } catch (error) {
    main.replaceChildren(heading("Trigger"), pageError(error));
    return;
  }
  await resolveFlows([trigger.flow_id]);
  const issued = takeIssuedSecret(trigger.id);
  const redraw = () => triggerPage({ main, ids: [trigger.id] });
  const actionsError = h("div", { class: "form-error", role: "alert" });
  async function act(fn) {
    actionsError.replaceChildren();
    try {
      await fn();
    } catch (error) {
      actionsError.replaceChildren(problemText(error));
    }
  }
  // The page is drawn again: the keyboard's focus goes to the button that undoes the change.
  const toggled = () => main.querySelector("[data-pause-resume]")?.focus();
  const pauseOrResume = trigger.enabled
    ? button(
        "Pause",
        () =>
          act(async () => {
            await post(`/v1/triggers/${trigger.id}/pause`);
            toast("Trigger paused");
            await redraw();
            toggled();
          }),
        { "data-pause-resume": "" },
      )
    : button(
        "Resume",
        () =>
          act(async () => {
            await post(`/v1/triggers/${trigger.id}/resume`);
            toast("Trigger resumed");
            await redraw();
            toggled();
          }),
        { "data-pause-resume": "" },
      );
  const deleteButton = button(
    "Delete",
    () =>
      act(async () => {
        const sure = await confirmDialog(
          "Delete this trigger?",
          `“${trigger.name || trigger.id}” stops starting its flow at once. Its runs are kept.`,
          "Delete trigger",
        );
        if (!sure) return;
        await remove(`/v1/triggers/${trigger.id}`);
        toast("Trigger deleted");
        window.location.hash = `#/flows/${trigger.flow_id}`;
      }),
    { class: "danger" },
  );

  const facts = [
    ["Id", h("code", {}, trigger.id)],
    ["Type", trigger.type],
    ["Flow", flowLink(trigger.flow_id)],
    ["State", trigger.enabled ? badge("active") : badge("paused")],
    ["Overlap", trigger.overlap],
    ["Version", String(trigger.version)],
    ["Updated", when(trigger.updated_at)],
  ];
  if (trigger.type === "schedule") facts.splice(2, 0, ["Schedule", describeSchedule(trigger.schedule)]);
  if (trigger.type === "webhook") {
    facts.splice(
      2,
      0,
      ["Sender", SCHEMES[trigger.scheme] || trigger.scheme],
      ["Events", trigger.events?.length ? trigger.events.join(", ") : "every event"],
    );
    if (trigger.include_headers?.length) {
      facts.push(["Headers passed", trigger.include_headers.join(", ")]);
    }
    if (trigger.scheme === "standard_webhooks" || trigger.scheme === "stripe") {
      facts.push(["Timestamp tolerance", `${trigger.tolerance_seconds} s`]);
    }
  }
  if (trigger.type === "api" || trigger.type === "webhook") {
    const answer =
      trigger.response_mode === "accepted"
        ? "202 at once"
        : `the result, waiting up to ${trigger.sync_wait_seconds} s`;
    facts.push(["Answers", answer]);
  }
  const sections = [
    heading(
      trigger.name || trigger.id,
      link(`#/triggers/${trigger.id}/edit`, "Edit", { class: "button ghost" }),
      pauseOrResume,
      deleteButton,
    ),
    actionsError,
    h("dl", { class: "facts" }, facts.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)])),
  ];
  if (issued) sections.splice(1, 0, webhookSecretPanel(trigger, issued));
  if (trigger.type === "webhook") {
    sections.push(
      webhookSection(trigger),
      h("h2", {}, "Signing secrets"),
      table(
        ["Fingerprint", "State", "Created", "Stops verifying"],
        (trigger.secrets || []).map(secretRow),
        "No secret.",
      ),
      rotateSecretForm(trigger, redraw),
      await refusalsSection(trigger),
    );
  }
  if (trigger.type === "api") {
    const command = curlCommand(trigger);
    sections.push(
      h(
        "section",
        { class: "card" },
        h("h2", {}, "Call it"),
        h(
          "p",
          {},
          "With a key of this workspace (a trigger key is enough: create one under ",
          link("#/keys", "Keys"),
          "):",
        ),
        h("pre", { class: "command" }, command),
        copyButton(command, "Copy command"),
      ),
    );
  }
  sections.push(runNowPanel(trigger));
  if (trigger.type === "schedule") {
    const upcoming = await get(`/v1/triggers/${trigger.id}/preview`, { count: 5 }).then(
      (answer) =>
        h(
          "ol",
          { class: "preview-list" },
          answer.fires.map((fire) =>
            h("li", {}, h("strong", {}, fire.local_time.replace("T", " ")), " · ", when(fire.fires_at)),
          ),
        ),
      (error) => pageError(error),
    );
    const ledger = await pagedTable({
      headers: ["Scheduled", "Local time", "Outcome", "Reason", "Run"],
      load: (cursor) => get(`/v1/triggers/${trigger.id}/fires`, { limit: 20, cursor }),
      toRow: ledgerRow,
      empty: "No fire recorded yet.",
    });
    sections.push(h("h2", {}, "Next fires"), upcoming, h("h2", {}, "Fire ledger"), ledger);
  }
  const runs = await runsWithFlows({ trigger_id: trigger.id, limit: 10 }).then(
    (page) => table(RUN_HEADERS, page.items.map(runRow), "No runs yet."),
    (error) => pageError(error),
  );
  sections.push(
    h(
      "h2",
      {},
      "Recent runs ",
      link(`#/runs?trigger=${trigger.id}`, "all runs of this trigger", { class: "small-link" }),
    ),
    runs,
  );
  main.replaceChildren(...sections);
}
