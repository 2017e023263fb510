"""scripts/lib/manifest_checks.py: strict validation of built-in and vendored CRD kinds, skip
annotations, checkov's command and report, and the real overlays.

Small manifests of their own, except `test_real_overlays_validate`, which renders
deploy/kubernetes/overlays. checkov itself runs in one test (about 5 s), where
`scripts/setup checkov` has installed it; `scripts/lint deploy` runs it on the overlays.
"""

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from scripts.lib import kustomize
from scripts.lib import manifest_checks as mc

ROOT = Path(__file__).resolve().parents[3]
V = mc.KUBERNETES_VERSION


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gateway", "labels": {"app": "gateway"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "gateway"}},
            "template": {
                "metadata": {"labels": {"app": "gateway"}},
                "spec": {
                    "containers": [
                        {
                            "name": "gateway",
                            "image": "ghcr.io/example/gateway:1.0",
                            "ports": [{"name": "grpc", "containerPort": 50051}],
                            "readinessProbe": {
                                "grpc": {
                                    "port": 50051,
                                    "service": "genai.gateway.v1.GatewayService",
                                }
                            },
                        }
                    ]
                },
            },
        },
    }


def scaled_object() -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "gateway"},
        "spec": {
            "scaleTargetRef": {"name": "gateway"},
            "minReplicaCount": 1,
            "maxReplicaCount": 4,
            "triggers": [
                {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}},
                {
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": "http://prometheus:9090",
                        "query": "sum(x)",
                        "threshold": "8",
                    },
                },
            ],
        },
    }


def service_monitor() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "triton", "labels": {"release": "prometheus"}},
        "spec": {
            "selector": {"matchLabels": {"app": "triton"}},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }


def pod_monitor() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "platform"},
        "spec": {
            "selector": {
                "matchExpressions": [{"key": "app", "operator": "In", "values": ["gateway"]}]
            },
            "podMetricsEndpoints": [{"port": "metrics", "interval": "15s"}],
        },
    }


def trigger_authentication() -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": "prometheus"},
        "spec": {"secretTargetRef": [{"parameter": "bearerToken", "name": "s", "key": "token"}]},
    }


# ----------------------------------------------------------------------------- built-in kinds


@pytest.mark.parametrize("version", [V, mc.latest_version()])
def test_valid_deployment_passes(version: str) -> None:
    result = mc.validate_document(deployment(), version)
    assert result.problems == []
    assert result.resource == "Deployment/gateway"
    assert result.schema == f"Kubernetes {version} apps/v1"


def test_misspelled_field_fails_strictly() -> None:
    doc = deployment()
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolcy"] = "Always"
    assert mc.validate_documents([doc], V) == [
        "Deployment/gateway: spec.template.spec.containers[0]: Additional properties are not "
        "allowed ('imagePullPolcy' was unexpected)"
    ]


def test_wrong_type_fails() -> None:
    doc = deployment()
    doc["spec"]["replicas"] = "2"
    [problem] = mc.validate_documents([doc], V)
    assert problem.startswith("Deployment/gateway: spec.replicas: '2' is not of type 'integer'")


def test_every_error_of_a_resource_is_listed() -> None:
    # kubernetes-validate stops at the first error; the check lists them all.
    doc = deployment()
    doc["spec"]["replicas"] = "2"
    doc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "50051"
    doc["spec"]["template"]["spec"]["restartPolicyy"] = "Always"
    problems = mc.validate_documents([doc], V)
    assert [p.split(":")[1].strip() for p in problems] == [
        "spec.replicas",
        "spec.template.spec",
        "spec.template.spec.containers[0].ports[0].containerPort",
    ]


def test_missing_name_and_duplicates_fail() -> None:
    nameless = deployment()
    del nameless["metadata"]["name"]
    assert mc.validate_documents([nameless], V) == ["Deployment/?: metadata.name: missing"]
    assert mc.validate_documents([deployment(), deployment()], V) == [
        "Deployment/gateway: defined twice"
    ]
    in_genai, in_other = deployment(), deployment()
    in_genai["metadata"]["namespace"] = "genai"
    in_other["metadata"]["namespace"] = "other"
    assert mc.validate_documents([in_genai, in_other], V) == []


