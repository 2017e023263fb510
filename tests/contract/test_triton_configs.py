"""Triton model repositories, checked without a GPU.

- Every `config.pbtxt` parses as Triton's `ModelConfig`: the CPU repository as it is, the
  TensorRT-LLM templates (triton_models/gpu) after `scripts/triton-templates` filled them with
  its defaults.
- Every platform ensemble is wired: maps name real tensors of real models, in step order,
  every output is produced, and no step mixes a decoupled model's outputs with tensors from
  before it (Triton refuses such an ensemble when it loads). The generation facades are BLS
  models (`ensemble` on CPU and GPU); the GPU one's BLS calls name real tensors too.
- Models that stream are decoupled.
- The GPU ensemble exposes exactly the facade of the CPU models and of triton_models/README.md:
  swapping repositories needs no change in InferenceService.
- The fill script is strict (unknown keys, leftover placeholders). (scripts/build-engine's
  dry run is checked against the pinned CLI in tests/unit/scripts/test_build_engine.py.)
- The GPU detokenization keeps the facade's text contract (checked with real tokenizers), and
  the GPU repository runs on a real Triton with a stand-in for the tensorrtllm backend
  (system).
- On a GPU host: a real engine built by scripts/build-engine serves the facade (gpu).
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from scripts.lib import fill_template

ROOT = Path(__file__).resolve().parents[2]
CPU_REPOSITORY = ROOT / "triton_models" / "cpu"
GPU_TEMPLATES = ROOT / "triton_models" / "gpu"
FACADE_README = ROOT / "triton_models" / "README.md"
TRITON_TEMPLATES = ROOT / "scripts" / "triton-templates"
BUILD_ENGINE = ROOT / "scripts" / "build-engine"
GPU_ENSEMBLE = GPU_TEMPLATES / "inflight_batcher_llm" / "ensemble" / "1"

ModelConfig = model_config_pb2.ModelConfig
"""Triton's model configuration message (tritonclient ships no type stubs)."""
STREAM_FLAGS = {"stream", "streaming"}
FACADE_PROBE = {"text_input", "text_output"}
"""A model or ensemble with both tensors serves the generation facade."""


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    config = ModelConfig()
    text_format.Parse(path.read_text(encoding="utf-8"), config)
    return config


def template_configs() -> list[tuple[str, Path]]:
    """(variant, path relative to the variant) of every GPU template config."""
    return [
        (variant, path.relative_to(GPU_TEMPLATES / variant))
        for variant in fill_template.variants()
        for path in sorted((GPU_TEMPLATES / variant).rglob("config.pbtxt"))
    ]


@pytest.fixture(scope="session")
def gpu_repositories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every GPU variant filled with the script's defaults."""
    root = tmp_path_factory.mktemp("gpu-repositories")
    return {
        variant: fill_template.fill(variant, root / variant, {}).out_dir
        for variant in fill_template.variants()
    }


@dataclass
class Repository:
    """A model repository on disk, its configs parsed."""

    label: str
    path: Path
    configs: dict[str, model_config_pb2.ModelConfig] = field(init=False)

    def __post_init__(self) -> None:
        self.configs = {
            path.parent.name: parse_config(path)
            for path in sorted(self.path.glob("*/config.pbtxt"))
        }

    def decoupled(self, model: str) -> bool:
        """The model's transaction policy."""
        return bool(self.configs[model].model_transaction_policy.decoupled)

    def ensembles(self) -> list[str]:
        return [name for name, config in self.configs.items() if config.platform == "ensemble"]


@pytest.fixture(scope="session")
def repositories(gpu_repositories: dict[str, Path]) -> dict[str, Repository]:
    found = {"cpu": Repository("cpu", CPU_REPOSITORY)}
    for variant, path in gpu_repositories.items():
        found[f"gpu/{variant}"] = Repository(f"gpu/{variant}", path)
    return found


REPOSITORY_LABELS = ["cpu", *(f"gpu/{variant}" for variant in fill_template.variants())]

# --------------------------------------------------------------------------------------------
# Every config parses
# --------------------------------------------------------------------------------------------

CONFIG_CASES = [
    *(("cpu", path.relative_to(CPU_REPOSITORY)) for path in CPU_REPOSITORY.glob("*/config.pbtxt")),
    *((f"gpu/{variant}", path) for variant, path in template_configs()),
]


@pytest.mark.parametrize(
    ("label", "relative"), sorted(CONFIG_CASES), ids=[f"{a}/{b}" for a, b in sorted(CONFIG_CASES)]
)
def test_every_config_parses_as_a_triton_model_config(
    label: str, relative: Path, gpu_repositories: dict[str, Path]
) -> None:
    base = CPU_REPOSITORY if label == "cpu" else gpu_repositories[label.removeprefix("gpu/")]
    path = base / relative
    text = path.read_text(encoding="utf-8")

    config = parse_config(path)

    assert "${" not in text, f"{label}/{relative} still has a placeholder"
    assert config.name in ("", path.parent.name), "Triton needs name == the directory name"
    assert config.backend or config.platform, "neither backend nor platform"
    for tensor in [*config.input, *config.output]:
        assert tensor.name, "a tensor without a name"
        assert tensor.data_type != model_config_pb2.TYPE_INVALID, f"{tensor.name}: no data_type"
    if config.platform == "ensemble":
        assert config.ensemble_scheduling.step, "an ensemble without steps"


