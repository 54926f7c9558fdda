"""Thin handlers between NATS and the runner's core: decode a message, refuse it or hand it to
`core`, answer. The guarantees they keep are described in `core`."""

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts.registry import Problem, Reply
from contracts.runs import AbortRun, CancelRun, FlowStart, Run
from services.runner.adapters import MSG_ID, FlowLookup
from services.runner.core import CancelRuns, StartRuns, refusal
from shared.broker import reject
from shared.codec import decode, encode
from shared.pull import delivery

log = logging.getLogger(__name__)

SERVICE = "runner"
RETRY_DELAY = 2.0
"""Seconds before a message whose handling failed (not its flow: NATS trouble) comes back."""


class StartFlow:
    """Handle `flow.v1.start.<ws>` (and the deprecated `flow.start`) messages."""

    def __init__(self, *, js: JetStreamContext, flows: FlowLookup, starts: StartRuns) -> None:
        self._js = js
        self._flows = flows
        self._starts = starts

    async def __call__(self, msg: Msg) -> None:
        """Handle one message; a failure to handle it hands it back to JetStream for later."""
        try:
            await self.start_flow(msg)
        except asyncio.CancelledError:
            # Stopping: let another replica take the message over now.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception:
            log.exception("could not handle a message on %s; it will come back", msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=RETRY_DELAY)

    async def start_flow(self, msg: Msg) -> None:
        try:
            start: FlowStart = decode(msg.data, FlowStart)
        except msgspec.DecodeError as error:
            await reject(self._js, msg, f"not a valid FlowStart: {error}", SERVICE)
            return
        reason = refusal(msg.subject, start)
        if reason:
            await reject(self._js, msg, reason, SERVICE)
            return
        flow = await self._flows.find(start.workspace_id, start.flow_id)
        if flow is None:
            reason = f"unknown flow {start.flow_id} in workspace {start.workspace_id}"
            await reject(self._js, msg, reason, SERVICE)
            return
        msg_id = msg.headers.get(MSG_ID) if msg.headers else None
        await self._starts.start(msg, start, flow, delivery(msg), msg_id)

    async def on_abort(self, msg: Msg) -> None:
        """`runner.v1.run.abort`: stop working on a run another replica cancelled."""
        with contextlib.suppress(msgspec.DecodeError):
            request: AbortRun = decode(msg.data, AbortRun)
            self._starts.abort(request.workspace_id, request.run_id)


class CancelRequests:
    """Answer `runner.v1.run.cancel` requests."""

    def __init__(self, cancel_runs: CancelRuns) -> None:
        self._cancel_runs = cancel_runs

    async def on_request(self, msg: Msg) -> None:
        """Answer a `CancelRun` with `Reply[Run]`."""
        reply: Reply[Run]
        try:
            request: CancelRun = decode(msg.data, CancelRun)
        except msgspec.DecodeError as error:
            reply = Reply(error=Problem(status=422, code="invalid_request", message=str(error)))
        else:
            try:
                outcome = await self._cancel_runs.cancel(
                    request.workspace_id, request.run_id, request.reason
                )
            except Exception:
                log.exception("could not cancel run %s", request.run_id)
                outcome = Problem(
                    status=500, code="runner_error", message="the runner failed; see its log"
                )
            reply = Reply(error=outcome) if isinstance(outcome, Problem) else Reply(ok=outcome)
        if msg.reply:
            await msg.respond(encode(reply))
