"""`scripts/bench replicas --quick` as CI runs it: the whole deployment (two gateways, two
PromptServices, an ExperimentService, an EvaluationService, two Tritons, PostgreSQL, Redis: the
Kubernetes manifests' topology and variables, migrated first by the migration Job's command)
with its three SIGKILLs.
Whatever the machine's speed, nothing may be lost, repeated, left undefined or unaccounted; the
timing targets are the benchmark's to report, not this test's to judge."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.serve import ROOT

pytestmark = [pytest.mark.system, pytest.mark.slow]

CORRECTNESS = (
    "requests with a final missing from the request log",
    "requests with a final logged more than once",
    "requests cut by a kill without a defined status",
    "calls that outlived their deadline",
    "finals whose usage differs from their request-log row",
    "tokens settled in Redis minus tokens accounted (log + swept)",
    "label events missed, repeated or out of order, all watchers",
)


def test_the_quick_fault_run_loses_nothing(tmp_path: Path, tritonserver_installed: None) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks", "replicas", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = finished.stdout + finished.stderr
    results = list(tmp_path.glob("replicas-*.json"))
    assert len(results) == 1, output
    assert len(list(tmp_path.glob("replicas-*.png"))) == 1
    document = json.loads(results[0].read_text())
    verdicts = {t["name"]: t for t in document["config"]["targets"]}
    for name in CORRECTNESS:
        assert verdicts[name]["passed"] is True, (name, verdicts[name], output)
    faults = [f["target"] for f in document["config"]["faults"]]
    assert faults == ["gateway-0", "triton-0", "prompt-0"]
    assert document["config"]["finals"] > 0
