"""The rendered Kubernetes manifests (deploy/kubernetes/overlays/{cpu,gpu}) checked against each
other and against the platform: what a cluster would only reveal at rollout (a Service
selecting nothing, a probe naming a health service nobody registers, a misspelled GENAI_*
variable, a ConfigMap nobody defines) fails here.

Schema validity (kubernetes-validate, the vendored CRD schemas) and checkov's policies are
checked by `scripts/lint deploy` (scripts/lib/manifest_checks.py).
"""

import argparse
import json
import re
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.lib import manifests, prompts_configmap
from scripts.lib.manifests import Document, SecretValue
from services.cli import _parser
from services.common.config import NOT_SETTINGS, load_settings
from services.platform.consistency import catalog_problems
from services.platform.runner import SERVICE_NAMES
from services.platform.settings import PlatformSettings
from services.router.config import CatalogSettings, catalog_from_settings
from tests.contract.test_trtllm_conformance import PINNED

ROOT = Path(__file__).resolve().parents[3]

EXTERNAL_SECRETS: Mapping[tuple[str, str], str] = {
    ("genai-database", "url"): "postgresql+asyncpg://genai@postgres.databases:5432/genai",
    ("genai-redis", "url"): "redis://redis.databases:6379/0",
    ("genai-internal-token", "token"): "k" * 43,
}
"""Secrets the manifests reference and the operator creates (deploy/README.md), each with an
example value of the kind it must hold (the settings are validated with it)."""
EXTERNAL_CONFIGMAPS: Mapping[str, str] = {
    "genai-chat-templates": "gpu: the served model's tokenizer_config.json (its chat template)",
}
"""ConfigMaps the manifests reference and the operator creates."""

GRPC_HEALTH_OVERALL = ""


