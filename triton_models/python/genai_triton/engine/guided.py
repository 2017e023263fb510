"""Guided decoding with xgrammar: compiled grammars and the per-sequence token mask.

- `Grammars` (one per engine): compiles a `Guide` for the model's vocabulary, keeps the last
  `cache_size` results (failures too) in an LRU keyed by (type, guide), and prepares each
  constrained sequence's `Constraint` (`prepare`): on a small thread pool when the guide must
  be compiled, so a slow schema never stalls the decoding thread or the thread that receives
  requests; at once when it is cached.
- `Constraint` (one per sequence, used by the decoding thread only): masks a row of logits to
  the tokens that keep the output inside the grammar, advances with each chosen token, and
  says when the grammar allows nothing but the end token.

Guide types map to xgrammar as TensorRT-LLM maps them: `json` is any JSON object or array (as
xgrammar's built-in JSON grammar), `json_schema` compiles the schema (strict: no properties or
items the schema does not name), `regex` the regular expression and `ebnf_grammar` the GBNF
text (start rule `root`). JSON is written compactly (`, ` and `: ` between items, no other
whitespace outside strings): with any whitespace allowed, small models such as SmolLM2-135M
fill the output with newlines until `max_tokens`.

This module imports xgrammar (and through it transformers), so the engine imports it only when
guided decoding is set up.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import xgrammar as xgr

from genai_triton.guides import (
    EBNF_GRAMMAR,
    GUIDE,
    JSON,
    JSON_SCHEMA,
    REGEX,
    Guide,
    GuideError,
    read_guide,
)

__all__ = ["Constraint", "Grammars"]

_ANY_JSON = '{"type": ["object", "array"]}'
"""The `json` guide type: xgrammar's built-in JSON grammar (an object or an array), but
compact like the schemas' JSON."""
_LOCATION = re.compile(r"^\[[\d:.]+\] \S+:\d+: ")
_CHECK_FAILED = re.compile(r"^Check failed: .*? is false: ")
_MAX_WHY = 300


class Constraint:
    """The grammar state of one sequence: the mask of the next token, kept filled."""

    __slots__ = ("_bitmask", "_matcher", "_others", "_restricts", "stop_ids")

    def __init__(
        self, compiled: xgr.CompiledGrammar, vocab_size: int, stop_ids: Sequence[int] | None
    ) -> None:
        self._matcher = xgr.GrammarMatcher(
            compiled, override_stop_tokens=list(stop_ids) if stop_ids else None
        )
        self.stop_ids = frozenset(self._matcher.stop_token_ids)
        """Tokens that end the sequence once the grammar is complete (the end id)."""
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        others = torch.full_like(self._bitmask, -1)
        for token in self.stop_ids:
            word, bit = divmod(token, 32)
            # Bit 31 of an int32 word is its sign bit.
            others[0, word] &= ~(1 << bit) if bit < 31 else 0x7FFFFFFF
        self._others = others
        """Every token but the stop tokens, as a bitmask."""
        self._restricts = self._matcher.fill_next_token_bitmask(self._bitmask)

    def apply(self, logits: torch.Tensor) -> None:
        """Sets the logits of the tokens the grammar forbids next to -inf (one row, in
        place)."""
        if self._restricts:
            xgr.apply_token_bitmask_inplace(logits, self._bitmask)

    def advance(self, token: int) -> bool:
        """Accepts the chosen token and fills the next mask; False when the grammar rejects
        the token (the state is unchanged then)."""
        if not self._matcher.accept_token(token):
            return False
        self._restricts = self._matcher.fill_next_token_bitmask(self._bitmask)
        return True

    @property
    def complete(self) -> bool:
        """The output is a whole sentence of the grammar that nothing but a stop token may
        follow."""
        if not self._matcher.is_completed():
            return False
        return not bool(torch.bitwise_and(self._bitmask, self._others).any())


