"""The in-flight batcher: requests join and leave one running batch between decoding steps.

One thread owns the model and the KV cache and loops:

1. take new requests and cancellations (a cancelled sequence leaves now, its slot is free);
2. give free slots to waiting requests, first come first served;
3. prefill: run at most `prefill_chunk` prompt tokens of the sequences that are being
   prefilled (a long prompt takes several turns, so running streams keep their pace); a
   sequence whose prompt is done samples its first token and joins the batch;
4. decode: one batched forward for every sequence in the batch, then per sequence: the
   grammar's mask (guided decoding), penalties and banned words, a greedy or seeded choice,
   the stop conditions (end id, stop token sequences, stop strings on the decoded text, max
   tokens, the cache length, a complete grammar), and an `Update` delivered to the request's
   callback (from this thread: callbacks must be quick).

Finish reasons: `stop` (the end id, or a grammar that allows nothing more; the end id is not
part of the output), `stop_words` (a stop token sequence or stop string appeared; the tokens
that made it are part of the output, the text is cut by the detokenizer), `length` (max
tokens), `cancelled`, and `error` (the request failed after `submit` returned, e.g. its guide
does not compile; `Update.error` says why).

Guided decoding (a request with a `guide`, an engine with `Grammars`): the guide is compiled
and the sequence's `Constraint` made on the grammars' pool, off this thread; the sequence
joins the waiting line when that is done. At each step the tokens that would leave the grammar
get -inf before penalties, bans and the choice (when bans leave no token, the grammar wins);
the chosen token advances the grammar, and once the grammar allows nothing but the end token
the sequence ends with `stop`. Unconstrained sequences never touch any of it.

`Engine.run_once()` is one pass of that loop, so tests can drive the batcher step by step
without the thread.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from genai_triton.cpus import available_cpus
from genai_triton.engine.model import Decoder, KVCache
from genai_triton.engine.prefix_cache import PrefixCache
from genai_triton.engine.sampling import SamplingParams, SequenceSampler
from genai_triton.guides import GUIDE_TYPE, Guide, GuideError, read_guide

if TYPE_CHECKING:
    from genai_triton.engine.guided import Constraint, Grammars

__all__ = [
    "FINISH_CANCELLED",
    "FINISH_ERROR",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "FINISH_STOP_WORDS",
    "ContextLengthExceededError",
    "Engine",
    "EngineError",
    "EngineRequest",
    "InvalidRequestError",
    "Update",
]

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_STOP_WORDS = "stop_words"
FINISH_CANCELLED = "cancelled"
FINISH_ERROR = "error"

_log = logging.getLogger(__name__)
_ids = itertools.count(1)


class EngineError(Exception):
    """A request the engine refuses."""


class InvalidRequestError(EngineError):
    """A bad field; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ContextLengthExceededError(EngineError):
    def __init__(self, prompt_tokens: int, max_tokens: int, context: int) -> None:
        super().__init__(
            f"prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}: "
            f"{prompt_tokens + max_tokens} exceeds the context of {context} tokens"
        )
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context = context


