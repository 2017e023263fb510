"""The four Python-backend models of the SmolLM2 CPU repository (`triton_models/cpu`), shaped
like TensorRT-LLM's `inflight_batcher_llm` repository. Each `model.py` subclasses one class
here and hands it the backend's `triton_python_backend_utils` module, so this module never
imports Triton and is unit-tested with a stand-in.

- `PreprocessingModel` (`preprocessing`): `QUERY` -> `INPUT_ID`, `REQUEST_INPUT_LEN`; stop and
  bad words -> TensorRT-LLM word lists `[2, n]`; `END_ID`/`PAD_ID` defaults.
- `EngineModel` (`tensorrt_llm`, decoupled, one instance): the TensorRT-LLM stand-in.
  `execute` hands each request to the in-flight batcher and returns at once; the engine thread
  streams through each request's response sender (`output_ids` of the step, or all of them at
  the end when `streaming` is false, `sequence_length`, `finish_reason`). Guided decoding
  (`guided_decoding_guide_type`, `guided_decoding_guide`) compiles with xgrammar off the
  engine thread; a guide that does not compile ends the request with a `[FIELD_VIOLATION]`
  error. A request with `stop=true` and the `request_id` of a running one cancels it
  (TensorRT-LLM's way, which BLS callers need); a poller checks
  `response_sender.is_cancelled()` of every running request each
  `cancellation_check_period_ms`. Metrics: `genai_llm_requests_total`,
  `genai_llm_requests_cancelled_total`, `genai_llm_output_tokens_total`,
  `genai_llm_requests_in_flight`, `genai_llm_active_sequences`, `genai_llm_waiting_requests`.
- `PostprocessingModel` (`postprocessing`): `TOKENS_BATCH` + `SEQUENCE_LENGTH` -> `OUTPUT`,
  stateless; with `PREVIOUS_LENGTH` (ids already shown) it returns only the new text, never
  splitting a character or losing a space (`tokenization.text_delta`).
- `FacadeModel` (`ensemble`, decoupled): the generation facade of `triton_models/README.md`
  as a BLS model: validates the request, calls `preprocessing`, streams from `tensorrt_llm`,
  detokenizes incrementally, cuts stop words, and propagates a client's cancellation to
  `tensorrt_llm` with a stop request. (A platform "ensemble" cannot: in Triton 2.51 a
  cancelled client stream never reaches the decoupled step inside an ensemble.)
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from genai_triton import facade, guides

# Names of the models and of their tensors (TensorRT-LLM's, plus three extensions marked *).
PREPROCESSING = "preprocessing"
ENGINE = "tensorrt_llm"
POSTPROCESSING = "postprocessing"

QUERY = "QUERY"
REQUEST_OUTPUT_LEN = "REQUEST_OUTPUT_LEN"
BAD_WORDS_DICT = "BAD_WORDS_DICT"
STOP_WORDS_DICT = "STOP_WORDS_DICT"
END_ID = "END_ID"
PAD_ID = "PAD_ID"
INPUT_ID = "INPUT_ID"
REQUEST_INPUT_LEN = "REQUEST_INPUT_LEN"
BAD_WORDS_IDS = "BAD_WORDS_IDS"
STOP_WORDS_IDS = "STOP_WORDS_IDS"
OUT_END_ID = "OUT_END_ID"
OUT_PAD_ID = "OUT_PAD_ID"

INPUT_IDS = "input_ids"
INPUT_LENGTHS = "input_lengths"
REQUEST_OUTPUT_LEN_LC = "request_output_len"
END_ID_LC = "end_id"
PAD_ID_LC = "pad_id"
STREAMING = "streaming"
STOP = "stop"
RUNTIME_TOP_K = "runtime_top_k"
RUNTIME_TOP_P = "runtime_top_p"
TEMPERATURE = "temperature"
REPETITION_PENALTY = "repetition_penalty"
PRESENCE_PENALTY = "presence_penalty"
FREQUENCY_PENALTY = "frequency_penalty"
SEED = "seed"
GUIDED_DECODING_GUIDE_TYPE = guides.GUIDE_TYPE
GUIDED_DECODING_GUIDE = guides.GUIDE
STOP_WORDS_LIST = "stop_words_list"
BAD_WORDS_LIST = "bad_words_list"
OUTPUT_IDS = "output_ids"
SEQUENCE_LENGTH = "sequence_length"
FINISH_REASON = "finish_reason"  # *

TOKENS_BATCH = "TOKENS_BATCH"
PREVIOUS_LENGTH = "PREVIOUS_LENGTH"  # *
STOP_WORDS = "STOP_WORDS"  # *
OUTPUT = "OUTPUT"


def config_parameters(args: dict[str, Any]) -> dict[str, str]:
    """The `parameters` of a model's config as {key: string_value}."""
    config = json.loads(args["model_config"])
    parameters = config.get("parameters", {}) or {}
    return {
        key: str(value.get("string_value", "")) if isinstance(value, dict) else str(value)
        for key, value in parameters.items()
    }


