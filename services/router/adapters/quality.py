"""Evaluation scores for the quality-floor policy, read from EvaluationService (and the
prompt's gate dataset from PromptService), cached per tenant, prompt and dataset.

Freshness: an entry is used for `refresh_s` seconds (`router.quality_scores_seconds`, 10 s by
default), then read again on the next route that needs it, so a report written anywhere
reaches every router replica within that bound. When EvaluationService runs in the router's
process (the embedded default) a finished run also pushes: the runner calls `invalidate` for
its prompt, and the next route reads the new report. While EvaluationService cannot be
reached (each call waits at most `timeout_s`, 2 s, and a failed read is not retried for
`refresh_s`), the last scores read are used; a prompt never read then has none (the policy
falls back to cost, saying why).

Calls are made in the route's own task: in process the caller's principal (its tenant) holds,
and over gRPC `metadata_for(tenant)` gives the internal credentials.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeVar

import grpc
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2, evaluation_service_pb2_grpc
from genai.prompt.v1 import prompt_service_pb2, prompt_service_pb2_grpc

from services.router.core.quality import (
    EvaluatedReport,
    QualityEvidence,
    latest_scores,
    served_model,
)

if TYPE_CHECKING:
    EvaluationStub = evaluation_service_pb2_grpc.EvaluationServiceAsyncStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    EvaluationStub = evaluation_service_pb2_grpc.EvaluationServiceStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceStub

_logger = logging.getLogger(__name__)

RUNS_PAGE: Final = 100
MAX_RUN_PAGES: Final = 5
"""Runs looked at per prompt, newest first, in pages of 100: the latest 500."""
MAX_REPORTS: Final = 20
"""Reports read per (prompt, dataset) refresh: the newest per model, and at most this many."""
MAX_ENTRIES: Final = 10_000
"""Cached (tenant, prompt, dataset) entries; the least recently used go first."""
_QUALITY_KINDS: Final = frozenset(
    {"exact_match", "contains", "regex", "json_schema", "embedding_similarity", "llm_judge"}
)
"""Scorer kinds (the `Scorer.kind` oneof) whose values are a quality in [0, 1]."""

T = TypeVar("T")


class QualityScores(Protocol):
    """Where the router's servicer gets the scores of a quality-floor route."""

    async def evidence(
        self, tenant_id: str, prompt: str, dataset: str, scorer: str
    ) -> QualityEvidence:
        """Each model's latest score for `prompt` on `dataset` (empty: the prompt's gate
        dataset) by `scorer` (empty: each run's first quality scorer); never raises for an
        unreachable service (the evidence says it is unavailable)."""
        ...


class NoQualityScores:
    """The score source of a router that cannot reach EvaluationService."""

    async def evidence(
        self, tenant_id: str, prompt: str, dataset: str, scorer: str
    ) -> QualityEvidence:
        return QualityEvidence(
            prompt=prompt,
            dataset=dataset,
            unavailable="the router has no EvaluationService (router.evaluation_target)",
        )


@dataclass(slots=True)
class _Entry(Generic[T]):
    value: T | None
    read_at: float
    error: Exception | None = None
    """The last read failed with this (and `value` is the last good one, if any)."""


class _Cache(Generic[T]):
    """Entries with the time they were read, least recently used first out, and one read at
    a time per key (concurrent routes wait for the same read).

    A failed read is remembered like a good one, for the same time: the last good value is
    served meanwhile (or the failure raised again at once), so routes do not each wait for a
    service that is down."""

    def __init__(self, refresh_s: float, clock: Callable[[], float]) -> None:
        self._refresh_s = refresh_s
        self._clock = clock
        self._entries: OrderedDict[tuple[str, ...], _Entry[T]] = OrderedDict()
        self._reading: dict[tuple[str, ...], asyncio.Future[T]] = {}

    async def get(self, key: tuple[str, ...], read: Callable[[], Awaitable[T]]) -> T:
        """The fresh entry, or a new read of it; a failed read serves the last good value
        (and raises when there is none)."""
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry.read_at < self._refresh_s:
            self._entries.move_to_end(key)
            return self._value(key, entry)
        pending = self._reading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(read())
            self._reading[key] = pending
            pending.add_done_callback(lambda done: self._store(key, done))
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            raise
        except Exception:
            if entry is None or entry.value is None:
                raise
            _logger.warning("serving stale evaluation scores for %s", key, exc_info=True)
            return entry.value

    def _value(self, key: tuple[str, ...], entry: _Entry[T]) -> T:
        if entry.value is None:
            assert entry.error is not None  # a good read always has a value
            raise entry.error
        if entry.error is not None:
            _logger.debug("serving stale evaluation scores for %s", key)
        return entry.value

    def _store(self, key: tuple[str, ...], done: "asyncio.Future[T]") -> None:
        if self._reading.get(key) is done:
            del self._reading[key]
        else:
            return  # invalidated while reading: what it read may predate the change
        if done.cancelled():
            return
        error = done.exception()
        if error is None:
            entry = _Entry[T](done.result(), self._clock())
        elif isinstance(error, Exception):
            previous = self._entries.get(key)
            entry = _Entry[T](previous.value if previous else None, self._clock(), error)
        else:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)

    def invalidate(self, prefix: tuple[str, ...]) -> None:
        """Forgets every entry (and read in progress) whose key starts with `prefix`."""
        for key in [k for k in self._entries if k[: len(prefix)] == prefix]:
            del self._entries[key]
        for key in [k for k in self._reading if k[: len(prefix)] == prefix]:
            del self._reading[key]


