"""TLS, NKeys and `.creds` against a real nats-server: the registry, the ingress and the runner
connect over mutual TLS as NKey users from their environment and a start ends succeeded; a
missing client certificate, another CA, another name, an unknown NKey or a server without TLS
are refused at once with an error that says which setting to check; a `.creds` user of a server
in operator mode uses JetStream."""

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from contracts import subjects
from shared import broker, nats_server
from shared.settings import NatsConnectionSettings, from_environment
from tests.integration.nats_credentials import (
    Authority,
    Issued,
    Operator,
    new_nkey,
    public,
    seed_file,
)
from tests.integration.processes import stop_processes

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_TOKEN = "op-tls-test"
SERVICES = ("registry", "ingress", "runner")
REFUSED_WITHIN = 5.0
"""A refusal must come this quickly: before this fix, a refused first connection retried forever."""

pytestmark = pytest.mark.timeout(90)


@dataclass
class Secure:
    """A nats-server requiring mutual TLS and NKey users, and what a client needs for it."""

    port: int
    authority: Authority
    client: Issued
    seeds: dict[str, Path]
    other_authority: Authority
    root: Path
    services: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, host: str = "127.0.0.1", scheme: str = "tls") -> str:
        return f"{scheme}://{host}:{self.port}"

    def environment(self, user: str, **overrides: str) -> dict[str, str]:
        """The service environment the README shows for TLS with an NKey user."""
        return {
            "NATS_TLS_CA_FILE": str(self.authority.cert),
            "NATS_TLS_CERT_FILE": str(self.client.cert),
            "NATS_TLS_KEY_FILE": str(self.client.key),
            "NATS_NKEY_SEED_FILE": str(self.seeds[user]),
            **overrides,
        }

    def settings(self, user: str = "probe", **overrides: str) -> NatsConnectionSettings:
        environment = {k: v for k, v in self.environment(user, **overrides).items() if v}
        return from_environment(NatsConnectionSettings, environment)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    root = tmp_path_factory.mktemp("tls")
    authority = Authority(root / "pki", "ca")
    server = authority.server("server")
    pairs = {name: new_nkey() for name in (*SERVICES, "probe")}
    users = ", ".join(f'{{nkey: "{public(pair)}"}}' for pair in pairs.values())
    config = root / "server.conf"
    config.write_text(
        "tls {\n"
        f'  cert_file: "{server.cert}"\n'
        f'  key_file: "{server.key}"\n'
        f'  ca_file: "{authority.cert}"\n'
        "  verify: true\n"
        "  timeout: 2\n"
        "}\n"
        f"authorization {{ users: [{users}] }}\n"
    )
    port = nats_server.free_port()
    process = nats_server.start(port, root / "store", root / "nats.log", config=config)
    try:
        yield Secure(
            port=port,
            authority=authority,
            client=authority.client("client"),
            seeds={name: seed_file(pair, root / f"{name}.nk") for name, pair in pairs.items()},
            other_authority=Authority(root / "other", "other-ca"),
            root=root,
        )
    finally:
        process.terminate()
        process.wait(timeout=10)


def start_service(
    secure: Secure, name: str, url: str, *, service: str = "", **environment: str
) -> Path:
    """Start `services.<service>` (by default `name`), logging to `<name>.log`."""
    log = secure.root / f"{name}.log"
    with open(log, "wb") as out:
        secure.services[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service or name}"],
            cwd=ROOT,
            env={**os.environ, "NATS_URL": url, "OPERATOR_TOKEN": OPERATOR_TOKEN, **environment},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return log


