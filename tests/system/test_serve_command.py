"""`genai serve` as a user runs it: a real process, found through its ready file, stopped by
SIGTERM."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.serve import ROOT, genai_serve


def test_serve_prints_endpoints_answers_info_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    with genai_serve(tmp_path) as served:
        assert len(served.services) == 6
        info = subprocess.run(
            [sys.executable, "-m", "services.cli", "info", "--target", served.address],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        described = json.loads(info.stdout)
        assert len(described["hostedServices"]) == 6
        assert {d["status"] for d in described["dependencies"]} == {"SERVING"}

        served.process.send_signal(signal.SIGTERM)
        output, _ = served.process.communicate(timeout=30)
        assert served.process.returncode == 0, output
        assert f"serving on {served.address}" in output
        assert "genai.prompt.v1.PromptService" in output
        assert "shutting down" in output


def test_serve_one_service_alone(tmp_path: Path) -> None:
    with genai_serve(tmp_path, "--service", "router") as served:
        assert served.services == ("genai.router.v1.RouterService",)


def test_info_against_nothing_fails_with_unavailable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "info", "--target", "127.0.0.1:1", "--timeout", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr


FREE_TRITON_PORTS = {
    "GENAI_INFERENCE__TRITON__GRPC_PORT": "0",
    "GENAI_INFERENCE__TRITON__HTTP_PORT": "0",
    "GENAI_INFERENCE__TRITON__METRICS_PORT": "0",
}


def test_the_main_job_serves_a_real_smollm2_answer_from_the_triton_it_launched(
    tmp_path: Path,
) -> None:
    """What `scripts/serve` runs: Triton with the CPU repository, every service, the sample
    prompts and a development key; then `genai chat`, as the README shows, streams a real answer
    through the gateway (prompt `chat`, label production, routed to SmolLM2)."""
    with genai_serve(tmp_path, env=FREE_TRITON_PORTS, timeout=300) as served:
        assert served.api_key.startswith("gk_")
        command = [sys.executable, "-m", "services.cli", "chat", "--target", served.address]
        question = ["--temperature", "0", "What is the capital of France?"]
        answer = subprocess.run(
            [*command, *question],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "GENAI_API_KEY": served.api_key},
        )
        refused = subprocess.run(
            [*command, "--api-key", "", *question],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "GENAI_API_KEY"},
        )
        served.process.send_signal(signal.SIGTERM)
        output, _ = served.process.communicate(timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert "Paris" in answer.stdout
    assert "chat v1 on smollm2-135m-instruct/triton-0" in answer.stderr
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr
    assert served.process.returncode == 0, output
    # stdout is a pipe here, as in a service manager's log: the secret is not in it, the path
    # of its 0600 file is.
    assert served.api_key not in output
    key_file = Path(os.environ.get("XDG_DATA_HOME", "")) / "genai-platform" / "dev-api-key"
    assert f"export GENAI_API_KEY=$(cat {key_file})" in output, output
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().strip() == served.api_key
