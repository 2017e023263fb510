"""The `inference` benchmark's pure parts: aggregation, targets, the settings it hands
`genai serve`, the transformers worker's protocol, /proc parsing, and the report and JSON of a
synthetic run (no Triton, no model; the PNG is left to real runs: matplotlib alone takes
seconds)."""

import asyncio
import json
import math
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import grpc.aio
import pytest
from genai.common.v1 import generation_pb2
from genai.inference.v1 import inference_pb2, inference_service_pb2, inference_service_pb2_grpc

from benchmarks.inference import (
    DIRECT,
    HOP,
    PLATFORM,
    SERVE,
    TRANSFORMERS,
    InferenceConfig,
    InferenceRun,
    PlatformPath,
    Scenario,
    SmolConfig,
    StreamRound,
    StreamTiming,
    TargetCheck,
    TritonDiedError,
    Wave,
    ZeroConfig,
    check_at_least,
    check_at_most,
    closed_loop,
    death_notice,
    inference_env,
    pool_waves,
    report,
    same_texts,
    sequential,
    served_model,
    smollm2_run,
    smollm2_targets,
    while_alive,
    zero_run,
    zero_targets,
)
from benchmarks.processes import development_key, group_cpu_seconds, parse_stat
from benchmarks.serving import ServerProcess
from benchmarks.transformers_generate import GenerateRequest, GenerateResult
from services.common.config import load_settings
from services.common.grpc_types import ServicerContext
from services.platform.settings import PlatformSettings

STARTED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _round(ttft_us: float, streams: int, elapsed_s: float, cpu: float = 0.5) -> StreamRound:
    timings = [StreamTiming(ttft_us + i, ttft_us * 3 + i, 16) for i in range(streams)]
    return StreamRound(
        timings, elapsed_s, served=streams, cpu_s={"client": cpu, "inference": cpu, "triton": cpu}
    )


def _scenarios() -> list[Scenario]:
    single = Scenario(1)
    single.rounds = {
        DIRECT: [_round(1000, 100, 1.0), _round(1100, 100, 1.0)],
        HOP: [_round(1200, 100, 1.1), _round(1300, 100, 1.1)],
        PLATFORM: [_round(1400, 100, 1.2), _round(1450, 100, 1.3)],
    }
    loaded = Scenario(64)
    loaded.rounds = {
        DIRECT: [_round(9000, 200, 2.0), _round(9000, 200, 2.0)],
        PLATFORM: [_round(12000, 150, 2.0), _round(12000, 150, 2.0)],
    }
    return [single, loaded]


def _wave(variant: str, concurrency: int, tokens: int, wall_s: float, text: str = "t") -> Wave:
    return Wave(
        variant=variant,
        concurrency=concurrency,
        wall_s=wall_s,
        ttft_s=[0.2] * concurrency,
        output_tokens=[tokens] * concurrency,
        input_tokens=[40] * concurrency,
        texts=[text] * concurrency,
    )


def _waves() -> list[Wave]:
    return [
        _wave(PLATFORM, 1, 64, 4.0, "same"),
        _wave(TRANSFORMERS, 1, 64, 8.0, "same"),
        _wave(PLATFORM, 1, 64, 4.0, "same"),
        _wave(TRANSFORMERS, 1, 64, 8.0, "other"),
        _wave(PLATFORM, 8, 64, 6.0),
        _wave(TRANSFORMERS, 8, 64, 16.0),
    ]


def test_scenario_rates_and_cpu_pool_all_rounds():
    single = _scenarios()[0]

    assert single.streams_per_s(DIRECT) == pytest.approx(100.0)
    assert single.streams_per_s(PLATFORM) == pytest.approx(200 / 2.5)
    assert single.tokens_per_s(PLATFORM) == pytest.approx(200 * 16 / 2.5)
    # 1 CPU second over 200 streams.
    assert single.cpu_us_per_stream(PLATFORM, "inference") == pytest.approx(5000.0)
    assert math.isnan(single.cpu_us_per_stream(PLATFORM, "elsewhere"))


def test_zero_targets_compare_ttft_p50_and_streams_per_second_at_64():
    ttft, throughput = zero_targets(_scenarios())

    # p50 of 1000..1199 is 1099.5; of 1400..1499 with 1450..1549 it is 1474.5.
    assert ttft.measured == pytest.approx(375.0)
    assert ttft.passed is True
    assert throughput.measured == pytest.approx(0.75)
    assert throughput.passed is False
    assert "FAIL" in throughput.line()


