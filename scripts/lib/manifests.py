"""Reading the rendered Kubernetes manifests of deploy/kubernetes: the overlays rendered with
`scripts.lib.kustomize`, the platform's workloads in them, and each container's environment
with ConfigMap values resolved and Secret values left as references.

The cross-reference tests (tests/unit/deploy/test_manifest_references.py) and
`scripts/bench replicas` (which runs the same topology as processes, with the same variables)
read the manifests through this module.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from scripts.lib import kustomize

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS: tuple[str, ...] = ("cpu", "gpu")
"""The overlays that deploy the whole platform."""
ENGINE_BUILD = "gpu-engine-build"
"""The kustomization of the TensorRT-LLM engine build, applied on its own."""
PLATFORM_IMAGE = "ghcr.io/genai-platform/genai-platform"
"""The platform image's name (its tag is the project's version)."""

Document = dict[str, Any]


@cache
def _render(overlay: str) -> tuple[Document, ...]:
    return tuple(kustomize.render(KUBERNETES / "overlays" / overlay))


def render(overlay: str) -> list[Document]:
    """The overlay's resources (rendered once per process; callers get a shallow copy)."""
    return list(_render(overlay))


def find(docs: Sequence[Document], kind: str, name: str) -> Document:
    """The one resource of `kind` named `name`; KeyError when there is none."""
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise KeyError(f"no {kind} {name}")


def of_kind(docs: Sequence[Document], *kinds: str) -> list[Document]:
    return [doc for doc in docs if doc["kind"] in kinds]


def pod_spec(doc: Document) -> dict[str, Any] | None:
    """The pod spec of a workload (Deployment, StatefulSet, DaemonSet, Job, CronJob), else None."""
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    if kind == "CronJob":
        spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    if kind == "Pod":
        spec = doc["spec"]
        return spec
    return None


def pod_labels(doc: Document) -> dict[str, str]:
    """The labels of a workload's pods."""
    if doc["kind"] == "CronJob":
        labels: dict[str, str] = doc["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get(
            "labels", {}
        )
        return labels
    labels = doc["spec"]["template"]["metadata"].get("labels", {})
    return labels


def containers(doc: Document, *, init: bool = True) -> Iterator[dict[str, Any]]:
    """The containers of a workload (init containers first, with `init`)."""
    spec = pod_spec(doc)
    if spec is None:
        return
    if init:
        yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def is_platform(container: Mapping[str, Any]) -> bool:
    """Whether the container runs the platform image (`genai ...`)."""
    return str(container["image"]).split("@")[0].rsplit(":", 1)[0] == PLATFORM_IMAGE


@dataclass(frozen=True)
class SecretValue:
    """An environment value taken from a Secret (never in the repository)."""

    secret: str
    key: str


EnvValue = str | SecretValue


def secret_files(pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, SecretValue]:
    """The files the container sees from Secrets (`secret` and `projected` volumes), by path."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    files: dict[str, SecretValue] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        sources = [volume] if "secret" in volume else volume.get("projected", {}).get("sources", [])
        for source in sources:
            if "secret" not in source:
                continue
            name = source["secret"].get("secretName") or source["secret"]["name"]
            for item in source["secret"].get("items", []):
                files[f"{mount['mountPath']}/{item['path']}"] = SecretValue(name, item["key"])
    return files


def environment(
    docs: Sequence[Document], workload: Document, container: Mapping[str, Any]
) -> dict[str, EnvValue]:
    """The container's environment as the kubelet builds it: `envFrom` ConfigMaps first, then
    `env` (which wins). ConfigMap values are resolved from `docs` (KeyError for one that is not
    there); Secret values stay `SecretValue`s: those of `secretKeyRef`, and a path to a file of
    a Secret mounted in `workload`'s pods (a `GENAI_*_FILE` variable's value)."""
    pod = pod_spec(workload)
    files = secret_files(pod, container) if pod is not None else {}
    env: dict[str, EnvValue] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data = find(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
            env.update({source.get("prefix", "") + k: str(v) for k, v in data.items()})
        else:
            raise ValueError(f"envFrom {source}: only ConfigMaps are read this way")
    for variable in container.get("env", []):
        if "value" in variable:
            value = str(variable["value"])
            env[variable["name"]] = files.get(value, value)
            continue
        reference = variable.get("valueFrom", {})
        if "secretKeyRef" in reference:
            ref = reference["secretKeyRef"]
            env[variable["name"]] = SecretValue(ref["name"], ref["key"])
        elif "configMapKeyRef" in reference:
            ref = reference["configMapKeyRef"]
            env[variable["name"]] = str(find(docs, "ConfigMap", ref["name"])["data"][ref["key"]])
        else:
            raise ValueError(f"env {variable['name']}: unsupported valueFrom {reference}")
    return env


def hosted_services(args: Sequence[str]) -> tuple[str, ...]:
    """The services a `genai serve` command line hosts (`--service X` ...)."""
    services = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--service"]
    services += [arg.split("=", 1)[1] for arg in args if arg.startswith("--service=")]
    return tuple(services)


def platform_deployments(docs: Sequence[Document]) -> dict[str, Document]:
    """The Deployments running `genai serve`, by name."""
    found = {}
    for doc in of_kind(docs, "Deployment"):
        for container in containers(doc, init=False):
            if is_platform(container) and container.get("args", [])[:1] == ["serve"]:
                found[doc["metadata"]["name"]] = doc
    return found


def serve_container(doc: Document) -> dict[str, Any]:
    """The `genai serve` container of a platform Deployment."""
    for container in containers(doc, init=False):
        if is_platform(container) and container.get("args", [])[:1] == ["serve"]:
            return container
    raise KeyError(f"{doc['metadata']['name']} runs no `genai serve` container")
