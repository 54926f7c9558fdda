"""A thin client of the trigger plane's HTTP API: one method per call, decoded JSON back, one
`ApiError` (the problem document) for every refusal and `CannotConnect` when nothing answers."""

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

WAITING_TIMEOUT = 75.0
"""Read timeout of a call that may wait for its run: the server waits 60 s at most."""


class ApiError(Exception):
    """The API refused a call: its problem document (RFC 9457), or what stood in for one."""

    def __init__(self, status: int, code: str, title: str, detail: str, body: Any = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.body = body
        """The decoded answer as the API sent it (None when it was not JSON)."""

    @classmethod
    def from_response(cls, response: httpx.Response) -> "ApiError":
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "code" in body:
            return cls(
                int(body.get("status", response.status_code)),
                str(body["code"]),
                str(body.get("title", response.reason_phrase)),
                str(body.get("detail", "")),
                body,
            )
        # Not our problem document (a proxy in front of the API, say): keep what it said.
        text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        return cls(
            response.status_code,
            "http_error",
            response.reason_phrase,
            text
            or f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code} without a problem document",
            body,
        )


class CannotConnect(Exception):
    """Nothing answered at the API's URL (refused, unknown host, timed out)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot connect to {url}: {reason}")
        self.url = url
        self.reason = reason


class MissingCredential(Exception):
    """The call needs a key (or the operator token) and none is configured."""


Query = Mapping[str, str | int | float | bool | Sequence[str] | None]


class Client:
    """The HTTP API at `url`, called with `key` (a workspace API key) or, for the operator's
    calls, `operator_token`."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        operator_token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.operator_token = operator_token
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the one way every call goes --------------------------------------------------------

    def answer(
        self,
        method: str,
        path: str,
        *,
        params: Query | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        bearer: str | None = None,
        timeout: float | None = None,
        keyless: bool = False,
    ) -> httpx.Response:
        """The successful response of one call (any 2xx), else `ApiError` or `CannotConnect`."""
        sent = dict(headers or {})
        if not keyless:
            secret = bearer or self.key
            if not secret:
                raise MissingCredential(
                    "no API key: pass --key, set TP_KEY, or save one with `tp profile set --key`"
                )
            sent["Authorization"] = f"Bearer {secret}"
        if content is not None:
            sent.setdefault("Content-Type", "application/json")
        query = {name: value for name, value in (params or {}).items() if value is not None}
        try:
            response = self._http.request(
                method,
                path,
                params=query,  # a list repeats the parameter
                json=json,
                content=content,
                headers=sent,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as error:
            raise CannotConnect(self.url, _reason(error)) from error
        if response.is_success:
            return response
        raise ApiError.from_response(response)

    def call(self, method: str, path: str, **options: Any) -> Any:
        """The decoded JSON of one successful call."""
        response = self.answer(method, path, **options)
        return response.json() if response.content else None

    # --- operator ---------------------------------------------------------------------------

    def create_workspace(self, name: str) -> Any:
        if not self.operator_token:
            raise MissingCredential(
                "creating a workspace needs the operator token: pass --operator-token, set "
                "TP_OPERATOR_TOKEN (`make run` writes it to .data/operator-token), or save it "
                "with `tp profile set --operator-token`"
            )
        return self.call("POST", "/v1/workspaces", json={"name": name}, bearer=self.operator_token)

    def health(self) -> Any:
        response = self._health()
        return response.json()

    def _health(self) -> httpx.Response:
        try:
            return self._http.get("/health")
        except httpx.TransportError as error:
            raise CannotConnect(self.url, _reason(error)) from error

    # --- keys -------------------------------------------------------------------------------

    def list_keys(self, limit: int | None = None, cursor: str | None = None) -> Any:
        return self.call("GET", "/v1/keys", params={"limit": limit, "cursor": cursor})

    def create_key(self, body: Mapping[str, Any]) -> Any:
        return self.call("POST", "/v1/keys", json=body)

    def rotate_key(self, key_id: str, grace_seconds: int | None = None) -> Any:
        body = {} if grace_seconds is None else {"grace_seconds": grace_seconds}
        return self.call("POST", f"/v1/keys/{_segment(key_id)}/rotate", json=body)

    def update_key(self, key_id: str, changes: Mapping[str, Any]) -> Any:
        return self.call("PATCH", f"/v1/keys/{_segment(key_id)}", json=changes)

    def revoke_key(self, key_id: str) -> Any:
        return self.call("DELETE", f"/v1/keys/{_segment(key_id)}")

    # --- flows ------------------------------------------------------------------------------

    def list_flows(self, limit: int | None = None, cursor: str | None = None) -> Any:
        return self.call("GET", "/v1/flows", params={"limit": limit, "cursor": cursor})

    def create_flow(self, body: Mapping[str, Any]) -> Any:
        return self.call("POST", "/v1/flows", json=body)

    def get_flow(self, flow_id: str) -> Any:
        return self.call("GET", f"/v1/flows/{_segment(flow_id)}")

    def list_flow_functions(self) -> Any:
        return self.call("GET", "/v1/flow-functions")

    # --- triggers ---------------------------------------------------------------------------

    def list_triggers(
        self, flow_id: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Any:
        params = {"flow_id": flow_id, "limit": limit, "cursor": cursor}
        return self.call("GET", "/v1/triggers", params=params)

    def create_trigger(self, body: Mapping[str, Any]) -> Any:
        return self.call("POST", "/v1/triggers", json=body)

    def get_trigger(self, trigger_id: str) -> Any:
        return self.call("GET", f"/v1/triggers/{_segment(trigger_id)}")

    def update_trigger(self, trigger_id: str, changes: Mapping[str, Any]) -> Any:
        return self.call("PATCH", f"/v1/triggers/{_segment(trigger_id)}", json=changes)

    def delete_trigger(self, trigger_id: str) -> Any:
        return self.call("DELETE", f"/v1/triggers/{_segment(trigger_id)}")

    def pause_trigger(self, trigger_id: str) -> Any:
        return self.call("POST", f"/v1/triggers/{_segment(trigger_id)}/pause")

    def resume_trigger(self, trigger_id: str) -> Any:
        return self.call("POST", f"/v1/triggers/{_segment(trigger_id)}/resume")

    def preview_trigger(self, trigger_id: str, count: int | None = None) -> Any:
        path = f"/v1/triggers/{_segment(trigger_id)}/preview"
        return self.call("GET", path, params={"count": count})

    def list_trigger_fires(
        self, trigger_id: str, limit: int | None = None, cursor: str | None = None
    ) -> Any:
        path = f"/v1/triggers/{_segment(trigger_id)}/fires"
        return self.call("GET", path, params={"limit": limit, "cursor": cursor})

    def run_trigger_now(
        self,
        trigger_id: str,
        flow_input: bytes | None = None,
        *,
        overlap: str | None = None,
        prefer: str | None = None,
    ) -> tuple[int, Any]:
        """Run now: the HTTP status (200 with the result, 202 accepted) and the body."""
        response = self.answer(
            "POST",
            f"/v1/triggers/{_segment(trigger_id)}/run",
            params={"overlap": overlap},
            content=flow_input if flow_input is not None else b"",
            headers={"Prefer": prefer} if prefer else None,
            timeout=WAITING_TIMEOUT,
        )
        return response.status_code, response.json()

    def rotate_webhook_secret(self, trigger_id: str, body: Mapping[str, Any]) -> Any:
        return self.call("POST", f"/v1/triggers/{_segment(trigger_id)}/secrets", json=body)

    def list_webhook_refusals(self, trigger_id: str) -> Any:
        return self.call("GET", f"/v1/triggers/{_segment(trigger_id)}/refusals")

    # --- the API trigger --------------------------------------------------------------------

    def call_trigger(
        self,
        flow_id: str,
        flow_input: bytes | None = None,
        *,
        prefer: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, Any]:
        """`POST /trigger/{flow_id}`: the HTTP status (200 with the result, 202 accepted) and
        the body; a run that ended without success is an `ApiError` (`run_failed`, ...)."""
        headers = {}
        if prefer:
            headers["Prefer"] = prefer
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        response = self.answer(
            "POST",
            f"/trigger/{_segment(flow_id)}",
            content=flow_input if flow_input is not None else b"",
            headers=headers,
            timeout=WAITING_TIMEOUT,
        )
        return response.status_code, response.json()

    # --- runs -------------------------------------------------------------------------------

    def list_runs(
        self,
        *,
        flow_id: str | None = None,
        trigger_id: str | None = None,
        statuses: Sequence[str] = (),
        source: str | None = None,
        since: str | None = None,
        until: str | None = None,
        q: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Any:
        params: dict[str, Any] = {
            "flow_id": flow_id,
            "trigger_id": trigger_id,
            "status": list(statuses) or None,
            "source": source,
            "since": since,
            "until": until,
            "q": q,
            "limit": limit,
            "cursor": cursor,
        }
        return self.call("GET", "/v1/runs", params=params)

    def run_stats(
        self,
        *,
        flow_id: str | None = None,
        trigger_id: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> Any:
        params = {"flow_id": flow_id, "trigger_id": trigger_id, "since": since, "until": until}
        return self.call("GET", "/v1/runs/stats", params=params)

    def get_run(self, run_id: str) -> Any:
        return self.call("GET", f"/v1/runs/{_segment(run_id)}")

    def cancel_run(self, run_id: str) -> Any:
        return self.call("POST", f"/v1/runs/{_segment(run_id)}/cancel")

    # --- audit log --------------------------------------------------------------------------

    def list_audit(
        self,
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Any:
        params = {
            "resource_type": resource_type,
            "resource_id": resource_id,
            "action": action,
            "actor": actor,
            "since": since,
            "until": until,
            "limit": limit,
            "cursor": cursor,
        }
        return self.call("GET", "/v1/audit", params=params)


def _segment(value: str) -> str:
    """`value` as one path segment (an id with a slash must not reach another route)."""
    return quote(value, safe="")


def _reason(error: httpx.TransportError) -> str:
    if isinstance(error, httpx.ConnectError):
        text = str(error) or "connection failed"
        return "connection refused" if "refused" in text.lower() else text
    if isinstance(error, httpx.TimeoutException):
        return f"no answer in time ({type(error).__name__})"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
