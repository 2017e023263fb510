"""Counts tokens with a model's own tokenizer (Hugging Face `tokenizers`), for OpenAI-compatible
providers that report no usage: the prompt as the provider renders it with the tokenizer
directory's chat template, the output re-tokenized, and the end-of-sequence token when the
model stopped on it. Equal to the provider's counts whenever the generated tokens are the
canonical tokenization of their text (checked against `transformers serve` in the system
tests)."""

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from services.inference.adapters.chat_templates import CompiledChatTemplate, load_chat_template
from services.inference.core.model import ChatTurn, FinishReason
from services.inference.core.usage import UsageSource

PREPARED_PREFIX = "prepared:"
"""`tokenizer: prepared:<model>` names the tokenizer of a model prepared by `scripts/setup`."""


class TokenizerCounter:
    """A `TokenCounter` over one tokenizer directory: `tokenizer.json`, and the chat template
    (`chat_template.jinja` or `tokenizer_config.json`)."""

    def __init__(self, tokenizer: Tokenizer, template: CompiledChatTemplate) -> None:
        self._tokenizer = tokenizer
        self._template = template

    @classmethod
    def from_directory(cls, directory: Path) -> "TokenizerCounter":
        """Loads `directory`'s tokenizer and chat template; ValueError when either is missing
        or unreadable."""
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ValueError(f"{directory} has no tokenizer.json")
        try:
            tokenizer = Tokenizer.from_str(tokenizer_file.read_text(encoding="utf-8"))
        except Exception as error:  # the tokenizers library raises plain Exceptions
            raise ValueError(f"{tokenizer_file} is not a tokenizer: {error}") from None
        # OpenAI-compatible providers take chat input only (text goes as one user message):
        # counting it needs the template the provider renders it with.
        template = load_chat_template(str(directory))
        return cls(tokenizer, CompiledChatTemplate(template))

    @property
    def source(self) -> UsageSource:
        """Always TOKENIZER."""
        return UsageSource.TOKENIZER

    def count_input(self, messages: Sequence[ChatTurn]) -> int:
        """Tokens of the rendered prompt; the template writes the special tokens itself."""
        return self._count(self._template.render(messages))

    def count_text(self, text: str) -> int:
        """Tokens of `text` on its own, at least 1."""
        return max(self._count(text), 1)

    def count_output(self, text: str, finish_reason: FinishReason) -> int:
        """Tokens of the output, plus the end-of-sequence token when the model stopped on it."""
        return self._count(text) + (1 if finish_reason is FinishReason.STOP else 0)

    def _count(self, text: str) -> int:
        if not text:
            return 0
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


def tokenizer_directory(location: str) -> Path:
    """The directory a `tokenizer` (or `chat_template`) setting names: `prepared:<model>` (a
    model `scripts/setup` prepared: `smollm2`, `gemma3-270m`) or a path. ValueError for an
    unknown or unprepared model, saying what to run."""
    if not location.startswith(PREPARED_PREFIX):
        return Path(location)
    from genai_triton.prepare import MODEL_NAME, PrepareError, prepared_model_dir

    name = location.removeprefix(PREPARED_PREFIX)
    try:
        return prepared_model_dir(model=MODEL_NAME if name == "smollm2" else name)
    except PrepareError as error:
        raise ValueError(str(error)) from None
