"""The llmapi `ensemble` (triton_models/gpu/llmapi) without Triton: its config exposes the CPU
ensemble's facade, and its logic (`1/llm_facade.py`) maps facade requests to the LLM API and
the LLM's results back, run against the TensorRT-LLM stand-in of tests/support/trtllm_standin
with the real SmolLM2 tokenizer.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml
from genai_triton.facade import GENERATION_INPUTS, FacadeError, GenerationRequest
from genai_triton.guides import Guide
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from scripts.lib import fill_template
from tests.support.smollm2 import smollm2_dir
from tests.support.trtllm_standin.tensorrt_llm import (
    GUIDED_JSON,
    LLM,
    SCRIPT,
    STEP_SECONDS_VARIABLE,
    KvCacheConfig,
    RequestOutput,
    SamplingParams,
)
from tests.support.trtllm_standin.tensorrt_llm import llmapi as standin_api

ROOT = Path(__file__).resolve().parents[3]
VARIANT = ROOT / "triton_models" / "gpu" / "llmapi"
CPU_ENSEMBLE = ROOT / "triton_models" / "cpu" / "ensemble" / "config.pbtxt"
GUIDED_INPUTS = ("guided_decoding_guide_type", "guided_decoding_guide")
PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def _load_facade() -> ModuleType:
    """`ensemble/1/llm_facade.py`, imported from its file (Triton imports it as `llm_facade`
    from the model's directory)."""
    name = "llmapi_llm_facade"
    spec = importlib.util.spec_from_file_location(
        name, VARIANT / "ensemble" / "1" / "llm_facade.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


llm_facade = _load_facade()


# --------------------------------------------------------------------------------------------
# The config: the CPU ensemble's facade
# --------------------------------------------------------------------------------------------


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(encoding="utf-8"), config)
    return config


def _facade(config: model_config_pb2.ModelConfig) -> dict[str, Any]:
    return {
        "batching": config.max_batch_size > 0,
        "inputs": {t.name: (t.data_type, list(t.dims), t.optional) for t in config.input},
        "outputs": {t.name: (t.data_type, list(t.dims)) for t in config.output},
    }


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The llmapi variant filled with its defaults and the SmolLM2 checkpoint."""
    out = tmp_path_factory.mktemp("llmapi") / "repo"
    fill_template.fill("llmapi", out, {"hf_model_dir": str(smollm2_dir())})
    return out


def test_the_llmapi_ensemble_has_the_facade_of_the_cpu_ensemble(filled: Path) -> None:
    cpu = _facade(_parse(CPU_ENSEMBLE))
    llmapi = _facade(_parse(filled / "ensemble" / "config.pbtxt"))

    for name in GUIDED_INPUTS:  # decided for every engine; the CPU config may not have them yet
        assert llmapi["inputs"][name] == (model_config_pb2.TYPE_STRING, [1], True)
        cpu["inputs"].setdefault(name, llmapi["inputs"][name])
    assert llmapi == cpu
    assert len(llmapi["inputs"]) == 17
    assert llmapi["batching"]


def test_the_llmapi_ensemble_is_one_decoupled_python_model(filled: Path) -> None:
    configs = sorted(path.relative_to(filled) for path in filled.rglob("config.pbtxt"))
    config = _parse(filled / "ensemble" / "config.pbtxt")

    assert configs == [Path("ensemble/config.pbtxt")]
    assert (config.name, config.backend) == ("ensemble", "python")
    assert config.model_transaction_policy.decoupled
    assert config.HasField("dynamic_batching")
    assert [(group.count, group.kind) for group in config.instance_group] == [
        (1, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    ]
    assert set(GENERATION_INPUTS) == {tensor.name for tensor in config.input}, "what model.py reads"
    shipped = filled / "ensemble" / "1"
    for name in ("model.py", "llm_facade.py", "genai_triton/facade.py", "genai_triton/guides.py"):
        assert (shipped / name).is_file(), name
        assert not (shipped / name).is_symlink(), f"{name} must be a copy once filled"


def test_the_filled_model_imports_only_what_it_ships(filled: Path) -> None:
    """The container has no genai_triton: the copies in `1/` must be all the model needs."""
    version = filled / "ensemble" / "1"
    program = (
        "import sys; sys.path.insert(0, sys.argv[1]); import llm_facade; "
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items() "
        "if n == 'llm_facade' or n.startswith('genai_triton')))"
    )

    done = subprocess.run(
        [sys.executable, "-c", program, str(version)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert len(loaded) >= 4
    assert all(Path(path).is_relative_to(version) for path in loaded), loaded


# --------------------------------------------------------------------------------------------
# Settings: model.yaml -> LLM()
# --------------------------------------------------------------------------------------------


def _settings(filled: Path, **overrides: Any) -> Any:
    model_yaml = yaml.safe_load((filled / "ensemble" / "1" / "model.yaml").read_text())
    config = _parse(filled / "ensemble" / "config.pbtxt")
    parameters = {name: value.string_value for name, value in config.parameters.items()}
    return llm_facade.read_settings({**model_yaml, **overrides}, parameters)


def test_model_yaml_gives_the_llm_its_arguments(filled: Path) -> None:
    settings = _settings(filled)

    arguments = llm_facade.llm_arguments(settings, standin_api)
    llm = LLM(**arguments)  # the stand-in refuses arguments v1.0.0's LLM does not take

    assert arguments == {
        "model": str(smollm2_dir()),
        "backend": "pytorch",
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "max_batch_size": 64,
        "kv_cache_config": KvCacheConfig(free_gpu_memory_fraction=0.9, enable_block_reuse=True),
        "guided_decoding_backend": "xgrammar",
        "enable_trtllm_sampler": True,
    }
    assert llm.args["model"] == str(smollm2_dir())
    assert settings.tokenizer == str(smollm2_dir())
    assert settings.max_seq_len == 8192, "the checkpoint's max_position_embeddings"
    assert settings.max_prompt_tokens is None
    assert settings.guided_decoding
    assert (settings.add_special_tokens, settings.skip_special_tokens) == (False, True)
    assert settings.check_period_s == pytest.approx(0.1)


def test_model_yaml_limits_and_switches(filled: Path) -> None:
    limited = _settings(filled, max_seq_len=256, max_num_tokens=128, guided_decoding_backend=None)
    chunked = _settings(filled, max_num_tokens=128, enable_chunked_prefill=True)

    assert (limited.max_seq_len, limited.max_prompt_tokens) == (256, 128)
    assert not limited.guided_decoding
    assert "guided_decoding_backend" not in llm_facade.llm_arguments(limited, standin_api)
    assert chunked.max_prompt_tokens is None


@pytest.mark.parametrize(
    ("model_yaml", "message"),
    [
        pytest.param({"backend": "pytorch"}, "`model`", id="no-model"),
        pytest.param(
            {"model": "x", "triton_config": {"decoupled": True}}, "config.pbtxt", id="upstream"
        ),
    ],
)
def test_model_yaml_mistakes_are_refused(model_yaml: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        llm_facade.read_settings(model_yaml, {})


# --------------------------------------------------------------------------------------------
# Facade request -> SamplingParams
# --------------------------------------------------------------------------------------------

EOS = 2
REQUEST = GenerationRequest(prompt=PROMPT, max_tokens=16)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({}, {"top_k": 1}, id="greedy-by-default"),
        pytest.param({"temperature": 0.7}, {"temperature": 0.7, "top_p": 1.0}, id="sampling"),
        pytest.param(
            {"temperature": 0.7, "top_k": 40, "top_p": 0.9},
            {"temperature": 0.7, "top_k": 40, "top_p": 0.9},
            id="top-k-top-p",
        ),
        pytest.param({"top_k": 40, "top_p": 0.5}, {"top_k": 1}, id="greedy-ignores-filters"),
        pytest.param(
            {"repetition_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": -0.5},
            {
                "top_k": 1,
                "repetition_penalty": 1.2,
                "presence_penalty": 0.5,
                "frequency_penalty": -0.5,
            },
            id="penalties",
        ),
        pytest.param(
            {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0},
            {"top_k": 1},
            id="neutral-penalties",
        ),
        pytest.param({"seed": 2**64 - 1}, {"top_k": 1, "seed": 2**64 - 1}, id="seed"),
        pytest.param(
            {"stop_words": ("User:", "\n\n"), "bad_words": ("darn",)},
            {"top_k": 1, "stop": ["User:", "\n\n"], "bad": ["darn"]},
            id="words",
        ),
        pytest.param({"end_id": EOS, "pad_id": 0}, {"top_k": 1}, id="default-end-id"),
        pytest.param({"end_id": 7}, {"top_k": 1, "stop_token_ids": [7]}, id="own-end-id"),
        pytest.param(
            {"guide": Guide("json_schema", '{"type": "object"}')},
            {"top_k": 1, "guided_decoding": {"json": '{"type": "object"}'}},
            id="json-schema",
        ),
        pytest.param(
            {"guide": Guide("json")},
            {"top_k": 1, "guided_decoding": {"json_object": True}},
            id="json",
        ),
        pytest.param(
            {"guide": Guide("regex", "[a-z]+")},
            {"top_k": 1, "guided_decoding": {"regex": "[a-z]+"}},
            id="regex",
        ),
        pytest.param(
            {"guide": Guide("ebnf_grammar", 'root ::= "yes" | "no"')},
            {"top_k": 1, "guided_decoding": {"grammar": 'root ::= "yes" | "no"'}},
            id="ebnf-grammar",
        ),
    ],
)
def test_facade_inputs_map_to_sampling_params(
    changes: dict[str, Any], expected: dict[str, Any]
) -> None:
    request = replace(REQUEST, **changes)

    arguments = llm_facade.sampling_arguments(request, max_tokens=16, default_end_id=EOS)
    params = llm_facade.sampling_params(standin_api, arguments)

    assert arguments == {"max_tokens": 16, **expected}
    assert isinstance(params, SamplingParams)
    assert params.max_tokens == 16
    assert params.end_id is None, "end_id unset: the LLM then sets up stop and bad strings"


def test_sampling_params_the_llm_api_refuses_are_a_field_violation() -> None:
    with pytest.raises(FacadeError) as caught:
        llm_facade.sampling_params(standin_api, {"max_tokens": 4, "temperature": 0.0})

    assert str(caught.value).startswith("[FIELD_VIOLATION] sampling parameters refused:")


# --------------------------------------------------------------------------------------------
# Planning a request: prompt tokens, context, checks
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir())


@pytest.fixture(scope="module")
def settings(filled: Path) -> Any:
    return _settings(filled, max_seq_len=64)


def test_a_plan_holds_the_prompt_tokens_and_the_sampling(settings: Any, tokenizer: Any) -> None:
    request = replace(REQUEST, stream=True, stop_words=("User:",))

    plan = llm_facade.plan_generation(request, settings, tokenizer, decoupled=True)

    assert plan.prompt_ids == tokenizer.encode(PROMPT, add_special_tokens=False)
    assert plan.num_input_tokens == len(plan.prompt_ids)
    assert plan.streaming
    assert plan.stop_words == ("User:",)
    assert plan.sampling == {"max_tokens": 16, "top_k": 1, "stop": ["User:"]}
    assert plan.prefix == ""


def test_max_tokens_is_lowered_to_fit_the_context(settings: Any, tokenizer: Any) -> None:
    plan = llm_facade.plan_generation(
        replace(REQUEST, max_tokens=1000), settings, tokenizer, decoupled=True
    )

    assert plan.sampling["max_tokens"] == 64 - plan.num_input_tokens


def test_the_prompt_text_leads_an_unstreamed_output_unless_excluded(
    settings: Any, tokenizer: Any
) -> None:
    shown = llm_facade.plan_generation(
        replace(REQUEST, exclude_input_in_output=False), settings, tokenizer, decoupled=False
    )
    excluded = llm_facade.plan_generation(
        replace(REQUEST, exclude_input_in_output=True), settings, tokenizer, decoupled=False
    )

    assert shown.prefix == "user\nhi\nassistant\n"
    assert excluded.prefix == ""


@pytest.mark.parametrize(
    ("changes", "decoupled", "guided", "expected"),
    [
        pytest.param(
            {"prompt": "word" * 80},
            True,
            True,
            "[CONTEXT_LENGTH_EXCEEDED] prompt has 80 tokens, the context is 64",
            id="context",
        ),
        pytest.param(
            {"prompt": ""}, True, True, "[FIELD_VIOLATION] text_input has no tokens", id="empty"
        ),
        pytest.param(
            {"stream": True},
            False,
            True,
            "[FIELD_VIOLATION] stream=true needs the model deployed decoupled",
            id="stream-not-decoupled",
        ),
        pytest.param(
            {"guide": Guide("regex", "a+")},
            True,
            False,
            "[FAILED_PRECONDITION] guided decoding is off on this model",
            id="guided-off",
        ),
        pytest.param(
            {"guide": Guide("json_schema", "{not json")},
            True,
            True,
            "[FIELD_VIOLATION] guided_decoding_guide: not JSON",
            id="schema-not-json",
        ),
        pytest.param(
            {"guide": Guide("json_schema", "[1, 2]")},
            True,
            True,
            "[FIELD_VIOLATION] guided_decoding_guide: a JSON Schema is a JSON object",
            id="schema-not-object",
        ),
    ],
)
def test_requests_the_model_cannot_serve_are_refused(
    settings: Any,
    tokenizer: Any,
    changes: dict[str, Any],
    decoupled: bool,
    guided: bool,
    expected: str,
) -> None:
    model = settings if guided else replace(settings, guided_decoding=False)

    with pytest.raises(FacadeError) as caught:
        llm_facade.plan_generation(
            replace(REQUEST, **changes), model, tokenizer, decoupled=decoupled
        )

    assert str(caught.value).startswith(expected)


def test_a_prompt_longer_than_one_step_is_refused(filled: Path, tokenizer: Any) -> None:
    settings = _settings(filled, max_num_tokens=32)

    with pytest.raises(FacadeError, match=r"\[CONTEXT_LENGTH_EXCEEDED\] prompt has 40 tokens"):
        llm_facade.plan_generation(
            replace(REQUEST, prompt="word" * 40), settings, tokenizer, decoupled=True
        )


# --------------------------------------------------------------------------------------------
# Cumulative text -> deltas; finish reasons
# --------------------------------------------------------------------------------------------


def test_text_the_engine_left_of_its_stop_string_is_dropped() -> None:
    stream = llm_facade.TextStream(["User:"])

    sent = [stream.update("Hi\n", False), stream.update("Hi\nUser", False)]
    final = stream.update("Hi\nUser", True, stopped_by="User:")

    assert [*sent, final] == [("Hi\n", False), ("", False), ("", False)]
    assert stream.sent == "Hi\n"


@pytest.mark.parametrize(
    ("stop_words", "updates", "expected"),
    [
        pytest.param(
            (),
            [("Hel", False), ("Hello", False), ("Hello wor", False), ("Hello world", True)],
            [("Hel", False), ("lo", False), (" wor", False), ("ld", False)],
            id="growing",
        ),
        pytest.param(
            (),
            [("caf", False), ("café \ufffd", False), ("café 🙂", False), ("café 🙂", True)],
            [("caf", False), ("é ", False), ("🙂", False), ("", False)],
            id="incomplete-character-held",
        ),
        pytest.param(
            ("User:",),
            [("Hi\n", False), ("Hi\nUs", False), ("Hi\nUser", False), ("Hi\nUser: x", False)],
            [("Hi\n", False), ("", False), ("", False), ("", True)],
            id="stop-word-in-text",
        ),
        pytest.param(
            ("User:",),
            [("Hi\nUs", False), ("Hi\nUs and", False), ("Hi\nUs and", True)],
            [("Hi\n", False), ("Us and", False), ("", False)],
            id="false-start-released",
        ),
        pytest.param(
            ("User:",),
            [("Hi\n", False), ("Hi\nUser", False), ("Hi\n", True)],
            [("Hi\n", False), ("", False), ("", False)],
            id="engine-cut-the-stop-word",
        ),
        pytest.param(
            ("User:",),
            [("Hi\nUse", True)],
            [("Hi\nUse", False)],
            id="final-flushes",
        ),
    ],
)
def test_cumulative_text_becomes_deltas(
    stop_words: tuple[str, ...],
    updates: list[tuple[str, bool]],
    expected: list[tuple[str, bool]],
) -> None:
    stream = llm_facade.TextStream(stop_words)

    assert [stream.update(text, final) for text, final in updates] == expected


@pytest.mark.parametrize(
    ("engine", "stop_reason", "expected"),
    [
        ("length", None, "length"),
        ("stop", None, "stop"),
        ("stop", "User:", "stop_words"),
        ("stop", 7, "stop"),
        ("cancelled", None, "cancelled"),
        ("timeout", None, "stop"),
        (None, None, "stop"),
    ],
)
def test_engine_finish_reasons_map_to_the_facades(
    engine: str | None, stop_reason: object, expected: str
) -> None:
    assert llm_facade.facade_finish_reason(engine, stop_reason) == expected


# --------------------------------------------------------------------------------------------
# generate() against the stand-in LLM
# --------------------------------------------------------------------------------------------


class RecordingLLM(LLM):
    """The stand-in, keeping each request's result to look at afterwards."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.results: list[RequestOutput] = []

    def generate_async(
        self,
        inputs: str | Sequence[int],
        sampling_params: SamplingParams | None = None,
        streaming: bool = False,
    ) -> RequestOutput:
        result = super().generate_async(inputs, sampling_params, streaming)
        self.results.append(result)
        return result


@pytest.fixture(scope="module")
def llm() -> Iterator[RecordingLLM]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STEP_SECONDS_VARIABLE, "0.002")
        model = RecordingLLM(model=str(smollm2_dir()), guided_decoding_backend="xgrammar")
    yield model
    model.shutdown()


