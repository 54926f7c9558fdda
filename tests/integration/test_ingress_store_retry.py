"""Storing a start rides out a NATS outage shorter than `STORE_RETRY_SECONDS`, stores it once,
and answers `503 start_not_stored` only once that budget is spent."""

import asyncio
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client

from contracts import subjects
from contracts.runs import FlowStart
from services.ingress.adapters import Ingress
from services.ingress.problems import ApiError
from services.ingress.settings import IngressSettings
from shared import broker
from shared.ids import new_id
from tests.integration.conftest import RestartableServer


def a_start() -> FlowStart:
    return FlowStart(
        run_id=new_id("run"),
        workspace_id=new_id("wsp"),
        flow_id=new_id("flw"),
        requested_at=datetime.now(UTC),
    )


async def ingress_on(server: RestartableServer, nc: Client, retry_seconds: float) -> Ingress:
    await broker.ensure_topology(nc.jetstream(), 1)
    settings = IngressSettings(nats_url=server.url, store_retry_seconds=retry_seconds)
    return Ingress(settings, nc, None, None)  # type: ignore[arg-type]


async def test_a_start_stored_during_a_short_outage_is_stored_once_when_nats_returns(
    own_server: RestartableServer, own_client: Client
) -> None:
    ingress = await ingress_on(own_server, own_client, retry_seconds=15)
    start = a_start()
    await asyncio.to_thread(own_server.stop)

    storing = asyncio.create_task(ingress.start(start))
    await asyncio.sleep(1.0)
    assert not storing.done()
    await asyncio.to_thread(own_server.start)
    await asyncio.wait_for(storing, 20)

    js = own_client.jetstream()
    stored = await js.get_last_msg(
        subjects.FLOW_STARTS_STREAM, subjects.flow_start(start.workspace_id)
    )
    assert stored.headers is not None
    assert stored.headers["Nats-Msg-Id"] == start.run_id
    info = await js.stream_info(subjects.FLOW_STARTS_STREAM)
    assert info.state.messages == 1


async def test_a_start_that_cannot_be_stored_within_the_budget_answers_503(
    own_server: RestartableServer, own_client: Client
) -> None:
    ingress = await ingress_on(own_server, own_client, retry_seconds=1.0)
    await asyncio.to_thread(own_server.stop)

    with pytest.raises(ApiError) as refused:
        await asyncio.wait_for(ingress.start(a_start()), 10)

    assert refused.value.status == 503
    assert refused.value.code == "start_not_stored"
    assert "within 1s" in refused.value.detail
