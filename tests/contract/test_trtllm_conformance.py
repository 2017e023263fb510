"""The TensorRT-LLM model repository against the facts of the one release it is written for.

`triton_models/gpu` never runs here: TensorRT-LLM cannot be installed without a GPU, and the
system tests swap the `tensorrtllm` backend for a Python stand-in that accepts any config. So
the facts the real backend enforces are written down below, as data, from the release's own
source and documentation (each with its source), and the rendered templates are checked
against them:

- every input and output tensor of `tensorrt_llm` (name, type, dims, optional, reshape);
- every parameter the backend reads without a default (a missing one fails the model load),
  the parameters it reads at all, and the legal values of enumerated and boolean ones;
- what the BLS `ensemble` must send for streaming, stop words, cancellation and guided
  decoding, and the transaction policies that must agree.

`conformance_problems` is the checker; the mutation tests show it catches each defect found
when the templates were first read against upstream (issue 14). The LLM-API variant's
model.yaml is checked against the LLM() arguments the stand-in `tensorrt_llm` of its tests
accepts (`llmapi_problems`).

Sources (abbreviations used in the comments below; details in triton_models/gpu/UPSTREAM_FACTS.md):
- BE: github.com/triton-inference-server/tensorrtllm_backend. Tag v1.0.0 (efb8a49) pins the
  TensorRT-LLM submodule at ae8270b7 (= TensorRT-LLM v1.0.0); from v0.20 the backend source
  lives in TensorRT-LLM's `triton_backend/`.
- BE@c2e65b8: the last BE commit on main with the backend source (2025-05-13, synced from
  TensorRT-LLM), the first with the 0.20+ names; the exact source of the post-0.19 lineage.
- BE@v0.19.0: tag v0.19.0 (c1e19638), the previous release, for what changed.
- TL: github.com/NVIDIA/TensorRT-LLM `triton_backend/...`, stored versions 0c8de69a and
  2a9abd95, which agree with BE@c2e65b8 on every fact used here. The tag's own files could not
  be read (the repository is too large to fetch here): facts marked `tl_only` rest on them.
- PB: github.com/triton-inference-server/python_backend.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from scripts.lib import fill_template

ROOT = Path(__file__).resolve().parents[2]
GPU_README = ROOT / "triton_models" / "gpu" / "README.md"
CPU_TENSORRT_LLM = ROOT / "triton_models" / "cpu" / "tensorrt_llm" / "config.pbtxt"


# --------------------------------------------------------------------------------------------
# The release
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    tensorrt_llm: str
    tensorrt_llm_commit: str
    container: str
    """The NGC Triton image that ships this TensorRT-LLM and its backend."""


PINNED = Release(
    tensorrt_llm="1.0.0",
    # BE tag v1.0.0: submodule tensorrt_llm -> ae8270b7 ("Update tensorrt_llm submodule to
    # v1.0.0", BE 3e8ff0e).
    tensorrt_llm_commit="ae8270b713446948246f16fadf4e2a32e35d0f62",
    # Triton's compatibility matrix (docs.nvidia.com, user-guide/docs/introduction/
    # compatibility.html), trtllm-python-py3 rows: 25.09 and 25.10 -> TensorRT-LLM 1.0.0.
    container="nvcr.io/nvidia/tritonserver:25.09-trtllm-python-py3",
)

BLS_CANCEL_SINCE = "25.04"
"""The BLS decoupled response iterator's cancel() first ships in python_backend r25.04 (PB
7f21b67, "add BLS decoupled response iterator's cancel() method"; on branch r25.04, not r25.03)."""


# --------------------------------------------------------------------------------------------
# tensorrt_llm's tensors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    dtype: str
    dims: tuple[int, ...]
    optional: bool = True
    reshape: bool = False
    """Declared with `reshape: { shape: [ ] }` (a scalar per batch row)."""
    ragged: bool = False
    """Declared with `allow_ragged_batch: true`."""


def _scalar(dtype: str) -> Tensor:
    return Tensor(dtype, (1,), reshape=True)


def _ragged(dtype: str, *dims: int) -> Tensor:
    return Tensor(dtype, dims, ragged=True)


# BE@c2e65b8 all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt; TL triton_backend/
# all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt (0c8de69a, 2a9abd95) agree.
# `${...}`-typed tensors (encoder_input_features, draft_logits, prompt_embedding_table) are
# left out: their type is a template key of their own.
TENSORRT_LLM_INPUTS: dict[str, Tensor] = {
    "input_ids": _ragged("TYPE_INT32", -1),
    "encoder_output_lengths": _scalar("TYPE_INT32"),
    "input_lengths": Tensor("TYPE_INT32", (1,), optional=False, reshape=True),
    "request_output_len": Tensor("TYPE_INT32", (1,), optional=False, reshape=True),
    "num_return_sequences": _scalar("TYPE_INT32"),
    "draft_input_ids": _ragged("TYPE_INT32", -1),
    "decoder_input_ids": _ragged("TYPE_INT32", -1),
    "decoder_input_lengths": _scalar("TYPE_INT32"),
    "draft_acceptance_threshold": _scalar("TYPE_FP32"),
    "end_id": _scalar("TYPE_INT32"),
    "pad_id": _scalar("TYPE_INT32"),
    "stop_words_list": _ragged("TYPE_INT32", 2, -1),
    "bad_words_list": _ragged("TYPE_INT32", 2, -1),
    "embedding_bias": _ragged("TYPE_FP32", -1),
    "beam_width": _scalar("TYPE_INT32"),
    "temperature": _scalar("TYPE_FP32"),
    "runtime_top_k": _scalar("TYPE_INT32"),
    "runtime_top_p": _scalar("TYPE_FP32"),
    "runtime_top_p_min": _scalar("TYPE_FP32"),
    "runtime_top_p_decay": _scalar("TYPE_FP32"),
    "runtime_top_p_reset_ids": _scalar("TYPE_INT32"),
    "len_penalty": _scalar("TYPE_FP32"),
    "early_stopping": _scalar("TYPE_BOOL"),
    "repetition_penalty": _scalar("TYPE_FP32"),
    "min_tokens": _scalar("TYPE_INT32"),
    "beam_search_diversity_rate": _scalar("TYPE_FP32"),
    "presence_penalty": _scalar("TYPE_FP32"),
    "frequency_penalty": _scalar("TYPE_FP32"),
    "seed": _scalar("TYPE_UINT64"),
    "return_log_probs": _scalar("TYPE_BOOL"),
    "return_context_logits": _scalar("TYPE_BOOL"),
    "return_generation_logits": _scalar("TYPE_BOOL"),
    "return_perf_metrics": _scalar("TYPE_BOOL"),
    # tl_only: absent at BE@c2e65b8, present in both stored TL versions.
    "return_num_input_tokens": _scalar("TYPE_BOOL"),
    "return_num_output_tokens": _scalar("TYPE_BOOL"),
    "exclude_input_in_output": _scalar("TYPE_BOOL"),
    # Ends the running request with the same request id (BE@v0.19.0 and TL
    # model_instance_state.cc, handleStopRequest).
    "stop": _scalar("TYPE_BOOL"),
    "streaming": _scalar("TYPE_BOOL"),
    "prompt_table_extra_ids": _ragged("TYPE_UINT64", -1),
    "prompt_vocab_size": _scalar("TYPE_INT32"),
    "cross_attention_mask": _ragged("TYPE_BOOL", -1, -1),
    "mrope_rotary_cos_sin": Tensor("TYPE_FP32", (-1,)),
    "mrope_position_deltas": Tensor("TYPE_INT64", (1,)),
    "lora_task_id": _scalar("TYPE_UINT64"),
    "lora_weights": _ragged("TYPE_FP16", -1, -1),
    "lora_config": _ragged("TYPE_INT32", -1, 3),
    "context_phase_params": _ragged("TYPE_UINT8", -1),
    "skip_cross_attn_blocks": _ragged("TYPE_BOOL", 1),
    "retention_token_range_starts": _ragged("TYPE_INT32", -1),
    "retention_token_range_ends": _ragged("TYPE_INT32", -1),
    "retention_token_range_priorities": _ragged("TYPE_INT32", -1),
    "retention_token_range_durations_ms": _ragged("TYPE_INT32", -1),
    "retention_decode_priority": _ragged("TYPE_INT32", 1),
    "retention_decode_duration_ms": _ragged("TYPE_INT32", 1),
    "guided_decoding_guide_type": _ragged("TYPE_STRING", 1),
    "guided_decoding_guide": _ragged("TYPE_STRING", 1),
    "lookahead_window_size": _ragged("TYPE_INT32", 1),
    "lookahead_ngram_size": _ragged("TYPE_INT32", 1),
    "lookahead_verification_set_size": _ragged("TYPE_INT32", 1),
}

RENAMED_AFTER_0_19 = {"random_seed": "seed", "min_length": "min_tokens"}
"""Input names of BE@v0.19.0 and older -> the names from BE@c2e65b8 on (config inputs,
utils.h InputFieldsNames and the BLS name maps change together there). An older name is not
an error to Triton: the backend simply never reads it."""

# Same sources as the inputs; none is optional (every output must be declared by upstream's
# config, and a caller requests the ones it reads).
TENSORRT_LLM_OUTPUTS: dict[str, Tensor] = {
    "output_ids": Tensor("TYPE_INT32", (-1, -1)),
    "sequence_length": Tensor("TYPE_INT32", (-1,)),
    "cum_log_probs": Tensor("TYPE_FP32", (-1,)),
    "output_log_probs": Tensor("TYPE_FP32", (-1, -1)),
    "batch_index": Tensor("TYPE_INT32", (1,)),
    "sequence_index": Tensor("TYPE_INT32", (1,)),
    "context_phase_params": Tensor("TYPE_UINT8", (-1,)),
    "kv_cache_alloc_new_blocks": Tensor("TYPE_INT32", (1,)),
    "kv_cache_reused_blocks": Tensor("TYPE_INT32", (1,)),
    "kv_cache_alloc_total_blocks": Tensor("TYPE_INT32", (1,)),
    "arrival_time_ns": Tensor("TYPE_INT64", (1,)),
    "first_scheduled_time_ns": Tensor("TYPE_INT64", (1,)),
    "first_token_time_ns": Tensor("TYPE_INT64", (1,)),
    "last_token_time_ns": Tensor("TYPE_INT64", (1,)),
    "acceptance_rate": Tensor("TYPE_FP32", (1,)),
    "total_accepted_draft_tokens": Tensor("TYPE_INT32", (1,)),
    "total_draft_tokens": Tensor("TYPE_INT32", (1,)),
    # tl_only.
    "num_input_tokens": Tensor("TYPE_INT32", (1,)),
    "num_output_tokens": Tensor("TYPE_INT32", (1,)),
}


# --------------------------------------------------------------------------------------------
# tensorrt_llm's parameters
# --------------------------------------------------------------------------------------------

# model_instance_state.cc (BE@v0.19.0, BE@c2e65b8; TL 0c8de69a): ModelState::GetParameter
# throws "Cannot find parameter with name: X" and ModelInstanceState::Create turns it into a
# failed load. These four are read outside any try: getBatchingTypeFromParams (gpt_model_type)
# and getGuidedDecodingConfigFromParams (the other three), the latter even when no request is
# ever guided.
PARAMETERS_WITHOUT_DEFAULT = (
    "gpt_model_type",
    "tokenizer_dir",
    "xgrammar_tokenizer_info_path",
    "guided_decoding_backend",
)

# Every other parameter the same files read, each inside a try with a default (and the ones
# required only when decoding_mode is lookahead). Not exhaustive for LoRA and speculative
# decoding, which this repository does not use.
PARAMETERS_WITH_DEFAULT = (
    "gpt_model_path",
    "encoder_model_path",
    "max_beam_width",
    "batch_scheduler_policy",
    "kv_cache_free_gpu_mem_fraction",
    "max_tokens_in_paged_kv_cache",
    "max_attention_window_size",
    "sink_token_length",
    "cross_kv_cache_fraction",
    "kv_cache_host_memory_bytes",
    "kv_cache_onboard_blocks",
    "enable_kv_cache_reuse",
    "enable_chunked_context",
    "normalize_log_probs",
    "exclude_input_in_output",
    "cancellation_check_period_ms",
    "stats_check_period_ms",
    "iter_stats_max_iterations",
    "request_stats_max_iterations",
    "multi_block_mode",
    "enable_context_fmha_fp32_acc",
    "cuda_graph_mode",
    "cuda_graph_cache_size",
    "gpu_weights_percent",
    "recv_poll_period_ms",
    "num_nodes",  # from BE@c2e65b8 on
    "lora_cache_max_adapter_size",
    "lora_cache_optimal_adapter_size",
    "decoding_mode",
    "executor_worker_path",
    "gpu_device_ids",
    "participant_ids",
    "lookahead_window_size",
    "lookahead_ngram_size",
    "lookahead_verification_set_size",
    # Upstream's config declares it ("no"); Triton's backend utilities read it.
    "FORCE_CPU_ONLY_INPUT_TENSORS",
)

REJECTED_PARAMETERS = {
    # model_state.cc GetExecutorWorkerPath: an error telling to use executor_worker_path.
    "worker_path": "the backend refuses it: use executor_worker_path",
}

# The same .cc files: gpt_model_type throws on anything else; guided_decoding_backend throws
# (TLLM_THROW) unless xgrammar once the info path is set too, and an empty value turns guided
# decoding off; the other two fall back to their default with only a warning, which this
# checker treats as an error (the value would be silently ignored).
ENUMERATED: dict[str, frozenset[str]] = {
    "gpt_model_type": frozenset({"V1", "v1", "inflight_batching", "inflight_fused_batching"}),
    "batch_scheduler_policy": frozenset({"max_utilization", "guaranteed_no_evict"}),
    "decoding_mode": frozenset(
        {
            "top_k",
            "top_p",
            "top_k_top_p",
            "beam_search",
            "medusa",
            "redrafter",
            "lookahead",
            "eagle",
        }
    ),
    "guided_decoding_backend": frozenset({"xgrammar", ""}),
}

# The typed getter for bool accepts exactly these spellings (and throws otherwise).
BOOLEAN_VALUES = frozenset({"true", "True", "TRUE", "1", "false", "False", "FALSE", "0"})
BOOLEAN_PARAMETERS = frozenset(
    {
        "kv_cache_onboard_blocks",
        "enable_kv_cache_reuse",
        "enable_chunked_context",
        "normalize_log_probs",
        "exclude_input_in_output",
        "multi_block_mode",
        "enable_context_fmha_fp32_acc",
        "cuda_graph_mode",
    }
)
INTEGER_PARAMETERS = frozenset(
    {
        "max_beam_width",
        "cancellation_check_period_ms",
        "stats_check_period_ms",
        "max_tokens_in_paged_kv_cache",
        "max_attention_window_size",
        "sink_token_length",
        "num_nodes",
    }
)
FRACTION_PARAMETERS = frozenset(
    {"kv_cache_free_gpu_mem_fraction", "cross_kv_cache_fraction", "gpu_weights_percent"}
)

BACKEND_DEFAULTS = {
    # getKvCacheConfigFromParams: "enable_kv_cache_reuse is not specified, will be set to true".
    "enable_kv_cache_reuse": "true",
}

# What guided decoding needs: the request inputs (values from BE docs/guided_decoding.md, v0.19.0
# and v1.0.0: json, json_schema, regex, ebnf_grammar; the enum itself was not read in source).
GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")
GUIDED_INPUTS = ("guided_decoding_guide_type", "guided_decoding_guide")


# --------------------------------------------------------------------------------------------
# What the BLS ensemble must send
# --------------------------------------------------------------------------------------------

# utils.cc createRequestsFromInputTensors: streaming=true on a model that is not decoupled
# throws "Streaming is only supported if model is deployed using decoupled mode"; so the BLS
# ensemble (which calls with exec(decoupled=<its own policy>)) and tensorrt_llm agree.
# Stop words as token ids reach the executor only as stop_words_list; a stop request carries
# the same request id and `stop`, and needs input_ids optional (it sends none that count).
BLS_MUST_SEND = (
    "input_ids",
    "input_lengths",
    "request_output_len",
    "end_id",
    "streaming",
    "stop_words_list",
    *GUIDED_INPUTS,
)
MUST_DECLARE_FOR_STOPPING = ("stop",)


# --------------------------------------------------------------------------------------------
# The checker
# --------------------------------------------------------------------------------------------

_TYPE_NAMES = {value: name for name, value in model_config_pb2.DataType.items()}


def _parse(path: Path) -> Any:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(encoding="utf-8"), config)
    return config


def _declared(tensor: Any) -> Tensor:
    """A ModelInput or ModelOutput as a fact (outputs have no optional or ragged flag)."""
    is_input = isinstance(tensor, model_config_pb2.ModelInput)
    return Tensor(
        _TYPE_NAMES[tensor.data_type],
        tuple(tensor.dims),
        optional=bool(tensor.optional) if is_input else True,
        reshape=tensor.HasField("reshape"),
        ragged=bool(tensor.allow_ragged_batch) if is_input else False,
    )


def _ensemble_constant(path: Path, name: str) -> Any:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} defines no {name}")


def _tensor_problems(
    kind: str, declared: dict[str, Tensor], facts: dict[str, Tensor], compare_optional: bool
) -> list[str]:
    problems = []
    for name, tensor in declared.items():
        fact = facts.get(name)
        if fact is None:
            hint = (
                f" (the name before TensorRT-LLM 0.20; {PINNED.tensorrt_llm} reads "
                f"{RENAMED_AFTER_0_19[name]!r})"
                if name in RENAMED_AFTER_0_19
                else ""
            )
            problems.append(f"{kind} {name}: the backend has no such tensor{hint}")
            continue
        for field in ("dtype", "dims", "reshape", "ragged") + (
            ("optional",) if compare_optional else ()
        ):
            if getattr(tensor, field) != getattr(fact, field):
                problems.append(
                    f"{kind} {name}: {field} is {getattr(tensor, field)!r}, "
                    f"the backend declares {getattr(fact, field)!r}"
                )
    return problems


def _parameter_problems(parameters: dict[str, str]) -> list[str]:
    problems = []
    known = set(PARAMETERS_WITHOUT_DEFAULT) | set(PARAMETERS_WITH_DEFAULT)
    for key in PARAMETERS_WITHOUT_DEFAULT:
        if key not in parameters:
            problems.append(
                f"parameter {key}: missing, and the backend reads it without a default "
                "(the model fails to load)"
            )
    for key, value in sorted(parameters.items()):
        if key in REJECTED_PARAMETERS:
            problems.append(f"parameter {key}: {REJECTED_PARAMETERS[key]}")
        elif key not in known:
            problems.append(f"parameter {key}: the backend never reads it")
        if key in ENUMERATED and value not in ENUMERATED[key]:
            legal = ", ".join(sorted(v or "''" for v in ENUMERATED[key]))
            problems.append(f"parameter {key}: {value!r} is not one of {legal}")
        if key in BOOLEAN_PARAMETERS and value not in BOOLEAN_VALUES:
            problems.append(f"parameter {key}: {value!r} is not a boolean the backend parses")
        if key in INTEGER_PARAMETERS and not re.fullmatch(r"-?\d+", value):
            problems.append(f"parameter {key}: {value!r} is not an integer")
        if key in FRACTION_PARAMETERS:
            try:
                fraction = float(value)
            except ValueError:
                fraction = -1.0
            if not 0.0 < fraction <= 1.0:
                problems.append(f"parameter {key}: {value!r} is not a fraction in (0, 1]")
    if parameters.get("guided_decoding_backend") and not parameters.get(
        "xgrammar_tokenizer_info_path"
    ):
        problems.append(
            "parameter xgrammar_tokenizer_info_path: empty while guided_decoding_backend is "
            "set, so guided decoding is off and guided requests fail"
        )
    return problems


def conformance_problems(repo: Path) -> list[str]:
    """Everything in a filled inflight_batcher_llm repository that the pinned release's
    tensorrtllm backend would refuse, ignore or serve differently (empty when conformant)."""
    trtllm = _parse(repo / "tensorrt_llm" / "config.pbtxt")
    ensemble = _parse(repo / "ensemble" / "config.pbtxt")
    model_py = repo / "ensemble" / "1" / "model.py"
    problems: list[str] = []
    if trtllm.backend != "tensorrtllm":
        problems.append(f"tensorrt_llm: backend is {trtllm.backend!r}, not tensorrtllm")
    inputs = {t.name: _declared(t) for t in trtllm.input}
    outputs = {t.name: _declared(t) for t in trtllm.output}
    problems += _tensor_problems("input", inputs, TENSORRT_LLM_INPUTS, compare_optional=True)
    problems += _tensor_problems("output", outputs, TENSORRT_LLM_OUTPUTS, compare_optional=False)
    parameters = {key: value.string_value for key, value in trtllm.parameters.items()}
    problems += _parameter_problems(parameters)
    if not trtllm.HasField("dynamic_batching"):
        problems.append("tensorrt_llm: no dynamic_batching (the executor's queue is read there)")
    decoupled = trtllm.model_transaction_policy.decoupled
    if ensemble.model_transaction_policy.decoupled != decoupled:
        problems.append(
            "ensemble and tensorrt_llm disagree on decoupled: the BLS calls tensorrt_llm with "
            "its own policy, and streaming needs a decoupled tensorrt_llm"
        )
    if not ensemble.model_transaction_policy.decoupled and not ensemble.HasField(
        "dynamic_batching"
    ):
        problems.append(
            "ensemble: not decoupled and no dynamic_batching, so each instance serves one "
            "request at a time"
        )
    sent = _ensemble_constant(model_py, "TENSORRT_LLM_INPUTS")
    for name in sent:
        if name not in inputs:
            problems.append(f"ensemble sends {name}, which tensorrt_llm does not declare")
    for name in BLS_MUST_SEND:
        if name not in sent:
            problems.append(f"ensemble never sends {name}")
    required = {name for name, fact in TENSORRT_LLM_INPUTS.items() if not fact.optional}
    for name in sorted(required - set(sent)):
        problems.append(f"ensemble never sends {name}, which the backend requires")
    for name in MUST_DECLARE_FOR_STOPPING:
        if name not in inputs:
            problems.append(f"input {name}: not declared, so a running request cannot be stopped")
    ensemble_inputs = {t.name for t in ensemble.input}
    for name in GUIDED_INPUTS:
        if name not in ensemble_inputs:
            problems.append(f"ensemble: no facade input {name}")
    return problems


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------

VARIANT = "inflight_batcher_llm"


def _fill(out: Path, **values: str) -> Path:
    return fill_template.fill(VARIANT, out, values).out_dir


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="defaults"),
        pytest.param({"decoupled_mode": "false"}, id="not-decoupled"),
        pytest.param(
            {"batching_strategy": "V1", "batch_scheduler_policy": "max_utilization"}, id="static"
        ),
        pytest.param(
            {"guided_decoding_backend": "", "xgrammar_tokenizer_info_path": ""}, id="unguided"
        ),
    ],
)
def test_the_rendered_repository_conforms_to_the_pinned_release(
    tmp_path: Path, values: dict[str, str]
) -> None:
    repo = _fill(tmp_path / "repo", **values)

    assert conformance_problems(repo) == []


def test_the_defaults_keep_the_backends_own_defaults(tmp_path: Path) -> None:
    repo = _fill(tmp_path / "repo")
    parameters = {
        key: value.string_value
        for key, value in _parse(repo / "tensorrt_llm" / "config.pbtxt").parameters.items()
    }

    for key, default in BACKEND_DEFAULTS.items():
        assert parameters[key] == default, f"{key}: the backend's own default is {default}"
    assert parameters["guided_decoding_backend"] == "xgrammar"


def _replace(path: Path, old: str, new: str) -> Path:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def _drop_parameter(path: Path, key: str) -> Path:
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(r"\{\s*(#[^\n]*\n\s*)*key: \"" + key + r"\"\s*value: \{[^}]*\}\s*\},?")
    assert pattern.search(text), key
    path.write_text(pattern.sub("", text, count=1), encoding="utf-8")
    return path


_TRTLLM = Path("tensorrt_llm/config.pbtxt")
_ENSEMBLE = Path("ensemble/config.pbtxt")
_MODEL_PY = Path("ensemble/1/model.py")

Mutation = Callable[[Path], object]
"""Edits a filled repository in place (what it returns is ignored)."""

# Each defect found when the templates were read against upstream (issue 14), and a few more
# a later edit could bring back.
MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "no-tokenizer-dir": (
        lambda repo: _drop_parameter(repo / _TRTLLM, "tokenizer_dir"),
        "parameter tokenizer_dir: missing",
    ),
    "no-guided-backend": (
        lambda repo: _drop_parameter(repo / _TRTLLM, "guided_decoding_backend"),
        "parameter guided_decoding_backend: missing",
    ),
    "no-xgrammar-info": (
        lambda repo: _drop_parameter(repo / _TRTLLM, "xgrammar_tokenizer_info_path"),
        "parameter xgrammar_tokenizer_info_path: missing",
    ),
    "old-seed-name": (
        lambda repo: (
            _replace(repo / _TRTLLM, 'name: "seed"', 'name: "random_seed"'),
            _replace(repo / _MODEL_PY, '"seed": ("request"', '"random_seed": ("request"'),
        ),
        "input random_seed: the backend has no such tensor (the name before TensorRT-LLM 0.20",
    ),
    "old-min-length-name": (
        lambda repo: _replace(repo / _TRTLLM, 'name: "min_tokens"', 'name: "min_length"'),
        "input min_length: the backend has no such tensor",
    ),
    "input-ids-required": (
        lambda repo: _replace(
            repo / _TRTLLM,
            'allow_ragged_batch: true, optional: true },\n  { name: "input_lengths"',
            'allow_ragged_batch: true },\n  { name: "input_lengths"',
        ),
        "input input_ids: optional is False, the backend declares True",
    ),
    "wrong-type": (
        lambda repo: _replace(
            repo / _TRTLLM,
            'name: "seed", data_type: TYPE_UINT64',
            'name: "seed", data_type: TYPE_INT64',
        ),
        "input seed: dtype is 'TYPE_INT64', the backend declares 'TYPE_UINT64'",
    ),
    "unknown-guided-backend": (
        lambda repo: _replace(
            repo / _TRTLLM, 'string_value: "xgrammar"', 'string_value: "outlines"'
        ),
        "parameter guided_decoding_backend: 'outlines' is not one of",
    ),
    "bad-boolean": (
        lambda repo: _replace(
            repo / _TRTLLM,
            'key: "enable_kv_cache_reuse"\n    value: { string_value: "true" }',
            'key: "enable_kv_cache_reuse"\n    value: { string_value: "yes" }',
        ),
        "parameter enable_kv_cache_reuse: 'yes' is not a boolean",
    ),
    "typo-parameter": (
        lambda repo: _replace(repo / _TRTLLM, 'key: "max_beam_width"', 'key: "max_beam_widht"'),
        "parameter max_beam_widht: the backend never reads it",
    ),
    "worker-path": (
        lambda repo: _replace(repo / _TRTLLM, 'key: "max_beam_width"', 'key: "worker_path"'),
        "parameter worker_path: the backend refuses it",
    ),
    "serial-ensemble": (
        lambda repo: (
            _replace(repo / _ENSEMBLE, "dynamic_batching { }", ""),
            _replace(repo / _ENSEMBLE, "decoupled: true", "decoupled: false"),
            _replace(repo / _TRTLLM, "decoupled: true", "decoupled: false"),
        ),
        "ensemble: not decoupled and no dynamic_batching",
    ),
    "policies-disagree": (
        lambda repo: _replace(repo / _TRTLLM, "decoupled: true", "decoupled: false"),
        "ensemble and tensorrt_llm disagree on decoupled",
    ),
    "guided-inputs-not-sent": (
        lambda repo: _replace(
            repo / _MODEL_PY,
            '    "guided_decoding_guide": ("request", "guided_decoding_guide"),\n',
            "",
        ),
        "ensemble never sends guided_decoding_guide",
    ),
    "stop-not-declared": (
        lambda repo: _replace(
            repo / _TRTLLM,
            '  { name: "stop", data_type: TYPE_BOOL, dims: [ 1 ], reshape: { shape: [ ] }, '
            "optional: true },\n",
            "",
        ),
        "input stop: not declared",
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_checker_catches_each_defect(tmp_path: Path, mutation: str) -> None:
    repo = _fill(tmp_path / "repo")
    mutate, expected = MUTATIONS[mutation]

    mutate(repo)

    problems = conformance_problems(repo)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_a_guided_backend_without_its_tokenizer_file_is_refused(tmp_path: Path) -> None:
    repo = _fill(tmp_path / "repo", xgrammar_tokenizer_info_path="")

    assert conformance_problems(repo) == [
        "parameter xgrammar_tokenizer_info_path: empty while guided_decoding_backend is set, "
        "so guided decoding is off and guided requests fail"
    ]


def test_the_cpu_stand_in_uses_the_release_tensor_names() -> None:
    """The CPU tensorrt_llm stands in for the real one: every input it declares is one of
    the release's, with its type (dims differ: the stand-in does not reshape scalars)."""
    config = _parse(CPU_TENSORRT_LLM)
    own_outputs = {"finish_reason"}  # the stand-in's addition, for its BLS

    for tensor in config.input:
        assert tensor.name in TENSORRT_LLM_INPUTS, (
            f"{tensor.name}: not a tensorrt_llm input of {PINNED.tensorrt_llm}"
            + (
                f" (now {RENAMED_AFTER_0_19[tensor.name]})"
                if tensor.name in RENAMED_AFTER_0_19
                else ""
            )
        )
        assert _TYPE_NAMES[tensor.data_type] == TENSORRT_LLM_INPUTS[tensor.name].dtype, tensor.name
    for tensor in config.output:
        if tensor.name not in own_outputs:
            assert _TYPE_NAMES[tensor.data_type] == TENSORRT_LLM_OUTPUTS[tensor.name].dtype


