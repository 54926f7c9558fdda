// Flows: the list, registering one (a Python function a runner announces, or an HTTP request),
// and a flow's page with its triggers and recent runs.

import { get, post } from "./api.js";
import { rememberFlows } from "./names.js";
import { runRow, RUN_HEADERS } from "./runs.js";
import { triggerRow, TRIGGER_HEADERS } from "./triggers.js";
import {
  clearErrors,
  field,
  setFieldError,
  fill,
  formError,
  h,
  heading,
  link,
  pagedTable,
  pageError,
  row,
  select,
  showError,
  table,
  when,
} from "./ui.js";

export function flowTarget(flow) {
  const settings = flow.settings;
  return settings.kind === "python"
    ? h("code", {}, settings.function)
    : h("code", {}, `${settings.method} ${settings.url}`);
}

export async function flowsPage({ main }) {
  const list = await pagedTable({
    headers: ["Name", "Kind", "Target", "Timeout", "Retries", "Created"],
    load: (cursor) => get("/v1/flows", { limit: 25, cursor }),
    toRow: (flow) =>
      row(
        link(`#/flows/${flow.id}`, flow.name || flow.id),
        flow.settings.kind,
        flowTarget(flow),
        `${flow.timeout_seconds} s`,
        String(flow.retries),
        when(flow.created_at),
      ),
    empty: "No flows yet: register one to give it triggers.",
  });
  main.replaceChildren(
    heading("Flows", link("#/flows/new", "Register a flow", { class: "button" })),
    list,
  );
}

export async function newFlowPage({ main }) {
  let functions = [];
  let functionsError = null;
  try {
    functions = await get("/v1/flow-functions");
  } catch (error) {
    functionsError = error;
  }
  const kind = select(
    "kind",
    [
      ["python", "Python function"],
      ["http", "HTTP request"],
    ],
    "python",
  );
  const name = h("input", { name: "name", required: true, maxlength: 200, autocomplete: "off" });
  const listId = "announced-functions";
  const fn = h("input", { name: "function", list: listId, autocomplete: "off" });
  const announced = h(
    "datalist",
    { id: listId },
    functions.map((f) => h("option", { value: f.name }, `served by ${f.runner_id}`)),
  );
  const url = h("input", {
    name: "url",
    type: "url",
    spellcheck: false,
    placeholder: "https://example.com/hook",
  });
  const method = select(
    "method",
    ["POST", "GET", "PUT", "PATCH", "DELETE"].map((m) => [m, m]),
    "POST",
  );
  // Named as the API names them, so its problems land on these fields.
  const headers = h("textarea", {
    name: "settings.headers",
    rows: 3,
    spellcheck: false,
    placeholder: "Authorization: Bearer …\nX-Team: ops",
  });
  const requestBody = h("textarea", {
    name: "settings.body",
    rows: 3,
    spellcheck: false,
    placeholder: '{"order": "{{input}}", "run": "{{run_id}}"}',
  });
  const requestTimeout = h("input", {
    name: "settings.timeout_seconds",
    type: "number",
    min: 0.001,
    max: 300,
    step: "any",
  });
  requestTimeout.value = "30";
  const timeout = h("input", { name: "timeout_seconds", type: "number", min: 0.001, step: "any" });
  timeout.value = "300";
  const retries = h("input", { name: "retries", type: "number", min: 0, max: 20 });
  retries.value = "0";
  const pythonPart = h(
    "fieldset",
    {},
    h("legend", {}, "Python function"),
    field("Function", fn, {
      hint: functions.length
        ? `Announced by the runners: ${functions.map((f) => f.name).join(", ")}`
        : "No runner announces a function right now.",
    }),
    announced,
  );
  const httpPart = h(
    "fieldset",
    { hidden: true },
    h("legend", {}, "HTTP request"),
    field("URL", url, { wide: true, hint: "http or https; private and loopback addresses are refused when it runs" }),
    field("Method", method),
    field("Request timeout (seconds)", requestTimeout, { hint: "Each request; at most 300" }),
    field("Headers (optional)", headers, { wide: true, hint: "One “Name: value” a line" }),
    field("Body (optional JSON template)", requestBody, {
      wide: true,
      hint: "Empty sends the run's input; \"{{input}}\", {{run_id}}, {{attempt}}… are replaced",
    }),
  );
  const sync = () => {
    pythonPart.hidden = kind.value !== "python";
    httpPart.hidden = kind.value !== "http";
  };
  kind.addEventListener("change", sync);
  const form = h(
    "form",
    { class: "card form-grid", novalidate: true },
    field("Name", name),
    field("Kind", kind),
    pythonPart,
    httpPart,
    field("Timeout (seconds)", timeout),
    field("Retries", retries),
    formError(),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Register flow")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    let settings = { kind: "python", function: fn.value.trim() };
    if (kind.value === "http") {
      settings = { kind: "http", url: url.value.trim(), method: method.value };
      settings.timeout_seconds = Number(requestTimeout.value || 30);
      const lines = headers.value.split("\n").filter((line) => line.trim());
      const bad = lines.find((line) => !/^[^:\s]+\s*:/.test(line));
      if (bad) {
        setFieldError(headers, `“${bad.trim()}” is not “Name: value”`);
        headers.focus();
        return;
      }
      settings.headers = Object.fromEntries(
        lines.map((line) => {
          const at = line.indexOf(":");
          return [line.slice(0, at).trim(), line.slice(at + 1).trim()];
        }),
      );
      if (requestBody.value.trim()) {
        try {
          settings.body = JSON.parse(requestBody.value);
        } catch (error) {
          setFieldError(requestBody, `not valid JSON: ${error.message}`);
          requestBody.focus();
          return;
        }
      }
    }
    const body = {
      name: name.value.trim(),
      settings,
      timeout_seconds: Number(timeout.value || 300),
      retries: Number(retries.value || 0),
    };
    try {
      const flow = await post("/v1/flows", body);
      window.location.hash = `#/flows/${flow.id}`;
    } catch (error) {
      showError(form, error, { invalid_name: "name", function_not_found: "function" });
    }
  });
  if (functions.length === 1) fn.value = functions[0].name;
  fill(main,
    heading("Register a flow"),
    functionsError ? pageError(functionsError) : null,
    form,
  );
}

