"""The parts of a completion on their own: one `Generation` (processed chunks, text, finish
reason, processing summary, the backend's stream closed early), `Experiments` (UNIMPLEMENTED
without an ExperimentService, the cached assignment unit) and the shared deadline arithmetic."""

from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

import pytest
from genai.common.v1 import generation_pb2
from genai.experiment.v1 import experiment_pb2, experiment_service_pb2
from genai.gateway.v1 import gateway_pb2
from genai.inference.v1 import inference_pb2, inference_service_pb2
from prometheus_client import CollectorRegistry

from services.common.deadlines import time_until
from services.common.errors import Unimplemented
from services.gateway.completion import Generation
from services.gateway.core.processing import OutputSchemaViolation, ResponseProcessor
from services.gateway.experiments import EXPERIMENT_CACHE_S, Experiments
from services.gateway.metrics import GatewayMetrics
from services.gateway.outcome import FEEDBACK_METHOD, Caller, Outcome, Request, ServedRequest
from services.prompt.core.processing_config import ProcessingConfig
from services.router.failover import RoutedStream

StreamResponse = inference_service_pb2.GenerateStreamResponse
ProcessingSummary = gateway_pb2.ProcessingSummary
CALLER = Caller(tenant_id="acme", metadata=(), method=FEEDBACK_METHOD)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_time_until_is_never_negative_and_none_without_a_deadline() -> None:
    clock = Clock()
    assert time_until(None, clock) is None
    assert time_until(102.5, clock) == 2.5
    assert time_until(99.0, clock) == 0.0


# ------------------------------------------------------------------------------ Generation


def _outcome() -> Outcome:
    return Outcome(
        started=0.0, request_id="r", trace_id="", request=Request(), arrived=datetime.now(UTC)
    )


class Backend:
    """A backend's stream of deltas then a final; notes whether it was closed early."""

    def __init__(self, chunks: list[str], finish: int = generation_pb2.FINISH_REASON_STOP):
        self.chunks = chunks
        self.finish = finish
        self.closed_early = False

    async def stream(self) -> AsyncGenerator[StreamResponse]:
        try:
            for chunk in self.chunks:
                yield StreamResponse(delta=inference_pb2.TokenDelta(text=chunk))
            yield StreamResponse(final=inference_pb2.GenerationFinal(finish_reason=self.finish))  # type: ignore[arg-type]
        except GeneratorExit:
            self.closed_early = True
            raise


def _generation(
    backend: Backend, config: ProcessingConfig, outcome: Outcome, *, emit: bool, clock: Clock
) -> Generation:
    record = RoutedStream()
    outcome.routed.append(record)
    return Generation(
        backend.stream(),
        ResponseProcessor(config),
        outcome,
        record,
        checks_schema=config.output_schema is not None,
        emit=emit,
        metrics=GatewayMetrics(CollectorRegistry()),
        clock=clock,
    )


async def test_a_generation_yields_processed_chunks_then_exposes_its_result() -> None:
    clock, outcome = Clock(), _outcome()
    generation = _generation(
        Backend(["Hello", " world"]), ProcessingConfig(), outcome, emit=True, clock=clock
    )
    assert [text async for text in generation.texts()] == ["Hello", " world"]
    assert generation.text == "Hello world"
    assert generation.finish == generation_pb2.FINISH_REASON_STOP
    assert outcome.output == ["Hello", " world"]
    assert outcome.first_token == outcome.last_chunk == clock.now
    assert generation.summary(repaired=False, constrained_decoding=True) == ProcessingSummary(
        constrained_decoding=True
    )


async def test_a_stop_sequence_closes_the_backend_stream_and_sets_the_finish_reason() -> None:
    backend = Backend(["one END", " two", " three"])
    generation = _generation(
        backend, ProcessingConfig(stop=("END",)), _outcome(), emit=True, clock=Clock()
    )
    assert "".join([text async for text in generation.texts()]) == "one "
    assert backend.closed_early
    assert generation.finish == generation_pb2.FINISH_REASON_STOP_SEQUENCE
    assert generation.summary(repaired=False, constrained_decoding=False) == ProcessingSummary(
        stop_sequence_matched=True
    )


async def test_a_held_back_generation_yields_nothing_and_marks_no_chunk_times() -> None:
    outcome = _outcome()
    config = ProcessingConfig(output_schema={"type": "object"})
    generation = _generation(Backend(['{"a"', ": 1}"]), config, outcome, emit=False, clock=Clock())
    assert [text async for text in generation.texts()] == []
    assert generation.text == '{"a": 1}'
    assert outcome.first_token is None
    assert generation.summary(repaired=True, constrained_decoding=False) == ProcessingSummary(
        schema_valid=True, repaired=True
    )


async def test_an_output_that_fails_its_schema_raises_after_the_stream() -> None:
    config = ProcessingConfig(output_schema={"type": "object"})
    generation = _generation(Backend(["[1]"]), config, _outcome(), emit=False, clock=Clock())
    with pytest.raises(OutputSchemaViolation):
        async for _ in generation.texts():
            pass


# ------------------------------------------------------------------------------ Experiments


async def test_without_an_experiment_service_every_experiment_call_is_unimplemented() -> None:
    experiments = Experiments(None)
    served = ServedRequest(prompt="p", prompt_version=1, model="m", experiment="e", variant="v")
    calls = [
        experiments.assign(Request(prompt="p", experiment="e", user_id="u"), CALLER, None),
        experiments.unit_of(CALLER, "e", "u", "s"),
        experiments.record_outcome(CALLER, "r", "clicked", True, served),
    ]
    for call in calls:
        with pytest.raises(Unimplemented) as raised:
            await call
        assert raised.value.metadata["method"] == FEEDBACK_METHOD
        assert "ExperimentService" in raised.value.metadata["missing"]


class ExperimentStub:
    def __init__(self, unit: int) -> None:
        self.unit = unit
        self.lookups = 0

    async def GetExperiment(self, request: Any, **_: Any) -> Any:
        self.lookups += 1
        return experiment_service_pb2.GetExperimentResponse(
            experiment=experiment_pb2.Experiment(name=request.name, unit=self.unit)  # type: ignore[arg-type]
        )


async def test_the_assignment_unit_is_cached_briefly() -> None:
    clock, stub = Clock(), ExperimentStub(experiment_pb2.ASSIGNMENT_UNIT_SESSION)
    experiments = Experiments(stub, clock=clock)
    assert await experiments.unit_of(CALLER, "e", "user", "session") == "session"
    assert await experiments.unit_of(CALLER, "e", "user", "session") == "session"
    assert stub.lookups == 1
    clock.now += EXPERIMENT_CACHE_S
    await experiments.unit_of(CALLER, "e", "user", "session")
    assert stub.lookups == 2
