"""The caller's side of RouterService's failover contract, for whoever streams generations
(the gateway): route, try the candidates in order, report every attempt.

- A route that finds no candidate fails at once, with no attempt made, as the router answered
  it: FAILED_PRECONDITION (NO_ELIGIBLE_MODEL) when no model could serve the request as it is,
  UNAVAILABLE (BACKEND_UNAVAILABLE, `RetryInfo` until the next health probe or circuit
  half-open) when models could but their backends are all out. Only the second is worth
  retrying.
- A failure before the first token (the backend is down, overloaded or broken) moves on to the
  next candidate; the caller sees it only in `RoutedStream.attempts`.
- A failure after tokens have streamed is not retried: the stream ends with UNAVAILABLE
  (STREAM_INTERRUPTED), and the tokens already sent are in the error's metadata and in
  `RoutedStream.usage`.
- A problem with the request itself (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ...) or
  the caller's own cancellation or deadline ends it at once: no other backend would do better.
- An output constraint goes only to the candidates whose model can follow it (`constrains`);
  one that a backend refuses before the first token (INVALID_ARGUMENT on `constraint`: the
  engine cannot compile that schema; FAILED_PRECONDITION naming `constraint`: the model's
  settings and its engine disagree) is dropped, and the same candidate is tried again without
  it: the caller checks the output itself, so constraining is an optimisation, never a reason
  to fail. The refused attempt is in `RoutedStream.attempts` and the log.
- A caller that stops reading early (its own stop sequence or length limit matched) ends the
  attempt there: it counts as served, with the tokens streamed so far.
- Every attempt is reported with `ReportOutcome` (best effort: a router that cannot take the
  report never fails the generation).
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from genai.common.v1 import generation_pb2
from genai.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from genai.router.v1 import router_pb2, router_service_pb2, router_service_pb2_grpc

from services.common import reasons
from services.common.deadlines import time_until
from services.common.errors import Unavailable
from services.common.status import error_details
from services.common.wire import duration

if TYPE_CHECKING:
    RouterStub = router_service_pb2_grpc.RouterServiceAsyncStub
    InferenceStub = inference_service_pb2_grpc.InferenceServiceAsyncStub
else:
    RouterStub = router_service_pb2_grpc.RouterServiceStub
    InferenceStub = inference_service_pb2_grpc.InferenceServiceStub

_logger = logging.getLogger(__name__)
RETRY_AFTER_S = 1.0

_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
"""Before the first token, these mean "this backend cannot serve it now": try the next."""

rpb = router_service_pb2


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try on one candidate."""

    model: str
    backend_id: str
    result: router_service_pb2.AttemptResult
    error: str = ""


@dataclass
class RoutedStream:
    """What a routed generation did: its decision, every attempt, and the tokens streamed."""

    decision: router_pb2.RouteDecision | None = None
    attempts: list[Attempt] = field(default_factory=list)
    usage: generation_pb2.TokenUsage = field(default_factory=generation_pb2.TokenUsage)
    metadata: tuple[tuple[str, str], ...] = ()
    """Metadata sent with every call of the generation (reports included)."""
    constrained: bool = False
    """Whether the attempt that streamed decoded under the request's constraint (from its
    final message)."""


