#!/usr/bin/env python3
"""Checks of the Kubernetes deployment that need no cluster (issue 15).

Every overlay under `deploy/kubernetes/overlays/` is rendered with `scripts.lib.kustomize`
(the repo's renderer of kustomize's subset; no kustomize binary is reachable here), and every
rendered resource is checked:

- **Built-in kinds** against the strict JSON schemas of a named Kubernetes version that
  `kubernetes-validate` (pinned in the `dev` extra) ships: an unknown or misspelled field, a
  wrong type or a missing required field is a problem. The floor is Kubernetes 1.30.0; the
  command line also checks the newest version the package knows.
- **Custom resources** (KEDA's ScaledObject and TriggerAuthentication, the Prometheus
  operator's ServiceMonitor and PodMonitor) against their CRDs' `openAPIV3Schema`, vendored in
  `deploy/kubernetes/schemas/` (sources and versions in its README.md), made strict: an
  object's unknown field is an error (the API server would prune it silently) except below
  `x-kubernetes-preserve-unknown-fields: true`; `nullable` admits null;
  `x-kubernetes-list-type: set | map` demands unique items or keys. `metadata` is checked as
  the Kubernetes version's ObjectMeta. CEL rules (`x-kubernetes-validations`) are not
  evaluated.
- **Any other kind** is a problem: neither built in nor vendored means unchecked.
- Every resource has a `metadata.name`; no two resources of an overlay share kind, namespace
  and name; where an overlay's resources share one namespace, no namespaced resource lacks it
  (kustomize leaves an overlay's own resources where they are written); every
  `checkov.io/skipN` annotation names a check and gives a reason (`CKV_K8S_40=why`).

With `--checkov`, checkov (its own venv, `.venv-checkov`, from `scripts/setup checkov`) also
runs its Kubernetes checks on each overlay's rendered manifests and its Dockerfile checks on
`Dockerfile` and `deploy/images/*/Dockerfile`, offline. A failed check is a problem; a check is
skipped only by name with a reason: a `checkov.io/skipN` annotation on the resource, a
`# checkov:skip=CKV_DOCKER_N:reason` line in a Dockerfile, or an entry of `CHECKOV_SKIPS`.

Usage: python -m scripts.lib.manifest_checks [--checkov] [--kubernetes-version X.Y.Z]...
Exit status: 0 no problem, 1 problems (listed last), 2 bad usage or a missing tool.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, cast

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import kubernetes_validate.utils  # type: ignore[import-untyped]
from referencing import Registry, Resource

from scripts.lib import kustomize

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = Path("deploy/kubernetes/overlays")
SCHEMAS = ROOT / "deploy" / "kubernetes" / "schemas"
KUBERNETES_VERSION = "1.30.0"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
DOCKERFILES = ("Dockerfile", "deploy/images/*/Dockerfile")
# Built-in kinds that live outside namespaces (every other kind, custom ones included, is
# namespaced).
CLUSTER_SCOPED = frozenset(
    {
        "APIService",
        "CertificateSigningRequest",
        "ClusterRole",
        "ClusterRoleBinding",
        "CSIDriver",
        "CSINode",
        "CustomResourceDefinition",
        "FlowSchema",
        "IngressClass",
        "MutatingWebhookConfiguration",
        "Namespace",
        "Node",
        "PersistentVolume",
        "PriorityClass",
        "PriorityLevelConfiguration",
        "RuntimeClass",
        "StorageClass",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingWebhookConfiguration",
        "VolumeAttachment",
    }
)

# Checks skipped for every resource or Dockerfile: check id -> why. Prefer a skip on the one
# resource (`checkov.io/skipN: CKV_K8S_N=why` annotation, `# checkov:skip=CKV_DOCKER_N:why`).
CHECKOV_SKIPS: dict[str, str] = {
    "CKV_K8S_43": "images are pinned by tag (the platform's to the release version, Triton's to "
    "the TensorRT-LLM release of tests/contract/test_trtllm_conformance.py; "
    "tests/unit/deploy/test_manifest_references.py checks both); a digest exists only once "
    "the release pipeline has pushed the image, which then sets `digest:` in the overlay's "
    "images (deploy/README.md, Images)",
}

# kubernetes-validate's schemas refer to ObjectMeta and friends under this URI.
_DEFINITIONS_URI = "https://kubernetes.io/api/_definitions.json"
_OBJECT_META_REF = f"{_DEFINITIONS_URI}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# checkov reads a skip from every annotation whose key contains one of these, and splits its
# value at "=" into check id and reason (a second "=" crashes it).
_SKIP_PREFIXES = ("checkov.io/skip", "bridgecrew.io/skip", "cortex.io/skip")
_SKIP_KEY = re.compile(r"checkov\.io/skip\d+")
_SKIP_VALUE = re.compile(r"(CKV2?_[A-Z0-9]+_\d+)(?:=([^=]*))?")
_CHECK_ID = re.compile(r"CKV2?_[A-Z0-9]+_\d+")
_MAX_MESSAGE = 300


# ----------------------------------------------------------------------------------- naming


def resource_name(doc: Mapping[str, Any]) -> str:
    """`Kind/name` (or `Kind/namespace/name`) of a manifest, with `?` for what is missing."""
    metadata = doc.get("metadata")
    meta = metadata if isinstance(metadata, Mapping) else {}
    parts = [str(doc.get("kind", "?")), str(meta.get("name", "?"))]
    if meta.get("namespace"):
        parts.insert(1, str(meta["namespace"]))
    return "/".join(parts)


def _json_path(path: Iterable[object]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(root)"


def _short(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


def _error_lines(errors: Iterable[jsonschema.ValidationError]) -> list[str]:
    """`path: message` of each error, by path (a parent before its fields)."""
    found = {(_json_path(e.absolute_path), _short(e.message)) for e in errors}
    return [f"{path}: {message}" for path, message in sorted(found)]


# ---------------------------------------------------------------------- Kubernetes versions


def supported_versions() -> list[str]:
    """The Kubernetes versions whose schemas kubernetes-validate ships, oldest first."""
    return sorted(set(kubernetes_validate.utils.all_versions()), key=_version_key)


def latest_version() -> str:
    return cast(str, kubernetes_validate.latest_version())


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def check_version(version: str) -> str:
    """`version` (X.Y.Z, a leading v allowed) if kubernetes-validate has its schemas."""
    version = version.removeprefix("v")
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ValueError(f"Kubernetes version {version!r} is not X.Y.Z")
    minor = version.rsplit(".", 1)[0]
    known = supported_versions()
    if not any(v.rsplit(".", 1)[0] == minor for v in known):
        raise ValueError(
            f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for "
            f"Kubernetes {minor} (it has {known[0]} to {known[-1]})"
        )
    return version


# -------------------------------------------------------------------------- built-in kinds


@cache
def _builtin_file(version: str, name: str) -> Any:
    """A JSON file of kubernetes-validate's strict schemas of `version` (X.Y.0)."""
    return kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/{name}", version
    )


