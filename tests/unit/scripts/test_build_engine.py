"""scripts/build-engine checked against the CLI of the pinned TensorRT-LLM release, without a GPU;
and scripts/lib/xgrammar_tokenizer_info.py on real tokenizers.

The pinned release is TensorRT-LLM v1.0.0 (commit ae8270b713446948246f16fadf4e2a32e35d0f62) in
nvcr.io/nvidia/tritonserver:25.09-trtllm-python-py3. What build-engine relies on of its two
commands, `trtllm-build` and `examples/quantization/quantize.py`, is written down below as data,
each fact with its source. `build-engine --dry-run` prints every command it would run; the tests
parse them and check that each flag passed is a flag of the release with a legal value (where
the fact is verified), that the required flags are there, that the KV cache is `--kv_cache_type
paged` and never the deprecated `--paged_kv_cache`, and that the printed scripts/triton-templates
call fills a working repository. The GPU checks that run before a real build are exercised with
a stand-in `nvidia-smi` (the one thing that cannot run here).

No file at ae8270b7 itself could be read here: the TensorRT-LLM repository is too large to fetch,
its wheels are not on PyPI (only a placeholder sdist), and the code index holds other commits of
its files. So a fact counts as verified when every stored copy of the file agrees on it (for
build.py and plugin.py these include a copy older and one newer than v1.0.0; for quantize.py,
three copies from 2024 and 2025 whose order against v1.0.0 is unknown). Otherwise it is recorded
with `verified=False` and the reason, and only what is verified of it is checked.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from scripts.lib import xgrammar_tokenizer_info
from scripts.lib.xgrammar_tokenizer_info import TokenizerInfoError

ROOT = Path(__file__).resolve().parents[3]
BUILD_ENGINE = ROOT / "scripts" / "build-engine"
TOKENIZER_INFO_SCRIPT = ROOT / "scripts" / "lib" / "xgrammar_tokenizer_info.py"

PINNED = "TensorRT-LLM v1.0.0 (ae8270b713446948246f16fadf4e2a32e35d0f62)"

# --------------------------------------------------------------------------------------------
# The pinned release's command-line facts
# --------------------------------------------------------------------------------------------

# Sources. TL = github.com/NVIDIA/TensorRT-LLM, BE = github.com/triton-inference-server/
# tensorrtllm_backend. "stored" = a copy held by the code index at the commit named; the
# commits are not dated, their order follows from their content.
BUILD_PY = (
    "TL tensorrt_llm/commands/build.py, stored @008b2b8d (older: still has --auto_parallel) "
    "and a later stored copy ('TensorRT LLM' spelling, KVCacheType.from_string); parse_arguments()"
)
PLUGIN_PY = (
    "TL tensorrt_llm/plugin/plugin.py, stored dataclass form (PLUGIN_DTYPE_OPTIONS_MAP, "
    "fuse_fp4_quant) and pydantic form @c20322ff (Literal types); cli_plugin_args and "
    "add_plugin_argument(): str plugins take their dtype options with None shown as 'disable', "
    "bool features take enable/disable"
)
QUANTIZE_PY = (
    "TL examples/quantization/quantize.py, stored @c8c6df08 and @059c97c1 (both 2025: nvfp4, "
    "--export_format in the latter, fp8_pc_pt in the former) and a 2024 copy; argparse in "
    "__main__"
)
BE_DOCS = (
    "BE tag v1.0.0 (efb8a49, submodule tensorrt_llm @ae8270b7): docs/guided_decoding.md, "
    "docs/llama.md and README.md build with `trtllm-build ... --kv_cache_type paged`"
)


@dataclass(frozen=True)
class Flag:
    """One option of an upstream command: its legal values (a set of choices, or the argparse
    type: int or str) and where that is known from."""

    values: frozenset[str] | type[int] | type[str]
    source: str
    verified: bool = True
    note: str = ""

    def legal(self, value: str) -> bool:
        if isinstance(self.values, frozenset):
            return value in self.values
        if self.values is int:
            try:
                int(value)
            except ValueError:
                return False
            return True
        return bool(value)


@dataclass(frozen=True)
class Cli:
    """The options of one upstream command that build-engine may pass."""

    name: str
    flags: Mapping[str, Flag]
    required: Mapping[str, str]
    """flag -> why build-engine must always pass it."""
    deprecated: Mapping[str, str] = field(default_factory=dict)
    """flag -> what replaces it (a deprecated flag must never be passed)."""


ENABLE_DISABLE = frozenset({"enable", "disable"})

TRTLLM_BUILD = Cli(
    name="trtllm-build",
    flags={
        "--checkpoint_dir": Flag(str, BUILD_PY),
        "--output_dir": Flag(str, BUILD_PY, note="default engine_outputs"),
        "--max_batch_size": Flag(int, BUILD_PY),
        "--max_input_len": Flag(int, BUILD_PY),
        "--max_seq_len": Flag(int, BUILD_PY, note="alias --max_decoder_seq_len"),
        "--max_num_tokens": Flag(int, BUILD_PY),
        "--kv_cache_type": Flag(
            frozenset({"continuous", "paged", "disabled"}),
            f"{BUILD_PY}: type=enum_type(KVCacheType); {BE_DOCS}",
            note="the older copy upper-cases the value into the enum (case-insensitive)",
        ),
        "--gemm_plugin": Flag(
            frozenset({"auto", "float16", "float32", "bfloat16", "int32", "fp8", "nvfp4"})
            | {"disable"},
            PLUGIN_PY,
            note="auto: the checkpoint's dtype",
        ),
        "--gpt_attention_plugin": Flag(
            frozenset({"auto", "float16", "float32", "bfloat16", "int32", "disable"}), PLUGIN_PY
        ),
        "--remove_input_padding": Flag(ENABLE_DISABLE, PLUGIN_PY, note="default enable"),
        "--use_paged_context_fmha": Flag(
            ENABLE_DISABLE,
            PLUGIN_PY,
            note="default enable in both copies; help: 'Allow advanced features like KV cache "
            "reuse and chunked context'",
        ),
        "--tokens_per_block": Flag(
            int,
            PLUGIN_PY,
            note="default 32 in both copies (the legacy kv-cache-reuse doc says 128); a power "
            "of two greater than 1 (TL docs features/kvcache.md, seen at 1.3/1.4 only)",
        ),
        "--paged_kv_cache": Flag(
            str,
            f"{BUILD_PY}: help 'Deprecated. ... equivalent to --kv_cache_type paged'; main() "
            "warns 'Option --paged_kv_cache is deprecated'",
        ),
    },
    required={
        "--checkpoint_dir": "the checkpoint written by the convert or quantize step",
        "--output_dir": "else engine_outputs/ in the working directory",
        "--kv_cache_type": "in-flight batching needs the paged KV cache, stated, not defaulted",
        "--use_paged_context_fmha": "KV-cache reuse and chunked context need it, stated",
    },
    deprecated={"--paged_kv_cache": "--kv_cache_type paged"},
)

QFORMATS = frozenset(
    {"nvfp4", "fp8", "int8_sq", "int4_awq", "w4a8_awq", "int8_wo", "int4_wo", "full_prec"}
)
QUANTIZE = Cli(
    name="quantize.py",
    flags={
        "--model_dir": Flag(str, QUANTIZE_PY),
        "--output_dir": Flag(str, QUANTIZE_PY, note="default exported_model"),
        "--dtype": Flag(
            frozenset({"auto", "float16", "bfloat16", "float32"}),
            QUANTIZE_PY,
            note="choices in both 2025 copies; the 2024 copy took any string",
        ),
        "--qformat": Flag(
            QFORMATS,
            QUANTIZE_PY,
            note="the choices common to both 2025 copies (@c8c6df08 also has fp8_pc_pt)",
        ),
        "--kv_cache_dtype": Flag(frozenset({"int8", "fp8"}), QUANTIZE_PY, note="default None"),
        "--calib_size": Flag(int, QUANTIZE_PY, note="default 512; AWQ caps it at 32"),
        "--calib_dataset": Flag(str, QUANTIZE_PY, note="default cnn_dailymail, or a local dir"),
        "--tp_size": Flag(int, QUANTIZE_PY),
        "--pp_size": Flag(int, QUANTIZE_PY),
    },
    required={
        "--model_dir": "else 'One of source checkpoint (model_dir, nemo_ckpt_path) must be "
        "specified' (ValueError)",
        "--output_dir": "else exported_model/ in the working directory",
        "--qformat": "default full_prec",
        "--tp_size": "the checkpoint is split per rank: its mapping is what trtllm-build builds",
        "--pp_size": "as --tp_size",
    },
)


@dataclass(frozen=True)
class Fact:
    """A fact about the release or its container that is not a flag."""

    value: str
    source: str
    verified: bool
    note: str = ""


QUANTIZE_SCRIPT_IN_CONTAINER = Fact(
    "/app/tensorrt_llm/examples/quantization/quantize.py",
    "TL docker/Dockerfile.multi, stored @00f74add (base 25.08): stage release has WORKDIR "
    "/app/tensorrt_llm and COPY examples examples, stage tritonrelease is FROM release; BE "
    "v1.0.0 README runs `cd /app/tensorrt_llm/examples/gpt` in the Triton container",
    verified=False,
    note="the 25.09 image itself was not inspected: build-engine's --quantize-script default, "
    "checked to exist before a real build",
)

FP8_MIN_COMPUTE_CAPABILITY = Fact(
    "8.9",
    "TL docs reference/support-matrix (0.18.2): Hopper SM90 and Ada SM89 have FP8, Ampere "
    "SM80/86 only INT8/INT4; TensorRT Model Optimizer support matrix: FP8 'Ada and later'",
    verified=False,
    note="no 1.0.0 support matrix was found; FP8 needs FP8 tensor cores in every release",
)


# --------------------------------------------------------------------------------------------
# Running build-engine and reading what it prints
# --------------------------------------------------------------------------------------------


def run(
    *args: str | Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=None if env is None else dict(env),
        cwd=ROOT,
    )


def hf_checkpoint(tmp_path: Path, model_type: str = "llama") -> Path:
    checkpoint = tmp_path / "hf model"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
    return checkpoint


@dataclass
class Printed:
    """The commands a dry run printed, by role."""

    commands: list[list[str]]

    def one(self, role: str) -> list[str]:
        found = [command for command in self.commands if self.role(command) == role]
        assert len(found) == 1, f"{role}: {found}"
        return found[0]

    def has(self, role: str) -> bool:
        return any(self.role(command) == role for command in self.commands)

    @staticmethod
    def role(command: Sequence[str]) -> str:
        name = Path(command[0]).name
        script = Path(command[1]).name if len(command) > 1 else ""
        if script in {"quantize.py", "xgrammar_tokenizer_info.py", "convert_checkpoint.py"}:
            return script
        if command[1:2] == ["-"]:
            return "convert-api"
        return name


def printed(stdout: str) -> Printed:
    return Printed([shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")])


def options(argv: Sequence[str]) -> dict[str, str]:
    """The `--flag value` pairs of a command line (every flag build-engine passes upstream
    takes a value)."""
    pairs: dict[str, str] = {}
    tokens = iter(argv)
    for token in tokens:
        assert token.startswith("--"), f"not a flag: {token!r} in {argv}"
        value = next(tokens, None)
        assert value is not None, f"{token} has no value"
        assert not value.startswith("--"), f"{token} has no value"
        assert token not in pairs, f"{token} passed twice"
        pairs[token] = value
    return pairs


def check_against(cli: Cli, argv: Sequence[str]) -> dict[str, str]:
    """Assert that `argv` (the arguments after the command) uses only known flags of the
    pinned release with legal values, none deprecated, all required ones; return them."""
    used = options(argv)
    for flag, value in used.items():
        assert flag in cli.flags, f"{cli.name} of {PINNED} has no {flag}"
        assert flag not in cli.deprecated, f"{flag} is deprecated: use {cli.deprecated[flag]}"
        fact = cli.flags[flag]
        if fact.verified:
            assert fact.legal(value), f"{cli.name} {flag} {value!r}: legal is {fact.values}"
    missing = sorted(set(cli.required) - set(used))
    assert not missing, f"{cli.name} needs {missing}: {[cli.required[f] for f in missing]}"
    return used


def parse_config(path: Path) -> Any:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(encoding="utf-8"), config)
    return config


def test_the_facts_name_their_sources() -> None:
    for cli in (TRTLLM_BUILD, QUANTIZE):
        for flag, fact in cli.flags.items():
            assert fact.source, f"{cli.name} {flag}"
        assert set(cli.required) <= set(cli.flags)
        assert set(cli.deprecated) <= set(cli.flags)
    for other in (QUANTIZE_SCRIPT_IN_CONTAINER, FP8_MIN_COMPUTE_CAPABILITY):
        assert other.source
        assert other.verified or other.note, "an unverified fact says why"


# --------------------------------------------------------------------------------------------
# Dry runs: every quantization, with tensor and pipeline parallelism
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    qformat: str | None
    """quantize.py's --qformat, or None when the checkpoint is converted without it."""
    kv_cache_dtype: str | None = None
    tp: int = 1
    pp: int = 1
    max_batch_size: int = 64


