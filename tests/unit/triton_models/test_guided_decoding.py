"""Guided decoding (structured outputs) in the CPU engine, on the real SmolLM2 weights and the
real xgrammar: JSON Schema, JSON, regex and EBNF guides constrain what the in-flight batcher
generates, greedy and seeded, beside unconstrained sequences; bad guides fail with field
violations; guides compile off the decoding thread and are cached."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from genai_triton.engine import (
    FINISH_CANCELLED,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    FINISH_STOP_WORDS,
    Engine,
    EngineRequest,
    InvalidRequestError,
    LlamaModel,
    SamplingParams,
    Update,
    load_llama,
)
from genai_triton.engine.guided import Constraint, Grammars
from genai_triton.guides import Guide, GuideError
from genai_triton.tokenization import TextTokenizer

from tests.support.smollm2 import smollm2_dir

INVOICE = {
    "type": "object",
    "properties": {
        "customer": {"type": "string", "maxLength": 40},
        "total": {"type": "number"},
        "items": {
            "type": "array",
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "description": {"type": "string", "maxLength": 40},
                    "quantity": {"type": "integer"},
                    "price": {"type": "number"},
                },
                "required": ["description", "quantity", "price"],
            },
        },
    },
    "required": ["customer", "total", "items"],
}
INVOICE_GUIDE = Guide("json_schema", json.dumps(INVOICE))
INVOICE_PROMPTS = (
    "Write an invoice for Alice: 2 apples at 0.5 dollars and 3 pears at 1 dollar.",
    "Create an invoice as JSON for Bob Smith, who bought one laptop for 999.99.",
    "What is the capital of France?",
)
GREEDY = SamplingParams()
SEEDED = SamplingParams(temperature=0.8, seed=11)
SEEDED_FILTERED = SamplingParams(
    temperature=1.0, top_k=40, top_p=0.9, seed=3, repetition_penalty=1.2
)


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


@pytest.fixture(scope="module")
def grammars(model_dir: Path, model: LlamaModel, tokenizer: TextTokenizer) -> Iterator[Grammars]:
    assert tokenizer.eos_id is not None
    grammars = Grammars.for_tokenizer(
        model_dir / "tokenizer.json",
        vocab_size=model.config.vocab_size,
        stop_ids=[tokenizer.eos_id],
    )
    yield grammars
    grammars.close()


@pytest.fixture(scope="module")
def engine(model: LlamaModel, tokenizer: TextTokenizer, grammars: Grammars) -> Iterator[Engine]:
    engine = Engine(
        model, slots=4, max_len=1024, decode=tokenizer.decode, threads=2, grammars=grammars
    )
    engine.warm_up()
    engine.start()
    yield engine
    engine.stop()


def chat(tokenizer: TextTokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}])
    return tokenizer.encode(text)


class Collector:
    """Updates of one request, as the engine thread delivers them."""

    def __init__(self) -> None:
        self.updates: list[Update] = []
        self.done = threading.Event()

    def __call__(self, update: Update) -> None:
        self.updates.append(update)
        if update.finished:
            self.done.set()

    def wait(self, timeout: float = 120.0) -> Collector:
        assert self.done.wait(timeout), "the request did not finish"
        return self

    @property
    def tokens(self) -> list[int]:
        return [token for update in self.updates for token in update.token_ids]

    @property
    def last(self) -> Update:
        return self.updates[-1]


def run(
    engine: Engine,
    tokenizer: TextTokenizer,
    question: str,
    guide: Guide | None,
    sampling: SamplingParams = GREEDY,
    max_tokens: int = 256,
    **fields: Any,
) -> tuple[str, Update]:
    """The text and last update of one request (the end id is the tokenizer's)."""
    collector = Collector()
    request = EngineRequest(
        chat(tokenizer, question),
        max_tokens,
        sampling,
        end_id=tokenizer.eos_id,
        guide=guide,
        **fields,
    )
    engine.submit(request, collector)
    collector.wait()
    return tokenizer.decode(collector.tokens), collector.last


# -- JSON Schema --------------------------------------------------------------------------------


@pytest.mark.parametrize("question", INVOICE_PROMPTS)
@pytest.mark.parametrize(
    "sampling", [GREEDY, SEEDED, SEEDED_FILTERED], ids=["greedy", "seeded", "top-k-top-p-penalty"]
)
def test_a_json_schema_guide_gives_json_that_validates(
    engine: Engine, tokenizer: TextTokenizer, question: str, sampling: SamplingParams
) -> None:
    text, last = run(engine, tokenizer, question, INVOICE_GUIDE, sampling)

    assert last.finish_reason == FINISH_STOP, text
    jsonschema.validate(json.loads(text), INVOICE)


def test_without_the_guide_the_model_does_not_answer_in_json(
    engine: Engine, tokenizer: TextTokenizer
) -> None:
    """The schema tests above are not passing by chance: unconstrained, SmolLM2 writes prose."""
    text, _ = run(engine, tokenizer, INVOICE_PROMPTS[2], None, max_tokens=40)

    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_the_same_seed_gives_the_same_guided_text(engine: Engine, tokenizer: TextTokenizer) -> None:
    first, _ = run(engine, tokenizer, INVOICE_PROMPTS[0], INVOICE_GUIDE, SEEDED)
    second, _ = run(engine, tokenizer, INVOICE_PROMPTS[0], INVOICE_GUIDE, SEEDED)
    greedy, _ = run(engine, tokenizer, INVOICE_PROMPTS[0], INVOICE_GUIDE, GREEDY)

    assert first == second
    assert first != greedy


@pytest.mark.parametrize("question", ["Name three colours.", "Describe a cat.", "Say hi."])
def test_a_json_guide_gives_parseable_json(
    engine: Engine, tokenizer: TextTokenizer, question: str
) -> None:
    text, last = run(engine, tokenizer, question, Guide("json"), SEEDED)

    assert last.finish_reason == FINISH_STOP, text
    assert isinstance(json.loads(text), dict | list)


# -- regex and EBNF -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "question"),
    [
        ("(yes|no)", "Is the sky blue?"),
        (r"\d{3}-\d{4}", "Give me a phone number."),
        ("[A-Z][a-z]{1,12}, [A-Z][a-z]{1,12}", "Name two cities."),
    ],
)
@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_regex_guide_gives_a_whole_match(
    engine: Engine,
    tokenizer: TextTokenizer,
    pattern: str,
    question: str,
    sampling: SamplingParams,
) -> None:
    text, last = run(engine, tokenizer, question, Guide("regex", pattern), sampling)

    assert last.finish_reason == FINISH_STOP
    assert re.fullmatch(pattern, text), text


