"""A command's connection: the flags given to `tp` itself, and the client and printer they make."""

import os
from dataclasses import dataclass

import httpx
import typer

from cli import config
from cli.client import Client
from cli.output import Printer


@dataclass(frozen=True)
class Connection:
    """The connection flags given to `tp` itself (None: not given)."""

    url: str | None = None
    key: str | None = None
    operator_token: str | None = None
    profile: str | None = None
    transport: httpx.BaseTransport | None = None
    """How requests travel (tests pass an `httpx.MockTransport` as the invocation's `obj`)."""

    def config(self) -> config.Config:
        flags = {"url": self.url, "key": self.key, "operator_token": self.operator_token}
        return config.resolve(flags, os.environ, self.profile)

    def api_url(self) -> str:
        """The API's URL, without a trailing slash (as the client writes it)."""
        url = self.config().url.value
        assert url is not None  # the default URL at least
        return url.rstrip("/")

    def client(self) -> Client:
        settings = self.config()
        assert settings.url.value is not None  # the default URL at least
        return Client(
            settings.url.value,
            settings.key.value,
            settings.operator_token.value,
            transport=self.transport,
        )


def connection(ctx: typer.Context) -> Connection:
    """The connection `tp`'s own options describe (set by the root's callback)."""
    given = ctx.find_root().obj
    return given if isinstance(given, Connection) else Connection()


def session(ctx: typer.Context, json_output: bool) -> tuple[Client, Printer]:
    """The client a command calls the API with (closed when the command ends) and its printer."""
    client = connection(ctx).client()
    ctx.call_on_close(client.close)
    return client, Printer(json_mode=json_output)
