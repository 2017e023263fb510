"""The generation facade (triton_models/README.md) over TensorRT-LLM's LLM API: the logic of the
llmapi `ensemble` model, without Triton.

`model.py` is the Triton glue: it reads and checks the inputs with `genai_triton.facade`
(the CPU models' reader, guided decoding included, shipped in `genai_triton/` next to this
file), then calls, in order:
1. `plan_generation`: tokenizes the prompt (the `add_special_tokens` parameter, default false:
   prompts arrive chat-templated), checks it against the context (`[CONTEXT_LENGTH_EXCEEDED]`),
   lowers `max_tokens` to fit, and maps the facade inputs to `SamplingParams` fields
   (`sampling_arguments`, the table of README.md).
2. `generate`: `LLM.generate_async(prompt token ids, SamplingParams, streaming)`, then one
   `FacadeChunk` per engine response with tokens (streaming) or one at the end. Text deltas are
   computed here from the engine's cumulative `outputs[0].text` (`TextStream`), not taken from
   `text_diff`: a delta must follow what was sent, and this holds text back (an incomplete UTF-8
   character, a possible start of a stop word) and copes with the engine cutting a stop word's
   tokens from its final text. The client's cancellation (`is_cancelled`, polled every
   `check_period_s`) and a stop word found in the text that the engine's token-level match
   missed end the engine request with `RequestOutput.abort()`.

Nothing here imports tensorrt_llm: the LLM-API module arrives as `api` (`tensorrt_llm.llmapi`
on a GPU host; tests/support/trtllm_standin in tests), the `LLM` and the tokenizer as objects.

TensorRT-LLM v1.0.0 API facts relied on. [V] verified in the source named, [U] unverified.
"TL stored" is NVIDIA/TensorRT-LLM as the search index stores it, at commits that could not be
dated against the v1.0.0 tag (ae8270b7); "docs" is nvidia.github.io/TensorRT-LLM.
- [V] `tensorrt_llm.llmapi` exports LLM, SamplingParams, GuidedDecodingParams, KvCacheConfig,
  RequestOutput (docs `llm-api/reference.rst`; examples `llm_guided_decoding.py` (1.0.0rc3)
  and `examples/kvcacheconfig`).
- [V] `LLM.generate_async(inputs, sampling_params=None, ..., streaming=False) -> RequestOutput`,
  `inputs` the prompt text or its token ids (TL stored `tensorrt_llm/llmapi/llm.py`; docs
  example `llm_inference_async_streaming.py`, 1.0.0rc2).
- [V] `RequestOutput`: async iteration (one step per engine response), `finished`, `abort()`,
  `prompt_token_ids`, `outputs[0]` a `CompletionOutput` with cumulative `text` and
  `token_ids`, `text_diff`, `token_ids_diff`, `finish_reason` in stop/length/timeout/cancelled
  and `stop_reason` (the stop string, or the stop token id); a stop string's tokens are cut
  from `token_ids` unless `include_stop_str_in_output` (TL stored
  `tensorrt_llm/executor/result.py`; docs `CompletionOutput` reference). Its async queue binds
  to the event loop running when `generate_async` is called: here the Python backend's loop.
- [V] `SamplingParams` fields used: max_tokens, temperature ("> 0"), top_k, top_p (None means
  the C++ runtime default 0, so top_k and top_p both None is greedy), seed,
  repetition_penalty, presence_penalty, frequency_penalty, stop, stop_token_ids, bad,
  guided_decoding, skip_special_tokens (TL stored `tensorrt_llm/sampling_params.py`).
- [V] `LLM._prepare_sampling_params` runs `SamplingParams._setup(tokenizer)`, which tokenizes
  `stop` and `bad`, only when `end_id` is None (TL stored `llm.py`): with `end_id` set, stop and
  bad strings would fail. So a facade `end_id` other than the tokenizer's is sent as
  `stop_token_ids`, and `end_id` is never set.
- [V] `GuidedDecodingParams(json=schema, regex=, grammar=, json_object=True)`, one guide per
  request; `LLM(guided_decoding_backend="xgrammar" | "llguidance" | None)` (docs reference
  pages; TL stored `sampling_params.py` maps them to JSON_SCHEMA, REGEX, EBNF_GRAMMAR, JSON).
- [V] `KvCacheConfig(free_gpu_memory_fraction=, enable_block_reuse=)` (docs reference and
  `examples/kvcacheconfig`).
- [V] In v1.0.0 the PyTorch backend applies penalties and bad words with
  `enable_trtllm_sampler: true` (docs `1.0.0/features/sampling.html`); model.yaml sets it.
- [U] That the v1.0.0 tag has each of the above exactly as the stored versions do.
- [U] Guided decoding with the overlap scheduler in v1.0.0 (issue #5858; PR #6000 enabled it,
  merged 2025-07): if `LLM()` refuses, add `disable_overlap_scheduler: true` to model.yaml.
- [U] Whether v1.0.0 returns the end token in `token_ids` (`num_output_tokens` counts them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from genai_triton import guides
from genai_triton.facade import (
    CONTEXT_LENGTH_EXCEEDED,
    FIELD_VIOLATION,
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    FINISH_STOP_WORDS,
    FacadeError,
    GenerationRequest,
)
from genai_triton.guides import Guide

GUIDE_FIELDS = {
    guides.JSON: "json_object",
    guides.JSON_SCHEMA: "json",
    guides.REGEX: "regex",
    guides.EBNF_GRAMMAR: "grammar",
}
"""Guide type -> the `GuidedDecodingParams` field that carries the guide (`json_object` is a
flag: any JSON object, no guide text)."""

BACKEND_ERROR = "BACKEND_ERROR"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
INCOMPLETE_CHARACTER = "\ufffd"
"""What a detokenizer shows for the first bytes of a character split over tokens."""


class Tokenizer(Protocol):
    """What this module needs of a Hugging Face tokenizer."""

    eos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


# --------------------------------------------------------------------------------------------
# Settings: model.yaml (LLM() arguments) and config.pbtxt parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSettings:
    """How this model serves, read once at load."""

    llm_args: dict[str, Any]
    """`LLM()` keyword arguments, as model.yaml has them."""
    tokenizer: str
    """The tokenizer the prompts are counted with: model.yaml `tokenizer`, else `model`."""
    max_seq_len: int | None = None
    """Prompt plus output tokens: model.yaml `max_seq_len`, else the checkpoint's
    `max_position_embeddings`; None: not checked here."""
    max_prompt_tokens: int | None = None
    """model.yaml `max_num_tokens` unless `enable_chunked_prefill`: a longer prompt does not
    fit one step."""
    guided_decoding: bool = False
    """model.yaml names a `guided_decoding_backend`."""
    add_special_tokens: bool = False
    skip_special_tokens: bool = True
    check_period_s: float = 0.1


def read_settings(model_yaml: Mapping[str, Any], parameters: Mapping[str, str]) -> ModelSettings:
    """Settings from model.yaml's mapping and config.pbtxt's parameters; raises ValueError on a
    model.yaml this model cannot use."""
    args = dict(model_yaml)
    if "triton_config" in args:
        raise ValueError(
            "model.yaml: triton_config is TensorRT-LLM's own Triton model's; here max_batch_size "
            "and decoupled are set in config.pbtxt"
        )
    if not args.get("model"):
        raise ValueError("model.yaml: `model` (a Hugging Face checkpoint) is required")
    model = str(args["model"])
    max_seq_len = args.get("max_seq_len") or _checkpoint_context(model)
    step_tokens = None if args.get("enable_chunked_prefill") else args.get("max_num_tokens")
    return ModelSettings(
        llm_args=args,
        tokenizer=str(args.get("tokenizer") or model),
        max_seq_len=int(max_seq_len) if max_seq_len else None,
        max_prompt_tokens=int(step_tokens) if step_tokens else None,
        guided_decoding=bool(args.get("guided_decoding_backend")),
        add_special_tokens=_flag(parameters.get("add_special_tokens", ""), False),
        skip_special_tokens=_flag(parameters.get("skip_special_tokens", ""), True),
        check_period_s=float(parameters.get("cancellation_check_period_ms") or 100) / 1000,
    )


def _flag(text: str, default: bool) -> bool:
    text = text.strip().lower()
    return default if not text else text in ("1", "true", "yes", "on")


def _checkpoint_context(model: str) -> int | None:
    """`max_position_embeddings` of a local checkpoint's config.json (None for a hub id)."""
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def llm_arguments(settings: ModelSettings, api: Any) -> dict[str, Any]:
    """The `LLM()` keyword arguments: model.yaml's, `kv_cache_config` as a `KvCacheConfig`,
    an empty `guided_decoding_backend` left out (no guided decoding)."""
    args = dict(settings.llm_args)
    if not args.get("guided_decoding_backend"):
        args.pop("guided_decoding_backend", None)
    if isinstance(args.get("kv_cache_config"), Mapping):
        args["kv_cache_config"] = api.KvCacheConfig(**args["kv_cache_config"])
    return args


