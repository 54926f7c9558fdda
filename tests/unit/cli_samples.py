"""Sample API answers the CLI's unit tests decode and print."""

RUN = {
    "id": "run_1",
    "workspace_id": "ws_1",
    "flow_id": "flw_1",
    "status": "failed",
    "source": "api",
    "trigger_id": None,
    "queued_at": "2026-12-01T09:30:00.123456Z",
    "duration_seconds": 1.5,
    "attempts": [],
    "error": "boom",
}
PROBLEM = {
    "status": 404,
    "code": "trigger_not_found",
    "title": "Not Found",
    "detail": "no trigger 'trg_x' in this workspace",
    "type": "about:blank",
}
