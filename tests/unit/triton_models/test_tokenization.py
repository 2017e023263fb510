"""Tokenizer helpers of the CPU models (genai_triton.tokenization) with SmolLM2's real
tokenizer: streamed text never splits a UTF-8 character or loses a space, stop words are cut
and held back, word lists round-trip."""

from __future__ import annotations

import numpy as np
import pytest
from genai_triton.tokenization import (
    REPLACEMENT,
    IncrementalDetokenizer,
    TextTokenizer,
    parse_word_list,
    text_delta,
    visible_text,
    word_list,
    word_variants,
)

from tests.support.smollm2 import smollm2_dir

TEXTS = (
    " Hello world, this is a test.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 \u00fcber \u00e6\u00f8\u00e5",
    " \u4f60\u597d\uff0c\u4e16\u754c\uff01\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "Emoji: \U0001f600\U0001f680 \U0001f1eb\U0001f1f7 \U0001f469\u200d\U0001f4bb done",
    "  leading spaces\n\n  and\ttabs  ",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 and \u0928\u092e\u0938\u094d\u0924\u0947",
)


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(smollm2_dir())


def test_multibyte_texts_split_inside_characters(tokenizer: TextTokenizer) -> None:
    """The texts below really do put parts of one character into different tokens, so the
    other tests exercise the hard case."""
    split = 0
    for text in TEXTS:
        split += sum(REPLACEMENT in tokenizer.decode([t]) for t in tokenizer.encode(text))
    assert split > 5


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_detokenizer_one_token_at_a_time(tokenizer: TextTokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.push([token]) for token in ids]
    deltas.append(detokenizer.flush())
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert all(REPLACEMENT not in delta for delta in deltas)
    # Spaces stay with the token that carries them: no delta is stripped.
    assert deltas[0] == text[: len(deltas[0])]


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_detokenizer_in_uneven_chunks(tokenizer: TextTokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer, context=tokenizer.encode("<|im_start|>x"))
    out, position, size = [], 0, 1
    while position < len(ids):
        out.append(detokenizer.push(ids[position : position + size]))
        position += size
        size = size % 3 + 1
    out.append(detokenizer.flush())
    assert "".join(out) == text


@pytest.mark.parametrize("text", TEXTS)
def test_stateless_deltas_concatenate_to_the_text(tokenizer: TextTokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    pieces = []
    for end in range(1, len(ids) + 1):
        delta, stopped = text_delta(tokenizer, ids[:end], end - 1, final=end == len(ids))
        assert not stopped
        assert REPLACEMENT not in delta
        pieces.append(delta)
    assert "".join(pieces) == text


def test_special_tokens_are_skipped(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("<|im_start|>assistant\n Paris<|im_end|>")
    assert ids[0] == 1
    assert tokenizer.eos_id in ids
    assert tokenizer.decode(ids) == "assistant\n Paris"


def test_stop_words_are_cut_and_held_back(tokenizer: TextTokenizer) -> None:
    text = " The answer is Paris. User: next"
    ids = tokenizer.encode(text)
    stop = ["User:"]
    pieces, stopped_at = [], None
    for end in range(1, len(ids) + 1):
        delta, stopped = text_delta(tokenizer, ids[:end], end - 1, stop)
        pieces.append(delta)
        if stopped:
            stopped_at = end
            break
    assert stopped_at is not None
    assert "".join(pieces) == " The answer is Paris. "
    assert all("U" not in piece for piece in pieces)


def test_visible_text_rules() -> None:
    assert visible_text("abc STOP def", ["STOP"]) == ("abc ", True)
    assert visible_text("abc ST", ["STOP"]) == ("abc ", False)
    assert visible_text("abc ST", ["STOP"], final=True) == ("abc ST", False)
    assert visible_text("abc \ufffd", []) == ("abc ", False)
    assert visible_text("a X b Y", ["Y", "X"]) == ("a ", True)
    assert visible_text("plain", []) == ("plain", False)


def test_word_lists_round_trip() -> None:
    words = [(5, 6, 7), (9,), (1, 2)]
    array = word_list(words)
    assert array.dtype == np.int32
    assert array.tolist() == [[5, 6, 7, 9, 1, 2], [3, 4, 6, -1, -1, -1]]
    assert parse_word_list(array) == words
    assert parse_word_list(array[None]) == words
    assert word_list([]).tolist() == [[0], [-1]]
    assert parse_word_list(word_list([])) == []


def test_word_variants() -> None:
    assert word_variants(["Paris", " Rome", ""]) == ["Paris", " Paris", " Rome"]


def test_chat_template_is_chatml(tokenizer: TextTokenizer) -> None:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.special.bos == 1
    assert tokenizer.eos_id == 2


def test_prompt_ids_put_bos_first_only_where_the_tokenizer_does() -> None:
    from genai_triton.tokenization import TextTokenizer

    from tests.support.gemma import gemma_dir

    smollm2 = TextTokenizer(smollm2_dir())
    gemma = TextTokenizer(gemma_dir())

    assert smollm2.adds_bos is False
    assert smollm2.prompt_ids("The capital of France is") == smollm2.encode(
        "The capital of France is"
    )
    assert gemma.adds_bos is True
    assert gemma.special.bos == 2
    ids = gemma.prompt_ids("The capital of France is")
    assert ids == [2, *gemma.encode("The capital of France is")]
    assert gemma.prompt_ids("<bos>Hello")[:2] != [2, 2]  # never twice
