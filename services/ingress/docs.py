"""The API's documentation pages: Swagger UI and Redoc, served with their scripts and styles from
an installed package (drf-spectacular-sidecar, which vendors both dists), so the pages work on a
machine without internet and load nothing from a CDN.

The sidecar package depends on Django for its own use inside Django projects; only its static
files are read here (found on disk, the package is never imported).
"""

import functools
import importlib.util
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import msgspec
from litestar import Litestar, Response, get
from litestar.enums import ParamType
from litestar.openapi import ResponseSpec
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    OpenAPIRenderPlugin,
    RedocRenderPlugin,
    SwaggerRenderPlugin,
)
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)
from litestar.router import Router
from litestar.static_files import create_static_files_router

from contracts import asyncapi, http, registry
from contracts.http import (
    ProblemDetails,
    RunNotSucceeded,
    RunSucceeded,
    StartAccepted,
    UnusableProblem,
)
from services.ingress.problems import PROBLEM_JSON

SCHEMA_PATH = "/schema"
ASSETS_PATH = f"{SCHEMA_PATH}/assets"
_ASSETS_PACKAGE = "drf_spectacular_sidecar"
# No favicon: Litestar's default one is loaded from a CDN.
_NO_FAVICON = "<link rel='icon' href='data:,'>"


def assets_directory() -> Path:
    """Where the installed sidecar package keeps the Swagger UI and Redoc dists."""
    spec = importlib.util.find_spec(_ASSETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"{_ASSETS_PACKAGE} is not installed: install the project (make install)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "static" / _ASSETS_PACKAGE


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """`/schema` and `/schema/swagger` (Swagger UI), `/schema/redoc` and `/schema/openapi.json`,
    every page's assets local."""
    swagger = f"{ASSETS_PATH}/swagger-ui-dist"
    return [
        SwaggerRenderPlugin(
            path=["/", "/swagger"],
            js_url=f"{swagger}/swagger-ui-bundle.js",
            css_url=f"{swagger}/swagger-ui.css",
            standalone_preset_js_url=f"{swagger}/swagger-ui-standalone-preset.js",
            favicon=_NO_FAVICON,
        ),
        RedocRenderPlugin(
            js_url=REDOC_JS_PATH,
            google_fonts=False,
            favicon=_NO_FAVICON,
        ),
        JsonRenderPlugin(),
    ]


def assets_router() -> Router:
    """Serves the dists' files under `/schema/assets/` (cached for a day by browsers)."""
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[assets_directory()],
        cache_control=None,
        include_in_schema=False,
        name="docs-assets",
    )


REDOC_JS_PATH = f"{SCHEMA_PATH}/redoc.standalone.js"
_REDOCLY_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
# An image of no size, so the footer's link keeps its text and shows no broken image.
_NO_IMAGE = (
    b"data:image/svg+xml,%3Csvg xmlns=%22http://www.w3.org/2000/svg%22"
    b" width=%220%22 height=%220%22/%3E"
)


@functools.cache
def _redoc_bundle() -> bytes:
    bundle = (assets_directory() / "redoc" / "bundles" / "redoc.standalone.js").read_bytes()
    # Redoc's sidebar footer always loads Redocly's logo from its CDN (no option turns it off):
    # offline that is a failed request in the console, online a call to another host.
    return bundle.replace(_REDOCLY_LOGO, _NO_IMAGE)


@get(REDOC_JS_PATH, include_in_schema=False, sync_to_thread=False, name="redoc-bundle")
def redoc_bundle() -> Response[bytes]:
    """Redoc's standalone bundle, with its one image from another host replaced."""
    return Response(
        _redoc_bundle(),
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=86400"},
    )


ASYNCAPI_PATH = f"{SCHEMA_PATH}/asyncapi.json"


@functools.cache
def _asyncapi_json() -> bytes:
    return asyncapi.render().encode()