class RoutedGenerator:
    """Streams generations through the router's candidates (see the module docstring)."""

    def __init__(
        self,
        router: RouterStub,
        inference: InferenceStub,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._router = router
        self._inference = inference
        self._clock = clock

    async def stream(
        self,
        request: inference_service_pb2.GenerateStreamRequest,
        route: router_service_pb2.RouteRequest,
        record: RoutedStream,
        *,
        time_left: float | None = None,
        decision: router_pb2.RouteDecision | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        constrains: Callable[[str], Awaitable[bool]] | None = None,
    ) -> AsyncGenerator[inference_service_pb2.GenerateStreamResponse]:
        """Yields the messages of the attempt that streams (start, deltas, final), recording
        the decision, attempts and usage in `record`. Raises the router's errors as
        `grpc.aio.AioRpcError` (FAILED_PRECONDITION NO_ELIGIBLE_MODEL, UNAVAILABLE
        BACKEND_UNAVAILABLE: see the module docstring), and `Unavailable` when every candidate
        failed or the stream broke after its first token.
        `time_left` (seconds) bounds the whole generation, failovers included; `decision`, when
        the caller routed already (see `route`), skips the `Route` call; `metadata` goes with
        every call. Closing the iterator early cancels the backend's generation. When
        `request` has a `constraint`, `constrains(model)` says which candidates get it (None:
        every candidate); see the module docstring for a constraint a backend refuses."""
        deadline = None if time_left is None else self._clock() + time_left
        record.metadata = tuple(metadata)
        if decision is None:
            decision = await self.route(route, time_left=time_left, metadata=metadata)
        record.decision = decision
        constrained = request.HasField("constraint")
        # (candidate, whether to send the constraint); a refused constraint puts its candidate
        # back in front, without it.
        plan = deque((candidate, constrained) for candidate in decision.candidates)
        while plan:
            candidate, constrain = plan.popleft()
            if constrain and constrains is not None:
                constrain = await constrains(candidate.model)
            attempt = inference_service_pb2.GenerateStreamRequest()
            attempt.CopyFrom(request)
            attempt.model = candidate.model
            attempt.backend_id = candidate.backend.id
            if not constrain:
                attempt.ClearField("constraint")
            started = self._clock()
            first_token: float | None = None
            output_tokens = 0
            call = self._inference.GenerateStream(
                attempt, timeout=time_until(deadline, self._clock), metadata=metadata or None
            )
            try:
                async for message in call:
                    kind = message.WhichOneof("event")
                    if kind == "start":
                        record.usage.input_tokens = message.start.input_tokens
                        record.usage.usage_source = message.start.input_tokens_source
                    elif kind == "delta":
                        if first_token is None:
                            first_token = self._clock()
                        output_tokens += message.delta.token_count
                        record.usage.output_tokens = output_tokens
                    elif kind == "final":
                        record.usage.CopyFrom(message.final.usage)
                        record.constrained = message.final.constrained
                    yield message
            except GeneratorExit:
                # The caller stopped reading: its own stop sequence or length limit matched
                # (the attempt served what was asked), or it is being cancelled.
                task = asyncio.current_task()
                cancelled = task is not None and task.cancelling() > 0
                await self._report(
                    record,
                    decision,
                    candidate,
                    rpb.ATTEMPT_RESULT_SUCCESS
                    if first_token is not None and not cancelled
                    else rpb.ATTEMPT_RESULT_CANCELLED,
                    started,
                    first_token,
                    output_tokens,
                    None,
                )
                raise
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if first_token is not None:
                    await self._report(
                        record,
                        decision,
                        candidate,
                        rpb.ATTEMPT_RESULT_FAILED_AFTER_FIRST_TOKEN,
                        started,
                        first_token,
                        output_tokens,
                        error,
                    )
                    raise Unavailable(
                        f"backend {candidate.backend.id} failed after {output_tokens} tokens: "
                        f"{error.details()}",
                        reason=reasons.STREAM_INTERRUPTED,
                        retry_after=RETRY_AFTER_S,
                        metadata={
                            "model": candidate.model,
                            "backend_id": candidate.backend.id,
                            "input_tokens": str(record.usage.input_tokens),
                            "output_tokens": str(output_tokens),
                            "usage_source": generation_pb2.UsageSource.Name(
                                record.usage.usage_source
                            ),
                        },
                    ) from None
                if constrain and _refuses_constraint(error):
                    _logger.warning(
                        "backend %s refused the output constraint (%s: %s); trying it again "
                        "without",
                        candidate.backend.id,
                        code.name,
                        error.details(),
                    )
                    record.attempts.append(
                        Attempt(
                            candidate.model,
                            candidate.backend.id,
                            rpb.ATTEMPT_RESULT_FAILED_BEFORE_FIRST_TOKEN,
                            f"{code.name}: {error.details()}",
                        )
                    )
                    plan.appendleft((candidate, False))
                    continue
                if code not in _RETRYABLE:
                    result = (
                        rpb.ATTEMPT_RESULT_CANCELLED
                        if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
                        else None
                    )
                    if result is not None:
                        await self._report(
                            record, decision, candidate, result, started, None, 0, error
                        )
                    raise
                overloaded = (
                    code == grpc.StatusCode.RESOURCE_EXHAUSTED
                    and error_details(error).reason == reasons.BACKEND_OVERLOADED
                )
                await self._report(
                    record,
                    decision,
                    candidate,
                    rpb.ATTEMPT_RESULT_OVERLOADED
                    if overloaded
                    else rpb.ATTEMPT_RESULT_FAILED_BEFORE_FIRST_TOKEN,
                    started,
                    None,
                    0,
                    error,
                )
                continue
            finally:
                call.cancel()  # a no-op once the call ended; stops the backend when abandoned
            await self._report(
                record,
                decision,
                candidate,
                rpb.ATTEMPT_RESULT_SUCCESS,
                started,
                first_token,
                output_tokens,
                None,
            )
            return
        raise Unavailable(
            "every candidate backend failed before the first token: "
            + "; ".join(f"{a.backend_id}: {a.error}" for a in record.attempts),
            reason=reasons.BACKEND_UNAVAILABLE,
            retry_after=RETRY_AFTER_S,
            metadata={a.backend_id: a.error[:200] for a in record.attempts},
        )

    async def route(
        self,
        route: router_service_pb2.RouteRequest,
        *,
        time_left: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> router_pb2.RouteDecision:
        """Asks the router for a decision, raising its errors as `grpc.aio.AioRpcError`:
        FAILED_PRECONDITION (NO_ELIGIBLE_MODEL) when no model could serve `route`, UNAVAILABLE
        (BACKEND_UNAVAILABLE, with `RetryInfo`) when the backends of those that could are all
        out."""
        response = await self._router.Route(route, timeout=time_left, metadata=metadata or None)
        return response.decision

    async def _report(
        self,
        record: RoutedStream,
        decision: router_pb2.RouteDecision,
        candidate: router_pb2.RouteCandidate,
        result: router_service_pb2.AttemptResult,
        started: float,
        first_token: float | None,
        output_tokens: int,
        error: grpc.aio.AioRpcError | None,
    ) -> None:
        text = "" if error is None else f"{error.code().name}: {error.details()}"
        record.attempts.append(Attempt(candidate.model, candidate.backend.id, result, text))
        report = rpb.ReportOutcomeRequest(
            decision_id=decision.decision_id,
            model=candidate.model,
            backend_id=candidate.backend.id,
            result=result,
            total_duration=duration(self._clock() - started),
            usage=generation_pb2.TokenUsage(
                input_tokens=record.usage.input_tokens, output_tokens=output_tokens
            ),
            error=text[:1000],
        )
        if first_token is not None:
            report.first_token_duration.CopyFrom(duration(first_token - started))
        try:
            await self._router.ReportOutcome(report, timeout=2.0, metadata=record.metadata or None)
        except grpc.aio.AioRpcError as report_error:
            _logger.warning("could not report an outcome to the router: %s", report_error.code())


def _refuses_constraint(error: grpc.aio.AioRpcError) -> bool:
    """Whether InferenceService refused the request's constraint rather than the request."""
    code = error.code()
    if code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        return False
    details = error_details(error)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return details.metadata.get("field", "").startswith("constraint")
    return bool(details.field_violations) and all(
        v.field.startswith("constraint") for v in details.field_violations
    )
