"""`tp profile` and `tp login`: the profiles of the config file (URL, key, operator token)."""

import os
from typing import Annotated

import typer

from cli import config
from cli.client import ApiError, Client
from cli.options import JsonOutput, UsageProblem
from cli.output import Column, Printer
from cli.session import connection

app = typer.Typer(help="Profiles in the config file (URL, key, operator token).")
login_app = typer.Typer()
"""`tp login`, which stands at the top of `tp`."""

PROFILE_COLUMNS = [
    Column("NAME", "name"),
    Column("URL", "url"),
    Column("KEY", "key"),
    Column("OPERATOR TOKEN", "operator_token"),
]


ProfileName = Annotated[
    str | None, typer.Argument(help="The profile's name (default: TP_PROFILE, else default).")
]


def _profile_name(name: str | None) -> str:
    return name or os.environ.get("TP_PROFILE") or config.DEFAULT_PROFILE


@app.command("set")
def set_profile(
    name: ProfileName = None,
    url: Annotated[str | None, typer.Option(help="The API's URL.")] = None,
    key: Annotated[str | None, typer.Option(help="A workspace API key ('' removes it).")] = None,
    operator_token: Annotated[
        str | None, typer.Option(help="The operator token ('' removes it).")
    ] = None,
) -> None:
    """Save settings in a profile (the file is written readable by you only, mode 0600)."""
    if url is None and key is None and operator_token is None:
        raise UsageProblem("nothing to save: give --url, --key or --operator-token")
    path = config.config_path(os.environ)
    profile = _profile_name(name)
    config.write_profile(path, profile, {"url": url, "key": key, "operator_token": operator_token})
    Printer().note(f"saved profile {profile!r} in {path}")


@app.command("list")
def list_profiles(json_output: JsonOutput = False) -> None:
    """List the profiles (secrets shortened)."""
    path = config.config_path(os.environ)
    profiles = config.read_profiles(path)
    rows = [
        {
            "name": name,
            "url": values.get("url"),
            "key": config.masked(values.get("key")),
            "operator_token": config.masked(values.get("operator_token")),
        }
        for name, values in profiles.items()
    ]
    printer = Printer(json_mode=json_output)
    if json_output:
        printer.json(rows)
        return
    printer.table(PROFILE_COLUMNS, rows)
    printer.note(f"profiles in {path}")


@app.command("show")
def show_profile(name: ProfileName = None, json_output: JsonOutput = False) -> None:
    """The settings a command would use now, and where each comes from."""
    settings = config.resolve({}, os.environ, name)
    rows = [
        ("profile", settings.profile, str(settings.path)),
        ("url", settings.url.value, settings.url.source),
        ("key", config.masked(settings.key.value), settings.key.source),
        (
            "operator_token",
            config.masked(settings.operator_token.value),
            settings.operator_token.source,
        ),
    ]
    printer = Printer(json_mode=json_output)
    if json_output:
        printer.json({name: {"value": value, "from": source} for name, value, source in rows})
        return
    printer.table(
        [Column("SETTING", "setting"), Column("VALUE", "value"), Column("FROM", "source")],
        [{"setting": name, "value": value, "source": source} for name, value, source in rows],
    )


@app.command("delete")
def delete_profile(name: Annotated[str, typer.Argument(help="The profile to delete.")]) -> None:
    """Delete a profile from the file."""
    path = config.config_path(os.environ)
    config.delete_profile(path, name)
    Printer().note(f"deleted profile {name!r} from {path}")


@login_app.command("login")
def login(
    ctx: typer.Context,
    name: ProfileName = None,
    url: Annotated[str | None, typer.Option(help="The API's URL (default: the profile's).")] = None,
    key: Annotated[
        str | None, typer.Option(help="The API key (asked for, hidden, when not given).")
    ] = None,
) -> None:
    """Check an API key against the API, then save it (and the URL) in a profile."""
    path = config.config_path(os.environ)
    profile = _profile_name(name)
    stored = config.read_profiles(path).get(profile, {})
    target = url or os.environ.get("TP_URL") or stored.get("url") or config.DEFAULT_URL
    secret = key or typer.prompt("API key", hide_input=True)
    printer = Printer()
    with Client(target, secret, transport=connection(ctx).transport) as client:
        try:
            client.list_keys(limit=1)
            kind = "an admin key"
        except ApiError as error:
            if error.code != "admin_key_required" and error.status != 403:
                raise
            kind = "a trigger key (it calls triggers and reads runs)"
    config.write_profile(path, profile, {"url": target, "key": secret})
    printer.note(f"{kind} of {target}: saved as profile {profile!r} in {path}")