CASES = {
    "none": Case(("--max-batch-size", "8"), None, max_batch_size=8),
    "fp8": Case(("--quantization", "fp8"), "fp8"),
    "int8-weight-only": Case(("--quantization", "int8-weight-only"), "int8_wo"),
    "int4-awq": Case(("--quantization", "int4-awq"), "int4_awq"),
    "none-tp2-pp2": Case(("--tp", "2", "--pp", "2"), None, tp=2, pp=2),
    "kv-fp8-only": Case(("--kv-cache-dtype", "fp8"), "full_prec", "fp8"),
    "fp8-kv-fp8-tp2-pp2": Case(
        ("--quantization", "fp8", "--kv-cache-dtype", "fp8", "--tp", "2", "--pp", "2"),
        "fp8",
        "fp8",
        tp=2,
        pp=2,
    ),
    "int8-weight-only-tp2": Case(
        ("--quantization", "int8-weight-only", "--tp", "2"), "int8_wo", tp=2
    ),
    "int4-awq-kv-int8-tp4": Case(
        ("--quantization", "int4-awq", "--kv-cache-dtype", "int8", "--tp", "4", "--pp", "1"),
        "int4_awq",
        "int8",
        tp=4,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_dry_run_uses_only_the_pinned_releases_flags(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    checkpoint = hf_checkpoint(tmp_path)
    out = tmp_path / "out"

    done = run(BUILD_ENGINE, "--hf-model", checkpoint, "--out", out, "--dry-run", *case.args)

    assert done.returncode == 0, done.stderr
    assert not out.exists(), "a dry run writes nothing"
    assert "--paged_kv_cache" not in done.stdout
    commands = printed(done.stdout)
    trt_checkpoint = str(out / "checkpoint")

    if case.qformat is None:
        assert not commands.has("quantize.py")
        assert commands.one("convert-api")[1:] == [
            "-",
            str(checkpoint),
            trt_checkpoint,
            "bfloat16",
            str(case.tp),
            str(case.pp),
            "<<PY",  # the conversion program follows, up to PY
        ]
        assert "LLaMAForCausalLM.from_hugging_face" in done.stdout
    else:
        assert not commands.has("convert-api")
        quantize = commands.one("quantize.py")
        assert quantize[1] == QUANTIZE_SCRIPT_IN_CONTAINER.value
        used = check_against(QUANTIZE, quantize[2:])
        assert used["--model_dir"] == str(checkpoint)
        assert used["--output_dir"] == trt_checkpoint
        assert used["--qformat"] == case.qformat
        assert used.get("--kv_cache_dtype") == case.kv_cache_dtype
        assert (used["--tp_size"], used["--pp_size"]) == (str(case.tp), str(case.pp))
        assert used["--dtype"] == "bfloat16"

    build = commands.one("trtllm-build")
    used = check_against(TRTLLM_BUILD, build[1:])
    assert used["--checkpoint_dir"] == trt_checkpoint
    assert used["--output_dir"] == str(out / "engine")
    assert used["--kv_cache_type"] == "paged"
    assert used["--use_paged_context_fmha"] == "enable"
    assert (used["--max_batch_size"], used["--max_input_len"]) == (str(case.max_batch_size), "2048")
    assert (used["--max_seq_len"], used["--max_num_tokens"]) == ("4096", "8192")
    assert "--tokens_per_block" not in used, "the release's default unless asked"

    info_path = out / "engine" / "xgrammar_tokenizer_info.json"
    describe = commands.one("xgrammar_tokenizer_info.py")
    assert Path(describe[1]) == TOKENIZER_INFO_SCRIPT
    described = xgrammar_tokenizer_info.parser().parse_args(describe[2:])
    assert (described.tokenizer_dir, described.out) == (checkpoint, info_path)
    assert commands.commands.index(describe) > commands.commands.index(build), "a last step"

    fill = commands.one("triton-templates")
    filled = run(*fill)
    assert filled.returncode == 0, filled.stderr
    trtllm = parse_config(out / "triton_repo" / "tensorrt_llm" / "config.pbtxt")
    assert trtllm.parameters["gpt_model_path"].string_value == str(out / "engine")
    assert trtllm.parameters["xgrammar_tokenizer_info_path"].string_value == str(info_path)
    assert trtllm.parameters["guided_decoding_backend"].string_value == "xgrammar"
    assert trtllm.parameters["tokenizer_dir"].string_value == str(checkpoint)
    assert trtllm.max_batch_size == case.max_batch_size
    assert commands.has("tritonserver") == (case.tp * case.pp == 1)


def test_dry_run_passes_the_calibration_and_block_options(tmp_path: Path) -> None:
    calibration = tmp_path / "calib data"
    done = run(
        BUILD_ENGINE, "--hf-model", hf_checkpoint(tmp_path), "--out", tmp_path / "out",
        "--quantization", "int4-awq", "--calib-size", "64", "--calib-dataset", calibration,
        "--quantize-script", "/opt/trtllm/examples/quantization/quantize.py",
        "--tokens-per-block", "64", "--max-batch-size", "8", "--dry-run",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    commands = printed(done.stdout)
    quantize = commands.one("quantize.py")
    assert quantize[1] == "/opt/trtllm/examples/quantization/quantize.py"
    used = check_against(QUANTIZE, quantize[2:])
    assert (used["--calib_size"], used["--calib_dataset"]) == ("64", str(calibration))
    built = check_against(TRTLLM_BUILD, commands.one("trtllm-build")[1:])
    assert (built["--tokens_per_block"], built["--max_batch_size"]) == ("64", "8")


def test_build_engine_help_documents_the_options() -> None:
    done = run(BUILD_ENGINE, "--help")

    assert done.returncode == 0
    for text in (
        "--quantization Q",
        "--kv-cache-dtype T",
        "--quantize-script PY",
        "--tokens-per-block N",
        "--kv_cache_type paged",
        "--paged_kv_cache flag is deprecated",
        "xgrammar_tokenizer_info.json",
        f"compute capability {FP8_MIN_COMPUTE_CAPABILITY.value}+",
        QUANTIZE_SCRIPT_IN_CONTAINER.value,
    ):
        assert text in done.stdout, text


# --------------------------------------------------------------------------------------------
# What build-engine refuses
# --------------------------------------------------------------------------------------------

REFUSED = {
    "unknown quantization": (
        ("--quantization", "int4"),
        "--quantization must be none, fp8, int8-weight-only or int4-awq",
    ),
    "unknown kv cache dtype": (
        ("--kv-cache-dtype", "fp16"),
        "--kv-cache-dtype must be fp8 or int8",
    ),
    "convert script with quantization": (
        ("--quantization", "fp8", "--convert-script", "/x/convert_checkpoint.py"),
        "--convert-script converts without quantizing",
    ),
    "calibration without quantization": (
        ("--calib-dataset", "/data"),
        "need --quantization or --kv-cache-dtype",
    ),
    "block size not a power of two": (
        ("--tokens-per-block", "48"),
        "--tokens-per-block must be a power of two greater than 1",
    ),
    "block of one token": (("--tokens-per-block", "1"), "power of two greater than 1"),
    "no calibration samples": (("--calib-size", "0"), "--calib-size must be a positive integer"),
    "unknown dtype": (("--dtype", "fp8"), "--dtype must be bfloat16, float16 or float32"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_build_engine_refuses(name: str, tmp_path: Path) -> None:
    args, message = REFUSED[name]

    done = run(
        BUILD_ENGINE, "--hf-model", hf_checkpoint(tmp_path), "--out", tmp_path / "o", "--dry-run",
        *args,
    )  # fmt: skip

    assert done.returncode == 1
    assert message in done.stderr
    assert not done.stdout


def test_other_families_need_a_convert_script_unless_quantized(tmp_path: Path) -> None:
    """(Also tests/contract/test_triton_configs.py::
    test_build_engine_needs_a_convert_script_for_other_families.)"""
    checkpoint = hf_checkpoint(tmp_path, model_type="qwen2")
    base = (BUILD_ENGINE, "--hf-model", checkpoint, "--out", tmp_path / "o", "--dry-run")

    refused = run(*base)
    converted = run(
        *base, "--convert-script", "/trtllm/examples/models/core/qwen/convert_checkpoint.py",
        "--tp", "2",
    )  # fmt: skip
    quantized = run(*base, "--quantization", "int8-weight-only")

    assert refused.returncode == 1
    assert "model_type 'qwen2'" in refused.stderr
    assert converted.returncode == 0, converted.stderr
    convert = printed(converted.stdout).one("convert_checkpoint.py")
    assert options(convert[2:]) == {
        "--model_dir": str(checkpoint),
        "--output_dir": str(tmp_path / "o" / "checkpoint"),
        "--dtype": "bfloat16",
        "--tp_size": "2",
        "--pp_size": "1",
    }
    assert "convert_checkpoint.py --model_dir" in converted.stdout
    assert "--tp_size 2 --pp_size 1" in converted.stdout
    assert quantized.returncode == 0, quantized.stderr
    assert printed(quantized.stdout).has("quantize.py"), "ModelOpt exports the family itself"


# --------------------------------------------------------------------------------------------
# Checks before a real build, with a stand-in nvidia-smi (this machine has no GPU)
# --------------------------------------------------------------------------------------------

SYSTEM_PATH = "/usr/bin:/bin"
"""PATH for a run that must not find TensorRT-LLM or a real nvidia-smi."""


def fake_nvidia_smi(bin_dir: Path, compute_caps: Sequence[str]) -> None:
    """An `nvidia-smi` that lists one GPU per compute capability given."""
    bin_dir.mkdir(exist_ok=True)
    listing = "".join(
        f"echo 'GPU {i}: Stand-in (UUID: GPU-{i})'\n" for i in range(len(compute_caps))
    )
    caps = "".join(f"echo '{cap}'\n" for cap in compute_caps)
    script = bin_dir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f"  *compute_cap*)\n{caps}    ;;\n"
        f"  -L)\n{listing}    ;;\n"
        "  *) exit 2 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)


def without_tensorrt_llm(bin_dir: Path | None) -> dict[str, str]:
    """The environment of a real (not dry) run that must stop at build-engine's checks: PATH is
    `bin_dir` (a stand-in nvidia-smi), if given, and the system directories."""
    tools = ("trtllm-build",) if bin_dir else ("trtllm-build", "nvidia-smi")
    for tool in tools:
        if shutil.which(tool, path=SYSTEM_PATH) is not None:
            pytest.skip(f"{tool} is in {SYSTEM_PATH}: the run would not stop where expected")
    path = SYSTEM_PATH if bin_dir is None else f"{bin_dir}:{SYSTEM_PATH}"
    return {**os.environ, "PATH": path}


MACHINES = {
    "fp8 on Ampere": (
        ("--quantization", "fp8"),
        ["8.0"],
        f"needs compute capability {FP8_MIN_COMPUTE_CAPABILITY.value}+",
    ),
    "fp8 kv cache on Ampere": (("--kv-cache-dtype", "fp8"), ["8.6"], "this GPU has 8.6"),
    "fp8 on Hopper and Ampere": (
        ("--quantization", "fp8", "--tp", "2"),
        ["9.0", "8.0"],
        "this GPU has 8.0",
    ),
    "fp8 on Ada": (("--quantization", "fp8"), ["8.9"], "trtllm-build not found"),
    "fp8 on Hopper": (
        ("--quantization", "fp8", "--kv-cache-dtype", "fp8"),
        ["9.0"],
        "trtllm-build",
    ),
    "int4-awq on Ampere": (("--quantization", "int4-awq"), ["8.0"], "trtllm-build not found"),
    "int8 kv cache on Ampere": (("--kv-cache-dtype", "int8"), ["8.0"], "trtllm-build not found"),
    "fewer GPUs than ranks": (("--tp", "2"), ["9.0"], "--tp 2 x --pp 1 needs 2 GPUs"),
}


@pytest.mark.parametrize("name", list(MACHINES))
def test_build_engine_checks_the_gpu_before_anything_runs(name: str, tmp_path: Path) -> None:
    args, compute_caps, message = MACHINES[name]
    fake_nvidia_smi(tmp_path / "bin", compute_caps)
    out = tmp_path / "out"

    done = run(
        BUILD_ENGINE, "--hf-model", hf_checkpoint(tmp_path), "--out", out, *args,
        env=without_tensorrt_llm(tmp_path / "bin"),
    )  # fmt: skip

    assert done.returncode == 1
    assert message in done.stderr
    assert not done.stdout, "no step printed, none run"
    assert not out.exists()


def test_build_engine_says_why_it_cannot_build_without_a_gpu(tmp_path: Path) -> None:
    """(Also tests/contract/test_triton_configs.py::
    test_build_engine_says_why_it_cannot_build_without_a_gpu.)"""
    done = run(
        BUILD_ENGINE, "--hf-model", hf_checkpoint(tmp_path), "--out", tmp_path / "o",
        env=without_tensorrt_llm(None),
    )  # fmt: skip

    assert done.returncode == 1
    assert "nvidia-smi not found" in done.stderr


# --------------------------------------------------------------------------------------------
# scripts/lib/xgrammar_tokenizer_info.py
# --------------------------------------------------------------------------------------------


def test_encoded_vocab_puts_every_token_at_its_id() -> None:
    assert xgrammar_tokenizer_info.encoded_vocab({"b": 1, "a": 0, "d": 3}) == ["a", "b", "", "d"]
    with pytest.raises(TokenizerInfoError, match="empty vocabulary"):
        xgrammar_tokenizer_info.encoded_vocab({})
    with pytest.raises(TokenizerInfoError, match="negative id"):
        xgrammar_tokenizer_info.encoded_vocab({"a": 0, "b": -1})


@pytest.mark.parametrize(
    ("generation_config", "ids"),
    [
        (None, []),
        ({}, []),
        ({"eos_token_id": None}, []),
        ({"eos_token_id": 7}, [7]),
        ({"eos_token_id": [128001, 128008, 128009]}, [128001, 128008, 128009]),
    ],
)
def test_generation_eos_ids(
    generation_config: dict[str, Any] | None, ids: list[int], tmp_path: Path
) -> None:
    if generation_config is not None:
        (tmp_path / "generation_config.json").write_text(json.dumps(generation_config))

    assert xgrammar_tokenizer_info.generation_eos_ids(tmp_path) == ids


def small_tokenizer_dir(tmp_path: Path, eos: str | None, generation_eos: Any) -> Path:
    """A byte-level BPE tokenizer (trained here) saved as a Hugging Face directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<s>", "</s>", "<|eot|>"],
    )
    tok.train_from_iterator(["hello world, two spaces and a next line"] * 20, trainer)
    directory = tmp_path / "tokenizer"
    fast: Any = PreTrainedTokenizerFast  # transformers' constructor is untyped
    fast(tokenizer_object=tok, eos_token=eos).save_pretrained(directory)
    if generation_eos is not None:
        (directory / "generation_config.json").write_text(
            json.dumps({"eos_token_id": generation_eos})
        )
    return directory


def test_stop_tokens_are_the_eos_then_the_generation_configs(tmp_path: Path) -> None:
    directory = small_tokenizer_dir(tmp_path, eos="</s>", generation_eos=[2, 1])
    out = tmp_path / "engine" / "xgrammar_tokenizer_info.json"

    assert xgrammar_tokenizer_info.main(["--tokenizer-dir", str(directory), "--out", str(out)]) == 0

    info = json.loads(out.read_text())
    assert info["stop_token_ids"] == [1, 2], "</s> first, no id twice"
    assert info["encoded_vocab"][:3] == ["<s>", "</s>", "<|eot|>"]
    assert out.stat().st_mode & 0o777 == 0o644, "readable by a tritonserver of another user"
    assert [p.name for p in out.parent.iterdir()] == [out.name], "no temporary file left"


def test_a_tokenizer_without_any_stop_token_is_refused(tmp_path: Path) -> None:
    directory = small_tokenizer_dir(tmp_path, eos=None, generation_eos=None)
    out = tmp_path / "info.json"

    with pytest.raises(TokenizerInfoError, match="no stop token"):
        xgrammar_tokenizer_info.write(directory, out)
    assert not out.exists()
    assert xgrammar_tokenizer_info.main(["--tokenizer-dir", str(directory), "--out", str(out)]) == 1


def test_the_cli_reports_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = xgrammar_tokenizer_info.main(
        ["--tokenizer-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "info.json")]
    )

    assert code == 1
    assert "is not a directory" in capsys.readouterr().err


@pytest.fixture(scope="module")
def smollm2_info(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The description of the prepared SmolLM2 tokenizer, written by the file run as a script,
    as build-engine runs it."""
    from tests.support.smollm2 import smollm2_dir

    model = smollm2_dir()
    out = tmp_path_factory.mktemp("smollm2-engine") / "xgrammar_tokenizer_info.json"
    done = run(
        sys.executable,
        TOKENIZER_INFO_SCRIPT,
        "--tokenizer-dir",
        model,
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr
    return model, json.loads(out.read_text(encoding="utf-8"))


def test_smollm2_description_matches_the_tokenizer(
    smollm2_info: tuple[Path, dict[str, Any]],
) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    model, info = smollm2_info
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    vocab = info["encoded_vocab"]
    config = json.loads((model / "config.json").read_text())

    assert sorted(info) == ["encoded_vocab", "stop_token_ids", "tokenizer_str"]
    assert len(vocab) == len(tokenizer.get_vocab()) == config["vocab_size"] == 49152
    assert all(vocab[i] == token for token, i in tokenizer.get_vocab().items())
    assert vocab[tokenizer.eos_token_id] == "<|im_end|>"
    assert info["stop_token_ids"] == [tokenizer.eos_token_id] == [2]
    text = 'User: {"name": "café", "n": 12}\n'
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert (
        Tokenizer.from_str(info["tokenizer_str"]).encode(text, add_special_tokens=False).ids == ids
    )
    assert [vocab[i] for i in ids] == tokenizer.convert_ids_to_tokens(ids)


def test_xgrammar_accepts_the_smollm2_description(
    smollm2_info: tuple[Path, dict[str, Any]],
) -> None:
    """What the C++ backend does with the file, in xgrammar's Python API: a TokenizerInfo from
    the vocabulary, and a JSON grammar that accepts a JSON text's tokens, then a stop token."""
    xgr = pytest.importorskip("xgrammar")
    from transformers import AutoTokenizer

    model, info = smollm2_info
    decoder = json.loads(info["tokenizer_str"])["decoder"]["type"]
    assert decoder == "ByteLevel"
    tokenizer_info = xgr.TokenizerInfo(
        info["encoded_vocab"],
        vocab_type=xgr.VocabType.BYTE_LEVEL,
        stop_token_ids=info["stop_token_ids"],
    )
    tokenizer = AutoTokenizer.from_pretrained(str(model))

    assert tokenizer_info.vocab_size == len(info["encoded_vocab"])
    assert list(tokenizer_info.stop_token_ids) == info["stop_token_ids"]
    assert (
        tokenizer_info.decoded_vocab == xgr.TokenizerInfo.from_huggingface(tokenizer).decoded_vocab
    )
    matcher = xgr.GrammarMatcher(xgr.GrammarCompiler(tokenizer_info).compile_builtin_json_grammar())
    for token in tokenizer.encode('{"a": [1, "b"]}', add_special_tokens=False):
        assert matcher.accept_token(token)
    assert not matcher.is_terminated()
    assert matcher.accept_token(info["stop_token_ids"][0])
    assert matcher.is_terminated()
