"""Describe a Hugging Face tokenizer for TensorRT-LLM's guided decoding (xgrammar).

The C++ tensorrtllm Triton backend names this JSON file in its model parameter
`xgrammar_tokenizer_info_path` and reads three keys (getGuidedDecodingConfigFromParams in
inflight_batcher_llm/src/model_instance_state.cc, tensorrtllm_backend v0.19.0; from 0.20 the
backend lives in TensorRT-LLM's triton_backend/, its reader unchanged in the stored copies):

- `encoded_vocab`: every token as the vocabulary spells it, the list index being the token id;
- `tokenizer_str`: the fast tokenizer serialised (`backend_tokenizer.to_str()`), from which
  xgrammar learns how tokens encode text (byte-level or SentencePiece, a prefix space);
- `stop_token_ids`: the ids that may end a guided generation.

Upstream's generator (TensorRT-LLM examples/generate_xgrammar_tokenizer_info.py, which calls
tensorrt_llm.llmapi.tokenizer._xgrammar_tokenizer_info; used by tensorrtllm_backend v1.0.0
docs/guided_decoding.md) writes the same three keys. This one differs on purpose in two points:

- `stop_token_ids`: upstream lists the tokenizer's EOS only. Here the EOS ids of
  generation_config.json follow it (Llama 3 Instruct's <|eot_id|>, ...): the ids the GPU
  ensemble already treats as the end of a turn, so a grammar may end where the model does.
- `encoded_vocab`: upstream sorts get_vocab() by id, which moves every later token down a place
  when the ids have a gap. Here index = id, with "" in a gap, as xgrammar's own
  TokenizerInfo.from_huggingface fills it.

A tokenizer without a fast (`tokenizers`) form is refused: the backend requires `tokenizer_str`.

Needs the standard library and transformers only, so the Triton container's python3 runs it.
Usage: python3 scripts/lib/xgrammar_tokenizer_info.py --tokenizer-dir DIR --out FILE
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

FILE_NAME = "xgrammar_tokenizer_info.json"
"""The name upstream's generator gives the file (and scripts/build-engine, in the engine dir)."""


class TokenizerInfoError(Exception):
    """The directory holds no tokenizer this file can describe."""


def generation_eos_ids(model_dir: Path) -> list[int]:
    """The `eos_token_id` of the directory's generation_config.json (an int or a list), or []
    when the file or the key is absent."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return []
    ids = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    if ids is None:
        return []
    return [int(i) for i in (ids if isinstance(ids, list) else [ids])]


def encoded_vocab(vocab: dict[str, int]) -> list[str]:
    """Token strings by id: index i holds the token with id i, "" where no token has it."""
    if not vocab:
        raise TokenizerInfoError("the tokenizer has an empty vocabulary")
    tokens = [""] * (max(vocab.values()) + 1)
    for token, token_id in vocab.items():
        if token_id < 0:
            raise TokenizerInfoError(f"token {token!r} has a negative id {token_id}")
        tokens[token_id] = token
    return tokens


def _unique(ids: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(ids))


def describe(tokenizer: Any, extra_stop_ids: Sequence[int] = ()) -> dict[str, Any]:
    """The three keys for a loaded transformers tokenizer; `extra_stop_ids` follow its EOS."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerInfoError(
            f"{type(tokenizer).__name__} has no fast (tokenizers) form: TensorRT-LLM's guided "
            "decoding needs its serialised tokenizer (tokenizer.json)"
        )
    eos = tokenizer.eos_token_id
    stop_ids = _unique(([] if eos is None else [int(eos)]) + [int(i) for i in extra_stop_ids])
    if not stop_ids:
        raise TokenizerInfoError(
            "no stop token: the tokenizer has no eos_token and generation_config.json no "
            "eos_token_id"
        )
    vocab = encoded_vocab(tokenizer.get_vocab())
    out_of_vocab = [i for i in stop_ids if i >= len(vocab)]
    if out_of_vocab:
        raise TokenizerInfoError(f"stop token ids {out_of_vocab} are not in the vocabulary")
    return {
        "encoded_vocab": vocab,
        "tokenizer_str": backend.to_str(),
        "stop_token_ids": stop_ids,
    }


def describe_dir(tokenizer_dir: Path) -> dict[str, Any]:
    """The three keys for the tokenizer of a Hugging Face model directory."""
    from transformers import AutoTokenizer

    if not tokenizer_dir.is_dir():
        raise TokenizerInfoError(f"{tokenizer_dir} is not a directory")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return describe(tokenizer, generation_eos_ids(tokenizer_dir))


def write(tokenizer_dir: Path, out: Path) -> dict[str, Any]:
    """Describe the tokenizer of `tokenizer_dir` into `out` (replaced whole, never half
    written) and return what was written."""
    info = describe_dir(tokenizer_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(info, file, ensure_ascii=False)
        # mkstemp creates 0600; tritonserver may run as another user than the build.
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return info


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        description="Write the xgrammar tokenizer description that the tensorrtllm Triton "
        "backend reads (model parameter xgrammar_tokenizer_info_path)."
    )
    cli.add_argument(
        "--tokenizer-dir",
        type=Path,
        required=True,
        help="Hugging Face model or tokenizer directory (tokenizer.json, generation_config.json)",
    )
    cli.add_argument("--out", type=Path, required=True, help=f"the JSON file, e.g. .../{FILE_NAME}")
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        info = write(args.tokenizer_dir, args.out)
    except (TokenizerInfoError, OSError, ValueError) as error:
        print(f"xgrammar_tokenizer_info: {error}", file=sys.stderr)
        return 1
    print(
        f"xgrammar_tokenizer_info: {args.out}: {len(info['encoded_vocab'])} tokens, "
        f"stop token ids {info['stop_token_ids']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