def test_the_gpu_templates_are_all_checked() -> None:
    assert {variant for variant, _ in template_configs()} == {"inflight_batcher_llm", "llmapi"}
    assert len(template_configs()) == 5


# --------------------------------------------------------------------------------------------
# Ensemble wiring
# --------------------------------------------------------------------------------------------


def ensemble_problems(repository: Repository, name: str) -> list[str]:
    """What is wrong with one ensemble's wiring (empty when nothing is).

    Tensors are followed in step order; labels mimic Triton's check for decoupled models
    (ensemble_utils.cc): a decoupled step's outputs get a label of their own, any other step
    passes its inputs' label on, and a step's inputs, like the ensemble's outputs, must carry
    a single label."""
    config = repository.configs[name]
    problems: list[str] = []
    available = {tensor.name: tensor.data_type for tensor in config.input}
    labels = dict.fromkeys(available, 0)
    steps = list(config.ensemble_scheduling.step)
    consumed_later = {
        index: {value for later in steps[index + 1 :] for value in later.input_map.values()}
        for index in range(len(steps))
    }
    next_label = 1
    for index, step in enumerate(steps):
        where = f"step {index} ({step.model_name})"
        model = repository.configs.get(step.model_name)
        if model is None:
            problems.append(f"{where}: no model {step.model_name!r} in the repository")
            continue
        inputs = {tensor.name: tensor for tensor in model.input}
        outputs = {tensor.name: tensor for tensor in model.output}
        step_labels = set()
        for key, value in step.input_map.items():
            if key not in inputs:
                problems.append(f"{where}: input_map key {key!r} is not an input of the model")
            if value not in available:
                problems.append(
                    f"{where}: {value!r} is neither an ensemble input nor an earlier output"
                )
                continue
            step_labels.add(labels[value])
            if key in inputs and inputs[key].data_type != available[value]:
                problems.append(f"{where}: {value!r} -> {key!r} changes the data type")
        required = {n for n, tensor in inputs.items() if not tensor.optional}
        for missing in sorted(required - set(step.input_map)):
            problems.append(f"{where}: required input {missing!r} is not mapped")
        if len(step_labels) > 1:
            problems.append(
                f"{where}: mixes outputs of a decoupled model with tensors from before it"
            )
        if repository.decoupled(step.model_name):
            label, next_label = next_label, next_label + 1
        else:
            label = min(step_labels, default=0)
        ensemble_outputs = {tensor.name for tensor in config.output}
        for key, value in step.output_map.items():
            if key not in outputs:
                problems.append(f"{where}: output_map key {key!r} is not an output of the model")
                continue
            if value not in ensemble_outputs and value not in consumed_later[index]:
                problems.append(f"{where}: {value!r} is neither an ensemble output nor used later")
            available[value] = outputs[key].data_type
            labels[value] = label
    output_labels = set()
    for tensor in config.output:
        if tensor.name not in available or tensor.name in {t.name for t in config.input}:
            problems.append(f"ensemble output {tensor.name!r} is produced by no step")
            continue
        output_labels.add(labels[tensor.name])
        if available[tensor.name] != tensor.data_type:
            problems.append(f"ensemble output {tensor.name!r} has another data type")
    if len(output_labels) > 1:
        problems.append("the ensemble's outputs come from different decoupled models")
    return problems


def streamed_output_is_decoupled(repository: Repository, name: str) -> bool:
    """Whether the step producing the ensemble's `text_output` is decoupled, or downstream of a
    decoupled step."""
    config = repository.configs[name]
    decoupled_tensors: set[str] = set()
    for step in config.ensemble_scheduling.step:
        upstream = any(value in decoupled_tensors for value in step.input_map.values())
        if upstream or repository.decoupled(step.model_name):
            decoupled_tensors.update(step.output_map.values())
    return "text_output" in decoupled_tensors


def test_every_ensemble_is_wired(repositories: dict[str, Repository]) -> None:
    # The facades are BLS models today (a platform ensemble cannot cancel the tensorrt_llm
    # request when the client goes away), so this guards any platform ensemble added later;
    # the checker itself is exercised on synthetic repositories below.
    for label, repository in repositories.items():
        for name in repository.ensembles():
            assert ensemble_problems(repository, name) == [], f"{label}/{name}"


def _synthetic(tmp_path: Path, models: dict[str, str]) -> Repository:
    for name, text in models.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text(f'name: "{name}"\n{text}')
    return Repository("synthetic", tmp_path)


_SOURCE = 'backend: "python"\ninput [{name: "A", data_type: TYPE_INT32, dims: [1]}]\n'
_TOKENS = 'output [{name: "T", data_type: TYPE_INT32, dims: [1]}]'
_CONSUMER = (
    'backend: "python"\n'
    'input [{name: "T", data_type: TYPE_INT32, dims: [1]},'
    ' {name: "B", data_type: TYPE_INT32, dims: [1]}]\n'
    'output [{name: "Y", data_type: TYPE_INT32, dims: [1]}]'
)
_ENSEMBLE_IO = (
    'platform: "ensemble"\n'
    'input [{name: "x", data_type: TYPE_INT32, dims: [1]}]\n'
    'output [{name: "y", data_type: TYPE_INT32, dims: [1]}]\n'
)


def _ensemble(*steps: str) -> str:
    return (
        _ENSEMBLE_IO + "ensemble_scheduling { step [" + ",".join(f"{{{s}}}" for s in steps) + "] }"
    )