def test_a_resource_left_out_of_the_shared_namespace_fails() -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "genai"}}
    placed = deployment()
    placed["metadata"]["namespace"] = "genai"
    monitor = service_monitor()
    assert mc.validate_documents([namespace, placed, monitor], V) == [
        "ServiceMonitor/triton: metadata.namespace: missing, while the other resources are in "
        "genai (it would land in the namespace kubectl defaults to)"
    ]
    monitor["metadata"]["namespace"] = "genai"
    assert mc.validate_documents([namespace, placed, monitor], V) == []
    # Without any namespace (a namespace-less base), nothing is missing.
    assert mc.validate_documents([namespace, deployment(), service_monitor()], V) == []


def test_field_newer_than_the_version_fails() -> None:
    # A Pod's resources (pod-level requests and limits) arrived in Kubernetes 1.32.
    doc = deployment()
    doc["spec"]["template"]["spec"]["resources"] = {"requests": {"cpu": "1"}}
    assert mc.validate_documents([doc], "1.37.0") == []
    [problem] = mc.validate_documents([doc], "1.30.0")
    assert "'resources' was unexpected" in problem


@pytest.mark.parametrize("version", ["1.24.0", "1.99.0", "1.30", "latest"])
def test_unsupported_versions_are_refused(version: str) -> None:
    with pytest.raises(ValueError, match="Kubernetes"):
        mc.check_version(version)
    assert mc.check_version("v1.30.0") == "1.30.0"


# ---------------------------------------------------------------------------- vendored kinds


@pytest.mark.parametrize(
    "make", [scaled_object, service_monitor, pod_monitor, trigger_authentication]
)
def test_valid_custom_resources_pass(make: Any) -> None:
    result = mc.validate_document(make(), V)
    assert result.problems == []
    assert result.schema.startswith("CRD schema ")


@pytest.mark.parametrize(
    ("make", "change", "expected"),
    [
        (
            scaled_object,
            lambda d: d["spec"].update(minReplicaCont=1),
            "spec: Additional properties are not allowed ('minReplicaCont' was unexpected)",
        ),
        (
            scaled_object,
            lambda d: d["spec"].update(maxReplicaCount="4"),
            "spec.maxReplicaCount: '4' is not of type 'integer'",
        ),
        (
            # KEDA's trigger metadata is a map of strings.
            scaled_object,
            lambda d: d["spec"]["triggers"][1]["metadata"].update(threshold=8),
            "spec.triggers[1].metadata.threshold: 8 is not of type 'string'",
        ),
        (
            scaled_object,
            lambda d: d["spec"].pop("scaleTargetRef"),
            "spec: 'scaleTargetRef' is a required property",
        ),
        (
            service_monitor,
            lambda d: d["spec"]["endpoints"][0].update(intervall="15s"),
            "spec.endpoints[0]: Additional properties are not allowed ('intervall' was unexpected)",
        ),
        (
            service_monitor,
            lambda d: d["spec"]["endpoints"][0].update(interval="15 seconds"),
            "spec.endpoints[0].interval: '15 seconds' does not match",
        ),
        (
            # metadata is Kubernetes' ObjectMeta, strict too.
            service_monitor,
            lambda d: d["metadata"].update(label={"a": "b"}),
            "metadata: Additional properties are not allowed ('label' was unexpected)",
        ),
        (
            pod_monitor,
            lambda d: d["spec"].update(podMetricsEndpoints="metrics"),
            "spec.podMetricsEndpoints: 'metrics' is not of type 'array'",
        ),
    ],
)
def test_invalid_custom_resources_fail(make: Any, change: Any, expected: str) -> None:
    doc = make()
    change(doc)
    problems = mc.validate_document(doc, V).problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected)


def test_unknown_kind_fails() -> None:
    doc = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert mc.validate_documents([doc], V) == [
        f"Widget/w: no schema for example.com/v1 Widget: not a kind of Kubernetes {V}, and not "
        "vendored in deploy/kubernetes/schemas"
    ]
    # A vendored kind under a version that is not vendored is unknown as well.
    doc = scaled_object()
    doc["apiVersion"] = "keda.sh/v1"
    [problem] = mc.validate_documents([doc], V)
    assert "no schema for keda.sh/v1 ScaledObject" in problem


def test_not_a_resource_fails() -> None:
    assert mc.validate_documents(["text"], V) == ["?: not a mapping but str"]
    assert mc.validate_documents([{"kind": "Deployment"}], V) == [
        "Deployment/?: apiVersion and kind must be strings"
    ]


