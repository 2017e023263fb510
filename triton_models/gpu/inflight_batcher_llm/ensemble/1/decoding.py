"""Detokenization and finish reasons, without Triton (only the standard library: the
tokenizer arrives as a `decode(ids) -> str` callable).

- ensemble/1/model.py feeds a `RequestDecoder` the tokens of each tensorrt_llm response
  (streaming: only the new ones) and sends back the text it returns.
- postprocessing/1/model.py (through a symlink to this file) is stateless: `text_delta`.
"""

from collections.abc import Callable, Collection, Sequence

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_STOP_WORDS = "stop_words"

REPLACEMENT_CHARACTER = "\ufffd"
"""What a tokenizer decodes an incomplete UTF-8 sequence to."""


class IncrementalDetokenizer:
    """Text deltas for a growing token sequence.

    Decoding each token on its own loses the space a SentencePiece token carries and splits
    multi-byte characters across byte-level tokens. Instead, every `push` decodes a short window
    (the tokens of the previous delta plus the new ones) and returns what the new tokens add to
    that window's text; text ending in an incomplete character (U+FFFD) is held back until
    the next token completes it. The concatenated deltas equal `decode(all tokens)`.
    """

    def __init__(self, decode: Callable[[list[int]], str], context: Sequence[int] = ()) -> None:
        """`context`: tokens already shown (e.g. the prompt), decoded only for spacing."""
        self._decode = decode
        self.ids: list[int] = list(context)
        self._prefix_offset = max(len(self.ids) - 4, 0)
        self._read_offset = len(self.ids)

    def push(self, tokens: Sequence[int]) -> str:
        """Adds tokens; returns the text that is complete now (possibly empty)."""
        self.ids.extend(tokens)
        if len(self.ids) == self._read_offset:
            return ""
        shown = self._decode(self.ids[self._prefix_offset : self._read_offset])
        text = self._decode(self.ids[self._prefix_offset :])
        if len(text) <= len(shown) or text.endswith(REPLACEMENT_CHARACTER):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return text[len(shown) :]

    def flush(self) -> str:
        """The text still held back (an incomplete character stays U+FFFD); call at the end."""
        if len(self.ids) == self._read_offset:
            return ""
        shown = self._decode(self.ids[self._prefix_offset : self._read_offset])
        text = self._decode(self.ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self.ids)
        return text[len(shown) :]


