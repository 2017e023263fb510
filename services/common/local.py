"""In-process calls: a servicer hosted in this very process, called through the same interface
as its generated async stub, without the loopback gRPC hop.

When every service shares one process (the embedded default), a gateway request would
otherwise serialize, frame, send, receive and parse each internal call and run it through two
interceptor chains: about a millisecond and several hundred microseconds of CPU per hop on
these machines. A local call runs the servicer's method directly, in the caller's task:

- the caller's principal (a context variable) is the callee's, as the internal token would
  have made it;
- a `DomainError` from the servicer surfaces as the `grpc.aio.AioRpcError` its status would
  have been on the wire (code, message, ErrorInfo and the other details in the trailing
  metadata), so callers handle local and remote failures with the same code;
- deadlines: the callee sees the remaining time through `context.time_remaining()` and the
  call is bounded by it;
- a streaming call's `cancel()` closes the servicer's generator, whose cleanup cancels its own
  downstream work (a Triton request);
- each call is a span named like the gRPC server span it replaces.

Servicers called this way may use only `context.time_remaining()`; `LocalContext` is that.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from types import SimpleNamespace
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_status import rpc_status
from opentelemetry import trace

from services.common.errors import DeadlineExceeded, DomainError
from services.common.status import to_rpc_status

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


class LocalContext:
    """The part of `grpc.aio.ServicerContext` a locally called servicer may use."""

    def __init__(self, timeout: float | None) -> None:
        self._deadline = None if timeout is None else time.monotonic() + timeout

    def time_remaining(self) -> float | None:
        """Seconds left before the caller's deadline, or None without one."""
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)


def rpc_error(error: BaseException) -> grpc.aio.AioRpcError:
    """The `AioRpcError` a client would have received for `error` (see `to_rpc_status`)."""
    status = rpc_status.to_status(to_rpc_status(error))
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
        debug_error_string="in-process call",
    )


