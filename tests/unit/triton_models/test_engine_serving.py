"""The SmolLM2 Triton models (genai_triton.serving) without Triton: a stand-in for the Python
backend's `triton_python_backend_utils` runs preprocessing, the tensorrt_llm stand-in and the
BLS facade in this process, BLS calls included, so their protocol is checked in seconds:
streamed ids, stop requests, polled cancellation, tagged errors, detokenized text."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest
from genai_triton import facade, serving
from genai_triton.tokenization import TextTokenizer
from numpy.typing import NDArray

from tests.support.smollm2 import smollm2_dir

FINAL = 1


class Tensor:
    def __init__(self, name: str, array: NDArray[Any]) -> None:
        self._name = name
        self._array = np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> NDArray[Any]:
        return self._array


class TritonError:
    INVALID_ARG = "INVALID_ARG"
    INTERNAL = "INTERNAL"
    CANCELLED = "CANCELLED"

    def __init__(self, message: str, code: str | None = None) -> None:
        self._message = message
        self.code = code

    def message(self) -> str:
        return self._message


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor], error: TritonError | None = None) -> None:
        self._tensors = {t.name(): t for t in output_tensors}
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return list(self._tensors.values())

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError:
        assert self._error is not None
        return self._error

    def get(self, name: str) -> Tensor | None:
        return self._tensors.get(name)


class Sender:
    """Collects what a model sends for one request; `cancelled` plays the client going away."""

    def __init__(self) -> None:
        self.responses: queue.SimpleQueue[tuple[InferenceResponse | None, int]] = (
            queue.SimpleQueue()
        )
        self.cancelled = False
        self.closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self.closed:
            raise RuntimeError("the response sender is closed")
        self.responses.put((response, flags))
        if flags & FINAL:
            self.closed = True

    def is_cancelled(self) -> bool:
        return self.cancelled

    def stream(self, timeout: float = 60.0) -> Iterator[InferenceResponse]:
        """Responses with data until the final flag."""
        while True:
            response, flags = self.responses.get(timeout=timeout)
            if response is not None:
                yield response
            if flags & FINAL:
                return


class Request:
    def __init__(self, inputs: dict[str, NDArray[Any]], request_id: str = "") -> None:
        self.inputs = inputs
        self._id = request_id
        self.sender = Sender()

    def get_response_sender(self) -> Sender:
        return self.sender

    def request_id(self) -> str:
        return self._id

    def is_cancelled(self) -> bool:
        return self.sender.cancelled


class Metric:
    def __init__(self) -> None:
        self.value = 0.0

    def increment(self, value: float) -> None:
        self.value += value

    def set(self, value: float) -> None:
        self.value = value


class MetricFamily:
    COUNTER = "counter"
    GAUGE = "gauge"
    families: ClassVar[dict[str, MetricFamily]] = {}

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.metric = Metric()
        MetricFamily.families[name] = self

    def Metric(self, labels: dict[str, str]) -> Metric:
        return self.metric


class Logger:
    @staticmethod
    def log_info(message: str) -> None:
        pass

    log_warn = log_error = log_info


MODELS: dict[str, Any] = {}


class InferenceRequest:
    """A BLS call, served by the model of that name in this process."""

    def __init__(
        self,
        model_name: str,
        inputs: list[Tensor],
        requested_output_names: list[str],
        request_id: str = "",
    ) -> None:
        self.request = Request({t.name(): t.as_numpy() for t in inputs}, request_id)
        self.model = MODELS[model_name]

    def exec(self, decoupled: bool = False) -> Any:
        if not decoupled:
            (response,) = self.model.execute([self.request])
            return response
        self.model.execute([self.request])
        return self.request.sender.stream()


def get_input_tensor_by_name(request: Request, name: str) -> Tensor | None:
    array = request.inputs.get(name)
    return None if array is None else Tensor(name, array)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return response.get(name)


PB_UTILS = SimpleNamespace(
    TRITONSERVER_RESPONSE_COMPLETE_FINAL=FINAL,
    Tensor=Tensor,
    TritonError=TritonError,
    InferenceResponse=InferenceResponse,
    InferenceRequest=InferenceRequest,
    MetricFamily=MetricFamily,
    Logger=Logger,
    get_input_tensor_by_name=get_input_tensor_by_name,
    get_output_tensor_by_name=get_output_tensor_by_name,
)


def args(name: str, **parameters: str) -> dict[str, Any]:
    config = {"parameters": {k: {"string_value": v} for k, v in parameters.items()}}
    return {"model_config": json.dumps(config), "model_name": name, "model_version": "1"}


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return smollm2_dir()


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> TextTokenizer:
    return TextTokenizer(model_dir)


@pytest.fixture(scope="module")
def models(model_dir: Path) -> Iterator[dict[str, Any]]:
    pb = PB_UTILS
    parameters = {"model_dir": str(model_dir)}
    built: dict[str, Any] = {
        "preprocessing": serving.PreprocessingModel(pb),
        "tensorrt_llm": serving.EngineModel(pb),
        "postprocessing": serving.PostprocessingModel(pb),
        "ensemble": serving.FacadeModel(pb),
    }
    engine_parameters = {
        **parameters,
        "max_seq_len": "512",
        "max_num_sequences": "4",
        "threads": "2",
        "cancellation_check_period_ms": "5",
    }
    for name, model in built.items():
        model.initialize(
            args(name, **(engine_parameters if name == "tensorrt_llm" else parameters))
        )
    MODELS.clear()
    MODELS.update(built)
    yield built
    for model in built.values():
        model.finalize()
    MODELS.clear()


def metric(name: str) -> float:
    return MetricFamily.families[name].metric.value


def text_array(*values: str) -> NDArray[Any]:
    return np.array([[v.encode() for v in values]], dtype=np.object_)


def scalar(value: Any, dtype: Any) -> NDArray[Any]:
    return np.array([[value]], dtype=dtype)


def facade_request(prompt: str, max_tokens: int, **extra: NDArray[Any]) -> Request:
    inputs = {
        "text_input": text_array(prompt),
        "max_tokens": scalar(max_tokens, np.int32),
        "stream": scalar(True, np.bool_),
        "exclude_input_in_output": scalar(True, np.bool_),
    }
    inputs.update(extra)
    return Request(inputs)


def outputs(response: InferenceResponse) -> tuple[str, int, int, str]:
    def first(name: str) -> Any:
        tensor = response.get(name)
        assert tensor is not None
        return tensor.as_numpy().reshape(-1)[0]

    return (
        first("text_output").decode(),
        int(first("num_input_tokens")),
        int(first("num_output_tokens")),
        first("finish_reason").decode(),
    )


def chat(tokenizer: TextTokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}])


def test_the_facade_streams_the_answer(models: dict[str, Any], tokenizer: TextTokenizer) -> None:
    prompt = chat(tokenizer, "What is the capital of France?")
    request = facade_request(prompt, 30)
    models["ensemble"].execute([request])
    chunks = [outputs(r) for r in request.sender.stream()]
    text = "".join(c[0] for c in chunks)
    assert "Paris" in text
    assert chunks[-1][3] == "stop"
    assert {c[1] for c in chunks} == {len(tokenizer.encode(prompt))}
    assert [c[2] for c in chunks[:-1]] == list(range(1, len(chunks)))

    whole = facade_request(prompt, 30, stream=scalar(False, np.bool_))
    models["ensemble"].execute([whole])
    (only,) = [outputs(r) for r in whole.sender.stream()]
    assert only[0] == text
    assert only[3] == "stop"


def test_the_facade_refuses_bad_requests_with_tags(models: dict[str, Any]) -> None:
    cases = [
        (facade_request("hi", 0), "[FIELD_VIOLATION] max_tokens must be >= 1"),
        (facade_request("hi", 600), "[CONTEXT_LENGTH_EXCEEDED] prompt has 1 tokens"),
        (facade_request("hi", 5, top_p=scalar(1.5, np.float32)), "[FIELD_VIOLATION] top_p"),
    ]
    for request, message in cases:
        models["ensemble"].execute([request])
        response, flags = request.sender.responses.get(timeout=30)
        assert flags & FINAL
        assert response is not None
        assert response.has_error()
        assert response.error().message().startswith(message)


def test_stop_words_are_cut_from_the_text(models: dict[str, Any], tokenizer: TextTokenizer) -> None:
    prompt = chat(tokenizer, "What is the capital of France?")
    request = facade_request(prompt, 30, stop_words=text_array("Paris"))
    models["ensemble"].execute([request])
    chunks = [outputs(r) for r in request.sender.stream()]
    assert chunks[-1][3] == "stop_words"
    assert "".join(c[0] for c in chunks).endswith("is ")


def test_a_cancelled_facade_request_stops_the_engine(
    models: dict[str, Any], tokenizer: TextTokenizer
) -> None:
    before = metric("genai_llm_requests_cancelled_total")
    request = facade_request(chat(tokenizer, "Write a long story."), 400)
    models["ensemble"].execute([request])
    received = request.sender.stream()
    for _ in range(3):
        next(received)
    request.sender.cancelled = True
    started = time.monotonic()
    while metric("genai_llm_requests_cancelled_total") == before:
        assert time.monotonic() - started < 2
        time.sleep(0.005)
    for _ in received:  # the facade still ends the request with a final flag
        pass
    deadline = time.monotonic() + 5
    while models["tensorrt_llm"].engine.active:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_the_engine_model_streams_ids_and_honours_stop_requests(
    models: dict[str, Any], tokenizer: TextTokenizer
) -> None:
    prompt = tokenizer.encode(chat(tokenizer, "Write a long poem."))
    inputs = {
        "input_ids": np.array([prompt], dtype=np.int32),
        "input_lengths": scalar(len(prompt), np.int32),
        "request_output_len": scalar(300, np.int32),
        "streaming": scalar(True, np.bool_),
    }
    running = Request(inputs, request_id="poem")
    models["tensorrt_llm"].execute([running])
    stream = running.sender.stream()
    first = next(stream)
    ids = first.get("output_ids")
    assert ids is not None
    assert ids.as_numpy().shape == (1, 1, 1)
    stop = Request({"stop": scalar(True, np.bool_)}, request_id="poem")
    models["tensorrt_llm"].execute([stop])
    assert list(stop.sender.stream()) == []
    rest = list(stream)
    reason = rest[-1].get("finish_reason")
    assert reason is not None
    assert reason.as_numpy().reshape(-1)[0] == b"cancelled"

    whole = Request({**inputs, "request_output_len": scalar(4, np.int32)})
    whole.inputs["streaming"] = scalar(False, np.bool_)
    models["tensorrt_llm"].execute([whole])
    (only,) = list(whole.sender.stream())
    all_ids = only.get("output_ids")
    assert all_ids is not None
    assert all_ids.as_numpy().shape == (1, 1, 4)


def test_the_engine_model_notices_a_cancelled_client(
    models: dict[str, Any], tokenizer: TextTokenizer
) -> None:
    prompt = tokenizer.encode(chat(tokenizer, "Write a long poem."))
    request = Request(
        {
            "input_ids": np.array([prompt], dtype=np.int32),
            "request_output_len": scalar(300, np.int32),
            "streaming": scalar(True, np.bool_),
        }
    )
    models["tensorrt_llm"].execute([request])
    stream = request.sender.stream()
    next(stream)
    request.sender.cancelled = True  # the poller sees it within its period
    responses = list(stream)
    reason = responses[-1].get("finish_reason")
    assert reason is not None
    assert reason.as_numpy().reshape(-1)[0] == b"cancelled"


def test_preprocessing_outputs_word_lists(models: dict[str, Any], tokenizer: TextTokenizer) -> None:
    request = Request(
        {
            "QUERY": text_array("Hello Paris"),
            "STOP_WORDS_DICT": text_array("Paris", "\n\n"),
            "BAD_WORDS_DICT": text_array("London"),
        }
    )
    (response,) = models["preprocessing"].execute([request])
    ids = response.get("INPUT_ID").as_numpy()
    assert ids.tolist() == [tokenizer.encode("Hello Paris")]
    assert response.get("REQUEST_INPUT_LEN").as_numpy().tolist() == [[ids.shape[1]]]
    stop = response.get("STOP_WORDS_IDS").as_numpy()
    assert stop.shape[:2] == (1, 2)
    words = serving_words(stop)
    assert [tokenizer.decode(w) for w in words] == ["Paris", "\n\n"]
    bad = [tokenizer.decode(w) for w in serving_words(response.get("BAD_WORDS_IDS").as_numpy())]
    assert bad == ["London", " London"]
    assert response.get("OUT_END_ID").as_numpy().tolist() == [[tokenizer.eos_id]]


def serving_words(array: NDArray[Any]) -> list[tuple[int, ...]]:
    from genai_triton.tokenization import parse_word_list

    return parse_word_list(array)


def test_postprocessing_returns_new_text_only(
    models: dict[str, Any], tokenizer: TextTokenizer
) -> None:
    text = " na\u00efve \u4f60\u597d"
    ids = tokenizer.encode(text)
    pieces = []
    for end in range(1, len(ids) + 1):
        request = Request(
            {
                "TOKENS_BATCH": np.array([[ids[:end]]], dtype=np.int32),
                "SEQUENCE_LENGTH": scalar(end, np.int32),
                "PREVIOUS_LENGTH": scalar(end - 1, np.int32),
                "FINAL": scalar(end == len(ids), np.bool_),
            }
        )
        (response,) = models["postprocessing"].execute([request])
        pieces.append(response.get("OUTPUT").as_numpy().reshape(-1)[0].decode())
    assert "".join(pieces) == text


def test_serving_checks_the_stub_numpy() -> None:
    serving.check_stub_environment()  # numpy 1 here
    assert facade.FINISH_CANCELLED == "cancelled"


def test_engine_model_threads(models: dict[str, Any]) -> None:
    names = {thread.name for thread in threading.enumerate()}
    assert {"genai-engine", "cancellation-poller", "cancellation"} <= names


# -- guided decoding and seeds ---------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "maxLength": 30},
    },
    "required": ["name", "age", "city"],
}


def guided(guide_type: str, guide: str | None = None) -> dict[str, NDArray[Any]]:
    inputs = {"guided_decoding_guide_type": text_array(guide_type)}
    if guide is not None:
        inputs["guided_decoding_guide"] = text_array(guide)
    return inputs


@pytest.mark.parametrize("stream", [True, False])
def test_the_facade_passes_a_json_schema_guide_to_the_engine(
    models: dict[str, Any], tokenizer: TextTokenizer, stream: bool
) -> None:
    import jsonschema

    prompt = chat(tokenizer, "Describe a person who lives in Paris.")
    request = facade_request(
        prompt,
        120,
        stream=scalar(stream, np.bool_),
        **guided("json_schema", json.dumps(PERSON)),
    )
    models["ensemble"].execute([request])
    chunks = [outputs(r) for r in request.sender.stream()]

    assert chunks[-1][3] == "stop"
    assert len(chunks) > 1 if stream else len(chunks) == 1
    jsonschema.validate(json.loads("".join(c[0] for c in chunks)), PERSON)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            guided("json_schema", '{"type": "object", "properties": {"a": {"type": 7}}}'),
            "[FIELD_VIOLATION] guided_decoding_guide: invalid json_schema: ",
        ),
        (
            guided("regex", "[a-"),
            "[FIELD_VIOLATION] guided_decoding_guide: invalid regex: ",
        ),
        (
            guided("yaml", "a: 1"),
            "[FIELD_VIOLATION] guided_decoding_guide_type: unknown guide type 'yaml'",
        ),
        (
            guided("json_schema"),
            "[FIELD_VIOLATION] guided_decoding_guide: is required for guide type json_schema",
        ),
        (
            {"guided_decoding_guide": text_array("{}")},
            "[FIELD_VIOLATION] guided_decoding_guide_type: is required when",
        ),
    ],
)
def test_bad_guides_are_tagged_field_violations(
    models: dict[str, Any], inputs: dict[str, NDArray[Any]], message: str
) -> None:
    request = facade_request("Hi", 8, **inputs)
    models["ensemble"].execute([request])
    response, flags = request.sender.responses.get(timeout=30)

    assert flags & FINAL
    assert response is not None
    assert response.has_error()
    assert response.error().message().startswith(message)
    assert response.error().code == TritonError.INVALID_ARG


def test_the_engine_model_refuses_a_guide_that_does_not_compile(
    models: dict[str, Any], tokenizer: TextTokenizer
) -> None:
    before = models["tensorrt_llm"].engine.active
    prompt = tokenizer.encode("Hi")
    request = Request(
        {
            "input_ids": np.array([prompt], dtype=np.int32),
            "request_output_len": scalar(8, np.int32),
            "streaming": scalar(True, np.bool_),
            **guided("ebnf_grammar", "root ::= nothing"),
        }
    )
    models["tensorrt_llm"].execute([request])
    (response,) = list(request.sender.stream())

    assert response.has_error()
    assert (
        response.error()
        .message()
        .startswith(
            "[FIELD_VIOLATION] guided_decoding_guide: invalid ebnf_grammar: EBNF parser error"
        )
    )
    assert models["tensorrt_llm"].engine.active == before


def test_the_seed_reaches_the_engine(models: dict[str, Any], tokenizer: TextTokenizer) -> None:
    """The facade's `seed` goes to tensorrt_llm's `seed` (TensorRT-LLM v1.0's name): with it
    lost, each request would draw a random seed and the texts would differ."""
    prompt = chat(tokenizer, "Tell me a short story.")

    def sampled(seed: int) -> str:
        request = facade_request(
            prompt,
            16,
            temperature=scalar(1.0, np.float32),
            seed=scalar(seed, np.uint64),
        )
        models["ensemble"].execute([request])
        return "".join(outputs(r)[0] for r in request.sender.stream())

    assert sampled(5) == sampled(5)
    assert sampled(5) != sampled(6)
