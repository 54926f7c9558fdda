"""`python -m shared.healthcheck [healthz|readyz]`: exit 0 when this container's service answers
`/readyz` (the default) or `/healthz` with 200 on its `METRICS_PORT` (see `shared.metrics`), 1
otherwise. Python is what the image has: no curl or wget."""

import os
import sys
import urllib.error
import urllib.request

TIMEOUT = 2.0
"""Seconds the service has to answer (less than the healthcheck's own timeout)."""


def probe(port: int, path: str = "readyz", host: str = "127.0.0.1") -> bool:
    """Whether the service on `port` answers `/<path>` with 200."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/{path}", timeout=TIMEOUT) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str]) -> int:
    port = int(os.environ.get("METRICS_PORT", "0") or 0)
    if not port:
        print("METRICS_PORT is not set: the service serves no health", file=sys.stderr)
        return 1
    path = argv[0] if argv else "readyz"
    return 0 if probe(port, path) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
