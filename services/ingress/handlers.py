"""HTTP endpoints, one Litestar controller per resource: each translates requests into registry
calls or flow starts, and back. The paths, tags, security and guards of a resource are set once on
its controller; what each route may answer is declared beside it, for the OpenAPI document."""

from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from contracts import history, subjects
from contracts import registry as api
from contracts.audit import OPERATOR
from contracts.http import (
    HealthStatus,
    RunNotSucceeded,
    RunPage,
    RunStats,
    RunSucceeded,
    StartAccepted,
)
from contracts.registry import ApiKey, OverlapPolicy
from contracts.runs import TERMINAL_STATUSES, FlowStart, Run, RunStatus, StartSource
from contracts.scheduling import DraftPreview, FirePage, SchedulePreview
from services.ingress import core, docs, front_door, operations
from services.ingress.adapters import Ingress, Unsettled, read_ledger
from services.ingress.core import draft_preview, fire_page, schedule_preview
from services.ingress.docs import BY_KEY, BY_OPERATOR, REGISTRY_ANSWERS, problems
from services.ingress.problems import PROBLEM_JSON, ApiError, body_too_large, send_problem
from shared.codec import encode
from shared.ids import is_valid_id, new_id

Limit = Annotated[
    int, QueryParameter(ge=1, le=api.MAX_LIST_LIMIT, description="Most items on one page")
]
Cursor = Annotated[
    str | None,
    QueryParameter(
        description="The `next_cursor` of the page before; none for the first page",
        pattern=api.CURSOR_PATTERN,
    ),
]
"""The position after which a page of keys, flows or triggers starts."""
RunsLimit = Annotated[
    int, QueryParameter(ge=1, le=history.MAX_RUNS_LIMIT, description="Most runs on one page")
]
RunsCursor = Annotated[
    str | None,
    QueryParameter(
        description="The `next_cursor` of the page before; none for the first page",
        pattern=history.RUNS_CURSOR_PATTERN,
    ),
]
"""The position after which a page of runs starts."""
OpaqueCursor = Annotated[
    str | None,
    QueryParameter(description="The `next_cursor` of the page before; none for the first page"),
]
"""The cursor of ledger entries (their own position format)."""
Moment = Annotated[
    str | None,
    QueryParameter(
        format="date-time",
        description="An RFC 3339 time, such as 2026-12-01T09:30:00Z (UTC without an offset)",
    ),
]


# --- dependencies ---------------------------------------------------------------------------


async def provide_admin(
    request: Request[Any, Any, Any], ingress: NamedDependency[Ingress]
) -> ApiKey:
    """The caller's key, which must be an admin key of its workspace."""
    key = await ingress.key_from(request.headers.get("authorization"), client_of(request))
    return core.require_admin(key)


async def provide_key(request: Request[Any, Any, Any], ingress: NamedDependency[Ingress]) -> ApiKey:
    """The caller's key, of any scope."""
    return await ingress.key_from(request.headers.get("authorization"), client_of(request))


def client_of(request: Request[Any, Any, Any]) -> str | None:
    """The address the request came from (the peer's: behind a proxy, the proxy's)."""
    client = request.client
    return client.host if client is not None else None


def provide_ingress(request: Request[Any, Any, Any]) -> Ingress:
    ingress: NamedDependency[Ingress] = request.app.state.ingress
    return ingress


async def answer_options(request: Request[Any, Any, Any]) -> Response[None] | None:
    """`OPTIONS` on a controller's path lists every method of the path in `Allow`.

    Litestar's own answer lists only the methods of the first handler registered for a path
    (it is built before the controller's other handlers join the route).
    """
    if request.method != "OPTIONS":
        return None
    path = next(iter(request.route_handler.paths))
    methods = next(
        (route.methods for route in request.app.routes if route.path == path), {"OPTIONS"}
    )
    return Response(content=None, status_code=204, headers={"Allow": ", ".join(sorted(methods))})


class ResourceController(Controller):
    """The routes of one resource (paths, tags and security set once per class)."""

    before_request = answer_options


class AdminController(ResourceController):
    """A resource of the workspace managed with an admin key."""

    security = BY_KEY
    dependencies = {"admin": Provide(provide_admin)}


