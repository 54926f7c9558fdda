"""The shipped NATS users on a 3-node cluster: every service runs as its own user and a start
through the ingress ends succeeded, while no credentials, another service's user or an
outside publisher scoped to one workspace are refused what they must not do."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from contracts import subjects
from contracts.registry import CreateKey, NewKey, RunnerAnnouncement
from contracts.runs import FlowStart
from shared import nats_permissions, nats_server
from shared.codec import encode
from shared.ids import new_id
from tests.faults.nats_nodes import Nats, api
from tests.integration.processes import stop_processes

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_TOKEN = "op-permissions-test"
PASSWORDS = {service: f"{service}-secret" for service in nats_permissions.SERVICES}
PUBLISHER, PUBLISHER_PASSWORD = "acme", "acme-secret"
ADMIN, ADMIN_PASSWORD = "admin", "admin-secret"
"""The test's own user, allowed everything: it waits for JetStream before the services start."""
REFUSAL_WAIT = 3.0
PROBE = "permissions-probe"
"""Name of the test's own connections: every violation the servers log must be one of theirs."""

pytestmark = pytest.mark.timeout(120)


@dataclass
class Secured:
    nats: Nats
    api_url: str
    users: Path
    workspace_id: str = ""
    admin_key: str = ""
    flow_id: str = ""
    services: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def nats_url(self) -> str:
        return self.nats.url

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=10
        )

    def write_users(self, publisher_workspace: str | None = None) -> None:
        """The shipped users, the test's admin and, once there is a workspace, a publisher
        confined to it (the README's way of adding one: a user block, then a reload)."""
        admin = nats_permissions.User(
            name=ADMIN, password=f'"{ADMIN_PASSWORD}"', publish=(">",), subscribe=(">",)
        )
        extra = [admin]
        if publisher_workspace:
            extra.append(
                nats_permissions.outside_publisher(
                    PUBLISHER, f'"{PUBLISHER_PASSWORD}"', publisher_workspace
                )
            )
        self.users.write_text(nats_permissions.render(extra))


