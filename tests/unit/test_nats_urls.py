"""`NATS_URL` names one server or a cluster's nodes, comma-separated."""

import pytest

from shared.broker import server_urls


def test_one_url_is_one_server() -> None:
    assert server_urls("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]


def test_a_comma_separated_list_names_every_node_in_order() -> None:
    urls = server_urls(" nats://a:4222, nats://b:4222 ,tls://c:4222,")

    assert urls == ["nats://a:4222", "nats://b:4222", "tls://c:4222"]


@pytest.mark.parametrize("url", ["", " , "])
def test_an_empty_list_is_refused_with_the_expected_form(url: str) -> None:
    with pytest.raises(ValueError, match=r"nats://host:4222"):
        server_urls(url)


def test_an_unknown_scheme_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"'http://a:4222'.*nats://"):
        server_urls("nats://b:4222,http://a:4222")