# --------------------------------------------------------------------------------------------
# One request: guide, plan, sampling parameters
# --------------------------------------------------------------------------------------------


def check_guide(guide: Guide | None) -> None:
    """Refuses a `json_schema` guide that is not a JSON object (the facade checked the rest);
    whether a schema, regex or grammar compiles is xgrammar's to say, in the engine."""
    if guide is None or guide.type != guides.JSON_SCHEMA:
        return
    try:
        schema = json.loads(guide.text)
    except json.JSONDecodeError as error:
        raise FacadeError(FIELD_VIOLATION, f"{guides.GUIDE}: not JSON ({error})") from None
    if not isinstance(schema, dict):
        raise FacadeError(FIELD_VIOLATION, f"{guides.GUIDE}: a JSON Schema is a JSON object")


def sampling_arguments(
    request: GenerationRequest,
    *,
    max_tokens: int,
    default_end_id: int | None,
    skip_special_tokens: bool = True,
) -> dict[str, Any]:
    """`SamplingParams` keyword arguments for a facade request (README.md's table); the value
    of `guided_decoding`, when present, is `GuidedDecodingParams`' keyword arguments. Fields
    at their neutral value are left to the runtime's default."""
    args: dict[str, Any] = {"max_tokens": max_tokens}
    if request.temperature == 0:
        args["top_k"] = 1  # greedy; v1.0.0 documents temperature as > 0
    else:
        args["temperature"] = request.temperature
        # top_p None would be the runtime's 0 (greedy); 1 samples from every token.
        args["top_p"] = request.top_p
        if request.top_k > 0:
            args["top_k"] = request.top_k
    if request.seed is not None:
        args["seed"] = request.seed
    if request.repetition_penalty != 1:
        args["repetition_penalty"] = request.repetition_penalty
    if request.presence_penalty != 0:
        args["presence_penalty"] = request.presence_penalty
    if request.frequency_penalty != 0:
        args["frequency_penalty"] = request.frequency_penalty
    if request.stop_words:
        args["stop"] = list(request.stop_words)
    if request.bad_words:
        args["bad"] = list(request.bad_words)
    if request.end_id is not None and request.end_id != default_end_id:
        args["stop_token_ids"] = [request.end_id]  # not end_id: see the module docstring
    if not skip_special_tokens:
        args["skip_special_tokens"] = False
    if request.guide is not None:
        name = GUIDE_FIELDS[request.guide.type]
        args["guided_decoding"] = {name: True if name == "json_object" else request.guide.text}
    return args


