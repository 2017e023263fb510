"""The paced part of the gateway benchmark (benchmarks/paced.py): the paced model's repository,
a cell's window (requests, tokens, gaps, CPU), and the fit."""

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from benchmarks.inference import CPU_REPOSITORY
from benchmarks.paced import PACED_TRITON_MODEL, Cell, PacedConfig, fit, run_cell, zero_repository


def test_the_repository_holds_zero_llm_and_its_paced_copy(tmp_path: Path) -> None:
    repository = zero_repository(tmp_path, CPU_REPOSITORY, pace_us=7_000)

    paced = (repository / PACED_TRITON_MODEL / "config.pbtxt").read_text()
    plain = (repository / "zero_llm" / "config.pbtxt").read_text()
    assert f'name: "{PACED_TRITON_MODEL}"' in paced
    assert 'string_value: "7000"' in paced
    assert 'string_value: "0"' in plain.split("token_interval_us")[1].split("}")[0]
    assert (repository / PACED_TRITON_MODEL / "1" / "model.py").is_file()


def test_a_config_needs_two_lengths_and_a_window() -> None:
    with pytest.raises(ValueError, match="two stream lengths"):
        PacedConfig(lengths=(16,))
    with pytest.raises(ValueError, match="positive window"):
        PacedConfig(seconds=0)


async def test_a_cell_counts_the_requests_tokens_and_gaps_of_its_window() -> None:
    spent = [0.0]

    async def messages() -> AsyncIterator[int]:
        for _ in range(5):
            await asyncio.sleep(0.005)
            spent[0] += 0.001
            yield 1

    cell = await run_cell(
        "fake", messages, 5, 4, 0.5, {"platform": lambda: spent[0]}, pace_us=5_000
    )

    # 4 streams of 5 tokens 5 ms apart: about 800 tokens/s, 160 streams/s.
    assert 200 <= cell.tokens <= 450
    assert 40 <= cell.requests <= 90
    assert math.isclose(cell.window_s, 0.5, rel_tol=0.2)
    assert cell.cpu_s["platform"] == pytest.approx(cell.tokens * 0.001, rel=0.1)
    assert 4_000 <= sorted(cell.gaps_us)[len(cell.gaps_us) // 2] <= 20_000
    assert cell.figures()["gap_p50_us"] > 0


async def test_a_failing_stream_fails_the_cell() -> None:
    async def messages() -> AsyncIterator[int]:
        yield 1
        raise ValueError("the platform broke the stream")

    with pytest.raises(RuntimeError, match="broke the stream"):
        await run_cell("fake", messages, 2, 2, 0.2, {})


def test_the_fit_is_nan_without_two_independent_lengths() -> None:
    cell = Cell("p", 16, 8, 1.0, requests=10, tokens=160, cpu_s={"platform": 1.0})

    alone = fit([cell], "platform")

    assert math.isnan(alone.per_token_us)
    assert math.isnan(alone.per_request_us)
