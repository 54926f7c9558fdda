"""`python -m shared.healthcheck`: exit 0 when this container's service touched its
`HEALTH_FILE` recently (see `shared.service.heartbeat`), 1 otherwise."""

import os
import sys
import time
from pathlib import Path

from shared.service import HEARTBEAT_SECONDS

STALE_AFTER = 3 * HEARTBEAT_SECONDS


def healthy(path: Path, now: float | None = None) -> bool:
    """Whether `path` was touched within `STALE_AFTER` seconds."""
    try:
        touched = path.stat().st_mtime
    except FileNotFoundError:
        return False
    return (time.time() if now is None else now) - touched < STALE_AFTER


def main() -> int:
    health_file = os.environ.get("HEALTH_FILE", "")
    if not health_file:
        print("HEALTH_FILE is not set", file=sys.stderr)
        return 1
    return 0 if healthy(Path(health_file)) else 1


if __name__ == "__main__":
    sys.exit(main())
