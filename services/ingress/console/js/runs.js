// Runs: the filtered list (cursor pages, refreshed every few seconds while visible) and a run's
// page with its input, result or error and every attempt; cancel a queued or running run.

import { get, post } from "./api.js";
import { flowLink, resolveFlows } from "./names.js";
import {
  ago,
  badge,
  button,
  clearErrors,
  confirmDialog,
  duration,
  field,
  fill,
  formError,
  h,
  heading,
  json,
  link,
  pageError,
  problemText,
  row,
  select,
  showError,
  table,
  toast,
  when,
  whileVisible,
} from "./ui.js";

export const STATUSES = [
  "queued",
  "running",
  "succeeded",
  "failed",
  "timed_out",
  "cancelled",
  "skipped",
];
const SOURCES = ["api", "schedule", "manual", "webhook", "external"];
const TERMINAL = new Set(["succeeded", "failed", "timed_out", "cancelled", "skipped"]);
const POLL_MS = 3000;

export const RUN_HEADERS = ["Run", "Status", "Source", "Flow", "Queued", "Duration", "Attempts"];

export function runRow(run) {
  const tr = row(
    link(`#/runs/${run.id}`, run.id, { class: "mono" }),
    badge(run.status),
    run.source,
    flowLink(run.flow_id),
    ago(run.queued_at),
    duration(run.duration_seconds),
    String(run.attempts?.length || run.attempt || 1),
  );
  tr.dataset.runId = run.id;
  return tr;
}

/** A page of runs with their flows' names resolved (one request per flow not yet known). */
export async function runsWithFlows(query) {
  const page = await get("/v1/runs", query);
  await resolveFlows(page.items.map((run) => run.flow_id));
  return page;
}

/** The API's filters, from the page's hash query (`#/runs?status=failed&status=queued`). */
function filtersOf(params) {
  const statuses = params.getAll("status").flatMap((s) => s.split(",")).filter(Boolean);
  return {
    flow_id: params.get("flow") || undefined,
    trigger_id: params.get("trigger") || undefined,
    status: statuses,
    source: params.get("source") || undefined,
    since: params.get("since") || undefined,
    until: params.get("until") || undefined,
    q: params.get("q") || undefined,
  };
}

const asUtc = (local) => (local ? new Date(local).toISOString() : "");
function asLocalInput(iso) {
  const moment = new Date(iso || "");
  // Not a time (a hand-edited address): the field stays empty and the API's answer says why.
  if (Number.isNaN(moment.getTime())) return "";
  const offset = moment.getTimezoneOffset() * 60000;
  return new Date(moment.getTime() - offset).toISOString().slice(0, 16);
}

function filterForm(params) {
  const filters = filtersOf(params);
  const statusBoxes = h(
    "fieldset",
    { class: "statuses" },
    h("legend", {}, "Status"),
    STATUSES.map((status) =>
      h(
        "label",
        { class: "day" },
        h("input", {
          type: "checkbox",
          name: "status",
          value: status,
          checked: filters.status.includes(status),
        }),
        status.replace("_", " "),
      ),
    ),
  );
  // Named as the API's parameters, so an error about one is shown under its field.
  const flow = h("input", { name: "flow_id", value: filters.flow_id || "", placeholder: "flw_…" });
  const trigger = h("input", {
    name: "trigger_id",
    value: filters.trigger_id || "",
    placeholder: "trg_…",
  });
  const source = select(
    "source",
    [["", "any"], ...SOURCES.map((s) => [s, s])],
    filters.source || "",
  );
  const since = h("input", { name: "since", type: "datetime-local" });
  since.value = asLocalInput(filters.since);
  const until = h("input", { name: "until", type: "datetime-local" });
  until.value = asLocalInput(filters.until);
  const q = h("input", {
    name: "q",
    type: "search",
    value: filters.q || "",
    placeholder: "run id, Idempotency-Key or error text",
  });
  const form = h(
    "form",
    { class: "card filters", role: "search" },
    statusBoxes,
    h(
      "div",
      { class: "form-grid" },
      field("Flow id", flow),
      field("Trigger id", trigger),
      field("Source", source),
      field("Since", since),
      field("Until", until),
      field("Search", q),
    ),
    formError(),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit" }, "Apply filters"),
      link("#/runs", "Clear", { class: "button ghost" }),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const box of statusBoxes.querySelectorAll("input:checked")) query.append("status", box.value);
    for (const [name, value] of [
      ["flow", flow.value.trim()],
      ["trigger", trigger.value.trim()],
      ["source", source.value],
      ["since", asUtc(since.value)],
      ["until", asUtc(until.value)],
      ["q", q.value.trim()],
    ]) {
      if (value) query.set(name, value);
    }
    const text = query.toString();
    window.location.hash = text ? `#/runs?${text}` : "#/runs";
  });
  return form;
}

