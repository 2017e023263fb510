"""The `gateway` benchmark's pure parts: its settings, the settings and catalog it hands
`genai serve`, the requests of each path, overheads and targets, the counters it reads, and
the report and JSON of a synthetic run (no Triton, no platform; the PNG is left to real runs:
matplotlib alone takes seconds)."""

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from genai.common.v1 import chat_pb2, generation_pb2
from genai.gateway.v1 import gateway_pb2
from genai.prompt.v1 import prompt_service_pb2

from benchmarks import __main__ as registry
from benchmarks.cli import write_outputs
from benchmarks.gateway import (
    DEFAULT,
    DIRECT,
    GATEWAY,
    HOP,
    HTTP,
    INFERENCE,
    MESSAGE,
    QUICK,
    GatewayConfig,
    GatewayRun,
    PathScenario,
    added,
    catalog_text,
    chat_body,
    chatml,
    completion_request,
    counter_lines,
    gateway_targets,
    generation_request,
    http_check,
    main,
    overheads,
    own_cost,
    platform_env,
    report,
    scrape,
    spread,
)
from benchmarks.inference import StreamRound, StreamTiming
from benchmarks.openai_http import SseCompletion
from benchmarks.paced import Cell, PacedConfig, PacedRun
from services.common.config import load_settings
from services.gateway.openai import convert
from services.gateway.openai.schema import ChatCompletionRequest
from services.inference.adapters.chat_templates import JinjaChatTemplates, load_chat_template
from services.inference.core.model import ChatTurn
from services.platform.settings import PlatformSettings
from services.router.config import load_catalog

STARTED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _round(
    ttft_us: float, streams: int, elapsed_s: float, platform_cpu: float = 0.5
) -> StreamRound:
    timings = [StreamTiming(ttft_us + i, ttft_us * 3 + i, 16) for i in range(streams)]
    return StreamRound(
        timings,
        elapsed_s,
        served=streams,
        cpu_s={"client": 0.5, "platform": platform_cpu, "triton": 0.5},
    )


def _scenarios() -> list[PathScenario]:
    """Concurrency 1: the gateway adds 0.5 ms at p50 over direct Triton in both rounds (p99:
    1.2 ms in round 2), 0.3 ms over the bare relay, and the HTTP API 0.3 ms over the gateway;
    concurrency 64: the gateway makes 1.3x direct's streams/s and 0.9x InferenceService's, the
    HTTP API 150 streams in 2 s to the gateway's 130."""
    single = PathScenario(1)
    single.rounds = {
        DIRECT: [_round(1000, 100, 1.0, 0.0), _round(1100, 100, 1.0, 0.0)],
        HOP: [_round(1200, 100, 1.0, 0.0), _round(1300, 100, 1.0, 0.0)],
        INFERENCE: [_round(1200, 100, 1.1), _round(1300, 100, 1.1)],
        GATEWAY: [_round(1500, 100, 1.2, 1.0), _round(1600, 100, 1.3, 1.0)],
        HTTP: [_round(1800, 100, 1.2, 1.0), _round(1900, 100, 1.3, 1.0)],
    }
    single.rounds[GATEWAY][1].streams[-1] = StreamTiming(5000.0, 9000.0, 16)
    loaded = PathScenario(64)
    loaded.rounds = {
        DIRECT: [_round(9000, 100, 2.0, 0.0), _round(9000, 100, 2.0, 0.0)],
        INFERENCE: [_round(10000, 145, 2.0), _round(10000, 145, 2.0)],
        GATEWAY: [_round(15000, 130, 2.0, 1.0), _round(15000, 130, 2.0, 1.0)],
        HTTP: [_round(14000, 150, 2.0, 0.9), _round(14000, 150, 2.0, 0.9)],
    }
    return [single, loaded]


def _cell(path: str, length: int, requests: int, per_request: float, per_token: float) -> Cell:
    """A paced cell whose platform CPU is exactly `per_request` s x requests + `per_token` s x
    tokens (so the fit must find both)."""
    tokens = requests * length
    cell = Cell(path, length, 64, 5.0, requests=requests, tokens=tokens)
    cell.cpu_s = {"platform": per_request * requests + per_token * tokens, "client": 1.0}
    cell.gaps_us = [10_000.0 + (500.0 if path == GATEWAY else 0.0)] * 100
    return cell