GRAMMAR = """
root ::= "The answer is " answer "."
answer ::= "yes" | "no" | "maybe, because " reason
reason ::= [a-z ]+
"""


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_an_ebnf_grammar_guide_gives_a_sentence_of_the_grammar(
    engine: Engine, tokenizer: TextTokenizer, sampling: SamplingParams
) -> None:
    text, last = run(
        engine, tokenizer, "Is the sky blue?", Guide("ebnf_grammar", GRAMMAR), sampling
    )

    assert last.finish_reason == FINISH_STOP
    assert re.fullmatch(r"The answer is (yes|no|maybe, because [a-z ]+)\.", text), text


# -- composition with the other request fields --------------------------------------------------


def test_max_tokens_cuts_a_guided_output_with_length(
    engine: Engine, tokenizer: TextTokenizer
) -> None:
    whole, _ = run(engine, tokenizer, INVOICE_PROMPTS[0], INVOICE_GUIDE)
    text, last = run(engine, tokenizer, INVOICE_PROMPTS[0], INVOICE_GUIDE, max_tokens=6)

    assert last.finish_reason == FINISH_LENGTH
    assert last.num_output_tokens == 6
    assert whole.startswith(text)
    assert text.startswith('{"customer"')


def test_stop_words_end_a_guided_output(engine: Engine, tokenizer: TextTokenizer) -> None:
    whole, _ = run(engine, tokenizer, INVOICE_PROMPTS[0], INVOICE_GUIDE)
    stop = '"total"'
    text, last = run(engine, tokenizer, INVOICE_PROMPTS[0], INVOICE_GUIDE, stop_strings=[stop])

    assert last.finish_reason == FINISH_STOP_WORDS
    assert text.endswith(stop)
    assert whole.startswith(text)


def test_bad_words_steer_inside_the_grammar(engine: Engine, tokenizer: TextTokenizer) -> None:
    guide = Guide("regex", "(yes|no)")
    free, _ = run(engine, tokenizer, "Is the sky blue?", guide)
    banned = tokenizer.encode(free)
    text, last = run(engine, tokenizer, "Is the sky blue?", guide, bad_words=[banned])

    assert last.finish_reason == FINISH_STOP
    assert {free, text} == {"yes", "no"}


def test_the_grammar_wins_when_bad_words_ban_everything_it_allows(
    engine: Engine, tokenizer: TextTokenizer
) -> None:
    guide = Guide("regex", "yes")
    banned = [[token] for token in tokenizer.encode("yes")]
    text, last = run(engine, tokenizer, "Is the sky blue?", guide, bad_words=banned)

    assert (text, last.finish_reason) == ("yes", FINISH_STOP)


