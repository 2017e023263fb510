"""Who counts a request's tokens (`services.inference.core.usage`): the backend when it reports
counts (Triton always, an OpenAI-compatible provider once it sends `usage`), else the engine
with the model's counter, from the start message on; the provider's counts win whenever they
come, on any chunk."""

from collections.abc import AsyncGenerator, Sequence

import pytest

from services.inference.core.engine import Delta, Event, Finished, InferenceEngine, Started
from services.inference.core.model import (
    BackendChunk,
    BackendKind,
    BackendRequest,
    BackendSpec,
    ChatTurn,
    Embeddings,
    FinishReason,
    GenerationRequest,
    ModelSpec,
    ModelState,
    Sampling,
    Task,
)
from services.inference.core.usage import EstimateCounter, UsageSource

TRITON = BackendSpec("triton-0", "127.0.0.1:1", "llm", 4)
OPENAI = BackendSpec("openai-0", "http://127.0.0.1:1/v1", "m", 4, BackendKind.OPENAI_COMPATIBLE)


class Scripted:
    """A backend that streams the chunks it is given and records the requests."""

    def __init__(self) -> None:
        self.chunks: list[BackendChunk] = []
        self.requests: list[BackendRequest] = []

    async def generate(
        self, spec: BackendSpec, request: BackendRequest
    ) -> AsyncGenerator[BackendChunk, None]:
        self.requests.append(request)
        for chunk in self.chunks:
            yield chunk

    async def embed(self, spec: BackendSpec, texts: Sequence[str]) -> Embeddings:
        raise NotImplementedError

    async def model_state(self, spec: BackendSpec) -> ModelState:
        return ModelState.READY


class WordCounter:
    """Counts words, so that its counts differ from every other rule here."""

    source = UsageSource.TOKENIZER

    def count_input(self, messages: Sequence[ChatTurn]) -> int:
        return 100 + sum(len(m.content.split()) for m in messages)

    def count_text(self, text: str) -> int:
        return max(len(text.split()), 1)

    def count_output(self, text: str, finish_reason: FinishReason) -> int:
        return len(text.split()) + (1 if finish_reason is FinishReason.STOP else 0)


class Templates:
    def render(self, model: str, messages: Sequence[ChatTurn]) -> str:
        return " ".join(m.content for m in messages)


@pytest.fixture
def backend() -> Scripted:
    return Scripted()


@pytest.fixture
def engine(backend: Scripted) -> InferenceEngine:
    def model(name: str, spec: BackendSpec) -> ModelSpec:
        return ModelSpec(name, Task.GENERATION, (spec,), 2048, 512, 16)

    return InferenceEngine(
        models=[model("local", TRITON), model("counted", OPENAI), model("estimated", OPENAI)],
        backend=backend,
        chat_templates=Templates(),
        counters={"counted": WordCounter()},
    )


async def _events(engine: InferenceEngine, model: str, text: str = "one two three") -> list[Event]:
    return [event async for event in engine.stream(GenerationRequest(model=model, text=text))]


def _uncounted(*texts: str, finish: FinishReason = FinishReason.STOP) -> list[BackendChunk]:
    """What an OpenAI-compatible provider that sends no usage streams: 0 input tokens, one
    output token per chunk, never `counted`."""
    chunks = [BackendChunk("", 0, 0, None, counted=False)]
    chunks += [BackendChunk(t, 0, i + 1, None, counted=False) for i, t in enumerate(texts)]
    return [*chunks, BackendChunk("", 0, len(texts), finish, counted=False)]


async def test_a_provider_without_usage_is_counted_with_the_models_counter(
    engine: InferenceEngine, backend: Scripted
) -> None:
    backend.chunks = _uncounted("The capital", " is", " Paris.")
    events = await _events(engine, "counted", "Capital of France?")

    assert events[0] == Started("counted", "openai-0", 103, UsageSource.TOKENIZER)
    assert [e.token_count for e in events if isinstance(e, Delta)] == [2, 1, 1]
    final = events[-1]
    assert isinstance(final, Finished)
    # The whole output counted again (not the deltas added up), plus the end token.
    assert (final.input_tokens, final.output_tokens) == (103, 4 + 1)
    assert final.usage_source is UsageSource.TOKENIZER


async def test_an_output_ending_with_a_stop_sequence_counts_no_end_token(
    engine: InferenceEngine, backend: Scripted
) -> None:
    """`transformers serve` streams the stop string and says `stop`, as for the end token."""
    backend.chunks = _uncounted("The capital", " is", " Paris")
    request = GenerationRequest(
        model="counted", text="Capital?", sampling=Sampling(stop=("Paris", "Rome"))
    )
    events = [event async for event in engine.stream(request)]
    final = events[-1]
    assert isinstance(final, Finished)
    assert final.finish_reason is FinishReason.STOP  # as the provider said
    assert final.output_tokens == 4  # the words, no end token