def test_the_pinned_release_is_named_where_users_install_it() -> None:
    readme = GPU_README.read_text(encoding="utf-8")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]

    assert PINNED.container in readme
    assert f"TensorRT-LLM {PINNED.tensorrt_llm}" in readme
    assert PINNED.tensorrt_llm_commit[:8] in readme
    assert extras["gpu"] == [f"tensorrt-llm=={PINNED.tensorrt_llm}"]


def test_the_facades_guide_types_are_the_releases() -> None:
    """Every engine reads its guide through genai_triton.guides (the GPU ensembles ship a copy)."""
    from genai_triton import guides

    assert guides.GUIDE_TYPES == GUIDE_TYPES
    assert (guides.GUIDE_TYPE, guides.GUIDE) == GUIDED_INPUTS


def test_the_cancellation_fallback_names_the_release_that_has_cancel() -> None:
    model_py = (
        ROOT / "triton_models" / "gpu" / VARIANT / "ensemble" / "1" / "model.py"
    ).read_text()
    container_release = re.search(r":(\d\d\.\d\d)-trtllm", PINNED.container)

    assert container_release is not None
    assert container_release.group(1) >= BLS_CANCEL_SINCE, "the pinned container has cancel()"
    assert f"Triton {BLS_CANCEL_SINCE} and later" in model_py


