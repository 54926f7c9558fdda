"""HTTP flows against a local HTTP server: allowed only where the operator allows it."""

import gzip
import ipaddress
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from contracts.registry import HttpFlowSettings
from contracts.runs import Run
from services.runner.http_flows import (
    HttpFlowFailed,
    HttpFlows,
    RefusedDestination,
    ResponseTooLarge,
    parse_networks,
    refusal,
    render,
)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/redirect-inside":
            self.send_response(302)
            self.send_header("Location", "http://10.20.30.40/secret")
            self.end_headers()
            return
        if self.path.startswith("/redirect-away?to="):
            self.send_response(307)  # keeps the method and body
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
            return
        if self.path == "/headers":
            self._answer(json.dumps(dict(self.headers)).encode())
            return
        if self.path == "/big":
            self._answer(b"x" * 300_000, "text/plain")
            return
        if self.path == "/gzip-bomb":
            self._answer(
                gzip.compress(b"0" * 3_000_000), "text/plain", {"Content-Encoding": "gzip"}
            )
            return
        status = 503 if self.path == "/down" else 200
        answer = json.dumps(
            {"got": json.loads(body or b"null"), "key": self.headers["Idempotency-Key"]}
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer.encode())

    def _answer(
        self, body: bytes, kind: str = "application/json", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def local_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def other_server() -> Iterator[str]:
    """A second server: another origin (its port) for redirects to cross to."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


RUN = Run(
    id="run_1",
    workspace_id="ws_1",
    flow_id="flw_1",
    status="running",
    source="api",
    input={"order": 7},
    queued_at=datetime(2026, 1, 1, tzinfo=UTC),
)


async def test_an_http_flow_posts_the_input_and_returns_the_response(local_server: str) -> None:
    flows = HttpFlows(parse_networks("127.0.0.0/8"))
    try:
        result = await flows(HttpFlowSettings(url=f"{local_server}/hook"), RUN)
    finally:
        await flows.close()

    assert result["status"] == 200
    assert result["body"] == {"got": {"order": 7}, "key": "run_1"}


async def test_an_http_flow_to_loopback_is_refused_unless_the_operator_allows_it(
    local_server: str,
) -> None:
    flows = HttpFlows([])
    try:
        with pytest.raises(RefusedDestination, match="a loopback address"):
            await flows(HttpFlowSettings(url=f"{local_server}/hook"), RUN)
        with pytest.raises(RefusedDestination, match="a loopback address"):
            await flows(
                HttpFlowSettings(url=f"http://localhost:{local_server.rsplit(':', 1)[1]}"), RUN
            )
    finally:
        await flows.close()


async def test_a_redirect_to_a_private_address_is_refused_at_that_hop(local_server: str) -> None:
    flows = HttpFlows(parse_networks("127.0.0.1/32"))
    try:
        with pytest.raises(RefusedDestination, match=r"10\.20\.30\.40, a private address"):
            await flows(HttpFlowSettings(url=f"{local_server}/redirect-inside"), RUN)
    finally:
        await flows.close()


async def test_an_error_status_fails_the_attempt_with_the_status(local_server: str) -> None:
    flows = HttpFlows(parse_networks("127.0.0.1"))
    try:
        with pytest.raises(HttpFlowFailed, match="answered 503"):
            await flows(HttpFlowSettings(url=f"{local_server}/down"), RUN)
    finally:
        await flows.close()


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("192.168.1.1", "a private address"),
        ("169.254.169.254", "a link-local address"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("100.64.0.1", "not a public address"),
        ("0.0.0.0", "a private address"),
        ("64:ff9b::7f00:1", "a loopback address"),
        ("64:ff9b::a00:1", "a private address"),
        ("2002:7f00:1::", "a loopback address"),
        ("2002:a9fe:a9fe::1", "a link-local address"),
        ("::127.0.0.1", "a loopback address"),
        ("::10.0.0.1", "a private address"),
        ("fec0::1", "a site-local address"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "a loopback address"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_only_public_addresses_may_be_called(address: str, why: str | None) -> None:
    assert refusal(ipaddress.ip_address(address), []) == why


def test_an_allowed_network_may_be_called_although_it_is_private() -> None:
    allowed = parse_networks("10.0.0.0/8, 127.0.0.1")
    assert refusal(ipaddress.ip_address("10.9.9.9"), allowed) is None
    assert refusal(ipaddress.ip_address("127.0.0.2"), allowed) == "a loopback address"


def test_a_body_template_places_the_input_and_the_run_s_ids() -> None:
    template = {
        "data": "{{input}}",
        "ref": "run {{run_id}} of {{ flow_id }}",
        "n": [1, "{{attempt}}"],
    }
    assert render(template, RUN) == {
        "data": {"order": 7},
        "ref": "run run_1 of flw_1",
        "n": [1, "1"],
    }
    assert render(None, RUN) == {"order": 7}


async def test_a_redirect_to_another_origin_drops_every_header_the_flow_set(
    local_server: str, other_server: str
) -> None:
    flows = HttpFlows(parse_networks("127.0.0.1/32"))
    settings = HttpFlowSettings(
        url=f"{local_server}/redirect-away?to={other_server}/headers",
        headers={"X-Api-Token": "secret-for-the-first-host", "Authorization": "Bearer t"},
    )
    same_origin = HttpFlowSettings(
        url=f"{local_server}/redirect-away?to={local_server}/headers",
        headers={"X-Api-Token": "secret-for-the-first-host"},
    )
    try:
        crossed = await flows(settings, RUN)
        stayed = await flows(same_origin, RUN)
    finally:
        await flows.close()

    seen = {name.lower() for name in crossed["body"]}
    assert "x-api-token" not in seen
    assert "authorization" not in seen
    assert crossed["url"] == f"{other_server}/headers"
    assert stayed["body"]["X-Api-Token"] == "secret-for-the-first-host"


@pytest.mark.parametrize("path", ["/big", "/gzip-bomb"])
async def test_a_response_larger_than_the_limit_fails_the_attempt_before_it_is_all_read(
    local_server: str, path: str
) -> None:
    flows = HttpFlows(parse_networks("127.0.0.1/32"), max_response_bytes=100_000)
    try:
        with pytest.raises(ResponseTooLarge, match="100000 bytes"):
            await flows(HttpFlowSettings(url=f"{local_server}{path}"), RUN)
    finally:
        await flows.close()