def check_stub_environment() -> None:
    """Fails early, with the fix, when the Python-backend stub runs with numpy 2: the stub of
    nvidia-pytriton 0.7.0 is built against numpy 1 and then reads every BYTES tensor wrong."""
    if int(np.__version__.split(".")[0]) >= 2:
        raise RuntimeError(
            f"the Python-backend stub imported numpy {np.__version__} from {np.__file__}; it "
            "needs numpy<2: start tritonserver through services.inference.adapters."
            "tritonserver (its environment puts the platform's virtualenv first on PATH)"
        )


def _model_dir(parameters: dict[str, str]) -> Any:
    """`model_dir` when set; else the prepared model that `prepared_model` names (default: the
    SmolLM2 that scripts/setup prepares)."""
    from pathlib import Path

    from genai_triton.prepare import prepared_model_dir

    explicit = parameters.get("model_dir", "").strip()
    if explicit and not explicit.startswith("${"):
        return Path(explicit)
    name = parameters.get("prepared_model", "").strip()
    if name and not name.startswith("${"):
        return prepared_model_dir(model=name)
    return prepared_model_dir()


def _int_parameter(parameters: dict[str, str], name: str, default: int) -> int:
    raw = parameters.get(name, "").strip()
    if not raw or raw.startswith("${"):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"config parameter {name} must be an integer, got {raw!r}") from None


def _optional(pb_utils: Any, request: Any, name: str) -> NDArray[Any] | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _scalar(array: NDArray[Any] | None, kind: Callable[[Any], Any], default: Any) -> Any:
    if array is None or array.size == 0:
        return default
    return kind(array.reshape(-1)[0].item())


def _strings(array: NDArray[Any] | None) -> list[str]:
    if array is None:
        return []
    words = []
    for value in array.reshape(-1):
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        if text:
            words.append(text)
    return words


def _send(pb_utils: Any, sender: Any, response: Any, final: bool) -> bool:
    flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
    try:
        if response is None:
            sender.send(flags=flags)
        else:
            sender.send(response, flags=flags)
    except Exception as error:  # the request is gone (cancelled, server stopping)
        pb_utils.Logger.log_warn(f"could not send a response: {error}")
        return False
    return True


class _GuardedSender:
    """A response sender that another thread may poll: `is_cancelled()` never touches a
    request whose final response was sent, because Triton frees the request then (polling it
    crashed the stub with SIGSEGV under concurrent streams). Sends and polls are serialized."""

    def __init__(self, pb_utils: Any, sender: Any) -> None:
        self._sender = sender
        self._final_flag = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        self._lock = threading.Lock()
        self._closed = False

    def send(self, response: Any = None, flags: int = 0) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the final response was sent already")
            try:
                if response is None:
                    self._sender.send(flags=flags)
                else:
                    self._sender.send(response, flags=flags)
            finally:
                if flags & self._final_flag:
                    self._closed = True

    def is_cancelled(self) -> bool:
        with self._lock:
            return False if self._closed else bool(self._sender.is_cancelled())


def _error(pb_utils: Any, reason: str, message: str) -> Any:
    return facade.error_response(pb_utils, facade.FacadeError(reason, message))


# --------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------


class PreprocessingModel:
    def __init__(self, pb_utils: Any) -> None:
        self.pb = pb_utils

    def initialize(self, args: dict[str, Any]) -> None:
        check_stub_environment()
        from genai_triton.tokenization import TextTokenizer

        self.tokenizer = TextTokenizer(_model_dir(config_parameters(args)))

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        from genai_triton.tokenization import word_list, word_variants

        pb = self.pb
        try:
            query = _strings(_optional(pb, request, QUERY))
            if len(query) != 1:
                raise facade.FacadeError(facade.FIELD_VIOLATION, "text_input must hold one text")
            ids = self.tokenizer.encode(query[0])
            stop_words = _strings(_optional(pb, request, STOP_WORDS_DICT))
            bad_words = word_variants(_strings(_optional(pb, request, BAD_WORDS_DICT)))
            stop_ids = (
                [s for s in self.tokenizer.encode_batch(stop_words) if s] if stop_words else []
            )
            bad_ids = [s for s in self.tokenizer.encode_batch(bad_words) if s] if bad_words else []
            end_id = _scalar(_optional(pb, request, END_ID), int, self.tokenizer.eos_id)
            pad_id = _scalar(_optional(pb, request, PAD_ID), int, self.tokenizer.pad_id)
        except facade.FacadeError as error:
            return facade.error_response(pb, error)
        except UnicodeDecodeError:
            return _error(pb, facade.FIELD_VIOLATION, "text_input is not valid UTF-8")
        tensors = [
            pb.Tensor(INPUT_ID, np.array([ids], dtype=np.int32)),
            pb.Tensor(REQUEST_INPUT_LEN, np.array([[len(ids)]], dtype=np.int32)),
            pb.Tensor(STOP_WORDS_IDS, word_list(stop_ids)[None]),
            pb.Tensor(BAD_WORDS_IDS, word_list(bad_ids)[None]),
            pb.Tensor(OUT_END_ID, np.array([[-1 if end_id is None else end_id]], dtype=np.int32)),
            pb.Tensor(OUT_PAD_ID, np.array([[-1 if pad_id is None else pad_id]], dtype=np.int32)),
        ]
        return pb.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# tensorrt_llm (the stand-in)
