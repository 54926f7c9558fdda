"""Registry state and its request/reply API.

Published by: the registry alone writes these records (JetStream KV buckets named in
`contracts.subjects`). Consumed by: the ingress (HTTP API and API-trigger hot path), the
scheduler (schedule triggers) and the runner (flows). Requests are NATS request/reply on
`registry.v1.*` subjects, answered by any registry replica in the `registry` queue group; every
reply is a `Reply` holding either the result or a `Problem`.
"""

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from msgspec import UNSET, Meta, Struct, UnsetType

from contracts.audit import UNKNOWN_ACTOR, Actor

T = TypeVar("T")

MAX_NAME_LENGTH = 200
Name = Annotated[str, Meta(max_length=MAX_NAME_LENGTH)]
"""A name given in a request body (at most 200 characters)."""
KeyScope = Literal["admin", "trigger"]
"""`admin` keys manage the workspace and may also trigger; `trigger` keys only call triggers."""
TriggerType = Literal["api", "schedule", "manual", "webhook"]
ResponseMode = Literal["accepted", "result"]
"""How a start through an API or webhook trigger is answered: `accepted` answers `202` as soon
as the start is stored (what a webhook sender with a 10 s timeout needs); `result` waits up to
`sync_wait_seconds` for the run and answers with its result (`202` if it has not ended)."""
WebhookScheme = Literal["standard_webhooks", "github", "stripe", "hmac"]
"""How a webhook trigger verifies a delivery: Standard Webhooks (`webhook-id`,
`webhook-timestamp`, `webhook-signature`), GitHub (`X-Hub-Signature-256`), Stripe
(`Stripe-Signature`), or a generic HMAC-SHA256 of the body in a header the trigger names."""
OverlapPolicy = Literal["allow", "skip", "buffer_one", "cancel_previous"]
"""What a start does while an earlier run of the same trigger is still going: run anyway
(`allow`), be skipped (`skip`), wait as the one queued successor (`buffer_one`; a further
start is skipped), or cancel the running one first (`cancel_previous`)."""


QuotaName = Literal["triggers", "flows", "api_keys", "schedule_fires_per_hour"]
"""What a workspace holds a limited amount of: records of each kind, and the fires an hour of
its enabled schedules (each counted at its busiest hour)."""


class QuotaExceeded(Struct, frozen=True, kw_only=True):
    """Which workspace limit refused a request, and by how much (the `quota` member of a
    `422 quota_exceeded` problem)."""

    quota: QuotaName
    limit: int
    """The workspace's limit (the operator's setting, or this workspace's override)."""
    used: int
    """How much the workspace holds now."""
    requested: int
    """How much more the refused request needed."""
    setting: str
    """The operator's setting that raises it for every workspace (`REGISTRY_QUOTA_OVERRIDES`
    raises it for one)."""


class Problem(Struct, frozen=True, kw_only=True):
    """An error as a value: an HTTP-like status, a stable machine code and a human message."""

    status: int
    code: str
    message: str
    quota: QuotaExceeded | None = None
    """Set for `quota_exceeded`: the limit that refused the request."""


class Reply(Struct, Generic[T], frozen=True, kw_only=True):
    """Every registry reply: exactly one of `ok` and `error` is set."""

    ok: T | None = None
    error: Problem | None = None


# --- Records -------------------------------------------------------------------------------


class Workspace(Struct, frozen=True, kw_only=True):
    """A tenant: it owns keys, flows, triggers and runs."""

    id: str
    name: str
    created_at: datetime


class AdminKeys(Struct, frozen=True, kw_only=True):
    """The ids of a workspace's admin keys, as the registry's own record (never sent out).

    Stored next to the workspace record and changed only by compare-and-swap, so two revokes
    at the same moment cannot both see "another admin key remains": an id leaves this record
    before its key is deleted, and joins it after its key is created, so every id here is a
    live admin key and the record is never emptied.
    """

    workspace_id: str
    key_ids: tuple[str, ...]


class Held(Struct, frozen=True, array_like=True):
    """What one record holds of a quota: 1 for a counted record, a schedule's fires an hour;
    `version` is the trigger version the amount was computed from (0 for a counted record)."""

    amount: int
    version: int = 0