# --------------------------------------------------------------------------------------------
# The LLM-API variant: model.yaml holds LLM() arguments
# --------------------------------------------------------------------------------------------

# The `LLM()` arguments, KvCacheConfig fields and guided-decoding backends of the LLM API are
# kept as data by the stand-in `tensorrt_llm` the llmapi tests load (tests/support/
# trtllm_standin; sources: TensorRT-LLM docs API reference, llmapi examples of 1.0.0rc*, and
# stored tensorrt_llm/llmapi/llm_args.py), which refuses anything else as the real LLM() does.
LLMAPI_BACKENDS = frozenset({"pytorch"})
LLMAPI_GUIDED_BACKENDS = frozenset({"xgrammar", "llguidance"})
LLMAPI_KV_CACHE_FIELDS = frozenset({"enable_block_reuse", "max_tokens", "free_gpu_memory_fraction"})


def llmapi_problems(repo: Path) -> list[str]:
    """What in a filled llmapi repository's model.yaml the pinned LLM API would refuse."""
    from tests.support.trtllm_standin.tensorrt_llm import LLM_ARGUMENTS

    arguments = yaml.safe_load((repo / "ensemble" / "1" / "model.yaml").read_text())
    problems = []
    for key in sorted(set(arguments) - {"model"} - LLM_ARGUMENTS):
        problems.append(f"model.yaml {key}: not an LLM() argument")
    if arguments.get("backend") not in LLMAPI_BACKENDS:
        problems.append(f"model.yaml backend: {arguments.get('backend')!r} is not pytorch")
    guided = arguments.get("guided_decoding_backend")
    if guided not in (None, "", *LLMAPI_GUIDED_BACKENDS):
        problems.append(f"model.yaml guided_decoding_backend: {guided!r} is not legal")
    for key in sorted(set(arguments.get("kv_cache_config") or {}) - LLMAPI_KV_CACHE_FIELDS):
        problems.append(f"model.yaml kv_cache_config.{key}: not a KvCacheConfig field")
    return problems


def test_the_rendered_llmapi_repository_passes_only_known_llm_arguments(tmp_path: Path) -> None:
    repo = fill_template.fill("llmapi", tmp_path / "repo", {}).out_dir

    assert llmapi_problems(repo) == []
    arguments = yaml.safe_load((repo / "ensemble" / "1" / "model.yaml").read_text())
    assert arguments["kv_cache_config"]["enable_block_reuse"] is True, "reuse on, as upstream"


def test_the_llmapi_check_catches_an_unknown_argument(tmp_path: Path) -> None:
    repo = fill_template.fill("llmapi", tmp_path / "repo", {}).out_dir
    model_yaml = repo / "ensemble" / "1" / "model.yaml"
    model_yaml.write_text(model_yaml.read_text() + "max_num_sequences: 8\n")

    assert llmapi_problems(repo) == ["model.yaml max_num_sequences: not an LLM() argument"]
