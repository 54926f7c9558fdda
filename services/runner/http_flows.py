"""HTTP flows: one request per attempt, with a guard against reaching internal addresses.

The guard sits where connections are made (an httpcore network backend): it resolves the host
itself, refuses the connection if any resolved address is loopback, private, link-local or
otherwise not public (unless the operator allowed its network), and connects to the address it
checked, so DNS cannot answer differently between the check and the connection. Every redirect
hop opens its connection through the same guard.
"""

import asyncio
import ipaddress
import json
import re
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from contracts.registry import HttpFlowSettings
from contracts.runs import Run
from shared import tracing

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_REDIRECTS = 5
MAX_TEXT_RESULT = 65_536
"""Characters of a non-JSON response body kept in the result."""
MAX_RESPONSE_BYTES = 262_144
"""Bytes of a response body (after decompression) an HTTP flow reads by default: a larger one
fails the attempt, so a huge or inflating body cannot take the runner's memory, and the result
fits in a run record."""
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
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


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches (mapped, NAT64, 6to4, Teredo, IPv4-compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if int(address) >> 32 == 0 and int(address) > 1:  # IPv4-compatible `::a.b.c.d`
        return ipaddress.IPv4Address(int(address))
    return None


def refusal(address: IpAddress, allowed: Iterable[IpNetwork]) -> str | None:
    """Why an HTTP flow may not connect to `address`, or None when it may."""
    allowed = list(allowed)
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_site_local:
            return "a site-local address"
        inner = embedded_ipv4(address)
        if inner is not None:
            # The IPv4 address is where the packets go: it must pass on its own.
            why = refusal(inner, allowed)
            if why is not None or address.ipv4_mapped is not None:
                return why
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


class ResponseTooLarge(Exception):
    """The response body is larger than the flow may read."""


def check_url(text: str) -> str | None:
    """Why `text` can never be an HTTP flow's URL, or None (the addresses are checked when it
    is called, at every hop)."""
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        return f"not a URL ({error})"
    if url.scheme not in ("http", "https"):
        return f"HTTP flows call http or https URLs, not {url.scheme or 'none'!r}"
    if not url.host:
        return "the URL names no host (such as https://example.com/path)"
    return None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


class HttpFlows:
    """Makes HTTP flow calls (`HttpCaller`); one client, one guarded connection pool.

    Redirects are followed here, not by httpx: a hop to another host drops every header the
    flow set (a token meant for one host never reaches another), not only `Authorization`.
    """

    def __init__(
        self, allowed: list[IpNetwork], max_response_bytes: int = MAX_RESPONSE_BYTES
    ) -> None:
        self._client = httpx.AsyncClient(
            transport=GuardedTransport(allowed), follow_redirects=False, trust_env=False
        )
        self._max_response_bytes = max_response_bytes

    async def _read(self, response: httpx.Response) -> bytes:
        """The decompressed body, up to the limit: a larger one fails before it is all read."""
        limit = self._max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLarge(
                f"the response declares {declared} bytes; HTTP flows read at most {limit} bytes "
                "(RUNNER_HTTP_MAX_RESPONSE_BYTES)"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():  # decompressed as it comes
            size += len(chunk)
            if size > limit:
                raise ResponseTooLarge(
                    f"the response body is larger than the {limit} bytes HTTP flows read "
                    "(RUNNER_HTTP_MAX_RESPONSE_BYTES), after decompression"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def _send(
        self, request: httpx.Request, custom: Iterable[str]
    ) -> tuple[httpx.Response, bytes]:
        """Send `request`, following redirects (at most `MAX_REDIRECTS`); the final response and
        its body."""
        first = _origin(request.url)
        for _ in range(MAX_REDIRECTS + 1):
            active = tracing.tracer()
            if active is None:
                response = await self._client.send(request, stream=True)
            else:
                response = await _traced_send(active, self._client, request)
            try:
                next_request = response.next_request
                if next_request is None:
                    return response, await self._read(response)
            finally:
                await response.aclose()
            if _origin(next_request.url) != first:
                for name in custom:
                    next_request.headers.pop(name, None)
            request = next_request
        raise httpx.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects", request=request)

    async def __call__(self, settings: HttpFlowSettings, run: Run) -> Any:
        url = httpx.URL(settings.url)
        if url.scheme not in ("http", "https"):
            raise RefusedDestination(f"HTTP flows call http or https URLs, not {url.scheme!r}")
        body = render(settings.body, run)
        has_body = settings.method not in ("GET", "DELETE") or body is not None
        request = self._client.build_request(
            settings.method,
            url,
            headers={"Idempotency-Key": run.id, **settings.headers},
            json=body if has_body else None,
            timeout=settings.timeout_seconds,
        )
        response, raw = await self._send(request, settings.headers)
        try:
            content: Any = json.loads(raw)
        except (ValueError, RecursionError):
            content = raw.decode(response.encoding or "utf-8", errors="replace")[:MAX_TEXT_RESULT]
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


async def _traced_send(
    active: Tracer, client: httpx.AsyncClient, request: httpx.Request
) -> httpx.Response:
    """Send one hop of an HTTP flow's request in a client span whose trace context the request
    carries (`traceparent`), so the called service can join the run's trace."""
    attributes = {"http.request.method": request.method, "url.full": str(request.url)}
    with tracing.span(active, request.method, SpanKind.CLIENT, attributes) as current:
        tracing.inject(request.headers)
        response = await client.send(request, stream=True)
        current.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 400:
            current.set_status(StatusCode.ERROR)
        return response
