"""`GET /v1/audit`: the workspace's audit log (key, flow and trigger changes, who made them and
what they changed), read newest first from the `AUDIT` stream the registry writes.

Every filter but the time window is a token of the entries' subjects, so the server narrows the
read; `since` and `until` become stream positions (with a margin for clocks), then each entry's
own `at` decides.
"""

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from contracts import registry as api
from contracts import subjects
from contracts.audit import (
    ACTOR_PATTERN,
    AUDIT_CURSOR_PATTERN,
    AuditAction,
    AuditEntry,
    AuditPage,
    ResourceType,
)
from contracts.registry import ApiKey
from services.ingress import docs, handlers
from services.ingress.adapters import Ingress
from services.ingress.docs import problems
from services.ingress.problems import ApiError
from shared.codec import decoder
from shared.ids import is_valid_id
from shared.stream_read import first_position_from, read_newest

CLOCK_MARGIN = timedelta(minutes=1)
"""How far a registry's clock (an entry's `at`) may be from the server's (its stored time)."""


@dataclass(frozen=True)
class AuditQuery:
    """What `GET /v1/audit` asks for, checked."""

    workspace_id: str
    resource_type: ResourceType | None = None
    resource_id: str | None = None
    action: AuditAction | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = api.DEFAULT_LIST_LIMIT
    cursor: str | None = None

    def subject(self) -> str | None:
        """The subject filter of the entries asked for; None when the filters contradict each
        other (an action of another resource type), so no entry can match."""
        if self.resource_id is not None and not is_valid_id(self.resource_id):
            raise ApiError(400, "invalid_request", "`resource_id` is not an id of this API")
        if self.actor is not None and not _ACTOR.fullmatch(self.actor):
            raise ApiError(
                400, "invalid_request", "`actor` is an API key id (`key_...`) or `operator`"
            )
        resource_type: str | None = self.resource_type
        verb = None
        if self.action is not None:
            action_type, _, verb = self.action.partition(".")
            if resource_type is not None and resource_type != action_type:
                return None
            resource_type = action_type
        return subjects.audit_filter(
            self.workspace_id, resource_type, verb, self.resource_id, self.actor
        )

    def below(self) -> int | None:
        """The stream position the page ends before (the cursor's)."""
        if self.cursor is None:
            return None
        if not _CURSOR.fullmatch(self.cursor):
            raise ApiError(
                400,
                "invalid_cursor",
                f"cursor {self.cursor[:40]!r} is not one this API gave: pass the `next_cursor` "
                "of the page before, or no cursor for the first page",
            )
        return int(self.cursor)

    def takes(self, entry: AuditEntry) -> bool:
        """Whether `entry` is within the time window (its own `at`)."""
        if self.since is not None and entry.at < self.since:
            return False
        return not (self.until is not None and entry.at >= self.until)


_ACTOR = re.compile(ACTOR_PATTERN)
_CURSOR = re.compile(AUDIT_CURSOR_PATTERN)
_decode_entry = decoder(AuditEntry).decode


def _entry(message: Msg) -> AuditEntry | None:
    try:
        entry: AuditEntry = _decode_entry(message.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # written by a newer registry with a shape this one cannot read
    return entry


def shifted(moment: datetime, by: timedelta) -> datetime:
    """`moment + by`, held at the first or last moment a datetime has (year 1, year 9999)."""
    try:
        return moment + by
    except OverflowError:
        edge = datetime.min if by < timedelta(0) else datetime.max
        return edge.replace(tzinfo=moment.tzinfo)


async def read_audit(js: JetStreamContext, query: AuditQuery) -> AuditPage:
    """One page of the workspace's entries, newest first."""
    subject = query.subject()
    if subject is None:
        return AuditPage(items=[])
    stream = subjects.AUDIT_STREAM
    below, floor = query.below(), 1
    try:
        high = None if query.until is None else shifted(query.until, CLOCK_MARGIN)
        if high is not None and high.year < datetime.max.year:  # else: no bound at all
            end = await first_position_from(js, stream, subject, high)
            if end is not None:
                below = end if below is None else min(below, end)
        low = None if query.since is None else shifted(query.since, -CLOCK_MARGIN)
        # Not from the first moment there is: the server takes it for no start time at all.
        if low is not None and low > datetime.min.replace(tzinfo=low.tzinfo):
            start = await first_position_from(js, stream, subject, low)
            if start is None:
                return AuditPage(items=[])
            floor = start

        def accept(message: Msg) -> bool:
            entry = _entry(message)
            return entry is not None and query.takes(entry)

        messages = await read_newest(
            js, stream, subject, query.limit + 1, below=below, floor=floor, accept=accept
        )
    except NotFoundError:
        return AuditPage(items=[])  # no audit stream yet: nothing was ever changed
    page = messages[: query.limit]
    items = [entry for entry in map(_entry, page) if entry is not None]
    more = len(messages) > query.limit
    next_cursor = str(page[-1].metadata.sequence.stream) if more else None
    return AuditPage(items=items, next_cursor=next_cursor)


AuditCursor = Annotated[
    str | None,
    QueryParameter(
        description="The `next_cursor` of the page before; none for the first page",
        pattern=AUDIT_CURSOR_PATTERN,
        max_length=20,
    ),
]


class AuditController(handlers.AdminController):
    path = "/v1/audit"
    tags = ["audit"]

    @get(
        summary="The audit log: key, flow and trigger changes, who made them (key id or "
        "operator), before and after (never a secret), newest first",
        responses=problems(*docs.KEY_ANSWERS),
    )
    async def list_audit(
        self,
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
        resource_type: Annotated[
            ResourceType | None, QueryParameter(description="Only changes of this kind of record")
        ] = None,
        resource_id: Annotated[
            str | None,
            QueryParameter(
                description="Only changes of this record (a key, flow or trigger id)",
                pattern=r"^[a-z]{2,4}_[0-9a-z]{21}$",
            ),
        ] = None,
        action: Annotated[
            AuditAction | None, QueryParameter(description="Only this action")
        ] = None,
        actor: Annotated[
            str | None,
            QueryParameter(
                description="Only changes made with this API key id, or by `operator`",
                pattern=ACTOR_PATTERN,
            ),
        ] = None,
        since: handlers.Moment = None,
        until: handlers.Moment = None,
        limit: handlers.Limit = api.DEFAULT_LIST_LIMIT,
        cursor: AuditCursor = None,
    ) -> AuditPage:
        """Entries made at or after `since` and before `until`, newest first; entries are
        kept 90 days."""
        query = AuditQuery(
            workspace_id=admin.workspace_id,
            resource_type=resource_type,
            resource_id=resource_id,
            action=action,
            actor=actor,
            since=handlers._moment("since", since),
            until=handlers._moment("until", until),
            limit=limit,
            cursor=cursor,
        )
        return await read_audit(ingress.js, query)


ROUTES = [AuditController]
