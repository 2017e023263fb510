"""The one-stub LLM model (`genai_triton.serving.LlmModel`, `triton_models/cpu/smollm2`)
without Triton, on the stand-in `triton_python_backend_utils` of test_engine_serving: the
generation facade answered by the engine's own thread (text, counts, finish reasons, tagged
errors, stop words, cancellation), and the same text as the BLS chain's facade."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from genai_triton import serving
from genai_triton.tokenization import TextTokenizer

from tests.support.smollm2 import smollm2_dir
from tests.unit.triton_models.test_engine_serving import (
    FINAL,
    PB_UTILS,
    MetricFamily,
    args,
    chat,
    facade_request,
    outputs,
    scalar,
    text_array,
)


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(smollm2_dir())


@pytest.fixture(scope="module", params=["", "int8"])
def llm(request: pytest.FixtureRequest) -> Iterator[Any]:
    model = serving.LlmModel(PB_UTILS)
    model.initialize(
        args(
            "smollm2",
            model_dir=str(smollm2_dir()),
            max_seq_len="512",
            max_num_sequences="4",
            threads="2",
            cancellation_check_period_ms="5",
            weight_only_precision=request.param,
        )
    )
    yield model
    model.finalize()


def metric(name: str) -> float:
    return MetricFamily.families[name].metric.value


def test_it_streams_the_answer_and_counts_tokens(llm: Any, tokenizer: TextTokenizer) -> None:
    prompt = chat(tokenizer, "What is the capital of France?")
    request = facade_request(prompt, 30)
    llm.execute([request])
    chunks = [outputs(r) for r in request.sender.stream()]
    text = "".join(c[0] for c in chunks)
    assert "Paris" in text
    assert chunks[-1][3] == "stop"
    assert {c[1] for c in chunks} == {len(tokenizer.encode(prompt))}
    counts = [c[2] for c in chunks]
    assert counts == sorted(counts)
    assert counts[-1] >= len(chunks) - 1

    whole = facade_request(prompt, 30, stream=scalar(False, np.bool_))
    llm.execute([whole])
    (only,) = [outputs(r) for r in whole.sender.stream()]
    assert only[0] == text
    assert only[3] == "stop"

    echoed = facade_request(
        prompt,
        30,
        stream=scalar(False, np.bool_),
        exclude_input_in_output=scalar(False, np.bool_),
    )
    llm.execute([echoed])
    (with_prompt,) = [outputs(r) for r in echoed.sender.stream()]
    assert with_prompt[0] == prompt + text


def test_it_refuses_bad_requests_with_tags(llm: Any) -> None:
    cases = [
        (facade_request("hi", 0), "[FIELD_VIOLATION] max_tokens must be >= 1"),
        (facade_request("hi", 600), "[CONTEXT_LENGTH_EXCEEDED] prompt has 1 tokens"),
        (facade_request("hi", 5, top_p=scalar(1.5, np.float32)), "[FIELD_VIOLATION] top_p"),
    ]
    for request, message in cases:
        llm.execute([request])
        response, flags = request.sender.responses.get(timeout=30)
        assert flags & FINAL
        assert response is not None
        assert response.has_error()
        assert response.error().message().startswith(message)


def test_stop_words_are_cut(llm: Any, tokenizer: TextTokenizer) -> None:
    prompt = chat(tokenizer, "What is the capital of France?")
    request = facade_request(prompt, 30, stop_words=text_array("Paris"))
    llm.execute([request])
    chunks = [outputs(r) for r in request.sender.stream()]
    assert chunks[-1][3] == "stop_words"
    text = "".join(c[0] for c in chunks)
    assert "Paris" not in text
    assert text.endswith("is ")


def test_a_cancelled_client_stops_the_engine(llm: Any, tokenizer: TextTokenizer) -> None:
    before = metric("genai_llm_requests_cancelled_total")
    request = facade_request(chat(tokenizer, "Write a long story."), 400)
    llm.execute([request])
    received = request.sender.stream()
    for _ in range(3):
        next(received)
    request.sender.cancelled = True
    started = time.monotonic()
    while metric("genai_llm_requests_cancelled_total") == before:
        assert time.monotonic() - started < 5
        time.sleep(0.005)
    deadline = time.monotonic() + 5
    while llm.engine.active:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_concurrent_requests_decode_together(llm: Any, tokenizer: TextTokenizer) -> None:
    questions = ["Name three colours.", "What is 2 + 2?", "Say hello.", "Name a fruit."]
    alone = []
    for question in questions:
        request = facade_request(chat(tokenizer, question), 12)
        llm.execute([request])
        alone.append("".join(outputs(r)[0] for r in request.sender.stream()))
    requests = [facade_request(chat(tokenizer, q), 12) for q in questions]
    llm.execute(requests)
    together = ["".join(outputs(r)[0] for r in request.sender.stream()) for request in requests]
    if llm.engine.model.weight_only == "":
        assert together == alone  # fp32 oneDNN products do not depend on the batch
    else:  # int8_dynamic shares one activation scale per batch: texts may drift late
        assert all(a[:8] == b[:8] for a, b in zip(alone, together, strict=True))


def test_the_prepared_directory_is_what_it_serves(llm: Any) -> None:
    assert Path(llm.tokenizer.directory) == smollm2_dir()
