"""Settings from environment variables: names, defaults, conversion and clear refusals."""

import msgspec
import pytest

from services.ingress.settings import IngressSettings
from services.registry.settings import RegistrySettings
from shared.settings import SettingsError, from_environment


class ExampleSettings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    batch_size: int = 64
    retry_delay: float = 1.0
    label: str = "default"


def test_each_field_is_read_from_the_upper_case_environment_variable() -> None:
    settings = from_environment(
        ExampleSettings,
        {"NATS_URL": "nats://nats:4222", "BATCH_SIZE": "8", "RETRY_DELAY": "0.25", "LABEL": "x"},
    )

    assert settings == ExampleSettings(
        nats_url="nats://nats:4222", batch_size=8, retry_delay=0.25, label="x"
    )


def test_unset_and_empty_variables_keep_the_defaults() -> None:
    settings = from_environment(ExampleSettings, {"BATCH_SIZE": "", "LABEL": ""})

    assert settings == ExampleSettings()


def test_variables_with_other_names_are_ignored() -> None:
    settings = from_environment(
        ExampleSettings, {"nats_url": "nats://lower:1", "NATSURL": "nats://typo:1", "HOME": "/"}
    )

    assert settings == ExampleSettings()


def test_ints_and_floats_are_converted() -> None:
    settings = from_environment(IngressSettings, {"INGRESS_PORT": "8080", "REGISTRY_TIMEOUT": "2"})

    assert settings.ingress_port == 8080
    assert isinstance(settings.ingress_port, int)
    assert settings.registry_timeout == 2.0
    assert isinstance(settings.registry_timeout, float)


def test_the_process_environment_is_read_when_none_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NATS_URL", "nats://from-env:4222")
    monkeypatch.setenv("NATS_REPLICAS", "3")

    settings = from_environment(RegistrySettings)

    assert settings == RegistrySettings(nats_url="nats://from-env:4222", nats_replicas=3)


def test_a_bad_int_is_a_settings_error_naming_the_variable_and_its_value() -> None:
    with pytest.raises(SettingsError) as caught:
        from_environment(IngressSettings, {"INGRESS_PORT": "eighty"})

    message = str(caught.value)
    assert "INGRESS_PORT" in message
    assert "eighty" in message
    assert "int" in message


def test_a_bad_float_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="REGISTRY_TIMEOUT"):
        from_environment(IngressSettings, {"REGISTRY_TIMEOUT": "soon"})


def test_a_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)