def _paced() -> PacedRun:
    """Gateway: 1.5 ms per request + 80 µs per token, 0.5 ms added to every gap;
    InferenceService alone: 1 ms + 60 µs."""
    run = PacedRun(PacedConfig(lengths=(16, 64), concurrencies=(64,), seconds=5.0))
    for length, requests in ((16, 400), (64, 100)):
        run.cells += [
            _cell(DIRECT, length, requests, 0.0, 0.0),
            _cell(INFERENCE, length, requests, 1e-3, 60e-6),
            _cell(GATEWAY, length, requests, 1.5e-3, 80e-6),
        ]
    return run


def _run(
    tmp_path: Path, scenarios: list[PathScenario] | None = None, paced: PacedRun | None = None
) -> GatewayRun:
    return GatewayRun(
        config=GatewayConfig(concurrencies=(64,)),
        started_at=STARTED,
        duration_s=42.0,
        environment={
            "cpu_count": 2,
            "python": "3.11",
            "grpcio": "1.81",
            "load_average_at_start": [1.0],
            "load_average_at_end": [2.0],
        },
        run_dir=tmp_path / "logs",
        scenarios=_scenarios() if scenarios is None else scenarios,
        paced=paced,
        counters={
            "genai_gateway_requests_total{code=OK}": 460.0,
            "genai_request_log_records_total{outcome=written}": 460.0,
            "genai_request_log_records_total{outcome=dropped}": 0.0,
        },
        checks=["every path streamed the same 16 tokens"],
    )


def _fake_plot(path: Path) -> None:
    path.write_bytes(b"png")


def test_config_needs_rounds_streams_and_load():
    assert DEFAULT.streams >= DEFAULT.rounds
    assert QUICK.load_seconds < DEFAULT.load_seconds
    with pytest.raises(ValueError, match="stream per round"):
        GatewayConfig(streams=3, rounds=4)
    with pytest.raises(ValueError, match="positive duration"):
        GatewayConfig(load_seconds=0)
    with pytest.raises(ValueError, match="concurrency >= 2"):
        GatewayConfig(concurrencies=(1,))


