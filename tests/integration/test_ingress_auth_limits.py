"""What keys that are not valid may cost the ingress, in-process against a real NATS server and
a real registry: the JetStream requests the ingress makes are counted on the wire (every
`$JS.API.STREAM.INFO` of the keys bucket's stream is seen by a subscriber of this test)."""

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from litestar.testing import AsyncTestClient
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from contracts import subjects
from contracts.registry import ApiKey
from services.ingress.adapters import Ingress
from services.ingress.app import create_app as create_ingress
from services.ingress.front_door import front_door
from services.ingress.settings import IngressSettings
from services.registry.app import create_app as create_registry
from services.registry.settings import RegistrySettings
from shared import api_keys
from shared.codec import encode
from shared.ids import new_id
from shared.kv import bucket_stream
from shared.metrics import PREFIX

OPERATOR = {"Authorization": "Bearer op-test"}
HttpClient = AsyncTestClient[Any]


routed: list[str] = []
"""The paths of the requests that reached the framework's router, in the running ingress."""


@contextlib.asynccontextmanager
async def running(nats_url: str, **settings: Any) -> AsyncIterator[tuple[HttpClient, Ingress]]:
    """An ingress of this test's own (its limits start full), behind its front door, with a
    registry beside it on the app's loop (see tests/integration/test_ingress_api.py for why)."""
    registry = create_registry(RegistrySettings(nats_url=nats_url))
    app = create_ingress(IngressSettings(nats_url=nats_url, operator_token="op-test", **settings))
    # Behind the front door, as the server runs it: most refusals here are answered there.
    routed.clear()
    router = app.asgi_handler

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        routed.append(scope["path"])
        await router(scope, receive, send)

    app.asgi_handler = counted
    async with AsyncTestClient(app=front_door(app), raise_server_exceptions=False) as client:
        client.blocking_portal.call(registry.start)
        try:
            yield client, app.state.ingress
        finally:
            client.blocking_portal.call(registry.stop)