export async function runsPage({ main, params }) {
  const filters = filtersOf(params);
  const body = h("tbody");
  const form = filterForm(params);
  const freshness = h("p", { class: "freshness", "aria-live": "off" });
  const empty = h("p", { class: "empty" }, "No runs match.");
  const more = h("button", { type: "button", class: "ghost" }, "Load more");
  const wrap = h(
    "div",
    { class: "table-wrap", tabindex: "0" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, RUN_HEADERS.map((t) => h("th", { scope: "col" }, t)))),
      body,
    ),
  );
  let cursor = null;
  const shown = new Map();

  function place(run, { atTop }) {
    const fresh = runRow(run);
    const old = shown.get(run.id);
    if (old) {
      // A refreshed row keeps the keyboard's focus if it had it (every 3 s it is drawn anew).
      const focused = old.contains(document.activeElement) ? document.activeElement : null;
      old.replaceWith(fresh);
      if (focused) {
        const twins = [...fresh.querySelectorAll(focused.tagName)];
        const twin = twins.find((e) => e.textContent === focused.textContent) || twins[0];
        twin?.focus({ preventScroll: true });
      }
    } else if (atTop) body.prepend(fresh);
    else body.append(fresh);
    shown.set(run.id, fresh);
  }
  function settle(page) {
    wrap.hidden = shown.size === 0;
    empty.hidden = shown.size > 0;
    const lag = page.history_lag_seconds ? ` (history ${page.history_lag_seconds.toFixed(1)} s behind)` : "";
    freshness.textContent = `Updated ${new Date().toLocaleTimeString()}${lag}; refreshes every ${POLL_MS / 1000} s while this page is open.`;
  }
  async function loadMore() {
    if (more.getAttribute("aria-disabled")) return;
    const pressed = document.activeElement === more;
    // Not `disabled`: a focused button that is disabled loses the focus to the page.
    more.setAttribute("aria-disabled", "true");
    let first = null;
    try {
      const page = await runsWithFlows({ ...filters, limit: 50, cursor });
      for (const run of page.items) {
        const known = shown.has(run.id);
        place(run, { atTop: false });
        if (!known && !first) first = shown.get(run.id);
      }
      cursor = page.next_cursor || null;
      clearErrors(form);
      settle(page);
    } catch (error) {
      empty.hidden = true; // not "No runs match": nothing was answered
      clearErrors(form);
      showError(form, error); // a refused filter is shown under its field
    }
    more.removeAttribute("aria-disabled");
    more.hidden = !cursor;
    // The last page is in and the button goes: the keyboard goes on from the first run it added.
    if (pressed && more.hidden && first) first.querySelector("a").focus();
  }
  // The newest page again: new runs go on top, the ones shown get their new status.
  async function refresh() {
    let page;
    const fresh = [];
    try {
      page = await runsWithFlows({ ...filters, limit: 50 });
      fresh.push(...page.items);
      // More than a page of new runs since the last look: follow the pages down to the runs
      // shown, so the list has no hole (a few pages at most; then it starts over from the top).
      const joins = () => fresh.some((run) => shown.has(run.id));
      for (let more = 0; shown.size && page.next_cursor && !joins() && more < 4; more++) {
        page = await runsWithFlows({ ...filters, limit: 50, cursor: page.next_cursor });
        fresh.push(...page.items);
      }
      if (shown.size && !joins()) {
        body.replaceChildren();
        shown.clear();
        cursor = page.next_cursor || null;
      }
    } catch (error) {
      // Said once, without taking the focus: a refused filter is already shown at its field.
      if (!form.querySelector("[aria-invalid]")) {
        form.querySelector(".form-error").replaceChildren(problemText(error));
      }
      return;
    }
    clearErrors(form);
    for (const run of fresh.reverse()) place(run, { atTop: true });
    if (!cursor && page.next_cursor && shown.size <= page.items.length) cursor = page.next_cursor;
    more.hidden = !cursor;
    settle(page);
  }
  more.addEventListener("click", loadMore);
  await loadMore();
  main.replaceChildren(
    heading("Runs"),
    form,
    freshness,
    wrap,
    empty,
    h("div", { class: "more" }, more),
  );
  return whileVisible(refresh, POLL_MS);
}

