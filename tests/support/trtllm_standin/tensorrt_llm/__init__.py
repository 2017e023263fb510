"""Stand-in for TensorRT-LLM v1.0.0's LLM API (`tensorrt_llm`, `tensorrt_llm.llmapi`).

The names and shapes that triton_models/gpu/llmapi uses, as the real package has them:
- `LLM(model=..., **llm_args)`: `generate_async(inputs, sampling_params, streaming)` returns a
  `RequestOutput`; `tokenizer`; `shutdown()`; a context manager. Unknown arguments are refused,
  as the real `LLM`'s validated arguments refuse them.
- `RequestOutput`: `request_id`, `prompt`, `prompt_token_ids`, `outputs` (one
  `CompletionOutput`), `finished`, `sampling_params`; `abort()`; async iteration with one step
  per engine response (`await` waits for the last). Like the real one, it needs a running
  event loop when `generate_async` creates it.
- `CompletionOutput`: cumulative `text` and `token_ids`; `text_diff`, `token_ids_diff`,
  `length`; `finish_reason` (`stop`, `length`, `cancelled`) and `stop_reason` (the stop string
  or stop token id) once finished.
- `SamplingParams`, `GuidedDecodingParams`, `KvCacheConfig`: keyword-only dataclasses with the
  v1.0.0 fields used here.

Behind them, something real and deterministic: the Hugging Face tokenizer of `model` and a fixed
script. A request "generates" `SCRIPT`'s tokens (`GUIDED_JSON`'s under guided decoding), one
every `$TRTLLM_STANDIN_STEP_SECONDS` (default 0.01 s) on a thread of its own, as the real
executor answers from background threads, and ends the way TensorRT-LLM does:
- `max_tokens` reached: `length`;
- the token ids of a `stop` string at the end of the output: `stop`, `stop_reason` the string,
  and (unless `include_stop_str_in_output`) those tokens cut from `token_ids`, so from `text`,
  in the final response;
- a token of `stop_token_ids`: `stop`, `stop_reason` the id, the token not returned;
- the end of the script (the end token, never returned): `stop`;
- `abort()`: `cancelled`.
A token that would complete a `bad` string is skipped. Streaming, every token is one response;
otherwise the final response is the only one.

With `$TRTLLM_STANDIN_RECORD_DIR` set, it writes what it was asked there, for tests that run it
in another process (Triton's Python backend): `llm.json` (the `LLM()` arguments),
`request-<id>.json` (prompt token ids, streaming, sampling parameters) and `aborted-<id>.json`
(the tokens generated when `abort()` stopped the request).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SCRIPT = "Hello world, café ünïcödé 🙂 — 日本語.\n\nUser: two  spaces"
"""What every request generates: multi-byte characters split over byte-level tokens, a blank
line, a chat-like `User:` and two spaces."""
GUIDED_JSON = '{"name": "Ada", "age": 36}'
"""What a request with guided decoding generates (valid JSON, an object)."""
STEP_SECONDS_VARIABLE = "TRTLLM_STANDIN_STEP_SECONDS"
RECORD_DIR_VARIABLE = "TRTLLM_STANDIN_RECORD_DIR"

LLM_ARGUMENTS = frozenset(
    {
        "tokenizer",
        "backend",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "max_batch_size",
        "max_num_tokens",
        "max_seq_len",
        "max_beam_width",
        "kv_cache_config",
        "enable_chunked_prefill",
        "guided_decoding_backend",
        "enable_trtllm_sampler",
        "disable_overlap_scheduler",
        "trust_remote_code",
        "dtype",
    }
)
"""`LLM()` keyword arguments (besides `model`) the stand-in knows; a subset of v1.0.0's."""

FinishReason = Literal["stop", "length", "timeout", "cancelled"]


@dataclass(kw_only=True)
class KvCacheConfig:
    """The KV cache settings of `LLM(kv_cache_config=...)` (a subset)."""

    enable_block_reuse: bool = True
    max_tokens: int | None = None
    free_gpu_memory_fraction: float | None = 0.9

    def __post_init__(self) -> None:
        fraction = self.free_gpu_memory_fraction
        if fraction is not None and not 0 <= fraction <= 1:
            raise ValueError(f"free_gpu_memory_fraction must be in [0, 1], got {fraction}")