def _schema_version(version: str) -> str:
    minor = version.rsplit(".", 1)[0]
    return next(v for v in supported_versions() if v.rsplit(".", 1)[0] == minor)


@cache
def _definitions(version: str) -> Registry[Any]:
    """The Kubernetes version's definitions (ObjectMeta, PodSpec, ...) for `$ref`s."""
    defs: dict[str, Any] = _builtin_file(_schema_version(version), "_definitions.json")
    registry: Registry[Any] = Registry().with_resource(
        _DEFINITIONS_URI, Resource.from_contents(defs)
    )
    return registry


def _builtin_errors(doc: Mapping[str, Any], version: str) -> list[str] | None:
    """Problems of a built-in kind's resource; None if kubernetes-validate has no schema.

    kubernetes-validate's own `validate` decides; it stops at the first error, so when it
    fails the same schema is run again for all of them.
    """
    try:
        kubernetes_validate.validate(dict(doc), version, strict=True)
        return []
    except kubernetes_validate.SchemaNotFoundError:
        return None
    except kubernetes_validate.ValidationError as first:
        try:
            # The file kubernetes-validate read (its own naming: `deployment-apps-v1.json`).
            api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", str(doc["apiVersion"]))
            schema = _builtin_file(_schema_version(version), f"{doc['kind'].lower()}-{api}.json")
            validator = jsonschema.Draft202012Validator(schema, registry=_definitions(version))
            lines = _error_lines(validator.iter_errors(dict(doc)))
        except Exception:
            lines = []
        return lines or _error_lines([first])


