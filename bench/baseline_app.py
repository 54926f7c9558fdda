"""The baseline: a bare Litestar handler doing one acknowledged JetStream publish per request.

It is what `POST /trigger/{flow_id}` costs without the trigger plane's own work (key lookup,
directory checks, contracts), served by Granian exactly like the ingress. Run it with
`python -m bench.baseline_app` (env `NATS_URL`, `BASELINE_PORT`, `BASELINE_WORKERS`).
"""

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
from granian import Granian
from granian.constants import Interfaces
from litestar import Litestar, Request, Response, post
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

SUBJECT = "bench.baseline"
STREAM = StreamConfig(
    name="BENCH_BASELINE",
    subjects=[SUBJECT],
    storage=StorageType.FILE,
    retention=RetentionPolicy.LIMITS,
    # Limits retention with a cap, so a long benchmark cannot fill the memory or the disk.
    max_msgs=1_000_000,
)
ACCEPTED = b'{"status":"accepted"}'


@post("/baseline", status_code=202)
async def accept(request: Request[object, object, object]) -> Response[bytes]:
    body = await request.body()
    await request.app.state.js.publish(SUBJECT, body, headers={"Nats-Msg-Id": secrets.token_hex(8)})
    return Response(content=ACCEPTED, status_code=202, media_type="application/json")


def create_app() -> Litestar:
    """Granian factory target: each worker process builds its own app and NATS connection."""
    nats_url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")

    @asynccontextmanager
    async def connected(app: Litestar) -> AsyncIterator[None]:
        nc = await nats.connect(nats_url, name="bench-baseline")
        js = nc.jetstream()
        try:
            await js.add_stream(STREAM)
        except BadRequestError:
            # Another worker created it first with the same name.
            await js.update_stream(STREAM)
        app.state.js = js
        try:
            yield
        finally:
            await nc.drain()

    return Litestar(route_handlers=[accept], lifespan=[connected], debug=False)


def main() -> None:
    Granian(
        "bench.baseline_app:create_app",
        factory=True,
        address="127.0.0.1",
        port=int(os.environ.get("BASELINE_PORT", "8001")),
        interface=Interfaces.ASGI,
        workers=int(os.environ.get("BASELINE_WORKERS", "1")),
        log_access=False,
    ).serve()


if __name__ == "__main__":
    main()
