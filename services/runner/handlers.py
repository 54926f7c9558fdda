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
from services.runner import metrics
from services.runner.adapters import MSG_ID, FlowLookup
from services.runner.core import RECORD_OVERHEAD, CancelRuns, StartRuns, refusal
from shared.broker import is_last_delivery, reject
from shared.codec import decode, decoder, encode
from shared.logs import bind
from shared.pull import Delivery, delivery
from shared.supervise import retried_within

log = logging.getLogger(__name__)

SERVICE = "runner"
_START = decoder(FlowStart)
"""Decodes every start (looked up once here, not on each one's path)."""
RETRY_DELAY = 2.0
"""Seconds before a message whose handling failed (not its flow: NATS trouble) comes back."""
FAIL_RUN_WITHIN = 10.0
"""Seconds the `failed` record of a start dead-lettered at its last delivery is retried."""


class StartFlow:
    """Handle `flow.v1.start.<ws>` (and the deprecated `flow.start`) messages."""

    def __init__(
        self, *, js: JetStreamContext, flows: FlowLookup, starts: StartRuns, max_deliver: int = 0
    ) -> None:
        self._js = js
        self._flows = flows
        self._starts = starts
        self._max_deliver = max_deliver

    async def __call__(self, msg: Msg, seen: Delivery | None = None) -> None:
        """Handle one message (`seen`: its delivery facts, when the caller parsed them
        already); a failure to handle it hands it back to JetStream for later."""
        try:
            await self.start_flow(msg, seen)
        except asyncio.CancelledError:
            # Stopping: let another replica take the message over now.
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception as error:
            if self._is_last_delivery(msg):
                reason = (
                    f"could not be handled in {self._max_deliver} deliveries (the consumer's "
                    f"limit, RUNNER_MAX_DELIVER); the last failure: {type(error).__name__}: {error}"
                )
                metrics.refused("max_deliver")
                with contextlib.suppress(Exception):
                    await self._end_here(msg, reason)
                    return
            log.exception("could not handle a message on %s; it will come back", msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=RETRY_DELAY)

    def _is_last_delivery(self, msg: Msg) -> bool:
        try:
            return is_last_delivery(delivery(msg).delivered, self._max_deliver)
        except ValueError:  # not a JetStream message (a test's): no limit
            return False

    async def start_flow(self, msg: Msg, seen: Delivery | None = None) -> None:
        if seen is None:
            seen = _delivery_of(msg)
        if seen is not None and is_last_delivery(seen.delivered, self._max_deliver):
            # Handed back on every delivery so far (waiting for a slot, or failing): the
            # server would never deliver it again, so it ends here, with its reason.
            reason = (
                f"delivered {self._max_deliver} times without ending (the consumer's limit, "
                "RUNNER_MAX_DELIVER)"
            )
            metrics.refused("max_deliver")
            await self._end_here(msg, reason)
            return
        try:
            start: FlowStart = _START.decode(msg.data)
        except msgspec.DecodeError as error:
            metrics.refused("undecodable")
            await reject(self._js, msg, f"not a valid FlowStart: {error}", SERVICE)
            return
        except RecursionError:
            metrics.refused("undecodable")
            await reject(self._js, msg, "not a valid FlowStart: nested too deeply", SERVICE)
            return
        # Every line logged for this start (in its own task) names its run.
        bind(run_id=start.run_id, workspace_id=start.workspace_id, trigger_id=start.trigger_id)
        reason = refusal(msg.subject, start)
        if reason:
            metrics.refused("misfiled")
            await reject(self._js, msg, reason, SERVICE)
            return
        flow = await self._flows.find(start.workspace_id, start.flow_id)
        if flow is None:
            reason = f"unknown flow {start.flow_id} in workspace {start.workspace_id}"
            metrics.refused("unknown_flow")
            await reject(self._js, msg, reason, SERVICE)
            return
        if seen is None:
            raise ValueError(f"not a JetStream delivery: {msg.reply!r}")
        if len(msg.data) + RECORD_OVERHEAD > self._starts.max_record_bytes:
            await self._starts.fail_too_large(msg, start, seen, len(msg.data))
            return
        msg_id = msg.headers.get(MSG_ID) if msg.headers else None
        await self._starts.start(msg, start, flow, seen, msg_id)

    async def _end_here(self, msg: Msg, reason: str) -> None:
        """Dead-letter a start at its last delivery; its run (if the start names one that may
        run) ends `failed` with the same reason first, so an accepted start never leaves a
        run `queued` for ever. The record's write is retried for a while: the message will not
        come back to try again."""
        start = _runnable_start(msg)
        if start is not None:
            ended = start

            async def fail_run() -> None:
                try:
                    known = await self._flows.find(ended.workspace_id, ended.flow_id) is not None
                except Exception:
                    known = False  # a record that exists is still failed
                try:
                    sequence: int | None = delivery(msg).stream_sequence
                except ValueError:  # not a JetStream message (a test's)
                    sequence = None
                await self._starts.fail_dead_lettered(
                    ended, reason, create=known, sequence=sequence
                )

            try:
                await retried_within(f"failing run {start.run_id}", fail_run, FAIL_RUN_WITHIN)
            except Exception:
                log.exception("could not record run %s failed: %s", start.run_id, reason)
        await reject(self._js, msg, reason, SERVICE)

    async def on_abort(self, msg: Msg) -> None:
        """`runner.v1.run.abort`: stop working on a run another replica cancelled."""
        with contextlib.suppress(msgspec.DecodeError):
            request: AbortRun = decode(msg.data, AbortRun)
            self._starts.abort(request.workspace_id, request.run_id)


def _delivery_of(msg: Msg) -> Delivery | None:
    try:
        return delivery(msg)
    except ValueError:  # not a JetStream message (a test's): no limit
        return None


def _runnable_start(msg: Msg) -> FlowStart | None:
    """The start `msg` holds, if it is one that may run (valid ids, its workspace's subject)."""
    try:
        start: FlowStart = decode(msg.data, FlowStart)
    except (msgspec.DecodeError, RecursionError):
        return None
    return None if refusal(msg.subject, start) else start


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