def sampling_params(api: Any, arguments: Mapping[str, Any]) -> Any:
    """`api.SamplingParams` from `sampling_arguments`; raises FacadeError when the LLM API
    refuses them."""
    arguments = dict(arguments)
    try:
        if "guided_decoding" in arguments:
            arguments["guided_decoding"] = api.GuidedDecodingParams(**arguments["guided_decoding"])
        return api.SamplingParams(**arguments)
    except (TypeError, ValueError) as error:
        raise FacadeError(FIELD_VIOLATION, f"sampling parameters refused: {error}") from None


@dataclass(frozen=True)
class GenerationPlan:
    """What `generate` sends to the LLM for one request."""

    prompt_ids: list[int]
    sampling: dict[str, Any]
    """`sampling_arguments`."""
    streaming: bool
    stop_words: tuple[str, ...] = ()
    prefix: str = ""
    """Text the final response starts with: the prompt's, when `exclude_input_in_output` is
    false and the request does not stream."""

    @property
    def num_input_tokens(self) -> int:
        return len(self.prompt_ids)


def plan_generation(
    request: GenerationRequest,
    settings: ModelSettings,
    tokenizer: Tokenizer,
    *,
    decoupled: bool,
) -> GenerationPlan:
    """Checks a request against the model and maps it; raises FacadeError."""
    if request.stream and not decoupled:
        raise FacadeError(
            FIELD_VIOLATION, "stream=true needs the model deployed decoupled (decoupled_mode)"
        )
    check_guide(request.guide)
    if request.guide is not None and not settings.guided_decoding:
        raise FacadeError(
            FAILED_PRECONDITION,
            "guided decoding is off on this model (model.yaml has no guided_decoding_backend)",
        )
    ids = list(tokenizer.encode(request.prompt, add_special_tokens=settings.add_special_tokens))
    if not ids:
        raise FacadeError(FIELD_VIOLATION, "text_input has no tokens")
    if settings.max_prompt_tokens is not None and len(ids) > settings.max_prompt_tokens:
        raise FacadeError(
            CONTEXT_LENGTH_EXCEEDED,
            f"prompt has {len(ids)} tokens, one step takes {settings.max_prompt_tokens} "
            "(max_num_tokens; enable_chunked_prefill lifts it)",
        )
    max_tokens = request.max_tokens
    if settings.max_seq_len is not None:
        if len(ids) >= settings.max_seq_len:
            raise FacadeError(
                CONTEXT_LENGTH_EXCEEDED,
                f"prompt has {len(ids)} tokens, the context is {settings.max_seq_len}",
            )
        max_tokens = min(max_tokens, settings.max_seq_len - len(ids))
    show_prompt = not request.stream and not request.exclude_input_in_output
    return GenerationPlan(
        prompt_ids=ids,
        sampling=sampling_arguments(
            request,
            max_tokens=max_tokens,
            default_end_id=tokenizer.eos_token_id,
            skip_special_tokens=settings.skip_special_tokens,
        ),
        streaming=request.stream,
        stop_words=request.stop_words,
        prefix=tokenizer.decode(ids, skip_special_tokens=settings.skip_special_tokens)
        if show_prompt
        else "",
    )


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