# A copy of genai_triton.facade.StopWordFilter and _overlap (this model cannot import the
# facade at run time); tests/unit/triton_models/test_stop_word_filter_copies.py keeps them equal.
class StopWordFilter:
    """Text-level stop words for streamed text: `push` returns the part of the new text that can
    no longer become the start of a stop word, holding back a possible partial match, and says
    when a stop word appeared (the stop word and what follows are never returned)."""

    def __init__(self, stop_words: Sequence[str]) -> None:
        self._words = tuple(word for word in stop_words if word)
        self._held = ""

    def push(self, delta: str) -> tuple[str, bool]:
        """Adds generated text; returns (text to emit now, whether a stop word was reached)."""
        if not self._words:
            return delta, False
        text = self._held + delta
        hits = [index for index in (text.find(word) for word in self._words) if index >= 0]
        if hits:
            self._held = ""
            return text[: min(hits)], True
        keep = max((_overlap(text, word) for word in self._words), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The text held back; call once generation ended without a stop word."""
        held, self._held = self._held, ""
        return held


def _overlap(text: str, word: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `word`."""
    for size in range(min(len(word) - 1, len(text)), 0, -1):
        if text.endswith(word[:size]):
            return size
    return 0


def visible_text(text: str, stop_words: Sequence[str], *, final: bool) -> tuple[str, bool]:
    """What of `text` may be shown, and whether it reached a stop word: the text before the
    first stop word; unless `final`, without a trailing incomplete character (U+FFFD) or a
    possible beginning of a stop word."""
    words = [word for word in stop_words if word]
    hits = [index for index in (text.find(word) for word in words) if index >= 0]
    if hits:
        return text[: min(hits)], True
    if final:
        return text, False
    text = text.rstrip(REPLACEMENT_CHARACTER)
    keep = max((_overlap(text, word) for word in words), default=0)
    return text[: len(text) - keep], False


def text_delta(
    decode: Callable[[list[int]], str],
    ids: Sequence[int],
    previous: int,
    stop_words: Sequence[str] = (),
    *,
    final: bool = False,
) -> tuple[str, bool]:
    """Stateless: the text `ids` (all output ids so far) add to what `ids[:previous]` showed,
    and whether a stop word was reached."""
    shown = visible_text(decode(list(ids[:previous])), stop_words, final=False)[0]
    now, stopped = visible_text(decode(list(ids)), stop_words, final=final)
    return now[len(shown) :], stopped


def parse_word_list(word_list: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """The words of one TensorRT-LLM word list `[2, n]` (ids; cumulative end offsets, -1 pad)."""
    if len(word_list) != 2:
        return []
    ids, offsets = list(word_list[0]), list(word_list[1])
    words, start = [], 0
    for end in offsets:
        if end < 0:
            break
        if end > start:
            words.append(tuple(ids[start:end]))
        start = end
    return words


def ends_with_any(ids: Sequence[int], words: Sequence[tuple[int, ...]]) -> bool:
    """Whether `ids` ends with one of `words` (TensorRT-LLM's own stop criterion)."""
    return any(0 < len(word) <= len(ids) and tuple(ids[-len(word) :]) == word for word in words)


class RequestDecoder:
    """The detokenization state of one request: tokens seen, text sent, finish reason.

    `feed` takes the new tokens of each tensorrt_llm response and returns the text to send;
    `finish` is called when tensorrt_llm's responses ended without `feed` having finished.
    Finish reasons (empty until the request ends):
    - `stop_words`: the text reached a stop word (text-level, so also where the engine's
      token-level match missed it: the caller must then stop the engine), or the tokens end
      with a stop word's ids, which is how TensorRT-LLM itself stops;
    - `stop`: the tokens end with `end_id` or one of `other_end_ids` (not shown, not
      counted), or the responses ended otherwise (TensorRT-LLM does not return the end token;
      it just ends the request);
    - `length`: `max_tokens` tokens were generated.
    `generated` counts the tokens the engine returned, stop-word tokens included, end tokens
    excluded.
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        *,
        end_id: int,
        max_tokens: int,
        stop_words: Sequence[str] = (),
        stop_ids: Sequence[tuple[int, ...]] = (),
        context: Sequence[int] = (),
        other_end_ids: Collection[int] = (),
    ) -> None:
        """`context`: tokens shown before the output (e.g. the prompt), for spacing only.
        `other_end_ids`: further tokens that end a turn (a model's generation_config may list
        several, e.g. Llama 3's <|eot_id|>); the engine stops on them only as stop words."""
        self._detokenizer = IncrementalDetokenizer(decode, context)
        self._context_length = len(context)
        self._stops = StopWordFilter(stop_words)
        self._stop_ids = list(stop_ids)
        self._end_id = end_id
        self._end_ids = {end_id, *other_end_ids}
        self._max_tokens = max_tokens
        self.generated = 0
        self.finish_reason = ""
        self.engine_finished = False
        """Whether the tokens show that TensorRT-LLM ended the request itself (end token, stop
        word ids, max_tokens); False after a text-only stop-word match: stop the engine."""

    def feed(self, tokens: Sequence[int]) -> str:
        """Adds the new tokens of one response; returns the text to send with it. Sets
        `finish_reason` when these tokens end the request."""
        if self.finish_reason:
            return ""
        tokens = list(tokens)
        generated_ids = [*self._detokenizer.ids[self._context_length :], *tokens]
        token_stop = ends_with_any(generated_ids, self._stop_ids)
        last = tokens[-1] if tokens else None
        ended = last in self._end_ids
        if ended:
            tokens.pop()
        self.generated += len(tokens)
        text, stopped = self._stops.push(self._detokenizer.push(tokens))
        self.engine_finished = (
            last == self._end_id or token_stop or self.generated >= self._max_tokens
        )
        if ended:
            self.finish_reason = FINISH_STOP
        elif stopped or token_stop:
            self.finish_reason = FINISH_STOP_WORDS
        elif self.generated >= self._max_tokens:
            self.finish_reason = FINISH_LENGTH
        else:
            return text
        return text if stopped else text + self._flush()

    def finish(self) -> str:
        """The responses ended: returns the text still held back and sets `finish_reason`."""
        if self.finish_reason:
            return ""
        self.engine_finished = True
        self.finish_reason = FINISH_LENGTH if self.generated >= self._max_tokens else FINISH_STOP
        return self._flush()

    def _flush(self) -> str:
        text, stopped = self._stops.push(self._detokenizer.flush())
        if stopped:
            self.finish_reason = FINISH_STOP_WORDS
            return text
        return text + self._stops.flush()
