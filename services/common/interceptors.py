"""The server interceptor chain: tracing, auth, errors, access, validation, in this order,
everywhere.

grpc.aio applies interceptors outermost first, so for every RPC:

1. tracing (OpenTelemetry) opens the server span, so even a rejected RPC is traced;
2. auth authenticates the caller and sets `current_principal()`; it reports its own failures
   (UNAUTHENTICATED, ...) because it sits outside the error layer;
3. errors turns the domain exceptions raised below it into rich statuses, and anything
   unexpected into a generic INTERNAL (logged with its traceback, never sent);
4. access applies the role policy (`services.common.policy`) and appends audited calls to
   the audit log (`services.common.access`);
5. validation rejects invalid requests with INVALID_ARGUMENT before the handler runs: the
   contract-wide request guard on every method, then the method's own validator.

Health checks and server reflection skip tracing and auth. Each layer wraps the handler's
behaviour and rebuilds the method handler with the same (de)serializers, for all four RPC kinds.
"""

import abc
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from grpc_health.v1 import health
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from services.common.auth import Authenticator, set_current_principal
from services.common.errors import (
    DomainError,
    FieldViolation,
    InvalidArgument,
    QuotaViolation,
    ResourceExhausted,
    Unimplemented,
)
from services.common.grpc_types import MethodHandler, ServerInterceptor, ServicerContext
from services.common.request_guard import guards, request_violations
from services.common.status import status_code_of, to_grpc_status
from services.common.validation import Validator, Validators, validate

if TYPE_CHECKING:
    from services.common.audit import AuditSink
    from services.common.policy import Rule

_logger = logging.getLogger(__name__)

Context = ServicerContext
UnaryBehaviour = Callable[[Any, Context], Awaitable[Any]]
"""A unary-response behaviour: (request or request iterator, context) -> response."""
StreamingBehaviour = Callable[[Any, Context], AsyncGenerator[Any, None]]
"""A streaming-response behaviour: (request or request iterator, context) -> responses."""
Handler = MethodHandler
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]

HEALTH_SERVICE = health.SERVICE_NAME
_REFLECTION_PACKAGE = "grpc.reflection."


def is_infrastructure_method(method: str) -> bool:
    """True for health-check and server-reflection methods, which skip tracing and auth."""
    service = method.removeprefix("/").partition("/")[0]
    return service == HEALTH_SERVICE or service.startswith(_REFLECTION_PACKAGE)


def default_interceptors(
    *,
    authenticator: Authenticator,
    validators: Validators,
    tracer_provider: TracerProvider | None = None,
    audit: "AuditSink | None" = None,
    registry: CollectorRegistry | None = None,
    policy: "Mapping[str, Rule] | None" = None,
) -> list[ServerInterceptor]:
    """Returns the chain every server uses, outermost first: tracing, auth, errors, access
    (the role policy and the audit log, `services.common.access`), validation.

    `tracer_provider` None means OpenTelemetry's global provider; `audit` None writes audit
    records to the process log only; `registry` takes the access layer's metrics; `policy`
    None is the contract's (`services.common.policy.POLICY`).
    """
    # Imported here: the access layer is itself built on this module's interceptor base.
    from services.common.access import AccessInterceptor
    from services.common.audit import LoggingAuditSink
    from services.common.policy import POLICY

    return [
        tracing_interceptor(tracer_provider),
        AuthInterceptor(authenticator),
        ErrorInterceptor(),
        AccessInterceptor(
            audit or LoggingAuditSink(),
            policy=POLICY if policy is None else policy,
            registry=registry,
        ),
        ValidationInterceptor(validators),
    ]


def tracing_interceptor(
    tracer_provider: TracerProvider | None = None,
) -> ServerInterceptor:
    """OpenTelemetry's server interceptor, leaving health checks and reflection untraced."""
    interceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=tracer_provider, filter_=_is_traced
    )
    return cast(ServerInterceptor, interceptor)


def _is_traced(details: grpc.HandlerCallDetails) -> bool:
    return not is_infrastructure_method(details.method)