def test_platform_env_and_catalog_are_accepted_by_the_platform(tmp_path: Path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(catalog_text("127.0.0.1:1234"))

    env = platform_env("127.0.0.1:1234", catalog, tmp_path)
    settings = load_settings(PlatformSettings, path=None, env=env)
    zero, paced = load_catalog(catalog).models

    assert settings.auth.mode == "api_key"
    assert settings.gateway.quota.backend == "memory"
    assert settings.gateway.request_log.enabled
    assert settings.gateway.database_url.endswith(f"{tmp_path}/gateway.db")
    assert settings.prompt.database_url.endswith(f"{tmp_path}/prompts.db")
    assert settings.router.catalog_file == str(catalog)
    assert settings.inference.triton.launch is False
    models = settings.inference.models
    assert [(m.name, m.chat_template) for m in models] == [
        ("zero", "builtin:chatml"),
        ("zero-paced", "builtin:chatml"),
    ]
    assert models[0].backends[0].endpoint == "127.0.0.1:1234"
    assert [(e.name, e.pinned_only, e.backends[0].backend_model) for e in (zero, paced)] == [
        ("zero", True, "zero_llm"),
        ("zero-paced", True, "zero_llm_paced"),
    ]
    assert env["XDG_DATA_HOME"].startswith(str(tmp_path))  # the dev key stays in the run


def test_the_paths_send_the_same_chat_input():
    messages = [
        chat_pb2.ChatMessage(role=chat_pb2.CHAT_ROLE_SYSTEM, content="Be brief.\n"),
        chat_pb2.ChatMessage(role=chat_pb2.CHAT_ROLE_USER, content="Hello"),
    ]
    rendered = prompt_service_pb2.RenderPromptResponse(
        prompt="chat",
        version=1,
        messages=messages,
        parameters=generation_pb2.SamplingParameters(temperature=0.2, max_tokens=128),
    )

    gateway = completion_request(16)
    inference = generation_request(rendered, 16)
    templates = JinjaChatTemplates({"zero": load_chat_template("builtin:chatml")})
    expected = templates.render(
        "zero", [ChatTurn("system", "Be brief.\n"), ChatTurn("user", "Hello")]
    )

    assert (gateway.prompt, gateway.routing.model, gateway.parameters.max_tokens) == (
        "chat",
        "zero",
        16,
    )
    assert gateway.WhichOneof("selector") is None  # the production label
    assert gateway.variables["message"] == MESSAGE
    assert inference.model == "zero"
    assert list(inference.chat.messages) == messages
    assert inference.parameters.max_tokens == 16
    assert inference.parameters.temperature == pytest.approx(0.2)
    assert chatml(messages) == expected


def test_the_http_body_asks_the_api_for_the_gateway_paths_request():
    body = ChatCompletionRequest.model_validate(chat_body(16))

    completion = convert.chat_completion(body, {})

    assert completion.request == completion_request(16)
    assert completion.inline is None  # a registry prompt version, as StreamComplete's
    assert completion.stream
    assert completion.include_usage
    assert convert.chat_completion(
        ChatCompletionRequest.model_validate(chat_body(4, "zero-paced")), {}
    ).request == completion_request(4, "zero-paced")


def _streamed(text: str = "tok0 tok1 ", output_tokens: int = 2) -> SseCompletion:
    return SseCompletion(
        headers={"content-type": "text/event-stream; charset=utf-8"},
        text=text,
        deltas=2,
        finish_reason="length",
        usage={
            "prompt_tokens": 26,
            "completion_tokens": output_tokens,
            "total_tokens": 26 + output_tokens,
        },
        genai={"model": "zero", "backendId": "triton-0"},
    )


def test_the_http_stream_is_held_to_stream_completes_text_usage_and_model():
    final = gateway_pb2.CompletionMetadata(
        model="zero", usage=generation_pb2.TokenUsage(input_tokens=26, output_tokens=2)
    )

    line = http_check(_streamed(), "tok0 tok1 ", final)

    assert line.startswith("http: the same text and usage as StreamComplete (26 + 2 tokens)")
    assert "2 chunks, finish_reason 'length', served by zero" in line
    with pytest.raises(RuntimeError, match="streamed 'tok0 '"):
        http_check(_streamed("tok0 "), "tok0 tok1 ", final)
    with pytest.raises(RuntimeError, match="usage"):
        http_check(_streamed(output_tokens=3), "tok0 tok1 ", final)
    final.model = "zero-paced"
    with pytest.raises(RuntimeError, match="served by 'zero'"):
        http_check(_streamed(), "tok0 tok1 ", final)


def test_added_pools_rounds_and_keeps_each_rounds_difference():
    single = _scenarios()[0]

    base, cand, differences = added(single, DIRECT, GATEWAY, "ttft", 50)

    # p50 of 1000..1099 with 1100..1199 is 1099.5; of 1500..1599 with 1600..1699: 1599.5.
    assert (base, cand) == pytest.approx((1099.5, 1599.5))
    assert differences == pytest.approx([500.0, 500.0])
    assert spread([0.5, 0.25, 1.0]) == "+0.50 (+0.25..+1.00)"
    assert spread([math.nan]) == "-"


def test_targets_are_the_paced_fit_the_added_gap_ttft_over_the_relay_throughput_and_http():
    token, request, gap, ttft, direct, inference, http = gateway_targets(_scenarios(), _paced())

    assert token.measured == pytest.approx(80.0)
    assert token.passed is True
    assert "InferenceService alone 60.0 µs/token, 1,000 µs/request" in token.detail
    assert request.measured == pytest.approx(1500.0)
    assert request.passed is True
    assert gap.measured == pytest.approx(0.5)
    assert gap.passed is True
    assert ttft.measured == pytest.approx(0.3)
    assert ttft.unit == "ms"
    assert ttft.passed is True
    assert direct.measured == pytest.approx(1.3)
    assert direct.passed is True
    assert "rounds 1.30 (1.30-1.30)" in direct.line()
    assert inference.measured == pytest.approx(130 / 145)
    assert inference.passed is True
    assert http.name == "c=1: TTFT p50 of the HTTP API (SSE) above gRPC StreamComplete's"
    assert http.measured == pytest.approx(0.3)
    assert http.passed is True
    assert http.line().startswith("PASS")
    assert "StreamComplete 1.60 -> HTTP 1.90 ms" in http.detail
    assert "c=1 80 vs 80 (1.00x); c=64 65 vs 75 (1.15x)" in http.detail


def test_targets_fail_honestly_and_are_left_out_when_not_measured():
    single, loaded = _scenarios()
    slow = PathScenario(1)
    slow.rounds = {**single.rounds, GATEWAY: [_round(5000, 100, 2.0), _round(5000, 100, 2.0)]}
    starved = PathScenario(64)
    slow.rounds[HTTP] = [_round(5600, 100, 2.0), _round(5600, 100, 2.0)]
    starved.rounds = {**loaded.rounds, GATEWAY: [_round(15000, 100, 2.0), _round(15000, 100, 2.0)]}
    costly = _paced()
    for cell in costly.cells:
        if cell.path == GATEWAY:
            cell.cpu_s["platform"] *= 3
            cell.gaps_us = [50_000.0] * 100

    checks = gateway_targets([slow, starved], costly)

    assert [c.passed for c in checks] == [False] * 7
    assert all(c.line().startswith("FAIL") for c in checks)
    assert gateway_targets([PathScenario(16)]) == []


def test_the_paced_fit_separates_per_request_from_per_token_cpu():
    run = _paced()

    fits = {(f.path, f.concurrency): f for f in run.fits("platform")}

    assert fits[GATEWAY, 64].per_request_us == pytest.approx(1500.0)
    assert fits[GATEWAY, 64].per_token_us == pytest.approx(80.0)
    assert fits[INFERENCE, 64].per_token_us == pytest.approx(60.0)
    assert run.gap_us(GATEWAY, 64, 50) == pytest.approx(10_500.0)
    # 2,000 gateway tokens per window over (0.6 + 0.16 + 0.15 + 0.512) CPU seconds
    assert run.tokens_per_core_s(GATEWAY, 64, "platform") == pytest.approx(
        12_800 / (1.5e-3 * 500 + 80e-6 * 12_800)
    )


def test_overheads_name_each_pair_and_the_gateways_own_cost():
    rows = overheads(_scenarios())

    pairs = [(r["concurrency"], r["candidate"], r["baseline"]) for r in rows]
    assert pairs == [
        (1, GATEWAY, DIRECT),
        (1, GATEWAY, HOP),
        (1, GATEWAY, INFERENCE),
        (1, INFERENCE, DIRECT),
        (1, HOP, DIRECT),
        (1, HTTP, GATEWAY),
        (64, GATEWAY, DIRECT),
        (64, GATEWAY, INFERENCE),
        (64, INFERENCE, DIRECT),
        (64, HTTP, GATEWAY),
    ]
    own = rows[2]
    assert own["ttft_p50_added_ms"] == pytest.approx(0.3)
    assert own["ttft_p50_rounds_added_ms"] == pytest.approx([0.3, 0.3])
    # 2 CPU seconds over 200 gateway streams against 1 over 200 inference streams.
    assert own["platform_cpu_us_per_stream_added"] == pytest.approx(5000.0)
    assert rows[6]["streams_per_s_ratio"] == pytest.approx(1.3)
    lines = own_cost(rows)
    assert len(lines) == 2
    assert lines[0].startswith("c=1: TTFT p50 +0.30 ms")
    assert "streams/s gateway/inference" in lines[0]
    assert "platform CPU +5,000 µs per stream" in lines[0]
    http = own_cost(rows, GATEWAY, HTTP)
    assert [line.split(":")[0] for line in http] == ["c=1", "c=64"]
    assert http[0].startswith("c=1: TTFT p50 +0.30 ms")
    assert "streams/s http/gateway 1.15x" in http[1]


def test_counters_are_read_from_the_prometheus_text(tmp_path: Path):
    metrics = tmp_path / "metrics"
    metrics.write_text(
        "# TYPE genai_gateway_requests_total counter\n"
        'genai_gateway_requests_total{tenant="bench",method="/x/StreamComplete",code="OK"} 7\n'
        'genai_gateway_requests_total{tenant="other",method="/x/Complete",code="OK"} 2\n'
        'genai_gateway_requests_total{tenant="bench",method="/x/StreamComplete",code="CANCELLED"} 1\n'
        "# TYPE genai_request_log_records_total counter\n"
        'genai_request_log_records_total{outcome="written"} 9\n'
        'genai_request_log_records_total{outcome="dropped"} 1\n'
        "# TYPE genai_request_log_queue_depth gauge\n"
        "genai_request_log_queue_depth 0\n"
        "# TYPE unrelated_total counter\n"
        "unrelated_total 5\n"
    )

    counters = scrape(metrics.as_uri())
    lines = counter_lines(counters)

    assert counters["genai_gateway_requests_total{code=OK}"] == 9
    assert counters["genai_gateway_requests_total{code=CANCELLED}"] == 1
    assert counters["genai_request_log_records_total{outcome=dropped}"] == 1
    assert "unrelated_total" not in counters
    assert lines[0] == "gateway completions by status: CANCELLED 1, OK 9"
    assert lines[1].startswith("request log records: dropped 1, written 9")
    assert counter_lines({}) == ["(the platform's metrics could not be read)"]


def test_report_and_json_of_a_synthetic_run(tmp_path: Path):
    run = _run(tmp_path, paced=_paced())

    text = report(run)
    json_path, png_path = write_outputs(run.result, tmp_path / "out", _fake_plot, run.started_at)
    document = json.loads(json_path.read_text())

    assert text.startswith("benchmark gateway: 2026-01-02 03:04 UTC, 2 CPUs, load average 1.0")
    for section in (
        "overhead (all rounds",
        "the gateway's own cost",
        "the OpenAI-compatible HTTP API (http SSE - gRPC StreamComplete",
        "paced model (10 ms between tokens)",
        "per request and per token",
        "checks:",
        "targets:",
    ):
        assert section in text
    verdicts = [line.split()[0] for line in text.split("targets:")[1].splitlines() if line]
    assert verdicts == ["PASS"] * 7
    assert "request log records: dropped 0, written 460" in text
    assert json_path.name == "gateway-20260102T030405Z.json"
    assert png_path.read_bytes() == b"png"
    assert document["benchmark"] == "gateway"
    assert (document["baseline"], document["candidate"]) == (DIRECT, GATEWAY)
    assert [t["passed"] for t in document["targets"]] == [True] * 7
    assert [t["unit"] for t in document["targets"]] == ["µs", "µs", "ms", "ms", "x", "x", "ms"]
    assert len(document["overheads"]) == 10
    fits = {(f["path"], f["process"]): f for f in document["paced"]["fits"]}
    assert fits[GATEWAY, "platform"]["per_token_us"] == pytest.approx(80.0)
    assert len(document["paced"]["cells"]) == 6
    assert {c["scenario"] for c in document["comparisons"]} == {
        "gateway/direct",
        "gateway/hop",
        "gateway/inference",
        "inference/direct",
        "hop/direct",
        "http/gateway",
    }
    variants = {
        (m["variant"], m["concurrency"], m["latency_metric"]) for m in document["measurements"]
    }
    assert (GATEWAY, 64, "stream") in variants
    assert (HTTP, 1, "TTFT") in variants
    assert len(variants) == 18
    gateway_ttft = next(
        m
        for m in document["measurements"]
        if (m["variant"], m["concurrency"], m["latency_metric"]) == (GATEWAY, 1, "TTFT")
    )
    assert len(gateway_ttft["rounds"]) == 2
    assert gateway_ttft["rates"]["platform_cpu_us_per_stream"] == pytest.approx(10_000.0)
    # A path that used no platform CPU per stream (direct) is 0, not missing; NaN is null.
    assert document["counters"]["genai_gateway_requests_total{code=OK}"] == 460
    assert document["config"]["concurrencies"] == [64]
    assert document["logs"].endswith("logs")


def test_nan_figures_are_null_in_the_json(tmp_path: Path):
    single = _scenarios()[0]
    for rounds in single.rounds.values():
        for r in rounds:
            r.cpu_s.pop("platform")

    document = json.loads(json.dumps(_run(tmp_path, [single]).result.to_json_dict()))

    assert [t["name"] for t in document["targets"]][-1].startswith("c=1: TTFT p50")
    assert document["overheads"][0]["platform_cpu_us_per_stream_added"] is None


def test_bad_options_stop_before_anything_starts(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        main(["--rounds", "0"])

    assert exited.value.code == 2
    assert "rounds" in capsys.readouterr().err


def test_the_benchmark_is_registered():
    assert "gateway" in registry.BENCHMARKS
    assert registry.main(["--list"]) == 0