@get(ASYNCAPI_PATH, include_in_schema=False, sync_to_thread=False, name="asyncapi")
def asyncapi_document() -> Response[bytes]:
    """The AsyncAPI 3 document of every NATS subject and message (built from `contracts/`)."""
    return Response(_asyncapi_json(), media_type="application/json")


# --- What the document says of every route: security and the answers it can give ---------

WORKSPACE_KEY = "workspaceKey"
OPERATOR_TOKEN = "operatorToken"
SECURITY_SCHEMES = {
    WORKSPACE_KEY: SecurityScheme(
        type="http",
        scheme="bearer",
        bearer_format="tpk_…",
        description="A workspace API key (`tpk_…`): admin keys manage the workspace, trigger "
        "keys may only call triggers and read one run by its id (`GET /v1/runs/{run_id}`, a "
        "start's `status_url`).",
    ),
    OPERATOR_TOKEN: SecurityScheme(
        type="http",
        scheme="bearer",
        description="The operator token the ingress was started with (`OPERATOR_TOKEN`).",
    ),
}
BY_KEY: list[SecurityRequirement] = [{WORKSPACE_KEY: []}]
BY_OPERATOR: list[SecurityRequirement] = [{OPERATOR_TOKEN: []}]

_MEANINGS = {
    400: "The request is malformed: `detail` names the field or parameter and what it may be.",
    401: "No key, a malformed key (`malformed_key`), a key that is not valid (`invalid_key`), "
    "or an expired key or rotated-out secret (`expired_key`).",
    403: "The key may not do this (`admin_key_required`, `no_api_trigger`, `operator_disabled`, "
    "`flow_not_allowed`).",
    404: "No such record in this key's workspace (another workspace's looks the same).",
    409: "The record's state does not allow it (`trigger_paused`, `last_admin_key`, …); for a "
    "start that waited, the run was cancelled (`run_cancelled`) or skipped by the overlap policy "
    "(`run_skipped`), with the run's `run_id`, `run_status`, `status_url` and `error`.",
    413: "The body is larger than `MAX_BODY_BYTES` (`detail` states the limit).",
    429: "Too many requests with API keys that are not valid, from this address or with this "
    "key (`too_many_failed_authentications`): `Retry-After` and `detail` say when to try "
    "again. Valid keys are never limited.",
    422: "Well-formed but unusable values (`invalid_schedule`, `invalid_name`, …), or a "
    "workspace limit reached (`quota_exceeded`: `quota` states the limit, the workspace's use "
    "and the setting that raises it; delete something or ask the operator).",
    503: "A service this call needs is not reachable (`registry_unavailable`, "
    "`history_unavailable`, `start_not_stored`, `nats_unavailable`): nothing changed; retry.",
    504: "A service this call needs did not answer in time (`registry_timeout`, "
    "`history_timeout`): retry; for a "
    "start that waited, the run timed out (`run_timed_out`), with the run's details as for 409.",
}


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """The problem documents (`application/problem+json`) a route may answer."""
    return {
        status: ResponseSpec(
            data_container=UnusableProblem if status == 422 else ProblemDetails,
            media_type=PROBLEM_JSON,
            description=_MEANINGS.get(status, HTTPStatus(status).phrase),
            generate_examples=False,
        )
        for status in statuses
    }


KEY_ANSWERS = (400, 401, 403, 429, 503, 504)
"""What every call with a workspace key may answer besides its own outcomes."""
REGISTRY_ANSWERS = KEY_ANSWERS
"""What every management call through the registry may answer besides its own outcomes."""

RETRY_AFTER = OpenAPIHeader(
    description="Whole seconds to wait before trying again.",
    required=True,
    schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
)


def state_retry_after(app: Litestar) -> None:
    """Say of every `429` answer that it carries `Retry-After` (a `ResponseSpec` has no
    headers of its own)."""
    for path in (app.openapi_schema.paths or {}).values():
        for operation in (path.get, path.post, path.put, path.patch, path.delete):
            response = (operation.responses or {}).get("429") if operation else None
            if isinstance(response, OpenAPIResponse):
                response.headers = {"Retry-After": RETRY_AFTER}