class BehaviourInterceptor(ServerInterceptor, abc.ABC):
    """An interceptor that wraps the behaviour of the method handler it intercepts.

    A method's handler is the same object call after call (the servicer's, or the next
    layer's wrapping of it), so each layer wraps it once and keeps the result: no closures
    and handler objects are built per RPC."""

    def _wrapped(self) -> dict[str, tuple[Handler, Handler]]:
        # Created on first use: subclasses need not call a base initializer.
        cache: dict[str, tuple[Handler, Handler]] | None = getattr(self, "_wrap_cache", None)
        if cache is None:
            cache = {}
            self._wrap_cache = cache
        return cache

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        # The stubs say a handler always exists; for an unknown method there is none (grpc
        # then answers UNIMPLEMENTED), and there is nothing to wrap.
        handler = cast("Handler | None", await continuation(handler_call_details))
        if handler is None:
            return cast(Handler, None)
        method = handler_call_details.method
        cache = self._wrapped()
        cached = cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        cache[method] = (handler, wrapped)
        return wrapped

    @abc.abstractmethod
    def _wrap(self, handler: Handler, method: str) -> Handler:
        """Returns `handler`, wrapped or as it is, for an RPC of `method`."""


class AuthInterceptor(BehaviourInterceptor):
    """Authenticates each RPC with an `Authenticator` and sets `current_principal()`."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def _wrap(self, handler: Handler, method: str) -> Handler:
        if is_infrastructure_method(method):
            return handler

        async def authenticate(request: Any, context: Context) -> Any:
            try:
                principal = await self._authenticator.authenticate(method, _text_metadata(context))
            except Exception as error:  # the error layer is inside this one: report it here
                await abort_with_error(context, error, method=method)
            set_current_principal(principal)
            return request

        return _with_prelude(handler, authenticate)


class ErrorInterceptor(BehaviourInterceptor):
    """Maps exceptions raised by the layers below to rich statuses (see `abort_with_error`).

    `asyncio.CancelledError` (a client cancelled or the deadline passed) and a handler's own
    `context.abort(...)` pass through untouched.
    """

    def _wrap(self, handler: Handler, method: str) -> Handler:
        # This layer parses the request bytes itself, so that a request that does not parse
        # (truncated, invalid UTF-8 in a string field, ...) is INVALID_ARGUMENT: grpc's own
        # deserialization would answer UNKNOWN.
        decode = _request_decoder(handler)

        def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
            async def mapped(request: Any, context: Context) -> Any:
                try:
                    return await behaviour(decode(request), context)
                except Exception as error:
                    await abort_with_error(context, error, method=method)

            return mapped

        def streaming(behaviour: StreamingBehaviour) -> StreamingBehaviour:
            async def mapped(request: Any, context: Context) -> AsyncGenerator[Any, None]:
                try:
                    async with aclosing(behaviour(decode(request), context)) as responses:
                        async for response in responses:
                            yield response
                except Exception as error:
                    # Aborting raises, also after messages were sent: the stream then ends
                    # with this status instead of a generic UNKNOWN.
                    await abort_with_error(context, error, method=method)

            return mapped

        return rebuild_handler(handler, unary, streaming, request_deserializer=None)


def _request_decoder(handler: Handler) -> Callable[[Any], Any]:
    """Returns a function turning the raw request (or request stream) of `handler` into
    messages, raising `InvalidArgument` for bytes that are not a valid request."""
    deserialize = handler.request_deserializer
    if deserialize is None:
        return lambda request: request
    parse = deserialize
    message_class = getattr(parse, "__self__", None)
    name = getattr(getattr(message_class, "DESCRIPTOR", None), "full_name", "request message")

    def decode_one(raw: bytes) -> Any:
        try:
            return parse(raw)
        except Exception:
            raise InvalidArgument(
                violations=[
                    FieldViolation(
                        field="request",
                        description=f"the bytes do not parse as a {name} (truncated, a wrong "
                        "wire type, or a string field that is not valid UTF-8)",
                    )
                ]
            ) from None

    if not handler.request_streaming:
        return decode_one

    async def decode_stream(raw_messages: AsyncIterable[bytes]) -> AsyncGenerator[Any, None]:
        async for raw in raw_messages:
            yield decode_one(raw)

    return decode_stream


class ValidationInterceptor(BehaviourInterceptor):
    """Rejects invalid requests with `InvalidArgument` listing all violations before the
    handler runs: first the contract-wide request guard (`services.common.request_guard`:
    out-of-range timestamps and durations, non-finite numbers, undeclared enum numbers,
    over-deep JSON values, in every method), then the method's own validator. Request streams
    are validated message by message as the handler reads them through its request iterator."""

    def __init__(self, validators: Validators) -> None:
        self._validators = validators

    def _wrap(self, handler: Handler, method: str) -> Handler:
        validator = self._validators.get(method)
        guarded = _guarded_request_type(handler)
        if validator is None and not guarded:
            return handler
        checks = tuple(
            check
            for check in ((request_violations if guarded else None), validator)
            if check is not None
        )
        request_streaming = handler.request_streaming

        async def check(request: Any, context: Context) -> Any:
            if request_streaming:
                return _validated_stream(request, checks)
            _validate_all(checks, request)
            return request

        return _with_prelude(handler, check)


def _guarded_request_type(handler: Handler) -> bool:
    """True when the request type of `handler` (known from its deserializer, a generated
    `FromString`) can hold a value the request guard checks; True when unknown too."""
    message_class = getattr(handler.request_deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    if not isinstance(descriptor, Descriptor):
        return handler.request_deserializer is not None
    return guards(descriptor)


def _validate_all(checks: tuple[Validator, ...], request: Any) -> None:
    for check in checks:
        if check is request_violations and not isinstance(request, Message):
            continue  # a handler that takes raw bytes or a non-protobuf request
        validate(check, request)


async def _validated_stream(
    requests: AsyncIterable[Any], checks: tuple[Validator, ...]
) -> AsyncGenerator[Any, None]:
    async for request in requests:
        _validate_all(checks, request)
        yield request


async def abort_with_error(context: Context, error: Exception, *, method: str) -> NoReturn:
    """Ends the RPC with the rich status of `error` (see `services.common.status`).

    An unexpected exception is logged with its traceback and reported as a generic INTERNAL;
    `NotImplementedError` (raised by the generated servicer base classes) is UNIMPLEMENTED.
    A `grpc.aio.AbortError` means the RPC was aborted already and is re-raised as it is.
    """
    if isinstance(error, grpc.aio.AbortError):
        raise error
    if isinstance(error, NotImplementedError):  # what generated servicer base classes raise
        error = Unimplemented(method=method.removeprefix("/"), missing="an implementation")
    if isinstance(error, DomainError):
        _bound_for_trailers(error)
    if isinstance(error, DomainError) and status_code_of(error) is not None:
        _logger.debug("%s failed: %r", method, error)
    else:
        _logger.error("%s raised an unexpected exception", method, exc_info=error)
    status = to_grpc_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


MAX_REPORTED_MESSAGE = 400
"""Characters of an error message sent to a client at most."""
MAX_REPORTED_DETAILS = 1500
"""Characters of all field (or quota) violations of one status at most, and
`MAX_REPORTED_VIOLATIONS` of them. The status travels in trailing metadata, of which a client
accepts 8 KiB by default: a longer one reaches it as a transport error (RESOURCE_EXHAUSTED
"received metadata size exceeds soft limit"), not as the precise status."""
MAX_REPORTED_VIOLATIONS = 20
MAX_REPORTED_TEXT = 200
"""Characters of one field path, description, or ErrorInfo metadata value at most."""
MAX_REPORTED_METADATA = 8


def _bound_for_trailers(error: DomainError) -> None:
    """Shortens what `error` reports, in place, to fit a client's trailing metadata: a
    hostile request can make a validator report millions of violations, or a message that
    echoes a megabyte-long value."""
    error.message = _clip(error.message, MAX_REPORTED_MESSAGE)
    error.metadata = {
        key[:MAX_REPORTED_TEXT]: _clip(value, MAX_REPORTED_TEXT)
        for key, value in list(error.metadata.items())[:MAX_REPORTED_METADATA]
    }
    if isinstance(error, InvalidArgument):
        error.violations = _bounded(
            error.violations,
            lambda v: FieldViolation(
                _clip(v.field, MAX_REPORTED_TEXT), _clip(v.description, MAX_REPORTED_TEXT)
            ),
            lambda last, more: FieldViolation(last.field, f"and {more} more violations"),
            lambda v: len(v.field) + len(v.description),
        )
    elif isinstance(error, ResourceExhausted):
        error.violations = _bounded(
            error.violations,
            lambda v: QuotaViolation(
                _clip(v.subject, MAX_REPORTED_TEXT), _clip(v.description, MAX_REPORTED_TEXT)
            ),
            lambda last, more: QuotaViolation(last.subject, f"and {more} more violations"),
            lambda v: len(v.subject) + len(v.description),
        )


_V = TypeVar("_V")


def _bounded(
    violations: tuple[_V, ...],
    clip: Callable[[_V], _V],
    summary: Callable[[_V, int], _V],
    size: Callable[[_V], int],
) -> tuple[_V, ...]:
    kept: list[_V] = []
    used = 0
    for violation in violations:
        clipped = clip(violation)
        if len(kept) == MAX_REPORTED_VIOLATIONS - 1 or used + size(clipped) > MAX_REPORTED_DETAILS:
            break
        kept.append(clipped)
        used += size(clipped)
    more = len(violations) - len(kept)
    if more:
        kept.append(summary(clip(violations[len(kept)]), more))
    return tuple(kept)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text_metadata(context: Context) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):  # binary ("-bin") values are bytes
            metadata.setdefault(key.lower(), value)
    return metadata


Prelude = Callable[[Any, Context], Awaitable[Any]]
"""Runs before a behaviour; returns the request (or request iterator) to pass on."""


def _with_prelude(handler: Handler, prelude: Prelude) -> Handler:
    def unary(behaviour: UnaryBehaviour) -> UnaryBehaviour:
        async def guarded(request: Any, context: Context) -> Any:
            return await behaviour(await prelude(request, context), context)

        return guarded

    def streaming(behaviour: StreamingBehaviour) -> StreamingBehaviour:
        async def guarded(request: Any, context: Context) -> AsyncGenerator[Any, None]:
            request = await prelude(request, context)
            async with aclosing(behaviour(request, context)) as responses:
                async for response in responses:
                    yield response

        return guarded

    return rebuild_handler(handler, unary, streaming)


_KEEP: Any = object()


def rebuild_handler(
    handler: Handler,
    unary: Callable[[UnaryBehaviour], UnaryBehaviour],
    streaming: Callable[[StreamingBehaviour], StreamingBehaviour],
    *,
    request_deserializer: Any = _KEEP,
) -> Handler:
    """Returns `handler` with its behaviour wrapped, keeping its kind and (de)serializers
    unless `request_deserializer` replaces the request's (None: the raw bytes)."""
    factory: Callable[..., Handler]
    wrapped: UnaryBehaviour | StreamingBehaviour
    if handler.response_streaming:
        if handler.request_streaming:
            factory, behaviour = grpc.stream_stream_rpc_method_handler, handler.stream_stream
        else:
            factory, behaviour = grpc.unary_stream_rpc_method_handler, handler.unary_stream
        wrapped = streaming(_as_streaming(behaviour))
    else:
        if handler.request_streaming:
            factory, behaviour = grpc.stream_unary_rpc_method_handler, handler.stream_unary
        else:
            factory, behaviour = grpc.unary_unary_rpc_method_handler, handler.unary_unary
        wrapped = unary(_as_unary(behaviour))
    return factory(
        wrapped,
        request_deserializer=(
            handler.request_deserializer if request_deserializer is _KEEP else request_deserializer
        ),
        response_serializer=handler.response_serializer,
    )