export async function flowPage({ main, ids: [flowId] }) {
  let flow;
  try {
    flow = await get(`/v1/flows/${encodeURIComponent(flowId)}`);
  } catch (error) {
    main.replaceChildren(heading("Flow"), pageError(error));
    return;
  }
  rememberFlows([flow]); // its triggers' and runs' rows name it without asking again
  const [triggers, runs] = await Promise.all([
    pagedTable({
      headers: TRIGGER_HEADERS,
      load: (cursor) => get("/v1/triggers", { flow_id: flow.id, limit: 25, cursor }),
      toRow: triggerRow,
      empty: "No triggers yet.",
    }),
    get("/v1/runs", { flow_id: flow.id, limit: 10 }).then(
      (page) => table(RUN_HEADERS, page.items.map(runRow), "No runs yet."),
      (error) => pageError(error),
    ),
  ]);
  main.replaceChildren(
    heading(
      flow.name || flow.id,
      link(`#/triggers/new?flow=${flow.id}`, "New trigger", { class: "button" }),
    ),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Id"),
      h("dd", {}, h("code", {}, flow.id)),
      h("dt", {}, "Target"),
      h("dd", {}, flowTarget(flow)),
      flow.settings.kind === "http"
        ? [
            h("dt", {}, "Request"),
            h(
              "dd",
              {},
              `times out after ${flow.settings.timeout_seconds} s; headers `,
              Object.keys(flow.settings.headers || {}).join(", ") || "none",
              " (values not shown); body ",
              flow.settings.body === null || flow.settings.body === undefined
                ? "the run's input"
                : h("code", {}, JSON.stringify(flow.settings.body)),
            ),
          ]
        : null,
      h("dt", {}, "Timeout"),
      h("dd", {}, `${flow.timeout_seconds} s`),
      h("dt", {}, "Retries"),
      h("dd", {}, `${flow.retries} (backoff ${flow.retry_backoff_seconds} s)`),
      h("dt", {}, "Concurrency"),
      h("dd", {}, flow.concurrency ? String(flow.concurrency) : "no limit"),
      h("dt", {}, "Created"),
      h("dd", {}, when(flow.created_at)),
    ),
    h("h2", {}, "Triggers"),
    triggers,
    h(
      "h2",
      {},
      "Recent runs ",
      link(`#/runs?flow=${flow.id}`, "all runs of this flow", { class: "small-link" }),
    ),
    runs,
  );
}