class Connection:
    """A NATS client of the test's, with the errors the server sent it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def open(self, url: str, user: str, password: str) -> Client:
        async def on_error(error: Exception) -> None:
            self.errors.append(str(error))

        self.nc = await nats.connect(
            servers=url.split(","),
            user=user,
            password=password,
            inbox_prefix=f"_INBOX_{user}",
            name=PROBE,
            error_cb=on_error,
            connect_timeout=2,
            max_reconnect_attempts=2,
        )
        return self.nc

    async def refused(self, kind: str, subject: str) -> bool:
        """Whether the server reports a permissions violation of `kind` ("Publish" or
        "Subscription") for `subject` within `REFUSAL_WAIT`."""
        expected = f'permissions violation for {kind} to "{subject}"'.lower()
        deadline = time.monotonic() + REFUSAL_WAIT
        while time.monotonic() < deadline:
            if any(expected in error.lower() for error in self.errors):
                return True
            await asyncio.sleep(0.05)
        return False


@contextlib.asynccontextmanager
async def connected(url: str, user: str, password: str) -> AsyncIterator[tuple[Client, Connection]]:
    connection = Connection()
    nc = await connection.open(url, user, password)
    try:
        yield nc, connection
    finally:
        await nc.close()


async def wait_for_jetstream(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with connected(url, ADMIN, ADMIN_PASSWORD) as (nc, _):
        while True:
            with contextlib.suppress(NatsTimeoutError, NoRespondersError):
                if "error" not in await api(nc, "$JS.API.INFO"):
                    return
            assert time.monotonic() < deadline, "JetStream did not come up"
            await asyncio.sleep(0.2)


def wait_healthy(secured: Secured, logs: Path, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for name, process in secured.services.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited:\n{(logs / f'{name}.log').read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{secured.api_url}/health", timeout=1).status_code == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail("the ingress was not healthy in time")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secured")
    cluster = Nats(root, 3)
    http_port = nats_server.free_port()
    stack = Secured(
        nats=cluster, api_url=f"http://127.0.0.1:{http_port}", users=root / "users.conf"
    )
    stack.write_users()
    for node in cluster.nodes:
        with open(node.config, "a") as config:
            config.write('include "users.conf"\n')
    with pytest.MonkeyPatch.context() as patch:
        # The nodes read the services' passwords from their environment, as in compose.
        for name, value in nats_permissions.server_environment(PASSWORDS).items():
            patch.setenv(name, value)
        cluster.start()
    try:
        asyncio.run(wait_for_jetstream(cluster.url))
        for name in nats_permissions.SERVICES:
            env = {
                **os.environ,
                **nats_permissions.service_environment(name, PASSWORDS),
                "NATS_URL": cluster.url,
                "NATS_REPLICAS": "3",
                "INGRESS_PORT": str(http_port),
                "OPERATOR_TOKEN": OPERATOR_TOKEN,
                "HISTORY_DB": str(root / "history.sqlite"),
            }
            with open(root / f"{name}.log", "wb") as log:
                stack.services[name] = subprocess.Popen(
                    [sys.executable, "-m", f"services.{name}"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        wait_healthy(stack, root)
        yield stack
    finally:
        stop_processes(stack.services.values())
        cluster.stop()


@pytest.fixture(scope="module")
def walked(secured: Secured) -> Secured:
    """The walkthrough's first steps done over HTTP: a workspace, an `echo` flow, its API
    trigger; then a publisher confined to that workspace is added and the nodes reload."""
    with secured.client(OPERATOR_TOKEN) as operator:
        created = operator.post("/v1/workspaces", json={"name": "secured"})
    assert created.status_code == 201, created.text
    secured.workspace_id = created.json()["workspace"]["id"]
    secured.admin_key = created.json()["admin_key"]["secret"]
    with secured.client(secured.admin_key) as admin:
        flow = admin.post(
            "/v1/flows", json={"name": "echo", "settings": {"kind": "python", "function": "echo"}}
        )
        assert flow.status_code == 201, flow.text
        secured.flow_id = flow.json()["id"]
        trigger = admin.post("/v1/triggers", json={"flow_id": secured.flow_id, "type": "api"})
        assert trigger.status_code == 201, trigger.text
    secured.write_users(publisher_workspace=secured.workspace_id)
    for node in secured.nats.nodes:
        assert node.process is not None
        node.process.send_signal(signal.SIGHUP)  # reload the configuration
    return secured


def test_a_start_through_the_ingress_ends_succeeded_with_every_service_on_its_own_user(
    walked: Secured,
) -> None:
    with walked.client(walked.admin_key) as admin:
        answered = admin.post(f"/trigger/{walked.flow_id}", json={"hello": "secured"})
        assert answered.status_code == 200, answered.text
        assert answered.json()["status"] == "succeeded"
        assert answered.json()["result"] == {"hello": "secured"}
        deadline = time.monotonic() + 10
        while True:  # the run list comes from the history, a moment behind
            items = admin.get("/v1/runs", params={"flow_id": walked.flow_id}).json()["items"]
            if items:
                break
            assert time.monotonic() < deadline, "the history never listed the run"
            time.sleep(0.1)
    assert items[0]["status"] == "succeeded"


def test_a_per_second_schedule_starts_a_run_and_records_its_fire(walked: Secured) -> None:
    with walked.client(walked.admin_key) as admin:
        created = admin.post(
            "/v1/triggers",
            json={
                "flow_id": walked.flow_id,
                "type": "schedule",
                "schedule": {"kind": "cron", "cron": "* * * * * *", "timezone": "UTC"},
            },
        )
        assert created.status_code == 201, created.text
        trigger_id = created.json()["id"]
        deadline = time.monotonic() + 15
        while True:
            items = admin.get("/v1/runs", params={"trigger_id": trigger_id}).json()["items"]
            if any(run["status"] == "succeeded" for run in items):
                break
            assert time.monotonic() < deadline, f"no scheduled run succeeded: {items}"
            time.sleep(0.2)
        fires = admin.get(f"/v1/triggers/{trigger_id}/fires")
        assert fires.status_code == 200, fires.text
        assert admin.delete(f"/v1/triggers/{trigger_id}").status_code == 200


def test_the_registry_records_changes_and_the_ingress_reads_them_on_their_own_users(
    walked: Secured,
) -> None:
    with walked.client(walked.admin_key) as admin:
        answered = admin.get("/v1/audit", params={"resource_type": "flow"})
        assert answered.status_code == 200, answered.text
        entries = answered.json()["items"]
    assert [e["resource_id"] for e in entries] == [walked.flow_id]
    assert entries[0]["action"] == "flow.created"


async def test_only_the_registry_writes_the_audit_log(walked: Secured) -> None:
    forged = subjects.audit_entry(walked.workspace_id, "key.revoked", "key_forged", "operator")
    for user in ("ingress", "scheduler", "runner", "history"):
        async with connected(walked.nats_url, user, PASSWORDS[user]) as (nc, connection):
            await nc.publish(forged, b"{}")
            assert await connection.refused("Publish", forged), user


async def test_a_client_without_credentials_is_refused(secured: Secured) -> None:
    anonymous = nats.connect(servers=secured.nats_url.split(","), allow_reconnect=False)
    with pytest.raises(NatsError, match=r"(?i)authorization"):
        await asyncio.wait_for(anonymous, 10)


async def test_another_service_cannot_ask_the_registry_for_a_workspace_s_admin_key(
    walked: Secured,
) -> None:
    request = encode(
        CreateKey(workspace_id=walked.workspace_id, key=NewKey(name="stolen", scope="admin"))
    )
    for user in ("scheduler", "history", "runner"):
        async with connected(walked.nats_url, user, PASSWORDS[user]) as (nc, connection):
            with pytest.raises(NatsTimeoutError):
                await nc.request(subjects.KEY_CREATE, request, timeout=0.5)
            assert await connection.refused("Publish", subjects.KEY_CREATE), connection.errors


async def test_only_the_runners_add_to_the_catalogue_of_flow_functions(walked: Secured) -> None:
    announcement = encode(
        RunnerAnnouncement(
            runner_id="rnr_forged",
            functions=["steal_secrets"],
            announced_at=datetime.now(UTC),
            interval_seconds=30.0,
        )
    )
    for user in ("ingress", "registry", "scheduler", "history"):
        async with connected(walked.nats_url, user, PASSWORDS[user]) as (nc, connection):
            await nc.publish(subjects.RUNNER_ANNOUNCE, announcement)
            assert await connection.refused("Publish", subjects.RUNNER_ANNOUNCE), user


async def test_only_the_owners_read_the_keys_and_runs_buckets(walked: Secured) -> None:
    readers = {
        "scheduler": (subjects.API_KEYS_BUCKET, subjects.RUNS_BUCKET),
        "history": (subjects.API_KEYS_BUCKET,),
        "runner": (subjects.API_KEYS_BUCKET,),
        PUBLISHER: (subjects.API_KEYS_BUCKET, subjects.RUNS_BUCKET),
    }
    for user, buckets in readers.items():
        password = PASSWORDS.get(user, PUBLISHER_PASSWORD)
        async with connected(walked.nats_url, user, password) as (nc, connection):
            for bucket in buckets:
                stream = f"KV_{bucket}"
                get = f"$JS.API.DIRECT.GET.{stream}.$KV.{bucket}.{walked.workspace_id}.x"
                consumer = f"$JS.API.CONSUMER.CREATE.{stream}"
                for request in (get, f"$JS.API.STREAM.MSG.GET.{stream}", consumer):
                    await nc.publish(request, b"{}", reply=nc.new_inbox())
                    assert await connection.refused("Publish", request), (user, connection.errors)
                await nc.subscribe(f"$KV.{bucket}.>")
                assert await connection.refused("Subscription", f"$KV.{bucket}.>"), user


async def test_an_outside_publisher_starts_its_own_workspace_s_flows_and_no_other(
    walked: Secured,
) -> None:
    async with connected(walked.nats_url, PUBLISHER, PUBLISHER_PASSWORD) as (nc, connection):
        start = FlowStart(
            run_id=new_id("run"),
            workspace_id=walked.workspace_id,
            flow_id=walked.flow_id,
            input={"from": "outside"},
            source="external",
            requested_at=datetime.now(UTC),
        )
        events = await nc.subscribe(subjects.run_events(start.workspace_id, start.run_id))
        ack = await nc.jetstream().publish(
            subjects.flow_start(start.workspace_id),
            encode(start),
            headers={"Nats-Msg-Id": start.run_id},
        )
        assert ack.stream == subjects.FLOW_STARTS_STREAM
        deadline = time.monotonic() + 10
        while not (await events.next_msg(timeout=10)).subject.endswith(".succeeded"):
            assert time.monotonic() < deadline

        elsewhere = subjects.flow_start("ws_someoneelse")
        with pytest.raises(NatsTimeoutError):
            await nc.jetstream().publish(elsewhere, encode(start), timeout=1)
        assert await connection.refused("Publish", elsewhere), connection.errors
        for forbidden in (subjects.FLOW_START_UNVERSIONED, subjects.TRIGGER_SET_ENABLED):
            await nc.publish(forbidden, b"{}")
            assert await connection.refused("Publish", forbidden), connection.errors


async def test_no_user_reads_another_s_reply_inbox(walked: Secured) -> None:
    for user, password in (("scheduler", PASSWORDS["scheduler"]), (PUBLISHER, PUBLISHER_PASSWORD)):
        async with connected(walked.nats_url, user, password) as (nc, connection):
            for inbox in ("_INBOX.>", "_INBOX_ingress.>", ">"):
                await nc.subscribe(inbox)
                assert await connection.refused("Subscription", inbox), (user, connection.errors)


def test_the_services_were_refused_nothing_while_the_probes_were(walked: Secured) -> None:
    violations = [
        line
        for node in walked.nats.nodes
        for line in node.log.read_text(errors="replace").splitlines()
        if "Violation" in line
    ]
    assert violations, "the probes above were refused: the servers log that"
    assert all(f':{PROBE}"' in line for line in violations), [
        line for line in violations if PROBE not in line
    ]