def _as_unary(behaviour: Callable[..., Any] | None) -> UnaryBehaviour:
    """Normalizes a unary-response behaviour (async, or plain for tests) to a coroutine."""
    if behaviour is None:
        raise ValueError("the method handler has no behaviour for its kind")
    if inspect.iscoroutinefunction(behaviour):
        return cast(UnaryBehaviour, behaviour)
    call = behaviour

    async def unary(request: Any, context: Context) -> Any:
        response = call(request, context)
        if inspect.isawaitable(response):
            response = await response
        return response

    return unary


def _as_streaming(behaviour: Callable[..., Any] | None) -> StreamingBehaviour:
    """Normalizes a streaming-response behaviour to an async generator.

    grpc.aio accepts async generators, plain iterators, and coroutines that send with
    `context.write()` and return None.
    """
    if behaviour is None:
        raise ValueError("the method handler has no behaviour for its kind")
    if inspect.isasyncgenfunction(behaviour):  # every layer of this module, most handlers
        return cast(StreamingBehaviour, behaviour)
    call = behaviour

    async def streaming(request: Any, context: Context) -> AsyncGenerator[Any, None]:
        responses = call(request, context)
        if inspect.isawaitable(responses):
            await responses
        elif isinstance(responses, AsyncIterable):
            iterator = aiter(responses)
            try:
                async for response in iterator:
                    yield response
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
        elif responses is not None:
            for response in responses:
                yield response

    return streaming
