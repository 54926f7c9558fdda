"""Requests to the registry over NATS request/reply, with its errors turned into `ApiError`s."""

from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError, TimeoutError

from contracts.registry import Reply
from services.ingress.problems import ApiError
from shared.codec import decoder, encode

T = TypeVar("T")


class RegistryClient:
    def __init__(self, nc: Client, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout

    async def call(self, subject: str, request: msgspec.Struct, result: type[T]) -> T:
        """Send `request`, return the reply's result or raise its problem as an `ApiError`."""
        try:
            msg = await self._nc.request(subject, encode(request), timeout=self._timeout)
        except NoRespondersError as error:
            raise ApiError(503, "registry_unavailable", "no registry is running") from error
        except TimeoutError as error:
            raise ApiError(
                504, "registry_timeout", f"the registry did not answer in {self._timeout}s"
            ) from error
        reply: Reply[Any] = decoder(Reply[result]).decode(msg.data)  # type: ignore[valid-type]
        if reply.error is not None:
            raise ApiError.from_problem(reply.error)
        return reply.ok  # type: ignore[no-any-return]

    def tell(self, subject: str, event: msgspec.Struct) -> Any:
        """Fire-and-forget (no reply expected); returns the publish coroutine."""
        return self._nc.publish(subject, encode(event))