def test_checks_pass_at_the_threshold_and_cannot_judge_nan():
    assert check_at_most("a", 500.0, 500.0, "µs").passed is True
    assert check_at_least("b", 0.8, 0.8, "x").passed is True
    unknown = check_at_least("c", math.nan, 0.8, "x")
    assert unknown.passed is None
    assert unknown.line().startswith("n/a")


def test_pooled_waves_rate_is_all_tokens_over_all_wall_time():
    pooled = pool_waves([_wave(PLATFORM, 1, 64, 4.0), _wave(PLATFORM, 1, 32, 4.0)])

    assert pooled.tokens_per_s == pytest.approx(96 / 8.0)
    assert list(pooled.output_tokens) == [64, 32]
    with pytest.raises(ValueError, match="one variant"):
        pool_waves([_wave(PLATFORM, 1, 1, 1.0), _wave(TRANSFORMERS, 1, 1, 1.0)])


def test_smollm2_targets_compare_with_transformers_and_transformers_serve():
    def wave(variant: str, streams: int, wall_s: float, ttft_s: float, cpu_s: float) -> Wave:
        return replace(
            _wave(variant, streams, 64 if streams == 1 else 32, wall_s),
            ttft_s=[ttft_s] * streams,
            cpu_s=cpu_s,
        )

    waves = [
        wave(PLATFORM, 1, 1.0, 0.2, 1.9),  # 64 tokens/s
        wave(TRANSFORMERS, 1, 2.0, 0.3, 3.9),  # 32
        wave(PLATFORM, 16, 2.0, 0.5, 3.8),  # 512 tokens: 256 tokens/s, 1.9 cores
        wave(TRANSFORMERS, 16, 3.0, 0.9, 5.9),  # 170.7
        wave(SERVE, 16, 4.0, 1.2, 5.0),  # 128
    ]
    run = smollm2_run(SmolConfig(), waves, {"threads": 2}, STARTED, 10.0)

    single, wide, rate, serve, cores, ttft = smollm2_targets(run.waves)

    assert single.measured == pytest.approx(2.0)
    assert single.passed is True
    assert wide.measured == pytest.approx(1.5)
    assert wide.passed is False
    assert rate.measured == pytest.approx(256.0)
    assert rate.passed is True
    assert serve.measured == pytest.approx(2.0)
    assert serve.passed is True
    assert cores.measured == pytest.approx(1.9)
    assert cores.passed is True
    assert ttft.measured == pytest.approx(1.5)
    assert ttft.passed is True
    assert "transformers serve --continuous-batching" in serve.name


def test_same_texts_counts_identical_greedy_outputs():
    run = smollm2_run(SmolConfig(), _waves(), {}, STARTED, 10.0)

    lines = same_texts(run.waves)

    assert lines[0].startswith(
        "greedy texts against transformers fp32 at 1 stream(s): 1/2 identical"
    )
    assert "50% of the text shared" in lines[0]  # "same"/"same" and "same"/"other"


def test_inference_env_is_accepted_by_the_platform_settings():
    env = inference_env(
        [served_model("zero", "127.0.0.1:1234", "zero_llm", max_output_tokens=100_000)]
    )

    settings = load_settings(PlatformSettings, path=None, env=env)

    assert settings.inference.triton.launch is False
    (model,) = settings.inference.models
    assert (model.name, model.max_output_tokens) == ("zero", 100_000)
    (backend,) = model.backends
    assert (backend.endpoint, backend.triton_model, backend.max_in_flight) == (
        "127.0.0.1:1234",
        "zero_llm",
        256,
    )


def test_inference_env_turns_api_keys_on_and_keeps_their_data_apart(tmp_path: Path):
    models = [served_model("zero", "127.0.0.1:1234", "zero_llm")]

    env = inference_env(models, tmp_path)
    settings = load_settings(PlatformSettings, path=None, env=env)

    assert settings.auth.mode == "api_key"
    assert settings.auth.development_key is True
    assert env["XDG_DATA_HOME"] == str(tmp_path)
    assert "XDG_DATA_HOME" not in inference_env(models)


async def test_the_development_key_is_read_from_the_file_the_ready_file_names(tmp_path: Path):
    key_file = tmp_path / "dev-api-key"
    key_file.write_text("gk_secret\n")

    def server(ready: Mapping[str, object]) -> ServerProcess:
        return ServerProcess(process=None, port=1, ready=dict(ready))  # type: ignore[arg-type]

    assert await development_key(server({"port": 1, "api_key_file": str(key_file)})) == (
        "gk_secret"
    )
    for ready in ({"port": 1, "api_key_file": ""}, {"port": 1}):
        with pytest.raises(RuntimeError, match="no development key"):
            await development_key(server(ready))