@pytest.fixture(scope="module", params=manifests.OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def docs(overlay: str) -> list[Document]:
    return manifests.render(overlay)


def _workloads(docs: Sequence[Document]) -> list[Document]:
    return [doc for doc in docs if manifests.pod_spec(doc) is not None]


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _selected(docs: Sequence[Document], selector: Mapping[str, str]) -> list[Document]:
    return [
        doc
        for doc in of_workload_kinds(docs)
        if selector and _matches(selector, manifests.pod_labels(doc))
    ]


def of_workload_kinds(docs: Sequence[Document]) -> list[Document]:
    return manifests.of_kind(docs, "Deployment", "StatefulSet", "DaemonSet")


def _container_ports(doc: Document) -> dict[str | int, int]:
    """Every container port of a workload, by name and by number."""
    ports: dict[str | int, int] = {}
    for container in manifests.containers(doc, init=False):
        for port in container.get("ports", []):
            ports[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return ports


_SECRET_FILES = Path(tempfile.mkdtemp(prefix="genai-manifest-secrets-"))


def _settings_env(docs: Sequence[Document], container: Mapping[str, Any]) -> dict[str, str]:
    """The container's variables, Secrets given their example values (as a file for a
    `GENAI_*_FILE` variable, whose value is a path into a mounted Secret)."""
    workload = next(
        doc for doc in _workloads(docs) if any(c is container for c in manifests.containers(doc))
    )
    env = manifests.environment(docs, workload, container)
    resolved = {}
    for name, value in env.items():
        if isinstance(value, SecretValue):
            example = EXTERNAL_SECRETS[(value.secret, value.key)]
            if name.endswith("_FILE"):
                path = _SECRET_FILES / f"{value.secret}-{value.key}"
                path.write_text(example + "\n")
                resolved[name] = str(path)
            else:
                resolved[name] = example
        else:
            assert not name.endswith("_FILE") or name == "GENAI_ROUTER__CATALOG_FILE", (
                f"{name}: {value} is not a file of a mounted Secret"
            )
            resolved[name] = value
    return resolved


def _platform_containers(docs: Sequence[Document]) -> list[tuple[Document, dict[str, Any]]]:
    return [
        (doc, container)
        for doc in _workloads(docs)
        for container in manifests.containers(doc)
        if manifests.is_platform(container) and container.get("args")
    ]


# ------------------------------------------------------------------------------ the topology


def test_the_platform_runs_split_as_in_the_replica_design(docs: list[Document]) -> None:
    deployments = manifests.platform_deployments(docs)
    hosted = {
        name: manifests.hosted_services(manifests.serve_container(doc)["args"])
        for name, doc in deployments.items()
    }
    assert hosted == {
        "genai-gateway": ("gateway", "router", "inference"),
        "genai-prompt": ("prompt",),
        "genai-experiment": ("experiment",),
        "genai-evaluation": ("evaluation",),
    }


def test_every_service_selects_a_workload_and_a_port_it_has(docs: list[Document]) -> None:
    for service in manifests.of_kind(docs, "Service"):
        name = service["metadata"]["name"]
        selected = _selected(docs, service["spec"].get("selector", {}))
        assert len(selected) == 1, f"Service {name} selects {len(selected)} workloads"
        ports = _container_ports(selected[0])
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports, (
                f"Service {name} port {port['port']}: no container port {target}"
            )


def test_every_platform_deployment_has_both_services(docs: list[Document]) -> None:
    services = {s["metadata"]["name"]: s for s in manifests.of_kind(docs, "Service")}
    for name in [*manifests.platform_deployments(docs), "triton"]:
        headless = services[f"{name}-headless"]
        assert headless["spec"]["clusterIP"] == "None"
        assert services[name]["spec"].get("type", "ClusterIP") == "ClusterIP"
        assert services[name]["spec"].get("clusterIP") != "None"


def test_probes_name_ports_and_health_services_the_server_registers(
    docs: list[Document],
) -> None:
    for name, doc in manifests.platform_deployments(docs).items():
        container = manifests.serve_container(doc)
        ports = _container_ports(doc)
        hosted = manifests.hosted_services(container["args"])
        registered = {n for key, n in SERVICE_NAMES.items() if key in hosted}
        registered.add(GRPC_HEALTH_OVERALL)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]["grpc"]
            assert probe["port"] in ports, f"{name} {kind}: port {probe['port']}"
            assert probe.get("service", "") in registered, f"{name} {kind}: {probe}"
        ready = container["readinessProbe"]["grpc"]["service"]
        assert ready != GRPC_HEALTH_OVERALL, f"{name}: readiness must name its own service"
        port = int(_settings_env(docs, container)["GENAI_SERVER__PORT"])
        assert container["readinessProbe"]["grpc"]["port"] == port
    triton = manifests.find(docs, "Deployment", "triton")
    (server,) = manifests.containers(triton, init=False)
    for kind, path in (
        ("startupProbe", "/v2/health/ready"),
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        assert server[kind]["httpGet"]["path"] == path
        assert server[kind]["httpGet"]["port"] in _container_ports(triton)


# ------------------------------------------------------------------------------ settings


def test_every_genai_variable_is_a_valid_setting(docs: list[Document]) -> None:
    checked = 0
    for _doc, container in _platform_containers(docs):
        env = _settings_env(docs, container)
        for variable in env:
            if variable.startswith("GENAI_"):
                assert variable not in NOT_SETTINGS, f"{variable} is not a setting"
        settings = load_settings(PlatformSettings, path=None, env=env)
        assert settings.auth.mode == "api_key"
        assert not settings.auth.development_key
        if "inference" in manifests.hosted_services(container["args"]):
            assert settings.inference.triton.launch is False  # Triton runs in its own pods
        checked += 1
    assert checked >= 5  # four Deployments and the migration Job


def test_every_command_line_parses_with_the_real_cli(docs: list[Document]) -> None:
    for _doc, container in _platform_containers(docs):
        args = container["args"]
        parsed = _parser().parse_args(args)
        assert isinstance(parsed, argparse.Namespace)
        if args[0] == "serve":
            assert parsed.no_prompts, "replicas never seed prompts: the migration Job does"


def test_files_named_by_settings_are_mounted_from_configmaps(docs: list[Document]) -> None:
    gateway = manifests.find(docs, "Deployment", "genai-gateway")
    container = manifests.serve_container(gateway)
    env = _settings_env(docs, container)
    files = {"GENAI_ROUTER__CATALOG_FILE": env["GENAI_ROUTER__CATALOG_FILE"]}
    models = json.loads(env["GENAI_INFERENCE__MODELS"])
    for model in models:
        template = model.get("chat_template", "")
        if template.startswith("/"):
            files[f"chat_template of {model['name']}"] = template
    volumes = {v["name"]: v for v in manifests.pod_spec(gateway)["volumes"]}  # type: ignore[index]
    for what, path in files.items():
        mount = next(
            (m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")), None
        )
        assert mount is not None, f"{what}: {path} is on no mounted volume"
        source = volumes[mount["name"]]["configMap"]["name"]
        key = path[len(mount["mountPath"]) + 1 :]
        if source in EXTERNAL_CONFIGMAPS:
            continue
        assert key in manifests.find(docs, "ConfigMap", source)["data"], f"{what}: no {key}"


def test_the_catalog_agrees_with_the_served_models(docs: list[Document]) -> None:
    gateway = manifests.find(docs, "Deployment", "genai-gateway")
    env = _settings_env(docs, manifests.serve_container(gateway))
    settings = load_settings(PlatformSettings, path=None, env=env)
    catalog_map = next(
        doc
        for doc in manifests.of_kind(docs, "ConfigMap")
        if doc["metadata"]["name"].startswith("genai-catalog")
    )
    catalog = catalog_from_settings(
        CatalogSettings.model_validate(yaml.safe_load(catalog_map["data"]["catalog.yaml"]))
    )
    assert catalog_problems(catalog, settings.inference, "") == []


def test_targets_name_headless_services_on_their_port(docs: list[Document]) -> None:
    services = {s["metadata"]["name"]: s for s in manifests.of_kind(docs, "Service")}
    seen = 0
    for _doc, container in _platform_containers(docs):
        env = _settings_env(docs, container)
        for variable, value in env.items():
            for target in _dns_targets(variable, value):
                host, port = target
                service = services.get(host)
                assert service is not None, f"{variable}: no Service {host}"
                assert service["spec"].get("clusterIP") == "None", f"{host} is not headless"
                assert port in [p["port"] for p in service["spec"]["ports"]]
                seen += 1
    assert seen >= 8


def _dns_targets(variable: str, value: str) -> list[tuple[str, int]]:
    """The (Service, port) pairs a variable's value names with `dns:///NAME:PORT`."""
    found = re.findall(r"dns:///([a-z0-9-]+):(\d+)", value)
    if variable.startswith("GENAI_") and "dns:" in value:
        assert found, f"{variable}: unreadable target {value!r}"
    return [(host, int(port)) for host, port in found]


# ------------------------------------------------------------------------------ references


def _references(docs: Sequence[Document]) -> tuple[set[str], set[tuple[str, str]]]:
    configmaps: set[str] = set()
    secrets: set[tuple[str, str]] = set()
    for doc in _workloads(docs):
        spec = manifests.pod_spec(doc)
        assert spec is not None
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                configmaps.add(volume["configMap"]["name"])
            if "secret" in volume:
                secrets.add((volume["secret"]["secretName"], ""))
            for source in volume.get("projected", {}).get("sources", []):
                if "configMap" in source:
                    configmaps.add(source["configMap"]["name"])
                if "secret" in source:
                    for item in source["secret"].get("items", []):
                        secrets.add((source["secret"]["name"], item["key"]))
        for container in manifests.containers(doc):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    configmaps.add(source["configMapRef"]["name"])
                if "secretRef" in source:
                    secrets.add((source["secretRef"]["name"], ""))
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    configmaps.add(ref["configMapKeyRef"]["name"])
                if "secretKeyRef" in ref:
                    secrets.add((ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]))
    return configmaps, secrets


def test_configmaps_and_secrets_are_defined_or_listed_as_external(docs: list[Document]) -> None:
    configmaps, secrets = _references(docs)
    defined = {doc["metadata"]["name"] for doc in manifests.of_kind(docs, "ConfigMap")}
    assert configmaps - defined <= set(EXTERNAL_CONFIGMAPS), configmaps - defined
    assert not manifests.of_kind(docs, "Secret"), "Secrets are never committed"
    for _doc, container in _platform_containers(docs):
        for variable in container.get("env", []):  # secret values go in as files
            assert "secretKeyRef" not in variable.get("valueFrom", {}), variable["name"]
    assert secrets <= set(EXTERNAL_SECRETS), secrets - set(EXTERNAL_SECRETS)


def test_every_external_reference_is_used_and_documented() -> None:
    used_configmaps: set[str] = set()
    used_secrets: set[tuple[str, str]] = set()
    for overlay in manifests.OVERLAYS:
        configmaps, secrets = _references(manifests.render(overlay))
        used_configmaps |= configmaps
        used_secrets |= secrets
    assert set(EXTERNAL_CONFIGMAPS) <= used_configmaps
    assert set(EXTERNAL_SECRETS) <= used_secrets
    guide = (ROOT / "deploy" / "README.md").read_text()
    for name in [*EXTERNAL_CONFIGMAPS, *(secret for secret, _ in EXTERNAL_SECRETS)]:
        assert name in guide, f"deploy/README.md does not say how to create {name}"


def test_image_tags_are_pinned(docs: list[Document], overlay: str) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    images = {
        container["image"] for doc in _workloads(docs) for container in manifests.containers(doc)
    }
    for image in images:
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name, image
        assert tag not in ("", "latest"), f"{image} is not pinned to a tag"
    assert f"{manifests.PLATFORM_IMAGE}:{version}" in images
    triton = manifests.find(docs, "Deployment", "triton")
    (server,) = manifests.containers(triton, init=False)
    if overlay == "gpu":
        assert server["image"] == PINNED.container
    else:
        assert server["image"] == f"ghcr.io/genai-platform/genai-triton-cpu:{version}"


def test_the_prompts_configmap_matches_the_prompt_files() -> None:
    committed = prompts_configmap.TARGET.read_text()
    assert committed == prompts_configmap.render(), (
        "deploy/kubernetes/base/prompts-configmap.yaml is stale: "
        "run python -m scripts.lib.prompts_configmap"
    )
    data = yaml.safe_load(committed)["data"]
    assert set(data) == {p.name for p in prompts_configmap.prompt_files()}


# ------------------------------------------------------------------------------ traffic


def _allowed(policy: Document, source: Document, port: str | int, docs: list[Document]) -> bool:
    """Whether `policy` lets pods of `source` (same namespace) connect to `port`."""
    labels = manifests.pod_labels(source)
    for rule in policy["spec"].get("ingress", []):
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        peers = rule.get("from")
        if peers is None:
            return True
        for peer in peers:
            if set(peer) == {"podSelector"} and _matches(
                peer["podSelector"].get("matchLabels", {}), labels
            ):
                return True
    return False


def _policies_for(docs: list[Document], target: Document) -> list[Document]:
    labels = manifests.pod_labels(target)
    return [
        policy
        for policy in manifests.of_kind(docs, "NetworkPolicy")
        if "Ingress" in policy["spec"]["policyTypes"]
        and _matches(policy["spec"]["podSelector"].get("matchLabels", {}), labels)
    ]


def _calls(docs: list[Document]) -> set[tuple[str, str, str]]:
    """(caller, callee, port name) of every target a platform Deployment dials."""
    services = {s["metadata"]["name"]: s for s in manifests.of_kind(docs, "Service")}
    calls = set()
    for name, doc in manifests.platform_deployments(docs).items():
        env = _settings_env(docs, manifests.serve_container(doc))
        for variable, value in env.items():
            for host, port in _dns_targets(variable, value):
                service = services[host]
                (callee,) = _selected(docs, service["spec"]["selector"])
                (port_name,) = [
                    p["targetPort"] for p in service["spec"]["ports"] if p["port"] == port
                ]
                calls.add((name, callee["metadata"]["name"], port_name))
    return calls


def test_network_policies_allow_exactly_the_calls_the_targets_make(docs: list[Document]) -> None:
    calls = _calls(docs)
    assert ("genai-gateway", "triton", "grpc") in calls
    assert ("genai-gateway", "genai-prompt", "grpc") in calls
    default_deny = manifests.find(docs, "NetworkPolicy", "default-deny-ingress")
    assert default_deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    workloads = {doc["metadata"]["name"]: doc for doc in of_workload_kinds(docs)}
    for caller in workloads.values():
        for callee in workloads.values():
            if caller is callee:
                continue
            edge = (caller["metadata"]["name"], callee["metadata"]["name"], "grpc")
            allowed = any(
                _allowed(policy, caller, "grpc", docs) for policy in _policies_for(docs, callee)
            )
            open_to_all = callee["metadata"]["name"] == "genai-gateway"
            assert allowed == (edge in calls or open_to_all), f"{edge}: allowed={allowed}"


# ------------------------------------------------------------------------------ operations


def test_termination_outlasts_the_pre_stop_pause_and_the_drain(docs: list[Document]) -> None:
    for name, doc in manifests.platform_deployments(docs).items():
        container = manifests.serve_container(doc)
        settings = load_settings(PlatformSettings, path=None, env=_settings_env(docs, container))
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace = manifests.pod_spec(doc)["terminationGracePeriodSeconds"]  # type: ignore[index]
        assert grace > pause + settings.server.grace_seconds, name


def test_workloads_are_hardened_and_sized(docs: list[Document]) -> None:
    for doc in _workloads(docs):
        name = doc["metadata"]["name"]
        spec = manifests.pod_spec(doc)
        assert spec is not None
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] >= 10000, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in manifests.containers(doc):
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where


def test_every_long_running_workload_has_a_disruption_budget_and_spreads(
    docs: list[Document],
) -> None:
    budgets = manifests.of_kind(docs, "PodDisruptionBudget")
    for doc in of_workload_kinds(docs):
        name = doc["metadata"]["name"]
        labels = manifests.pod_labels(doc)
        covering = [b for b in budgets if _matches(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(covering) == 1, f"{name}: {len(covering)} PodDisruptionBudgets"
        spread = manifests.pod_spec(doc)["topologySpreadConstraints"]  # type: ignore[index]
        assert any(c["topologyKey"] == "kubernetes.io/hostname" for c in spread), name


def test_autoscalers_target_deployments_and_never_the_same_one_twice(
    docs: list[Document], overlay: str
) -> None:
    deployments = {doc["metadata"]["name"] for doc in manifests.of_kind(docs, "Deployment")}
    targets = [
        doc["spec"]["scaleTargetRef"]["name"]
        for doc in manifests.of_kind(docs, "HorizontalPodAutoscaler", "ScaledObject")
    ]
    assert set(targets) <= deployments
    assert len(targets) == len(set(targets)), targets
    assert "genai-gateway" in targets
    if overlay == "gpu":
        triton = manifests.find(docs, "ScaledObject", "triton")
        queries = [t["metadata"]["query"] for t in triton["spec"]["triggers"]]
        assert any("nv_inference_pending_request_count" in q for q in queries)
        gateway = manifests.find(docs, "ScaledObject", "genai-gateway")
        queries = [t["metadata"].get("query", "") for t in gateway["spec"]["triggers"]]
        assert any("genai_gateway_in_flight" in q for q in queries)


def test_gpu_triton_gets_a_gpu_and_the_engine_repository() -> None:
    docs = manifests.render("gpu")
    triton = manifests.find(docs, "Deployment", "triton")
    spec = manifests.pod_spec(triton)
    assert spec is not None
    (server,) = spec["containers"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert triton["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    repository = next(a for a in server["args"] if a.startswith("--model-repository="))
    build_docs = manifests.render(manifests.ENGINE_BUILD)
    job = manifests.find(build_docs, "Job", "triton-engine-build")
    (build,) = manifests.containers(job, init=False)
    script = " ".join(build["args"])
    assert f"mv -T /engines/repository.next {repository.split('=', 1)[1]}" in script
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for d in (triton, job)
        for v in manifests.pod_spec(d)["volumes"]  # type: ignore[index]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"triton-engines"}
    manifests.find(docs, "PersistentVolumeClaim", "triton-engines")
    assert not manifests.of_kind(docs, "Job", "CronJob") or all(
        j["metadata"]["name"] != "triton-engine-build" for j in manifests.of_kind(docs, "Job")
    ), "the engine build is applied on its own, never with every rollout"


def test_the_engine_build_is_pinned_hardened_and_uses_the_gpu_overlays_images() -> None:
    build_docs = manifests.render(manifests.ENGINE_BUILD)
    gpu = manifests.render("gpu")
    (job,) = build_docs
    images = {c["image"] for c in manifests.containers(job)}
    gpu_images = {c["image"] for d in _workloads(gpu) for c in manifests.containers(d)}
    assert images <= gpu_images, images - gpu_images
    assert images >= {PINNED.container}
    spec = manifests.pod_spec(job)
    assert spec is not None
    assert spec["securityContext"]["runAsNonRoot"] is True
    for container in manifests.containers(job):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_autoscaled_deployments_leave_their_replica_count_to_the_autoscaler(
    docs: list[Document],
) -> None:
    for scaler in manifests.of_kind(docs, "HorizontalPodAutoscaler", "ScaledObject"):
        target = manifests.find(docs, "Deployment", scaler["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], target["metadata"]["name"]