def test_an_unconstrained_sequence_beside_a_constrained_one_is_unaffected(
    engine: Engine, tokenizer: TextTokenizer
) -> None:
    question = "Write a haiku about the sea."
    alone, _ = run(engine, tokenizer, question, None, max_tokens=40)
    guided_alone, _ = run(engine, tokenizer, INVOICE_PROMPTS[0], INVOICE_GUIDE)

    batch_sizes: list[int] = []
    free = Collector()
    guided = Collector()

    def free_callback(update: Update) -> None:
        batch_sizes.append(engine.active)  # on the engine thread, between two steps
        free(update)

    engine.submit(
        EngineRequest(
            chat(tokenizer, INVOICE_PROMPTS[0]), 256, end_id=tokenizer.eos_id, guide=INVOICE_GUIDE
        ),
        guided,
    )
    engine.submit(
        EngineRequest(chat(tokenizer, question), 40, end_id=tokenizer.eos_id), free_callback
    )
    free.wait()
    guided.wait()

    assert max(batch_sizes) == 2, "the two sequences were never decoded together"
    assert tokenizer.decode(free.tokens) == alone
    assert tokenizer.decode(guided.tokens) == guided_alone


# -- bad guides -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("guide", "message"),
    [
        (
            Guide("json_schema", "{not json"),
            "guided_decoding_guide: invalid json_schema: Failed to parse JSON: syntax error",
        ),
        (
            Guide("json_schema", '{"type": "thing"}'),
            'guided_decoding_guide: invalid json_schema: Unsupported type "thing"',
        ),
        (
            Guide("regex", "(unclosed"),
            "guided_decoding_guide: invalid regex: Regex parsing error at position 10: The "
            "parenthesis is not closed.",
        ),
        (
            Guide("ebnf_grammar", 'root ::= missing "x"'),
            "guided_decoding_guide: invalid ebnf_grammar: EBNF parser error at line 1, column 10: "
            'Rule "missing" is not defined',
        ),
        (
            Guide("ebnf_grammar", 'start ::= "x"'),
            "guided_decoding_guide: invalid ebnf_grammar: EBNF parser error at line 1, column 1: "
            'The root rule with name "root" is not found',
        ),
    ],
)
def test_a_guide_that_does_not_compile_ends_the_request_with_a_field_violation(
    engine: Engine, tokenizer: TextTokenizer, guide: Guide, message: str
) -> None:
    text, last = run(engine, tokenizer, "Hi.", guide)

    assert text == ""
    assert last.finish_reason == FINISH_ERROR
    assert isinstance(last.error, InvalidRequestError)
    assert last.error.field == "guided_decoding_guide"
    assert str(last.error).startswith(message)
    assert len(str(last.error)) <= 400


@pytest.mark.parametrize(
    ("guide", "field", "message"),
    [
        (
            Guide("xml", "<a/>"),
            "guided_decoding_guide_type",
            "guided_decoding_guide_type: unknown guide type 'xml'",
        ),
        (
            Guide("regex", ""),
            "guided_decoding_guide",
            "guided_decoding_guide: is required for guide type regex",
        ),
        (
            Guide("", "x"),
            "guided_decoding_guide_type",
            "guided_decoding_guide_type: is required when guided_decoding_guide is set",
        ),
    ],
)
def test_a_malformed_guide_is_refused_at_submit(
    engine: Engine, tokenizer: TextTokenizer, guide: Guide, field: str, message: str
) -> None:
    request = EngineRequest(chat(tokenizer, "Hi."), 8, guide=guide)

    with pytest.raises(InvalidRequestError) as caught:
        engine.submit(request, Collector())
    assert caught.value.field == field
    assert str(caught.value).startswith(message)


def test_an_engine_without_grammars_refuses_guided_requests(
    model: LlamaModel, tokenizer: TextTokenizer
) -> None:
    engine = Engine(model, slots=1, max_len=64, threads=2)
    request = EngineRequest(chat(tokenizer, "Hi."), 8, guide=Guide("json"))

    with pytest.raises(InvalidRequestError, match="this engine has no guided decoding"):
        engine.validate(request)


# -- compiling off the decoding thread ----------------------------------------------------------


class HeldGrammars(Grammars):
    """Real grammars whose compilations wait until the test releases them: a stand-in for a
    schema that takes long to compile."""

    def __init__(self, base: Grammars) -> None:
        super().__init__(base.tokenizer_info)
        self.release = threading.Event()

    def constraint(self, guide: Guide, stop_ids: Sequence[int] | None = None) -> Constraint:
        assert self.release.wait(60)
        return super().constraint(guide, stop_ids)


