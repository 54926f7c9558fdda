"""History settings, read from the environment."""

import msgspec


class HistorySettings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server to connect to (`NATS_URL`)."""
    nats_replicas: int = 1
    """Replicas of the streams and buckets this service creates; 3 in production."""
    history_db: str = ".data/history/history.sqlite"
    """This replica's SQLite file (`HISTORY_DB`); every replica needs its own. Deleting it is
    safe: the replica rebuilds it from the `runs` bucket on start."""
    history_retention_days: float = 30.0
    """Runs queued longer ago than this leave the projection (the `runs` bucket keeps 30)."""
    history_batch_size: int = 2000
    """Most run changes applied in one SQLite statement."""
    history_commit_interval: float = 0.1
    """Seconds a transaction takes batches of run changes before it commits
    (`HISTORY_COMMIT_INTERVAL`): one commit for many batches under load; queries see a change at
    most this much later. 0 commits every batch."""
    history_readers: int = 2
    """Threads (each with its own SQLite connection) answering queries side by side."""
