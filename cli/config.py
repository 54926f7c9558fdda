"""Where `tp` finds the API's URL and the credentials: a flag, else the environment, else the
profile file, else the default URL; and the profile file itself (TOML, mode 0600)."""

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"
"""The ingress's default address (`INGRESS_HOST` 127.0.0.1, `INGRESS_PORT` 8000)."""
DEFAULT_PROFILE = "default"
FIELDS = ("url", "key", "operator_token")
ENVIRONMENT = {"url": "TP_URL", "key": "TP_KEY", "operator_token": "TP_OPERATOR_TOKEN"}
PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ConfigError(Exception):
    """The configuration cannot be used (an unknown profile, an unreadable file)."""


@dataclass(frozen=True)
class Setting:
    value: str | None
    source: str
    """Where the value came from: `--url`, `TP_URL`, `profile default`, `default`, `unset`."""


@dataclass(frozen=True)
class Config:
    url: Setting
    key: Setting
    operator_token: Setting
    profile: str
    path: Path


def config_path(environ: Mapping[str, str]) -> Path:
    """`TP_CONFIG`, else `$XDG_CONFIG_HOME/tp/config.toml`, else `~/.config/tp/config.toml`."""
    if environ.get("TP_CONFIG"):
        return Path(environ["TP_CONFIG"]).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tp" / "config.toml"


def read_profiles(path: Path) -> dict[str, dict[str, str]]:
    """Every profile of the file (none when it does not exist)."""
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read the profile file {path}: {error}") from error
    return {
        name: {field: str(value) for field, value in table.items() if field in FIELDS}
        for name, table in document.items()
        if isinstance(table, dict)
    }


def write_profile(path: Path, name: str, values: Mapping[str, str | None]) -> dict[str, str]:
    """Merge `values` into profile `name` (a None value leaves the field as it is, an empty one
    removes it) and write the file readable by its owner only; the profile as written."""
    check_profile_name(name)
    profiles = read_profiles(path)
    profile = dict(profiles.get(name, {}))
    for field, value in values.items():
        if field not in FIELDS:
            raise ConfigError(f"a profile has no field {field!r} (fields: {', '.join(FIELDS)})")
        if value is None:
            continue
        if value:
            profile[field] = value
        else:
            profile.pop(field, None)
    profiles[name] = profile
    _write(path, profiles)
    return profile


def delete_profile(path: Path, name: str) -> None:
    profiles = read_profiles(path)
    if name not in profiles:
        raise ConfigError(f"no profile {name!r} in {path}")
    del profiles[name]
    _write(path, profiles)


def check_profile_name(name: str) -> None:
    if not PROFILE_NAME.fullmatch(name):
        raise ConfigError(
            f"profile name {name!r}: use letters, digits, `-` and `_` (at most 64 characters)"
        )


def _write(path: Path, profiles: Mapping[str, Mapping[str, str]]) -> None:
    lines = ["# Profiles of `tp` (written by `tp profile set` and `tp login`). It holds API keys:"]
    lines.append("# keep it readable by you only (mode 0600).")
    for name, profile in profiles.items():
        lines.append("")
        lines.append(f"[{name}]")
        # A JSON string is a TOML basic string (the same escapes).
        lines.extend(
            f"{field} = {json.dumps(profile[field])}" for field in FIELDS if field in profile
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Created 0600 from the start: the secret is never readable by others, not even briefly.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as out:
            out.write("\n".join(lines) + "\n")
        os.chmod(temporary, 0o600)  # whatever the umask or an existing file's mode was
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def resolve(
    flags: Mapping[str, str | None], environ: Mapping[str, str], profile: str | None = None
) -> Config:
    """Each setting from the first place that has it: flag > environment > profile > default.

    `profile` (the `--profile` flag), else `TP_PROFILE`, names the profile; a profile named
    that way must exist. Without either, the `default` profile is read if there is one.
    """
    path = config_path(environ)
    named = profile or environ.get("TP_PROFILE") or None
    name = named or DEFAULT_PROFILE
    profiles = read_profiles(path)
    if named is not None and named not in profiles:
        known = ", ".join(sorted(profiles)) or "none yet"
        raise ConfigError(
            f"no profile {named!r} in {path} (profiles: {known}); create it with "
            f"`tp profile set {named} --url ... --key ...`"
        )
    stored = profiles.get(name, {})

    def setting(field: str) -> Setting:
        flag = flags.get(field)
        if flag:
            return Setting(flag, "--" + field.replace("_", "-"))
        variable = ENVIRONMENT[field]
        if environ.get(variable):
            return Setting(environ[variable], variable)
        if stored.get(field):
            return Setting(stored[field], f"profile {name}")
        if field == "url":
            return Setting(DEFAULT_URL, "default")
        return Setting(None, "unset")

    return Config(
        url=setting("url"),
        key=setting("key"),
        operator_token=setting("operator_token"),
        profile=name,
        path=path,
    )


def masked(secret: str | None) -> str:
    """A secret as it may be shown: its first characters only."""
    if not secret:
        return "-"
    return secret[:8] + "…" if len(secret) > 8 else "…"
