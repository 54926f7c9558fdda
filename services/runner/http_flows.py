"""HTTP flows: one request per attempt, with a guard against reaching internal addresses.

The guard sits where connections are made (an httpcore network backend): it resolves the host
itself, refuses the connection if any resolved address is loopback, private, link-local or
otherwise not public (unless the operator allowed its network), and connects to the address it
checked, so DNS cannot answer differently between the check and the connection. Every redirect
hop opens its connection through the same guard.
"""

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from contracts.registry import HttpFlowSettings
from contracts.runs import Run

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_REDIRECTS = 5
MAX_TEXT_RESULT = 65_536
"""Characters of a non-JSON response body kept in the result."""
_PLACEHOLDER = re.compile(r"\{\{\s*(run_id|flow_id|trigger_id|workspace_id|attempt)\s*\}\}")


class RefusedDestination(Exception):
    """The request would reach an address HTTP flows may not call."""


class HttpFlowFailed(Exception):
    """The endpoint answered with an error status."""


def parse_networks(text: str) -> list[IpNetwork]:
    """`"127.0.0.0/8, 10.1.2.3"` → networks; raises ValueError naming a bad entry."""
    networks = []
    for item in text.split(","):
        item = item.strip()
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError as error:
                raise ValueError(f"not an IP network: {item!r} ({error})") from error
    return networks


def refusal(address: IpAddress, allowed: Iterable[IpNetwork]) -> str | None:
    """Why an HTTP flow may not connect to `address`, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in allowed):
        return None
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private:
        return "a private address"
    if address.is_multicast or not address.is_global:
        return "not a public address"
    return None


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses `refusal` allows, to the very address it checked."""

    def __init__(self, allowed: list[IpNetwork]) -> None:
        self._allowed = allowed
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise httpcore.ConnectError(f"cannot resolve {host}: {error}") from error
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        for address in addresses:
            why = refusal(address, self._allowed)
            if why is not None:
                raise RefusedDestination(
                    f"{host} resolves to {address}, {why}: HTTP flows may not call it unless "
                    "the operator allows its network (RUNNER_HTTP_ALLOWED_NETWORKS)"
                )
        return await self._backend.connect_tcp(
            str(addresses[0]),
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedDestination("HTTP flows do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, allowed: list[IpNetwork]) -> None:
        super().__init__(trust_env=False)
        # Our pool: the same as httpx's, connecting through the guard.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=GuardedBackend(allowed),
        )


def render(template: Any, run: Run) -> Any:
    """The request body for `run` from the flow's body template (see `HttpFlowSettings`)."""
    if template is None:
        return run.input
    if isinstance(template, str):
        if template.strip() == "{{input}}":
            return run.input
        values = {
            "run_id": run.id,
            "flow_id": run.flow_id,
            "trigger_id": run.trigger_id or "",
            "workspace_id": run.workspace_id,
            "attempt": str(run.attempt),
        }
        return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)
    if isinstance(template, list):
        return [render(item, run) for item in template]
    if isinstance(template, dict):
        return {key: render(value, run) for key, value in template.items()}
    return template


class HttpFlows:
    """Makes HTTP flow calls (`HttpCaller`); one client, one guarded connection pool."""

    def __init__(self, allowed: list[IpNetwork]) -> None:
        self._client = httpx.AsyncClient(
            transport=GuardedTransport(allowed),
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            trust_env=False,
        )

    async def __call__(self, settings: HttpFlowSettings, run: Run) -> Any:
        url = httpx.URL(settings.url)
        if url.scheme not in ("http", "https"):
            raise RefusedDestination(f"HTTP flows call http or https URLs, not {url.scheme!r}")
        body = render(settings.body, run)
        has_body = settings.method not in ("GET", "DELETE") or body is not None
        response = await self._client.request(
            settings.method,
            url,
            headers={"Idempotency-Key": run.id, **settings.headers},
            json=body if has_body else None,
            timeout=settings.timeout_seconds,
        )
        try:
            content: Any = response.json()
        except ValueError:
            content = response.text[:MAX_TEXT_RESULT]
        if response.status_code >= 400:
            raise HttpFlowFailed(
                f"{settings.method} {settings.url} answered {response.status_code}: "
                f"{str(content)[:500]}"
            )
        return {
            "status": response.status_code,
            "headers": dict(response.headers),
            "body": content,
            "url": str(response.url),
        }

    async def close(self) -> None:
        await self._client.aclose()
