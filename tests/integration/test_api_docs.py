"""The documentation pages work offline: every script, style and icon comes from the ingress."""

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from litestar.testing import AsyncTestClient

from services.ingress.app import create_app as create_ingress
from services.ingress.settings import IngressSettings

HttpClient = AsyncTestClient[Any]
_LINKS = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_FETCHED_BY_SCRIPT = re.compile(r"""src:\s*["'](https?://[^"']+)["']""")


@pytest.fixture(scope="module")
async def client(nats_url: str) -> AsyncIterator[HttpClient]:
    app = create_ingress(IngressSettings(nats_url=nats_url))
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.mark.parametrize("page", ["/schema", "/schema/swagger", "/schema/redoc"])
async def test_a_docs_page_loads_every_asset_from_the_ingress_itself(
    client: HttpClient, page: str
) -> None:
    response = await client.get(page)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    links = _LINKS.findall(response.text)
    assert any(link.endswith(".js") for link in links), links
    for link in links:
        if link.startswith("data:"):
            continue
        assert not urlsplit(link).netloc, f"{page} loads {link} from another host"
        asset = await client.get(link)
        assert asset.status_code == 200, link
        assert len(asset.content) > 1000, link


@pytest.mark.parametrize("page", ["/schema/swagger", "/schema/redoc"])
async def test_a_docs_page_s_scripts_fetch_no_image_or_script_from_another_host(
    client: HttpClient, page: str
) -> None:
    # Redoc's footer loads Redocly's logo from its CDN unless the bundle is served amended.
    response = await client.get(page)
    scripts = [link for link in _LINKS.findall(response.text) if link.endswith(".js")]

    fetched = []
    for script in scripts:
        fetched += _FETCHED_BY_SCRIPT.findall((await client.get(script)).text)

    assert scripts
    assert fetched == []


async def test_the_schema_document_is_served_as_json(client: HttpClient) -> None:
    response = await client.get("/schema/openapi.json")

    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.")


async def test_the_asyncapi_document_is_served_next_to_the_openapi_document(
    client: HttpClient,
) -> None:
    response = await client.get("/schema/asyncapi.json")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document["asyncapi"] == "3.0.0"
    assert document["channels"]["flowStart"]["address"] == "flow.v1.start.{workspace_id}"


async def test_a_start_documents_the_headers_swagger_must_offer_to_send(
    client: HttpClient,
) -> None:
    # Without them "Try it out" cannot ask for `202` at once nor retry safely.
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    trigger = paths["/trigger/{flow_id}"]["post"]
    run_now = paths["/v1/triggers/{trigger_id}/run"]["post"]

    def headers(operation: dict[str, Any]) -> set[str]:
        return {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}

    assert headers(trigger) == {"Prefer", "Idempotency-Key"}
    assert headers(run_now) == {"Prefer"}
    assert "422" in trigger["responses"]  # a reused Idempotency-Key with another body