_GEN = 'model_name: "gen", model_version: -1, input_map {key: "A", value: "x"}, output_map {key: "T", value: "t"}'
_USE = 'model_name: "use", model_version: -1, input_map {key: "T", value: "t"}, input_map {key: "B", value: "x"}, output_map {key: "Y", value: "y"}'


@pytest.mark.parametrize(
    ("gen_policy", "steps", "expected"),
    [
        pytest.param("", [_GEN, _USE], [], id="valid"),
        pytest.param(
            "model_transaction_policy { decoupled: true }\n",
            [_GEN, _USE],
            ["step 1 (use): mixes outputs of a decoupled model with tensors from before it"],
            id="decoupled-mix",
        ),
        pytest.param(
            "",
            [_USE, _GEN],
            [
                "step 0 (use): 't' is neither an ensemble input nor an earlier output",
                "step 1 (gen): 't' is neither an ensemble output nor used later",
            ],
            id="order",
        ),
        pytest.param(
            "",
            [_GEN.replace('key: "T"', 'key: "Z"'), _USE],
            [
                "step 0 (gen): output_map key 'Z' is not an output of the model",
                "step 1 (use): 't' is neither an ensemble input nor an earlier output",
            ],
            id="unknown-output",
        ),
        pytest.param(
            "",
            [_GEN, _USE.replace(', input_map {key: "B", value: "x"}', "")],
            ["step 1 (use): required input 'B' is not mapped"],
            id="required-input",
        ),
        pytest.param(
            "",
            [_GEN, _USE.replace('value: "y"', 'value: "w"')],
            [
                "step 1 (use): 'w' is neither an ensemble output nor used later",
                "ensemble output 'y' is produced by no step",
            ],
            id="unproduced-output",
        ),
    ],
)
def test_the_wiring_check_finds_broken_ensembles(
    tmp_path: Path, gen_policy: str, steps: list[str], expected: list[str]
) -> None:
    repository = _synthetic(
        tmp_path,
        {"gen": _SOURCE + gen_policy + _TOKENS, "use": _CONSUMER, "e": _ensemble(*steps)},
    )

    assert ensemble_problems(repository, "e") == expected


# --------------------------------------------------------------------------------------------
# Streaming needs decoupled models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", REPOSITORY_LABELS)
def test_models_that_stream_are_decoupled(label: str, repositories: dict[str, Repository]) -> None:
    repository = repositories[label]
    checked = 0
    for name, config in repository.configs.items():
        if not {tensor.name.lower() for tensor in config.input} & STREAM_FLAGS:
            continue
        checked += 1
        if config.platform == "ensemble":
            assert streamed_output_is_decoupled(repository, name), f"{label}/{name}"
        else:
            assert repository.decoupled(name), f"{label}/{name} streams but is not decoupled"
    assert checked, f"{label} has no model with a stream flag: nothing streams tokens"


# --------------------------------------------------------------------------------------------
# One facade: CPU models, GPU ensemble, README
# --------------------------------------------------------------------------------------------


def facade(config: model_config_pb2.ModelConfig) -> dict[str, Any]:
    """Names, types, dims (and optionality) of a model's inputs and outputs."""
    return {
        "max_batch_size > 0": config.max_batch_size > 0,
        "inputs": {t.name: (t.data_type, list(t.dims), t.optional) for t in config.input},
        "outputs": {t.name: (t.data_type, list(t.dims)) for t in config.output},
    }


def readme_facade() -> dict[str, Any]:
    """The generation facade as the tables of triton_models/README.md state it."""
    text = FACADE_README.read_text(encoding="utf-8")
    section = text.split("## The generation facade", 1)[1].split("\n## ", 1)[0]
    row = re.compile(r"^\| `(\w+)` \| (TYPE_\w+) \| \[([-\d, ]+)\] \|(?: (yes|no) \|)?")
    inputs, outputs = {}, {}
    for line in section.splitlines():
        match = row.match(line)
        if not match:
            continue
        name, dtype, dims, required = match.groups()
        shape = (model_config_pb2.DataType.Value(dtype), [int(d) for d in dims.split(",")])
        if required is None:
            outputs[name] = shape
        else:
            inputs[name] = (*shape, required == "no")
    return {"max_batch_size > 0": True, "inputs": inputs, "outputs": outputs}


def test_the_gpu_ensemble_has_the_facade_of_the_readme(
    repositories: dict[str, Repository],
) -> None:
    gpu = repositories["gpu/inflight_batcher_llm"].configs["ensemble"]

    documented = readme_facade()

    assert len(documented["inputs"]) == 17
    assert len(documented["outputs"]) == 4
    assert facade(gpu) == documented


@pytest.mark.parametrize("model", ["ensemble", "smollm2", "gemma3_270m", "zero_llm"])
def test_the_gpu_ensemble_has_the_facade_of_the_cpu_models(
    model: str, repositories: dict[str, Repository]
) -> None:
    cpu = repositories["cpu"].configs[model]
    gpu = repositories["gpu/inflight_batcher_llm"].configs["ensemble"]

    assert facade(cpu) == facade(gpu)


def test_every_cpu_generation_model_is_compared_with_the_gpu_ensemble(
    repositories: dict[str, Repository],
) -> None:
    serving = {
        name
        for name, config in repositories["cpu"].configs.items()
        if {t.name for t in [*config.input, *config.output]} >= FACADE_PROBE
    }
    assert serving <= {"ensemble", "smollm2", "gemma3_270m", "zero_llm"}, (
        "add the new facade models to the test above"
    )


