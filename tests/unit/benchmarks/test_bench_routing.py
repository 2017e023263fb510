"""`scripts/bench routing` without a platform (the run itself: tests/system/
test_bench_quick_runs.py): prices from measured CPU per token, the datasets and what each
policy asks for, the summaries (Wilson intervals for pass/fail scores), the report and plot."""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from genai.common.v1 import routing_pb2

from benchmarks import routing
from benchmarks.pricing import (
    CpuCost,
    Probe,
    cpu_cost,
    price_per_million_tokens,
)
from benchmarks.routing import (
    CatalogModel,
    Generation,
    ModelReport,
    RoutingConfig,
    RoutingRun,
)
from services.prompt.files import load_prompt_file
from services.router.config import CatalogSettings, catalog_from_settings


def test_price_per_million_tokens_is_cpu_time_at_the_cpu_hour_price() -> None:
    # 72 ms of CPU per token at 0.05 USD per CPU-hour: 0.072 * 0.05 / 3600 * 1e6 = 1.0 USD.
    assert price_per_million_tokens(0.072) == Decimal("1.000")
    assert price_per_million_tokens(0.002) == Decimal("0.028")
    assert price_per_million_tokens(0.072, Decimal("0.10")) == Decimal("2.000")
    assert price_per_million_tokens(-0.0001) == Decimal("0.000")  # noise around zero


def test_cpu_cost_separates_prefill_from_decode() -> None:
    # 0.05 s fixed per request, 2 ms per input token, 70 ms per output token.
    def probe(inputs: int, outputs: int) -> Probe:
        return Probe(inputs, outputs, 0.05 + 0.002 * inputs + 0.07 * outputs)

    cost = cpu_cost(
        [probe(12, 1), probe(12, 1), probe(12, 1)],
        [probe(12, 64), probe(12, 60), probe(12, 64)],
        [probe(412, 1)],
    )

    assert cost.input_cpu_s_per_token == pytest.approx(0.002)
    assert cost.output_cpu_s_per_token == pytest.approx(0.07)
    assert cost.prices() == (Decimal("0.028"), Decimal("0.972"))
    with pytest.raises(ValueError, match="differ"):
        cpu_cost([probe(12, 1)], [probe(12, 1)], [probe(412, 1)])
    with pytest.raises(ValueError, match="at least one"):
        cpu_cost([], [probe(12, 8)], [probe(412, 1)])


def test_the_datasets_are_the_samples_and_the_completion_one() -> None:
    datasets = {name: routing.load_dataset(name) for name in routing.DATASETS}

    assert datasets["chat-basics"].needs == {"chat"}
    assert datasets["chat-basics"].quality_scorer == "answer"
    assert datasets["extract-invoice"].quality_scorer == "schema"
    assert datasets["extract-invoice"].output_schema is not None
    completion = datasets["complete-facts"]
    assert completion.prompt == "complete"
    assert completion.text_prompt
    assert completion.needs == {"completion"}
    assert len(completion.examples) == 16
    assert all(set(e["inputs"]) == {"text"} and e["reference"] for e in completion.examples)
    assert len(routing.load_dataset("chat-basics", limit=2).examples) == 2


def test_the_dev_catalog_is_a_valid_catalog_with_zero_routable() -> None:
    import yaml

    catalog = catalog_from_settings(
        CatalogSettings.model_validate(yaml.safe_load(routing.dev_catalog()))
    )
    names = {m.name: m for m in catalog.models}
    assert set(names) == {routing.SMOLLM2, routing.ZERO}
    assert not names[routing.ZERO].pinned_only
    assert all("completion" in m.capabilities for m in catalog.models)


def test_capped_prompts_load_and_ask_for_at_most_the_cap(tmp_path: Path) -> None:
    folder = routing.capped_prompts(tmp_path / "prompts", 16)

    files = sorted(folder.glob("*.yaml"))
    assert {f.name for f in files} == {p.name for p in routing.PROMPTS.glob("*.yaml")}
    for path in files:
        version = load_prompt_file(path).version
        assert version.parameters.max_tokens <= 16, path.name


def _run() -> RoutingRun:
    run = RoutingRun(RoutingConfig(floor=0.5), "dev", (routing.SMOLLM2, routing.ZERO))
    run.catalog = {
        routing.SMOLLM2: CatalogModel(
            routing.SMOLLM2,
            frozenset({"chat", "completion", "json_output"}),
            Decimal("0.03"),
            Decimal("1"),
        ),
        routing.ZERO: CatalogModel(
            routing.ZERO, frozenset({"chat", "completion"}), Decimal(0), Decimal(0)
        ),
    }
    return run


