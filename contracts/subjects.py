"""Every NATS subject, stream, consumer and KV bucket name the trigger plane uses."""

# --- Flow starts: the public way into the runner -------------------------------------------
FLOW_START_PREFIX = "flow.v1.start"
FLOW_STARTS = f"{FLOW_START_PREFIX}.*"
"""Every workspace's `FlowStart` subject (stream `FLOW_STARTS`)."""
FLOW_START_UNVERSIONED = "flow.start"
"""Deprecated: the subject `FlowStart`s went to before `flow.v1.start.<workspace_id>`.

`FLOW_STARTS` still stores it and the runner still runs its starts, so outside publishers keep
working for one more version; it carries no workspace, so no NATS permission can scope it.
"""
FLOW_STARTS_STREAM = "FLOW_STARTS"
RUNNER_CONSUMER = "runner"
"""Durable pull consumer on `FLOW_STARTS` shared by every runner replica."""


def flow_start(workspace_id: str) -> str:
    """JetStream subject of the `FlowStart`s of one workspace: the workspace is in the subject
    so that a NATS permission can let an outside publisher start flows of its workspace only."""
    return f"{FLOW_START_PREFIX}.{workspace_id}"


def flow_start_workspace(subject: str) -> str | None:
    """The workspace id a `flow_start` subject names; None for any other subject (the
    unversioned `flow.start` among them)."""
    prefix, _, workspace_id = subject.rpartition(".")
    return workspace_id if prefix == FLOW_START_PREFIX else None


# --- Dead letters -------------------------------------------------------------------------
DEAD_LETTER_PREFIX = "deadletter"
DEAD_LETTERS_STREAM = "DEAD_LETTERS"


def dead_letter(source_subject: str) -> str:
    """Subject where a rejected message from `source_subject` is recorded with its reason."""
    return f"{DEAD_LETTER_PREFIX}.{source_subject}"


# --- Runs ---------------------------------------------------------------------------------
RUN_EVENT_PREFIX = "run.v1.event"
RUN_EVENTS_STREAM = "RUN_EVENTS"
RUN_EVENTS_SKIPPED = f"{RUN_EVENT_PREFIX}.*.*.skipped"
"""Every workspace's events of runs that were skipped (by an overlap policy)."""


def run_event(workspace_id: str, run_id: str, status: str) -> str:
    """Subject of the `RunEvent` of one run reaching `status`: the status is the last token,
    so a consumer can filter on it on the server (`RUN_EVENTS_SKIPPED`)."""
    return f"{RUN_EVENT_PREFIX}.{workspace_id}.{run_id}.{status}"


def run_events(workspace_id: str, run_id: str) -> str:
    """Subject filter of every `RunEvent` of one run, whatever its status."""
    return f"{RUN_EVENT_PREFIX}.{workspace_id}.{run_id}.*"


# --- Runner request/reply API and broadcasts -----------------------------------------------
RUNNER_QUEUE = "runner"
"""Queue group every runner replica answers requests in."""
RUNNER_PREFIX = "runner.v1"
RUN_CANCEL = f"{RUNNER_PREFIX}.run.cancel"
"""Request `CancelRun`, reply `Reply[Run]`."""
RUN_ABORT = f"{RUNNER_PREFIX}.run.abort"
"""Broadcast `AbortRun` to every runner replica."""

# --- History request/reply API (`history.v1.<noun>.<verb>`) --------------------------------
HISTORY_QUEUE = "history"
"""Queue group every history replica answers queries in."""
HISTORY_PREFIX = "history.v1"
HISTORY_RUNS_LIST = f"{HISTORY_PREFIX}.runs.list"
"""Request `ListRuns`, reply `Reply[RunPage]`."""
HISTORY_RUNS_STATS = f"{HISTORY_PREFIX}.runs.stats"
"""Request `RunStatsQuery`, reply `Reply[RunStats]`."""