def _assigned_constant(path: Path, name: str) -> Any:
    """A module-level constant of a model file, read without importing it (it needs Triton)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} defines no {name}")


def test_the_gpu_ensemble_calls_its_models_with_their_real_tensor_names(
    repositories: dict[str, Repository],
) -> None:
    configs = repositories["gpu/inflight_batcher_llm"].configs
    facade_inputs = {t.name: t for t in configs["ensemble"].input}
    pre_inputs = {t.name: t for t in configs["preprocessing"].input}
    pre_outputs = {t.name: t for t in configs["preprocessing"].output}
    trtllm_inputs = {t.name: t for t in configs["tensorrt_llm"].input}
    model_py = GPU_ENSEMBLE / "model.py"
    to_preprocessing = _assigned_constant(model_py, "PREPROCESSING_INPUTS")
    to_trtllm = _assigned_constant(model_py, "TENSORRT_LLM_INPUTS")
    requested = _assigned_constant(model_py, "TENSORRT_LLM_OUTPUTS")

    for own, facade_name in to_preprocessing.items():
        assert own in pre_inputs, f"preprocessing has no input {own}"
        assert pre_inputs[own].data_type == facade_inputs[facade_name].data_type
        assert pre_inputs[own].optional or not facade_inputs[facade_name].optional, own
    assert {n for n, t in pre_inputs.items() if not t.optional} <= set(to_preprocessing)
    for trtllm_name, (source, name) in to_trtllm.items():
        assert trtllm_name in trtllm_inputs, f"tensorrt_llm has no input {trtllm_name}"
        origin = pre_outputs if source == "preprocessing" else facade_inputs
        assert name in origin, f"{source} has no tensor {name}"
        assert origin[name].data_type == trtllm_inputs[trtllm_name].data_type, trtllm_name
        if source == "request" and origin[name].optional:
            assert trtllm_inputs[trtllm_name].optional, f"{trtllm_name} may be absent"
    assert {n for n, t in trtllm_inputs.items() if not t.optional} <= set(to_trtllm)
    used = set(to_preprocessing.values()) | {n for s, n in to_trtllm.values() if s == "request"}
    assert used == set(facade_inputs), "every facade input reaches preprocessing or the engine"
    assert set(requested) <= {t.name for t in configs["tensorrt_llm"].output}
    assert configs["tensorrt_llm"].backend == "tensorrtllm"
    assert configs["tensorrt_llm"].model_transaction_policy.decoupled
    assert configs["ensemble"].model_transaction_policy.decoupled


# --------------------------------------------------------------------------------------------
# The fill script
# --------------------------------------------------------------------------------------------


def run_script(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=ROOT,
    )


def test_triton_templates_fills_given_values_into_every_model(tmp_path: Path) -> None:
    out = tmp_path / "repo"

    done = run_script(
        TRITON_TEMPLATES,
        "--variant",
        "inflight_batcher_llm",
        "--out",
        out,
        "engine_dir=/engines/llama",
        "tokenizer_dir=/hf/llama",
        "decoupled_mode=false",
        "triton_max_batch_size=8",
    )

    assert done.returncode == 0, done.stderr
    configs = {p.parent.name: parse_config(p) for p in out.glob("*/config.pbtxt")}
    assert set(configs) == {"ensemble", "preprocessing", "tensorrt_llm", "postprocessing"}
    assert configs["tensorrt_llm"].parameters["gpt_model_path"].string_value == "/engines/llama"
    assert configs["preprocessing"].parameters["engine_dir"].string_value == "/engines/llama"
    for model in ("preprocessing", "postprocessing", "ensemble"):
        assert configs[model].parameters["tokenizer_dir"].string_value == "/hf/llama"
    assert {c.max_batch_size for c in configs.values()} == {8}
    assert not configs["tensorrt_llm"].model_transaction_policy.decoupled
    assert not configs["ensemble"].model_transaction_policy.decoupled
    for model in ("ensemble", "postprocessing"):  # postprocessing's is a symlink in the tree
        copied = out / model / "1" / "decoding.py"
        assert copied.is_file(), model
        assert not copied.is_symlink(), model
    assert (out / "tensorrt_llm" / "1").is_dir(), "Triton needs the version directory"


def test_triton_templates_fails_on_a_key_no_template_uses(tmp_path: Path) -> None:
    out = tmp_path / "repo"

    done = run_script(
        TRITON_TEMPLATES, "--variant", "inflight_batcher_llm", "--out", out, "engine_dri=/x"
    )

    assert done.returncode == 1
    assert "engine_dri" in done.stderr
    assert "not used by any template" in done.stderr
    assert not out.exists()


def test_triton_templates_fails_on_placeholders_left_without_a_value(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    (templates / "demo" / "model").mkdir(parents=True)
    (templates / "demo" / "model" / "config.pbtxt").write_text(
        'name: "model"\nbackend: "${backend}"\nmax_batch_size: ${batch}\n'
        'parameters { key: "p", value: { string_value: "${nobody_sets_this}" } }\n'
    )
    out = tmp_path / "repo"

    done = run_script(
        TRITON_TEMPLATES,
        "--variant",
        "demo",
        "--templates",
        templates,
        "--out",
        out,
        "backend=python",
        "batch=4",
    )

    assert done.returncode == 1
    assert "model/config.pbtxt:4: ${nobody_sets_this}" in done.stderr
    assert "${backend}" not in done.stderr
    assert not out.exists(), "a failed fill must not leave a repository behind"


# --------------------------------------------------------------------------------------------
# The GPU detokenization's text contract, with real (small, trained here) tokenizers
# --------------------------------------------------------------------------------------------


def _decoding() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_decoding", GPU_ENSEMBLE / "decoding.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TEXTS = [
    "Hello world, café ünïcödé 🙂 — 日本語のテキスト.",
    "two  spaces\n\nUser: next line",
    "ends with an emoji 🙂",
]


@pytest.fixture(scope="module", params=["byte-level", "metaspace"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    """A BPE tokenizer of the `tokenizers` library in the style of Llama 3 / GPT-2
    (byte-level: characters split over tokens) or of SentencePiece (metaspace: the space
    belongs to the next token, and decoding drops a leading one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None if request.param == "byte-level" else "<unk>"))
    if request.param == "byte-level":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = sorted(set("".join(TEXTS).replace(" ", "▁")))
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=alphabet, special_tokens=["<unk>", "</s>"]
    )
    tok.train_from_iterator(["hello world two spaces next line"] * 20, trainer)
    return tok


