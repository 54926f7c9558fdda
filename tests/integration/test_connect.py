"""A service connects while one of the servers in `NATS_URL` is down."""

from shared import broker, nats_server


async def test_a_service_starts_while_the_first_listed_server_is_down(nats_url: str) -> None:
    down = f"nats://127.0.0.1:{nats_server.free_port()}"

    nc = await broker.connect(f"{down},{nats_url}", "connect-test", first_attempt_for=10)
    try:
        assert nc.is_connected
        assert nc.connected_url is not None
        assert f"{nc.connected_url.hostname}:{nc.connected_url.port}" in nats_url
    finally:
        await nc.close()
