"""configure_tracing: a provider per service, exporting over OTLP only when asked to."""

import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME

from services.common.telemetry import (
    CrossContextDetach,
    configure_tracing,
    otlp_export_requested,
    quiet_cross_context_detach,
)


@pytest.mark.parametrize(
    ("env", "requested"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console, OTLP"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
    ],
)
def test_otlp_export_follows_the_standard_variables(env: dict[str, str], requested: bool) -> None:
    assert otlp_export_requested(env) is requested


def test_the_provider_names_the_service_and_is_not_installed_globally() -> None:
    provider = configure_tracing("genai-prompt", env={})

    assert provider.resource.attributes[SERVICE_NAME] == "genai-prompt"
    assert trace.get_tracer_provider() is not provider
    with provider.get_tracer(__name__).start_as_current_span("work") as span:
        assert span.get_span_context().is_valid
    provider.shutdown()


def test_without_an_exporter_spans_have_ids_but_are_not_recorded() -> None:
    quiet = configure_tracing("genai-gateway", env={})
    exporting = configure_tracing(
        "genai-gateway", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    )
    try:
        with quiet.get_tracer(__name__).start_as_current_span("work") as span:
            context = span.get_span_context()
            assert context.is_valid  # the request log and traceparent still carry its ids
            assert not span.is_recording()
            assert not context.trace_flags.sampled
        with exporting.get_tracer(__name__).start_as_current_span("work") as span:
            assert span.is_recording()
    finally:
        quiet.shutdown()
        exporting.shutdown()


def test_an_otlp_endpoint_adds_a_batching_exporter() -> None:
    provider = configure_tracing(
        "genai-router", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    )
    try:
        processors = provider._active_span_processor._span_processors
        assert [type(p).__name__ for p in processors] == ["BatchSpanProcessor"]
    finally:
        provider.shutdown()
    assert configure_tracing("genai-router", env={})._active_span_processor._span_processors == ()


def test_only_the_cross_context_detach_error_is_quieted(caplog: pytest.LogCaptureFixture) -> None:
    quiet_cross_context_detach()
    quiet_cross_context_detach()  # once is enough
    logger = logging.getLogger("opentelemetry.context")

    def failed(error: Exception) -> None:
        try:
            raise error
        except Exception:
            logger.exception("Failed to detach context")

    with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
        failed(ValueError("<Token var=...> was created in a different Context"))
        failed(RuntimeError("something else"))

    assert [r.exc_info[1].__class__ for r in caplog.records if r.exc_info] == [RuntimeError]
    assert sum(isinstance(f, CrossContextDetach) for f in logger.filters) == 1