def test_vendored_schemas_are_the_four_crds_and_documented() -> None:
    schemas = mc.vendored_schemas()
    assert set(schemas) == {
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
    }
    readme = (mc.SCHEMAS / "README.md").read_text()
    for schema in schemas.values():
        assert f"`{schema.path.name}`" in readme
        loaded = json.loads(schema.path.read_text())
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(loaded["properties"])


def test_strict_schema_keeps_preserved_fields_and_nulls() -> None:
    schema = mc.strict_schema(
        {
            "type": "object",
            "properties": {
                "metadata": {"type": "object"},
                "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
                "maybe": {"type": "string", "nullable": True},
                "checked": {"type": "string", "x-kubernetes-validations": [{"rule": "x"}]},
            },
        }
    )
    assert schema["additionalProperties"] is False
    assert schema["properties"]["metadata"] == {"$ref": mc._OBJECT_META_REF}
    assert "additionalProperties" not in schema["properties"]["open"]
    assert schema["properties"]["closed"]["additionalProperties"] is False
    assert schema["properties"]["maybe"]["type"] == ["string", "null"]
    assert "x-kubernetes-validations" not in schema["properties"]["checked"]


def test_list_types_set_and_map_demand_unique_items(tmp_path: Path) -> None:
    path = tmp_path / "example.com_v1_Thing.json"
    path.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "tags": {
                        "type": "array",
                        "items": {"type": "string"},
                        "x-kubernetes-list-type": "set",
                    },
                    "ports": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "port": {"type": "integer"}},
                        },
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["name"],
                    },
                },
            }
        )
    )
    schemas = mc.vendored_schemas(tmp_path)
    doc = {
        "apiVersion": "example.com/v1",
        "kind": "Thing",
        "metadata": {"name": "t"},
        "tags": ["a", "b", "a"],
        "ports": [{"name": "grpc", "port": 1}, {"name": "http", "port": 2}, {"name": "grpc"}],
    }
    assert mc.validate_document(doc, V, schemas).problems == [
        "ports[2]: item 2 repeats ['grpc'] in a list of type 'map'",
        "tags[2]: item 2 repeats 'a' in a list of type 'set'",
    ]


def test_schema_files_must_be_named_by_group_version_kind(tmp_path: Path) -> None:
    (tmp_path / "scaledobject.json").write_text("{}")
    with pytest.raises(ValueError, match="<group>_<version>_<Kind>"):
        mc.vendored_schemas(tmp_path)


# ---------------------------------------------------------------------------- skip annotations


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({"checkov.io/skip1": "CKV_K8S_43=tags are pinned by the release"}, []),
        ({"checkov.io/skip1": "CKV2_K8S_6=NetworkPolicy in base"}, []),
        (
            {"checkov.io/skip1": "CKV_K8S_43"},
            ["metadata.annotations[checkov.io/skip1]: skips CKV_K8S_43 without a reason"],
        ),
        (
            {"checkov.io/skip2": "CKV_K8S_43=  "},
            ["metadata.annotations[checkov.io/skip2]: skips CKV_K8S_43 without a reason"],
        ),
        (
            {"checkov.io/skip1": "CKV_K8S_43=a=b"},
            [
                "metadata.annotations[checkov.io/skip1]: 'CKV_K8S_43=a=b' is not <check id>="
                "<reason> (one check, no '=' in the reason)"
            ],
        ),
        (
            {"checkov.io/skip": "CKV_K8S_43=why"},
            [
                "metadata.annotations[checkov.io/skip]: a checkov skip's key must be checkov.io/skip<N>"
            ],
        ),
        (
            {"bridgecrew.io/skip1": "CKV_K8S_43=why"},
            [
                "metadata.annotations[bridgecrew.io/skip1]: a checkov skip's key must be "
                "checkov.io/skip<N>"
            ],
        ),
        ({"example.com/other": "CKV_K8S_43"}, []),
    ],
)
def test_skip_annotations_need_a_check_and_a_reason(
    annotations: dict[str, str], expected: list[str]
) -> None:
    doc = deployment()
    doc["metadata"]["annotations"] = annotations
    assert mc.skip_annotation_problems(doc) == expected
    problems = mc.validate_documents([doc], V)
    assert problems == [f"Deployment/gateway: {p}" for p in expected]