@dataclass(kw_only=True)
class GuidedDecodingParams:
    """One guide for a request: a JSON schema, any JSON object, a regex or an EBNF grammar."""

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    grammar: str | None = None
    json_object: bool = False
    structural_tag: str | None = None

    def __post_init__(self) -> None:
        guides = sum(bool(getattr(self, f.name)) for f in dataclasses.fields(self))
        if guides > 1:
            raise ValueError(f"Only one guide can be used for a request, but got {guides}.")


@dataclass(kw_only=True)
class SamplingParams:
    """The sampling parameters of one request (the v1.0.0 fields the facade may set, and a few
    more); None means the runtime's default."""

    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    bad: str | list[str] | None = None
    bad_token_ids: list[int] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    n: int = 1
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    length_penalty: float | None = None
    exclude_input_from_output: bool = True
    return_perf_metrics: bool = False
    guided_decoding: GuidedDecodingParams | None = None
    ignore_eos: bool = False
    detokenize: bool = True
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True

    def __post_init__(self) -> None:
        # v1.0.0 documents temperature as "> 0"; greedy decoding is top_k 1.
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.pad_id is None:
            self.pad_id = self.end_id

    def words(self, name: Literal["stop", "bad"]) -> list[str]:
        value = getattr(self, name)
        return [] if value is None else [value] if isinstance(value, str) else list(value)


@dataclass
class CompletionOutput:
    """One generated sequence, cumulative."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    _last_text_len: int = field(default=0, init=False, repr=False)
    _last_token_ids_len: int = field(default=0, init=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def text_diff(self) -> str:
        """The text added by the last response."""
        return self.text[self._last_text_len :]

    @property
    def token_ids_diff(self) -> list[int]:
        """The token ids added by the last response."""
        return self.token_ids[self._last_token_ids_len :]


@dataclass(frozen=True)
class _EngineResponse:
    token_ids: tuple[int, ...]
    final: bool
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None


class RequestOutput:
    """The result of `LLM.generate_async`, updated by each engine response as it is awaited."""

    def __init__(
        self,
        request_id: int,
        prompt: str | None,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        tokenizer: Any,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.outputs = [CompletionOutput(0)]
        self.finished = False
        self.sampling_params = sampling_params
        self._tokenizer = tokenizer
        self._loop = asyncio.get_running_loop()
        self._responses: asyncio.Queue[_EngineResponse] = asyncio.Queue()
        self._abort = threading.Event()

    def abort(self) -> None:
        """Asks the engine to stop the request; it ends with `cancelled` soon after."""
        self._abort.set()

    def aborted(self) -> bool:
        return self._abort.is_set()

    def __aiter__(self) -> RequestOutput:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        self._apply(await self._responses.get())
        return self

    async def aresult(self) -> RequestOutput:
        while not self.finished:
            self._apply(await self._responses.get())
        return self

    def __await__(self) -> Generator[Any, None, RequestOutput]:
        return self.aresult().__await__()

    def _deliver(self, response: _EngineResponse) -> None:
        """Called on the engine's thread."""
        with contextlib.suppress(RuntimeError):  # RuntimeError: the caller's loop is gone
            self._loop.call_soon_threadsafe(self._responses.put_nowait, response)

    def _apply(self, response: _EngineResponse) -> None:
        output = self.outputs[0]
        output._last_token_ids_len = len(output.token_ids)
        output._last_text_len = len(output.text)
        output.token_ids = list(response.token_ids)
        if self.sampling_params.detokenize:
            output.text = self._tokenizer.decode(
                output.token_ids, skip_special_tokens=self.sampling_params.skip_special_tokens
            )
        self.finished = response.final
        if response.final:
            output.finish_reason = response.finish_reason
            output.stop_reason = response.stop_reason


