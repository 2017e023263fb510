"""Where a process's router reads the evaluation scores of quality-floor routes: a configured
EvaluationService (its own setting, else the gateway's target), else the one in the process,
else none (the policy then falls back to cost); and the targets it dials are checked at start
like every other."""

from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from services.platform.runner import (
    SERVICE_NAMES,
    ChannelPool,
    _Clients,
    _quality_scores,
    remote_targets,
)
from services.platform.settings import PlatformSettings
from services.router.adapters.quality import EvaluationScores


def _settings(services: list[str], **more: Any) -> PlatformSettings:
    return PlatformSettings.model_validate({"services": services, **more})


def _scores(settings: PlatformSettings) -> EvaluationScores | None:
    pool = ChannelPool(factory=lambda _target: None)  # type: ignore[arg-type, return-value]
    hosted = tuple(SERVICE_NAMES[key] for key in settings.services)
    return _quality_scores(
        settings,
        hosted,
        lambda: "127.0.0.1:1",
        _Clients(pool, pool, TracerProvider()),
        "",
        lambda _name: None,
    )


def test_a_router_without_an_evaluation_service_has_no_scores() -> None:
    assert _scores(_settings(["router", "inference", "gateway"])) is None


def test_the_router_reads_the_evaluation_service_it_is_given_or_hosts() -> None:
    assert isinstance(_scores(_settings(["router", "evaluation"])), EvaluationScores)
    configured = _settings(
        ["router"], router={"evaluation_target": "10.0.0.1:50051", "quality_scores_seconds": 3}
    )
    assert isinstance(_scores(configured), EvaluationScores)
    beside_a_gateway = _settings(
        ["router", "gateway"], gateway={"targets": {"evaluation": "dns:///evaluation:50051"}}
    )
    assert isinstance(_scores(beside_a_gateway), EvaluationScores)


def test_router_targets_are_remote_targets() -> None:
    settings = _settings(
        ["router"],
        router={"evaluation_target": "10.0.0.1:50051", "prompt_target": "10.0.0.2:50051"},
    )
    assert remote_targets(settings) == {
        "router.evaluation_target": "10.0.0.1:50051",
        "router.prompt_target": "10.0.0.2:50051",
    }