# --------------------------------------------------------------------------------------------


@dataclass
class _Running:
    sender: Any
    streaming: bool
    engine_id: str
    triton_id: str
    ids: list[int] = field(default_factory=list)


class EngineModel:
    """Parameters (config `parameters`, all optional): `max_seq_len` (context in tokens, prompt
    plus output; 0 or absent: the model's `max_position_embeddings`), `max_num_sequences`
    (decoded together, default 16), `prefill_chunk` (prompt tokens per scheduler turn, default
    256), `cancellation_check_period_ms` (default 20), `threads` (torch threads of decoding
    steps, 0: all CPUs), `prefill_threads` (torch threads of prompts, 0: all CPUs),
    `kv_cache_reuse_tokens` (prompt tokens kept for reuse by prompts with the same start,
    default 4096, 0: off),
    `linear_backend` (`onednn` or `mkl`), `model_dir` (default: the prepared SmolLM2).
    Guided decoding uses xgrammar over the model's `tokenizer.json`, with one compilation
    thread and the last 64 compiled guides kept."""

    def __init__(self, pb_utils: Any) -> None:
        self.pb = pb_utils

    def initialize(self, args: dict[str, Any]) -> None:
        check_stub_environment()
        import torch

        from genai_triton.cpus import available_cpus
        from genai_triton.engine import Engine, load_model
        from genai_triton.engine.guided import Grammars
        from genai_triton.tokenization import TextTokenizer

        # This (the stub's main) thread runs torch with one thread: the engine thread is the
        # only one with a team of OpenMP workers (see `Engine.start`).
        torch.set_num_threads(1)
        parameters = config_parameters(args)
        directory = _model_dir(parameters)
        self.tokenizer = TextTokenizer(directory)
        backend = parameters.get("linear_backend", "").strip() or None
        if backend is not None and backend.startswith("${"):
            backend = None
        precision = parameters.get("weight_only_precision", "").strip()
        if precision.startswith("${"):
            precision = ""
        model = load_model(directory, backend, precision)
        cpus = available_cpus()  # the container's, not the node's
        threads = _int_parameter(parameters, "threads", 0) or cpus
        prefill_threads = _int_parameter(parameters, "prefill_threads", 0) or cpus
        max_len = _int_parameter(parameters, "max_seq_len", 0) or None
        eos = self.tokenizer.eos_id
        self.grammars = Grammars.for_tokenizer(
            directory / "tokenizer.json",
            vocab_size=model.config.vocab_size,
            stop_ids=[] if eos is None else [eos],
        )
        self.engine = Engine(
            model,
            slots=_int_parameter(parameters, "max_num_sequences", 16),
            max_len=max_len,
            prefill_chunk=_int_parameter(parameters, "prefill_chunk", 256),
            decode=self.tokenizer.decode,
            threads=threads,
            prefill_threads=prefill_threads,
            prefix_cache_tokens=_int_parameter(parameters, "kv_cache_reuse_tokens", 4096),
            grammars=self.grammars,
        )
        self.period = _int_parameter(parameters, "cancellation_check_period_ms", 20) / 1000
        self._running: dict[str, _Running] = {}  # engine id -> request
        self._by_triton_id: dict[str, str] = {}
        self._lock = threading.Lock()
        self._setup_metrics(args)
        started = time.monotonic()
        self.engine.start(warm_up=True)
        warm_up = time.monotonic() - started
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="cancellation-poller", daemon=True)
        self._poller.start()
        self.pb.Logger.log_info(
            f"tensorrt_llm stand-in: {directory.name}, {self.engine.slots} sequences of up to "
            f"{self.engine.max_len} tokens, {threads} decoding / {prefill_threads} prefill "
            f"threads, {model.backend} matmuls, "
            f"{precision or 'fp32'} weights, "
            f"warmed up in {warm_up:.1f} s"
        )

    def _setup_metrics(self, args: dict[str, Any]) -> None:
        pb = self.pb
        labels = {"model": args["model_name"], "version": str(args["model_version"])}
        counter, gauge = pb.MetricFamily.COUNTER, pb.MetricFamily.GAUGE
        specs = (
            ("genai_llm_requests_total", "Requests received", counter),
            ("genai_llm_requests_cancelled_total", "Requests cancelled before they ended", counter),
            ("genai_llm_output_tokens_total", "Tokens generated", counter),
            ("genai_llm_requests_in_flight", "Requests being served now", gauge),
            ("genai_llm_active_sequences", "Sequences in the running batch", gauge),
            ("genai_llm_waiting_requests", "Requests waiting for a batch slot", gauge),
        )
        self._families = [pb.MetricFamily(name, text, kind) for name, text, kind in specs]
        metrics = [family.Metric(labels=labels) for family in self._families]
        (
            self.m_requests,
            self.m_cancelled,
            self.m_tokens,
            self.m_in_flight,
            self.m_active,
            self.m_waiting,
        ) = metrics

    # -- requests -------------------------------------------------------------------------------

    def execute(self, requests: Sequence[Any]) -> None:
        for request in requests:
            try:
                self._start(request)
            except Exception as error:  # never leave a request without its final response
                self.pb.Logger.log_error(f"{type(self).__name__}: {error!r}")
                _send(
                    self.pb,
                    request.get_response_sender(),
                    _error(self.pb, facade.INTERNAL_ERROR, f"generation failed: {error}"),
                    True,
                )
        return None

    def _submit(self, running: _Running, request: Any, on_update: Callable[[Any], None]) -> None:
        """Registers `running` and hands `request` (an `EngineRequest`) to the engine; a request
        the engine refuses ends at once with its tagged error."""
        from genai_triton.engine import (
            ContextLengthExceededError,
            EngineError,
            InvalidRequestError,
        )

        with self._lock:
            self._running[running.engine_id] = running
            if running.triton_id:
                self._by_triton_id[running.triton_id] = running.engine_id
        self.m_in_flight.increment(1)
        reason = ""
        try:
            self.engine.submit(request, on_update, running.engine_id)
        except ContextLengthExceededError as error:
            reason, message = facade.CONTEXT_LENGTH_EXCEEDED, str(error)
        except InvalidRequestError as error:
            reason, message = facade.FIELD_VIOLATION, str(error)
        except EngineError as error:
            reason, message = facade.INTERNAL_ERROR, str(error)
        if reason:
            self._forget(running)
            _send(self.pb, running.sender, _error(self.pb, reason, message), True)
        self._update_gauges()

    def _start(self, request: Any) -> None:
        from genai_triton.engine import EngineRequest, SamplingParams
        from genai_triton.tokenization import parse_word_list

        pb = self.pb
        sender = _GuardedSender(pb, request.get_response_sender())
        triton_id = request.request_id() or ""
        if _scalar(_optional(pb, request, STOP), bool, False):
            with self._lock:
                engine_id = self._by_triton_id.get(triton_id)
            if engine_id is not None:
                self.engine.cancel(engine_id)
            _send(pb, sender, None, True)
            return
        self.m_requests.increment(1)
        input_ids = _optional(pb, request, INPUT_IDS)
        if input_ids is None:
            _send(pb, sender, _error(pb, facade.FIELD_VIOLATION, "input_ids is required"), True)
            return
        prompt = [int(t) for t in input_ids.reshape(-1).tolist()]
        length = _scalar(_optional(pb, request, INPUT_LENGTHS), int, len(prompt))
        prompt = prompt[: max(0, length)]
        try:
            guide = guides.read_guide(
                _text(_optional(pb, request, GUIDED_DECODING_GUIDE_TYPE)),
                _text(_optional(pb, request, GUIDED_DECODING_GUIDE)),
            )
        except guides.GuideError as error:
            _send(pb, sender, _error(pb, facade.FIELD_VIOLATION, str(error)), True)
            return
        except UnicodeDecodeError:
            message = "the guided decoding inputs are not valid UTF-8"
            _send(pb, sender, _error(pb, facade.FIELD_VIOLATION, message), True)
            return
        stop_lists = _optional(pb, request, STOP_WORDS_LIST)
        stop_sequences = parse_word_list(stop_lists) if stop_lists is not None else []
        bad_lists = _optional(pb, request, BAD_WORDS_LIST)
        end_id = _scalar(_optional(pb, request, END_ID_LC), int, self.tokenizer.eos_id)
        sampling = SamplingParams(
            temperature=_scalar(_optional(pb, request, TEMPERATURE), float, 0.0),
            top_k=_scalar(_optional(pb, request, RUNTIME_TOP_K), int, 0),
            top_p=_scalar(_optional(pb, request, RUNTIME_TOP_P), float, 1.0),
            repetition_penalty=_scalar(_optional(pb, request, REPETITION_PENALTY), float, 1.0),
            presence_penalty=_scalar(_optional(pb, request, PRESENCE_PENALTY), float, 0.0),
            frequency_penalty=_scalar(_optional(pb, request, FREQUENCY_PENALTY), float, 0.0),
            seed=_scalar(_optional(pb, request, SEED), int, None),
        )
        engine_request = EngineRequest(
            prompt_ids=prompt,
            max_tokens=_scalar(_optional(pb, request, REQUEST_OUTPUT_LEN_LC), int, 0),
            sampling=sampling,
            end_id=end_id if end_id is not None and end_id >= 0 else None,
            stop_sequences=stop_sequences,
            stop_strings=[self.tokenizer.decode(s) for s in stop_sequences],
            bad_words=parse_word_list(bad_lists) if bad_lists is not None else [],
            guide=guide,
        )
        engine_id = f"{triton_id or 'request'}-{uuid.uuid4().hex[:12]}"
        running = _Running(
            sender=sender,
            streaming=_scalar(_optional(pb, request, STREAMING), bool, False),
            engine_id=engine_id,
            triton_id=triton_id,
        )
        self._submit(running, engine_request, self._on_update)

    def _forget(self, running: _Running) -> None:
        with self._lock:
            self._running.pop(running.engine_id, None)
            if self._by_triton_id.get(running.triton_id) == running.engine_id:
                del self._by_triton_id[running.triton_id]
        self.m_in_flight.increment(-1)

    def _on_update(self, update: Any) -> None:
        """Runs on the engine thread: one response per update."""
        with self._lock:
            running = self._running.get(update.request_id)
        if running is None:
            return
        finished = update.finish_reason is not None
        if update.error is not None:
            self._forget(running)
            self._update_gauges()
            _send(self.pb, running.sender, _engine_error(self.pb, update.error), True)
            return
        if update.token_ids:
            self.m_tokens.increment(len(update.token_ids))
        if running.streaming:
            ids = list(update.token_ids)
        else:
            running.ids.extend(update.token_ids)
            if not finished:
                return
            ids = running.ids
        if finished:
            self._forget(running)
            if update.finish_reason == facade.FINISH_CANCELLED:
                self.m_cancelled.increment(1)
            self._update_gauges()
        pb = self.pb
        response = pb.InferenceResponse(
            output_tensors=[
                pb.Tensor(OUTPUT_IDS, np.array(ids, dtype=np.int32).reshape(1, 1, -1)),
                pb.Tensor(SEQUENCE_LENGTH, np.array([[len(ids)]], dtype=np.int32)),
                pb.Tensor(
                    FINISH_REASON,
                    np.array([[(update.finish_reason or "").encode()]], dtype=np.object_),
                ),
            ]
        )
        if not _send(pb, running.sender, response, finished) and not finished:
            self.engine.cancel(update.request_id)

    def _update_gauges(self) -> None:
        self.m_active.set(self.engine.active)
        self.m_waiting.set(self.engine.waiting)

    def _poll(self) -> None:
        """Cancels the requests whose client went away (TensorRT-LLM checks the same way,
        every `cancellation_check_period_ms`)."""
        while not self._stopping.wait(self.period):
            with self._lock:
                running = list(self._running.values())
            for request in running:
                try:
                    cancelled = request.sender.is_cancelled()
                except Exception:
                    cancelled = True
                if cancelled:
                    self.engine.cancel(request.engine_id)
            self._update_gauges()

    def finalize(self) -> None:
        self._stopping.set()
        self.engine.stop()
        self.grammars.close()
        # Metrics go before their families (the Python backend requires that order).
        del self.m_requests, self.m_cancelled, self.m_tokens
        del self.m_in_flight, self.m_active, self.m_waiting
        self._families.clear()