@pytest.fixture(scope="module")
def stack(secure: Secure) -> Iterator[str]:
    """The registry, the ingress and the runner over mutual TLS, each an NKey user; the ingress
    reaches the server by name (`localhost`), the others by address (the certificate has both)."""
    http_port = nats_server.free_port()
    try:
        for name in SERVICES:
            host = "localhost" if name == "ingress" else "127.0.0.1"
            start_service(
                secure,
                name,
                secure.url(host),
                INGRESS_PORT=str(http_port),
                **secure.environment(name),
            )
        api = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 30
        while True:
            for name, process in secure.services.items():
                if process.poll() is not None:
                    log = (secure.root / f"{name}.log").read_text()[-3000:]
                    pytest.fail(f"{name} exited:\n{log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the ingress was not healthy in time"
            time.sleep(0.1)
        yield api
    finally:
        stop_processes(secure.services.values())


def test_a_start_ends_succeeded_with_every_service_on_mutual_tls_as_an_nkey_user(
    stack: str,
) -> None:
    def client(key: str) -> httpx.Client:
        return httpx.Client(base_url=stack, headers={"Authorization": f"Bearer {key}"}, timeout=10)

    with client(OPERATOR_TOKEN) as operator:
        created = operator.post("/v1/workspaces", json={"name": "tls"})
    assert created.status_code == 201, created.text
    with client(created.json()["admin_key"]["secret"]) as admin:
        flow = admin.post(
            "/v1/flows", json={"name": "echo", "settings": {"kind": "python", "function": "echo"}}
        )
        assert flow.status_code == 201, flow.text
        trigger = admin.post("/v1/triggers", json={"flow_id": flow.json()["id"], "type": "api"})
        assert trigger.status_code == 201, trigger.text
        answered = admin.post(f"/trigger/{flow.json()['id']}", json={"over": "tls"})
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "succeeded"
    assert answered.json()["result"] == {"over": "tls"}


async def refusal_of(url: str, settings: NatsConnectionSettings) -> str:
    started = time.monotonic()
    with pytest.raises(broker.NatsRefused) as refused:
        await broker.connect(url, "tls-probe", first_attempt_for=30, settings=settings)
    assert time.monotonic() - started < REFUSED_WITHIN, "a refusal was retried, not reported"
    return str(refused.value)


async def test_a_probe_with_the_same_settings_connects_by_address_and_by_name(
    secure: Secure,
) -> None:
    for url in (secure.url("127.0.0.1", "nats"), secure.url("localhost")):
        nc = await broker.connect(url, "tls-probe", first_attempt_for=5, settings=secure.settings())
        try:
            assert (await nc.jetstream().account_info()).limits is not None
        finally:
            await nc.close()


async def test_a_client_without_a_client_certificate_is_refused_and_told_to_check_it(
    secure: Secure,
) -> None:
    settings = secure.settings(NATS_TLS_CERT_FILE="", NATS_TLS_KEY_FILE="")

    message = await refusal_of(secure.url(), settings)

    assert "TLS" in message
    assert "NATS_TLS_CERT_FILE" in message


async def test_a_client_certificate_of_another_ca_is_refused(secure: Secure) -> None:
    stranger = secure.other_authority.client("stranger")
    settings = secure.settings(
        NATS_TLS_CERT_FILE=str(stranger.cert), NATS_TLS_KEY_FILE=str(stranger.key)
    )

    assert "TLS" in await refusal_of(secure.url(), settings)


async def test_a_server_that_drops_a_tls_connection_is_asked_why_and_a_healthy_one_is_not(
    secure: Secure,
) -> None:
    # With TLS 1.3 the refusal of a client certificate comes after the client's side of the
    # handshake: a client that writes first may see only a broken pipe, so it asks.
    stranger = secure.other_authority.client("stranger")
    refused = secure.settings(
        NATS_TLS_CERT_FILE=str(stranger.cert), NATS_TLS_KEY_FILE=str(stranger.key)
    )
    uri = urlparse(secure.url())
    stranger_context, client_context = (
        broker.tls_context(settings) for settings in (refused, secure.settings())
    )
    assert stranger_context is not None
    assert client_context is not None

    reason = await broker.tls_refusal_of(uri, stranger_context)
    healthy = await broker.tls_refusal_of(uri, client_context)

    assert reason is not None
    assert "NATS_TLS_CERT_FILE" in reason
    assert healthy is None


async def test_a_server_certificate_of_another_ca_is_refused_as_a_tls_error(
    secure: Secure,
) -> None:
    settings = secure.settings(NATS_TLS_CA_FILE=str(secure.other_authority.cert))

    message = await refusal_of(secure.url(), settings)

    assert "TLS" in message
    assert "certificate" in message
    assert "NATS_TLS_CA_FILE" in message


async def test_a_server_certificate_for_another_name_is_refused(secure: Secure) -> None:
    settings = secure.settings(NATS_TLS_HOSTNAME="nats.example")

    assert "nats.example" in await refusal_of(secure.url(), settings)


async def test_an_nkey_the_server_does_not_list_is_refused_as_a_credentials_error(
    secure: Secure,
) -> None:
    settings = secure.settings(
        NATS_NKEY_SEED_FILE=str(seed_file(new_nkey(), secure.root / "unknown.nk"))
    )

    assert "NATS_NKEY_SEED_FILE" in await refusal_of(secure.url(), settings)


async def test_tls_settings_never_send_credentials_to_a_server_without_tls(
    secure: Secure, nats_url: str
) -> None:
    """The session's server has no TLS: nats-py alone would send the CONNECT in clear."""
    for scheme in ("nats", "tls"):
        url = nats_url.replace("nats://", f"{scheme}://")

        assert "offers no TLS" in await refusal_of(url, secure.settings())


def test_a_service_with_the_wrong_ca_exits_saying_tls(secure: Secure) -> None:
    environment = secure.environment("registry", NATS_TLS_CA_FILE=str(secure.other_authority.cert))
    log = start_service(
        secure, "registry-wrong-ca", secure.url(), service="registry", **environment
    )
    process = secure.services.pop("registry-wrong-ca")
    try:
        assert process.wait(timeout=20) != 0
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert "NatsRefused" in output, output[-3000:]
    assert "TLS: the server's certificate was not accepted" in output, output[-3000:]


@pytest.fixture(scope="module")
def operator_mode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Operator]]:
    root = tmp_path_factory.mktemp("operator")
    operator = Operator.new()
    config = root / "server.conf"
    config.write_text(operator.server_config())
    port = nats_server.free_port()
    process = nats_server.start(port, root / "store", root / "nats.log", config=config)
    try:
        yield f"nats://127.0.0.1:{port}", operator
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_a_creds_user_of_an_operator_mode_server_creates_the_topology_and_uses_it(
    operator_mode: tuple[str, Operator], tmp_path: Path
) -> None:
    url, operator = operator_mode
    creds = operator.creds("runner", tmp_path / "runner.creds")
    settings = from_environment(NatsConnectionSettings, {"NATS_CREDS_FILE": str(creds)})

    nc = await broker.connect(url, "creds-test", first_attempt_for=5, settings=settings)
    try:
        js = nc.jetstream()
        await broker.ensure_topology(js)
        flows = await js.key_value(subjects.FLOWS_BUCKET)
        await flows.put("ws_creds.flow", b"{}")
        assert (await flows.get("ws_creds.flow")).value == b"{}"
    finally:
        await nc.close()


async def test_a_creds_file_signed_by_a_stranger_is_refused(
    operator_mode: tuple[str, Operator], tmp_path: Path
) -> None:
    url, operator = operator_mode
    forged = operator.creds("forged", tmp_path / "forged.creds", signer=new_nkey(0))
    settings = from_environment(NatsConnectionSettings, {"NATS_CREDS_FILE": str(forged)})

    assert "NATS_CREDS_FILE" in await refusal_of(url, settings)


async def test_nothing_waits_on_a_server_that_is_gone() -> None:
    """A first connection that no server answers still ends, after `first_attempt_for`."""
    url = f"nats://127.0.0.1:{nats_server.free_port()}"
    started = time.monotonic()

    with pytest.raises(TimeoutError, match="no NATS server"):
        await broker.connect(url, "nobody", first_attempt_for=1, settings=NatsConnectionSettings())

    assert time.monotonic() - started < REFUSED_WITHIN