# --- Registry request/reply API (`registry.v1.<noun>.<verb>`) ------------------------------
REGISTRY_QUEUE = "registry"
"""Queue group every registry replica answers requests in."""
REGISTRY_PREFIX = "registry.v1"
WORKSPACE_CREATE = f"{REGISTRY_PREFIX}.workspace.create"
KEY_CREATE = f"{REGISTRY_PREFIX}.key.create"
KEY_LIST = f"{REGISTRY_PREFIX}.key.list"
KEY_REVOKE = f"{REGISTRY_PREFIX}.key.revoke"
KEY_TOUCH = f"{REGISTRY_PREFIX}.key.touch"
KEY_ROTATE = f"{REGISTRY_PREFIX}.key.rotate"
KEY_UPDATE = f"{REGISTRY_PREFIX}.key.update"
"""Fire-and-forget: the ingress reports that a key was used (throttled per key)."""
FLOW_CREATE = f"{REGISTRY_PREFIX}.flow.create"
FLOW_LIST = f"{REGISTRY_PREFIX}.flow.list"
FLOW_GET = f"{REGISTRY_PREFIX}.flow.get"
TRIGGER_CREATE = f"{REGISTRY_PREFIX}.trigger.create"
TRIGGER_LIST = f"{REGISTRY_PREFIX}.trigger.list"
TRIGGER_GET = f"{REGISTRY_PREFIX}.trigger.get"
TRIGGER_UPDATE = f"{REGISTRY_PREFIX}.trigger.update"
TRIGGER_SET_ENABLED = f"{REGISTRY_PREFIX}.trigger.set_enabled"
TRIGGER_DELETE = f"{REGISTRY_PREFIX}.trigger.delete"
TRIGGER_ROTATE_SECRET = f"{REGISTRY_PREFIX}.trigger.rotate_secret"
RUNNER_ANNOUNCE = f"{REGISTRY_PREFIX}.runner.announce"
"""Fire-and-forget: a runner announces the flow functions it serves (`RunnerAnnouncement`)."""
FUNCTION_LIST = f"{REGISTRY_PREFIX}.function.list"

# --- Registry state (JetStream KV; the registry is the only writer) ------------------------
# Watching a bucket (`$KV.<bucket>.>`) is how other services follow registry changes: the
# watch replays the current state, then streams every put and delete.
WORKSPACES_BUCKET = "workspaces"
"""Key: the workspace id."""
API_KEYS_BUCKET = "api_keys"
"""Key: `record_key(workspace_id, key_id)`."""
FLOWS_BUCKET = "flows"
"""Key: `record_key(workspace_id, flow_id)`."""
TRIGGERS_BUCKET = "triggers"
"""Key: `record_key(workspace_id, trigger_id)`."""
FLOW_FUNCTIONS_BUCKET = "flow_functions"
"""Key: the function name; value: `AnnouncedFunction`. Entries expire unless re-announced."""


def record_key(workspace_id: str, record_id: str) -> str:
    """KV key of a workspace's record: grouped by workspace, so `<workspace>.>` lists them."""
    return f"{workspace_id}.{record_id}"


def admin_keys_key(workspace_id: str) -> str:
    """KV key, in the workspaces bucket, of the record listing a workspace's admin keys."""
    return f"{workspace_id}.admin_keys"


def quota_key(workspace_id: str, quota: str) -> str:
    """KV key, in the workspaces bucket, of the record of a workspace's use of one quota."""
    return f"{workspace_id}.quota_{quota}"


def record_id(key: str) -> str:
    """The record id in a `record_key` (ids are unique across workspaces)."""
    return key.rpartition(".")[2]


# --- Run records (JetStream KV; the runner is the only writer) -----------------------------
RUNS_BUCKET = "runs"


run_key = record_key
"""KV key of a run record: `<workspace>.<run>`, so a workspace's runs list by prefix."""
RUN_SLOTS_BUCKET = "run_slots"
"""Admission control (`RunSlots`): concurrency limits and overlap policies across replicas."""


def flow_slots_key(workspace_id: str, flow_id: str) -> str:
    return f"flow.{workspace_id}.{flow_id}"