class LocalUnary(Generic[RequestT, ResponseT]):
    """A unary method of a local servicer, called like a stub's multi-callable."""

    def __init__(
        self,
        method: Callable[[RequestT, Any], Awaitable[ResponseT]],
        name: str,
        tracer: trace.Tracer,
    ) -> None:
        self._method = method
        self._name = name
        self._tracer = tracer

    async def __call__(
        self,
        request: RequestT,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the generated stubs' signature)
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> ResponseT:
        """Runs the method; raises `grpc.aio.AioRpcError` as a remote call would."""
        with self._tracer.start_as_current_span(self._name, kind=trace.SpanKind.INTERNAL):
            try:
                async with asyncio.timeout(timeout):
                    return await self._method(request, LocalContext(timeout))
            except DomainError as error:
                raise rpc_error(error) from None
            except TimeoutError:
                raise rpc_error(DeadlineExceeded(f"{self._name}: deadline exceeded")) from None


class LocalStreamCall(Generic[ResponseT]):
    """A running server-streaming call of a local servicer: iterate it once; `cancel()` ends
    it (closing the servicer's generator).

    This sits on the path of every token a local InferenceService streams, so the per-message
    work is one call into the servicer's generator: the span is made current only while the
    servicer starts (its downstream spans, e.g. the Triton call's, open then), and the deadline
    is one timer for the whole call, which cancels the iterating task only while it waits in
    `__anext__` (as `asyncio.timeout` would, without a timer per message)."""

    __slots__ = (
        "_closing",
        "_deadline",
        "_done",
        "_expired",
        "_name",
        "_responses",
        "_span",
        "_task",
        "_timer",
        "_tracer",
        "_waiting",
    )

    def __init__(
        self,
        responses: AsyncGenerator[ResponseT, None],
        name: str,
        tracer: trace.Tracer,
        timeout: float | None,
    ) -> None:
        self._responses = responses
        self._name = name
        self._tracer = tracer
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._span: trace.Span | None = None
        self._done = False
        self._closing: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiting: asyncio.Task[Any] | None = None
        """The task inside `__anext__` now (None: none is)."""
        self._task: asyncio.Task[Any] | None = None
        self._expired = False

    def __aiter__(self) -> "LocalStreamCall[ResponseT]":
        return self

    async def __anext__(self) -> ResponseT:
        if self._done:
            raise StopAsyncIteration
        if self._expired:
            raise self._deadline_exceeded()
        task = self._task
        if task is None:  # the caller's task, which iterates the call to its end
            task = self._task = asyncio.current_task()
        self._waiting = task
        try:
            if self._span is None:
                self._start()
                with trace.use_span(self._span, end_on_exit=False):  # type: ignore[arg-type]
                    return await anext(self._responses)
            return await anext(self._responses)
        except StopAsyncIteration:
            self._finish()
            raise
        except DomainError as error:
            self._finish(error)
            raise rpc_error(error) from None
        except asyncio.CancelledError as error:
            if self._ours(task):
                raise self._deadline_exceeded() from None
            self._finish(error)
            raise
        except BaseException as error:  # a bug below: end the span, re-raise
            self._finish(error)
            raise
        finally:
            self._waiting = None

    def _start(self) -> None:
        self._span = self._tracer.start_span(self._name, kind=trace.SpanKind.INTERNAL)
        if self._deadline is not None:
            loop = asyncio.get_running_loop()
            left = self._deadline - time.monotonic()
            self._timer = loop.call_at(loop.time() + max(left, 0.0), self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._done:
            return
        self._expired = True
        if self._waiting is not None:
            self._waiting.cancel()

    def _ours(self, task: "asyncio.Task[Any] | None") -> bool:
        """Whether the cancellation `task` got came from the deadline's timer (and only from
        it), which then turns into DEADLINE_EXCEEDED."""
        return self._expired and task is not None and task.uncancel() == 0

    def _deadline_exceeded(self) -> grpc.aio.AioRpcError:
        expired = DeadlineExceeded(f"{self._name}: deadline exceeded")
        self._finish(expired)
        self._close_now()
        return rpc_error(expired)

    def _finish(self, error: BaseException | None = None) -> None:
        if self._done:
            return
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._span is not None:
            if error is not None:
                self._span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)[:200]))
            self._span.end()

    def cancel(self) -> bool:
        """Ends the call: the servicer's generator is closed (its cleanup runs at once, in a
        task of its own). False when it had ended already."""
        if self._done:
            return False
        self._finish()
        self._close_now()
        return True

    def _close_now(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await self._responses.aclose()


class LocalServerStream(Generic[RequestT, ResponseT]):
    """A server-streaming method of a local servicer, called like a stub's multi-callable."""

    def __init__(
        self,
        method: Callable[[RequestT, Any], AsyncGenerator[ResponseT, None]],
        name: str,
        tracer: trace.Tracer,
    ) -> None:
        self._method = method
        self._name = name
        self._tracer = tracer

    def __call__(
        self,
        request: RequestT,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> LocalStreamCall[ResponseT]:
        """Starts the call (nothing runs until it is iterated)."""
        responses = self._method(request, LocalContext(timeout))
        return LocalStreamCall(responses, self._name, self._tracer, timeout)


def local_stub(servicer: object, service: ServiceDescriptor, tracer: trace.Tracer) -> Any:
    """An object with one attribute per unary and server-streaming method of `service`, each
    calling `servicer` in process, shaped like the generated async stub's (client-streaming
    methods, and methods the servicer lacks, are left out)."""
    stub = SimpleNamespace()
    for method in service.methods:
        call = getattr(servicer, method.name, None)
        if method.client_streaming or call is None:
            continue
        name = f"/{service.full_name}/{method.name}"
        local: object = (
            LocalServerStream(call, name, tracer)
            if method.server_streaming
            else LocalUnary(call, name, tracer)
        )
        setattr(stub, method.name, local)
    return stub
