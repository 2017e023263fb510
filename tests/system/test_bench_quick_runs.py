"""`scripts/bench NAME --quick` for every benchmark, as CI runs it: the benchmark's own `main`
(`python -m benchmarks NAME --quick --out DIR`) in a process of its own, which must end with
status 0 having written its JSON (plain JSON, the run's load average in it) and its PNG. So a
benchmark that stops working (an API it calls changed, auth became the default, ...) fails CI
instead of rotting until someone next runs it.

What the figures say is the benchmarks' to report, not these tests' to judge: a quick run is
too short for them. `replicas` and `structured` have tests of their own that run their quick
form and check more (`ELSEWHERE`); `test_every_benchmark_has_a_quick_run_in_ci` makes sure
that a new benchmark cannot be forgotten here."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from benchmarks.__main__ import BENCHMARKS
from tests.support.serve import ROOT

QUICK_RUNS: Final = {
    "chain": 120,
    "console": 240,
    "experiment": 360,
    "gateway": 360,
    "inference": 360,
    "router": 120,
    "routing": 600,
}
"""The benchmarks run here, with each quick run's time limit in seconds: 3 to 10 times what
it took on a 2-core machine that other work kept busy at a load average of 5 to 8 (chain
12-13 s, gateway 36-92 s, 86-90 s at a load average of 3 to 5 once it measured the HTTP API
too, inference 67-84 s, router 2 s; routing 93-210 s at a load average of 2 to 6 with SmolLM2
and `zero`, Gemma's start adds about a minute; experiment 65 s at a load average of 2 to 4,
SmolLM2 and Gemma both started). The module adds about 6 minutes to CI."""
NEEDS_TRITON: Final = frozenset({"experiment", "gateway", "inference", "routing"})
MEASURED_PATHS: Final = {"gateway": {"direct", "hop", "inference", "gateway", "http"}}
"""The paths a benchmark's JSON must have figures of (`measurements[].variant`)."""
ELSEWHERE: Final = {
    "replicas": "tests/system/test_replicas_fault_run.py",
    "structured": "tests/system/test_structured_bench_run.py",
}
"""Benchmarks whose quick run a test of their own runs (and checks further), by test file."""
INTERRUPT_GRACE_S: Final = 30.0
"""How long a run past its limit has to stop its servers after SIGINT, before SIGKILL."""
PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"


def tail(output: str, lines: int = 80) -> str:
    """The end of a run's output (stdout and stderr), for a failure's message."""
    return "\n".join(output.splitlines()[-lines:])


def run_quick(name: str, out: Path, limit_s: float) -> tuple[int, str]:
    """Runs `python -m benchmarks NAME --quick --out OUT` from the repo root; returns its
    status and its output (stderr merged in). Past `limit_s` it gets SIGINT (a benchmark then
    stops the servers it started, as on Ctrl-C), then SIGKILL for its process group, and the
    test fails with the output's end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", name, "--quick", "--out", str(out)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=INTERRUPT_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        pytest.fail(
            f"scripts/bench {name} --quick ran past {limit_s:g} s; its output's end:\n"
            f"{tail(output)}"
        )
    return process.returncode, output


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(QUICK_RUNS))
def test_the_quick_run_writes_its_results(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if name in NEEDS_TRITON:
        request.getfixturevalue("tritonserver_installed")

    code, output = run_quick(name, tmp_path, QUICK_RUNS[name])

    shown = f"scripts/bench {name} --quick exited {code}; its output's end:\n{tail(output)}"
    assert code == 0, shown
    results = sorted(tmp_path.glob(f"{name}-*.json"))
    plots = sorted(tmp_path.glob(f"{name}-*.png"))
    assert len(results) == 1, shown
    assert len(plots) == 1, shown
    document = json.loads(results[0].read_text())
    assert document["benchmark"] == name, shown
    environment = document["environment"]
    assert environment["load_average_at_start"], shown
    assert environment["load_average_at_end"], shown
    assert "baseline_starved" in environment, shown
    if name in MEASURED_PATHS:
        variants = {m["variant"] for m in document["measurements"]}
        assert MEASURED_PATHS[name] <= variants, shown
    assert plots[0].read_bytes()[: len(PNG_MAGIC)] == PNG_MAGIC, shown
    assert "load average" in output, shown  # the printed report says it too


def test_every_benchmark_has_a_quick_run_in_ci() -> None:
    here, elsewhere = set(QUICK_RUNS), set(ELSEWHERE)

    assert not here & elsewhere
    assert here | elsewhere == set(BENCHMARKS), (
        "add each benchmark of benchmarks/__main__.py to QUICK_RUNS (or to ELSEWHERE with "
        "the test that runs its quick form)"
    )
    assert NEEDS_TRITON.issubset(here)
    for name, test_file in ELSEWHERE.items():
        text = (ROOT / test_file).read_text()
        assert f'"-m", "benchmarks", "{name}", "--quick"' in text, (name, test_file)