# --------------------------------------------------------------------------------------------
# a whole LLM in one model: the facade and the engine in one stub
# --------------------------------------------------------------------------------------------


@dataclass
class _LlmRunning(_Running):
    """A facade request running on the in-process engine."""

    prompt: str = ""
    num_input: int = 0
    echo: bool = False
    detokenizer: Any = None
    stops: Any = None
    collected: list[str] = field(default_factory=list)


class LlmModel(EngineModel):
    """The generation facade (`triton_models/README.md`) served by one decoupled model that
    holds the tokenizer and the engine: the CPU models of `triton_models/cpu/<llm>/`.

    The TensorRT-LLM-shaped `ensemble` -> `preprocessing` -> `tensorrt_llm` chain passes every
    token through two Python stubs (the engine's response goes to Triton, to the BLS facade,
    back to Triton); here the engine's thread detokenizes, cuts stop words and sends the
    facade's response itself, one hop per token. Same inputs, outputs, errors and metrics as
    the facade and `tensorrt_llm`; the parameters are `tensorrt_llm`'s (`EngineModel`)."""

    def _start(self, request: Any) -> None:
        from genai_triton.engine import EngineRequest, SamplingParams
        from genai_triton.tokenization import IncrementalDetokenizer, word_variants

        pb = self.pb
        sender = _GuardedSender(pb, request.get_response_sender())
        try:
            generation = facade.read_generation_request(facade.request_arrays(pb, request))
            prompt_ids = self.tokenizer.prompt_ids(generation.prompt)
        except facade.FacadeError as error:
            _send(pb, sender, facade.error_response(pb, error), True)
            return
        except UnicodeDecodeError:
            _send(
                pb,
                sender,
                _error(pb, facade.FIELD_VIOLATION, "text_input is not valid UTF-8"),
                True,
            )
            return
        self.m_requests.increment(1)
        tokenizer = self.tokenizer
        stop_ids = [s for s in tokenizer.encode_batch(list(generation.stop_words)) if s]
        bad_words = word_variants(generation.bad_words)
        bad_ids = [s for s in tokenizer.encode_batch(bad_words) if s] if bad_words else []
        end_id = generation.end_id if generation.end_id is not None else tokenizer.eos_id
        engine_request = EngineRequest(
            prompt_ids=prompt_ids,
            max_tokens=generation.max_tokens,
            sampling=SamplingParams(
                temperature=generation.temperature,
                top_k=generation.top_k,
                top_p=generation.top_p,
                repetition_penalty=generation.repetition_penalty,
                presence_penalty=generation.presence_penalty,
                frequency_penalty=generation.frequency_penalty,
                seed=generation.seed,
            ),
            end_id=end_id if end_id is not None and end_id >= 0 else None,
            stop_sequences=[tuple(ids) for ids in stop_ids],
            stop_strings=[tokenizer.decode(ids) for ids in stop_ids],
            bad_words=[tuple(ids) for ids in bad_ids],
            guide=generation.guide,
        )
        triton_id = request.request_id() or ""
        engine_id = f"{triton_id or 'request'}-{uuid.uuid4().hex[:12]}"
        running = _LlmRunning(
            sender=sender,
            streaming=generation.stream,
            engine_id=engine_id,
            triton_id=triton_id,
            prompt=generation.prompt,
            num_input=len(prompt_ids),
            echo=not (generation.stream or generation.exclude_input_in_output),
            # The last few prompt tokens give the first output token its context.
            detokenizer=IncrementalDetokenizer(tokenizer, prompt_ids[-4:]),
            stops=facade.StopWordFilter(generation.stop_words),
        )
        self._submit(running, engine_request, self._on_facade_update)

    def _on_facade_update(self, update: Any) -> None:
        """Runs on the engine thread: detokenizes, cuts stop words, sends the facade response."""
        with self._lock:
            running = self._running.get(update.request_id)
        if running is None or not isinstance(running, _LlmRunning):
            return
        pb = self.pb
        finished = update.finish_reason is not None
        if update.error is not None:
            self._forget(running)
            self._update_gauges()
            _send(pb, running.sender, _engine_error(pb, update.error), True)
            return
        if update.token_ids:
            self.m_tokens.increment(len(update.token_ids))
        delta, stopped = running.stops.push(running.detokenizer.push(update.token_ids))
        reason = update.finish_reason or ""
        if finished:
            if not stopped:
                more, stopped = running.stops.push(running.detokenizer.flush())
                delta += more
                if not stopped:
                    delta += running.stops.flush()
            self._forget(running)
            if reason == facade.FINISH_CANCELLED:
                self.m_cancelled.increment(1)
            self._update_gauges()
        if not running.streaming:
            running.collected.append(delta)
            if not finished:
                return
            delta = (running.prompt if running.echo else "") + "".join(running.collected)
        elif not delta and not finished:
            return  # a token whose text is not complete yet (part of a UTF-8 character)
        response = facade.generation_response(
            pb,
            delta,
            num_input_tokens=running.num_input,
            num_output_tokens=update.num_output_tokens,
            finish_reason=reason,
        )
        if not _send(pb, running.sender, response, finished) and not finished:
            self.engine.cancel(update.request_id)


