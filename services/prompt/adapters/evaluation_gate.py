"""The evaluation gate of protected labels, answered by EvaluationService: a version passes when
one of its finished runs on the gate's dataset has a report whose every gated scorer's mean
reaches its threshold."""

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import grpc
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2, evaluation_service_pb2_grpc

from services.common.status import remote_error
from services.prompt.core.registry import GateVerdict

if TYPE_CHECKING:
    EvaluationStub = evaluation_service_pb2_grpc.EvaluationServiceAsyncStub
else:
    EvaluationStub = evaluation_service_pb2_grpc.EvaluationServiceStub

MAX_PAGES: Final = 10
"""Runs looked at, newest first, in pages of 100: the gate considers the latest 1,000 runs."""
esb = evaluation_service_pb2


class EvaluationReportGate:
    """`services.prompt.core.registry.EvaluationGate` over EvaluationService's runs and reports.

    `stub()` gives the service (in process or over gRPC); `metadata_for(tenant)` the credentials
    of calls made on a tenant's behalf (empty in process, where the caller's principal holds)."""

    def __init__(
        self,
        stub: Callable[[], EvaluationStub],
        metadata_for: Callable[[str], Sequence[tuple[str, str]]] = lambda _tenant: (),
        *,
        timeout_s: float = 5.0,
    ) -> None:
        self._stub = stub
        self._metadata_for = metadata_for
        self._timeout_s = timeout_s

    async def check(
        self, tenant_id: str, prompt: str, version: int, gate: Mapping[str, Any]
    ) -> GateVerdict:
        """See `EvaluationGate.check`."""
        dataset = str(gate.get("dataset", ""))
        thresholds = [
            (str(t.get("scorer", "")), float(t.get("min_mean", 0.0)))
            for t in gate.get("thresholds", [])
        ]
        stub = self._stub()
        metadata = tuple(self._metadata_for(tenant_id)) or None
        failing: GateVerdict | None = None
        token = ""
        try:
            for _ in range(MAX_PAGES):
                page = await stub.ListEvaluationRuns(
                    esb.ListEvaluationRunsRequest(prompt=prompt, page_size=100, page_token=token),
                    timeout=self._timeout_s,
                    metadata=metadata,
                )
                for run in page.runs:
                    if not _candidate(run, dataset, version):
                        continue
                    report = (
                        await stub.GetEvaluationReport(
                            esb.GetEvaluationReportRequest(id=run.report_id),
                            timeout=self._timeout_s,
                            metadata=metadata,
                        )
                    ).report
                    misses = _misses(report, thresholds)
                    if not misses:
                        return GateVerdict(True, report.id, f"passes report {report.id}")
                    if failing is None:
                        failing = GateVerdict(
                            False, report.id, f"fails report {report.id}: {'; '.join(misses)}"
                        )
                token = page.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as error:
            raise remote_error(
                error,
                service="genai.evaluation.v1.EvaluationService",
                what="the evaluation service",
            ) from None
        return failing or GateVerdict(
            False, "", f"has no finished evaluation run on dataset {dataset!r}"
        )


def _candidate(run: evaluation_pb2.EvaluationRun, dataset: str, version: int) -> bool:
    return (
        run.state == evaluation_pb2.RUN_STATE_SUCCEEDED
        and run.dataset == dataset
        and run.resolved_prompt_version == version
        and bool(run.report_id)
    )


def _misses(
    report: evaluation_pb2.EvaluationReport, thresholds: Sequence[tuple[str, float]]
) -> list[str]:
    means = {summary.scorer: summary.mean for summary in report.summaries}
    misses = []
    for scorer, minimum in thresholds:
        mean = means.get(scorer)
        if mean is None:
            misses.append(f"it has no scorer {scorer!r}")
        elif mean < minimum:
            misses.append(f"{scorer} mean {mean:.3f} < {minimum:.3f}")
    return misses