async def _run(
    llm: RecordingLLM,
    tokenizer: Any,
    settings: Any,
    request: GenerationRequest,
    *,
    cancel_after: int | None = None,
) -> list[Any]:
    plan = llm_facade.plan_generation(request, settings, tokenizer, decoupled=True)
    chunks: list[Any] = []
    generator = llm_facade.generate(
        llm,
        standin_api,
        plan,
        lambda: cancel_after is not None and len(chunks) >= cancel_after,
        0.001,
    )
    async for chunk in generator:
        chunks.append(chunk)
    return chunks


def _text(chunks: Sequence[Any]) -> str:
    return "".join(chunk.text for chunk in chunks)


async def test_streaming_sends_every_token_and_one_final_response(
    llm: RecordingLLM, tokenizer: Any, settings: Any
) -> None:
    script_ids = tokenizer.encode(SCRIPT, add_special_tokens=False)

    chunks = await _run(llm, tokenizer, settings, replace(REQUEST, max_tokens=100, stream=True))

    assert _text(chunks) == SCRIPT
    assert not any("\ufffd" in chunk.text for chunk in chunks), "a chunk split a character"
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert [c.finish_reason for c in chunks] == [""] * (len(chunks) - 1) + ["stop"]
    assert [c.num_output_tokens for c in chunks[:3]] == [1, 2, 3]
    assert chunks[-1].num_output_tokens == len(script_ids), "the end token is not counted"
    assert {c.num_input_tokens for c in chunks} == {len(tokenizer.encode(PROMPT))}