class QuotaUse(Struct, frozen=True, kw_only=True):
    """A workspace's use of one quota, as the registry's own record (never sent out).

    Stored next to the workspace record and changed only by compare-and-swap: a record takes
    its share here before it is written, so two creates at the same moment cannot both take
    the last one. Holdings are by record id, so taking or giving one back twice (a retried
    step) counts once.
    """

    workspace_id: str
    quota: QuotaName
    held: dict[str, Held] = {}


class ApiKey(Struct, frozen=True, kw_only=True):
    """A workspace API key as stored: only the SHA-256 digest of the secret, never the secret."""

    id: str
    workspace_id: str
    name: str
    scope: KeyScope
    prefix: str
    """The first characters of the secret, enough to recognise it in a list."""
    digest: str
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    """The key stops working at this time (None: never)."""
    flow_ids: tuple[str, ...] | None = None
    """A trigger key limited to these flows (None: every flow of the workspace)."""
    previous_digest: str | None = None
    """The digest of the secret a rotation replaced: it keeps working until
    `previous_expires_at`."""
    previous_expires_at: datetime | None = None


class ApiKeyView(Struct, frozen=True, kw_only=True):
    """A key as listed over the API: no secret, no digest."""

    id: str
    name: str
    scope: KeyScope
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    flow_ids: tuple[str, ...] | None = None
    previous_expires_at: datetime | None = None
    """When the secret replaced by the last rotation stops working (None: no such secret)."""


class IssuedKey(Struct, frozen=True, kw_only=True):
    """A freshly created key: the only time its secret is ever shown."""

    key: ApiKeyView
    secret: str


class PythonFlowSettings(Struct, frozen=True, kw_only=True, tag_field="kind", tag="python"):
    """A flow that runs a Python function registered in the runner under `function`."""

    function: str


HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class HttpFlowSettings(Struct, frozen=True, kw_only=True, tag_field="kind", tag="http"):
    """A flow that is one HTTP request; the run's result is the response.

    `body` is a template: `null` sends the run's input as the JSON body; otherwise any JSON
    value, in which a string that is exactly `"{{input}}"` becomes the input and `{{run_id}}`,
    `{{flow_id}}`, `{{trigger_id}}`, `{{workspace_id}}` and `{{attempt}}` are replaced inside
    strings. Loopback, private and link-local destinations are refused (every resolved address
    of every redirect hop is checked) unless the runner's operator allows them.
    """

    url: str
    method: HttpMethod = "POST"
    headers: dict[str, str] = {}
    body: Any = None
    timeout_seconds: Annotated[float, Meta(gt=0, le=300)] = 30.0
    """Timeout of each request (connect, read, write); the flow's own timeout still applies."""


FlowSettings = PythonFlowSettings | HttpFlowSettings
"""Tagged by `kind`."""