@pytest.mark.parametrize("text", TEXTS)
def test_gpu_ensemble_streams_exactly_the_text_of_one_decode(tokenizer: Any, text: str) -> None:
    decoding = _decoding()
    ids = tokenizer.encode(text).ids
    decoder = decoding.RequestDecoder(tokenizer.decode, end_id=-1, max_tokens=10_000)

    chunks = [decoder.feed([token]) for token in ids]
    chunks.append(decoder.finish())

    assert "".join(chunks) == tokenizer.decode(ids)
    assert not any("\ufffd" in chunk for chunk in chunks), "a chunk split a character"
    assert decoder.finish_reason == "stop"
    assert decoder.generated == len(ids)


@pytest.mark.parametrize("text", TEXTS)
def test_gpu_postprocessing_decodes_a_stream_call_by_call_without_state(
    tokenizer: Any, text: str
) -> None:
    decoding = _decoding()
    ids = tokenizer.encode(text).ids

    chunks = [
        decoding.text_delta(tokenizer.decode, ids[:length], length - 1)[0]
        for length in range(1, len(ids) + 1)
    ]
    chunks.append(decoding.text_delta(tokenizer.decode, ids, len(ids), final=True)[0])

    assert "".join(chunks) == tokenizer.decode(ids)
    assert not any("\ufffd" in chunk for chunk in chunks), "a chunk split a character"


@pytest.mark.parametrize(
    ("stop_words", "max_tokens", "end_after", "expected_text", "reason"),
    [
        pytest.param((), 4, None, None, "length", id="length"),
        pytest.param((), 10_000, 5, None, "stop", id="end-token"),
        pytest.param(("User:",), 10_000, None, "two  spaces\n\n", "stop_words", id="stop-word"),
        pytest.param(("xyz",), 10_000, None, "two  spaces\n\nUser: next line", "stop", id="no-hit"),
    ],
)
def test_gpu_ensemble_finish_reasons(
    tokenizer: Any,
    stop_words: tuple[str, ...],
    max_tokens: int,
    end_after: int | None,
    expected_text: str | None,
    reason: str,
) -> None:
    decoding = _decoding()
    ids = tokenizer.encode(TEXTS[1]).ids
    end_id = tokenizer.token_to_id("</s>")
    if end_after is not None:
        ids = [*ids[:end_after], end_id, *ids[end_after:]]
    decoder = decoding.RequestDecoder(
        tokenizer.decode, end_id=end_id, max_tokens=max_tokens, stop_words=stop_words
    )

    chunks = []
    for token in ids:
        chunks.append(decoder.feed([token]))
        if decoder.finish_reason:
            break
    else:
        chunks.append(decoder.finish())

    assert decoder.finish_reason == reason
    if reason == "length":
        assert decoder.generated == max_tokens
        assert "".join(chunks) == tokenizer.decode(ids[:max_tokens])
    elif reason == "stop" and end_after is not None:
        assert decoder.generated == end_after
        assert "".join(chunks) == tokenizer.decode(ids[:end_after])
    else:
        assert "".join(chunks) == expected_text


def test_gpu_ensemble_stops_on_stop_word_token_ids(tokenizer: Any) -> None:
    decoding = _decoding()
    ids = tokenizer.encode(TEXTS[1]).ids
    stop_ids = tuple(ids[3:5])
    word_list = [[*stop_ids, 0], [len(stop_ids), -1, -1]]
    decoder = decoding.RequestDecoder(
        tokenizer.decode,
        end_id=-1,
        max_tokens=10_000,
        stop_ids=decoding.parse_word_list(word_list),
    )

    for token in ids:
        decoder.feed([token])
        if decoder.finish_reason:
            break

    assert decoder.finish_reason == "stop_words"
    assert decoder.engine_finished, "TensorRT-LLM stops itself on a token-level match"
    assert decoder.generated == 5