async def test_without_streaming_one_response_carries_everything(
    llm: RecordingLLM, tokenizer: Any, settings: Any
) -> None:
    request = replace(REQUEST, max_tokens=100, exclude_input_in_output=False)

    (chunk,) = await _run(llm, tokenizer, settings, request)

    assert chunk.text == "user\nhi\nassistant\n" + SCRIPT
    assert (chunk.finish_reason, chunk.final) == ("stop", True)
    assert chunk.num_output_tokens == len(tokenizer.encode(SCRIPT, add_special_tokens=False))


async def test_max_tokens_ends_with_length(
    llm: RecordingLLM, tokenizer: Any, settings: Any
) -> None:
    chunks = await _run(llm, tokenizer, settings, replace(REQUEST, max_tokens=3, stream=True))

    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].num_output_tokens == 3
    assert _text(chunks) == "Hello world,"


@pytest.mark.parametrize(
    ("stop_word", "engine_stopped"),
    [
        pytest.param("User:", True, id="token-level"),  # the LLM matches its token ids
        pytest.param("ünï", False, id="text-level"),  # tokenized differently in the text
    ],
)
async def test_stop_words_end_the_text_before_them(
    llm: RecordingLLM, tokenizer: Any, settings: Any, stop_word: str, engine_stopped: bool
) -> None:
    request = replace(REQUEST, max_tokens=100, stream=True, stop_words=(stop_word,))

    chunks = await _run(llm, tokenizer, settings, request)
    result = llm.results[-1]

    assert _text(chunks) == SCRIPT.split(stop_word)[0]
    assert chunks[-1].finish_reason == "stop_words"
    assert result.outputs[0].stop_reason == (stop_word if engine_stopped else None)
    assert result.aborted() is not engine_stopped, "the facade stops what the LLM did not"


