"""What the quality-floor policy knows: each model's latest evaluation score for a prompt on
one dataset, taken from EvaluationService's finished reports.

A report's score is the mean of one of its scorers: the one the request names, else the run's
first quality scorer (any kind but latency and cost, whose values are seconds and money). A
model's score is that of its newest report on the dataset that has the scorer. A report counts
for the model its run pinned; a run that let the router choose counts for the one model that
served every generation, and not at all when several did.

This module imports neither grpc nor generated code.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class EvaluatedReport:
    """One finished evaluation report, as the router reads it."""

    report_id: str
    model: str
    """The model it evaluated ("" when no single model can be named)."""
    dataset: str
    prompt_version: int
    means: Mapping[str, float]
    """Each scorer's mean, by scorer name."""
    quality_scorers: tuple[str, ...]
    """The run's scorers that yield a quality in [0, 1] (not latency or cost), in run order."""


@dataclass(frozen=True, slots=True)
class ReportScore:
    """A model's latest score: which report, on which dataset, with which scorer."""

    model: str
    report_id: str
    dataset: str
    scorer: str
    score: float
    prompt_version: int


@dataclass(frozen=True, slots=True)
class QualityEvidence:
    """The scores the quality-floor policy ranks one request with.

    `dataset` is the dataset the scores come from ("" when none could be chosen). When
    `unavailable` is set the scores could not be read at all (it says why, for the route's
    fallback reason)."""

    prompt: str
    dataset: str
    scores: Mapping[str, ReportScore] = field(default_factory=dict)
    unavailable: str = ""


def latest_scores(
    reports_newest_first: Sequence[EvaluatedReport], scorer: str = ""
) -> dict[str, ReportScore]:
    """Each model's score from its newest report that has `scorer` (empty: the report's first
    quality scorer); reports without a model are skipped."""
    found: dict[str, ReportScore] = {}
    for report in reports_newest_first:
        if not report.model or report.model in found:
            continue
        name = scorer or next(iter(report.quality_scorers), "")
        if not name or name not in report.means:
            continue
        found[report.model] = ReportScore(
            model=report.model,
            report_id=report.report_id,
            dataset=report.dataset,
            scorer=name,
            score=report.means[name],
            prompt_version=report.prompt_version,
        )
    return found


def served_model(requested: str, served: Sequence[str]) -> str:
    """The model a run evaluated: the one it pinned, else the single model that served its
    successful generations ("" when none or several did)."""
    if requested:
        return requested
    models = {m for m in served if m}
    return models.pop() if len(models) == 1 else ""