class _KeyedInference(inference_service_pb2_grpc.InferenceServiceServicer):
    """Streams two tokens to a caller with the right API key, refuses any other."""

    def __init__(self, key: str) -> None:
        self.key = key

    async def GenerateStream(
        self, request: inference_service_pb2.GenerateStreamRequest, context: ServicerContext
    ) -> AsyncIterator[inference_service_pb2.GenerateStreamResponse]:
        metadata = tuple(context.invocation_metadata() or ())
        if ("authorization", f"Bearer {self.key}") not in metadata:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid API key")
        usage = generation_pb2.TokenUsage(input_tokens=3, output_tokens=2)
        yield inference_service_pb2.GenerateStreamResponse(
            start=inference_pb2.GenerationStart(input_tokens=3)
        )
        for text in ("tok0 ", "tok1"):
            yield inference_service_pb2.GenerateStreamResponse(
                delta=inference_pb2.TokenDelta(text=text, token_count=1)
            )
        yield inference_service_pb2.GenerateStreamResponse(
            final=inference_pb2.GenerationFinal(usage=usage)
        )


async def test_the_platform_path_calls_with_its_api_key():
    from services.common.clients import api_key_metadata

    server = grpc.aio.server()
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(
        _KeyedInference("gk_right"),  # type: ignore[abstract]  # the other RPCs are not called
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    request = inference_service_pb2.GenerateStreamRequest(model="zero", text="hi")
    keyed = PlatformPath(f"127.0.0.1:{port}", request, api_key_metadata("gk_right"))
    keyless = PlatformPath(f"127.0.0.1:{port}", request)
    try:
        timing = await keyed.stream()
        _, text, final, input_tokens = await keyed.generate(request)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await keyless.stream()
    finally:
        await keyed.close()
        await keyless.close()
        await server.stop(None)

    assert timing.tokens == 2
    assert (text, final.usage.output_tokens, input_tokens) == ("tok0 tok1", 2, 3)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_worker_protocol_round_trips_and_reports_errors():
    request = GenerateRequest([[{"role": "user", "content": "hi"}]], 8, 8)
    assert GenerateRequest.from_line(request.to_line()) == request
    with pytest.raises(ValueError, match="min_new_tokens"):
        GenerateRequest.from_line(
            json.dumps({**json.loads(request.to_line()), "min_new_tokens": 9})
        )

    result = GenerateResult(2, 4.0, 0.5, [40, 41], [64, 64], ["a", "b"], cpu_seconds=7.5)
    assert GenerateResult.from_line(result.to_line()) == result
    assert result.tokens_per_s == pytest.approx(32.0)
    with pytest.raises(RuntimeError, match="out of memory"):
        GenerateResult.from_line('{"error": "RuntimeError: out of memory"}')


def test_proc_stat_is_parsed_after_the_command_name(tmp_path: Path):
    # A command name with spaces and parentheses; pgrp 700, utime 250 and stime 50 ticks.
    line = "701 (python (stub) x) S 700 700 700 0 -1 4194560 0 0 0 0 250 50 0 0 20 0 3 0"
    group, seconds = parse_stat(line)
    assert group == 700
    assert seconds == pytest.approx(300 / os.sysconf("SC_CLK_TCK"))
    with pytest.raises(ValueError, match="not a /proc"):
        parse_stat("1 (x) S 2")

    for pid, pgrp in ((701, 700), (702, 700), (800, 800)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(line.replace("S 700 700", f"S 1 {pgrp}", 1))
    (tmp_path / "self").mkdir()
    assert group_cpu_seconds(700, tmp_path) == pytest.approx(2 * seconds)


async def test_sequential_and_closed_loop_count_their_streams():
    async def stream() -> StreamTiming:
        await asyncio.sleep(0.002)
        return StreamTiming(100.0, 200.0, 16)

    done: list[int] = []
    alone = await sequential(stream, 5, done.append)
    assert (len(alone.streams), alone.served, sum(done)) == (5, 5, 5)

    loaded = await closed_loop(stream, 4, 0.1, lambda n: None)
    # Streams outside the window (ramp-up, ramp-down) are served but not counted.
    assert 0 < len(loaded.streams) < loaded.served
    assert loaded.elapsed_s == pytest.approx(0.1)


def test_report_and_json_of_a_synthetic_run(tmp_path: Path):
    config = InferenceConfig(zero=ZeroConfig(concurrencies=(64,)), smollm2=SmolConfig())
    run = InferenceRun(
        STARTED,
        42.0,
        config,
        {"cpu_count": 2, "python": "3.11", "grpcio": "1.81", "load_average_at_start": [1.0]},
        tmp_path / "logs",
        zero=zero_run(config.zero, _scenarios(), STARTED, 20.0),
        smollm2=smollm2_run(config.smollm2, _waves(), {"threads": 2}, STARTED, 20.0),
    )

    text = report(run)
    document = json.loads(json.dumps(run.document()))

    assert "== part zero" in text
    assert "== part smollm2" in text
    verdicts = [line.split()[0] for line in text.split("targets:")[1].splitlines() if line]
    assert verdicts == ["PASS", "FAIL", "PASS", "PASS"]
    assert set(document["parts"]) == {"zero", "smollm2"}
    assert [t["passed"] for t in document["targets"]] == [True, False, True, True]
    assert isinstance(run.targets[0], TargetCheck)
    # The relay's floor is reported where it was measured (concurrency 1 here).
    assert len(document["floor"]) == 1
    assert document["floor"][0].startswith("c=1: TTFT p50 direct")
    assert "the bare hop adds +" in text
    zero_scenarios = {c["scenario"] for c in document["parts"]["zero"]["comparisons"]}
    assert zero_scenarios == {"zero", "zero hop"}
    assert "load average 1.0" in text.splitlines()[0]
    assert "starved" not in text


def test_the_report_warns_under_the_targets_when_the_run_started_loaded(tmp_path: Path):
    config = InferenceConfig(zero=ZeroConfig(concurrencies=(64,)), smollm2=SmolConfig())
    environment = {
        "cpu_count": 2,
        "python": "3.11",
        "grpcio": "1.81",
        "load_average_at_start": [4.5, 2.0, 1.0],
        "load_average_at_end": [3.0, 2.5, 1.2],
    }
    run = InferenceRun(
        STARTED,
        42.0,
        config,
        environment,
        tmp_path / "logs",
        zero=zero_run(config.zero, _scenarios(), STARTED, 20.0),
    )

    lines = report(run).splitlines()

    assert "load average 4.5 -> 3.0" in lines[0]
    assert lines[-1] == (
        "baseline may be starved: load average 4.50 at start on 2 cores; ratios not reportable"
    )
    assert [line.split()[0] for line in lines[lines.index("targets:") + 1 : -2]] == [
        "PASS",
        "FAIL",
    ]  # the verdicts stand


class _Triton:
    """What `while_alive` reads of a TritonServer: one that dies after `lives_s` seconds."""

    def __init__(self, lives_s: float = math.inf) -> None:
        self._dies_at = asyncio.get_running_loop().time() + lives_s
        self.returncode = -11
        self.log_file = Path("triton.log")

    @property
    def running(self) -> bool:
        return asyncio.get_running_loop().time() < self._dies_at

    def log_tail(self, lines: int = 40) -> str:
        return "Signal (11) received."


async def test_while_alive_returns_the_work_or_fails_fast_when_triton_dies():
    async def work(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    assert await while_alive(_Triton(), work(0.01), poll_s=0.01) == "done"  # type: ignore[arg-type]

    started = asyncio.get_running_loop().time()
    with pytest.raises(TritonDiedError, match=r"(?s)code -11.*Signal \(11\)"):
        await while_alive(_Triton(0.02), work(60.0), poll_s=0.01)  # type: ignore[arg-type]
    assert asyncio.get_running_loop().time() - started < 1.0


def test_death_notice_shows_the_signal_and_the_top_of_the_stack():
    log = "\n".join(
        [
            'I1125 grpc_server.cc:2558] "Started GRPCInferenceService"',
            "Signal (11) received.",
            " 0# 0x55 in tritonserver",
            " 1# 0x7f in libc.so.6",
            " 2# TRITONBACKEND_ResponseFactoryIsCancelled in libtritonserver.so",
            " 3# 0x7f in libtriton_python.so",
            " 4# 0x7f in libstdc++.so.6",
        ]
    )

    notice = death_notice(log, frames=3).splitlines()

    assert notice[0] == "  Signal (11) received."
    assert notice[-1].endswith("ResponseFactoryIsCancelled in libtritonserver.so")
    assert death_notice("a\nb") == "  a\n  b"