async def test_without_a_counter_the_estimate_counts(
    engine: InferenceEngine, backend: Scripted
) -> None:
    backend.chunks = _uncounted("ab", "cé", finish=FinishReason.LENGTH)
    events = await _events(engine, "estimated", "hello")

    assert isinstance(events[0], Started)
    assert events[0].input_tokens == 64 + len("user") + len("hello") + 8
    assert events[0].input_source is UsageSource.ESTIMATE
    assert [e.token_count for e in events if isinstance(e, Delta)] == [2, 3]
    final = events[-1]
    assert isinstance(final, Finished)
    assert final.output_tokens == 2 + 3 + 1  # bytes, plus an end token it cannot rule out
    assert final.usage_source is UsageSource.ESTIMATE


async def test_the_providers_usage_wins_when_it_comes_at_the_end(
    engine: InferenceEngine, backend: Scripted
) -> None:
    backend.chunks = [*_uncounted("a b c")[:-1], BackendChunk("", 12, 7, FinishReason.STOP)]
    events = await _events(engine, "counted")

    assert events[0] == Started("counted", "openai-0", 103, UsageSource.TOKENIZER)
    final = events[-1]
    assert isinstance(final, Finished)
    assert (final.input_tokens, final.output_tokens, final.usage_source) == (
        12,
        7,
        UsageSource.PROVIDER,
    )


async def test_running_provider_usage_counts_every_delta(
    engine: InferenceEngine, backend: Scripted
) -> None:
    """Some providers send usage with every chunk: those counts are used from the start."""
    backend.chunks = [
        BackendChunk("a b c", 9, 2, None),
        BackendChunk(" d", 9, 3, None),
        BackendChunk("", 9, 3, FinishReason.STOP),
    ]
    events = await _events(engine, "counted")

    assert events[0] == Started("counted", "openai-0", 9, UsageSource.PROVIDER)
    assert [e.token_count for e in events if isinstance(e, Delta)] == [2, 1]
    final = events[-1]
    assert isinstance(final, Finished)
    assert (final.output_tokens, final.usage_source) == (3, UsageSource.PROVIDER)


async def test_triton_counts_are_never_replaced(engine: InferenceEngine, backend: Scripted) -> None:
    backend.chunks = [BackendChunk(" Paris", 5, 1, None), BackendChunk("", 5, 1, FinishReason.STOP)]
    events = await _events(engine, "local")

    assert events[0] == Started("local", "triton-0", 5, UsageSource.PROVIDER)
    final = events[-1]
    assert isinstance(final, Finished)
    assert (final.input_tokens, final.output_tokens, final.usage_source) == (
        5,
        1,
        UsageSource.PROVIDER,
    )


TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog.",
    "cjk": "数字と漢字のテキスト",
    "emoji": "🙂🙃🙂 ✓",
    "punctuation": "!@#$%^&*()_+{}|:<>?~`-=[]\\;',./",
    "digits": "3.14159265358979 2718281828",
    "whitespace": "a\tb\nc   d\r\n",
}


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_the_estimate_never_undercounts_the_served_tokenizers(text: str) -> None:
    """SmolLM2's byte-level BPE and Gemma 3's SentencePiece (byte fallback), and SmolLM2's
    chat template around the text: the estimate is at least their counts."""
    from tokenizers import Tokenizer

    from services.inference.adapters.tokenizer_counter import TokenizerCounter
    from tests.support.gemma import gemma_dir
    from tests.support.smollm2 import smollm2_dir

    estimate = EstimateCounter()
    smollm2 = TokenizerCounter.from_directory(smollm2_dir())
    gemma = Tokenizer.from_file(str(gemma_dir() / "tokenizer.json"))
    messages = [ChatTurn("system", text), ChatTurn("user", text)]
    assert estimate.count_input(messages) >= smollm2.count_input(messages)
    assert estimate.count_input([ChatTurn("user", text)]) >= smollm2.count_input(
        [ChatTurn("user", text)]
    )
    for finish in FinishReason:
        assert estimate.count_output(text, finish) >= smollm2.count_output(text, finish)
    gemma_tokens = len(gemma.encode(text, add_special_tokens=False).ids)
    assert estimate.count_output(text, FinishReason.STOP) >= gemma_tokens + 1
    assert estimate.count_text(text) >= max(smollm2.count_text(text), gemma_tokens)