async def test_a_cancelled_request_aborts_the_llm_request(
    llm: RecordingLLM, tokenizer: Any, settings: Any
) -> None:
    request = replace(REQUEST, max_tokens=100, stream=True)

    chunks = await _run(llm, tokenizer, settings, request, cancel_after=3)
    result = llm.results[-1]
    await asyncio.wait_for(result.aresult(), 5)

    assert chunks[-1].finish_reason == "cancelled"
    assert chunks[-1].final
    assert len(chunks) > 3
    assert result.aborted()
    assert result.outputs[0].finish_reason == "cancelled"
    assert len(result.outputs[0].token_ids) < len(tokenizer.encode(SCRIPT))


async def test_closing_the_generator_aborts_the_llm_request(
    llm: RecordingLLM, tokenizer: Any, settings: Any
) -> None:
    plan = llm_facade.plan_generation(
        replace(REQUEST, max_tokens=100, stream=True), settings, tokenizer, decoupled=True
    )
    generator: AsyncGenerator[Any, None] = llm_facade.generate(
        llm, standin_api, plan, lambda: False, 0.001
    )

    first = await anext(generator)
    await generator.aclose()

    assert not first.final
    assert llm.results[-1].aborted()


async def test_guided_json_schema_output_is_valid(
    llm: RecordingLLM, tokenizer: Any, settings: Any
) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    request = replace(
        REQUEST, max_tokens=100, stream=True, guide=Guide("json_schema", json.dumps(schema))
    )

    chunks = await _run(llm, tokenizer, settings, request)
    sent = llm.results[-1].sampling_params.guided_decoding

    jsonschema.validate(json.loads(_text(chunks)), schema)
    assert _text(chunks) == GUIDED_JSON
    assert sent is not None
    assert sent.json == json.dumps(schema)