def test_policies_pin_the_largest_and_cheapest_eligible_or_ask_the_router() -> None:
    run = _run()
    chat = routing.load_dataset("chat-basics")
    invoice = routing.load_dataset("extract-invoice")

    assert routing.pinned_model("always-largest", chat, run) == routing.SMOLLM2
    assert routing.pinned_model("always-cheapest", chat, run) == routing.ZERO
    # json_output: only SmolLM2 can take extract-invoice.
    assert routing.eligible(invoice, run) == [routing.SMOLLM2]
    assert routing.pinned_model("always-cheapest", invoice, run) == routing.SMOLLM2
    cost = routing.preferences("cost", chat, run)
    assert cost is not None
    assert cost.policy == routing_pb2.ROUTING_POLICY_COST
    floor = routing.preferences("quality-floor", chat, run)
    assert floor is not None
    assert (floor.policy, floor.min_quality_score, floor.quality_dataset, floor.quality_scorer) == (
        routing_pb2.ROUTING_POLICY_QUALITY_FLOOR,
        0.5,
        "chat-basics",
        "answer",
    )


def _generations(run: RoutingRun) -> None:
    for index in range(8):
        run.generations.append(
            Generation(
                "chat-basics",
                "cost",
                index,
                routing.ZERO,
                1.0 if index < 5 else 0.0,
                Decimal(0),
                0.01 * (index + 1),
            )
        )
        run.generations.append(
            Generation(
                "chat-basics",
                "quality-floor",
                index,
                routing.SMOLLM2,
                1.0,
                Decimal("0.000002"),
                1.0,
            )
        )
    run.generations.append(
        Generation("chat-basics", "quality-floor", 8, "", None, Decimal(0), 9.0, error="boom")
    )
    run.reports.append(
        ModelReport(
            "chat-basics", routing.SMOLLM2, "ev-1", "answer", 1.0, (0.6, 1.0), 8, Decimal("0.00001")
        )
    )
    run.decisions[("chat-basics", "quality-floor")] = ["smollm2: quality_floor: best, ..."]


def test_summaries_use_wilson_for_pass_fail_scores_and_skip_failures() -> None:
    run = _run()
    _generations(run)

    cost = routing.summarize(run.of("chat-basics", "cost"))
    assert cost.mean == pytest.approx(0.625)
    assert cost.interval is not None
    assert (round(cost.interval[0], 3), round(cost.interval[1], 3)) == (0.306, 0.863)
    assert cost.p50_latency_s == pytest.approx(0.045)
    floor = routing.summarize(run.of(None, "quality-floor"))
    assert (floor.n, floor.failed, floor.cost) == (9, 1, Decimal("0.000016"))
    assert floor.p50_latency_s == 1.0  # the failure's time is not a latency
    assert floor.models == {routing.SMOLLM2: 8, "(failed)": 1}


def test_report_json_and_plot(tmp_path: Path) -> None:
    run = _run()
    _generations(run)
    run.costs[routing.SMOLLM2] = CpuCost(0.002, 0.07)
    run.price_errors[routing.ZERO] = "no reading"
    started = datetime(2026, 1, 1, tzinfo=UTC)
    env = {"cpu_count": 2, "load_average_at_start": [0.5], "load_average_at_end": [1.0]}

    result = routing.build_result(run, started, 10.0, env)
    text = routing.report(run, result)

    assert "0.625 [0.306, 0.863]" in text
    assert "ev-1" in text
    assert "0.028 / 0.972" in text  # measured prices beside the catalog's
    assert "quality-floor vs cost" in text
    document = result.to_json_dict()
    assert document["benchmark"] == "routing"
    assert {m["variant"] for m in document["measurements"]} == {"cost", "quality-floor"}
    png = tmp_path / "routing.png"
    routing.plot(png, run, "subtitle")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_triton_group_finds_the_tritonserver_child(tmp_path: Path) -> None:
    for pid, command, parent in ((10, "python", 1), (11, "tritonserver", 10), (12, "sh", 10)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({command}) S {parent} {pid} 0 0")
    (tmp_path / "self").mkdir()

    assert routing.triton_group(10, tmp_path) == 11
    assert routing.triton_group(99, tmp_path) is None
