"""Thin adapters: decode a history query, ask the store, send back a `Reply`."""

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from contracts import subjects
from contracts.history import ListRuns, RunPage, RunStats, RunStatsQuery
from contracts.registry import Problem, Reply
from services.history import core
from services.history.adapters import RunStore
from shared.codec import decoder, encode

log = logging.getLogger(__name__)


class Queries:
    """The answers of one replica: its store, and how far behind the bucket it is."""

    def __init__(
        self,
        store: RunStore,
        lag_seconds: Callable[[], float],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._lag = lag_seconds
        self._clock = clock

    def list_runs(self, query: ListRuns) -> RunPage:
        lag = self._lag()  # before reading: the page is at least this fresh
        items, next_cursor = self._store.list_runs(query)
        return RunPage(items=items, next_cursor=next_cursor, history_lag_seconds=lag)

    def stats(self, query: RunStatsQuery) -> RunStats:
        lag = self._lag()
        since, until = core.stats_window(query.since, query.until, self._clock())
        rows = self._store.stats_rows(
            query.workspace_id, query.flow_id, query.trigger_id, since, until
        )
        return core.summarize(
            rows, since, until, flow_id=query.flow_id, trigger_id=query.trigger_id, lag=lag
        )


def routes(queries: Queries) -> dict[str, tuple[type[msgspec.Struct], Callable[[Any], Any]]]:
    """Which subject takes which query, answered by which operation."""
    return {
        subjects.HISTORY_RUNS_LIST: (ListRuns, queries.list_runs),
        subjects.HISTORY_RUNS_STATS: (RunStatsQuery, queries.stats),
    }


def answer(
    table: dict[str, tuple[type[msgspec.Struct], Callable[[Any], Any]]], subject: str, data: bytes
) -> bytes:
    """The encoded `Reply` to one query; every outcome, a bug included, is a `Reply`."""
    reply: Reply[Any]
    route = table.get(subject)
    if route is None:
        reply = Reply(error=Problem(status=404, code="unknown_operation", message=subject))
    else:
        request_type, handle = route
        try:
            request = decoder(request_type).decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            reply = Reply(error=Problem(status=400, code="invalid_request", message=str(error)))
        else:
            try:
                reply = Reply(ok=handle(request))
            except Exception:
                log.exception("history failed on %s", subject)
                reply = Reply(
                    error=Problem(
                        status=500,
                        code="history_error",
                        message=f"the history failed to answer {subject}; see its log",
                    )
                )
    return encode(reply)
