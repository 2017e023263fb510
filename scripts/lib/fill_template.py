#!/usr/bin/env python3
"""Fill a TensorRT-LLM Triton model repository template (triton_models/gpu/<variant>/).

Copies the variant's directory to the output directory and replaces every `${key}` in its
template files (`*.pbtxt`, `*.yaml`, `*.yml`) with the key's value. Stricter than TensorRT-LLM's
`fill_template.py` (`string.Template.safe_substitute`, which leaves unknown placeholders in
place):

- a given key that appears in no template file of the variant is an error (a typo would
  otherwise be silently ignored);
- a placeholder left without a value after substitution is an error, listed with file and line;
- a value containing a double quote, a backslash or a line break is refused (values are pasted
  into protobuf text and YAML unquoted, or inside double quotes);
- every filled `config.pbtxt` must parse as Triton's `ModelConfig` when tritonclient is
  installed (skipped, with a note, where it is not, e.g. a bare TensorRT-LLM container).

Values come from `DEFAULTS` (for the keys the variant uses), then `--values FILE` (a YAML
mapping, needs PyYAML), then `key=value` arguments, later ones winning. Only the standard
library is needed otherwise, so the script also runs inside the Triton containers.

Usage: fill_template.py --variant NAME --out DIR [--values FILE] [--force]
                        [--templates DIR] [key=value ...]
       fill_template.py --list-keys --variant NAME
Exit status: 0 filled, 1 a template error (unknown key, leftover placeholder, bad value),
2 bad usage.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "triton_models" / "gpu"
TEMPLATE_SUFFIXES = (".pbtxt", ".yaml", ".yml")
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
LEFTOVER = re.compile(r"\$\{[^}\n]*\}?")
FORBIDDEN_IN_VALUES = ('"', "\\", "\n", "\r")

DEFAULTS: dict[str, str] = {
    # Shared by both variants.
    "triton_max_batch_size": "64",
    "decoupled_mode": "true",
    "kv_cache_free_gpu_mem_fraction": "0.9",
    # On, as the tensorrtllm backend's own default when the key is absent (see
    # triton_models/gpu/README.md, "KV cache" for the memory trade-off).
    "enable_kv_cache_reuse": "true",
    "cancellation_check_period_ms": "100",
    # inflight_batcher_llm: paths (scripts/build-engine prints the real ones).
    "engine_dir": "/models/engine",
    "tokenizer_dir": "/models/tokenizer",
    # inflight_batcher_llm: tensorrt_llm.
    "triton_backend": "tensorrtllm",
    "batching_strategy": "inflight_fused_batching",
    "batch_scheduler_policy": "guaranteed_no_evict",
    "max_queue_delay_microseconds": "0",
    "max_queue_size": "0",
    "enable_chunked_context": "false",
    "max_beam_width": "1",
    # Guided decoding (structured outputs): the only backend the C++ executor has, and the
    # tokenizer description scripts/build-engine writes next to the engine.
    "guided_decoding_backend": "xgrammar",
    "xgrammar_tokenizer_info_path": "/models/engine/xgrammar_tokenizer_info.json",
    # inflight_batcher_llm: pre- and postprocessing.
    "preprocessing_instance_count": "1",
    "postprocessing_instance_count": "1",
    "bls_instance_count": "1",
    "add_special_tokens": "false",
    "skip_special_tokens": "true",
    # llmapi: the LLM() arguments of ensemble/1/model.yaml (guided_decoding_backend, the
    # KV cache keys and the ensemble's parameters are the shared ones above).
    "hf_model_dir": "/models/hf",
    "tensor_parallel_size": "1",
    "pipeline_parallel_size": "1",
    "runtime_max_batch_size": "64",
    # v1.0.0's PyTorch backend applies penalties and bad words with this sampler only.
    "enable_trtllm_sampler": "true",
}
"""Values used when a key is not given. Paths point at the conventional mounts of a serving
container; pass the real ones (build-engine prints the full call)."""


class TemplateError(Exception):
    """The template cannot be filled as asked; the message says why."""


@dataclass
class FillResult:
    """What `fill` did."""

    out_dir: Path
    values: dict[str, str]
    """Every key the variant uses, with the value it got."""
    defaulted: list[str] = field(default_factory=list)
    """Keys that took their value from `DEFAULTS`."""
    files: list[Path] = field(default_factory=list)
    """Template files filled (relative to `out_dir`)."""
    notes: list[str] = field(default_factory=list)


def variants(templates: Path = TEMPLATES) -> list[str]:
    """The variant names: directories under `templates`."""
    return sorted(p.name for p in templates.iterdir() if p.is_dir() and not p.name.startswith("."))


def template_files(root: Path) -> list[Path]:
    """The files of a template tree whose placeholders are filled."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and path.suffix in TEMPLATE_SUFFIXES and "__pycache__" not in path.parts
    )