def test_skip_annotations_on_pod_templates_are_checked_too() -> None:
    doc = deployment()
    doc["spec"]["template"]["metadata"]["annotations"] = {"checkov.io/skip1": "CKV_K8S_40"}
    assert mc.skip_annotation_problems(doc) == [
        "spec.template.metadata.annotations[checkov.io/skip1]: skips CKV_K8S_40 without a reason"
    ]


# ---------------------------------------------------------------------------------- overlays


def fake_render(docs_by_overlay: dict[str, list[dict[str, Any]]]) -> Any:
    def render(directory: Path) -> list[dict[str, Any]]:
        if directory.name not in docs_by_overlay:
            raise ValueError(f"cannot render {directory.name}")
        return copy.deepcopy(docs_by_overlay[directory.name])

    return render


def overlay_root(tmp_path: Path, *names: str) -> Path:
    for name in names:
        directory = tmp_path / mc.OVERLAYS / name
        directory.mkdir(parents=True)
        (directory / "kustomization.yaml").write_text("resources: []\n")
    (tmp_path / mc.OVERLAYS / "not-an-overlay").mkdir(parents=True, exist_ok=True)
    return tmp_path


def test_check_overlays_prefixes_problems_with_the_overlay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = scaled_object()
    bad["spec"]["triggers"][0]["metadata"]["value"] = 70
    monkeypatch.setattr(
        kustomize, "render", fake_render({"cpu": [deployment()], "gpu": [deployment(), bad]})
    )
    root = overlay_root(tmp_path, "cpu", "gpu", "broken")
    assert mc.check_overlays(root) == [
        "overlay broken: does not render: cannot render broken",
        "overlay gpu: ScaledObject/gateway: spec.triggers[0].metadata.value: 70 is not of type "
        "'string'",
    ]


def test_missing_overlays_are_a_problem(tmp_path: Path) -> None:
    assert mc.check_overlays(tmp_path) == ["deploy/kubernetes/overlays: missing"]
    (tmp_path / mc.OVERLAYS).mkdir(parents=True)
    assert mc.check_overlays(tmp_path) == [
        "deploy/kubernetes/overlays: no overlay (a directory with a kustomization.yaml)"
    ]


def test_main_reports_each_resource_per_overlay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = deployment()
    wrong["metadata"]["name"] = "router"
    wrong["spec"]["replicas"] = "many"
    monkeypatch.setattr(
        kustomize, "render", fake_render({"cpu": [deployment(), scaled_object(), wrong]})
    )
    root = overlay_root(tmp_path, "cpu")
    assert mc.main(["--root", str(root), "--kubernetes-version", "1.30.0"]) == 1
    out = capsys.readouterr().out
    assert "overlay cpu: 3 resources, Kubernetes 1.30.0" in out
    assert "  ok   Deployment/gateway (apps/v1)" in out
    assert "  ok   ScaledObject/gateway (CRD schema keda.sh_v1alpha1_ScaledObject.json)" in out
    assert "  FAIL Deployment/router (apps/v1)" in out
    assert out.rstrip().endswith(
        "overlay cpu: Deployment/router: spec.replicas: 'many' is not of type 'integer', 'null'"
    )
    assert mc.main(["--root", str(root), "--kubernetes-version", "1.20.0"]) == 2


def test_real_overlays_validate() -> None:
    assert (ROOT / mc.OVERLAYS).is_dir()
    assert mc.check_overlays(ROOT) == []
    assert mc.check_overlays(ROOT, mc.latest_version()) == []


# ----------------------------------------------------------------------------------- checkov

CHECKOV_JSON = {
    "check_type": "kubernetes",
    "results": {
        "passed_checks": [
            {"check_id": "CKV_K8S_8", "file_abs_path": "/t/cpu.yaml", "resource": "Deployment.a"}
        ],
        "failed_checks": [
            {
                "check_id": "CKV_K8S_40",
                "check_name": "Containers should run as a high UID to avoid host conflict",
                "file_abs_path": "/t/cpu.yaml",
                "file_line_range": [1, 20],
                "resource": "Deployment.default.a",
            }
        ],
        "skipped_checks": [
            {
                "check_id": "CKV_K8S_43",
                "file_abs_path": "/t/cpu.yaml",
                "resource": "Deployment.default.a",
                "check_result": {"result": "SKIPPED", "suppress_comment": "tags are pinned"},
            },
            {
                "check_id": "CKV_K8S_15",
                "file_abs_path": "/t/cpu.yaml",
                "resource": "Deployment.default.a",
                "check_result": {"result": "SKIPPED", "suppress_comment": "No comment provided"},
            },
        ],
        "parsing_errors": ["/t/bad.yaml"],
    },
    "summary": {"passed": 1, "failed": 1, "skipped": 2, "parsing_errors": 1},
}


