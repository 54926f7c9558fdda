"""`python -m services` (what `make run` runs): a local NATS server and all five services.

Settings come from the environment: `NATS_PORT` (4222), `INGRESS_PORT` (8000), `DATA_DIR`
(`.data`; the history's SQLite goes to `<DATA_DIR>/history/` unless `HISTORY_DB` says
otherwise), `OPERATOR_TOKEN` (generated when unset; printed and written to
`<DATA_DIR>/operator-token`), `NATS_AUTH` (`1`: NATS runs with the shipped users of
`deploy/nats/users.conf`, each service connects as its own user with a password generated for this
run; unset: no NATS authentication, for local development on loopback), `METRICS_PORT_BASE`
(9100: the registry, runner, scheduler and history serve `/metrics`, `/healthz` and `/readyz` on
9101-9104; 0: not served), `WEBHOOK_SECRET_KEY` (when unset, the key kept in
`<DATA_DIR>/webhook-secret-key`, made on first run), and anything the services read
(`RUNNER_FLOWS`, `LOG_LEVEL`, ...).
Ctrl-C (or SIGTERM) stops the services, then NATS.
"""

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from shared import nats_permissions, nats_server, webhook_secrets

SERVICES = ("registry", "runner", "scheduler", "history", "ingress")
METRICS_OFFSETS = {"registry": 1, "runner": 2, "scheduler": 3, "history": 4}
"""`METRICS_PORT` of each NATS-only service: `METRICS_PORT_BASE` plus this (the ingress serves
its own on its HTTP port)."""


def metrics_ports(base: int) -> dict[str, int]:
    """The `METRICS_PORT` of each service that gets one (none when `base` is 0)."""
    return {name: base + offset for name, offset in METRICS_OFFSETS.items()} if base else {}


STOP_GRACE = 15.0


def _wait_until_healthy(url: str, processes: dict[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the ingress was not healthy at {url} after 60s")


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_GRACE
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    nats_port = int(os.environ.get("NATS_PORT", "4222"))
    ingress_port = int(os.environ.get("INGRESS_PORT", "8000"))
    data_dir = Path(os.environ.get("DATA_DIR", ".data")).resolve()
    token = os.environ.get("OPERATOR_TOKEN") or f"op_{secrets.token_urlsafe(24)}"
    ports = metrics_ports(int(os.environ.get("METRICS_PORT_BASE", "9100")))
    nats_url = f"nats://127.0.0.1:{nats_port}"

    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    data_dir.mkdir(parents=True, exist_ok=True)
    token_file = data_dir / "operator-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    auth = os.environ.get("NATS_AUTH", "").lower() in ("1", "true", "yes")
    passwords = nats_permissions.new_passwords() if auth else {}
    nats = nats_server.start(
        nats_port,
        data_dir / "nats",
        data_dir / "nats-server.log",
        new_session=True,
        config=nats_permissions.USERS_FILE if auth else None,
        env=nats_permissions.server_environment(passwords),
    )
    env = {**os.environ, "NATS_URL": nats_url, "OPERATOR_TOKEN": token}
    if not env.get("WEBHOOK_SECRET_KEY"):
        # Webhook secrets are sealed at rest: a local run keeps its key beside its data, so the
        # registry and the ingress share it and it survives restarts (production sets it).
        key, made = webhook_secrets.local_sealing_key(data_dir)
        env["WEBHOOK_SECRET_KEY"] = key
        key_file = data_dir / webhook_secrets.KEY_FILE_NAME
        print(
            f"WEBHOOK_SECRET_KEY is unset: webhook secrets are sealed with the key "
            f"{'made now in' if made else 'kept in'} {key_file} (set WEBHOOK_SECRET_KEY in "
            "production; losing this file makes existing webhook secrets unusable)",
            flush=True,
        )
    env["INGRESS_PORT"] = str(ingress_port)
    env.setdefault("HISTORY_DB", str(data_dir / "history" / "history.sqlite"))
    services: dict[str, subprocess.Popen[bytes]] = {}
    code = 0
    try:
        for name in SERVICES:
            own = nats_permissions.service_environment(name, passwords) if auth else {}
            # Own sessions: Ctrl-C reaches only this launcher, which stops everyone in order.
            own_env = {**env, "METRICS_PORT": str(ports[name])} if name in ports else env
            services[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env={**own_env, **own},
                start_new_session=True,
            )
        api = f"http://127.0.0.1:{ingress_port}"
        _wait_until_healthy(f"{api}/health", services)
        print(
            f"\n  Trigger plane is up.\n"
            f"  HTTP API        {api}   (OpenAPI: {api}/schema/swagger)\n"
            f"  NATS            {nats_url}   (data in {data_dir}"
            f"{'; a user per service' if auth else ''})\n"
            f"  Metrics         {api}/metrics"
            + "".join(f", {name} :{port}" for name, port in ports.items())
            + "\n"
            f"  Operator token  {token}   (also in {token_file})\n"
            f"  Press Ctrl-C to stop.\n",
            flush=True,
        )
        while not stopping:
            for name, process in services.items():
                if process.poll() is not None:
                    print(f"{name} exited with code {process.returncode}; stopping", flush=True)
                    stopping, code = True, 1
            time.sleep(0.2)
    except RuntimeError as error:
        print(f"could not start: {error}", file=sys.stderr, flush=True)
        code = 1
    finally:
        _stop(list(services.values()))
        _stop([nats])
    return code


if __name__ == "__main__":
    sys.exit(main())