class TextStream:
    """Turns the engine's cumulative text into the deltas of the facade's responses.

    `update(text, final)` returns (new text to send, whether a stop word was reached). The
    concatenated deltas are the text up to the first stop word (never the stop word, never a
    later change to text already sent). Until the last update, text that ends in an incomplete
    UTF-8 character (U+FFFD) or in a possible beginning of a stop word is held back."""

    def __init__(self, stop_words: Sequence[str] = ()) -> None:
        self._words = tuple(word for word in stop_words if word)
        self._sent = ""

    @property
    def sent(self) -> str:
        return self._sent

    def update(self, text: str, final: bool, stopped_by: str | None = None) -> tuple[str, bool]:
        """`stopped_by`: the stop string the engine says ended the request. Its tokens are cut
        from the engine's final text, but text already detokenized from the first of them may
        remain (the streamed text is built incrementally): an end of `text` that begins it
        is dropped."""
        start = len(self._sent)  # a stop word never begins inside text already sent
        hits = [i for i in (text.find(word, start) for word in self._words) if i >= 0]
        if hits:
            ready = text[: min(hits)]
        elif final:
            cut = 0
            if stopped_by:
                cut = len(stopped_by) if text.endswith(stopped_by) else _overlap(text, stopped_by)
            ready = text[: len(text) - cut]
        else:
            keep = max((_overlap(text, word) for word in self._words), default=0)
            ready = text[: len(text) - keep].rstrip(INCOMPLETE_CHARACTER)
        if len(ready) <= len(self._sent):  # nothing new, or the engine cut its text
            return "", bool(hits)
        delta, self._sent = ready[len(self._sent) :], ready
        return delta, bool(hits)


