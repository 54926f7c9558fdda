// Triggers: the list, the create and edit form (with the live preview of a schedule's next
// fires), and a trigger's page: curl command, pause/resume, Run now, delete, fire ledger.

import { call, get, patch, post, remove } from "./api.js";
import { runRow, RUN_HEADERS } from "./runs.js";
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

export const TRIGGER_HEADERS = ["Name", "Type", "Flow", "State", "Schedule", "Updated"];

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

export function triggerRow(trigger, flows = {}) {
  const flow = flows[trigger.flow_id];
  return row(
    link(`#/triggers/${trigger.id}`, trigger.name || trigger.id),
    h("span", { class: `type type-${trigger.type}` }, trigger.type),
    link(`#/flows/${trigger.flow_id}`, flow ? flow.name : trigger.flow_id),
    trigger.enabled ? badge("active") : badge("paused"),
    trigger.type === "schedule" ? describeSchedule(trigger.schedule) : "—",
    ago(trigger.updated_at),
  );
}

async function flowsById() {
  const page = await get("/v1/flows", { limit: 500 });
  return Object.fromEntries(page.items.map((flow) => [flow.id, flow]));
}

export async function triggersPage({ main }) {
  const flows = await flowsById().catch(() => ({}));
  const list = await pagedTable({
    headers: TRIGGER_HEADERS,
    load: (cursor) => get("/v1/triggers", { limit: 25, cursor }),
    toRow: (trigger) => triggerRow(trigger, flows),
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
  const flows = await flowsById();
  const schedule = trigger?.schedule || {};
  const type = trigger?.type || "api";

  const name = input("name", { maxlength: 200, value: trigger?.name || "" });
  const flowOptions = Object.values(flows).map((f) => [f.id, f.name || f.id]);
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
    h("legend", {}, "API call"),
    field("Wait for the run (seconds)", syncWait, { hint: "0 to 60; a caller may ask for more" }),
    field("Response", responseMode),
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
    apiPart.hidden = current !== "api";
    schedulePart.hidden = current !== "schedule";
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
    if (current === "api") {
      body.sync_wait_seconds = Number(syncWait.value || 0);
      body.response_mode = responseMode.value;
    }
    if (current === "schedule") body.schedule = scheduleBody();
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
      showError(form, error, { flow_not_found: "flow_id", invalid_name: "name" });
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
    submit.disabled = true;
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
    submit.disabled = false;
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
  const flow = await get(`/v1/flows/${trigger.flow_id}`).catch(() => null);
  const actionsError = h("div", { class: "form-error", role: "alert" });
  async function act(fn) {
    actionsError.replaceChildren();
    try {
      await fn();
    } catch (error) {
      actionsError.replaceChildren(problemText(error));
    }
  }
  const pauseOrResume = trigger.enabled
    ? button("Pause", () =>
        act(async () => {
          await post(`/v1/triggers/${trigger.id}/pause`);
          toast("Trigger paused");
          await triggerPage({ main, ids: [trigger.id] });
        }),
      )
    : button("Resume", () =>
        act(async () => {
          await post(`/v1/triggers/${trigger.id}/resume`);
          toast("Trigger resumed");
          await triggerPage({ main, ids: [trigger.id] });
        }),
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
    ["Flow", link(`#/flows/${trigger.flow_id}`, flow ? flow.name : trigger.flow_id)],
    ["State", trigger.enabled ? badge("active") : badge("paused")],
    ["Overlap", trigger.overlap],
    ["Version", String(trigger.version)],
    ["Updated", when(trigger.updated_at)],
  ];
  if (trigger.type === "schedule") facts.splice(2, 0, ["Schedule", describeSchedule(trigger.schedule)]);
  if (trigger.type === "api") {
    facts.push(["Waits", `${trigger.sync_wait_seconds} s (${trigger.response_mode})`]);
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
  const runs = await get("/v1/runs", { trigger_id: trigger.id, limit: 10 }).then(
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