# --------------------------------------------------------------------------------------------
# postprocessing
# --------------------------------------------------------------------------------------------


class PostprocessingModel:
    def __init__(self, pb_utils: Any) -> None:
        self.pb = pb_utils

    def initialize(self, args: dict[str, Any]) -> None:
        check_stub_environment()
        from genai_triton.tokenization import TextTokenizer

        self.tokenizer = TextTokenizer(_model_dir(config_parameters(args)))

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        from genai_triton.tokenization import text_delta

        pb = self.pb
        responses = []
        for request in requests:
            tokens = _optional(pb, request, TOKENS_BATCH)
            if tokens is None:
                responses.append(_error(pb, facade.FIELD_VIOLATION, f"{TOKENS_BATCH} is required"))
                continue
            rows = tokens.reshape(-1, tokens.shape[-1])
            lengths = _optional(pb, request, SEQUENCE_LENGTH)
            lengths_list = (
                lengths.reshape(-1).tolist() if lengths is not None else [rows.shape[1]] * len(rows)
            )
            previous = _scalar(_optional(pb, request, PREVIOUS_LENGTH), int, 0)
            stop_words = _strings(_optional(pb, request, STOP_WORDS))
            final = previous == 0 or _scalar(_optional(pb, request, "FINAL"), bool, False)
            texts = []
            for row, length in zip(rows, lengths_list, strict=False):
                ids = [int(t) for t in row[: int(length)].tolist()]
                texts.append(text_delta(self.tokenizer, ids, previous, stop_words, final=final)[0])
            output = np.array([[t.encode("utf-8") for t in texts]], dtype=np.object_)
            responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(OUTPUT, output)]))
        return responses

    def finalize(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# ensemble (the facade, BLS)
# --------------------------------------------------------------------------------------------


@dataclass
class _FacadeRequest:
    sender: Any
    engine_request_id: str
    stop_sent: bool = False
    done: bool = False


class FacadeModel:
    """Parameters: `cancellation_check_period_ms` (default 10), `model_dir`."""

    def __init__(self, pb_utils: Any) -> None:
        self.pb = pb_utils

    def initialize(self, args: dict[str, Any]) -> None:
        check_stub_environment()
        from genai_triton.tokenization import TextTokenizer

        parameters = config_parameters(args)
        self.tokenizer = TextTokenizer(_model_dir(parameters))
        self.period = _int_parameter(parameters, "cancellation_check_period_ms", 10) / 1000
        self._active: dict[str, _FacadeRequest] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="cancellation", daemon=True)
        self._watcher.start()

    def execute(self, requests: Sequence[Any]) -> None:
        for request in requests:
            threading.Thread(target=self._serve, args=(request,), daemon=True).start()
        return None

    # -- one request ----------------------------------------------------------------------------

    def _serve(self, request: Any) -> None:
        pb = self.pb
        sender = _GuardedSender(pb, request.get_response_sender())
        state: _FacadeRequest | None = None
        try:
            generation = facade.read_generation_request(facade.request_arrays(pb, request))
            prompt_ids, stop_lists, bad_lists, end_id = self._preprocess(generation)
            engine_id = f"facade-{uuid.uuid4().hex}"
            state = _FacadeRequest(sender, engine_id)
            with self._lock:
                self._active[engine_id] = state
            self._generate(request, generation, state, prompt_ids, stop_lists, bad_lists, end_id)
        except facade.FacadeError as error:
            _send(pb, sender, facade.error_response(pb, error), True)
        except Exception as error:  # a bug must still end the request
            pb.Logger.log_error(f"ensemble failed: {error!r}")
            _send(pb, sender, _error(pb, facade.INTERNAL_ERROR, f"ensemble failed: {error}"), True)
        finally:
            if state is not None:
                state.done = True
                with self._lock:
                    self._active.pop(state.engine_request_id, None)

    def _preprocess(self, generation: facade.GenerationRequest) -> tuple[NDArray[Any], ...]:
        pb = self.pb
        inputs = [
            pb.Tensor(QUERY, np.array([[generation.prompt.encode("utf-8")]], dtype=np.object_)),
            pb.Tensor(REQUEST_OUTPUT_LEN, np.array([[generation.max_tokens]], dtype=np.int32)),
        ]
        for name, words in (
            (STOP_WORDS_DICT, generation.stop_words),
            (BAD_WORDS_DICT, generation.bad_words),
        ):
            if words:
                inputs.append(
                    pb.Tensor(
                        name, np.array([[w.encode("utf-8") for w in words]], dtype=np.object_)
                    )
                )
        if generation.end_id is not None:
            inputs.append(pb.Tensor(END_ID, np.array([[generation.end_id]], dtype=np.int32)))
        response = pb.InferenceRequest(
            model_name=PREPROCESSING,
            inputs=inputs,
            requested_output_names=[INPUT_ID, STOP_WORDS_IDS, BAD_WORDS_IDS, OUT_END_ID],
        ).exec()
        if response.has_error():
            raise _as_facade_error(response.error().message())

        def output(name: str) -> NDArray[Any]:
            return np.asarray(pb.get_output_tensor_by_name(response, name).as_numpy())

        return output(INPUT_ID), output(STOP_WORDS_IDS), output(BAD_WORDS_IDS), output(OUT_END_ID)

    def _generate(
        self,
        request: Any,
        generation: facade.GenerationRequest,
        state: _FacadeRequest,
        prompt_ids: NDArray[Any],
        stop_lists: NDArray[Any],
        bad_lists: NDArray[Any],
        end_id: NDArray[Any],
    ) -> None:
        from genai_triton.tokenization import IncrementalDetokenizer

        pb = self.pb
        prompt = prompt_ids.reshape(1, -1).astype(np.int32)
        num_input = int(prompt.shape[1])

        def scalar(name: str, value: Any, dtype: Any) -> Any:
            return pb.Tensor(name, np.array([[value]], dtype=dtype))

        inputs = [
            pb.Tensor(INPUT_IDS, prompt),
            scalar(INPUT_LENGTHS, num_input, np.int32),
            scalar(REQUEST_OUTPUT_LEN_LC, generation.max_tokens, np.int32),
            scalar(END_ID_LC, int(end_id.reshape(-1)[0]), np.int32),
            scalar(STREAMING, True, np.bool_),
            scalar(TEMPERATURE, generation.temperature, np.float32),
            scalar(RUNTIME_TOP_K, generation.top_k, np.int32),
            scalar(RUNTIME_TOP_P, generation.top_p, np.float32),
            scalar(REPETITION_PENALTY, generation.repetition_penalty, np.float32),
            scalar(PRESENCE_PENALTY, generation.presence_penalty, np.float32),
            scalar(FREQUENCY_PENALTY, generation.frequency_penalty, np.float32),
            pb.Tensor(STOP_WORDS_LIST, stop_lists.astype(np.int32)),
            pb.Tensor(BAD_WORDS_LIST, bad_lists.astype(np.int32)),
        ]
        if generation.seed is not None:
            inputs.append(scalar(SEED, generation.seed, np.uint64))
        if generation.guide is not None:
            inputs.append(
                pb.Tensor(GUIDED_DECODING_GUIDE_TYPE, _text_tensor(generation.guide.type))
            )
            inputs.append(pb.Tensor(GUIDED_DECODING_GUIDE, _text_tensor(generation.guide.text)))
        responses = pb.InferenceRequest(
            model_name=ENGINE,
            request_id=state.engine_request_id,
            inputs=inputs,
            requested_output_names=[OUTPUT_IDS, FINISH_REASON],
        ).exec(decoupled=True)
        # The last few prompt tokens give the first output token its context when decoding.
        detokenizer = IncrementalDetokenizer(self.tokenizer, prompt[0, -4:].tolist())
        stops = facade.StopWordFilter(generation.stop_words)
        echo = not (generation.stream or generation.exclude_input_in_output)
        collected: list[str] = [generation.prompt] if echo else []
        generated = 0
        finished = False
        for response in responses:
            if finished:
                continue  # drain (a flags-only final from the engine)
            if response.has_error():
                _send(
                    pb,
                    state.sender,
                    facade.error_response(pb, _as_facade_error(response.error().message())),
                    True,
                )
                finished = True
                continue
            ids_tensor = pb.get_output_tensor_by_name(response, OUTPUT_IDS)
            if ids_tensor is None:
                continue
            ids = ids_tensor.as_numpy().reshape(-1).tolist()
            reason_tensor = pb.get_output_tensor_by_name(response, FINISH_REASON)
            reason = _first_text(reason_tensor.as_numpy()) if reason_tensor is not None else ""
            generated += len(ids)
            delta, stopped = stops.push(detokenizer.push(ids))
            if reason:
                if not stopped:
                    more, stopped = stops.push(detokenizer.flush())
                    delta += more
                    if not stopped:
                        delta += stops.flush()
                finished = True
            if not generation.stream:
                collected.append(delta)
                if not finished:
                    continue
                delta = "".join(collected)
            out = facade.generation_response(
                pb,
                delta,
                num_input_tokens=num_input,
                num_output_tokens=generated,
                finish_reason=reason,
            )
            if not _send(pb, state.sender, out, finished) and not finished:
                self._stop(state)
        if not finished:  # the engine ended without a finish reason (it was unloaded)
            _send(
                pb, state.sender, _error(pb, facade.INTERNAL_ERROR, "generation ended early"), True
            )

    # -- cancellation ---------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.wait(self.period):
            with self._lock:
                active = list(self._active.values())
            for state in active:
                if state.stop_sent or state.done:
                    continue
                try:
                    cancelled = state.sender.is_cancelled()
                except Exception:
                    cancelled = True
                if cancelled:
                    self._stop(state)

    def _stop(self, state: _FacadeRequest) -> None:
        """Tells `tensorrt_llm` to stop the request (a `stop=true` request with its id)."""
        if state.stop_sent:
            return
        state.stop_sent = True
        pb = self.pb
        try:
            responses = pb.InferenceRequest(
                model_name=ENGINE,
                request_id=state.engine_request_id,
                inputs=[pb.Tensor(STOP, np.array([[True]], dtype=np.bool_))],
                requested_output_names=[OUTPUT_IDS],
            ).exec(decoupled=True)
            for _ in responses:
                pass
        except Exception as error:
            pb.Logger.log_warn(f"ensemble: could not stop {state.engine_request_id}: {error}")

    def finalize(self) -> None:
        self._stopping.set()
        deadline = time.monotonic() + 5
        while self._active and time.monotonic() < deadline:
            with self._lock:
                active = list(self._active.values())
            for state in active:
                self._stop(state)
            time.sleep(0.05)


def _text(array: NDArray[Any] | None) -> str | None:
    """The first element of an optional string input; None when it is absent or empty."""
    if array is None or array.size == 0:
        return None
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _text_tensor(text: str) -> NDArray[Any]:
    return np.array([[text.encode("utf-8")]], dtype=np.object_)


def _engine_error(pb_utils: Any, error: Exception) -> Any:
    """The error response of a request the engine failed after accepting it."""
    from genai_triton.engine import ContextLengthExceededError, InvalidRequestError

    if isinstance(error, InvalidRequestError):
        return _error(pb_utils, facade.FIELD_VIOLATION, str(error))
    if isinstance(error, ContextLengthExceededError):
        return _error(pb_utils, facade.CONTEXT_LENGTH_EXCEEDED, str(error))
    return _error(pb_utils, facade.INTERNAL_ERROR, str(error))


def _first_text(array: NDArray[Any]) -> str:
    value = array.reshape(-1)[0] if array.size else b""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _as_facade_error(message: str) -> facade.FacadeError:
    reason, text = facade.parse_tagged(message)
    return facade.FacadeError(reason or facade.INTERNAL_ERROR, text)
