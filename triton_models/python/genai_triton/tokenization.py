"""Tokenizer helpers shared by the CPU models: encoding, TensorRT-LLM word lists, and
detokenization that never splits a UTF-8 character or drops the space between two tokens.

Streaming text is made from token ids in one of two ways, both exact:

- `IncrementalDetokenizer` (stateful, for one request): each `push` decodes a short window
  of recent tokens twice, with and without the new ones, and returns the difference; text whose
  last character is still incomplete (U+FFFD) waits for the next token.
- `text_delta` (stateless, for the `postprocessing` model that sees all ids so far):
  `visible_text(ids) [len(visible_text(previous ids)):]`, where `visible_text` drops a trailing
  incomplete character and, with stop words, cuts at the first stop word and holds back an end
  that could still become one. The visible text of a prefix is always a prefix of the visible
  text of the whole, so the deltas concatenate to the final text.

Decoding skips special tokens and never "cleans up" spaces, so decoding a prefix of the ids
gives a prefix of the text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "REPLACEMENT",
    "IncrementalDetokenizer",
    "TextTokenizer",
    "parse_word_list",
    "text_delta",
    "visible_text",
    "word_list",
]

REPLACEMENT = "\ufffd"
"""What decoding yields for the bytes of a character that is not complete yet."""


@dataclass(frozen=True, slots=True)
class SpecialIds:
    bos: int | None
    eos: int | None
    pad: int | None


class TextTokenizer:
    """The `tokenizer.json` of a prepared model directory (via the `tokenizers` library), its
    special ids and chat template."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer

        self.directory = directory
        self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        config = _read_json(directory / "config.json")
        generation = _read_json(directory / "generation_config.json")

        def special(name: str) -> int | None:
            value = generation.get(name, config.get(name))
            if isinstance(value, list):
                value = value[0] if value else None
            return None if value is None else int(value)

        self.special = SpecialIds(
            special("bos_token_id"), special("eos_token_id"), special("pad_token_id")
        )
        template = directory / "chat_template.jinja"
        self.chat_template = template.read_text(encoding="utf-8") if template.exists() else None
        self.vocab_size = int(self._tokenizer.get_vocab_size(with_added_tokens=True))
        # Whether the tokenizer's post-processor starts every text with BOS (Gemma's <bos>).
        bos = self.special.bos
        starts = self._tokenizer.encode("", add_special_tokens=True).ids[:1]
        self.adds_bos = bos is not None and list(starts) == [bos]

    @property
    def eos_id(self) -> int | None:
        return self.special.eos

    @property
    def pad_id(self) -> int | None:
        return self.special.pad if self.special.pad is not None else self.special.eos

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in it (`<|im_start|>`) are recognised,
        nothing is added."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def prompt_ids(self, text: str) -> list[int]:
        """Token ids of a prompt: `encode`, after the beginning-of-sequence token where the
        model's tokenizer puts one before every text (Gemma's `<bos>`; not SmolLM2, whose chat
        template writes what it needs) and the text does not start with it already."""
        ids = self.encode(text)
        if self.adds_bos and self.special.bos is not None and ids[:1] != [self.special.bos]:
            ids.insert(0, self.special.bos)
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens skipped."""
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        """Renders `messages` ({role, content}) with the model's chat template (sandboxed
        Jinja, as Hugging Face tokenizers do)."""
        if self.chat_template is None:
            raise ValueError(f"{self.directory} has no chat template")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        template = environment.from_string(self.chat_template)
        return str(
            template.render(messages=list(messages), add_generation_prompt=add_generation_prompt)
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------------------------
# Word lists (stop_words / bad_words) in TensorRT-LLM's [2, n] layout
# --------------------------------------------------------------------------------------------


def word_list(sequences: Sequence[Sequence[int]]) -> NDArray[Any]:
    """TensorRT-LLM's word-list tensor `[2, n]` INT32: row 0 the ids of every word one after
    another (padded with 0), row 1 the end offset of each word (padded with -1). No words
    give `[2, 1]` of `[[0], [-1]]`."""
    flat = [token for sequence in sequences for token in sequence]
    offsets: list[int] = []
    end = 0
    for sequence in sequences:
        end += len(sequence)
        offsets.append(end)
    width = max(len(flat), len(offsets), 1)
    array = np.zeros((2, width), dtype=np.int32)
    array[1, :] = -1
    array[0, : len(flat)] = flat
    array[1, : len(offsets)] = offsets
    return array


def parse_word_list(array: NDArray[Any]) -> list[tuple[int, ...]]:
    """The token sequences of a `word_list` tensor (`[2, n]` or `[1, 2, n]`)."""
    values = np.asarray(array).reshape(-1, 2, np.asarray(array).shape[-1])[0]
    ids, offsets = values[0].tolist(), values[1].tolist()
    words: list[tuple[int, ...]] = []
    start = 0
    for end in offsets:
        if end < 0:
            break
        if end > start:
            words.append(tuple(int(t) for t in ids[start:end]))
        start = end
    return words


def word_variants(words: Iterable[str]) -> list[str]:
    """Each word and, unless it starts with a space, the same word after a space: a banned
    word usually appears inside text as its space-prefixed token."""
    variants: list[str] = []
    for word in words:
        if not word:
            continue
        for variant in (word, word if word.startswith(" ") else " " + word):
            if variant and variant not in variants:
                variants.append(variant)
    return variants


# --------------------------------------------------------------------------------------------
# Detokenization
# --------------------------------------------------------------------------------------------


def _overlap(text: str, word: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `word`."""
    for size in range(min(len(word) - 1, len(text)), 0, -1):
        if text.endswith(word[:size]):
            return size
    return 0