export async function runPage({ main, ids: [runId] }) {
  async function draw() {
    const run = await get(`/v1/runs/${encodeURIComponent(runId)}`);
    const [trigger] = await Promise.all([
      run.trigger_id ? get(`/v1/triggers/${run.trigger_id}`).catch(() => null) : null,
      resolveFlows([run.flow_id]),
    ]);
    const actionsError = h("div", { class: "form-error", role: "alert" });
    const cancel =
      run.status === "queued" || run.status === "running"
        ? button(
            "Cancel run",
            async () => {
              const sure = await confirmDialog(
                "Cancel this run?",
                `Run ${run.id} is ${run.status}; a cancelled run is not started again.`,
                "Cancel run",
              );
              if (!sure) return;
              try {
                await post(`/v1/runs/${run.id}/cancel`);
                toast("Run cancelled");
                await redraw();
              } catch (error) {
                actionsError.replaceChildren(problemText(error));
              }
            },
            { class: "danger" },
          )
        : null;
    const facts = [
      ["Status", badge(run.status)],
      ["Flow", flowLink(run.flow_id)],
      [
        "Trigger",
        run.trigger_id
          ? link(`#/triggers/${run.trigger_id}`, trigger?.name || run.trigger_id, {
              title: run.trigger_id,
            })
          : "—",
      ],
      ["Source", run.source],
      ["Queued", when(run.queued_at)],
      ["Started", when(run.started_at)],
      ["Finished", when(run.finished_at)],
      ["Duration", duration(run.duration_seconds)],
    ];
    if (run.scheduled_at) facts.splice(4, 0, ["Scheduled", when(run.scheduled_at)]);
    if (run.retry_at) facts.push(["Next retry", when(run.retry_at)]);
    const attempts = table(
      ["#", "Outcome", "Runner", "Started", "Finished", "Error"],
      (run.attempts || []).map((attempt) =>
        row(
          String(attempt.number),
          badge(attempt.outcome),
          attempt.runner_id || "—",
          when(attempt.started_at),
          when(attempt.finished_at),
          attempt.error || "—",
        ),
      ),
      "No attempt yet: the run is queued.",
    );
    fill(main,
      heading(`Run ${run.id}`, cancel),
      actionsError,
      h("dl", { class: "facts" }, facts.map(([t, v]) => [h("dt", {}, t), h("dd", {}, v)])),
      h("h2", {}, "Input"),
      json(run.input),
      run.error
        ? [h("h2", {}, "Error"), h("pre", { class: "json error-text" }, run.error)]
        : [h("h2", {}, "Result"), json(run.result)],
      h("h2", {}, "Attempts"),
      attempts,
    );
    return run;
  }
  let run;
  async function redraw() {
    const focused = document.activeElement;
    const inMain = focused !== main && main.contains(focused);
    // The page is drawn anew every 1.5 s while the run goes on: a control the keyboard is on
    // (Cancel run, a link) gets the focus back in the new drawing, or it could never be used.
    const same = (e) => e.tagName === focused.tagName && e.textContent === focused.textContent;
    run = await draw();
    if (!inMain) focused?.focus?.();
    else [...main.querySelectorAll("a, button, [tabindex]")].find(same)?.focus();
  }
  try {
    run = await draw();
  } catch (error) {
    main.replaceChildren(heading("Run"), pageError(error));
    // A start just stored has no record until a runner takes it: look again for a while.
    if (error.status !== 404) return;
  }
  if (run && TERMINAL.has(run.status)) return;
  const stop = whileVisible(async () => {
    if (run && TERMINAL.has(run.status)) return stop();
    await redraw();
  }, 1500);
  return stop;
}