# --- operator -------------------------------------------------------------------------------


class WorkspaceController(ResourceController):
    path = "/v1/workspaces"
    tags = ["operator"]
    security = BY_OPERATOR

    @post(
        summary="Create a workspace and its first admin key (its secret is shown only here)",
        responses=problems(400, 401, 403, 413, 422, 503, 504),
    )
    async def create_workspace(
        self,
        data: JSONBody[api.NewWorkspace],
        ingress: NamedDependency[Ingress],
        request: Request[Any, Any, Any],
    ) -> api.WorkspaceCreated:
        ingress.check_operator(request.headers.get("authorization"))
        return await ingress.registry.call(
            subjects.WORKSPACE_CREATE,
            api.CreateWorkspace(workspace=data, actor=OPERATOR),
            api.WorkspaceCreated,
        )


# --- keys -----------------------------------------------------------------------------------


class KeyController(AdminController):
    path = "/v1/keys"
    tags = ["keys"]

    @get(
        summary="List the workspace's API keys, oldest first (no secrets)",
        responses=problems(*REGISTRY_ANSWERS),
    )
    async def list_keys(
        self,
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
        limit: Limit = api.DEFAULT_LIST_LIMIT,
        cursor: Cursor = None,
    ) -> api.KeyPage:
        request = api.ListKeys(workspace_id=admin.workspace_id, limit=limit, cursor=cursor)
        return await ingress.registry.call(subjects.KEY_LIST, request, api.KeyPage)

    @post(
        summary="Create an API key (its secret is shown only here)",
        responses=problems(*REGISTRY_ANSWERS, 413, 422),
    )
    async def create_key(
        self,
        data: JSONBody[api.NewKey],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> api.IssuedKey:
        request = api.CreateKey(workspace_id=admin.workspace_id, key=data, actor=admin.id)
        return await ingress.registry.call(subjects.KEY_CREATE, request, api.IssuedKey)

    @post(
        "/{key_id:str}/rotate",
        status_code=200,
        summary="Rotate an API key: a new secret (shown only here) for the same key; the old one "
        "keeps working for `grace_seconds`",
        responses=problems(*REGISTRY_ANSWERS, 404, 413, 422),
    )
    async def rotate_key(
        self,
        key_id: FromPath[str],
        data: JSONBody[api.KeyRotation],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> api.IssuedKey:
        request = api.RotateKey(
            workspace_id=admin.workspace_id, key_id=key_id, rotation=data, actor=admin.id
        )
        issued = await ingress.registry.call(subjects.KEY_ROTATE, request, api.IssuedKey)
        await ingress.directory.catch_up()  # once we answer, this ingress takes the new secret
        return issued

    @patch(
        "/{key_id:str}",
        summary="Change an API key's expiry or the flows a trigger key may start",
        responses=problems(*REGISTRY_ANSWERS, 404, 413, 422),
    )
    async def update_key(
        self,
        key_id: FromPath[str],
        data: JSONBody[api.KeyChanges],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> api.ApiKeyView:
        request = api.UpdateKey(
            workspace_id=admin.workspace_id, key_id=key_id, changes=data, actor=admin.id
        )
        updated = await ingress.registry.call(subjects.KEY_UPDATE, request, api.ApiKeyView)
        await ingress.directory.catch_up()
        return updated

    @delete(
        "/{key_id:str}",
        status_code=200,
        summary="Revoke an API key (the last admin key cannot be revoked)",
        responses=problems(*REGISTRY_ANSWERS, 404, 409),
    )
    async def revoke_key(
        self,
        key_id: FromPath[str],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> api.ApiKeyView:
        request = api.RevokeKey(workspace_id=admin.workspace_id, key_id=key_id, actor=admin.id)
        revoked = await ingress.registry.call(subjects.KEY_REVOKE, request, api.ApiKeyView)
        await ingress.directory.catch_up()  # once we answer, this ingress refuses the key
        return revoked


# --- flows ----------------------------------------------------------------------------------


class FlowController(AdminController):
    path = "/v1/flows"
    tags = ["flows"]

    @get(summary="List the workspace's flows, oldest first", responses=problems(*REGISTRY_ANSWERS))
    async def list_flows(
        self,
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
        limit: Limit = api.DEFAULT_LIST_LIMIT,
        cursor: Cursor = None,
    ) -> api.FlowPage:
        request = api.ListFlows(workspace_id=admin.workspace_id, limit=limit, cursor=cursor)
        return await ingress.registry.call(subjects.FLOW_LIST, request, api.FlowPage)

    @post(summary="Register a flow", responses=problems(*REGISTRY_ANSWERS, 413, 422))
    async def create_flow(
        self,
        data: JSONBody[api.NewFlow],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> api.Flow:
        request = api.CreateFlow(workspace_id=admin.workspace_id, flow=data, actor=admin.id)
        return await ingress.registry.call(subjects.FLOW_CREATE, request, api.Flow)

    @get("/{flow_id:str}", summary="Get a flow", responses=problems(*REGISTRY_ANSWERS, 404))
    async def get_flow(
        self,
        flow_id: FromPath[str],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> api.Flow:
        request = api.GetFlow(workspace_id=admin.workspace_id, flow_id=flow_id)
        return await ingress.registry.call(subjects.FLOW_GET, request, api.Flow)


class FlowFunctionController(AdminController):
    path = "/v1/flow-functions"
    tags = ["flows"]

    @get(
        summary="List the flow functions the running runners serve (what python flows may use)",
        responses=problems(*REGISTRY_ANSWERS),
    )
    async def list_flow_functions(
        self, ingress: NamedDependency[Ingress], admin: NamedDependency[ApiKey]
    ) -> list[api.AnnouncedFunction]:
        return await ingress.registry.call(
            subjects.FUNCTION_LIST, api.ListFunctions(), list[api.AnnouncedFunction]
        )


# --- triggers -------------------------------------------------------------------------------


class TriggerController(AdminController):
    path = "/v1/triggers"
    tags = ["triggers"]

    @get(
        summary="List triggers, oldest first, optionally of one flow",
        responses=problems(*REGISTRY_ANSWERS),
    )
    async def list_triggers(
        self,
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
        flow_id: FromQuery[str | None] = None,
        limit: Limit = api.DEFAULT_LIST_LIMIT,
        cursor: Cursor = None,
    ) -> api.TriggerPage:
        request = api.ListTriggers(
            workspace_id=admin.workspace_id, flow_id=flow_id, limit=limit, cursor=cursor
        )
        return await ingress.registry.call(subjects.TRIGGER_LIST, request, api.TriggerPage)

    @post(summary="Create a trigger", responses=problems(*REGISTRY_ANSWERS, 404, 413, 422))
    async def create_trigger(
        self,
        data: JSONBody[api.NewTrigger],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> api.Trigger:
        request = api.CreateTrigger(workspace_id=admin.workspace_id, trigger=data, actor=admin.id)
        return await ingress.registry.call(subjects.TRIGGER_CREATE, request, api.Trigger)

    @get("/{trigger_id:str}", summary="Get a trigger", responses=problems(*REGISTRY_ANSWERS, 404))
    async def get_trigger(
        self,
        trigger_id: FromPath[str],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> api.Trigger:
        return await _trigger(ingress, admin, trigger_id)

    @patch(
        "/{trigger_id:str}",
        summary="Edit a trigger: the fields given change (a schedule is merged, RFC 7396)",
        responses=problems(*REGISTRY_ANSWERS, 404, 413, 422),
    )
    async def update_trigger(
        self,
        trigger_id: FromPath[str],
        data: JSONBody[api.TriggerChanges],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> api.Trigger:
        request = api.UpdateTrigger(
            workspace_id=admin.workspace_id, trigger_id=trigger_id, changes=data, actor=admin.id
        )
        updated = await ingress.registry.call(subjects.TRIGGER_UPDATE, request, api.Trigger)
        await ingress.directory.catch_up()
        return updated

    @delete(
        "/{trigger_id:str}",
        status_code=200,
        summary="Delete a trigger",
        responses=problems(*REGISTRY_ANSWERS, 404),
    )
    async def delete_trigger(
        self,
        trigger_id: FromPath[str],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> api.Trigger:
        request = api.DeleteTrigger(
            workspace_id=admin.workspace_id, trigger_id=trigger_id, actor=admin.id
        )
        deleted = await ingress.registry.call(subjects.TRIGGER_DELETE, request, api.Trigger)
        await ingress.directory.catch_up()
        return deleted

    @post(
        "/{trigger_id:str}/pause",
        status_code=200,
        summary="Pause a trigger",
        responses=problems(*REGISTRY_ANSWERS, 404),
    )
    async def pause_trigger(
        self,
        trigger_id: FromPath[str],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> api.Trigger:
        return await _set_enabled(ingress, admin, trigger_id, enabled=False)

    @post(
        "/{trigger_id:str}/resume",
        status_code=200,
        summary="Resume a trigger",
        responses=problems(*REGISTRY_ANSWERS, 404, 422),
    )
    async def resume_trigger(
        self,
        trigger_id: FromPath[str],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> api.Trigger:
        return await _set_enabled(ingress, admin, trigger_id, enabled=True)

    @get(
        "/{trigger_id:str}/preview",
        summary="The next N occurrences of a schedule trigger, in its time zone and in UTC",
        responses=problems(*REGISTRY_ANSWERS, 404, 409, 422),
    )
    async def preview_trigger(
        self,
        trigger_id: FromPath[str],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
        count: Annotated[int, QueryParameter(ge=1, le=100)] = 10,
    ) -> SchedulePreview:
        return schedule_preview(await _trigger(ingress, admin, trigger_id), count)

    @get(
        "/{trigger_id:str}/fires",
        summary="A schedule trigger's ledger: every fire and non-fire with its reason, newest "
        "first",
        responses=problems(*REGISTRY_ANSWERS, 404),
    )
    async def list_trigger_fires(
        self,
        trigger_id: FromPath[str],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
        limit: Limit = 50,
        cursor: OpaqueCursor = None,
    ) -> FirePage:
        trigger = await _trigger(ingress, admin, trigger_id)
        entries = await read_ledger(ingress.js, trigger.workspace_id, trigger.id)
        return fire_page(entries, limit, cursor)

    @post(
        "/{trigger_id:str}/run",
        summary="Run now: start the trigger's flow once, whatever its type or state, and answer "
        "like POST /trigger/{flow_id} (the result within the wait, else 202; Prefer applies)",
        status_code=202,
        operation_class=docs.TakesAnyJson,
        responses={
            **problems(*REGISTRY_ANSWERS, 404, 413),
            **docs.run_answers("The start is stored; the run did not end within the wait."),
        },
    )
    async def run_trigger_now(
        self,
        trigger_id: FromPath[str],
        request: Request[Any, Any, Any],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
        overlap: Annotated[
            OverlapPolicy | None,
            QueryParameter(description="Overlap policy for this start instead of the trigger's"),
        ] = None,
    ) -> Response[StartAccepted]:
        flow_input = await _json_body(request, ingress)
        trigger = await _trigger(ingress, admin, trigger_id)
        wait, applied = core.sync_wait(
            request.headers.get("prefer"), core.run_now_wait(trigger), api.MAX_SYNC_WAIT_SECONDS
        )
        return await _start(
            request,
            ingress,
            trigger,
            "manual",
            flow_input,
            overlap=overlap,
            wait=wait,
            applied=applied,
        )


async def _trigger(ingress: Ingress, admin: ApiKey, trigger_id: str) -> api.Trigger:
    request = api.GetTrigger(workspace_id=admin.workspace_id, trigger_id=trigger_id)
    return await ingress.registry.call(subjects.TRIGGER_GET, request, api.Trigger)


async def _set_enabled(
    ingress: Ingress, admin: ApiKey, trigger_id: FromPath[str], enabled: bool
) -> api.Trigger:
    request = api.SetTriggerEnabled(
        workspace_id=admin.workspace_id, trigger_id=trigger_id, enabled=enabled, actor=admin.id
    )
    trigger = await ingress.registry.call(subjects.TRIGGER_SET_ENABLED, request, api.Trigger)
    await ingress.directory.catch_up()  # once we answer, this ingress applies the change
    return trigger


class ScheduleController(AdminController):
    path = "/v1/schedules"
    tags = ["triggers"]

    @post(
        "/preview",
        status_code=200,
        summary="The next N occurrences of a schedule no trigger has yet (what a form would "
        "save), or `422 invalid_schedule` with the reason it could not be saved",
        responses=problems(*REGISTRY_ANSWERS, 413, 422),
    )
    async def preview_schedule(
        self,
        data: JSONBody[api.ScheduleBody],
        admin: NamedDependency[ApiKey],
        count: Annotated[int, QueryParameter(ge=1, le=100)] = 10,
    ) -> DraftPreview:
        return draft_preview(data, count)


# --- runs -----------------------------------------------------------------------------------


class RunController(ResourceController):
    path = "/v1/runs"
    tags = ["runs"]
    security = BY_KEY

    @get(
        summary="List runs, newest first (from the run history; see `history_lag_seconds`)",
        dependencies={"admin": Provide(provide_admin)},
        responses=problems(*docs.KEY_ANSWERS),
    )
    async def list_runs(
        self,
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
        flow_id: FromQuery[str | None] = None,
        trigger_id: FromQuery[str | None] = None,
        status: Annotated[
            list[RunStatus] | None,
            QueryParameter(description="Any of these statuses (repeat the parameter)"),
        ] = None,
        source: FromQuery[StartSource | None] = None,
        since: Moment = None,
        until: Moment = None,
        q: Annotated[
            str | None,
            QueryParameter(
                max_length=history.MAX_QUERY_LENGTH,
                description="A run id (or its beginning), an Idempotency-Key, or text in the "
                "run's error",
            ),
        ] = None,
        limit: RunsLimit = 50,
        cursor: RunsCursor = None,
    ) -> RunPage:
        """Runs queued at or after `since` and before `until`, newest first. The list comes
        from the run history, which follows the run records: `history_lag_seconds` says how
        far behind them it is (0 when caught up)."""
        query = history.ListRuns(
            workspace_id=admin.workspace_id,
            flow_id=flow_id,
            trigger_id=trigger_id,
            statuses=list(status or []),
            source=source,
            since=_moment("since", since),
            until=_moment("until", until),
            q=q or None,
            limit=limit,
            cursor=cursor,
        )
        return await ingress.list_runs(query)

    @get(
        "/stats",
        summary="Figures of the runs of a flow, a trigger or the workspace over a window",
        dependencies={"admin": Provide(provide_admin)},
        responses=problems(*docs.KEY_ANSWERS),
    )
    async def run_stats(
        self,
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
        flow_id: FromQuery[str | None] = None,
        trigger_id: FromQuery[str | None] = None,
        since: Moment = None,
        until: Moment = None,
    ) -> RunStats:
        """Counts by status, success rate, duration percentiles and runs per minute of the
        runs queued in the window (default: the 24 hours before `until`, itself default now),
        from the run history (`history_lag_seconds` as for the list)."""
        query = history.RunStatsQuery(
            workspace_id=admin.workspace_id,
            flow_id=flow_id,
            trigger_id=trigger_id,
            since=_moment("since", since),
            until=_moment("until", until),
        )
        return await ingress.run_stats(query)

    @get(
        "/{run_id:str}",
        summary="Get a run (any key of the workspace): the status URL of a start",
        dependencies={"key": Provide(provide_key)},
        responses=problems(*docs.KEY_ANSWERS[:2], 404, 429, 503, 504),
    )
    async def get_run(
        self, run_id: FromPath[str], ingress: NamedDependency[Ingress], key: NamedDependency[ApiKey]
    ) -> Run:
        return await ingress.run(key.workspace_id, run_id)

    @post(
        "/{run_id:str}/cancel",
        status_code=200,
        summary="Cancel a queued or running run",
        dependencies={"admin": Provide(provide_admin)},
        responses=problems(*docs.KEY_ANSWERS, 404, 409),
    )
    async def cancel_run(
        self,
        run_id: FromPath[str],
        ingress: NamedDependency[Ingress],
        admin: NamedDependency[ApiKey],
    ) -> Run:
        if not is_valid_id(run_id):
            raise ApiError(404, "run_not_found", f"no run {run_id!r} in this workspace")
        return await ingress.cancel(admin.workspace_id, run_id)


def _moment(name: str, text: str | None) -> datetime | None:
    """A query parameter's RFC 3339 time (UTC without an offset); a number is not a time."""
    if text is None:
        return None
    try:
        moment = msgspec.convert(text, datetime)
    except msgspec.ValidationError as error:
        raise ApiError(
            400,
            "invalid_request",
            f"`{name}` {text!r} is not a time: use RFC 3339, such as 2026-12-01T09:30:00Z",
        ) from error
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- the API trigger ------------------------------------------------------------------------


AUTHENTICATED = "api_key"
"""Where `authenticated` leaves the caller's key in the request's state."""


def authenticated(app: ASGIApp) -> ASGIApp:
    """Middleware of `POST /trigger/{flow_id}`: the caller's key, found before the framework
    builds the request, or the refusal answered at once. A flood of keys that are not valid
    lands on this route, and each refusal costs the ingress's CPU that valid calls need.

    The usual call (a known flow with an enabled API trigger, no wait, no `Idempotency-Key`,
    its whole body, as `Content-Length` gives it, in the first message, and valid JSON) is
    started and answered here too, with the same functions as `trigger_flow`: the framework's
    request, parameters and response objects cost more than the rest of the start together.
    Anything else goes on to `trigger_flow` (with the body already read handed on), which
    then decides exactly as it always did.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        ingress: Ingress = scope["litestar_app"].state.ingress
        # One pass over the headers (the server lowercases their names); the first of each
        # counts, as with the framework's `request.headers.get`.
        authorization = prefer = length = None
        plain = True  # no Idempotency-Key
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"prefer":
                if prefer is None:
                    prefer = value.decode("latin-1")
            elif name == b"content-length":
                if length is None:
                    length = value
            elif name == b"idempotency-key":
                plain = False
        state = scope.setdefault("state", {})
        found = state.get(front_door.FOUND)  # as far as the front door got, if it ran
        try:
            if found is None:
                client = scope.get("client")
                key = await ingress.key_from(authorization, client[0] if client else None)
            elif isinstance(found, Unsettled):
                key = await ingress.key_after_lookup(found)
            else:
                key = found
        except ApiError as error:
            scope[operations.PROBLEM] = error.code  # type: ignore[literal-required]
            await send_problem(send, error)  # counted as a refused start, with its code
            return
        state[AUTHENTICATED] = key
        if plain and length is not None:
            received = await _started_here(ingress, key, scope, receive, send, prefer, length)
            if received is not None:  # not the usual call: the handler takes it from here
                await app(scope, _replaying(received, receive), send)
            return
        await app(scope, receive, send)

    return middleware


async def _started_here(
    ingress: Ingress,
    key: ApiKey,
    scope: Scope,
    receive: Receive,
    send: Send,
    prefer: str | None,
    length: bytes,
) -> Message | None:
    """Start and answer the usual call (see `authenticated`); None once answered, else the
    message read from `receive` (None read: the handler decides everything as usual)."""
    flow_id = scope["path_params"]["flow_id"]
    directory = ingress.directory
    try:
        trigger = core.api_trigger_for(key, directory.flow(flow_id), directory.triggers_of(flow_id))
    except ApiError:
        return _NOTHING_READ  # maybe a stale directory: the handler catches up, or refuses
    default_wait = 0.0 if trigger.response_mode == "accepted" else trigger.sync_wait_seconds
    wait, applied = core.sync_wait(prefer, default_wait, api.MAX_SYNC_WAIT_SECONDS)
    if wait > 0:
        return _NOTHING_READ
    message = await receive()
    body = message.get("body", b"")
    # The whole body when it holds `Content-Length` bytes, whatever `more_body` says (the
    # server may still send an empty last message, which nobody needs to wait for).
    if (
        message["type"] != "http.request"
        or len(body) > ingress.settings.max_body_bytes
        or length != str(len(body)).encode()
    ):
        return message
    try:
        flow_input = core.json_body(body) if body.strip() else None
    except (ApiError, RecursionError):
        return message  # the handler answers the same refusal
    start, status_url = new_start(ingress, trigger, "api", flow_input)
    try:
        await ingress.start(start)
    except ApiError as error:
        scope[operations.PROBLEM] = error.code  # type: ignore[literal-required]
        await send_problem(send, error)
        return None
    content = encode(StartAccepted(run_id=start.run_id, status="queued", status_url=status_url))
    headers = [(b"location", status_url.encode("latin-1"))]
    if applied is not None:
        headers.append((b"preference-applied", applied.encode("latin-1")))
    headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": content, "more_body": False})
    return None


_NOTHING_READ: Message = {"type": "http.request", "body": b"", "more_body": True}
"""Marks that `_started_here` read nothing: `receive` is handed on as it is."""


def _replaying(message: Message, receive: Receive) -> Receive:
    """`receive`, giving `message` (read already) first."""
    if message is _NOTHING_READ:
        return receive
    pending = [message]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


@post(
    "/trigger/{flow_id:str}",
    tags=["trigger"],
    summary="Start a flow through its API trigger; the JSON body is the flow's input",
    description="Answers with the run's result when it ends within the trigger's "
    "`sync_wait_seconds` (or `Prefer: wait=N`), else `202` with the run id and status URL; "
    "`Prefer: respond-async` answers `202` at once. `Idempotency-Key` makes retries safe.",
    status_code=202,
    security=BY_KEY,
    operation_class=docs.StartsOnce,
    middleware=[authenticated],
    responses={
        **problems(400, 401, 403, 404, 413, 422, 429, 503),
        **docs.run_answers("The start is stored; the run did not end within the wait."),
    },
)
async def trigger_flow(
    flow_id: FromPath[str], request: Request[Any, Any, Any]
) -> Response[StartAccepted]:
    # The hot path: no dependency injection (it costs a fifth of the handler's own time).
    ingress: Ingress = request.app.state.ingress
    key: ApiKey = request.scope["state"][AUTHENTICATED]  # see `authenticated`
    directory = ingress.directory
    try:
        trigger = core.api_trigger_for(key, directory.flow(flow_id), directory.triggers_of(flow_id))
    except ApiError as error:
        if error.code not in core.MAYBE_STALE:
            raise
        await directory.catch_up()
        flow, triggers = directory.flow(flow_id), directory.triggers_of(flow_id)
        if flow is None or not triggers:
            # Still missing: ask the source (the directory may be between two watches of a
            # bucket, after a NATS restart); a miss costs a round trip, the hot path none.
            flow, triggers = await ingress.flow_and_triggers(key.workspace_id, flow_id)
        trigger = core.api_trigger_for(key, flow, triggers)
    body, flow_input = await _read_json_body(request, ingress)
    default_wait = 0.0 if trigger.response_mode == "accepted" else trigger.sync_wait_seconds
    wait, applied = core.sync_wait(
        request.headers.get("prefer"), default_wait, api.MAX_SYNC_WAIT_SECONDS
    )
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is None:
        return await _start(
            request, ingress, trigger, "api", flow_input, wait=wait, applied=applied
        )
    run_id, repeated = await ingress.claim_idempotency_key(
        key.workspace_id, idempotency_key, flow_id, body, new_id("run")
    )
    return await _start(
        request,
        ingress,
        trigger,
        "api",
        flow_input,
        wait=wait,
        applied=applied,
        run_id=run_id,
        repeated=repeated,
    )


async def _json_body(request: Request[Any, Any, Any], ingress: Ingress) -> Any:
    return (await _read_json_body(request, ingress))[1]


async def _read_json_body(request: Request[Any, Any, Any], ingress: Ingress) -> tuple[bytes, Any]:
    """The raw body and its JSON value (None for an empty body)."""
    body = await request.body()
    if len(body) > ingress.settings.max_body_bytes:
        raise body_too_large(ingress.settings.max_body_bytes)
    if not body.strip():
        return body, None
    return body, core.json_body(body)


def new_start(
    ingress: Ingress,
    trigger: api.Trigger,
    source: StartSource,
    flow_input: Any,
    overlap: OverlapPolicy | None = None,
    run_id: str | None = None,
) -> tuple[FlowStart, str]:
    """The start of a new run (or of `run_id`) of `trigger`'s flow, and its status URL."""
    run_id = run_id or new_id("run")
    start = FlowStart(
        run_id=run_id,
        workspace_id=trigger.workspace_id,
        flow_id=trigger.flow_id,
        input=flow_input,
        source=source,
        trigger_id=trigger.id,
        requested_at=datetime.now(UTC),
        overlap=overlap or trigger.overlap,
    )
    return start, f"{ingress.runs_url}{run_id}"


async def _start(
    request: Request[Any, Any, Any],
    ingress: Ingress,
    trigger: api.Trigger,
    source: StartSource,
    flow_input: Any,
    *,
    overlap: OverlapPolicy | None = None,
    wait: float = 0.0,
    applied: str | None = None,
    run_id: str | None = None,
    repeated: bool = False,
) -> Response[Any]:
    """Publish the start; answer `202` at once (`wait` 0), or wait for the run to end.

    A repeated Idempotency-Key (`repeated`) publishes the same start again: harmless (the
    runner keeps one record per run id) and it covers a first request that stored its key but
    not its start.
    """
    start, status_url = new_start(ingress, trigger, source, flow_input, overlap, run_id)
    run_id = start.run_id
    headers = {"Location": status_url}
    if applied is not None:
        headers["Preference-Applied"] = applied
    if repeated:
        try:
            known = await ingress.find_run(trigger.workspace_id, run_id)
        except Exception:  # NATS trouble: publishing the same start again is harmless
            known = None
        if known is not None and known.status in TERMINAL_STATUSES:
            return _answer(known, status_url, headers)
    status: RunStatus = "queued"
    if wait <= 0:
        await ingress.start(start)
    else:
        events = await ingress.follow(trigger.workspace_id, run_id)
        try:
            await ingress.start(start)
            latest = await ingress.wait_for_end(events, trigger.workspace_id, run_id, wait)
        finally:
            await events.unsubscribe()
        if latest is not None:
            if latest.status in TERMINAL_STATUSES:
                return _answer(latest, status_url, headers)
            status = latest.status
    accepted = StartAccepted(run_id=run_id, status=status, status_url=status_url)
    return Response(
        content=encode(accepted), status_code=202, media_type="application/json", headers=headers
    )


_NOT_SUCCEEDED: dict[str, tuple[int, str]] = {
    # 502, not 500: the flow (the upstream the ingress waited for) failed, the platform did not.
    "failed": (502, "run_failed"),
    "timed_out": (504, "run_timed_out"),
    "cancelled": (409, "run_cancelled"),
    "skipped": (409, "run_skipped"),
}


def _answer(run: Run, status_url: str, headers: dict[str, str]) -> Response[Any]:
    """The synchronous answer for a run that ended: its result, or a failure document."""
    if run.status == "succeeded":
        body = RunSucceeded(
            run_id=run.id,
            status=run.status,
            status_url=status_url,
            result=run.result,
            duration_seconds=run.duration_seconds,
        )
        return Response(
            content=encode(body), status_code=200, media_type="application/json", headers=headers
        )
    http_status, code = _NOT_SUCCEEDED[run.status]
    failure = RunNotSucceeded(
        status=http_status,
        code=code,
        title=HTTPStatus(http_status).phrase,
        detail=f"run {run.id} {run.status.replace('_', ' ')}: {run.error or 'no reason given'}",
        run_id=run.id,
        run_status=run.status,
        status_url=status_url,
        error=run.error,
    )
    return Response(
        content=encode(failure), status_code=http_status, media_type=PROBLEM_JSON, headers=headers
    )


# --- operations -----------------------------------------------------------------------------


@get(
    "/health",
    tags=["operations"],
    summary="Ready once the registry state is loaded (503 while starting or without NATS)",
    responses={
        503: ResponseSpec(
            data_container=HealthStatus,
            description="Starting, or NATS is not reachable",
            generate_examples=False,
        )
    },
)
async def health(ingress: NamedDependency[Ingress]) -> Response[HealthStatus]:
    connected = ingress.nc.is_connected
    ready = ingress.directory.ready and connected
    body = HealthStatus(status="ok" if ready else "starting", nats=connected)
    return Response(content=body, status_code=200 if ready else 503)


ROUTES = [
    WorkspaceController,
    KeyController,
    FlowController,
    FlowFunctionController,
    TriggerController,
    ScheduleController,
    RunController,
    trigger_flow,
    health,
]