async def test_an_own_end_id_and_bad_words_reach_the_llm(
    llm: RecordingLLM, tokenizer: Any, settings: Any
) -> None:
    user = tokenizer.encode("User", add_special_tokens=False)[0]
    comma = tokenizer.encode(",", add_special_tokens=False)[0]
    base = replace(REQUEST, max_tokens=100, stream=True)

    ended = await _run(llm, tokenizer, settings, replace(base, end_id=comma))
    banned = await _run(llm, tokenizer, settings, replace(base, bad_words=("User",)))

    assert (_text(ended), ended[-1].finish_reason) == ("Hello world", "stop")
    assert _text(banned) == SCRIPT.replace("User", "")
    assert user not in llm.results[-1].outputs[0].token_ids


async def test_llm_failures_are_backend_errors(
    llm: RecordingLLM, tokenizer: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: RequestOutput, response: object) -> None:
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(RequestOutput, "_apply", broken)

    with pytest.raises(FacadeError) as caught:
        await _run(llm, tokenizer, settings, replace(REQUEST, stream=True))

    assert str(caught.value) == (
        "[BACKEND_ERROR] TensorRT-LLM failed the request: CUDA error: an illegal memory access"
    )


async def test_requests_the_llm_refuses_are_field_violations(tokenizer: Any, settings: Any) -> None:
    unguided = LLM(model=str(smollm2_dir()))  # no guided_decoding_backend
    plan = llm_facade.plan_generation(
        replace(REQUEST, guide=Guide("json")), settings, tokenizer, decoupled=True
    )

    with pytest.raises(FacadeError) as caught:
        async for _ in llm_facade.generate(unguided, standin_api, plan, lambda: False, 0.01):
            pass

    assert str(caught.value).startswith("[FIELD_VIOLATION] the LLM API refused the request:")