def visible_text(
    text: str, stop_words: Sequence[str] = (), *, final: bool = False
) -> tuple[str, bool]:
    """The part of generated `text` that may be shown, and whether a stop word was reached.

    Cuts at the first stop word (it and what follows are never shown). Unless `final`, also
    holds back a trailing incomplete character and an end that could still grow into a stop
    word."""
    words = [w for w in stop_words if w]
    hits = [index for index in (text.find(w) for w in words) if index >= 0]
    if hits:
        return text[: min(hits)], True
    if final:
        return text, False
    text = text.rstrip(REPLACEMENT)
    keep = max((_overlap(text, w) for w in words), default=0)
    return (text[: len(text) - keep] if keep else text), False


def text_delta(
    tokenizer: TextTokenizer,
    ids: Sequence[int],
    previous: int,
    stop_words: Sequence[str] = (),
    *,
    final: bool = False,
) -> tuple[str, bool]:
    """New visible text once `ids` (all output ids so far) follow `ids[:previous]` (what was
    shown before), and whether a stop word was reached. Stateless."""
    shown = visible_text(tokenizer.decode(ids[:previous]), stop_words)[0] if previous else ""
    now, stopped = visible_text(tokenizer.decode(ids), stop_words, final=final)
    return now[len(shown) :], stopped


class IncrementalDetokenizer:
    """Token ids in, text deltas out, for one sequence (see the module doc)."""

    __slots__ = ("_decode", "_ids", "_prefix", "_read")

    def __init__(self, tokenizer: TextTokenizer, context: Sequence[int] = ()) -> None:
        """`context`: ids before the output (e.g. the prompt's last few) that shape how the
        first output token decodes; their own text is never returned."""
        self._decode = tokenizer.decode
        self._ids: list[int] = list(context)
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, ids: Iterable[int]) -> str:
        """Adds tokens; returns the text that is now complete."""
        self._ids.extend(ids)
        if len(self._ids) == self._read:
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if after.endswith(REPLACEMENT) or len(after) <= len(before):
            return ""
        self._prefix = self._read
        self._read = len(self._ids)
        return after[len(before) :]

    def flush(self) -> str:
        """Whatever is left (an incomplete character decodes as U+FFFD); call once at the end."""
        if len(self._ids) == self._read:
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :] if len(after) > len(before) else ""
