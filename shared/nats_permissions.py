"""Who may publish and subscribe to what on NATS: a user per service, from `contracts/`.

`deploy/nats/users.conf` is rendered from here
(`python -m shared.nats_permissions > deploy/nats/users.conf`; a unit test fails when it is
stale), so a subject renamed in `contracts/` changes the
permissions with it. Each service may use the subjects it needs and no others: the JetStream
API of the streams and buckets it reads or writes, its request/reply subjects, and its own reply
inbox (`_INBOX_<service>.>`, see `shared.broker.inbox_prefix`), so no user reads another's
replies. A user that answers requests gets `allow_responses` (it may reply to what it received).
"""

import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from contracts import subjects
from shared.broker import bucket_configs, stream_configs
from shared.kv import bucket_stream

SERVICES = ("ingress", "registry", "scheduler", "runner", "history")
API = "$JS.API"
USERS_FILE = Path(__file__).resolve().parents[1] / "deploy" / "nats" / "users.conf"
"""The shipped users (in a source checkout; the service images do not need it)."""


@dataclass(frozen=True)
class User:
    """A NATS user block: what it may publish and subscribe to."""

    name: str
    password: str
    """The value written after `password:`: `$VARIABLE` (the server reads it from its
    environment) or a quoted literal."""
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    comment: str = ""


@dataclass
class Grants:
    """Subjects a user may publish to and subscribe to, collected without repeats."""

    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)

    def pub(self, *names: str) -> "Grants":
        self.publish.extend(name for name in names if name not in self.publish)
        return self

    def sub(self, *names: str) -> "Grants":
        self.subscribe.extend(name for name in names if name not in self.subscribe)
        return self


def password_variable(service: str) -> str:
    """The server's environment variable holding `service`'s password."""
    return f"NATS_{service.upper()}_PASSWORD"


def new_passwords() -> dict[str, str]:
    """A fresh random password per service (what `NATS_AUTH=1 make run` uses)."""
    return {service: secrets.token_urlsafe(24) for service in SERVICES}


def server_environment(passwords: dict[str, str]) -> dict[str, str]:
    """The variables a server started with `USERS_FILE` reads the passwords from."""
    return {password_variable(service): password for service, password in passwords.items()}


def service_environment(service: str, passwords: dict[str, str]) -> dict[str, str]:
    """The variables that make `service` connect as its own user."""
    return {"NATS_USER": service, "NATS_PASSWORD": passwords[service]}


def inbox(service: str) -> str:
    """Subscription subject of `service`'s replies (its connections' inbox prefix)."""
    return f"_INBOX_{service}.>"


# --- JetStream API subjects, per stream ------------------------------------------------------


def manages(stream: str) -> list[str]:
    """Create a stream, or bring its configuration up to date (`ensure_topology`)."""
    return [f"{API}.STREAM.CREATE.{stream}", f"{API}.STREAM.UPDATE.{stream}"]


def reads(stream: str) -> list[str]:
    """Read a stream's state and single messages (KV `get` is a direct get)."""
    return [
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.STREAM.MSG.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
    ]