def trigger_slots_key(workspace_id: str, trigger_id: str) -> str:
    return f"trigger.{workspace_id}.{trigger_id}"


def workspace_slots_key(workspace_id: str) -> str:
    """The runs of a workspace holding one of its slots (`RUNNER_WORKSPACE_CONCURRENCY`)."""
    return f"workspace.{workspace_id}"


# --- Idempotency keys of the API trigger (JetStream KV; the ingress is the only writer) -----
IDEMPOTENCY_BUCKET = "idempotency_keys"
"""Key: `<workspace>.<sha256 of the Idempotency-Key>`; value: `IdempotentStart`. A webhook
delivery id is stored here too, under the digest of `hook:<trigger id>:<delivery id>`."""
WEBHOOK_REFUSALS_BUCKET = "webhook_refusals"
"""The refused deliveries of each webhook trigger (`WebhookRefusals`, key
`<workspace>.<trigger>`); the ingress is the only writer."""


# --- Scheduler timers (stream with NATS message schedules) ---------------------------------
SCHEDULES_STREAM = "SCHEDULES"
SCHEDULE_TIMER_PREFIX = "schedule.timer"
SCHEDULE_TICK_PREFIX = "schedule.tick"
SCHEDULER_CONSUMER = "scheduler"
"""Durable pull consumer on the ticks, shared by every scheduler replica."""


def schedule_timer(trigger_id: str) -> str:
    """Subject holding a trigger's one parked `@at` timer; a new timer replaces the old."""
    return f"{SCHEDULE_TIMER_PREFIX}.{trigger_id}"


def schedule_tick(trigger_id: str) -> str:
    """Subject the server republishes a trigger's timer to when it is due."""
    return f"{SCHEDULE_TICK_PREFIX}.{trigger_id}"


def schedule_chain(trigger_id: str) -> str:
    """Both subjects of a trigger's chain of timers, its timer and its tick: the newest message
    on them is the chain's head, and parking compares-and-sets on their last sequence."""
    return f"schedule.*.{trigger_id}"


# --- The schedule ledger (stream; the scheduler is the only writer) ------------------------
SCHEDULE_FIRES_STREAM = "SCHEDULE_FIRES"
SCHEDULE_FIRE_PREFIX = "schedule.fire"
LEDGER_ENTRIES_PER_TRIGGER = 1000
"""The stream keeps the newest this many ledger entries of each trigger."""
SCHEDULER_RUN_EVENTS_CONSUMER = "scheduler_ledger"
"""Durable consumer on `RUN_EVENTS` shared by the scheduler replicas: runs of schedule fires
that the runner skipped by overlap policy become ledger entries."""


def schedule_fire(workspace_id: str, trigger_id: str) -> str:
    """Subject of a trigger's `FireRecord`s (its ledger)."""
    return f"{SCHEDULE_FIRE_PREFIX}.{workspace_id}.{trigger_id}"


# --- The audit log (stream; the registry is the only writer) -------------------------------
AUDIT_STREAM = "AUDIT"
AUDIT_PREFIX = "audit.v1"


def audit_entry(workspace_id: str, action: str, resource_id: str, actor: str) -> str:
    """Subject of one `AuditEntry`: `audit.v1.<workspace>.<resource type>.<verb>.<resource
    id>.<actor>` (the action `trigger.paused` is the two tokens `trigger.paused`), so every
    filter of `GET /v1/audit` is a subject filter the server applies."""
    return f"{AUDIT_PREFIX}.{workspace_id}.{action}.{resource_id}.{actor}"


def audit_filter(
    workspace_id: str,
    resource_type: str | None = None,
    verb: str | None = None,
    resource_id: str | None = None,
    actor: str | None = None,
) -> str:
    """The subject filter of a workspace's audit entries, narrowed by whatever is given."""
    tokens = (resource_type, verb, resource_id, actor)
    return ".".join([AUDIT_PREFIX, workspace_id, *(token or "*" for token in tokens)])