def placeholders(root: Path) -> dict[str, list[Path]]:
    """Each `${key}` under `root`, with the template files using it."""
    found: dict[str, list[Path]] = {}
    for path in template_files(root):
        for key in sorted(set(PLACEHOLDER.findall(path.read_text(encoding="utf-8")))):
            found.setdefault(key, []).append(path.relative_to(root))
    return found


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """`key=value` strings as a mapping (the value may itself contain `=`)."""
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TemplateError(f"expected key=value, got {item!r}")
        values[key.strip()] = value
    return values


def load_values_file(path: Path) -> dict[str, str]:
    """A YAML mapping of keys to scalars; booleans become `true`/`false`."""
    try:
        import yaml
    except ImportError as error:
        raise TemplateError(f"--values needs PyYAML ({error})") from None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: expected a mapping of keys to values")
    values: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict | list) or value is None:
            raise TemplateError(f"{path}: {key} must be a scalar")
        values[str(key)] = str(value).lower() if isinstance(value, bool) else str(value)
    return values


def fill(
    variant: str,
    out_dir: Path,
    given: Mapping[str, str],
    *,
    templates: Path = TEMPLATES,
    force: bool = False,
    defaults: Mapping[str, str] = DEFAULTS,
) -> FillResult:
    """Copies `templates/variant` to `out_dir` and fills it; raises `TemplateError`."""
    source = templates / variant
    if not source.is_dir():
        raise TemplateError(f"unknown variant {variant!r} (have: {', '.join(variants(templates))})")
    used = placeholders(source)
    unknown = sorted(set(given) - set(used))
    if unknown:
        raise TemplateError(
            f"key(s) not used by any template of {variant}: {', '.join(unknown)} "
            f"(its keys: {', '.join(sorted(used))})"
        )
    bad = [key for key, value in given.items() if any(c in value for c in FORBIDDEN_IN_VALUES)]
    if bad:
        raise TemplateError(
            f"value(s) of {', '.join(sorted(bad))} contain a quote, backslash or line break"
        )
    values = {key: defaults[key] for key in used if key in defaults}
    defaulted = sorted(key for key in values if key not in given)
    values.update(given)

    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise TemplateError(f"{out_dir} is not empty (use --force to replace it)")

    # Fill a sibling scratch directory and move it into place only when everything checks out,
    # so a failed fill leaves `out_dir` as it was.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        work = scratch / variant
        shutil.copytree(source, work, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        result = FillResult(
            out_dir=out_dir, values=dict(sorted(values.items())), defaulted=defaulted
        )
        result.files = _substitute(work, values)
        result.notes.extend(_check_configs(work))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def _substitute(root: Path, values: Mapping[str, str]) -> list[Path]:
    """Fills the template files under `root` in place; raises on leftover placeholders."""
    files: list[Path] = []
    leftovers: list[str] = []
    for path in template_files(root):
        text = path.read_text(encoding="utf-8")
        filled = PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
        path.write_text(filled, encoding="utf-8")
        files.append(path.relative_to(root))
        for number, line in enumerate(filled.splitlines(), start=1):
            leftovers.extend(
                f"{path.relative_to(root)}:{number}: {match.group(0)}"
                for match in LEFTOVER.finditer(line)
            )
    if leftovers:
        raise TemplateError(
            "placeholder(s) left without a value (pass them as key=value):\n  "
            + "\n  ".join(leftovers)
        )
    return files


def _check_configs(out_dir: Path) -> list[str]:
    """Parses every config.pbtxt as a Triton ModelConfig when tritonclient is installed."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return ["tritonclient is not installed: the filled config.pbtxt files were not parsed"]
    for path in sorted(out_dir.rglob("config.pbtxt")):
        try:
            text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
        except text_format.ParseError as error:
            raise TemplateError(f"{path.relative_to(out_dir)} does not parse: {error}") from None
    return []


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triton-templates",
        description="Fill a TensorRT-LLM Triton model repository template.",
    )
    parser.add_argument("--variant", required=True, help="inflight_batcher_llm or llmapi")
    parser.add_argument("--out", type=Path, help="output model repository directory")
    parser.add_argument("--values", type=Path, help="YAML file of key: value")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--templates", type=Path, default=TEMPLATES, help=argparse.SUPPRESS)
    parser.add_argument("--list-keys", action="store_true", help="print the variant's keys")
    parser.add_argument("assignments", nargs="*", metavar="key=value")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.list_keys:
            source = args.templates / args.variant
            if not source.is_dir():
                raise TemplateError(f"unknown variant {args.variant!r}")
            for key, files in sorted(placeholders(source).items()):
                default = DEFAULTS.get(key, "(required)")
                print(f"{key}={default}\t# {', '.join(map(str, files))}")
            return 0
        if args.out is None:
            _parser().error("--out is required")
        given = load_values_file(args.values) if args.values else {}
        given.update(parse_assignments(args.assignments))
        result = fill(args.variant, args.out, given, templates=args.templates, force=args.force)
    except TemplateError as error:
        print(f"triton-templates: error: {error}", file=sys.stderr)
        return 1
    print(f"filled {args.variant} into {result.out_dir}")
    for key, value in result.values.items():
        origin = " (default)" if key in result.defaulted else ""
        print(f"  {key}={value}{origin}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