class Grammars:
    """Compiles guides for one vocabulary (see the module doc). `threads`: compilations run at
    once; `cache_size`: compiled guides kept."""

    def __init__(
        self, tokenizer_info: xgr.TokenizerInfo, *, cache_size: int = 64, threads: int = 1
    ) -> None:
        if cache_size < 0 or threads < 1:
            raise ValueError("cache_size must be >= 0 and threads >= 1")
        self.tokenizer_info = tokenizer_info
        self.vocab_size = int(tokenizer_info.vocab_size)
        # Our own LRU replaces xgrammar's cache: it also remembers guides that fail.
        self._compiler = xgr.GrammarCompiler(tokenizer_info, max_threads=1, cache_enabled=False)
        self._cache: OrderedDict[Guide, xgr.CompiledGrammar | GuideError] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="genai-grammar")
        self.compiled = 0
        """Guides compiled so far (cache misses)."""

    @classmethod
    def for_tokenizer(
        cls,
        tokenizer_file: Path,
        *,
        vocab_size: int,
        stop_ids: Sequence[int],
        cache_size: int = 64,
        threads: int = 1,
    ) -> Grammars:
        """Grammars for a `tokenizer.json`; `vocab_size` is the width of the model's logits,
        `stop_ids` the tokens that end a sequence whose grammar is complete."""
        from transformers import PreTrainedTokenizerFast

        fast: Any = PreTrainedTokenizerFast  # transformers 5 leaves its constructor untyped
        tokenizer = fast(tokenizer_file=str(tokenizer_file))
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_ids) or None
        )
        return cls(info, cache_size=cache_size, threads=threads)

    def compile(self, guide: Guide) -> xgr.CompiledGrammar:
        """The compiled grammar of `guide` (from the cache when it is there); raises
        `GuideError` for a guide that is malformed or does not compile."""
        with self._lock:
            known = self._cache.get(guide)
            if known is not None:
                self._cache.move_to_end(guide)
        if known is None:
            known = self._compile(guide)
            with self._lock:
                self.compiled += 1
                if self._cache_size:
                    self._cache[guide] = known
                    self._cache.move_to_end(guide)
                    while len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        if isinstance(known, GuideError):
            raise GuideError(known.field, known.why)
        return known

    def _compile(self, guide: Guide) -> xgr.CompiledGrammar | GuideError:
        try:
            checked = read_guide(guide.type, guide.text)
            if checked is None:
                return GuideError(GUIDE, "there is no guide")
            if checked.type == JSON:
                return self._compiler.compile_json_schema(
                    _ANY_JSON, any_whitespace=False, strict_mode=False
                )
            if checked.type == JSON_SCHEMA:
                return self._compiler.compile_json_schema(checked.text, any_whitespace=False)
            if checked.type == REGEX:
                return self._compiler.compile_regex(checked.text)
            if checked.type == EBNF_GRAMMAR:
                return self._compiler.compile_grammar(checked.text)
        except GuideError as error:
            return error
        except Exception as error:  # xgrammar reports every bad guide as a RuntimeError
            return GuideError(GUIDE, f"invalid {guide.type}: {_why(error)}")
        raise AssertionError(f"unhandled guide type {guide.type}")  # pragma: no cover

    def constraint(self, guide: Guide, stop_ids: Sequence[int] | None = None) -> Constraint:
        """A new sequence's `Constraint` (compiles first when needed); `stop_ids` override the
        tokenizer's stop tokens."""
        return Constraint(self.compile(guide), self.vocab_size, stop_ids)

    def prepare(self, guide: Guide, stop_ids: Sequence[int] | None = None) -> Future[Constraint]:
        """`constraint` on the pool, or at once on the caller's thread when the guide's grammar
        is cached (a known schema never waits behind a slow new one): the future fails with
        `GuideError` for a bad guide."""
        with self._lock:
            cached = guide in self._cache
        if not cached:
            return self._pool.submit(self.constraint, guide, stop_ids)
        done: Future[Constraint] = Future()
        try:
            done.set_result(self.constraint(guide, stop_ids))
        except Exception as error:
            done.set_exception(error)
        return done

    def close(self) -> None:
        """Stops the pool (compilations under way finish)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _why(error: Exception) -> str:
    """xgrammar's message without its time stamp, source location and echo of the input."""
    text = str(error).strip()
    text = _LOCATION.sub("", text)
    text = _CHECK_FAILED.sub("", text)
    text = text.split(" The JSON string is:", 1)[0]
    text = text.splitlines()[0].strip() if text else "it does not compile"
    return text if len(text) <= _MAX_WHY else text[: _MAX_WHY - 3] + "..."