def consumes(stream: str) -> list[str]:
    """Create, inspect, pull from, acknowledge and delete consumers of a stream (a KV watch is
    an ordered consumer: its flow control replies go to `$JS.FC`)."""
    return [
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"{API}.CONSUMER.INFO.{stream}.>",
        f"{API}.CONSUMER.DELETE.{stream}.>",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def kv_writes(bucket: str) -> list[str]:
    """Put, create, update and delete keys of a bucket."""
    return [f"$KV.{bucket}.>"]


def topology() -> list[str]:
    """Every stream and bucket: each service creates the whole topology when it starts, so any
    one of them can start first (`shared.broker.ensure_topology`)."""
    names = [config.name for config in stream_configs() if config.name]
    names += [bucket_stream(config.bucket) for config in bucket_configs()]
    granted: list[str] = []
    for name in names:
        granted += [*manages(name), f"{API}.STREAM.INFO.{name}"]
    return granted


# --- what each service does -----------------------------------------------------------------

REGISTRY_BUCKETS = (
    subjects.WORKSPACES_BUCKET,
    subjects.API_KEYS_BUCKET,
    subjects.FLOWS_BUCKET,
    subjects.TRIGGERS_BUCKET,
    subjects.FLOW_FUNCTIONS_BUCKET,
)
INGRESS_REGISTRY_CALLS = (
    subjects.WORKSPACE_CREATE,
    subjects.KEY_CREATE,
    subjects.KEY_LIST,
    subjects.KEY_REVOKE,
    subjects.KEY_ROTATE,
    subjects.KEY_UPDATE,
    subjects.KEY_TOUCH,
    subjects.FLOW_CREATE,
    subjects.FLOW_LIST,
    subjects.FLOW_GET,
    subjects.TRIGGER_CREATE,
    subjects.TRIGGER_LIST,
    subjects.TRIGGER_GET,
    subjects.TRIGGER_UPDATE,
    subjects.TRIGGER_SET_ENABLED,
    subjects.TRIGGER_DELETE,
    subjects.TRIGGER_ROTATE_SECRET,
    subjects.FUNCTION_LIST,
)
"""The registry's API as the ingress calls it: everything but the runners' announcements."""


def ingress() -> Grants:
    grants = Grants().pub(*topology()).sub(inbox("ingress"))
    for name in (subjects.API_KEYS_BUCKET, subjects.FLOWS_BUCKET, subjects.TRIGGERS_BUCKET):
        grants.pub(*reads(bucket_stream(name)), *consumes(bucket_stream(name)))
    grants.pub(*reads(bucket_stream(subjects.RUNS_BUCKET)))
    # Its own buckets: what an `Idempotency-Key` started, and webhook refusals by trigger.
    for name in (subjects.IDEMPOTENCY_BUCKET, subjects.WEBHOOK_REFUSALS_BUCKET):
        grants.pub(*reads(bucket_stream(name)), *kv_writes(name))
    grants.pub(subjects.FLOW_STARTS)
    # A trigger's ledger is read with a consumer of its own.
    grants.pub(*reads(subjects.SCHEDULE_FIRES_STREAM), *consumes(subjects.SCHEDULE_FIRES_STREAM))
    # So is the audit log (`GET /v1/audit`), which only the registry writes.
    grants.pub(*reads(subjects.AUDIT_STREAM), *consumes(subjects.AUDIT_STREAM))
    grants.pub(*INGRESS_REGISTRY_CALLS, subjects.RUN_CANCEL)
    grants.pub(subjects.HISTORY_RUNS_LIST, subjects.HISTORY_RUNS_STATS)
    # A synchronous call waits for its run's completion event.
    grants.sub(f"{subjects.RUN_EVENT_PREFIX}.>")
    return grants


def registry() -> Grants:
    grants = Grants().pub(*topology()).sub(inbox("registry"))
    for name in REGISTRY_BUCKETS:
        stream = bucket_stream(name)
        grants.pub(*reads(stream), *consumes(stream), *kv_writes(name))
    grants.sub(f"{subjects.REGISTRY_PREFIX}.>")
    grants.pub(f"{subjects.AUDIT_PREFIX}.>")  # an entry per change it stores
    return grants


def scheduler() -> Grants:
    grants = Grants().pub(*topology()).sub(inbox("scheduler"))
    triggers = bucket_stream(subjects.TRIGGERS_BUCKET)
    grants.pub(*reads(triggers), *consumes(triggers))
    timers = subjects.SCHEDULES_STREAM
    grants.pub(f"{subjects.SCHEDULE_TIMER_PREFIX}.>", *reads(timers), *consumes(timers))
    grants.pub(f"{API}.STREAM.PURGE.{timers}")  # a deleted trigger's timer goes with it
    grants.pub(*consumes(subjects.RUN_EVENTS_STREAM))
    fires = subjects.SCHEDULE_FIRES_STREAM
    grants.pub(f"{subjects.SCHEDULE_FIRE_PREFIX}.>", *reads(fires))
    grants.pub(subjects.FLOW_STARTS)
    grants.pub(
        subjects.dead_letter(f"{subjects.SCHEDULE_TICK_PREFIX}.>"),
        subjects.dead_letter(f"{subjects.RUN_EVENT_PREFIX}.>"),
    )
    return grants


def runner() -> Grants:
    grants = Grants().pub(*topology()).sub(inbox("runner"))
    flows = bucket_stream(subjects.FLOWS_BUCKET)
    grants.pub(*reads(flows), *consumes(flows))
    for name in (subjects.RUNS_BUCKET, subjects.RUN_SLOTS_BUCKET):
        grants.pub(*reads(bucket_stream(name)), *kv_writes(name))
    grants.pub(*consumes(subjects.FLOW_STARTS_STREAM))
    grants.pub(f"{subjects.RUN_EVENT_PREFIX}.>", subjects.RUN_ABORT, subjects.RUNNER_ANNOUNCE)
    grants.sub(subjects.RUN_CANCEL, subjects.RUN_ABORT)
    grants.pub(
        subjects.dead_letter(f"{subjects.FLOW_START_PREFIX}.>"),
        subjects.dead_letter(subjects.FLOW_START_UNVERSIONED),
    )
    return grants


def history() -> Grants:
    grants = Grants().pub(*topology()).sub(inbox("history"))
    runs = bucket_stream(subjects.RUNS_BUCKET)
    grants.pub(*reads(runs), *consumes(runs))
    grants.sub(f"{subjects.HISTORY_PREFIX}.>")
    return grants


RESPONDERS = {"registry", "runner", "history"}
"""Services that answer requests: they may publish to the reply subject of a request."""


def service_users() -> list[User]:
    """One user per service, its password read from the server's environment."""
    grants = {
        "ingress": ingress(),
        "registry": registry(),
        "scheduler": scheduler(),
        "runner": runner(),
        "history": history(),
    }
    return [
        User(
            name=service,
            password=f"${password_variable(service)}",
            publish=tuple(grants[service].publish),
            subscribe=tuple(grants[service].subscribe),
            allow_responses=service in RESPONDERS,
        )
        for service in SERVICES
    ]


def outside_publisher(name: str, password: str, workspace_id: str) -> User:
    """A user for a service outside the trigger plane that starts the flows of one workspace:
    it may publish that workspace's `flow.v1.start.<workspace>` and nothing else, read the
    JetStream acknowledgements on its own inbox (connect with `inbox_prefix="_INBOX_<name>"`)
    and follow its runs' events."""
    return User(
        name=name,
        password=password,
        publish=(subjects.flow_start(workspace_id),),
        subscribe=(inbox(name), f"{subjects.RUN_EVENT_PREFIX}.{workspace_id}.>"),
        comment=f"starts the flows of workspace {workspace_id} only",
    )


def _quoted(values: tuple[str, ...], indent: str) -> str:
    return "\n".join(f'{indent}"{value}"' for value in values)


def render_user(user: User, indent: str = "    ") -> str:
    """One entry of `authorization.users` in the NATS configuration format."""
    inner = indent + "  "
    lines = [f"{indent}# {user.comment}"] if user.comment else []
    lines += [
        f"{indent}{{",
        f"{inner}user: {user.name}",
        f"{inner}password: {user.password}",
        f"{inner}permissions: {{",
        f"{inner}  publish: {{ allow: [",
        _quoted(user.publish, inner + "    "),
        f"{inner}  ] }}",
        f"{inner}  subscribe: {{ allow: [",
        _quoted(user.subscribe, inner + "    "),
        f"{inner}  ] }}",
    ]
    if user.allow_responses:
        lines.append(f"{inner}  allow_responses: true")
    lines += [f"{inner}}}", f"{indent}}}"]
    return "\n".join(lines)


HEADER = """\
# NATS users of the trigger plane: one per service, each allowed only the subjects it uses.
# Generated from contracts/subjects.py; do not edit: regenerate it with
# `python -m shared.nats_permissions > deploy/nats/users.conf`
# (tests/unit/test_nats_permissions.py fails when this file is stale).
# Passwords come from the server's environment: NATS_<SERVICE>_PASSWORD for each service.
# No user may subscribe to `_INBOX.>`: each service reads its replies on `_INBOX_<service>.>`.
"""


def render(extra: list[User] | None = None) -> str:
    """The `authorization` block with every service's user (and `extra` users after them)."""
    users = [*service_users(), *(extra or [])]
    body = "\n".join(render_user(user) for user in users)
    return f"{HEADER}authorization {{\n  users: [\n{body}\n  ]\n}}\n"


if __name__ == "__main__":
    sys.stdout.write(render())