def test_checkov_report_failures_and_skips_without_reason_are_problems() -> None:
    report = mc.parse_checkov(json.dumps([CHECKOV_JSON]))
    assert report == mc.parse_checkov(json.dumps(CHECKOV_JSON))
    assert report.passed == {Path("/t/cpu.yaml"): 1}
    assert [f.reason for f in report.skipped] == ["tags are pinned", "No comment provided"]
    assert report.problems() == [
        "/t/bad.yaml: checkov could not parse it",
        "/t/cpu.yaml: Deployment.default.a: checkov CKV_K8S_40 Containers should run as a high "
        "UID to avoid host conflict",
        "/t/cpu.yaml: Deployment.default.a: checkov CKV_K8S_15 skipped without a reason",
    ]
    assert report.problems(lambda path: f"overlay {path.stem}")[1].startswith(
        "overlay cpu: Deployment.default.a: checkov CKV_K8S_40 "
    )
    assert mc.parse_checkov("").problems() == []


def test_checkov_runs_offline_on_the_given_files_only() -> None:
    command = mc.checkov_command([Path("/t/cpu.yaml"), Path("/t/Dockerfile")], skips={})
    assert command[1:] == [
        "--framework",
        "kubernetes",
        "dockerfile",
        "--output",
        "json",
        "--compact",
        "--skip-download",
        "--soft-fail",
        "--file",
        "/t/cpu.yaml",
        "/t/Dockerfile",
    ]
    env = mc.checkov_env()
    assert env["BC_SKIP_MAPPING"] == "TRUE"
    assert env["CKV_SKIP_PACKAGE_UPDATE_CHECK"] == "true"
    assert "BC_API_KEY" not in env
    with pytest.raises(ValueError, match="a check id and a reason"):
        mc.checkov_command([], skips={"CKV_K8S_43": " "})
    skipping = mc.checkov_command([], skips={"CKV_K8S_43": "why", "CKV_K8S_15": "why"})
    assert skipping[-2:] == ["--skip-check", "CKV_K8S_43,CKV_K8S_15"]
    for check_id, reason in mc.CHECKOV_SKIPS.items():
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check_id)
        assert reason.strip()


def test_a_missing_dockerfile_is_a_problem(tmp_path: Path) -> None:
    assert mc.dockerfiles(tmp_path) == ([], ["Dockerfile: missing"])
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    image = tmp_path / "deploy" / "images" / "triton"
    image.mkdir(parents=True)
    (image / "Dockerfile").write_text("FROM scratch\n")
    assert mc.dockerfiles(tmp_path) == ([tmp_path / "Dockerfile", image / "Dockerfile"], [])


@pytest.mark.skipif(not mc.CHECKOV.is_file(), reason="checkov not installed: scripts/setup checkov")
def test_checkov_finds_and_skips_by_annotation(tmp_path: Path) -> None:
    doc = deployment()
    doc["metadata"]["annotations"] = {"checkov.io/skip1": "CKV_K8S_43=pinned by tag in tests"}
    manifest = tmp_path / "m.yaml"
    manifest.write_text(json.dumps(doc))
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM python:3.11-slim\n# checkov:skip=CKV_DOCKER_2:probed by Kubernetes\nUSER 1000\n"
    )
    report = mc.run_checkov([manifest, dockerfile], skips={})  # the annotation alone
    failed = {(f.file.name, f.check_id) for f in report.failed}
    assert ("m.yaml", "CKV_K8S_40") in failed  # no runAsUser
    assert ("m.yaml", "CKV_K8S_43") not in failed
    skipped = {(f.file.name, f.check_id, f.reason) for f in report.skipped}
    assert skipped == {
        ("m.yaml", "CKV_K8S_43", "pinned by tag in tests"),
        ("Dockerfile", "CKV_DOCKER_2", "probed by Kubernetes"),
    }
    assert report.passed[dockerfile] > 0