def test_a_slow_compilation_stalls_neither_running_nor_new_sequences(
    model: LlamaModel, tokenizer: TextTokenizer, grammars: Grammars
) -> None:
    held = HeldGrammars(grammars)
    engine = Engine(model, slots=4, max_len=512, decode=tokenizer.decode, threads=2, grammars=held)
    engine.start()
    try:
        guided = Collector()
        engine.submit(
            EngineRequest(chat(tokenizer, "Hi."), 64, end_id=tokenizer.eos_id, guide=Guide("json")),
            guided,
        )
        free = Collector()
        engine.submit(EngineRequest(chat(tokenizer, "Count to ten."), 12), free)
        free.wait(60)
        assert len(free.tokens) == 12
        assert free.last.finish_reason == FINISH_LENGTH
        assert not guided.updates, "the guided request ran before its grammar was ready"
        assert engine.active == 0
        assert engine.waiting == 0

        held.release.set()
        guided.wait(60)
        assert guided.last.finish_reason == FINISH_STOP
        json.loads(tokenizer.decode(guided.tokens))
    finally:
        held.release.set()
        engine.stop()
        held.close()


def test_a_request_cancelled_while_its_guide_compiles_ends_once(
    model: LlamaModel, tokenizer: TextTokenizer, grammars: Grammars
) -> None:
    held = HeldGrammars(grammars)
    engine = Engine(model, slots=2, max_len=512, decode=tokenizer.decode, threads=2, grammars=held)
    engine.start()
    try:
        collector = Collector()
        request_id = engine.submit(
            EngineRequest(chat(tokenizer, "Hi."), 16, guide=Guide("json")), collector
        )
        assert engine.cancel(request_id)
        held.release.set()
        collector.wait()
        # The constraint arrives after the cancellation; the engine must drop the sequence.
        deadline = time.monotonic() + 10
        while (engine.active or engine.waiting) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [u.finish_reason for u in collector.updates] == [FINISH_CANCELLED]
        assert engine.active == 0
        assert engine.waiting == 0
    finally:
        held.release.set()
        engine.stop()
        held.close()


# -- the grammars' cache and the constraint -------------------------------------------------------


def test_compiled_guides_are_cached_failures_included(grammars: Grammars) -> None:
    small = Grammars(grammars.tokenizer_info, cache_size=2)
    try:
        first = Guide("regex", "a+")
        bad = Guide("regex", "(")
        small.compile(first)
        small.compile(first)
        assert small.compiled == 1
        for _ in range(2):
            with pytest.raises(GuideError, match="invalid regex"):
                small.compile(bad)
        assert small.compiled == 2
        small.compile(Guide("regex", "b+"))  # the cache holds two: the oldest goes
        small.compile(first)
        assert small.compiled == 4
        small.compile(Guide("regex", "b+"))
        assert small.compiled == 4
    finally:
        small.close()


def test_a_cached_guide_is_prepared_at_once(grammars: Grammars) -> None:
    guide = Guide("regex", "[0-9]{2}")
    grammars.compile(guide)

    prepared = grammars.prepare(guide, [2])

    assert prepared.done()  # no wait behind compilations on the pool
    assert not prepared.result().complete
    with pytest.raises(GuideError):
        grammars.compile(Guide("regex", "[0-9"))
    failed = grammars.prepare(Guide("regex", "[0-9"), [2])
    assert failed.done()
    assert isinstance(failed.exception(), GuideError)


@pytest.mark.parametrize("stop_id", [2, 31, 63])
def test_a_constraint_is_complete_when_only_a_stop_token_may_follow(
    grammars: Grammars, tokenizer: TextTokenizer, stop_id: int
) -> None:
    constraint = grammars.constraint(Guide("regex", "ab"), [stop_id])
    (a,) = tokenizer.encode("a")
    (b,) = tokenizer.encode("b")

    assert constraint.stop_ids == {stop_id}
    assert not constraint.complete
    assert constraint.advance(a)
    assert not constraint.complete
    assert not constraint.advance(a)  # rejected: only "b" may follow
    assert constraint.advance(b)
    assert constraint.complete


def test_a_constraint_masks_every_token_the_grammar_forbids(
    grammars: Grammars, tokenizer: TextTokenizer
) -> None:
    constraint = grammars.constraint(Guide("regex", "(yes|no)"), [2])
    logits = torch.zeros(grammars.vocab_size)

    constraint.apply(logits)

    allowed = torch.nonzero(logits == 0).flatten().tolist()
    assert allowed
    assert all(re.fullmatch("(y|ye|yes|n|no)", tokenizer.decode([t])) for t in allowed)
    assert tokenizer.encode("yes")[0] in allowed
    assert torch.isneginf(logits).sum() == grammars.vocab_size - len(allowed)