@dataclass(frozen=True, slots=True)
class EngineRequest:
    prompt_ids: Sequence[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    end_id: int | None = None
    """Generation stops when this token is chosen (it is not returned); None: never."""
    stop_sequences: Sequence[Sequence[int]] = ()
    """Token sequences that end generation when the output ends with one."""
    stop_strings: Sequence[str] = ()
    """Texts that end generation when the decoded output contains one (needs the engine's
    `decode`); they match across token boundaries."""
    bad_words: Sequence[Sequence[int]] = ()
    """Token sequences never generated."""
    guide: Guide | None = None
    """What the output must match (guided decoding); None: unconstrained."""


@dataclass(frozen=True, slots=True)
class Update:
    """What one step produced for one request."""

    request_id: str
    token_ids: tuple[int, ...]
    """Tokens new in this step (empty when the step only finished the request)."""
    num_output_tokens: int
    """Output tokens so far (the end id excluded)."""
    num_input_tokens: int
    finish_reason: str | None = None
    """None while the request runs; set on its last update."""
    error: EngineError | None = None
    """Why the request failed (finish reason `error`)."""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


Callback = Callable[[Update], None]


class _Sequence:
    __slots__ = (
        "callback",
        "cancelled",
        "closed",
        "constraint",
        "delivery",
        "generated",
        "length",
        "max_stop_chars",
        "pending",
        "prefilled",
        "request",
        "request_id",
        "sampler",
        "slot",
        "stop_search_from",
        "submitted",
    )

    def __init__(
        self, request_id: str, request: EngineRequest, callback: Callback, vocab: int
    ) -> None:
        self.request_id = request_id
        self.request = request
        self.callback = callback
        self.sampler = SequenceSampler(
            request.sampling, request.prompt_ids, vocab, request.bad_words
        )
        self.slot = -1
        self.prefilled = 0
        """Prompt tokens whose keys and values are in the cache."""
        self.length = 0
        """Tokens in the cache."""
        self.pending = -1
        """The token chosen last, fed at the next decoding step."""
        self.generated: list[int] = []
        self.cancelled = False
        self.closed = False
        """The last update was delivered; nothing more is."""
        self.delivery = threading.RLock()
        self.max_stop_chars = max((len(s) for s in request.stop_strings), default=0)
        self.stop_search_from = 0
        self.submitted = time.monotonic()
        self.constraint: Constraint | None = None
        """The grammar state of a guided sequence, set before it joins the waiting line."""


class Engine:
    """In-flight batching over a `Decoder` (`LlamaModel`, `GemmaModel`; see the module doc).

    `slots`: sequences decoded together at most (the KV cache holds that many); `max_len`:
    the context in tokens (prompt + output), at most the model's `max_position_embeddings`;
    `decode`: token ids -> text, needed for stop strings; `threads`: torch threads for
    decoding steps (default: the CPU count); `prefill_threads`: torch threads for prompts
    (default: `threads`). Prefill is compute-bound and scales with cores; a decoding step is
    short and bound by memory, so where other processes share the cores (Triton, its Python
    stubs, a client) one decoding thread avoids stalls at OpenMP barriers.
    `prefix_cache_tokens`: prompt tokens whose keys/values are kept for reuse by later prompts
    that start the same way (`PrefixCache`; 0 turns reuse off). `grammars`: compiles the guides
    of guided requests (`genai_triton.engine.guided.Grammars`, for the model's vocabulary);
    None: guided requests are refused.
    """

    def __init__(
        self,
        model: Decoder,
        *,
        slots: int = 16,
        max_len: int | None = None,
        prefill_chunk: int = 512,
        decode: Callable[[Sequence[int]], str] | None = None,
        threads: int | None = None,
        prefill_threads: int | None = None,
        prefix_cache_tokens: int = 4096,
        grammars: Grammars | None = None,
    ) -> None:
        limit = model.config.max_position_embeddings
        max_len = limit if max_len is None else max_len
        if not 2 <= max_len <= limit:
            raise ValueError(f"max_len must be in [2, {limit}], got {max_len}")
        if prefill_chunk < 1:
            raise ValueError("prefill_chunk must be >= 1")
        self.model = model
        self.cache = KVCache(model.config, slots, max_len)
        self.slots = slots
        self.max_len = max_len
        self.prefill_chunk = prefill_chunk
        self.threads = threads or available_cpus()
        self.prefill_threads = prefill_threads or self.threads
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self._decode_text = decode
        self._vocab = model.config.vocab_size
        if grammars is not None and grammars.vocab_size != self._vocab:
            raise ValueError(
                f"the grammars are for {grammars.vocab_size} tokens, the model has {self._vocab}"
            )
        self._grammars = grammars
        self._inbox: queue.SimpleQueue[tuple[str, _Sequence | None]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._waiting: deque[_Sequence] = deque()
        self._prefilling: list[_Sequence] = []
        self._decoding: dict[int, _Sequence] = {}  # slot -> sequence
        self._free_slots = list(range(slots))
        heapq.heapify(self._free_slots)
        self._known: dict[str, _Sequence] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0
        """Decoding steps run so far."""
        self.generated_tokens = 0

    # -- public API ---------------------------------------------------------------------------

    def validate(self, request: EngineRequest) -> None:
        """Raises `InvalidRequestError` or `ContextLengthExceededError` for a request the
        engine would refuse."""
        prompt = len(request.prompt_ids)
        if prompt < 1:
            raise InvalidRequestError("text_input", "the prompt has no tokens")
        if request.max_tokens < 1:
            raise InvalidRequestError(
                "max_tokens", f"max_tokens must be >= 1, got {request.max_tokens}"
            )
        bad_ids = [t for t in request.prompt_ids if not 0 <= t < self._vocab]
        if bad_ids:
            raise InvalidRequestError(
                "input_ids", f"token id {bad_ids[0]} is not in the vocabulary"
            )
        for problem in request.sampling.problems():
            raise InvalidRequestError(problem.split(" ", 1)[0], problem)
        if request.stop_strings and self._decode_text is None:
            raise InvalidRequestError("stop_words", "this engine cannot match stop strings")
        if request.guide is not None:
            if self._grammars is None:
                raise InvalidRequestError(
                    GUIDE_TYPE, f"{GUIDE_TYPE}: this engine has no guided decoding"
                )
            try:
                read_guide(request.guide.type, request.guide.text)
            except GuideError as error:
                raise InvalidRequestError(error.field, str(error)) from None
        if prompt + request.max_tokens > self.max_len:
            raise ContextLengthExceededError(prompt, request.max_tokens, self.max_len)

    def submit(
        self, request: EngineRequest, callback: Callback, request_id: str | None = None
    ) -> str:
        """Queues a request; `callback` gets its `Update`s from the engine thread, the last one
        with a finish reason. Returns the request id. Raises `EngineError` at once for a
        request that cannot run."""
        self.validate(request)
        request_id = request_id or f"req-{next(_ids)}"
        sequence = _Sequence(request_id, request, callback, self._vocab)
        with self._lock:
            if request_id in self._known:
                raise InvalidRequestError("request_id", f"request {request_id} is running")
            self._known[request_id] = sequence
        if request.guide is not None and self._grammars is not None:
            stop_ids = None if request.end_id is None else [request.end_id]
            try:
                prepared = self._grammars.prepare(request.guide, stop_ids)
            except RuntimeError as error:  # the pool is shut down: the engine is stopping
                with self._lock:
                    self._known.pop(request_id, None)
                raise EngineError(f"guided decoding is not available: {error}") from None
            prepared.add_done_callback(lambda done: self._prepared(sequence, done))
            return request_id
        self._inbox.put(("submit", sequence))
        self._wakeup.set()
        return request_id

    def _prepared(self, sequence: _Sequence, prepared: Future[Constraint]) -> None:
        """A guided sequence's constraint is ready (on the grammars' pool, or at once): the
        sequence joins the waiting line, or fails with its guide's error."""
        try:
            sequence.constraint = prepared.result()
        except GuideError as error:
            self._close(sequence, FINISH_ERROR, (), InvalidRequestError(error.field, str(error)))
            return
        except BaseException as error:  # cancelled by a shutdown, or a bug in xgrammar
            _log.error("guided decoding of %s failed: %r", sequence.request_id, error)
            self._close(sequence, FINISH_ERROR, (), EngineError(f"guided decoding failed: {error}"))
            return
        self._inbox.put(("submit", sequence))
        self._wakeup.set()

    def cancel(self, request_id: str) -> bool:
        """Stops a request: its last update (finish reason `cancelled`) is delivered now, from
        the caller's thread, and it leaves the batch (its slot freed) before the next decoding
        step. False when the id is unknown or already finished."""
        with self._lock:
            sequence = self._known.get(request_id)
        if sequence is None:
            return False
        sequence.cancelled = True
        self._close(sequence, FINISH_CANCELLED, ())
        self._wakeup.set()
        return True

    def generate(self, request: EngineRequest, request_id: str | None = None) -> Iterator[Update]:
        """Submits a request and yields its updates (for callers with their own thread)."""
        updates: queue.SimpleQueue[Update] = queue.SimpleQueue()
        request_id = self.submit(request, updates.put, request_id)
        try:
            while True:
                update = updates.get()
                yield update
                if update.finished:
                    return
        finally:
            self.cancel(request_id)

    @property
    def active(self) -> int:
        """Sequences holding a slot (prefilling or decoding)."""
        return len(self._decoding) + len(self._prefilling)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def warm_up(self, batch_sizes: Sequence[int] = (1, 2)) -> None:
        """Runs a short prefill and decoding steps of the given batch sizes once, so that the
        first requests do not pay for oneDNN's kernel creation. Call before `start`."""
        rows = [b for b in batch_sizes if 1 <= b <= self.slots]
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            prompt = torch.zeros(8, dtype=torch.long)
            self.model.prefill(self.cache, self.cache.scratch, prompt, 0)
            for size in rows:
                scratch = torch.full((size,), self.cache.scratch, dtype=torch.long)
                zeros = torch.zeros(size, dtype=torch.long)
                self.model.decode(self.cache, zeros, zeros, scratch, 1)

    def start(self, *, warm_up: bool = False) -> None:
        """Starts the engine thread (idempotent); with `warm_up`, the thread first runs
        `warm_up` and this returns once it is done (raising what it raised).

        Warm up here rather than on the caller's thread when the engine uses several torch
        threads: GNU OpenMP keeps one team of worker threads per thread that runs parallel
        work, and once there are more workers than CPUs it stops spinning between parallel
        regions, so decoding steps (hundreds of small regions) got 1.6x slower on a 2-CPU
        machine whose main thread had warmed up with 2 threads. Callers should also keep
        their own thread's torch threads at 1 (`genai_triton.serving` does)."""
        if self._thread is not None:
            return
        self._stopping = False
        ready: Future[None] = Future()

        def run() -> None:
            if warm_up:
                try:
                    self.warm_up()
                except BaseException as error:
                    ready.set_exception(error)
                    return
            ready.set_result(None)
            self._run()

        self._thread = threading.Thread(target=run, name="genai-engine", daemon=True)
        self._thread.start()
        ready.result()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancels everything and ends the engine thread."""
        with self._lock:
            running = list(self._known)
        for request_id in running:
            self.cancel(request_id)
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            try:
                busy = self.run_once()
            except Exception:  # pragma: no cover - a bug; keep serving the others
                _log.exception("engine step failed; failing the running requests")
                self._fail_all()
                busy = False
            if self._stopping and not self._known and not self.active and not self._waiting:
                return
            if not busy:
                self._wakeup.wait(0.5)
                self._wakeup.clear()

    def run_once(self) -> bool:
        """One pass: intake, cancellations, admission, a prefill turn, a decoding step.
        Returns whether anything is still running or waiting."""
        with torch.inference_mode():
            self._intake()
            self._drop_cancelled()
            self._admit()
            if self._prefilling:
                self._prefill_turn()
            if self._decoding:
                self._decode_step()
        # Sequences whose guide is being compiled are not work yet: they arrive by the inbox.
        return not self._inbox.empty() or bool(self._waiting) or self.active > 0

    def _intake(self) -> None:
        while True:
            try:
                _, sequence = self._inbox.get_nowait()
            except queue.Empty:
                return
            if sequence is not None:
                self._waiting.append(sequence)

    def _drop_cancelled(self) -> None:
        if any(s.cancelled for s in self._waiting):
            kept: deque[_Sequence] = deque()
            for sequence in self._waiting:
                if sequence.cancelled:
                    self._finish(sequence, FINISH_CANCELLED, ())
                else:
                    kept.append(sequence)
            self._waiting = kept
        for sequence in [s for s in self._prefilling if s.cancelled]:
            self._prefilling.remove(sequence)
            self._finish(sequence, FINISH_CANCELLED, ())
        for slot, sequence in list(self._decoding.items()):
            if sequence.cancelled:
                del self._decoding[slot]
                self._finish(sequence, FINISH_CANCELLED, ())

    def _admit(self) -> None:
        while self._waiting and self._free_slots:
            sequence = self._waiting.popleft()
            sequence.slot = heapq.heappop(self._free_slots)
            reused = self.prefix_cache.restore(
                self.cache, sequence.slot, sequence.request.prompt_ids
            )
            sequence.prefilled = sequence.length = reused
            self._prefilling.append(sequence)

    def _prefill_turn(self) -> None:
        if self.prefill_threads != self.threads:
            torch.set_num_threads(self.prefill_threads)
            try:
                self._prefill_chunks()
            finally:
                torch.set_num_threads(self.threads)
        else:
            self._prefill_chunks()

    def _prefill_chunks(self) -> None:
        """Up to `prefill_chunk` prompt tokens, from as many prefilling sequences as fit, in one
        forward (`prefill_many`): their matrix products run as one batch."""
        budget = self.prefill_chunk
        chunks: list[tuple[_Sequence, int]] = []
        for sequence in self._prefilling:
            if budget <= 0:
                break
            start = sequence.prefilled
            end = min(len(sequence.request.prompt_ids), start + budget)
            chunks.append((sequence, end))
            budget -= end - start
        segments = [
            (
                sequence.slot,
                torch.tensor(
                    sequence.request.prompt_ids[sequence.prefilled : end], dtype=torch.long
                ),
                sequence.prefilled,
            )
            for sequence, end in chunks
        ]
        logits = self.model.prefill_many(self.cache, segments)
        for (sequence, end), row in zip(chunks, logits, strict=True):
            prompt = sequence.request.prompt_ids
            sequence.prefilled = sequence.length = end
            if end == len(prompt):
                self.prefix_cache.store(self.cache, sequence.slot, prompt)
                self._prefilling.remove(sequence)
                self._decoding[sequence.slot] = sequence
                self._accept(sequence, self._choose(sequence, row))

    def _decode_step(self) -> None:
        rows = max(self._decoding) + 1
        scratch = self.cache.scratch
        tokens = [0] * rows
        positions = [0] * rows
        writes = [scratch] * rows
        length = 0
        for slot, sequence in self._decoding.items():
            tokens[slot] = sequence.pending
            positions[slot] = sequence.length
            writes[slot] = slot
            length = max(length, sequence.length + 1)
        logits = self.model.decode(
            self.cache,
            torch.tensor(tokens, dtype=torch.long),
            torch.tensor(positions, dtype=torch.long),
            torch.tensor(writes, dtype=torch.long),
            length,
        )
        self.steps += 1
        sequences = list(self._decoding.items())
        for _, sequence in sequences:
            sequence.length += 1
        simple = [
            slot
            for slot, s in sequences
            if s.sampler.params.greedy
            and not s.sampler.needs_logits_processing
            and s.constraint is None
        ]
        greedy: dict[int, int] = {}
        if simple:
            index = torch.tensor(simple, dtype=torch.long)
            greedy = dict(
                zip(simple, logits.index_select(0, index).argmax(-1).tolist(), strict=True)
            )
        for slot, sequence in sequences:
            token = greedy.get(slot)
            if token is None:
                token = self._choose(sequence, logits[slot])
            self._accept(sequence, token)

    # -- per sequence -------------------------------------------------------------------------

    def _choose(self, sequence: _Sequence, logits: torch.Tensor) -> int:
        sampler = sequence.sampler
        constraint = sequence.constraint
        if constraint is not None:
            logits = logits.clone()
            constraint.apply(logits)
            if sampler.needs_logits_processing:
                allowed = logits.clone()
                sampler.process(logits)
                if bool(torch.isneginf(logits).all()):  # bans forbid all the grammar allows
                    logits = allowed
        elif sampler.needs_logits_processing:
            logits = logits.clone()
            sampler.process(logits)
        if sampler.params.greedy:
            return int(logits.argmax())
        return sampler.choose(logits)

    def _accept(self, sequence: _Sequence, token: int) -> None:
        """Adds the chosen token and applies the stop conditions."""
        request = sequence.request
        constraint = sequence.constraint
        if (request.end_id is not None and token == request.end_id) or (
            constraint is not None and token in constraint.stop_ids
        ):
            self._release(sequence)
            self._finish(sequence, FINISH_STOP, ())
            return
        if constraint is not None and not constraint.advance(token):
            # The mask allowed it, so the grammar and its mask disagree: end, do not go astray.
            self._finish(
                sequence,
                FINISH_ERROR,
                (),
                EngineError(f"the grammar rejected token {token} that its mask allowed"),
            )
            return
        sequence.generated.append(token)
        sequence.sampler.observe(token)
        sequence.pending = token
        self.generated_tokens += 1
        reason: str | None = None
        if self._hits_stop(sequence):
            reason = FINISH_STOP_WORDS
        elif len(sequence.generated) >= request.max_tokens or sequence.length + 1 > self.max_len:
            reason = FINISH_LENGTH
        elif constraint is not None and constraint.complete:
            reason = FINISH_STOP
        if reason is not None:
            self._release(sequence)
            self._finish(sequence, reason, (token,))
            return
        self._deliver(
            sequence,
            Update(
                sequence.request_id,
                (token,),
                len(sequence.generated),
                len(request.prompt_ids),
            ),
        )

    def _hits_stop(self, sequence: _Sequence) -> bool:
        generated = sequence.generated
        for stop in sequence.request.stop_sequences:
            size = len(stop)
            if size and len(generated) >= size and tuple(generated[-size:]) == tuple(stop):
                return True
        if sequence.request.stop_strings and self._decode_text is not None:
            text = self._decode_text(generated)
            start = max(0, sequence.stop_search_from - sequence.max_stop_chars)
            window = text[start:]
            if any(stop and stop in window for stop in sequence.request.stop_strings):
                return True
            # Characters before a trailing replacement character may still change.
            stable = len(text.rstrip("\ufffd"))
            sequence.stop_search_from = stable
        return False

    def _release(self, sequence: _Sequence) -> None:
        if sequence.slot >= 0:
            self._decoding.pop(sequence.slot, None)
            heapq.heappush(self._free_slots, sequence.slot)
            sequence.slot = -1

    def _finish(
        self,
        sequence: _Sequence,
        reason: str,
        tokens: tuple[int, ...],
        error: EngineError | None = None,
    ) -> None:
        """Ends a sequence on the engine thread: frees its slot and sends its last update."""
        self._release(sequence)
        self._close(sequence, reason, tokens, error)

    def _close(
        self,
        sequence: _Sequence,
        reason: str,
        tokens: tuple[int, ...],
        error: EngineError | None = None,
    ) -> None:
        """Delivers the last update once (from any thread)."""
        with sequence.delivery:
            if sequence.closed:
                return
            with self._lock:
                self._known.pop(sequence.request_id, None)
            self._deliver(
                sequence,
                Update(
                    sequence.request_id,
                    tokens,
                    len(sequence.generated),
                    len(sequence.request.prompt_ids),
                    reason,
                    error,
                ),
            )
            sequence.closed = True

    def _deliver(self, sequence: _Sequence, update: Update) -> None:
        with sequence.delivery:
            if sequence.closed:
                return
            try:
                sequence.callback(update)
            except Exception:
                _log.exception("callback of %s failed; cancelling it", sequence.request_id)
                sequence.cancelled = True

    def _fail_all(self) -> None:
        everything = [*self._waiting, *self._prefilling, *self._decoding.values()]
        self._waiting.clear()
        self._prefilling.clear()
        for sequence in everything:
            with contextlib.suppress(Exception):
                self._finish(sequence, FINISH_CANCELLED, ())