class PythonFlowSettingsBody(
    PythonFlowSettings, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    """`PythonFlowSettings` as a request body: unknown fields are refused (the stored record
    ignores them, so records written by a newer version still decode)."""


class HttpFlowSettingsBody(HttpFlowSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`HttpFlowSettings` as a request body: unknown fields are refused."""


FlowSettingsBody = PythonFlowSettingsBody | HttpFlowSettingsBody
"""`FlowSettings` as they appear in request bodies (strict), tagged by `kind`."""

FlowTimeout = Annotated[float, Meta(gt=0, le=86_400)]
FlowRetries = Annotated[int, Meta(ge=0, le=20)]
FlowBackoff = Annotated[float, Meta(ge=0, le=3_600)]
FlowConcurrency = Annotated[int, Meta(ge=1, le=10_000)]


class Flow(Struct, frozen=True, kw_only=True):
    """User work the runner can run, owned by one workspace."""

    id: str
    workspace_id: str
    name: str
    settings: FlowSettings
    created_at: datetime
    timeout_seconds: FlowTimeout = 300.0
    """Longest an attempt may take; a longer one is stopped and recorded `timed_out`."""
    retries: FlowRetries = 0
    """How many times a failed or timed-out attempt is tried again."""
    retry_backoff_seconds: FlowBackoff = 1.0
    """Delay before the first retry; doubled for every further one (with jitter, capped)."""
    concurrency: FlowConcurrency | None = None
    """Most runs of this flow running at once across every runner replica (None: no limit)."""


DstGapPolicy = Literal["shift", "skip"]
"""A wall time that does not exist (spring forward): fire at the first instant after the gap
(`shift`, the default) or not at all (`skip`, recorded in the ledger as `dst_gap`)."""
DstRepeatPolicy = Literal["once", "twice"]
"""A wall time that happens twice (fall back): fire at its first occurrence only (`once`, the
default) or at both (`twice`). Cron schedules whose hour field is `*` follow elapsed time and
fire at both whatever this says (an hourly job keeps running every hour)."""
MisfirePolicy = Literal["skip", "run_once", "run_all"]
"""Fires missed while every scheduler was down or the trigger paused: record them and start
none (`skip`), start only the most recent one (`run_once`, the default), or start each one
(`run_all`); only fires within `catch_up_window` are ever started."""
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
IntervalUnit = Literal["seconds", "minutes", "hours"]


class ScheduleOptions(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What every schedule kind has besides its recurrence (all optional)."""

    timezone: str = "UTC"
    """IANA time zone whose wall clock the recurrence follows."""
    start: datetime | None = None
    """No fire before this time (a time without an offset is read in `timezone`); an interval
    counts from here."""
    end: datetime | None = None
    """No fire after this time (a time without an offset is read in `timezone`)."""
    jitter: int = 0
    """Delay every fire by the same 0..`jitter` seconds, fixed per trigger (at most 3600)."""
    dst_gap: DstGapPolicy = "shift"
    dst_repeat: DstRepeatPolicy = "once"
    misfire: MisfirePolicy = "run_once"
    catch_up_window: int = 86_400
    """Seconds: a missed fire older than this is recorded as missed and never started."""


class CronSchedule(ScheduleOptions, frozen=True, kw_only=True, tag_field="kind", tag="cron"):
    """Fire at every match of a cron expression in an IANA time zone.

    Five fields (minute hour day-of-month month day-of-week; names, lists, ranges, steps, `L`
    for the last day of the month and `weekday#n` for the n-th weekday), or six with a leading
    seconds field for sub-minute schedules.
    """

    cron: str


class HourlySchedule(ScheduleOptions, frozen=True, kw_only=True, tag_field="kind", tag="hourly"):
    """Fire every hour at `minute` past the hour."""

    minute: int = 0


class DailySchedule(ScheduleOptions, frozen=True, kw_only=True, tag_field="kind", tag="daily"):
    """Fire every day at `at` (`"HH:MM"` or `"HH:MM:SS"`, wall clock of `timezone`)."""

    at: str


class WeeklySchedule(ScheduleOptions, frozen=True, kw_only=True, tag_field="kind", tag="weekly"):
    """Fire on each of `days` at `at` (`"HH:MM"` or `"HH:MM:SS"`, wall clock of `timezone`)."""

    days: tuple[Weekday, ...]
    at: str


class IntervalSchedule(
    ScheduleOptions, frozen=True, kw_only=True, tag_field="kind", tag="interval"
):
    """Fire every `every` `unit`s of elapsed time (DST does not apply), counted from `start`,
    or from 1970-01-01 UTC without one (so every 5 minutes fires at :00, :05, ...)."""

    every: int
    unit: IntervalUnit = "seconds"


class OnceSchedule(ScheduleOptions, frozen=True, kw_only=True, tag_field="kind", tag="once"):
    """Fire once, at `at` (a time without an offset is read in `timezone`)."""

    at: datetime


Schedule = (
    CronSchedule | HourlySchedule | DailySchedule | WeeklySchedule | IntervalSchedule | OnceSchedule
)
"""Tagged by `kind`: `cron`, `hourly`, `daily`, `weekly`, `interval` or `once`."""
ScheduleKind = Literal["cron", "hourly", "daily", "weekly", "interval", "once"]


# Schedules as request bodies: the same shapes, refusing unknown fields. Stored records use the
# lenient classes above, so a record written by a newer version still decodes.


class CronScheduleBody(CronSchedule, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A `CronSchedule` in a request body."""


class HourlyScheduleBody(HourlySchedule, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An `HourlySchedule` in a request body."""


class DailyScheduleBody(DailySchedule, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A `DailySchedule` in a request body."""


class WeeklyScheduleBody(WeeklySchedule, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A `WeeklySchedule` in a request body."""


class IntervalScheduleBody(IntervalSchedule, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An `IntervalSchedule` in a request body."""


class OnceScheduleBody(OnceSchedule, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A `OnceSchedule` in a request body."""


ScheduleBody = (
    CronScheduleBody
    | HourlyScheduleBody
    | DailyScheduleBody
    | WeeklyScheduleBody
    | IntervalScheduleBody
    | OnceScheduleBody
)
"""`Schedule` as it appears in request bodies, tagged by `kind`."""


class SchedulePatch(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A change to a stored schedule (`PATCH /v1/triggers/{id}`), merged as RFC 7396 says.

    The fields given replace the stored ones, the others are kept; `null` removes a field (it
    goes back to its default). Giving another `kind` drops the old kind's own fields (`cron`,
    `minute`, `at`, `days`, `every`, `unit`) but keeps the options common to every kind. The
    merged result is then checked as a whole, as a new schedule would be.
    """

    kind: ScheduleKind | UnsetType = UNSET
    cron: str | None | UnsetType = UNSET
    minute: int | None | UnsetType = UNSET
    at: str | None | UnsetType = UNSET
    """`"HH:MM"` for `daily` and `weekly`, an ISO 8601 time for `once`."""
    days: tuple[Weekday, ...] | None | UnsetType = UNSET
    every: int | None | UnsetType = UNSET
    unit: IntervalUnit | None | UnsetType = UNSET
    timezone: str | None | UnsetType = UNSET
    start: datetime | None | UnsetType = UNSET
    end: datetime | None | UnsetType = UNSET
    jitter: int | None | UnsetType = UNSET
    dst_gap: DstGapPolicy | None | UnsetType = UNSET
    dst_repeat: DstRepeatPolicy | None | UnsetType = UNSET
    misfire: MisfirePolicy | None | UnsetType = UNSET
    catch_up_window: int | None | UnsetType = UNSET


MAX_SYNC_WAIT_SECONDS = 60.0
DEFAULT_SYNC_WAIT_SECONDS = 10.0
"""The wait of an API trigger that sets none, and of Run now on a trigger of another kind."""
SyncWait = Annotated[float, Meta(ge=0, le=MAX_SYNC_WAIT_SECONDS)]


class TriggerBase(Struct, frozen=True, kw_only=True, tag_field="type"):
    """What every kind of trigger has; a trigger is one of the kinds in `Trigger`, tagged by
    `type`. Records ignore unknown fields, so records of an older shape (an API trigger with
    `"schedule": null`) and of a newer one still decode."""

    id: str
    workspace_id: str
    flow_id: str
    name: str = ""
    enabled: bool = True
    overlap: OverlapPolicy = "allow"
    version: int = 1
    """Bumped on every change, so work computed from an older version can be recognised."""
    created_at: datetime
    updated_at: datetime
    paused_at: datetime | None = None
    """When the trigger was last paused (or created paused); kept when it is resumed."""
    resumed_at: datetime | None = None
    """When it was resumed from that pause; None while paused or never paused. A scheduler
    that was down when it happened decides the fires of the pause from these two."""

    @property
    def type(self) -> TriggerType:
        """The kind's tag, for messages (decide with `isinstance` or `match`, not with this)."""
        tag: TriggerType = self.__struct_config__.tag  # type: ignore[assignment]
        return tag


class ApiTrigger(TriggerBase, frozen=True, kw_only=True, tag="api"):
    """Started by `POST /trigger/{flow_id}` with a key of the workspace."""

    sync_wait_seconds: SyncWait = DEFAULT_SYNC_WAIT_SECONDS
    """How long `POST /trigger/{flow_id}` waits for the run to finish before it answers `202`
    (0 answers at once); a caller may ask for another wait up to 60 s."""
    response_mode: ResponseMode = "result"
    """`result` (the default) waits `sync_wait_seconds`; `accepted` answers `202` as soon as
    the start is stored unless the caller asks for a wait (`Prefer: wait=N`)."""


class ScheduleTrigger(TriggerBase, frozen=True, kw_only=True, tag="schedule"):
    """Started by the scheduler at every occurrence of `schedule`."""

    schedule: Schedule


class ManualTrigger(TriggerBase, frozen=True, kw_only=True, tag="manual"):
    """Started only by an operator's Run now (`POST /v1/triggers/{id}/run`)."""


HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$"
HeaderName = Annotated[str, Meta(pattern=HEADER_NAME_PATTERN)]
"""An HTTP header name (any case; matched without case)."""
MAX_EVENT_NAME_LENGTH = 200
MAX_WEBHOOK_EVENTS = 100
MAX_INCLUDED_HEADERS = 20
WebhookTolerance = Annotated[int, Meta(ge=30, le=3_600)]
DEFAULT_WEBHOOK_TOLERANCE = 300
MAX_WEBHOOK_SECRETS = 2
MAX_SECRET_GRACE_SECONDS = 7 * 86_400
DEFAULT_SECRET_GRACE_SECONDS = 86_400


class HmacSettings(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the generic `hmac` scheme finds a delivery's signature and metadata: the header
    holds the HMAC-SHA256 of the raw body, in hex or base64, after an optional prefix (such as
    `sha256=`). Shopify, for one: `X-Shopify-Hmac-Sha256`, base64, delivery id in
    `X-Shopify-Webhook-Id`, event in `X-Shopify-Topic`."""

    signature_header: HeaderName
    encoding: Literal["hex", "base64"] = "hex"
    prefix: Annotated[str, Meta(max_length=50)] = ""
    delivery_id_header: HeaderName | None = None
    """The header naming the delivery (replay protection needs it: without one, a captured
    delivery can be sent again, as the scheme has no timestamp)."""
    event_header: HeaderName | None = None


class WebhookSecret(Struct, frozen=True, kw_only=True):
    """One signing secret of a webhook trigger, as the trigger holds it: the secret itself only
    sealed (AES-GCM with the operator's `WEBHOOK_SECRET_KEY`), and never over the API."""

    id: str
    fingerprint: str
    """The first 12 hex digits of the secret's SHA-256: tells which secret a sender holds."""
    created_at: datetime
    expires_at: datetime | None = None
    """The old secret of a rotation stops verifying at this time (None: while it is current)."""
    sealed: str = ""
    """The sealed secret; empty in every answer of the API."""


class WebhookTrigger(TriggerBase, frozen=True, kw_only=True, tag="webhook"):
    """Started by a signed delivery to `POST /hooks/{id}` (no API key: the signature is the
    authentication). A delivery whose id was seen before starts nothing."""

    scheme: WebhookScheme
    secrets: tuple[WebhookSecret, ...] = ()
    """The newest secret first; during a rotation also the previous one, until it expires."""
    events: tuple[str, ...] = ()
    """Accepted events (empty: every event); another event is answered `200` and starts
    nothing, and so is a GitHub `ping` unless listed."""
    include_headers: tuple[str, ...] = ()
    """Headers copied into the flow input's `delivery.headers` (lower-case names)."""
    hmac: HmacSettings | None = None
    """For the `hmac` scheme: where its signature and metadata are."""
    tolerance_seconds: int = DEFAULT_WEBHOOK_TOLERANCE
    """Largest difference between a signed timestamp and now (schemes with a timestamp)."""
    response_mode: ResponseMode = "accepted"
    sync_wait_seconds: SyncWait = DEFAULT_SYNC_WAIT_SECONDS
    """How long a `result` response waits for the run."""
    new_secret: str | None = None
    """The secret just generated or supplied: set only in the answer of the create or the
    rotation that issued it, never stored in clear and never shown again."""


Trigger = ApiTrigger | ScheduleTrigger | ManualTrigger | WebhookTrigger
"""A reason for a flow to start, tagged by `type`. A new kind is a new `TriggerBase`
subclass with its own tag and settings, added here and to `NewTrigger`."""


# --- Bodies shared by the HTTP API and the registry requests --------------------------------


class NewWorkspace(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /v1/workspaces`."""

    name: Name


class NewKey(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /v1/keys`: `expires_at` (optional) ends the key; `flow_ids` (trigger keys
    only) limits the flows it may start."""

    name: Name
    scope: KeyScope = "trigger"
    expires_at: datetime | None = None
    flow_ids: Annotated[list[str], Meta(max_length=100)] | None = None


MAX_KEY_GRACE_SECONDS = 7 * 86_400


class KeyRotation(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /v1/keys/{id}/rotate`: a new secret for the same key; the old one keeps
    working for `grace_seconds` (0 ends it now; at most 7 days)."""

    grace_seconds: Annotated[int, Meta(ge=0, le=MAX_KEY_GRACE_SECONDS)] = 86_400


class KeyChanges(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of `PATCH /v1/keys/{id}`: the fields given change (`null` removes the limit)."""

    expires_at: datetime | None | UnsetType = UNSET
    flow_ids: Annotated[list[str], Meta(max_length=100)] | None | UnsetType = UNSET


class NewFlow(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /v1/flows` (see `Flow` for the fields)."""

    name: Name
    settings: FlowSettingsBody
    timeout_seconds: FlowTimeout = 300.0
    retries: FlowRetries = 0
    retry_backoff_seconds: FlowBackoff = 1.0
    concurrency: FlowConcurrency | None = None


class NewTriggerBase(
    Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=True
):
    """What the body of `POST /v1/triggers` has for every kind (tagged by `type`)."""

    flow_id: str
    name: Name = ""
    enabled: bool = True
    overlap: OverlapPolicy = "allow"


class NewApiTrigger(NewTriggerBase, frozen=True, kw_only=True, tag="api"):
    """`{"flow_id": ..., "type": "api"}`, optionally with `sync_wait_seconds`."""

    sync_wait_seconds: SyncWait = DEFAULT_SYNC_WAIT_SECONDS
    response_mode: ResponseMode = "result"


class NewScheduleTrigger(NewTriggerBase, frozen=True, kw_only=True, tag="schedule"):
    """`{"flow_id": ..., "type": "schedule", "schedule": {...}}`."""

    schedule: ScheduleBody


class NewManualTrigger(NewTriggerBase, frozen=True, kw_only=True, tag="manual"):
    """`{"flow_id": ..., "type": "manual"}`: a trigger only Run now starts."""


SuppliedSecret = Annotated[str, Meta(min_length=16, max_length=512)]


class NewWebhookTrigger(NewTriggerBase, frozen=True, kw_only=True, tag="webhook"):
    """`{"flow_id": ..., "type": "webhook", "scheme": "github"}`: a trigger started by signed
    deliveries to `POST /hooks/{id}`. Without `secret` one is generated; either way the answer
    shows it once, in `new_secret`."""

    scheme: WebhookScheme
    secret: SuppliedSecret | None = None
    # Lists of plain strings here (checked by the registry, `422 invalid_webhook_setting`):
    # the OpenAPI document cannot state constraints on the items of a list.
    events: Annotated[list[str], Meta(max_length=MAX_WEBHOOK_EVENTS)] = []
    include_headers: Annotated[list[str], Meta(max_length=MAX_INCLUDED_HEADERS)] = []
    hmac: HmacSettings | None = None
    tolerance_seconds: WebhookTolerance = DEFAULT_WEBHOOK_TOLERANCE
    response_mode: ResponseMode = "accepted"
    sync_wait_seconds: SyncWait = DEFAULT_SYNC_WAIT_SECONDS


NewTrigger = NewApiTrigger | NewScheduleTrigger | NewManualTrigger | NewWebhookTrigger
"""Body of `POST /v1/triggers`, tagged by `type` (the same flat JSON as a `Trigger`)."""


class TriggerChanges(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of `PATCH /v1/triggers/{id}`: only the fields given change (pause and resume have
    their own endpoints).

    `schedule` is merged into the stored one (see `SchedulePatch`). `type` changes the kind:
    to `schedule` it needs a complete `schedule` (one with `kind`) unless the trigger already
    has one; to `api` or `manual` it drops the schedule; `sync_wait_seconds` is only for
    triggers that are (or become) `api` ones, and a trigger that becomes one gets the default
    unless the change gives it.
    """

    flow_id: str | UnsetType = UNSET
    type: TriggerType | UnsetType = UNSET
    name: Name | UnsetType = UNSET
    schedule: SchedulePatch | None | UnsetType = UNSET
    overlap: OverlapPolicy | UnsetType = UNSET
    sync_wait_seconds: SyncWait | UnsetType = UNSET
    response_mode: ResponseMode | UnsetType = UNSET
    """For API and webhook triggers."""
    events: Annotated[list[str], Meta(max_length=MAX_WEBHOOK_EVENTS)] | UnsetType = UNSET
    """For webhook triggers (as are `include_headers` and `tolerance_seconds`); a trigger
    cannot become or stop being a webhook one (its secrets would have no meaning)."""
    include_headers: Annotated[list[str], Meta(max_length=MAX_INCLUDED_HEADERS)] | UnsetType = UNSET
    tolerance_seconds: WebhookTolerance | UnsetType = UNSET


class NewWebhookSecret(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /v1/triggers/{id}/secrets`: rotate a webhook trigger's secret. The new
    secret (supplied, or generated without `secret`) verifies at once; the current one keeps
    verifying for `previous_valid_seconds` (0 ends it now), and any older one ends now."""

    secret: SuppliedSecret | None = None
    previous_valid_seconds: Annotated[int, Meta(ge=0, le=MAX_SECRET_GRACE_SECONDS)] = (
        DEFAULT_SECRET_GRACE_SECONDS
    )


# --- Pages of lists (keyset pagination by id: ids sort by creation time) --------------------

DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 500
ListLimit = Annotated[int, Meta(ge=1, le=MAX_LIST_LIMIT)]
CURSOR_PATTERN = r"^[0-9]{1,20}\.[a-z]{2,4}_[0-9a-z]{21}$"
"""A page's `next_cursor`: the creation time (microseconds) and the id of its last record."""


class KeyPage(Struct, frozen=True, kw_only=True):
    """`GET /v1/keys`: keys oldest first; pass `next_cursor` as `cursor` for the next page
    (None: this is the last page)."""

    items: list[ApiKeyView]
    next_cursor: str | None = None


class FlowPage(Struct, frozen=True, kw_only=True):
    """`GET /v1/flows`: flows oldest first; pass `next_cursor` as `cursor` for the next page."""

    items: list[Flow]
    next_cursor: str | None = None


class TriggerPage(Struct, frozen=True, kw_only=True):
    """`GET /v1/triggers`: triggers oldest first; pass `next_cursor` as `cursor` for the next
    page."""

    items: list[Trigger]
    next_cursor: str | None = None


# --- Registry requests ---------------------------------------------------------------------


class CreateWorkspace(Struct, frozen=True, kw_only=True):
    """Create a workspace and its first admin key. Reply: `WorkspaceCreated`."""

    workspace: NewWorkspace
    actor: Actor = UNKNOWN_ACTOR
    """Who asked: the calling key's id, or `operator` (recorded in the audit log)."""


class WorkspaceCreated(Struct, frozen=True, kw_only=True):
    """A new workspace and its first admin key (the secret is shown only here)."""

    workspace: Workspace
    admin_key: IssuedKey


class CreateKey(Struct, frozen=True, kw_only=True):
    """Reply: `IssuedKey`."""

    workspace_id: str
    key: NewKey
    actor: Actor = UNKNOWN_ACTOR
    """Who asked: the calling key's id, or `operator` (recorded in the audit log)."""


class ListKeys(Struct, frozen=True, kw_only=True):
    """Reply: `KeyPage`, oldest first."""

    workspace_id: str
    limit: ListLimit = DEFAULT_LIST_LIMIT
    cursor: str | None = None
    """The `next_cursor` of the page before (the last id it held); None for the first page."""


class RevokeKey(Struct, frozen=True, kw_only=True):
    """Reply: the revoked `ApiKeyView`."""

    workspace_id: str
    key_id: str
    actor: Actor = UNKNOWN_ACTOR
    """Who asked: the calling key's id, or `operator` (recorded in the audit log)."""


class RotateKey(Struct, frozen=True, kw_only=True):
    """Reply: `IssuedKey` with the new secret (shown only here)."""

    workspace_id: str
    key_id: str
    rotation: KeyRotation
    actor: Actor = UNKNOWN_ACTOR
    """Who asked: the calling key's id, or `operator` (recorded in the audit log)."""


class UpdateKey(Struct, frozen=True, kw_only=True):
    """Reply: the updated `ApiKeyView`."""

    workspace_id: str
    key_id: str
    changes: KeyChanges
    actor: Actor = UNKNOWN_ACTOR
    """Who asked: the calling key's id, or `operator` (recorded in the audit log)."""


class KeyUsed(Struct, frozen=True, kw_only=True):
    """Published (no reply) by the ingress when a key authenticates, at most once a minute."""

    workspace_id: str
    key_id: str
    used_at: datetime


class CreateFlow(Struct, frozen=True, kw_only=True):
    """Reply: `Flow`."""

    workspace_id: str
    flow: NewFlow
    actor: Actor = UNKNOWN_ACTOR
    """Who asked: the calling key's id, or `operator` (recorded in the audit log)."""


class ListFlows(Struct, frozen=True, kw_only=True):
    """Reply: `FlowPage`, oldest first."""

    workspace_id: str
    limit: ListLimit = DEFAULT_LIST_LIMIT
    cursor: str | None = None


class GetFlow(Struct, frozen=True, kw_only=True):
    """Reply: `Flow`."""

    workspace_id: str
    flow_id: str


class RunnerAnnouncement(Struct, frozen=True, kw_only=True):
    """The flow functions a runner serves.

    Subject: `registry.v1.runner.announce` (core NATS, no reply). Published by: every runner
    replica at start and every `interval_seconds`. Consumed by: the registry, which keeps the
    catalogue of announced functions (bucket `flow_functions`, entries expire when no runner
    announces them any more). Delivery: at most once, repeated.
    """

    runner_id: str
    functions: list[str]
    announced_at: datetime
    interval_seconds: float = 30.0


class AnnouncedFunction(Struct, frozen=True, kw_only=True):
    """A flow function some runner served recently (`GET /v1/flow-functions`)."""

    name: str
    runner_id: str
    """The runner that announced it last."""
    announced_at: datetime


class ListFunctions(Struct, frozen=True, kw_only=True):
    """Reply: `list[AnnouncedFunction]`, by name."""


class CreateTrigger(Struct, frozen=True, kw_only=True):
    """Reply: `Trigger`."""

    workspace_id: str
    trigger: NewTrigger
    actor: Actor = UNKNOWN_ACTOR
    """Who asked: the calling key's id, or `operator` (recorded in the audit log)."""


class ListTriggers(Struct, frozen=True, kw_only=True):
    """Reply: `TriggerPage`, oldest first, optionally only those of one flow."""

    workspace_id: str
    flow_id: str | None = None
    limit: ListLimit = DEFAULT_LIST_LIMIT
    cursor: str | None = None


class GetTrigger(Struct, frozen=True, kw_only=True):
    """Reply: `Trigger`."""

    workspace_id: str
    trigger_id: str


class UpdateTrigger(Struct, frozen=True, kw_only=True):
    """Reply: the updated `Trigger`."""

    workspace_id: str
    trigger_id: str
    changes: TriggerChanges
    actor: Actor = UNKNOWN_ACTOR
    """Who asked: the calling key's id, or `operator` (recorded in the audit log)."""


class SetTriggerEnabled(Struct, frozen=True, kw_only=True):
    """Pause (`enabled=False`) or resume a trigger. Reply: the updated `Trigger`."""

    workspace_id: str
    trigger_id: str
    enabled: bool
    actor: Actor = UNKNOWN_ACTOR
    """Who asked: the calling key's id, or `operator` (recorded in the audit log)."""


class DeleteTrigger(Struct, frozen=True, kw_only=True):
    """Reply: the deleted `Trigger`."""

    workspace_id: str
    trigger_id: str
    actor: Actor = UNKNOWN_ACTOR
    """Who asked: the calling key's id, or `operator` (recorded in the audit log)."""


class RotateWebhookSecret(Struct, frozen=True, kw_only=True):
    """Reply: the `WebhookTrigger` with its new secret in `new_secret` (shown only here)."""

    workspace_id: str
    trigger_id: str
    rotation: NewWebhookSecret
    actor: Actor = UNKNOWN_ACTOR
    """Who asked: the calling key's id, or `operator` (recorded in the audit log)."""
