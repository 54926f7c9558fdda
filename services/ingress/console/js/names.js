// Flow names for the pages that show flow ids (runs, triggers): a cache filled from the flows a
// page already loaded, else fetched once per unknown flow (never once per row), and emptied at
// every page change so a renamed or new flow shows as it is now.

import { get } from "./api.js";
import { h, link } from "./ui.js";

const known = new Map(); // flow id -> flow, or null once the API said it is gone
const asked = new Map(); // flow id -> its pending GET, shared by the rows that wait for it

export function forgetFlows() {
  known.clear();
  asked.clear();
}

export function rememberFlows(flows) {
  for (const flow of flows) known.set(flow.id, flow);
}

/** Fetches, at the same time, the flows of `ids` the cache lacks (each distinct id once). */
export async function resolveFlows(ids) {
  const missing = [...new Set(ids)].filter((id) => id && !known.has(id));
  await Promise.all(
    missing.map((id) => {
      if (!asked.has(id)) {
        asked.set(
          id,
          get(`/v1/flows/${encodeURIComponent(id)}`).then(
            (flow) => known.set(id, flow),
            () => known.set(id, null), // deleted or unreadable: the row shows the id
          ),
        );
      }
      return asked.get(id);
    }),
  );
}

/** Every flow of the workspace, following the cursor pages (limit 500 each). */
export async function allFlows() {
  const flows = [];
  let cursor = null;
  do {
    const page = await get("/v1/flows", { limit: 500, cursor });
    flows.push(...page.items);
    cursor = page.next_cursor || null;
  } while (cursor);
  rememberFlows(flows);
  return flows;
}

export const flowName = (id) => known.get(id)?.name || null;

/** A link to the flow named by its name, its id on hover and as a second, quieter line. */
export function flowLink(id) {
  const name = flowName(id);
  if (!name) return link(`#/flows/${id}`, id, { class: "mono" });
  return h(
    "span",
    { class: "named" },
    link(`#/flows/${id}`, name, { title: id }),
    h("small", { class: "mono secondary" }, id),
  );
}