@pytest.mark.parametrize("engine_knows_it", [True, False])
def test_gpu_ensemble_ends_on_the_models_other_end_of_turn_ids(
    tokenizer: Any, engine_knows_it: bool
) -> None:
    decoding = _decoding()
    ids = tokenizer.encode(TEXTS[1]).ids
    end_of_turn = tokenizer.token_to_id("<unk>")
    decoder = decoding.RequestDecoder(
        tokenizer.decode,
        end_id=tokenizer.token_to_id("</s>"),
        max_tokens=10_000,
        other_end_ids=[end_of_turn],
        # preprocessing makes them stop words, which TensorRT-LLM returns and stops on
        stop_ids=[(end_of_turn,)] if engine_knows_it else [],
    )

    text = "".join(decoder.feed([token]) for token in [*ids[:3], end_of_turn])

    assert (decoder.finish_reason, decoder.generated) == ("stop", 3)
    assert text == tokenizer.decode(ids[:3])
    assert decoder.engine_finished is engine_knows_it, "else the ensemble must stop it"


# --------------------------------------------------------------------------------------------
# The GPU ensemble on a real Triton, tensorrtllm replaced by a Python stand-in (system)
# --------------------------------------------------------------------------------------------

STANDIN_TENSORRT_LLM = '''
"""Stand-in for the tensorrtllm backend with its documented behaviour. Streaming: one response
per step with only the new token; the end token is never returned (a last response without
tokens ends the request); a token-level stop-word match or request_output_len ends it with the
response carrying the last token. Otherwise one response with all tokens, after the prompt
unless exclude_input_in_output. A request with stop=true stops the running request with the
same request id (and leaves a file named after it in the stop_dir parameter). It "generates"
SCRIPT's tokens, one every 10 ms; a guided request (guided_decoding_guide_type set) generates
the text `<type>:<guide>` instead, to show both inputs arrived."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

SCRIPT = "Hello world, café ünïcödé 🙂 — 日本語.\\n\\nUser: two  spaces"
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.tokenizer = AutoTokenizer.from_pretrained(params["tokenizer_dir"]["string_value"])
        self.script = self.tokenizer.encode(SCRIPT, add_special_tokens=False)
        self.stop_dir = Path(params["stop_dir"]["string_value"])
        self.stopped = set()

    def execute(self, requests):
        for request in requests:
            stop = pb_utils.get_input_tensor_by_name(request, "stop")
            if stop is not None and bool(stop.as_numpy().reshape(-1)[0]):
                self.stopped.add(request.request_id())
                request.get_response_sender().send(flags=FINAL)
            else:
                threading.Thread(target=self.generate, args=(request,)).start()

    def generate(self, request):
        def get(name, default=None):
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            return default if tensor is None else tensor.as_numpy().reshape(-1)

        sender = request.get_response_sender()
        script = self.script
        guide_type = get("guided_decoding_guide_type")
        if guide_type is not None:
            guide = get("guided_decoding_guide", [b""])[0].decode()
            script = self.tokenizer.encode(
                f"{guide_type[0].decode()}:{guide}", add_special_tokens=False
            )
        prompt = get("input_ids")[: int(get("input_lengths")[0])].tolist()
        streaming = bool(get("streaming", [False])[0])
        exclude = bool(get("exclude_input_in_output", [False])[0])
        ids, offsets = get("stop_words_list").reshape(2, -1).tolist()
        words, start = [], 0
        for end in offsets:
            if end < 0:
                break
            words.append(ids[start:end])
            start = end
        out, done = [], False
        limit = int(get("request_output_len")[0])

        def send(tokens, final):
            array = np.array(tokens, dtype=np.int32).reshape(1, 1, -1)
            length = np.array([[len(tokens)]], dtype=np.int32)
            response = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("output_ids", array),
                    pb_utils.Tensor("sequence_length", length),
                ]
            )
            sender.send(response, flags=FINAL if final else 0)

        for token in script[:limit]:
            time.sleep(0.01)
            if request.request_id() in self.stopped:
                (self.stop_dir / request.request_id()).write_text(str(len(out)))
                send([], True)
                return
            out.append(token)
            done = len(out) == limit or any(w and out[-len(w) :] == w for w in words)
            if streaming:
                send([token], done)
            if done:
                break
        if streaming and not done:
            send([], True)  # the end token: a last response without tokens
        if not streaming:
            send(([] if exclude else prompt) + out, True)
'''


@dataclass
class StandinRepository:
    path: Path
    tokenizer_dir: Path
    stop_dir: Path


@pytest.fixture(scope="module")
def standin_repository(tmp_path_factory: pytest.TempPathFactory) -> StandinRepository:
    """The filled inflight_batcher_llm repository, tensorrt_llm a Python stand-in."""
    from tests.support.smollm2 import smollm2_dir

    tokenizer_dir = smollm2_dir()
    root = tmp_path_factory.mktemp("gpu-standin")
    repo, stop_dir = root / "repo", root / "stopped"
    stop_dir.mkdir()
    fill_template.fill(
        "inflight_batcher_llm",
        repo,
        {
            "tokenizer_dir": str(tokenizer_dir),
            "triton_max_batch_size": "8",
            "cancellation_check_period_ms": "10",
        },
    )
    config = repo / "tensorrt_llm" / "config.pbtxt"
    text = config.read_text().replace('backend: "tensorrtllm"', 'backend: "python"')
    for key, value in (("tokenizer_dir", tokenizer_dir), ("stop_dir", stop_dir)):
        text += f'parameters {{ key: "{key}", value: {{ string_value: "{value}" }} }}\n'
    config.write_text(text)
    (repo / "tensorrt_llm" / "1" / "model.py").write_text(STANDIN_TENSORRT_LLM)
    return StandinRepository(repo, tokenizer_dir, stop_dir)


