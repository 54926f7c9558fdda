"""The history's Prometheus families: how far its projection is behind the `runs` bucket."""

from collections.abc import Callable

from prometheus_client import Gauge

from shared.metrics import PREFIX

PROJECTION_LAG = Gauge(
    f"{PREFIX}_history_projection_lag_seconds",
    "Age of the oldest run change this replica may not have applied yet (0: caught up)",
)
APPLIED_SEQUENCE = Gauge(
    f"{PREFIX}_history_applied_sequence",
    "Sequence of the runs bucket's stream this replica's projection has applied",
)


def watch_projection(lag_seconds: Callable[[], float], applied: Callable[[], int]) -> None:
    """Read the projection's lag and position at each scrape (nothing per change)."""
    PROJECTION_LAG.set_function(lag_seconds)
    APPLIED_SEQUENCE.set_function(lambda: _or_nan(applied))


def _or_nan(read: Callable[[], int]) -> float:
    # A scrape must never fail: after `stop` the store is closed.
    try:
        return float(read())
    except Exception:
        return float("nan")
