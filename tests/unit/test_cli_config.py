"""`tp`'s settings: flag > environment > profile > default, and the profile file it writes."""

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import config
from cli.app import app, hoist_global_options
from services.ingress.settings import IngressSettings


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    return write(
        tmp_path / "config.toml",
        '[default]\nurl = "http://profile:1"\nkey = "tpk_profile"\noperator_token = "op-profile"\n'
        '\n[staging]\nurl = "http://staging:2"\nkey = "tpk_staging"\n',
    )


def test_a_flag_wins_over_the_environment_and_the_profile(profile_file: Path) -> None:
    environ = {"TP_CONFIG": str(profile_file), "TP_URL": "http://env:3", "TP_KEY": "tpk_env"}
    settings = config.resolve({"url": "http://flag:4", "key": "tpk_flag"}, environ)
    assert (settings.url.value, settings.url.source) == ("http://flag:4", "--url")
    assert (settings.key.value, settings.key.source) == ("tpk_flag", "--key")


def test_the_environment_wins_over_the_profile(profile_file: Path) -> None:
    environ = {"TP_CONFIG": str(profile_file), "TP_KEY": "tpk_env", "TP_OPERATOR_TOKEN": "op-env"}
    settings = config.resolve({}, environ)
    assert (settings.key.value, settings.key.source) == ("tpk_env", "TP_KEY")
    assert settings.operator_token.value == "op-env"
    assert (settings.url.value, settings.url.source) == ("http://profile:1", "profile default")


def test_the_profile_fills_what_flags_and_the_environment_leave(profile_file: Path) -> None:
    settings = config.resolve({"url": None}, {"TP_CONFIG": str(profile_file)}, "staging")
    assert settings.url.value == "http://staging:2"
    assert settings.key.value == "tpk_staging"
    assert settings.operator_token.value is None
    assert settings.profile == "staging"


def test_tp_profile_names_the_profile_and_the_flag_wins_over_it(profile_file: Path) -> None:
    environ = {"TP_CONFIG": str(profile_file), "TP_PROFILE": "staging"}
    assert config.resolve({}, environ).key.value == "tpk_staging"
    assert config.resolve({}, environ, "default").key.value == "tpk_profile"


def test_a_named_profile_that_does_not_exist_is_an_error(profile_file: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"no profile 'prod'.*default, staging"):
        config.resolve({}, {"TP_CONFIG": str(profile_file)}, "prod")


def test_without_any_setting_the_url_is_the_ingress_default_address(tmp_path: Path) -> None:
    settings = config.resolve({}, {"TP_CONFIG": str(tmp_path / "none.toml")})
    assert (settings.url.value, settings.url.source) == (config.DEFAULT_URL, "default")
    assert settings.url.value == IngressSettings().base_url
    assert settings.key.value is None


def test_the_profile_file_is_found_under_xdg_config_home_without_tp_config(
    tmp_path: Path,
) -> None:
    assert config.config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "tp/config.toml"
    assert config.config_path({"TP_CONFIG": "/x/y.toml"}) == Path("/x/y.toml")


def test_a_written_profile_is_readable_by_its_owner_only_even_over_an_open_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tp/config.toml"
    path.parent.mkdir()
    path.write_text('[old]\nurl = "http://old"\n')
    path.chmod(0o644)
    config.write_profile(path, "default", {"url": "http://a", "key": "tpk_secret"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.read_profiles(path) == {
        "old": {"url": "http://old"},
        "default": {"url": "http://a", "key": "tpk_secret"},
    }


def test_setting_a_profile_merges_and_an_empty_value_removes_a_field(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    config.write_profile(path, "p", {"url": "http://a", "key": "tpk_1", "operator_token": "op"})
    config.write_profile(path, "p", {"key": "tpk_2", "operator_token": "", "url": None})
    assert config.read_profiles(path)["p"] == {"url": "http://a", "key": "tpk_2"}


def test_values_with_quotes_and_backslashes_survive_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    odd = 'op"\\token\twith é'
    config.write_profile(path, "p", {"operator_token": odd})
    assert config.read_profiles(path)["p"]["operator_token"] == odd


def test_a_profile_name_that_toml_cannot_hold_bare_is_refused(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="profile name"):
        config.write_profile(tmp_path / "c.toml", "a b]", {"url": "http://a"})


def test_an_unreadable_profile_file_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path / "config.toml", "[default\nurl=")
    result = CliRunner().invoke(app, ["flows", "list"], env={"TP_CONFIG": str(path)})
    assert result.exit_code == 2
    assert str(path) in result.stderr


def test_profile_set_then_show_tells_where_each_setting_comes_from(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    runner = CliRunner()
    environ = {"TP_CONFIG": str(path), "TP_URL": None, "TP_KEY": None, "TP_PROFILE": None}
    set_ = ["profile", "set", "work", "--url", "http://work:9", "--key", "tpk_abcdefghijkl"]
    assert runner.invoke(app, set_, env=environ).exit_code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    shown = runner.invoke(app, ["profile", "show", "work", "--json"], env=environ)
    assert shown.exit_code == 0, shown.stderr
    assert '"from": "profile work"' in shown.stdout
    assert "tpk_abcdefghijkl" not in shown.stdout  # the key is shortened
    with_env = runner.invoke(
        app, ["profile", "show", "work"], env={**environ, "TP_URL": "http://env:1"}
    )
    assert "http://env:1" in with_env.stdout
    assert "TP_URL" in with_env.stdout
    listed = runner.invoke(app, ["profile", "list"], env=environ)
    assert "work" in listed.stdout
    assert "http://work:9" in listed.stdout


def test_connection_options_after_the_command_reach_tp_itself() -> None:
    assert hoist_global_options(["runs", "list", "--key", "K", "--status", "failed"]) == [
        "--key",
        "K",
        "runs",
        "list",
        "--status",
        "failed",
    ]
    assert hoist_global_options(["call", "f", "--url=http://x", "-i", "{}"]) == [
        "--url=http://x",
        "call",
        "f",
        "-i",
        "{}",
    ]
    assert hoist_global_options(["call", "f", "--", "--key", "K"]) == [
        "call",
        "f",
        "--",
        "--key",
        "K",
    ]


def test_the_options_of_profile_and_login_stay_theirs() -> None:
    line = ["profile", "set", "p", "--url", "http://x", "--key", "K"]
    assert hoist_global_options(line) == line
    assert hoist_global_options(["login", "--key", "K"]) == ["login", "--key", "K"]