class LLM:
    """The stand-in LLM: validates its arguments, loads `model`'s tokenizer, "generates" the
    script (see the module docstring)."""

    def __init__(self, model: str | Path, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - LLM_ARGUMENTS)
        if unknown:
            raise TypeError(f"LLM() got unexpected argument(s): {', '.join(unknown)}")
        kv_cache_config = kwargs.get("kv_cache_config")
        if kv_cache_config is not None and not isinstance(kv_cache_config, KvCacheConfig):
            raise TypeError(f"kv_cache_config must be a KvCacheConfig, got {kv_cache_config!r}")
        if kwargs.get("guided_decoding_backend") not in (None, "xgrammar", "llguidance"):
            raise ValueError(f"unknown guided_decoding_backend {kwargs['guided_decoding_backend']}")
        from transformers import AutoTokenizer

        self.args: dict[str, Any] = {"model": str(model), **kwargs}
        self._tokenizer = AutoTokenizer.from_pretrained(str(kwargs.get("tokenizer") or model))
        self._script = self._encode(SCRIPT)
        self._guided_script = self._encode(GUIDED_JSON)
        self._step_seconds = float(os.environ.get(STEP_SECONDS_VARIABLE, "0.01"))
        self._ids = itertools.count(1)
        self._shut_down = False
        _record("llm.json", self.args)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def _encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def generate_async(
        self,
        inputs: str | Sequence[int],
        sampling_params: SamplingParams | None = None,
        streaming: bool = False,
    ) -> RequestOutput:
        """Starts one request; `inputs` is the prompt text or its token ids."""
        if self._shut_down:
            raise RuntimeError("the LLM was shut down")
        params = sampling_params or SamplingParams()
        if isinstance(inputs, str):
            prompt: str | None = inputs
            prompt_ids = self._encode(inputs, params.add_special_tokens)
        else:
            prompt, prompt_ids = None, [int(token) for token in inputs]
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        if params.guided_decoding is not None and not self.args.get("guided_decoding_backend"):
            raise ValueError("guided decoding needs LLM(guided_decoding_backend=...)")
        output = RequestOutput(next(self._ids), prompt, prompt_ids, params, self._tokenizer)
        _record(
            f"request-{output.request_id}.json",
            {"prompt_token_ids": prompt_ids, "streaming": streaming, "sampling_params": params},
        )
        threading.Thread(
            target=self._generate, args=(output, params, streaming), daemon=True
        ).start()
        return output

    def _generate(self, output: RequestOutput, params: SamplingParams, streaming: bool) -> None:
        end_id = params.end_id if params.end_id is not None else self._tokenizer.eos_token_id
        stops = [(word, self._encode(word)) for word in params.words("stop")]
        bad = [self._encode(word) for word in params.words("bad")]
        bad += [[token] for token in params.bad_token_ids or ()]
        stop_ids = set(params.stop_token_ids or ())
        tokens: list[int] = []

        def send(
            final: bool, reason: FinishReason | None = None, stop: int | str | None = None
        ) -> None:
            if final or streaming:
                output._deliver(_EngineResponse(tuple(tokens), final, reason, stop))

        script = self._guided_script if params.guided_decoding is not None else self._script
        for token in script:
            time.sleep(self._step_seconds)
            if output.aborted():
                _record(f"aborted-{output.request_id}.json", {"generated": len(tokens)})
                send(True, "cancelled")
                return
            if any(word and [*tokens, token][-len(word) :] == word for word in bad):
                continue
            if token == end_id:
                send(True, "stop")
                return
            if token in stop_ids:
                send(True, "stop", token)
                return
            tokens.append(token)
            for word, ids in stops:
                if ids and tokens[-len(ids) :] == ids:
                    if not params.include_stop_str_in_output:
                        del tokens[-len(ids) :]
                    send(True, "stop", word)
                    return
            if len(tokens) >= params.max_tokens:
                send(True, "length")
                return
            send(False)
        send(True, "stop")  # the end token

    def shutdown(self) -> None:
        self._shut_down = True

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


def _plain(value: Any) -> Any:
    """`value` as JSON-friendly data (dataclasses as dicts, paths as strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _record(name: str, data: Any) -> None:
    directory = os.environ.get(RECORD_DIR_VARIABLE)
    if not directory:
        return
    path = Path(directory) / name
    scratch = path.with_name(f".{name}.tmp")
    scratch.write_text(json.dumps(_plain(data), sort_keys=True), encoding="utf-8")
    scratch.replace(path)


__all__ = [
    "LLM",
    "CompletionOutput",
    "GuidedDecodingParams",
    "KvCacheConfig",
    "RequestOutput",
    "SamplingParams",
]
