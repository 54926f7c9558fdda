"""`GET /v1/audit`'s filters become one subject filter the server applies; nothing a caller
sends can widen it to another workspace."""

from datetime import UTC, datetime, timedelta

import pytest

from contracts.audit import AuditEntry
from services.ingress import audit
from services.ingress.audit import AuditQuery
from services.ingress.problems import ApiError

WS = "ws_0000000000000000000000"
KEY = "key_000000000000000000000"
TRIGGER = "trg_000000000000000000000"


def test_every_filter_but_the_time_window_is_a_token_of_the_subject() -> None:
    assert AuditQuery(workspace_id=WS).subject() == f"audit.v1.{WS}.*.*.*.*"
    query = AuditQuery(workspace_id=WS, action="trigger.paused", resource_id=TRIGGER, actor=KEY)
    assert query.subject() == f"audit.v1.{WS}.trigger.paused.{TRIGGER}.{KEY}"
    by_type = AuditQuery(workspace_id=WS, resource_type="key", actor="operator")
    assert by_type.subject() == f"audit.v1.{WS}.key.*.*.operator"


def test_an_action_of_another_kind_of_record_matches_nothing() -> None:
    assert AuditQuery(workspace_id=WS, resource_type="flow", action="key.created").subject() is None


@pytest.mark.parametrize(
    "fields",
    [{"resource_id": "*"}, {"resource_id": ">"}, {"actor": "key_a.>"}, {"cursor": "1.2"}],
)
def test_a_filter_that_could_widen_the_subject_is_refused(fields: dict[str, str]) -> None:
    query = AuditQuery(workspace_id=WS, **fields)  # type: ignore[arg-type]
    with pytest.raises(ApiError) as refused:
        (query.subject(), query.below())
    assert refused.value.status == 400


def test_since_is_inclusive_and_until_exclusive_on_the_entry_s_own_time() -> None:
    at = datetime(2026, 5, 1, 12, tzinfo=UTC)
    entry = AuditEntry(
        id="aud_000000000000000000000",
        at=at,
        workspace_id=WS,
        actor=KEY,
        action="flow.created",
        resource_type="flow",
        resource_id="flw_000000000000000000000",
    )
    assert AuditQuery(workspace_id=WS, since=at).takes(entry)
    assert not AuditQuery(workspace_id=WS, until=at).takes(entry)
    assert AuditQuery(workspace_id=WS, until=at + timedelta(microseconds=1)).takes(entry)
    assert not AuditQuery(workspace_id=WS, since=at + timedelta(microseconds=1)).takes(entry)


def test_a_window_at_the_ends_of_time_keeps_its_clock_margin_without_overflowing() -> None:
    first = datetime(1, 1, 1, 0, 0, 2, tzinfo=UTC)
    last = datetime(9999, 12, 31, 23, 59, 30, tzinfo=UTC)
    assert audit.shifted(first, -audit.CLOCK_MARGIN) == datetime.min.replace(tzinfo=UTC)
    assert audit.shifted(last, audit.CLOCK_MARGIN) == datetime.max.replace(tzinfo=UTC)
    now = datetime(2026, 12, 2, tzinfo=UTC)
    assert audit.shifted(now, -audit.CLOCK_MARGIN) == now - timedelta(minutes=1)