# ------------------------------------------------------------------------ vendored CRD kinds


@dataclass(frozen=True)
class CrdSchema:
    """One vendored CRD version's `openAPIV3Schema`, file `<group>_<version>_<Kind>.json`."""

    api_version: str
    kind: str
    path: Path


def vendored_schemas(directory: Path = SCHEMAS) -> dict[tuple[str, str], CrdSchema]:
    """(apiVersion, kind) -> schema, for every `<group>_<version>_<Kind>.json` in `directory`."""
    found: dict[tuple[str, str], CrdSchema] = {}
    for path in sorted(directory.glob("*.json")):
        parts = path.stem.split("_")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"{path}: not named <group>_<version>_<Kind>.json")
        group, version, kind = parts
        found[(f"{group}/{version}", kind)] = CrdSchema(f"{group}/{version}", kind, path)
    return found


def strict_schema(node: Any, *, root: bool = True) -> Any:
    """An openAPIV3Schema (structural) as a strict JSON schema.

    Unknown fields of an object are errors (the API server prunes them) unless the object is
    `x-kubernetes-preserve-unknown-fields: true` or states its `additionalProperties`.
    `nullable: true` admits null; `x-kubernetes-int-or-string` without `anyOf` gets one. At
    the root, `metadata` becomes the Kubernetes ObjectMeta (the API server checks it so).
    """
    if isinstance(node, list):
        return [strict_schema(item, root=False) for item in node]
    if not isinstance(node, Mapping):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "$defs"):
            out[key] = {name: strict_schema(sub, root=False) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            out[key] = strict_schema(value, root=False)
        elif key == "x-kubernetes-validations":
            continue  # CEL: not evaluated here
        else:
            out[key] = value
    if out.pop("nullable", False) is True and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    is_object = out.get("type") in ("object", ["object", "null"]) or "properties" in out
    if (
        is_object
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if root and isinstance(out.get("properties"), dict) and "metadata" in out["properties"]:
        out["properties"] = {**out["properties"], "metadata": {"$ref": _OBJECT_META_REF}}
    return out


def _list_type(
    validator: jsonschema.protocols.Validator, value: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    """`x-kubernetes-list-type`: `set` items are unique, `map` items unique by their keys."""
    if not validator.is_type(instance, "array") or value not in ("set", "map"):
        return
    seen: list[Any] = []
    for index, item in enumerate(instance):
        if value == "set":
            key: Any = item
        else:
            keys = schema.get("x-kubernetes-list-map-keys", [])
            key = [item.get(k) if isinstance(item, Mapping) else None for k in keys]
        if key in seen:
            yield jsonschema.ValidationError(
                f"item {index} repeats {key!r} in a list of type {value!r}", path=[index]
            )
        seen.append(key)


# (types-jsonschema leaves `extend` unannotated.)
_CrdValidator = cast(Any, jsonschema.validators.extend)(
    jsonschema.Draft202012Validator, {"x-kubernetes-list-type": _list_type}
)


@cache
def _crd_validator(path: Path, version: str) -> jsonschema.protocols.Validator:
    schema = strict_schema(json.loads(path.read_text()))
    return cast(
        jsonschema.protocols.Validator, _CrdValidator(schema, registry=_definitions(version))
    )


# ----------------------------------------------------------------------------- validation


@dataclass
class Result:
    """One resource's outcome: `schema` says what it was checked against."""

    resource: str
    schema: str
    problems: list[str] = field(default_factory=list)


def validate_document(
    doc: Any, kubernetes_version: str, schemas: Mapping[tuple[str, str], CrdSchema] | None = None
) -> Result:
    """Check one manifest (see the module's docstring)."""
    if not isinstance(doc, Mapping):
        return Result("?", "-", [f"not a mapping but {type(doc).__name__}"])
    name = resource_name(doc)
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return Result(name, "-", ["apiVersion and kind must be strings"])
    problems: list[str] = []
    metadata = doc.get("metadata")
    if not isinstance(metadata, Mapping) or not metadata.get("name"):
        problems.append("metadata.name: missing")
    problems += skip_annotation_problems(doc)
    version = check_version(kubernetes_version)
    crds = vendored_schemas() if schemas is None else schemas
    crd = crds.get((api_version, kind))
    if crd is not None:
        validator = _crd_validator(crd.path, version)
        schema = f"CRD schema {crd.path.name}"
        problems += _error_lines(validator.iter_errors(dict(doc)))
    else:
        builtin = _builtin_errors(doc, version)
        schema = f"Kubernetes {version} {api_version}"
        if builtin is None:
            schema = "-"
            problems.append(
                f"no schema for {api_version} {kind}: not a kind of Kubernetes {version}, and "
                f"not vendored in {_relative(SCHEMAS)}"
            )
        else:
            problems += builtin
    return Result(name, schema, problems)


def validate_resources(
    docs: Sequence[Any],
    kubernetes_versions: Sequence[str],
    schemas: Mapping[tuple[str, str], CrdSchema] | None = None,
) -> list[Result]:
    """Each manifest checked against every version (problems merged), and across them: no
    resource twice, and none left without the namespace that the others share."""
    crds = vendored_schemas() if schemas is None else schemas
    results: list[Result] = []
    for doc in docs:
        per_version = [validate_document(doc, v, crds) for v in kubernetes_versions]
        problems = list(dict.fromkeys(p for r in per_version for p in r.problems))
        results.append(Result(per_version[0].resource, per_version[0].schema, problems))
    namespaces = {ns for ns in map(_namespace, docs) if ns is not None}
    seen: set[str] = set()
    for doc, result in zip(docs, results, strict=True):
        if not isinstance(doc, Mapping):
            continue
        if result.resource in seen:
            result.problems.append("defined twice")
        seen.add(result.resource)
        if (
            len(namespaces) == 1
            and _namespace(doc) is None
            and doc.get("kind") not in CLUSTER_SCOPED
        ):
            result.problems.append(
                f"metadata.namespace: missing, while the other resources are in {min(namespaces)}"
                " (it would land in the namespace kubectl defaults to)"
            )
    return results


def validate_documents(docs: Iterable[Any], kubernetes_version: str) -> list[str]:
    """Problems of the manifests (`Kind/name: path: message`), also across them (see
    `validate_resources`)."""
    results = validate_resources(list(docs), [kubernetes_version])
    return [f"{r.resource}: {p}" for r in results for p in r.problems]


def _namespace(doc: Any) -> str | None:
    metadata = doc.get("metadata") if isinstance(doc, Mapping) else None
    namespace = metadata.get("namespace") if isinstance(metadata, Mapping) else None
    return str(namespace) if namespace else None


def skip_annotation_problems(doc: Mapping[str, Any]) -> list[str]:
    """Every checkov skip annotation (on the resource or a pod template) must read
    `checkov.io/skip<N>: <check id>=<reason>`, the reason without "="."""
    problems = []
    for where, found in _annotations(doc):
        for key, value in found.items():
            if not any(prefix in str(key) for prefix in _SKIP_PREFIXES):
                continue
            at = f"{where}.annotations[{key}]"
            match = _SKIP_VALUE.fullmatch(str(value))
            if not _SKIP_KEY.fullmatch(str(key)):
                problems.append(f"{at}: a checkov skip's key must be checkov.io/skip<N>")
            elif match is None:
                problems.append(
                    f"{at}: {value!r} is not <check id>=<reason> (one check, no '=' in the reason)"
                )
            elif not (match.group(2) or "").strip():
                problems.append(f"{at}: skips {match.group(1)} without a reason")
    return problems


def _annotations(node: Any, path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    if not isinstance(node, Mapping):
        return
    for key, value in node.items():
        here = f"{path}.{key}" if path else str(key)
        if key == "metadata" and isinstance(value, Mapping):
            annotations = value.get("annotations")
            if isinstance(annotations, Mapping):
                yield here, annotations
        elif isinstance(value, Mapping):
            yield from _annotations(value, here)


# --------------------------------------------------------------------------------- overlays


def overlays(root: Path) -> list[Path]:
    """The overlay directories (those with a kustomization file), by name."""
    base = root / OVERLAYS
    names = ("kustomization.yaml", "kustomization.yml", "Kustomization")
    return sorted(d for d in base.iterdir() if d.is_dir() and any((d / n).is_file() for n in names))


def render_overlays(root: Path) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Each overlay's rendered documents by name, and the problems of rendering."""
    base = root / OVERLAYS
    if not base.is_dir():
        return {}, [f"{OVERLAYS}: missing"]
    found = overlays(root)
    if not found:
        return {}, [f"{OVERLAYS}: no overlay (a directory with a kustomization.yaml)"]
    rendered: dict[str, list[dict[str, Any]]] = {}
    problems: list[str] = []
    for directory in found:
        try:
            docs = kustomize.render(directory)
        except Exception as exc:
            problems.append(f"overlay {directory.name}: does not render: {exc}")
            continue
        if not docs:
            problems.append(f"overlay {directory.name}: renders no resource")
        rendered[directory.name] = docs
    return rendered, problems


def check_overlays(root: Path, kubernetes_version: str = KUBERNETES_VERSION) -> list[str]:
    """Problems of every overlay's rendered manifests (`overlay NAME: Kind/name: ...`)."""
    rendered, problems = render_overlays(root)
    for name, docs in rendered.items():
        problems += [f"overlay {name}: {p}" for p in validate_documents(docs, kubernetes_version)]
    return problems


# ---------------------------------------------------------------------------------- checkov


@dataclass(frozen=True)
class CheckovFinding:
    """A check that failed, or was skipped (with `reason`), on one resource of one file."""

    check_id: str
    check_name: str
    file: Path
    resource: str
    lines: tuple[int, int] | None = None
    reason: str = ""


@dataclass
class CheckovReport:
    """One checkov run: failed checks are problems; skipped ones are listed with reasons."""

    passed: dict[Path, int] = field(default_factory=dict)
    failed: list[CheckovFinding] = field(default_factory=list)
    skipped: list[CheckovFinding] = field(default_factory=list)
    parsing_errors: list[Path] = field(default_factory=list)

    def problems(self, label: Callable[[Path], str] | None = None) -> list[str]:
        """`<file>: <resource>: checkov <check> ...`, files named by `label` (default: path)."""
        name = label or _relative

        def where(finding: CheckovFinding) -> str:
            resource = finding.resource.rstrip(".")
            return f"{name(finding.file)}: {resource}" if resource else name(finding.file)

        out = [f"{name(p)}: checkov could not parse it" for p in self.parsing_errors]
        out += [f"{where(f)}: checkov {f.check_id} {f.check_name}".rstrip() for f in self.failed]
        out += [
            f"{where(f)}: checkov {f.check_id} skipped without a reason"
            for f in self.skipped
            if f.reason.strip() in ("", "No comment provided")
        ]
        return out


def checkov_env() -> dict[str, str]:
    """checkov's environment: offline (no platform, no PyPI update check), no colours."""
    env = dict(os.environ)
    env.update(
        {
            "BC_SKIP_MAPPING": "TRUE",  # no download of the platform's check-id mapping
            "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",  # no query of PyPI for a newer checkov
            "ANSI_COLORS_DISABLED": "1",
            "LOG_LEVEL": "WARNING",
        }
    )
    # An API key would make checkov talk to its platform: never here.
    for name in ("BC_API_KEY", "PRISMA_API_URL"):
        env.pop(name, None)
    return env


def checkov_command(
    files: Sequence[Path],
    *,
    checkov: Path = CHECKOV,
    frameworks: Sequence[str] = ("kubernetes", "dockerfile"),
    skips: Mapping[str, str] = CHECKOV_SKIPS,
) -> list[str]:
    """The checkov command line: the given files only, offline, JSON, every result listed."""
    bad = [f"{k}: {v!r}" for k, v in skips.items() if not _CHECK_ID.fullmatch(k) or not v.strip()]
    if bad:
        raise ValueError(f"CHECKOV_SKIPS needs a check id and a reason: {bad}")
    command = [str(checkov), "--framework", *frameworks, "--output", "json", "--compact"]
    # --skip-download: nothing from the platform; --soft-fail: the exit status says whether
    # checkov ran, the report says what failed.
    command += ["--skip-download", "--soft-fail", "--file", *(str(p) for p in files)]
    if skips:
        command += ["--skip-check", ",".join(skips)]
    return command


def run_checkov(
    files: Sequence[Path],
    *,
    checkov: Path = CHECKOV,
    frameworks: Sequence[str] = ("kubernetes", "dockerfile"),
    skips: Mapping[str, str] = CHECKOV_SKIPS,
) -> CheckovReport:
    """Run checkov's `frameworks` checks on `files` (absolute paths), offline, no prompts.

    Raises FileNotFoundError when checkov is not installed, RuntimeError when it fails.
    """
    if not checkov.is_file():
        raise FileNotFoundError(f"{_relative(checkov)} missing: run scripts/setup checkov")
    command = checkov_command(files, checkov=checkov, frameworks=frameworks, skips=skips)
    with tempfile.TemporaryDirectory(prefix="genai-checkov-run-") as cwd:
        # (In an empty directory: checkov also reads a .checkov.yaml from its working directory.)
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=checkov_env(),
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"checkov exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return parse_checkov(proc.stdout)


def parse_checkov(output: str) -> CheckovReport:
    """checkov's `--output json`: one object per framework (a list of them for several)."""
    report = CheckovReport()
    text = output.strip()
    data = json.loads(text) if text else []
    for run in data if isinstance(data, list) else [data]:
        results = run.get("results", {}) if isinstance(run, Mapping) else {}
        for check in results.get("passed_checks", []):
            path = _finding(check).file
            report.passed[path] = report.passed.get(path, 0) + 1
        report.failed += [_finding(c) for c in results.get("failed_checks", [])]
        report.skipped += [_finding(c) for c in results.get("skipped_checks", [])]
        report.parsing_errors += [Path(p) for p in results.get("parsing_errors", [])]
    return report


def _finding(check: Mapping[str, Any]) -> CheckovFinding:
    lines = check.get("file_line_range") or None
    return CheckovFinding(
        check_id=str(check.get("check_id", "?")),
        check_name=str(check.get("check_name") or ""),
        file=Path(check.get("file_abs_path") or check.get("file_path") or "?"),
        resource=str(check.get("resource") or ""),
        lines=(int(lines[0]), int(lines[1])) if lines else None,
        reason=str((check.get("check_result") or {}).get("suppress_comment") or ""),
    )


def dockerfiles(root: Path) -> tuple[list[Path], list[str]]:
    """The Dockerfiles to check, and the problem of a missing one."""
    found: list[Path] = []
    problems: list[str] = []
    for pattern in DOCKERFILES:
        matches = sorted(root.glob(pattern))
        if not matches and "*" not in pattern:
            problems.append(f"{pattern}: missing")
        found += matches
    return found, problems


def checkov_overlays(
    root: Path,
    *,
    rendered: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    checkov: Path = CHECKOV,
    out: Callable[[str], None] = print,
) -> list[str]:
    """checkov's Kubernetes checks on each rendered overlay (`rendered`, or rendered here) and
    its Dockerfile checks, in one run; prints what it checked, returns the problems."""
    problems: list[str] = []
    if rendered is None:
        rendered, problems = render_overlays(root)
    files, missing = dockerfiles(root)
    problems += missing
    with tempfile.TemporaryDirectory(prefix="genai-checkov-") as tmp:
        labels: dict[Path, str] = {}
        for name, docs in rendered.items():
            path = Path(tmp) / f"overlay-{name}.yaml"
            path.write_text(kustomize.dump(docs))
            labels[path] = f"overlay {name}"
        labels.update({path.resolve(): _relative(path) for path in files})
        if not labels:
            return problems
        report = run_checkov([*labels], checkov=checkov)
    if CHECKOV_SKIPS:
        skips = ", ".join(f"{k} ({v})" for k, v in CHECKOV_SKIPS.items())
        out(f"checkov skips everywhere: {skips}")
    for path, label in labels.items():
        failed = [f for f in report.failed if f.file == path]
        skipped = [f for f in report.skipped if f.file == path]
        out(
            f"checkov, {label}: {report.passed.get(path, 0)} passed, {len(failed)} failed, "
            f"{len(skipped)} skipped"
        )
        for finding in skipped:
            out(f"  skip {finding.resource} {finding.check_id}: {finding.reason}")
        for finding in failed:
            out(f"  FAIL {finding.resource} {finding.check_id} {finding.check_name}")
    return problems + report.problems(lambda path: labels.get(path, _relative(path)))


# ------------------------------------------------------------------------------ command line


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.lib.manifest_checks",
        description="Validate the rendered Kubernetes overlays (and run checkov on them).",
    )
    parser.add_argument(
        "--kubernetes-version",
        action="append",
        metavar="X.Y.Z",
        help=f"validate against this Kubernetes version (repeatable; default: "
        f"{KUBERNETES_VERSION} and the newest that kubernetes-validate knows)",
    )
    parser.add_argument(
        "--checkov", action="store_true", help="also run checkov (needs scripts/setup checkov)"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--checkov-bin", type=Path, default=CHECKOV, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        versions = [
            check_version(v)
            for v in args.kubernetes_version or [KUBERNETES_VERSION, latest_version()]
        ]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    versions = sorted(set(versions), key=_version_key)
    rendered, problems = render_overlays(args.root)
    for problem in problems:
        print(problem)
    schemas = vendored_schemas()
    for name, docs in rendered.items():
        print(f"overlay {name}: {len(docs)} resources, Kubernetes {', '.join(versions)}")
        for result in validate_resources(docs, versions, schemas):
            schema = result.schema.replace(f"Kubernetes {versions[0]} ", "")
            print(f"  {'FAIL' if result.problems else 'ok  '} {result.resource} ({schema})")
            for problem in result.problems:
                print(f"       {problem}")
            problems += [f"overlay {name}: {result.resource}: {p}" for p in result.problems]
    if args.checkov:
        try:
            problems += checkov_overlays(args.root, rendered=rendered, checkov=args.checkov_bin)
        except (FileNotFoundError, RuntimeError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if problems:
        print(f"\n{len(problems)} problem(s):")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print("\nno problem")
    return 0


if __name__ == "__main__":
    sys.exit(main())
