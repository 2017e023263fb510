"""The CPU generation engine (triton_models/python/genai_triton/engine) on the real SmolLM2
weights: the forward against transformers, the in-flight batcher's scheduling, sampling and
stop conditions, cancellation.

The prepared model is loaded once per module (about half a second); when it is missing it is
prepared from the GGUF first (about 20 s, once per machine).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import torch
from genai_triton.engine import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    FINISH_STOP_WORDS,
    ContextLengthExceededError,
    Engine,
    EngineRequest,
    InvalidRequestError,
    LlamaModel,
    SamplingParams,
    Update,
    load_llama,
    load_model,
)
from genai_triton.tokenization import TextTokenizer

from tests.support.smollm2 import smollm2_dir

QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis briefly.",
    "List three colours.",
)
REPEAT = "Repeat the word hello ten times."


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return smollm2_dir()


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> TextTokenizer:
    return TextTokenizer(model_dir)


@pytest.fixture(scope="module")
def model(model_dir: Path) -> LlamaModel:
    torch.set_num_threads(2)
    return load_llama(model_dir)


@pytest.fixture
def engine(model: LlamaModel, tokenizer: TextTokenizer) -> Iterator[Engine]:
    engine = Engine(model, slots=6, max_len=512, decode=tokenizer.decode, threads=2)
    yield engine
    engine.stop()


def chat(tokenizer: TextTokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}])
    return tokenizer.encode(text)


@pytest.fixture(scope="module")
def greedy(model: LlamaModel, tokenizer: TextTokenizer) -> Callable[[str, int], list[int]]:
    """The first n greedy tokens after a question (no end id), computed once per question
    and length: a longer greedy output starts with every shorter one."""
    engine = Engine(model, slots=1, max_len=512)
    known: dict[str, list[int]] = {}

    def first(question: str, n: int) -> list[int]:
        if len(known.get(question, [])) < n:
            known[question] = generate(engine, EngineRequest(chat(tokenizer, question), n)).tokens
        return known[question][:n]

    return first


class Collector:
    """Updates of one request, as the engine delivers them."""

    def __init__(self) -> None:
        self.updates: list[Update] = []
        self.done = threading.Event()

    def __call__(self, update: Update) -> None:
        self.updates.append(update)
        if update.finished:
            self.done.set()

    @property
    def tokens(self) -> list[int]:
        return [token for update in self.updates for token in update.token_ids]

    @property
    def finish_reason(self) -> str | None:
        return self.updates[-1].finish_reason if self.updates else None


def run_until_done(engine: Engine, collectors: Sequence[Collector], limit: int = 2000) -> None:
    for _ in range(limit):
        if all(c.done.is_set() for c in collectors):
            return
        engine.run_once()
    raise AssertionError("the engine did not finish the requests")


def generate(engine: Engine, request: EngineRequest) -> Collector:
    collector = Collector()
    engine.submit(request, collector)
    run_until_done(engine, [collector])
    return collector


# --------------------------------------------------------------------------------------------
# The forward
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers_model(model_dir: Path) -> object:
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    hf.eval()
    return hf


@pytest.mark.parametrize("backend", ["onednn", "mkl"])
def test_greedy_output_equals_transformers_generate(
    backend: str, model_dir: Path, tokenizer: TextTokenizer, transformers_model: object
) -> None:
    model = load_model(model_dir, backend)
    engine = Engine(model, slots=2, max_len=256, threads=2)
    for question in QUESTIONS[:3] if backend == "onednn" else QUESTIONS[:1]:
        prompt = chat(tokenizer, question)
        with torch.inference_mode():
            expected = transformers_model.generate(  # type: ignore[attr-defined]
                torch.tensor([prompt]),
                # Explicit: the prompt holds <|im_end|>, which is also the pad token, and
                # transformers would otherwise mask it out.
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=24,
                do_sample=False,
                eos_token_id=None,
            )[0, len(prompt) :].tolist()
        got = generate(engine, EngineRequest(prompt, 24)).tokens
        assert got == expected, (tokenizer.decode(got), tokenizer.decode(expected))


def test_chunked_prefill_gives_the_same_tokens(
    model: LlamaModel, tokenizer: TextTokenizer, greedy: Callable[[str, int], list[int]]
) -> None:
    chunked = Engine(model, slots=1, max_len=256, prefill_chunk=16)
    request = EngineRequest(chat(tokenizer, QUESTIONS[1]), 8)
    assert generate(chunked, request).tokens == greedy(QUESTIONS[1], 8)


def test_reused_prompt_prefixes_give_the_same_tokens(
    model: LlamaModel, tokenizer: TextTokenizer, greedy: Callable[[str, int], list[int]]
) -> None:
    engine = Engine(model, slots=2, max_len=256, prefix_cache_tokens=1024)
    fresh = Engine(model, slots=2, max_len=256, prefix_cache_tokens=0)
    first = EngineRequest(chat(tokenizer, QUESTIONS[0]), 6)
    second = EngineRequest(chat(tokenizer, QUESTIONS[3]), 6)
    assert generate(engine, first).tokens == greedy(QUESTIONS[0], 6)
    assert engine.prefix_cache.reused_tokens == 0
    # The second chat shares the template's system prompt: whole blocks of it are reused.
    shared = next(
        i
        for i, (a, b) in enumerate(zip(first.prompt_ids, second.prompt_ids, strict=False))
        if a != b
    )
    assert generate(engine, second).tokens == generate(fresh, second).tokens
    assert engine.prefix_cache.reused_tokens == shared // 16 * 16 > 0
    # The same prompt again reuses everything but its last block's tail.
    reused = engine.prefix_cache.reused_tokens
    assert generate(engine, first).tokens == greedy(QUESTIONS[0], 6)
    expected = (len(first.prompt_ids) - 1) // 16 * 16
    assert engine.prefix_cache.reused_tokens - reused == expected
    assert fresh.prefix_cache.reused_tokens == 0


def test_prefix_cache_evicts_beyond_its_capacity(model: LlamaModel) -> None:
    engine = Engine(model, slots=1, max_len=128, prefix_cache_tokens=32)
    generate(engine, EngineRequest(list(range(100, 150)), 1))  # 3 whole blocks, keeps 2
    assert len(engine.prefix_cache) == 2
    generate(engine, EngineRequest(list(range(100, 150)), 1))
    assert engine.prefix_cache.reused_tokens == 0  # the first block was evicted


def test_the_answer_mentions_paris(engine: Engine, tokenizer: TextTokenizer) -> None:
    collector = generate(engine, EngineRequest(chat(tokenizer, QUESTIONS[0]), 30, end_id=2))
    assert "Paris" in tokenizer.decode(collector.tokens)
    assert collector.finish_reason == FINISH_STOP


# --------------------------------------------------------------------------------------------
# In-flight batching
# --------------------------------------------------------------------------------------------


def test_concurrent_requests_produce_the_texts_they_produce_alone(
    engine: Engine, tokenizer: TextTokenizer, greedy: Callable[[str, int], list[int]]
) -> None:
    requests = [EngineRequest(chat(tokenizer, q), 10 + 3 * i) for i, q in enumerate(QUESTIONS)]
    alone = [greedy(q, 10 + 3 * i) for i, q in enumerate(QUESTIONS)]
    together = [Collector() for _ in requests]
    for request, collector in zip(requests, together, strict=True):
        engine.submit(request, collector)
    run_until_done(engine, together)
    assert [c.tokens for c in together] == alone
    assert all(c.finish_reason == FINISH_LENGTH for c in together)


def test_same_seed_same_text_while_others_join_and_leave(
    engine: Engine, tokenizer: TextTokenizer
) -> None:
    sampling = SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=1234)
    request = EngineRequest(chat(tokenizer, "Tell me a story."), 24, sampling)
    alone = generate(engine, request).tokens

    others = [
        EngineRequest(chat(tokenizer, q), 3 + 5 * i, SamplingParams(temperature=1.0, seed=i))
        for i, q in enumerate(QUESTIONS)
    ]
    early = Collector()
    engine.submit(others[3], early)  # already running when the seeded request arrives
    engine.run_once()
    engine.run_once()
    seeded = Collector()
    engine.submit(request, seeded)
    late = [Collector() for _ in others[:3]]
    for step in range(200):
        if step in (2, 6, 10):  # join while it decodes; they leave after 3, 8, 13 tokens
            index = (2, 6, 10).index(step)
            engine.submit(others[index], late[index])
        if seeded.done.is_set() and all(c.done.is_set() for c in late):
            break
        engine.run_once()
    run_until_done(engine, [early, seeded, *late])
    assert seeded.tokens == alone


def test_requests_beyond_the_slots_wait_and_then_run(
    model: LlamaModel, tokenizer: TextTokenizer
) -> None:
    engine = Engine(model, slots=2, max_len=256)
    collectors = [Collector() for _ in range(4)]
    for i, collector in enumerate(collectors):
        engine.submit(EngineRequest(chat(tokenizer, QUESTIONS[i]), 3), collector)
    engine.run_once()
    assert engine.active == 2
    assert engine.waiting == 2
    run_until_done(engine, collectors)
    assert [len(c.tokens) for c in collectors] == [3] * 4
    assert engine.active == 0


def test_engine_thread_serves_concurrent_callers(
    engine: Engine, tokenizer: TextTokenizer, greedy: Callable[[str, int], list[int]]
) -> None:
    requests = [EngineRequest(chat(tokenizer, q), 8) for q in QUESTIONS]
    alone = [greedy(q, 8) for q in QUESTIONS]
    engine.start()
    results: dict[int, list[int]] = {}

    def call(index: int) -> None:
        updates = list(engine.generate(requests[index]))
        results[index] = [t for u in updates for t in u.token_ids]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [results[i] for i in range(len(requests))] == alone


# --------------------------------------------------------------------------------------------
# Stop conditions
# --------------------------------------------------------------------------------------------


def test_max_tokens_ends_with_length(engine: Engine, tokenizer: TextTokenizer) -> None:
    collector = generate(engine, EngineRequest(chat(tokenizer, QUESTIONS[1]), 5))
    assert len(collector.tokens) == 5
    assert collector.finish_reason == FINISH_LENGTH
    assert [u.num_output_tokens for u in collector.updates] == [1, 2, 3, 4, 5]
    assert all(u.num_input_tokens == len(chat(tokenizer, QUESTIONS[1])) for u in collector.updates)


def test_end_id_stops_before_the_end_token(
    engine: Engine, tokenizer: TextTokenizer, greedy: Callable[[str, int], list[int]]
) -> None:
    prompt = chat(tokenizer, QUESTIONS[2])
    free = greedy(QUESTIONS[2], 12)
    end = free[4]
    first = free.index(end)
    collector = generate(engine, EngineRequest(prompt, 12, end_id=end))
    assert collector.tokens == free[:first]
    assert collector.finish_reason == FINISH_STOP
    assert collector.updates[-1].token_ids == ()
    assert collector.updates[-1].num_output_tokens == first


def test_stop_token_sequence(
    engine: Engine, tokenizer: TextTokenizer, greedy: Callable[[str, int], list[int]]
) -> None:
    prompt = chat(tokenizer, QUESTIONS[2])
    free = greedy(QUESTIONS[2], 16)
    stop = tuple(free[5:7])
    collector = generate(engine, EngineRequest(prompt, 16, stop_sequences=[stop]))
    assert collector.tokens == free[:7]
    assert collector.finish_reason == FINISH_STOP_WORDS


def test_stop_string_straddling_two_tokens(
    engine: Engine, tokenizer: TextTokenizer, greedy: Callable[[str, int], list[int]]
) -> None:
    prompt = chat(tokenizer, QUESTIONS[2])
    free = greedy(QUESTIONS[2], 16)
    pieces = [tokenizer.decode([t]) for t in free]
    index = next(i for i in range(3, 15) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[index][-2:] + pieces[index + 1][:2]  # the end of one token, start of next
    assert all(stop not in piece for piece in pieces)
    collector = generate(engine, EngineRequest(prompt, 16, stop_strings=[stop]))
    assert collector.finish_reason == FINISH_STOP_WORDS
    assert collector.tokens == free[: index + 2]


def test_bad_words_are_never_generated(
    engine: Engine, tokenizer: TextTokenizer, greedy: Callable[[str, int], list[int]]
) -> None:
    prompt = chat(tokenizer, QUESTIONS[0])
    free = greedy(QUESTIONS[0], 10)
    banned = free[3]
    single = generate(engine, EngineRequest(prompt, 10, bad_words=[(banned,)])).tokens
    assert banned not in single
    assert single[:3] == free[:3]
    pair = (free[5], free[6])
    multi = generate(engine, EngineRequest(prompt, 10, bad_words=[pair])).tokens
    assert multi[:6] == free[:6]
    assert multi[6] != free[6]


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def test_top_k_one_is_greedy(engine: Engine, tokenizer: TextTokenizer) -> None:
    prompt = chat(tokenizer, QUESTIONS[1])
    greedy = generate(engine, EngineRequest(prompt, 12)).tokens
    sampling = SamplingParams(temperature=1.5, top_k=1, seed=7)
    assert generate(engine, EngineRequest(prompt, 12, sampling)).tokens == greedy


def test_seeds_reproduce_and_differ(engine: Engine, tokenizer: TextTokenizer) -> None:
    prompt = chat(tokenizer, "Tell me a story.")

    def sample(seed: int) -> list[int]:
        sampling = SamplingParams(temperature=1.0, top_p=0.9, seed=seed)
        return generate(engine, EngineRequest(prompt, 20, sampling)).tokens

    assert sample(1) == sample(1)
    assert len({tuple(sample(seed)) for seed in (1, 2, 3)}) > 1


def test_presence_penalty_stops_repetition(
    engine: Engine, tokenizer: TextTokenizer, greedy: Callable[[str, int], list[int]]
) -> None:
    prompt = chat(tokenizer, REPEAT)
    free = greedy(REPEAT, 20)
    assert len(set(free)) < len(free)  # it does repeat
    penalized = SamplingParams(presence_penalty=100.0)
    tokens = generate(engine, EngineRequest(prompt, 20, penalized)).tokens
    assert len(set(tokens)) == len(tokens)


def test_repetition_and_frequency_penalties_change_the_output(
    engine: Engine, tokenizer: TextTokenizer, greedy: Callable[[str, int], list[int]]
) -> None:
    prompt = chat(tokenizer, REPEAT)
    free = greedy(REPEAT, 20)
    for sampling in (SamplingParams(repetition_penalty=2.0), SamplingParams(frequency_penalty=5.0)):
        tokens = generate(engine, EngineRequest(prompt, 20, sampling)).tokens
        assert tokens != free
        assert len(set(tokens)) > len(set(free))


# --------------------------------------------------------------------------------------------
# Cancellation and refusals
# --------------------------------------------------------------------------------------------


def test_cancellation_ends_the_request_and_frees_its_slot_within_a_step(
    engine: Engine, tokenizer: TextTokenizer
) -> None:
    victim, other = Collector(), Collector()
    victim_id = engine.submit(EngineRequest(chat(tokenizer, QUESTIONS[1]), 100), victim)
    engine.submit(EngineRequest(chat(tokenizer, QUESTIONS[2]), 100), other)
    for _ in range(4):
        engine.run_once()
    assert engine.active == 2
    produced = len(victim.tokens)
    assert engine.cancel(victim_id)
    # The final update arrives at once, from the cancelling thread.
    assert victim.finish_reason == FINISH_CANCELLED
    assert victim.updates[-1].num_output_tokens == produced
    engine.run_once()
    assert engine.active == 1
    assert len(victim.tokens) == produced
    assert sum(u.finished for u in victim.updates) == 1
    assert not engine.cancel(victim_id)
    # The freed slot serves the next request.
    third = Collector()
    engine.submit(EngineRequest(chat(tokenizer, QUESTIONS[3]), 3), third)
    run_until_done(engine, [third])
    assert third.finish_reason == FINISH_LENGTH
    assert engine.cancel(engine.submit(EngineRequest([1, 2, 3], 5), Collector()))
    engine.run_once()


def test_cancelling_a_waiting_request(model: LlamaModel, tokenizer: TextTokenizer) -> None:
    engine = Engine(model, slots=1, max_len=128)
    first, second = Collector(), Collector()
    engine.submit(EngineRequest(chat(tokenizer, QUESTIONS[0]), 50), first)
    second_id = engine.submit(EngineRequest(chat(tokenizer, QUESTIONS[1]), 50), second)
    engine.run_once()
    assert engine.waiting == 1
    engine.cancel(second_id)
    engine.run_once()
    assert engine.waiting == 0
    assert second.tokens == []
    assert second.finish_reason == FINISH_CANCELLED


def test_context_length_exceeded(engine: Engine) -> None:
    with pytest.raises(ContextLengthExceededError) as caught:
        engine.submit(EngineRequest(list(range(10, 500)), 100), Collector())
    assert "exceeds the context of 512 tokens" in str(caught.value)
    assert caught.value.prompt_tokens == 490


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (EngineRequest([], 5), "text_input"),
        (EngineRequest([1, 2], 0), "max_tokens"),
        (EngineRequest([1, 2], 5, SamplingParams(temperature=-1)), "temperature"),
        (EngineRequest([1, 2], 5, SamplingParams(top_p=0.0)), "top_p"),
        (EngineRequest([1, 2], 5, SamplingParams(top_k=-3)), "top_k"),
        (EngineRequest([1, 2], 5, SamplingParams(repetition_penalty=0.0)), "repetition_penalty"),
        (EngineRequest([1, 10**6], 5), "input_ids"),
    ],
)
def test_invalid_requests_are_refused(engine: Engine, request_: EngineRequest, field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        engine.submit(request_, Collector())
    assert caught.value.field == field


def test_engine_limits(model: LlamaModel) -> None:
    with pytest.raises(ValueError, match="max_len"):
        Engine(model, max_len=model.config.max_position_embeddings + 1)
    default = Engine(model, slots=1)
    assert default.max_len == model.config.max_position_embeddings == 8192
