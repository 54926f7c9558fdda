"""Request/reply between services: one client for every `Reply`-answering API (the registry's
`registry.v1.*`, the runner's `runner.v1.*`).

A reply is a `Reply` holding the result or a `Problem`; a caller gets the result, or one of
three errors that say what happened: the service answered with a problem (`RemoteProblem`), no
replica of it is running (`ServiceUnavailable`), or none answered in time (`ServiceTimeout`).
"""

from typing import Any, TypeVar, cast

import msgspec
from nats.aio.client import Client
from nats.errors import MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from contracts.registry import Problem, Reply
from shared.codec import decoder, encode

T = TypeVar("T")


class RemoteProblem(Exception):
    """The service refused the request; `problem` says why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class ServiceUnavailable(Exception):
    """No replica of the service is subscribed to the subject."""

    def __init__(self, service: str) -> None:
        super().__init__(f"no {service} is running")
        self.service = service


class ServiceTimeout(Exception):
    """No replica answered within the timeout."""

    def __init__(self, service: str, timeout: float) -> None:
        super().__init__(f"the {service} did not answer in {timeout:g}s")
        self.service = service
        self.timeout = timeout


class ServiceClient:
    """Calls one service's request/reply API."""

    def __init__(self, nc: Client, service: str, timeout: float) -> None:
        self._nc = nc
        self.service = service
        self.timeout = timeout

    async def call(self, subject: str, request: msgspec.Struct, result: type[T]) -> T:
        """Send `request` and return the reply's result (see the module for the errors)."""
        try:
            msg = await self._nc.request(subject, encode(request), timeout=self.timeout)
        except MaxPayloadError as error:
            # Larger than NATS carries in one message: no retry could send it.
            raise RemoteProblem(
                Problem(
                    status=413,
                    code="body_too_large",
                    message="the request is larger than NATS carries in one message; send less",
                )
            ) from error
        except NoRespondersError as error:
            raise ServiceUnavailable(self.service) from error
        except NatsTimeoutError as error:
            raise ServiceTimeout(self.service, self.timeout) from error
        reply: Reply[Any] = decoder(Reply[result]).decode(msg.data)  # type: ignore[valid-type]
        if reply.error is not None:
            raise RemoteProblem(reply.error)
        return cast(T, reply.ok)

    async def tell(self, subject: str, event: msgspec.Struct) -> None:
        """Fire-and-forget: publish `event` to a subject that sends no reply."""
        await self._nc.publish(subject, encode(event))
