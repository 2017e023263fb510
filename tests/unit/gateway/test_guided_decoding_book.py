"""`GuidedDecodingBook`: which models the gateway constrains, from InferenceService's
`ServedModel.guided_decoding`, cached per model, one call for concurrent look-ups, and a
failed look-up answering "no" (the schema check alone) for a short while."""

import asyncio
from typing import Any

import grpc
from genai.inference.v1 import inference_pb2, inference_service_pb2

from services.gateway.tenancy import GuidedDecodingBook


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Inference:
    """Answers GetModelStatus like InferenceService: one ServedModel per backend."""

    def __init__(self, guided: dict[str, bool]) -> None:
        self.guided = guided
        self.calls: list[tuple[str, Any]] = []
        self.down = False
        self.gate: asyncio.Event | None = None

    async def GetModelStatus(
        self, request: inference_service_pb2.GetModelStatusRequest, **kwargs: Any
    ) -> inference_service_pb2.GetModelStatusResponse:
        self.calls.append((request.model, kwargs.get("metadata")))
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down", None
            )
        served = [
            inference_pb2.ServedModel(name=request.model, backend_id=b, guided_decoding=g)
            for b, g in (("b-0", self.guided[request.model]), ("b-1", self.guided[request.model]))
        ]
        return inference_service_pb2.GetModelStatusResponse(models=served)


METADATA = (("x-genai-tenant", "acme"),)


async def test_answers_come_from_served_models_and_are_kept_for_the_ttl() -> None:
    inference = Inference({"guided": True, "plain": False})
    clock = Clock()
    book = GuidedDecodingBook(inference, ttl_seconds=60, clock=clock)  # type: ignore[arg-type]

    assert await book.supports("guided", METADATA) is True
    assert await book.supports("plain", METADATA) is False
    clock.now += 59
    assert await book.supports("guided", METADATA) is True
    assert [model for model, _ in inference.calls] == ["guided", "plain"]
    assert inference.calls[0][1] == METADATA

    inference.guided["guided"] = False  # the settings changed; seen once the answer expires
    clock.now += 2
    assert await book.supports("guided", METADATA) is False
    assert len(inference.calls) == 3


async def test_concurrent_look_ups_of_one_model_share_one_call() -> None:
    inference = Inference({"guided": True})
    inference.gate = asyncio.Event()
    book = GuidedDecodingBook(inference)  # type: ignore[arg-type]

    waiting = [asyncio.create_task(book.supports("guided", METADATA)) for _ in range(20)]
    await asyncio.sleep(0)
    inference.gate.set()

    assert await asyncio.gather(*waiting) == [True] * 20
    assert len(inference.calls) == 1


async def test_a_failed_look_up_is_no_for_the_retry_window_then_asked_again() -> None:
    inference = Inference({"guided": True})
    inference.down = True
    clock = Clock()
    book = GuidedDecodingBook(
        inference,  # type: ignore[arg-type]
        ttl_seconds=60,
        retry_seconds=5,
        clock=clock,
    )

    assert await book.supports("guided", METADATA) is False
    inference.down = False
    clock.now += 4
    assert await book.supports("guided", METADATA) is False
    clock.now += 2
    assert await book.supports("guided", METADATA) is True
    assert len(inference.calls) == 2