def _overlap(text: str, word: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `word`."""
    for size in range(min(len(word) - 1, len(text)), 0, -1):
        if text.endswith(word[:size]):
            return size
    return 0


def facade_finish_reason(engine_reason: str | None, stop_reason: object) -> str:
    """The facade's finish reason for the LLM API's `finish_reason` and `stop_reason`: a stop
    string is `stop_words`; the end token, a stop token id (a client's `end_id`) and
    anything else that ends a request (`timeout`, which this model never asks for) are
    `stop`."""
    if engine_reason == "length":
        return FINISH_LENGTH
    if engine_reason == "cancelled":
        return FINISH_CANCELLED
    if engine_reason == "stop" and isinstance(stop_reason, str):
        return FINISH_STOP_WORDS
    return FINISH_STOP


@dataclass(frozen=True)
class FacadeChunk:
    """One facade response."""

    text: str
    num_input_tokens: int
    num_output_tokens: int
    finish_reason: str = ""
    final: bool = False


async def generate(
    llm: Any,
    api: Any,
    plan: GenerationPlan,
    is_cancelled: Callable[[], bool],
    check_period_s: float,
) -> AsyncIterator[FacadeChunk]:
    """Runs one request on `llm`; yields its facade responses, the last one `final`.

    Streaming, one chunk per engine response (its text may be empty while text is held back;
    `num_output_tokens` counts every token so far); otherwise only the final chunk, with
    `plan.prefix` first. Raises FacadeError: FIELD_VIOLATION when the LLM API refuses the
    request, BACKEND_ERROR when the engine fails it. Closing the generator early aborts the
    engine request."""
    params = sampling_params(api, plan.sampling)
    try:
        result = llm.generate_async(
            plan.prompt_ids, sampling_params=params, streaming=plan.streaming
        )
    except (TypeError, ValueError) as error:
        raise FacadeError(FIELD_VIOLATION, f"the LLM API refused the request: {error}") from None
    text = TextStream(plan.stop_words)
    generated = 0
    engine_done = False

    def chunk(delta: str, reason: str = "") -> FacadeChunk:
        # The prompt's text leads a final answer (never a cancelled one, which shows nothing).
        shown = plan.prefix + delta if reason and reason != FINISH_CANCELLED else delta
        return FacadeChunk(shown, plan.num_input_tokens, generated, reason, final=bool(reason))

    watcher = asyncio.ensure_future(_cancellation(is_cancelled, check_period_s))
    step: asyncio.Future[Any] | None = None
    try:
        while True:
            step = asyncio.ensure_future(result.__anext__())
            await asyncio.wait({step, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():  # the client cancelled
                step.cancel()
                yield chunk("", FINISH_CANCELLED)
                return
            try:
                output = step.result()
            except StopAsyncIteration:  # over without a final response: nothing more comes
                engine_done = True
                yield chunk("", FINISH_STOP)
                return
            except Exception as error:
                engine_done = True
                raise FacadeError(
                    BACKEND_ERROR, f"TensorRT-LLM failed the request: {error}"
                ) from None
            completion = output.outputs[0]
            engine_done = bool(output.finished)
            generated = max(generated, len(completion.token_ids))
            stopped_by = completion.stop_reason if isinstance(completion.stop_reason, str) else None
            delta, stop_word = text.update(completion.text, engine_done, stopped_by)
            if stop_word:
                yield chunk(delta, FINISH_STOP_WORDS)
                return
            if engine_done:
                reason = facade_finish_reason(completion.finish_reason, completion.stop_reason)
                yield chunk(delta, reason)
                return
            if plan.streaming and completion.token_ids_diff:
                yield chunk(delta)
    finally:
        watcher.cancel()
        if step is not None and not step.done():
            step.cancel()
        if not engine_done:  # cancelled, a stop word, an error, or the caller went away
            with contextlib.suppress(Exception):
                result.abort()


async def _cancellation(is_cancelled: Callable[[], bool], period_s: float) -> None:
    """Returns once `is_cancelled()` says so (or fails: the request is gone), asking every
    `period_s` seconds."""
    while True:
        try:
            if is_cancelled():
                return
        except Exception:
            return
        await asyncio.sleep(period_s)
