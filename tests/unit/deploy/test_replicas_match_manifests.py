"""`scripts/bench replicas` runs the Kubernetes topology as processes on this machine: the same
workloads, command lines and GENAI_* variables as deploy/kubernetes/overlays/cpu, with only
what names the cluster replaced (benchmarks.deployment.LOCAL_VALUES, Secrets, headless
targets) and a declared few added (BENCH_ONLY). A change to either side that the other does
not follow fails here.
"""

from pathlib import Path

import pytest

from benchmarks import deployment
from benchmarks.cli import ROOT
from benchmarks.deployment import (
    BENCH_ONLY,
    LOCAL_VALUES,
    MIGRATION_JOB,
    LocalValues,
    Replica,
    Shared,
    Tritons,
    manifest_env,
    migration_args,
    process_env,
)
from scripts.lib import manifests
from scripts.lib.manifests import SecretValue
from services.common.config import load_settings
from services.platform.settings import PlatformSettings

WORKLOADS = (
    deployment.GATEWAY_DEPLOYMENT,
    deployment.PROMPT_DEPLOYMENT,
    deployment.EXPERIMENT_DEPLOYMENT,
    deployment.EVALUATION_DEPLOYMENT,
)
ADDRESSES = {
    deployment.GATEWAY_DEPLOYMENT: ["127.0.0.1:41001", "127.0.0.1:41002"],
    deployment.PROMPT_DEPLOYMENT: ["127.0.0.1:41003", "127.0.0.1:41004"],
    deployment.EXPERIMENT_DEPLOYMENT: ["127.0.0.1:41005"],
    deployment.EVALUATION_DEPLOYMENT: ["127.0.0.1:41006"],
}


@pytest.fixture
def local(tmp_path: Path) -> LocalValues:
    return LocalValues(
        Shared.new(), Tritons(tmp_path, tmp_path), tmp_path / "catalog.yaml", tmp_path, 3, "t" * 43
    )


def test_the_run_has_a_process_for_every_platform_deployment() -> None:
    deployments = manifests.platform_deployments(manifests.render(deployment.OVERLAY))
    assert set(WORKLOADS) == set(deployments)


@pytest.mark.parametrize("workload", [*WORKLOADS, MIGRATION_JOB])
def test_each_process_has_the_manifests_variables(workload: str, local: LocalValues) -> None:
    manifest = manifest_env(workload)
    env = process_env(workload, local, ADDRESSES)
    genai = {name for name in env if name.startswith("GENAI_")}
    added = genai - set(manifest)
    assert set(manifest) <= genai
    for name in added:
        pattern = "GENAI_*__DATABASE_SCHEMA" if name.endswith("__DATABASE_SCHEMA") else name
        assert pattern in BENCH_ONLY, f"{name} is set by the run but not by the manifests"
    for name, value in manifest.items():
        if isinstance(value, SecretValue) or name in LOCAL_VALUES:
            continue
        if "dns:///" in value:
            assert "dns:" not in env[name], name
            continue
        assert env[name] == value, f"{name}: the run has {env[name]!r}, the manifests {value!r}"
    for name, value in manifest.items():
        if isinstance(value, SecretValue) and name.endswith("_FILE"):
            assert Path(env[name]).read_text() == local.secret(value) + "\n"
    settings = load_settings(PlatformSettings, path=None, env=env)
    assert settings.auth.internal_token == "t" * 43
    assert not settings.auth.development_key


def test_what_the_run_replaces_or_adds_is_declared_and_still_in_the_manifests() -> None:
    named = {name for w in [*WORKLOADS, MIGRATION_JOB] for name in manifest_env(w)}
    assert set(LOCAL_VALUES) <= named, set(LOCAL_VALUES) - named
    for name in BENCH_ONLY:
        if "*" not in name:
            assert name not in named, f"{name}: the manifests set it now; drop it from BENCH_ONLY"
    assert not any(name.endswith("__DATABASE_SCHEMA") for name in named)


def test_the_targets_become_the_processes_addresses(local: LocalValues) -> None:
    env = process_env(deployment.GATEWAY_DEPLOYMENT, local, ADDRESSES)
    assert env["GENAI_GATEWAY__TARGETS__PROMPT"] == "127.0.0.1:41003,127.0.0.1:41004"
    env = process_env(deployment.EVALUATION_DEPLOYMENT, local, ADDRESSES)
    assert env["GENAI_EVALUATION__TARGETS__GATEWAY"] == "127.0.0.1:41001,127.0.0.1:41002"
    with pytest.raises(KeyError, match="runs no genai-prompt"):
        process_env(deployment.GATEWAY_DEPLOYMENT, local, {})


@pytest.mark.parametrize("workload", WORKLOADS)
def test_each_process_runs_the_deployments_command_line(workload: str, tmp_path: Path) -> None:
    replica = Replica("x", deployment.hosted(workload), {}, tmp_path)
    manifest_args = deployment.manifest_container(workload)["args"]
    local_flags = ["--port", str(replica.port), "--ready-file", str(replica.ready_file)]
    assert replica.args() == [*manifest_args, *local_flags]


def test_the_run_migrates_with_the_jobs_command_line() -> None:
    job_args = deployment.manifest_container(MIGRATION_JOB)["args"]
    args = migration_args()
    assert args[0] == job_args[0] == "migrate"
    assert len(args) == len(job_args)
    assert str(ROOT / "prompts") in args
    assert "/etc/genai/prompts" in job_args


def test_both_overlays_give_the_platform_the_same_variables() -> None:
    cpu, gpu = (manifests.render(overlay) for overlay in manifests.OVERLAYS)
    for workload in WORKLOADS:
        names = []
        for docs in (cpu, gpu):
            doc = manifests.find(docs, "Deployment", workload)
            names.append(set(manifests.environment(docs, doc, manifests.serve_container(doc))))
        assert names[0] == names[1], workload