class EvaluationScores:
    """`QualityScores` over EvaluationService's runs and reports (see the module docstring).

    `evaluation()` and `prompts()` give the stubs (in process or over gRPC); `prompts` may be
    None, and then only requests that name a `quality_dataset` have scores."""

    def __init__(
        self,
        evaluation: Callable[[], EvaluationStub],
        prompts: Callable[[], PromptStub] | None = None,
        metadata_for: Callable[[str], Sequence[tuple[str, str]]] = lambda _tenant: (),
        *,
        refresh_s: float = 10.0,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._evaluation = evaluation
        self._prompts = prompts
        self._metadata_for = metadata_for
        self._timeout_s = timeout_s
        self._reports: _Cache[tuple[EvaluatedReport, ...]] = _Cache(refresh_s, clock)
        self._gates: _Cache[str] = _Cache(refresh_s, clock)
        self.reads = 0
        """Report lists read from EvaluationService (for tests and metrics)."""

    def invalidate(self, tenant_id: str, prompt: str) -> None:
        """A run of `prompt` finished: its scores are read again on the next route."""
        self._reports.invalidate((tenant_id, prompt))

    async def evidence(
        self, tenant_id: str, prompt: str, dataset: str, scorer: str
    ) -> QualityEvidence:
        """See `QualityScores.evidence`."""
        if not prompt:
            return QualityEvidence(
                prompt, dataset, unavailable="the request names no prompt to read scores of"
            )
        metadata = tuple(self._metadata_for(tenant_id)) or None
        try:
            if not dataset:
                dataset = await self._gates.get(
                    (tenant_id, prompt), lambda: self._gate_dataset(prompt, metadata)
                )
                if not dataset:
                    return QualityEvidence(
                        prompt,
                        "",
                        unavailable=f"prompt {prompt} has no evaluation gate and the request "
                        "names no quality_dataset",
                    )
            reports = await self._reports.get(
                (tenant_id, prompt, dataset), lambda: self._read(prompt, dataset, metadata)
            )
        except grpc.aio.AioRpcError as error:
            return QualityEvidence(
                prompt,
                dataset,
                unavailable=f"evaluation scores unavailable ({error.code().name}: "
                f"{error.details()})",
            )
        return QualityEvidence(prompt, dataset, latest_scores(reports, scorer))

    async def _gate_dataset(self, prompt: str, metadata: Sequence[tuple[str, str]] | None) -> str:
        if self._prompts is None:
            return ""
        try:
            response = await self._prompts().GetPrompt(
                prompt_service_pb2.GetPromptRequest(name=prompt),
                timeout=self._timeout_s,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return ""
            raise
        found = response.prompt
        return found.evaluation_gate.dataset if found.HasField("evaluation_gate") else ""

    async def _read(
        self, prompt: str, dataset: str, metadata: Sequence[tuple[str, str]] | None
    ) -> tuple[EvaluatedReport, ...]:
        """The newest finished report of each model for `prompt` on `dataset`, newest first."""
        self.reads += 1
        stub = self._evaluation()
        found: list[EvaluatedReport] = []
        pinned: set[str] = set()
        token = ""
        for _ in range(MAX_RUN_PAGES):
            page = await stub.ListEvaluationRuns(
                evaluation_service_pb2.ListEvaluationRunsRequest(
                    prompt=prompt, page_size=RUNS_PAGE, page_token=token
                ),
                timeout=self._timeout_s,
                metadata=metadata,
            )
            for run in page.runs:
                if len(found) >= MAX_REPORTS:
                    return tuple(found)
                if (
                    run.state != evaluation_pb2.RUN_STATE_SUCCEEDED
                    or run.dataset != dataset
                    or not run.report_id
                    or (run.model and run.model in pinned)  # a newer report of it was read
                ):
                    continue
                report = (
                    await stub.GetEvaluationReport(
                        evaluation_service_pb2.GetEvaluationReportRequest(id=run.report_id),
                        timeout=self._timeout_s,
                        metadata=metadata,
                    )
                ).report
                found.append(_evaluated(run, report))
                if run.model:
                    pinned.add(run.model)
            token = page.next_page_token
            if not token:
                break
        return tuple(found)


def _evaluated(
    run: evaluation_pb2.EvaluationRun, report: evaluation_pb2.EvaluationReport
) -> EvaluatedReport:
    return EvaluatedReport(
        report_id=report.id,
        model=served_model(run.model, [r.model for r in report.results if not r.error]),
        dataset=report.dataset,
        prompt_version=report.prompt_version,
        means={s.scorer: s.mean for s in report.summaries if s.count > 0},
        quality_scorers=tuple(
            s.name for s in run.scorers if s.WhichOneof("kind") in _QUALITY_KINDS
        ),
    )
