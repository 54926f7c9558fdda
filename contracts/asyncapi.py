"""The AsyncAPI 3 document of every NATS subject and message, built from `contracts/`.

Subjects come from `contracts.subjects` and payload schemas from the msgspec Structs (through
`msgspec.json.schema_components`), so the Structs stay the single source; this module only adds
who publishes and who subscribes. `python -m contracts.asyncapi` rewrites the checked-in copy
(`make asyncapi`); a unit test fails when that copy is stale.
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from contracts import subjects
from contracts.audit import AUDIT_RETENTION_DAYS, AuditEntry
from contracts.history import ListRuns, RunPage, RunStats, RunStatsQuery
from contracts.http import WebhookRefusals
from contracts.registry import (
    AdminKeys,
    AnnouncedFunction,
    ApiKey,
    ApiKeyView,
    CreateFlow,
    CreateKey,
    CreateTrigger,
    CreateWorkspace,
    DeleteTrigger,
    Flow,
    FlowPage,
    GetFlow,
    GetTrigger,
    IssuedKey,
    KeyPage,
    KeyUsed,
    ListFlows,
    ListFunctions,
    ListKeys,
    ListTriggers,
    QuotaUse,
    Reply,
    RevokeKey,
    RotateKey,
    RotateWebhookSecret,
    RunnerAnnouncement,
    SetTriggerEnabled,
    Trigger,
    TriggerPage,
    UpdateKey,
    UpdateTrigger,
    Workspace,
    WorkspaceCreated,
)
from contracts.runs import (
    AbortRun,
    CancelRun,
    DeadLetter,
    FlowStart,
    IdempotentStart,
    Run,
    RunEvent,
    RunSlots,
)
from contracts.scheduling import FireRecord, ScheduleTick

CHECKED_IN = Path(__file__).with_name("asyncapi.json")
VERSION = "1.0.0"
SCHEMAS = "#/components/schemas/{name}"
KV_PREFIX = "$KV"
"""Every JetStream KV write is a message on `$KV.<bucket>.<key>` (NATS's own convention)."""


@dataclass(frozen=True)
class Message:
    """A payload type and the name the document gives it (the Struct's own, by default)."""

    type: Any
    name: str = ""

    @property
    def title(self) -> str:
        """The name given, else msgspec's component name (`Reply_Run_` for `Reply[Run]`)."""
        if self.name:
            return self.name
        (schema,), _ = msgspec.json.schema_components([self.type], ref_template="{name}")
        return str(schema["$ref"])


@dataclass(frozen=True)
class Channel:
    """One subject (or subject pattern) of the trigger plane, and who is on each side."""

    id: str
    address: str
    messages: tuple[Message, ...]
    description: str
    publishers: tuple[str, ...]
    subscribers: tuple[str, ...]
    parameters: dict[str, str] = field(default_factory=dict)
    queue: str | None = None
    """The queue group the subscribers answer in (one replica handles each message)."""
    durable: str | None = None
    """The durable JetStream pull consumer the subscribers share."""
    stream: str | None = None
    """The JetStream stream that stores the subject (None: core NATS, not stored)."""
    reply: Message | None = None
    """Request/reply: what the subscriber answers on the request's reply subject."""


def _m(type_: Any, name: str = "") -> Message:
    return Message(type_, name)


WORKSPACE = "the workspace's id"
RUN = "the run's id"
TRIGGER = "the trigger's id"
KEY = "the record's key in the bucket"
INGRESS = "ingress"
REGISTRY = "registry"
RUNNER = "runner"
SCHEDULER = "scheduler"
HISTORY = "history"


def _registry_call(
    id: str, subject: str, request: Any, reply: Message | None, description: str
) -> Channel:
    return Channel(
        id=id,
        address=subject,
        messages=(_m(request),),
        description=description,
        publishers=(RUNNER,) if request is RunnerAnnouncement else (INGRESS,),
        subscribers=(REGISTRY,),
        queue=subjects.REGISTRY_QUEUE,
        reply=reply,
    )


def _bucket(
    id: str,
    bucket: str,
    messages: tuple[Message, ...],
    writer: str,
    readers: tuple[str, ...],
    description: str,
) -> Channel:
    return Channel(
        id=id,
        address=f"{KV_PREFIX}.{bucket}.{{key}}",
        messages=messages,
        description=f"KV bucket `{bucket}` (written by the {writer} alone). {description}",
        publishers=(writer,),
        subscribers=readers,
        parameters={"key": KEY},
        stream=f"KV_{bucket}",
    )


CHANNELS: tuple[Channel, ...] = (
    Channel(
        id="flowStart",
        address=subjects.flow_start("{workspace_id}"),
        messages=(_m(FlowStart),),
        description="Start a flow once: the public way in. JetStream, at least once, "
        "de-duplicated by `Nats-Msg-Id` within the stream's window and by the runner's "
        "KV-create guard on the run id. The workspace is in the subject so that a NATS "
        "permission can scope an outside publisher to its own workspace. Carries the W3C "
        "`traceparent` header when tracing is on.",
        publishers=(INGRESS, SCHEDULER, "external publishers"),
        subscribers=(RUNNER,),
        parameters={"workspace_id": WORKSPACE},
        durable=subjects.RUNNER_CONSUMER,
        stream=subjects.FLOW_STARTS_STREAM,
    ),
    Channel(
        id="flowStartUnversioned",
        address=subjects.FLOW_START_UNVERSIONED,
        messages=(_m(FlowStart),),
        description="Deprecated: the subject before `flow.v1.start.<workspace_id>`; still "
        "stored and run, but no permission can scope it to a workspace.",
        publishers=("external publishers",),
        subscribers=(RUNNER,),
        durable=subjects.RUNNER_CONSUMER,
        stream=subjects.FLOW_STARTS_STREAM,
    ),
    Channel(
        id="deadLetter",
        address=subjects.dead_letter("{source_subject}"),
        messages=(_m(DeadLetter),),
        description="A message a service refused, with the reason; operators read the stream.",
        publishers=(RUNNER, SCHEDULER),
        subscribers=("operators",),
        parameters={"source_subject": "the subject the refused message was published to"},
        stream=subjects.DEAD_LETTERS_STREAM,
    ),
    Channel(
        id="runEvent",
        address=subjects.run_event("{workspace_id}", "{run_id}", "{status}"),
        messages=(_m(RunEvent),),
        description="A run changed status; best effort (the run record is the truth). The "
        "ingress follows one run's events while a synchronous call waits; the scheduler's "
        f"durable consumer takes only `{subjects.RUN_EVENTS_SKIPPED}` into the ledger.",
        publishers=(RUNNER,),
        subscribers=(INGRESS, SCHEDULER),
        parameters={"workspace_id": WORKSPACE, "run_id": RUN, "status": "the run's new status"},
        durable=subjects.SCHEDULER_RUN_EVENTS_CONSUMER,
        stream=subjects.RUN_EVENTS_STREAM,
    ),
    Channel(
        id="runCancel",
        address=subjects.RUN_CANCEL,
        messages=(_m(CancelRun),),
        description="Cancel a queued or running run.",
        publishers=(INGRESS,),
        subscribers=(RUNNER,),
        queue=subjects.RUNNER_QUEUE,
        reply=_m(Reply[Run]),
    ),
    Channel(
        id="runAbort",
        address=subjects.RUN_ABORT,
        messages=(_m(AbortRun),),
        description="Broadcast: every runner replica stops working on a cancelled run.",
        publishers=(RUNNER,),
        subscribers=(RUNNER,),
    ),
    Channel(
        id="historyRunsList",
        address=subjects.HISTORY_RUNS_LIST,
        messages=(_m(ListRuns),),
        description="A page of a workspace's runs, newest first.",
        publishers=(INGRESS,),
        subscribers=(HISTORY,),
        queue=subjects.HISTORY_QUEUE,
        reply=_m(Reply[RunPage]),
    ),
    Channel(
        id="historyRunsStats",
        address=subjects.HISTORY_RUNS_STATS,
        messages=(_m(RunStatsQuery),),
        description="Counts and durations of a workspace's runs.",
        publishers=(INGRESS,),
        subscribers=(HISTORY,),
        queue=subjects.HISTORY_QUEUE,
        reply=_m(Reply[RunStats]),
    ),
    _registry_call(
        "workspaceCreate",
        subjects.WORKSPACE_CREATE,
        CreateWorkspace,
        _m(Reply[WorkspaceCreated]),
        "Create a workspace and its first admin key.",
    ),
    _registry_call(
        "keyCreate", subjects.KEY_CREATE, CreateKey, _m(Reply[IssuedKey]), "Issue an API key."
    ),
    _registry_call(
        "keyList", subjects.KEY_LIST, ListKeys, _m(Reply[KeyPage]), "A page of API keys."
    ),
    _registry_call(
        "keyRevoke", subjects.KEY_REVOKE, RevokeKey, _m(Reply[ApiKeyView]), "Revoke an API key."
    ),
    _registry_call(
        "keyRotate",
        subjects.KEY_ROTATE,
        RotateKey,
        _m(Reply[IssuedKey]),
        "A new secret for an API key; the old one works until the grace ends.",
    ),
    _registry_call(
        "keyUpdate",
        subjects.KEY_UPDATE,
        UpdateKey,
        _m(Reply[ApiKeyView]),
        "Change an API key's expiry or the flows it may start.",
    ),
    _registry_call(
        "keyTouch",
        subjects.KEY_TOUCH,
        KeyUsed,
        None,
        "Fire and forget: a key authenticated (at most once a minute per key).",
    ),
    _registry_call(
        "flowCreate", subjects.FLOW_CREATE, CreateFlow, _m(Reply[Flow]), "Create a flow."
    ),
    _registry_call(
        "flowList", subjects.FLOW_LIST, ListFlows, _m(Reply[FlowPage]), "A page of flows."
    ),
    _registry_call("flowGet", subjects.FLOW_GET, GetFlow, _m(Reply[Flow]), "One flow."),
    _registry_call(
        "triggerCreate",
        subjects.TRIGGER_CREATE,
        CreateTrigger,
        _m(Reply[Trigger], "Reply_Trigger_"),
        "Create a trigger.",
    ),
    _registry_call(
        "triggerList",
        subjects.TRIGGER_LIST,
        ListTriggers,
        _m(Reply[TriggerPage]),
        "A page of triggers.",
    ),
    _registry_call(
        "triggerGet",
        subjects.TRIGGER_GET,
        GetTrigger,
        _m(Reply[Trigger], "Reply_Trigger_"),
        "One trigger.",
    ),
    _registry_call(
        "triggerUpdate",
        subjects.TRIGGER_UPDATE,
        UpdateTrigger,
        _m(Reply[Trigger], "Reply_Trigger_"),
        "Change a trigger.",
    ),
    _registry_call(
        "triggerSetEnabled",
        subjects.TRIGGER_SET_ENABLED,
        SetTriggerEnabled,
        _m(Reply[Trigger], "Reply_Trigger_"),
        "Pause or resume a trigger.",
    ),
    _registry_call(
        "triggerDelete",
        subjects.TRIGGER_DELETE,
        DeleteTrigger,
        _m(Reply[Trigger], "Reply_Trigger_"),
        "Delete a trigger.",
    ),
    _registry_call(
        "triggerRotateSecret",
        subjects.TRIGGER_ROTATE_SECRET,
        RotateWebhookSecret,
        _m(Reply[Trigger], "Reply_Trigger_"),
        "A new signing secret for a webhook trigger (shown once); the previous one is kept "
        "for the grace the request gives.",
    ),
    _registry_call(
        "runnerAnnounce",
        subjects.RUNNER_ANNOUNCE,
        RunnerAnnouncement,
        None,
        "Fire and forget: a runner announces the flow functions it serves, periodically.",
    ),
    _registry_call(
        "functionList",
        subjects.FUNCTION_LIST,
        ListFunctions,
        _m(Reply[list[AnnouncedFunction]], "Reply_list_AnnouncedFunction_"),
        "The flow functions runners announced recently.",
    ),
    Channel(
        id="scheduleTimer",
        address=subjects.schedule_timer("{trigger_id}"),
        messages=(_m(ScheduleTick),),
        description="A schedule trigger's one parked `@at` timer (headers `Nats-Schedule` and "
        "`Nats-Schedule-Target`); a new one replaces it. Nobody subscribes: the server "
        "republishes it to the trigger's tick subject when it is due.",
        publishers=(SCHEDULER,),
        subscribers=("nats-server (message schedules)",),
        parameters={"trigger_id": TRIGGER},
        stream=subjects.SCHEDULES_STREAM,
    ),
    Channel(
        id="scheduleTick",
        address=subjects.schedule_tick("{trigger_id}"),
        messages=(_m(ScheduleTick),),
        description="A due timer, republished by the server; whichever scheduler replica pulls "
        "it publishes the fire's `FlowStart` and parks the next timer.",
        publishers=("nats-server (message schedules)",),
        subscribers=(SCHEDULER,),
        parameters={"trigger_id": TRIGGER},
        durable=subjects.SCHEDULER_CONSUMER,
        stream=subjects.SCHEDULES_STREAM,
    ),
    Channel(
        id="scheduleFire",
        address=subjects.schedule_fire("{workspace_id}", "{trigger_id}"),
        messages=(_m(FireRecord),),
        description="A trigger's ledger: every occurrence and what became of it (the newest "
        f"{subjects.LEDGER_ENTRIES_PER_TRIGGER} per trigger are kept). The ingress reads it for "
        "`GET /v1/triggers/{trigger_id}/fires`.",
        publishers=(SCHEDULER,),
        subscribers=(INGRESS,),
        parameters={"workspace_id": WORKSPACE, "trigger_id": TRIGGER},
        stream=subjects.SCHEDULE_FIRES_STREAM,
    ),
    Channel(
        id="auditEntry",
        address=subjects.audit_entry(
            "{workspace_id}", "{resource_type}.{verb}", "{resource_id}", "{actor}"
        ),
        messages=(_m(AuditEntry),),
        description="One change of a workspace, key, flow or trigger: who made it, before and "
        "after as the API shows them (never a secret). Published once the change is stored, "
        "with `Nats-Msg-Id` = the entry id; kept "
        f"{AUDIT_RETENTION_DAYS} days. The ingress reads it for `GET /v1/audit`.",
        publishers=(REGISTRY,),
        subscribers=(INGRESS,),
        parameters={
            "workspace_id": WORKSPACE,
            "resource_type": "`workspace`, `key`, `flow` or `trigger`",
            "verb": "what was done (`created`, `updated`, `paused`, ...; the action is "
            "`<resource_type>.<verb>`)",
            "resource_id": "the changed record's id",
            "actor": "the id of the API key that made the change, or `operator`",
        },
        stream=subjects.AUDIT_STREAM,
    ),
    _bucket(
        "workspacesBucket",
        subjects.WORKSPACES_BUCKET,
        (_m(Workspace), _m(AdminKeys), _m(QuotaUse)),
        REGISTRY,
        (REGISTRY,),
        "Keys: `<workspace>` (the workspace), `<workspace>.admin_keys`, "
        "`<workspace>.quota_<quota>`.",
    ),
    _bucket(
        "apiKeysBucket",
        subjects.API_KEYS_BUCKET,
        (_m(ApiKey),),
        REGISTRY,
        (INGRESS,),
        "Key digests only; the ingress watches it into its local directory.",
    ),
    _bucket(
        "flowsBucket",
        subjects.FLOWS_BUCKET,
        (_m(Flow),),
        REGISTRY,
        (INGRESS, RUNNER),
        "Watched by the ingress and the runners.",
    ),
    _bucket(
        "triggersBucket",
        subjects.TRIGGERS_BUCKET,
        (_m(Trigger, "Trigger"),),
        REGISTRY,
        (INGRESS, SCHEDULER),
        "Watched by the ingress and the schedulers.",
    ),
    _bucket(
        "flowFunctionsBucket",
        subjects.FLOW_FUNCTIONS_BUCKET,
        (_m(AnnouncedFunction),),
        REGISTRY,
        (REGISTRY,),
        "Entries expire unless a runner announces the function again.",
    ),
    _bucket(
        "runsBucket",
        subjects.RUNS_BUCKET,
        (_m(Run),),
        RUNNER,
        (HISTORY, INGRESS),
        "Key `<workspace>.<run>`; the history replicas follow its stream into SQLite, the "
        "ingress reads one run.",
    ),
    _bucket(
        "runSlotsBucket",
        subjects.RUN_SLOTS_BUCKET,
        (_m(RunSlots),),
        RUNNER,
        (RUNNER,),
        "Concurrency limits and overlap policies across runner replicas (compare-and-swap).",
    ),
    _bucket(
        "idempotencyKeysBucket",
        subjects.IDEMPOTENCY_BUCKET,
        (_m(IdempotentStart),),
        INGRESS,
        (INGRESS,),
        "What an `Idempotency-Key` started, kept 25 hours.",
    ),
    _bucket(
        "webhookRefusalsBucket",
        subjects.WEBHOOK_REFUSALS_BUCKET,
        (_m(WebhookRefusals),),
        INGRESS,
        (INGRESS,),
        "Key `<workspace>.<trigger>`: refused deliveries of a webhook trigger counted by code, "
        "the last ones listed (`GET /v1/triggers/{trigger_id}/refusals`).",
    ),
)


def _ref(kind: str, name: str) -> dict[str, str]:
    """A reference to a component (`messages`) or, for `channels`, to a channel of the
    document (channels are top-level in AsyncAPI 3)."""
    where = "#" if kind == "channels" else "#/components"
    return {"$ref": f"{where}/{kind}/{name}"}


def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document (plain JSON values)."""
    messages: dict[str, Message] = {}
    for channel in CHANNELS:
        for message in (*channel.messages, *([channel.reply] if channel.reply else [])):
            messages.setdefault(message.title, message)
    types = [message.type for message in messages.values()]
    payloads, schemas = msgspec.json.schema_components(types, ref_template=SCHEMAS)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for channel in CHANNELS:
        channels[channel.id] = _channel(channel)
        if channel.reply is not None:
            channels[f"{channel.id}Reply"] = {
                "address": None,
                "description": f"The reply to `{channel.address}`: the requester's inbox.",
                "messages": {channel.reply.title: _ref("messages", channel.reply.title)},
            }
        operations.update(_operations(channel))
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Trigger plane over NATS",
            "version": VERSION,
            "description": "Every NATS subject the services use, with its messages (JSON, the "
            "msgspec Structs of `contracts/`), who publishes and who subscribes. Request/reply "
            "operations answer on the request's reply subject; registry replies are `Reply` "
            "envelopes (exactly one of `ok` and `error`).",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "The NATS server (or cluster) with JetStream (`NATS_URL`).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {
                name: _message(message, payload)
                for (name, message), payload in zip(messages.items(), payloads, strict=True)
            },
            "schemas": schemas,
        },
    }


def _channel(channel: Channel) -> dict[str, Any]:
    facts = [channel.description]
    facts.append(f"Published by: {', '.join(channel.publishers)}.")
    facts.append(f"Subscribed by: {', '.join(channel.subscribers)}.")
    if channel.stream:
        facts.append(f"Stored in stream `{channel.stream}`.")
    if channel.durable:
        facts.append(f"Consumed through the durable pull consumer `{channel.durable}`.")
    if channel.queue:
        facts.append(f"Answered in queue group `{channel.queue}`.")
    body: dict[str, Any] = {
        "address": channel.address,
        "description": " ".join(facts),
        "messages": {m.title: _ref("messages", m.title) for m in channel.messages},
    }
    if channel.parameters:
        body["parameters"] = {
            name: {"description": text} for name, text in channel.parameters.items()
        }
    return body


def _operations(channel: Channel) -> dict[str, Any]:
    messages = [_ref("channels", f"{channel.id}/messages/{m.title}") for m in channel.messages]
    send: dict[str, Any] = {
        "action": "send",
        "channel": _ref("channels", channel.id),
        "summary": f"Published by: {', '.join(channel.publishers)}.",
        "messages": messages,
    }
    receive: dict[str, Any] = {
        "action": "receive",
        "channel": _ref("channels", channel.id),
        "summary": f"Subscribed by: {', '.join(channel.subscribers)}.",
        "messages": messages,
    }
    if channel.queue:
        receive["bindings"] = {"nats": {"queue": channel.queue, "bindingVersion": "0.1.0"}}
    if channel.reply is not None:
        reply_channel = f"{channel.id}Reply"
        reply = {
            "channel": _ref("channels", reply_channel),
            "messages": [_ref("channels", f"{reply_channel}/messages/{channel.reply.title}")],
        }
        send["reply"] = receive["reply"] = reply
    return {f"send_{channel.id}": send, f"receive_{channel.id}": receive}


def _message(message: Message, payload: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"name": message.title, "title": message.title, "payload": payload}
    doc = getattr(message.type, "__doc__", None)
    if isinstance(message.type, type) and doc:
        body["description"] = " ".join(doc.split())
    return body


def render() -> str:
    """The document as the checked-in file holds it."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    """Rewrite the checked-in copy (`make asyncapi`)."""
    CHECKED_IN.write_text(render())
    sys.stdout.write(f"wrote {CHECKED_IN}\n")


if __name__ == "__main__":
    main()