@pytest.mark.system
def test_the_gpu_repository_serves_the_facade_on_triton(
    standin_repository: StandinRepository, tmp_path: Path
) -> None:
    triton = pytest.importorskip("tests.support.triton")
    if not triton.triton_installed():
        pytest.fail("nvidia-pytriton is missing: run scripts/setup python")
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as aioclient
    from transformers import AutoTokenizer

    prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    expected = "Hello world, café ünïcödé 🙂 — 日本語.\n\nUser: two  spaces"
    tokenizer = AutoTokenizer.from_pretrained(standin_repository.tokenizer_dir)
    ids = tokenizer.encode(expected, add_special_tokens=False)

    async def cancelled_after_three(client: Any) -> list[Any]:
        async def requests() -> Any:
            inputs = triton.generation_inputs(prompt, 100)
            yield {"model_name": "ensemble", "inputs": inputs}

        stream = client.stream_infer(requests())
        received = []
        async for result, error in stream:
            assert error is None, error
            received.append(triton.parse_chunk(result))
            if len(received) == 3:
                stream.cancel()
                break
        return received

    async def postprocess(client: Any, length: int, previous: int) -> str:
        def tensor(name: str, array: Any, datatype: str) -> Any:
            t = grpcclient.InferInput(name, list(array.shape), datatype)
            t.set_data_from_numpy(array)
            return t

        result = await client.infer(
            "postprocessing",
            [
                tensor("TOKENS_BATCH", np.array([[ids[:length]]], dtype=np.int32), "INT32"),
                tensor("PREVIOUS_LENGTH", np.array([[previous]], dtype=np.int32), "INT32"),
            ],
        )
        return str(result.as_numpy("OUTPUT")[0][0].decode())

    async def run(server: Any) -> dict[str, Any]:
        client = aioclient.InferenceServerClient(server.grpc_address)
        try:
            cases = {
                "stream": triton.generation_inputs(prompt, 100),
                "once": triton.generation_inputs(prompt, 100, stream=False),
                "length": triton.generation_inputs(prompt, 3),
                "stop": triton.generation_inputs(prompt, 100, stop_words=["User:"]),
                "prompt": triton.generation_inputs(
                    prompt, 100, stream=False, exclude_input_in_output=False
                ),
                "guided": [
                    *triton.generation_inputs(prompt, 100),
                    triton.text_tensor("guided_decoding_guide_type", ["json_schema"], [1, 1]),
                    triton.text_tensor("guided_decoding_guide", ['{"type": "object"}'], [1, 1]),
                ],
            }
            results: dict[str, Any] = {}
            for name, inputs in cases.items():
                results[name] = await triton.stream_generation(client, inputs, model="ensemble")
            results["cancel"] = await cancelled_after_three(client)
            try:
                await triton.stream_generation(
                    client,
                    [
                        *triton.generation_inputs(prompt, 100),
                        triton.text_tensor("guided_decoding_guide_type", ["yaml"], [1, 1]),
                    ],
                    model="ensemble",
                )
            except Exception as error:  # the facade's in-band error
                results["bad_guide"] = str(error)
            results["postprocessing"] = [
                await postprocess(client, length, length - 1) for length in range(1, len(ids) + 1)
            ]
            return results
        finally:
            await client.close()

    with triton.triton_server(tmp_path, None, repository=standin_repository.path) as server:
        results = asyncio.run(run(server))
        deadline = time.monotonic() + 10  # the cancelled request stops soon after
        while not any(standin_repository.stop_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)

    stream = results["stream"]
    assert "".join(c.text for c in stream) == expected
    assert [c.final for c in stream] == [False] * (len(stream) - 1) + [True]
    assert [c.finish_reason for c in stream] == [""] * (len(stream) - 1) + ["stop"]
    assert [c.num_output_tokens for c in stream[:3]] == [1, 2, 3]
    assert {c.num_input_tokens for c in stream} == {len(tokenizer.encode(prompt))}
    (once,) = results["once"]
    assert (once.text, once.finish_reason, once.final) == (expected, "stop", True)
    assert once.num_output_tokens == stream[-1].num_output_tokens == len(ids)
    assert results["length"][-1].finish_reason == "length"
    assert results["length"][-1].num_output_tokens == 3
    assert "".join(c.text for c in results["stop"]) == expected.split("User:")[0]
    assert results["stop"][-1].finish_reason == "stop_words"
    (with_prompt,) = results["prompt"]
    assert with_prompt.text.endswith(expected)
    assert "assistant" in with_prompt.text
    assert [c.text for c in results["cancel"]] == [c.text for c in stream[:3]]
    (stopped,) = list(standin_repository.stop_dir.iterdir())
    assert int(stopped.read_text()) < len(ids), "the client's cancel stopped tensorrt_llm"
    assert "".join(results["postprocessing"]) == expected
    assert "".join(c.text for c in results["guided"]) == 'json_schema:{"type": "object"}'
    assert (
        "[FIELD_VIOLATION] guided_decoding_guide_type: unknown guide type 'yaml'"
        in (results["bad_guide"])
    )