PREFER = Parameter(
    name="Prefer",
    param_in=ParamType.HEADER,
    required=False,
    description="`respond-async`: answer `202` at once; `wait=N`: wait up to N seconds (at most "
    "60) for the run's result instead of the trigger's `sync_wait_seconds`.",
    schema=Schema(type=OpenAPIType.STRING, examples=["respond-async", "wait=5"]),
)
IDEMPOTENCY_KEY = Parameter(
    name="Idempotency-Key",
    param_in=ParamType.HEADER,
    required=False,
    description="A retry with the same key and body answers for the same run (never a second "
    "start); the same key with another body is `422 idempotency_key_reused`.",
    schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=255),
)


@dataclass
class TakesAnyJson(Operation):
    """An operation whose body is any JSON value, read raw by the handler (the flow's input),
    and that waits for its run as `Prefer` says: documented here because the handler reads
    both from the raw request."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            description="Any JSON value, the flow's input; no body is input `null`.",
            required=False,
            content={"application/json": OpenAPIMediaType(schema=Schema())},
        )
        self.parameters = [*(self.parameters or []), PREFER]


@dataclass
class StartsOnce(TakesAnyJson):
    """`POST /trigger/{flow_id}`: also takes an `Idempotency-Key`, so that Swagger's "Try it
    out" can send one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.parameters = [*(self.parameters or []), IDEMPOTENCY_KEY]


def run_answers(accepted_description: str) -> dict[int, ResponseSpec]:
    """The answers of a start that may wait for its run: the result, a problem of the run, or
    `202` when it did not end within the wait."""
    return {
        200: ResponseSpec(
            data_container=RunSucceeded,
            description="The run succeeded within the wait: its result.",
            generate_examples=False,
        ),
        202: ResponseSpec(
            data_container=StartAccepted,
            description=accepted_description,
            generate_examples=False,
        ),
        502: ResponseSpec(
            data_container=RunNotSucceeded,
            media_type=PROBLEM_JSON,
            description="The run failed (`run_failed`): the flow failed, not the platform. "
            "The run is not started again.",
            generate_examples=False,
        ),
        **problems(409, 504),
    }


_BOUNDS = {
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusiveMinimum": "exclusive_minimum",
    "exclusiveMaximum": "exclusive_maximum",
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
}
"""JSON Schema bounds msgspec states, by the name of Litestar's `Schema` attribute."""


def close_strict_bodies(app: Litestar) -> None:
    """Make the document say of every request body what the server enforces, where Litestar's
    schema of a msgspec Struct leaves it out: `additionalProperties: false` for a body that
    refuses unknown fields, and bounds of 0 (`ge=0`) or of optional PATCH fields, which it
    drops. The bounds are msgspec's own JSON Schema of the struct."""
    openapi = app.openapi_schema
    schemas = openapi.components.schemas or {}
    for module in (registry, http):
        for name, value in vars(module).items():
            strict = (
                isinstance(value, type)
                and issubclass(value, msgspec.Struct)
                and value.__struct_config__.forbid_unknown_fields
            )
            schema = schemas.get(name)
            if not strict or not isinstance(schema, Schema):
                continue
            schema.additional_properties = False
            _copy_bounds(value, schema)


def _copy_bounds(struct: type[msgspec.Struct], schema: Schema) -> None:
    own = msgspec.json.schema(struct)
    properties = own.get("$defs", {}).get(struct.__name__, own).get("properties", {})
    for field, stated in (schema.properties or {}).items():
        if not isinstance(stated, Schema):
            continue
        for key, attribute in _BOUNDS.items():
            bound = properties.get(field, {}).get(key)
            if bound is not None:
                setattr(stated, attribute, bound)