class KeyLookups:
    """Counts the ingress's questions to the keys bucket's stream (catching its mirror up)."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc

    async def __aenter__(self) -> "KeyLookups":
        subject = f"$JS.API.STREAM.INFO.{bucket_stream(subjects.API_KEYS_BUCKET)}"
        self.subscription = await self.nc.subscribe(subject)
        await self.nc.flush()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.subscription.unsubscribe()

    async def count(self) -> int:
        """How many were asked since the last count (every request sent so far)."""
        await self.nc.flush()  # the server delivers in order: all sent before are queued
        seen = 0
        while True:
            try:
                await self.subscription.next_msg(timeout=0.05)
            except (NatsTimeoutError, TimeoutError):
                return seen
            seen += 1


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def admin_of_new_workspace(client: HttpClient) -> dict[str, str]:
    created = await client.post("/v1/workspaces", json={"name": "acme"}, headers=OPERATOR)
    assert created.status_code == 201, created.text
    return bearer(created.json()["admin_key"]["secret"])


async def test_a_forged_key_costs_a_round_trip_the_first_time_and_none_after(
    nats_url: str, nc: Client
) -> None:
    async with (
        running(nats_url, auth_failure_burst=100, key_failure_burst=100) as (client, _),
        KeyLookups(nc) as seen,
    ):
        await seen.count()
        fresh = [
            await client.get("/v1/flows", headers=bearer(api_keys.generate())) for _ in range(30)
        ]
        costs_of_fresh = await seen.count()
        forged = api_keys.generate()
        await client.get("/v1/flows", headers=bearer(forged))
        await seen.count()
        repeats = [await client.get("/v1/flows", headers=bearer(forged)) for _ in range(30)]
        costs_of_repeats = await seen.count()

    assert {r.status_code for r in fresh + repeats} == {401}
    assert {r.json()["code"] for r in fresh + repeats} == {"invalid_key"}
    assert costs_of_fresh >= 30  # each new forged key: one look at the keys stream
    # The mirror's own stall check looks every 2 s: at most one or two in this short window.
    assert costs_of_repeats <= 2


async def test_a_key_refused_as_unknown_works_the_moment_it_appears_in_the_keys_bucket(
    nats_url: str, js: JetStreamContext
) -> None:
    forged = api_keys.generate()
    async with running(nats_url) as (client, ingress):
        workspace_id = new_id("ws")
        refused = await client.get("/v1/flows", headers=bearer(forged))
        assert refused.status_code == 401
        assert api_keys.digest(forged) in ingress.directory.unknown_keys
        key = ApiKey(
            id=new_id("key"),
            workspace_id=workspace_id,
            name="issued after all",
            scope="admin",
            prefix=api_keys.shown_prefix(forged),
            digest=api_keys.digest(forged),
            created_at=datetime.now(UTC),
        )
        keys = await js.key_value(subjects.API_KEYS_BUCKET)

        await keys.put(subjects.record_key(workspace_id, key.id), encode(key))
        answer = await client.get("/v1/flows", headers=bearer(forged))

    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == []


async def test_a_key_created_a_moment_ago_works_at_once_and_is_not_counted_a_failure(
    nats_url: str,
) -> None:
    async with running(nats_url, auth_failure_burst=1) as (client, ingress):
        admin = await admin_of_new_workspace(client)
        for _ in range(5):
            issued = await client.post(
                "/v1/keys", json={"name": "fresh", "scope": "admin"}, headers=admin
            )
            secret = issued.json()["secret"]

            answer = await client.get("/v1/flows", headers=bearer(secret))

            assert answer.status_code == 200, answer.text
        assert ingress.failures.by_address.tokens("testclient") == 1


async def test_an_address_over_its_limit_gets_429_with_retry_after_at_no_cost_and_valid_keys_work(
    nats_url: str, nc: Client
) -> None:
    async with (
        running(nats_url, auth_failure_burst=3, auth_failures_per_minute=6) as (client, _),
        KeyLookups(nc) as seen,
    ):
        admin = await admin_of_new_workspace(client)
        failures = [
            await client.get("/v1/flows", headers=bearer(api_keys.generate())) for _ in range(3)
        ]
        await seen.count()
        limited = [
            await client.post(f"/trigger/{new_id('flow')}", headers=bearer(api_keys.generate()))
            for _ in range(20)
        ]
        costs_of_limited = await seen.count()
        valid = await client.get("/v1/flows", headers=admin)
        malformed = await client.get("/v1/flows", headers=bearer("tpk_typo"))

    assert [r.status_code for r in failures] == [401, 401, 401]
    assert {r.status_code for r in limited} == {429}
    answer = limited[0]
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert 1 <= int(answer.headers["retry-after"]) <= 10  # a token every 10 s
    body = answer.json()
    assert body["code"] == "too_many_failed_authentications"
    assert f"retry after {answer.headers['retry-after']} s, at " in body["detail"]
    assert costs_of_limited <= 2  # only the mirror's own stall checks
    assert valid.status_code == 200
    # A key that fails its checksum costs nothing either way and stays a 401 that says why.
    assert malformed.json()["code"] == "malformed_key"


def refused_starts(reason: str) -> float:
    sample = REGISTRY.get_sample_value(
        f"{PREFIX}_starts_refused_total", {"route": "/trigger/{flow_id}", "reason": reason}
    )
    return sample or 0.0


async def test_a_refused_key_is_counted_as_a_refused_start_not_an_accepted_one(
    nats_url: str,
) -> None:
    forged = api_keys.generate()
    async with running(nats_url) as (client, _):
        before = refused_starts("invalid_key"), refused_starts("malformed_key")
        accepted_before = REGISTRY.get_sample_value(
            f"{PREFIX}_starts_accepted_total", {"route": "/trigger/{flow_id}"}
        )
        answer = await client.post(f"/trigger/{new_id('flw')}", json={}, headers=bearer(forged))
        assert (answer.status_code, answer.json()["code"]) == (401, "invalid_key")
        answer = await client.post(f"/trigger/{new_id('flw')}", json={}, headers=bearer("nope"))
        assert (answer.status_code, answer.json()["code"]) == (401, "malformed_key")
        assert refused_starts("invalid_key") == before[0] + 1
        assert refused_starts("malformed_key") == before[1] + 1
        accepted_after = REGISTRY.get_sample_value(
            f"{PREFIX}_starts_accepted_total", {"route": "/trigger/{flow_id}"}
        )
        assert accepted_after == accepted_before


async def test_a_key_refused_without_a_lookup_is_answered_before_the_framework_routes_it(
    nats_url: str,
) -> None:
    forged = api_keys.generate()
    async with running(nats_url) as (client, _):
        admin = await admin_of_new_workspace(client)
        path = f"/trigger/{new_id('flw')}"
        first = await client.post(path, json={}, headers=bearer(forged))  # looked up once
        reached = len(routed)
        refused_before = refused_starts("invalid_key")

        again = await client.post(path, json={}, headers=bearer(forged))
        malformed = await client.post(path, json={}, headers=bearer("nope"))
        assert len(routed) == reached  # answered at the front door
        known = await client.post(path, json={}, headers=admin)

    assert (first.status_code, first.json()["code"]) == (401, "invalid_key")
    assert (again.status_code, again.json()["code"]) == (401, "invalid_key")
    assert again.headers["content-type"] == "application/problem+json"
    assert (malformed.status_code, malformed.json()["code"]) == (401, "malformed_key")
    assert refused_starts("invalid_key") == refused_before + 1  # counted there too
    # A valid key goes on to the route (this flow does not exist).
    assert (known.status_code, known.json()["code"]) == (404, "flow_not_found")
    assert routed[-1] == path


async def test_a_head_request_is_answered_as_its_get_without_the_body(nats_url: str) -> None:
    async with running(nats_url) as (client, _):
        for path, headers in (("/healthz", {}), ("/v1/flows", bearer(api_keys.generate()))):
            got = await client.get(path, headers=headers)
            head = await client.head(path, headers=headers)
            assert (head.status_code, head.content) == (got.status_code, b"")
            assert got.content
            assert head.headers["content-type"] == got.headers["content-type"]
            assert head.headers["content-length"] == str(len(got.content))
        # A route without GET says which methods it has, as for GET.
        head = await client.head(f"/trigger/{new_id('flw')}")
        assert (head.status_code, head.headers["allow"], head.content) == (
            405,
            "OPTIONS, POST",
            b"",
        )