NOT_DECOUPLED_STANDIN = """
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    # tensorrt_llm not decoupled: all tokens at once, 25 ms per token; several instances stand
    # for the executor's own concurrency.
    def execute(self, requests):
        responses = []
        for request in requests:
            n = int(
                pb_utils.get_input_tensor_by_name(request, "request_output_len")
                .as_numpy()
                .reshape(-1)[0]
            )
            time.sleep(0.025 * n)
            ids = np.full((1, 1, n), 28, dtype=np.int32)
            length = np.array([[n]], dtype=np.int32)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("output_ids", ids),
                        pb_utils.Tensor("sequence_length", length),
                    ]
                )
            )
        return responses
"""


@pytest.mark.system
def test_the_gpu_ensemble_not_decoupled_serves_requests_concurrently(tmp_path: Path) -> None:
    """decoupled_mode=false: the Python backend runs a non-decoupled `execute` to its end
    before the next, so without the ensemble's dynamic batcher 6 concurrent requests took 6x
    one request (3.2 s against 0.54 s on Triton 2.51); with it, the ones queued meanwhile run
    together (1.1 s)."""
    triton = pytest.importorskip("tests.support.triton")
    import tritonclient.grpc.aio as aioclient

    from tests.support.smollm2 import smollm2_dir

    repo = tmp_path / "repo"
    fill_template.fill(
        "inflight_batcher_llm",
        repo,
        {"tokenizer_dir": str(smollm2_dir()), "decoupled_mode": "false"},
    )
    config = repo / "tensorrt_llm" / "config.pbtxt"
    text = config.read_text().replace('backend: "tensorrtllm"', 'backend: "python"')
    config.write_text(text.replace("count: 1,", "count: 8,"))
    (repo / "tensorrt_llm" / "1" / "model.py").write_text(NOT_DECOUPLED_STANDIN)
    prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    async def run(address: str) -> tuple[float, float]:
        client = aioclient.InferenceServerClient(address)

        async def one() -> float:
            started = time.monotonic()
            await client.infer("ensemble", triton.generation_inputs(prompt, 20, stream=False))
            return time.monotonic() - started

        try:
            single = min([await one() for _ in range(2)])
            started = time.monotonic()
            await asyncio.gather(*(one() for _ in range(6)))
            return single, time.monotonic() - started
        finally:
            await client.close()

    with triton.triton_server(tmp_path, None, repository=repo) as server:
        single, six = asyncio.run(run(server.grpc_address))

    # Serialised, six would take 6x one; concurrent, about 1x plus the Python steps' share of
    # 2 CPUs (3.8x seen once on a busy CI machine).
    assert six < 5 * single, f"6 requests took {six:.2f} s, one {single:.2f} s: serialised"


# --------------------------------------------------------------------------------------------
# A real engine on a GPU host
# --------------------------------------------------------------------------------------------


def _tensorrtllm_backend() -> Path | None:
    for root in (os.environ.get("TRITON_BACKENDS_DIR"), "/opt/tritonserver/backends"):
        if root and (Path(root) / "tensorrtllm").is_dir():
            return Path(root)
    return None


@pytest.mark.gpu
def test_a_built_engine_serves_the_facade(tmp_path: Path) -> None:
    """scripts/build-engine on SmolLM2-135M (a Llama), scripts/triton-templates, tritonserver
    with the tensorrtllm backend, one streamed request through the ensemble."""
    for tool in ("nvidia-smi", "trtllm-build", "tritonserver"):
        if shutil.which(tool) is None:
            pytest.skip(
                f"{tool} not found (run in a tritonserver:<yy.mm>-trtllm-python-py3 container)"
            )
    if _tensorrtllm_backend() is None:
        pytest.skip("no tensorrtllm Triton backend")
    from tests.support.smollm2 import smollm2_dir

    hf_model = smollm2_dir()
    from services.inference.adapters.tritonserver import pick_free_ports
    from tests.support.triton import generation_inputs, stream_generation

    out = tmp_path / "smollm2"
    build = run_script(
        BUILD_ENGINE, "--hf-model", hf_model, "--out", out, "--dtype", "float16",
        "--max-batch-size", "4", "--max-input-len", "256", "--max-seq-len", "512",
        "--max-num-tokens", "1024",
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-4000:]
    fill = next(
        shlex.split(line[2:]) for line in build.stdout.splitlines() if "triton-templates" in line
    )
    assert run_script(*fill).returncode == 0
    grpc_port, http_port, metrics_port = pick_free_ports(3)
    log = (tmp_path / "tritonserver.log").open("w")
    server = subprocess.Popen(
        ["tritonserver", f"--model-repository={out / 'triton_repo'}", f"--grpc-port={grpc_port}",
         f"--http-port={http_port}", f"--metrics-port={metrics_port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as aioclient

        probe = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        deadline = time.monotonic() + 600
        while not _ready(probe):
            assert server.poll() is None, (tmp_path / "tritonserver.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "tritonserver not ready in 10 minutes"
            time.sleep(2)

        async def one() -> list[Any]:
            client = aioclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            try:
                inputs = generation_inputs("<|im_start|>user\nHi<|im_end|>\n", 16)
                return list(await stream_generation(client, inputs, model="ensemble"))
            finally:
                await client.close()

        chunks = asyncio.run(one())
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()

    assert chunks[-1].final
    assert chunks[-1].finish_reason in {"stop", "length"}
    assert 0 < chunks[-1].num_output_tokens <= 16
    assert all(not c.final for c in chunks[:-1])


def _ready(client: Any) -> bool:
    try:
        return bool(client.is_server_ready())
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
