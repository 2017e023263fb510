"""scripts/lib/kustomize.py: the subset of kustomize v5 that CI renders deploy/kubernetes with.

Expected outputs follow kustomize's source (github.com/kubernetes-sigs/kustomize); where a value
comes from one of kustomize's own tests, the test names it. Every refusal of something outside
the subset is checked to name the kustomization file and the offending field.
"""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.lib.kustomize import KustomizeError, configmap_hash, dump, main, render

HEADER = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"


def kust(body: str = "") -> str:
    return HEADER + textwrap.dedent(body).lstrip("\n")


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def build(root: Path, files: dict[str, str], directory: str = ".") -> list[dict[str, Any]]:
    write(root, files)
    return render(root / directory)


def refused(root: Path, files: dict[str, str], *fragments: str, directory: str = ".") -> str:
    write(root, files)
    with pytest.raises(KustomizeError) as info:
        render(root / directory)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def find(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        r
        for r in resources
        if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, [(r["kind"], r["metadata"]["name"]) for r in resources]
    return matches[0]


def containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = resource["spec"]["template"]["spec"]["containers"]
    return result


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
spec:
  replicas: 1
  selector:
    matchLabels:
      app: app
  template:
    metadata:
      labels:
        app: app
    spec:
      containers:
      - name: app
        image: registry.example.com/app:1.0
        env:
        - name: LOG_LEVEL
          value: info
        resources:
          limits:
            cpu: "1"
            memory: 1Gi
      - name: sidecar
        image: busybox:1.36
"""

SERVICE = """
apiVersion: v1
kind: Service
metadata:
  name: app
spec:
  selector:
    app: app
  ports:
  - port: 80
    targetPort: 8080
"""


# ---------------------------------------------------------------------------------------------
# Kustomization files and resources
# ---------------------------------------------------------------------------------------------


def test_renders_multi_document_files_and_skips_empty_documents(tmp_path: Path) -> None:
    out = build(
        tmp_path,
        {
            "kustomization.yaml": kust("resources:\n- all.yaml\n"),
            "all.yaml": SERVICE + "---\n---\n" + DEPLOYMENT + "---\n",
        },
    )
    assert [(r["kind"], r["metadata"]["name"]) for r in out] == [
        ("Service", "app"),
        ("Deployment", "app"),
    ]
    assert find(out, "Deployment") == yaml.safe_load(textwrap.dedent(DEPLOYMENT))


@pytest.mark.parametrize("name", ["kustomization.yaml", "kustomization.yml", "Kustomization"])
def test_kustomization_file_names(tmp_path: Path, name: str) -> None:
    out = build(tmp_path, {name: kust("resources:\n- svc.yaml\n"), "svc.yaml": SERVICE})
    assert find(out, "Service")["metadata"]["name"] == "app"


def test_several_or_no_kustomization_files_refused(tmp_path: Path) -> None:
    refused(tmp_path / "none", {"svc.yaml": SERVICE}, "no kustomization file")
    refused(
        tmp_path / "two",
        {"kustomization.yaml": kust(), "kustomization.yml": kust()},
        "multiple kustomization files",
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("kind: Kustomization\n", "apiVersion"),
        ("apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n", "apiVersion"),
        ("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Component\n", "kind"),
    ],
)
def test_api_version_and_kind_required(tmp_path: Path, text: str, fragment: str) -> None:
    refused(tmp_path, {"kustomization.yaml": text}, "kustomization.yaml", fragment)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("commonLabels:\n  a: b\n", "'commonLabels'"),
        ("namePrefix: x-\n", "'namePrefix'"),
        ("bases:\n- ../base\n", "'bases'"),
        ("secretGenerator:\n- name: s\n", "'secretGenerator'"),
        ("patchesStrategicMerge:\n- p.yaml\n", "'patchesStrategicMerge'"),
        ("replicas:\n- name: app\n  count: 2\n", "'replicas'"),
        ("labels:\n- pairs: {a: b}\n  fields: []\n", "labels[0]: unsupported field 'fields'"),
        ("images:\n- name: a\n  tagSuffix: -x\n", "images[0]: unsupported field 'tagSuffix'"),
        (
            "configMapGenerator:\n- name: c\n  namespace: x\n",
            "configMapGenerator[0]: unsupported field 'namespace'",
        ),
        (
            "configMapGenerator:\n- name: c\n  behavior: merge\n",
            "configMapGenerator[0].behavior: 'merge' is unsupported",
        ),
        (
            "generatorOptions:\n  immutable: true\n  foo: 1\n",
            "generatorOptions: unsupported field 'foo'",
        ),
        (
            "patches:\n- path: p.yaml\n  options:\n    allowNameChange: true\n",
            "patches[0]: unsupported field 'options'",
        ),
        (
            "patches:\n- path: p.yaml\n  target:\n    kind: Deployment\n    resId: x\n",
            "patches[0].target: unsupported field 'resId'",
        ),
    ],
)
def test_unsupported_fields_refused_with_file_and_field(
    tmp_path: Path, body: str, field: str
) -> None:
    message = refused(tmp_path, {"kustomization.yaml": kust(body)}, "kustomization.yaml", field)
    assert "the renderer supports:" in message or "unsupported" in message


def test_field_types_checked(tmp_path: Path) -> None:
    refused(
        tmp_path / "a",
        {"kustomization.yaml": kust("images:\n- name: app\n  newTag: 1.0\n")},
        "images[0].newTag: must be a string",
    )
    refused(
        tmp_path / "b",
        {"kustomization.yaml": kust("labels:\n- pairs: {version: 2}\n")},
        "labels[0].pairs.version: must be a string",
    )


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ("kind: Service\nmetadata: {name: a}\n", "without apiVersion"),
        ("apiVersion: v1\nmetadata: {name: a}\n", "without kind"),
        ("apiVersion: v1\nkind: Service\nmetadata: {}\n", "without metadata.name"),
        ("apiVersion: v1\nkind: List\nitems: []\n", "lists are unsupported"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  annotations:\n"
            "    config.kubernetes.io/local-config: 'true'\n",
            "interpreted by kustomize",
        ),
    ],
)
def test_resource_documents_checked(tmp_path: Path, document: str, fragment: str) -> None:
    refused(
        tmp_path,
        {"kustomization.yaml": kust("resources:\n- r.yaml\n"), "r.yaml": document},
        "r.yaml",
        fragment,
    )


def test_file_outside_the_root_refused_directory_outside_allowed(tmp_path: Path) -> None:
    files = {
        "shared/svc.yaml": SERVICE,
        "base/kustomization.yaml": kust("resources:\n- ../shared/svc.yaml\n"),
    }
    refused(
        tmp_path,
        files,
        "base/kustomization.yaml",
        "outside the kustomization directory",
        directory="base",
    )

    out = build(
        tmp_path,
        {
            "base/kustomization.yaml": kust("resources:\n- svc.yaml\n"),
            "base/svc.yaml": SERVICE,
            "overlays/cpu/kustomization.yaml": kust("resources:\n- ../../base\n"),
        },
        "overlays/cpu",
    )
    assert find(out, "Service")["metadata"]["name"] == "app"


def test_cycles_and_remote_resources_refused(tmp_path: Path) -> None:
    refused(
        tmp_path / "cycle",
        {
            "kustomization.yaml": kust("resources:\n- sub\n"),
            "sub/kustomization.yaml": kust("resources:\n- ..\n"),
        },
        "sub/kustomization.yaml",
        "cycle",
    )
    refused(
        tmp_path / "remote",
        {"kustomization.yaml": kust("resources:\n- https://example.com/x.yaml\n")},
        "remote resources are unsupported",
    )
    refused(
        tmp_path / "missing",
        {"kustomization.yaml": kust("resources:\n- nope.yaml\n")},
        "resources[0] 'nope.yaml': no such file or directory",
    )


def test_duplicate_ids_refused(tmp_path: Path) -> None:
    message = refused(
        tmp_path,
        {
            "kustomization.yaml": kust("resources:\n- a.yaml\n- b.yaml\n"),
            "a.yaml": SERVICE,
            "b.yaml": SERVICE.replace("port: 80", "port: 81"),
        },
        "kustomization.yaml",
        "duplicate resource id v1 Service app",
    )
    assert "a.yaml" in message
    assert "b.yaml" in message
    # No namespace and the namespace "default" are the same place to kustomize.
    refused(
        tmp_path / "default",
        {
            "kustomization.yaml": kust("resources:\n- a.yaml\n- b.yaml\n"),
            "a.yaml": SERVICE,
            "b.yaml": SERVICE.replace("name: app", "name: app\n  namespace: default"),
        },
        "duplicate resource id",
    )


def test_same_name_in_other_kind_or_namespace_is_fine(tmp_path: Path) -> None:
    out = build(
        tmp_path,
        {
            "kustomization.yaml": kust("resources:\n- a.yaml\n- b.yaml\n- c.yaml\n"),
            "a.yaml": SERVICE,
            "b.yaml": DEPLOYMENT,
            "c.yaml": SERVICE.replace("name: app", "name: app\n  namespace: other"),
        },
    )
    assert len(out) == 3


@pytest.mark.parametrize("scalar", ["yes", "on", "Off", "y", "0755", "1e3", "10:30", "2024-01-01"])
def test_yaml_scalars_read_differently_by_yaml_1_1_and_1_2_refused(
    tmp_path: Path, scalar: str
) -> None:
    document = f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata:\n  k: {scalar}\n"
    refused(
        tmp_path / "plain",
        {"kustomization.yaml": kust("resources:\n- c.yaml\n"), "c.yaml": document},
        "c.yaml",
        "quote it",
    )
    quoted = document.replace(f"k: {scalar}", f"k: '{scalar}'")
    out = build(
        tmp_path / "quoted",
        {"kustomization.yaml": kust("resources:\n- c.yaml\n"), "c.yaml": quoted},
    )
    assert out[0]["data"] == {"k": scalar}
    assert yaml.safe_load(dump(out))["data"] == {"k": scalar}


def test_duplicate_yaml_keys_refused(tmp_path: Path) -> None:
    refused(
        tmp_path,
        {
            "kustomization.yaml": kust("resources:\n- c.yaml\n"),
            "c.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: '1', a: '2'}\n",
        },
        "duplicate map key 'a'",
    )


def test_annotations_are_rewritten_as_kustomize_does_at_the_end(tmp_path: Path) -> None:
    # api/krusty/basic_io_test.go TestBasicIO_1: every non-empty metadata.annotations comes
    # out sorted, as strings, at the end of metadata; an empty one is dropped.
    out = build(
        tmp_path,
        {
            "kustomization.yaml": kust("resources: [s.yaml, c.yaml]\n"),
            "s.yaml": """
                apiVersion: v1
                kind: Service
                metadata:
                  annotations:
                    port: 8080
                    happy: true
                    color: green
                  name: demo
                spec:
                  clusterIP: None
            """,
            "c.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  annotations: {}\n  name: c\n",
        },
    )
    metadata = find(out, "Service")["metadata"]
    assert list(metadata) == ["name", "annotations"]
    assert list(metadata["annotations"].items()) == [
        ("color", "green"),
        ("happy", "true"),
        ("port", "8080"),
    ]
    assert find(out, "ConfigMap")["metadata"] == {"name": "c"}
    # Their text is what kustomize keeps, so only values that give it back are accepted.
    refused(
        tmp_path / "float",
        {
            "kustomization.yaml": kust("resources: [c.yaml]\n"),
            "c.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n"
            "  annotations: {ratio: 1.50}\n",
        },
        "annotation values must be strings",
    )


# ---------------------------------------------------------------------------------------------
# namespace
# ---------------------------------------------------------------------------------------------


def test_namespace_set_on_namespaced_resources_only(tmp_path: Path) -> None:
    out = build(
        tmp_path,
        {
            "kustomization.yaml": kust("namespace: prod\nresources:\n- all.yaml\n"),
            "all.yaml": DEPLOYMENT
            + "---\n"
            + SERVICE.replace("name: app", "name: app\n  namespace: other")
            + """---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
rules: []
---
apiVersion: v1
kind: Namespace
metadata: {name: anything}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w}
""",
        },
    )
    assert find(out, "Deployment")["metadata"]["namespace"] == "prod"
    assert find(out, "Service")["metadata"]["namespace"] == "prod"
    assert "namespace" not in find(out, "ClusterRole")["metadata"]
    # kustomize renames v1 Namespace objects to the kustomization's namespace.
    assert find(out, "Namespace")["metadata"] == {"name": "prod"}
    # Kinds missing from kustomize's built-in schema count as namespaced.
    assert find(out, "Widget")["metadata"]["namespace"] == "prod"


def test_namespace_and_role_binding_subjects(tmp_path: Path) -> None:
    out = build(
        tmp_path,
        {
            "kustomization.yaml": kust("namespace: prod\nresources:\n- rbac.yaml\n"),
            "rbac.yaml": """
                apiVersion: v1
                kind: ServiceAccount
                metadata: {name: runner}
                ---
                apiVersion: rbac.authorization.k8s.io/v1
                kind: RoleBinding
                metadata: {name: rb}
                roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}
                subjects:
                - {kind: ServiceAccount, name: runner}
                - {kind: ServiceAccount, name: default}
                - {kind: ServiceAccount, name: external, namespace: elsewhere}
                - {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
            """,
        },
    )
    assert find(out, "RoleBinding")["subjects"] == [
        # A ServiceAccount of the build: its final namespace (kustomize's name references).
        {"kind": "ServiceAccount", "name": "runner", "namespace": "prod"},
        # Subjects named "default" (kustomize v5's setRoleBindingSubjects: defaultOnly).
        {"kind": "ServiceAccount", "name": "default", "namespace": "prod"},
        {"kind": "ServiceAccount", "name": "external", "namespace": "elsewhere"},
        {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"},
    ]


def test_namespace_id_conflict_refused(tmp_path: Path) -> None:
    refused(
        tmp_path,
        {
            "kustomization.yaml": kust("namespace: prod\nresources:\n- a.yaml\n- b.yaml\n"),
            "a.yaml": SERVICE,
            "b.yaml": SERVICE.replace("name: app", "name: app\n  namespace: prod"),
        },
        "id conflict",
    )


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------


def test_labels_go_on_metadata_only_by_default(tmp_path: Path) -> None:
    out = build(
        tmp_path,
        {
            "kustomization.yaml": kust(
                "resources:\n- d.yaml\n- s.yaml\nlabels:\n- pairs: {team: ml, env: dev}\n"
            ),
            "d.yaml": DEPLOYMENT,
            "s.yaml": SERVICE,
        },
    )
    deployment, service = find(out, "Deployment"), find(out, "Service")
    assert list(deployment["metadata"]["labels"].items()) == [("env", "dev"), ("team", "ml")]
    assert deployment["spec"]["selector"] == {"matchLabels": {"app": "app"}}
    assert deployment["spec"]["template"]["metadata"]["labels"] == {"app": "app"}
    assert service["spec"]["selector"] == {"app": "app"}


def test_labels_include_templates(tmp_path: Path) -> None:
    out = build(
        tmp_path,
        {
            "kustomization.yaml": kust(
                "resources:\n- d.yaml\n- c.yaml\n"
                "labels:\n- pairs: {team: ml}\n  includeTemplates: true\n"
            ),
            "d.yaml": DEPLOYMENT,
            "c.yaml": """
                apiVersion: batch/v1
                kind: CronJob
                metadata: {name: nightly}
                spec:
                  schedule: "0 1 * * *"
                  jobTemplate:
                    spec:
                      template:
                        spec:
                          containers: [{name: job, image: busybox}]
            """,
        },
    )
    deployment = find(out, "Deployment")
    assert deployment["spec"]["template"]["metadata"]["labels"] == {"app": "app", "team": "ml"}
    assert deployment["spec"]["selector"] == {"matchLabels": {"app": "app"}}
    job_template = find(out, "CronJob")["spec"]["jobTemplate"]
    assert job_template["metadata"] == {"labels": {"team": "ml"}}
    assert job_template["spec"]["template"]["metadata"] == {"labels": {"team": "ml"}}


def test_labels_include_selectors(tmp_path: Path) -> None:
    out = build(
        tmp_path,
        {
            "kustomization.yaml": kust(
                "resources:\n- all.yaml\nlabels:\n- pairs: {team: ml}\n  includeSelectors: true\n"
            ),
            "all.yaml": DEPLOYMENT
            + "---\n"
            + SERVICE
            + """---
apiVersion: v1
kind: Service
metadata: {name: external}
spec:
  type: ExternalName
  externalName: example.com
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: app}
spec:
  minAvailable: 1
  selector:
    matchLabels: {app: app}
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  template:
    spec:
      containers: [{name: job, image: busybox}]
""",
        },
    )
    deployment = find(out, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == {"app": "app", "team": "ml"}
    assert deployment["spec"]["template"]["metadata"]["labels"] == {"app": "app", "team": "ml"}
    assert find(out, "Service", "app")["spec"]["selector"] == {"app": "app", "team": "ml"}
    # As kustomize's commonLabels field specs do, a Service selector is created when missing.
    assert find(out, "Service", "external")["spec"]["selector"] == {"team": "ml"}
    pdb = find(out, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == {"app": "app", "team": "ml"}
    job = find(out, "Job")
    assert "selector" not in job["spec"]  # a Job selector is only updated, never created
    assert job["spec"]["template"]["metadata"]["labels"] == {"team": "ml"}


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------


def test_images_new_name_tag_and_digest(tmp_path: Path) -> None:
    out = build(
        tmp_path,
        {
            "kustomization.yaml": kust(
                """
                resources:
                - all.yaml
                images:
                - name: nginx
                  newTag: "1.25"
                - name: app
                  newName: registry.example.com/app
                  digest: sha256:0123
                - name: tool
                  newTag: v2
                  digest: sha256:ff
                - name: alpine
                  newName: registry.example.com:5000/mirror/alpine
                """
            ),
            "all.yaml": """
                apiVersion: v1
                kind: Pod
                metadata: {name: p}
                spec:
                  initContainers:
                  - {name: init, image: "nginx@sha256:abc"}
                  containers:
                  - {name: a, image: nginx}
                  - {name: b, image: "nginx:1.0"}
                  - {name: c, image: "nginx-extra:1"}
                  - {name: d, image: docker.io/nginx}
                  - {name: e, image: "app:1.0"}
                  - {name: f, image: "tool:v1"}
                  - {name: g, image: "alpine:3.20"}
                ---
                apiVersion: batch/v1
                kind: CronJob
                metadata: {name: nightly}
                spec:
                  schedule: "@daily"
                  jobTemplate:
                    spec:
                      template:
                        spec:
                          containers: [{name: job, image: nginx}]
                ---
                apiVersion: apiextensions.k8s.io/v1
                kind: CustomResourceDefinition
                metadata: {name: widgets.example.com}
                spec:
                  containers: [{name: x, image: nginx}]
            """,
        },
    )
    pod = find(out, "Pod")
    assert pod["spec"]["initContainers"][0]["image"] == "nginx:1.25"
    assert [c["image"] for c in pod["spec"]["containers"]] == [
        "nginx:1.25",
        "nginx:1.25",
        "nginx-extra:1",
        "docker.io/nginx",
        "registry.example.com/app@sha256:0123",
        # kustomize (api/filters/imagetag/updater.go) keeps both when both are given.
        "tool:v2@sha256:ff",
        "registry.example.com:5000/mirror/alpine:3.20",
    ]
    cron = find(out, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron["containers"][0]["image"] == "nginx:1.25"
    assert find(out, "CustomResourceDefinition")["spec"]["containers"][0]["image"] == "nginx"


# ---------------------------------------------------------------------------------------------
# configMapGenerator
# ---------------------------------------------------------------------------------------------


def test_configmap_hash_matches_kustomize(tmp_path: Path) -> None:
    # api/krusty/configmaps_test.go TestGeneratorIntVsStringNoMerge: bob-79t79mt227.
    out = build(
        tmp_path,
        {
            "kustomization.yaml": kust(
                """
                configMapGenerator:
                - name: bob
                  literals:
                  - fruit=Indian Gooseberry
                  - year=2020
                  - crisis=true
                """
            )
        },
    )
    assert out == [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "bob-79t79mt227"},
            "data": {"crisis": "true", "fruit": "Indian Gooseberry", "year": "2020"},
        }
    ]


@pytest.mark.parametrize(
    ("config_map", "expected"),
    [
        # api/hasher/hasher_test.go TestConfigMapHash.
        ({}, "6ct58987ht"),
        ({"data": {"one": ""}}, "9g67k2htb6"),
        ({"binaryData": {"one": ""}}, "6mtk2m274t"),
        ({"data": {"one": ""}, "binaryData": {"two": ""}}, "698h7c7t9m"),
        # The name never enters the hash (the hasher looks up the one key "metadata/name").
        ({"metadata": {"name": "x"}, "data": {"one": ""}}, "9g67k2htb6"),
    ],
)
def test_configmap_hash_unit_values(config_map: dict[str, Any], expected: str) -> None:
    assert configmap_hash(config_map) == expected


def test_configmap_sources_and_options(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf/blob.bin").write_bytes(bytes(range(256)))
    write(
        tmp_path,
        {
            "kustomization.yaml": kust(
                """
                generatorOptions:
                  labels: {origin: global, tier: config}
                  annotations: {note: generated}
                configMapGenerator:
                - name: settings
                  files:
                  - conf/app.toml
                  - renamed.txt=conf/other.txt
                  - conf/blob.bin
                  envs:
                  - conf/app.env
                  literals:
                  - QUOTED="hello world"
                  options:
                    labels: {origin: local}
                    immutable: true
                    disableNameSuffixHash: true
                """
            ),
            "conf/app.toml": "[server]\nport = 8080\n",
            "conf/other.txt": "other\n",
            "conf/app.env": "# comment\n\n  MODEL=smollm2\r\nEMPTY=\nURL=http://x/?a=b\n",
        },
    )
    out = render(tmp_path)
    (config_map,) = out
    assert config_map["metadata"] == {
        "name": "settings",
        "labels": {"origin": "local", "tier": "config"},
        "annotations": {"note": "generated"},
    }
    assert config_map["data"] == {
        "EMPTY": "",
        "MODEL": "smollm2",
        "QUOTED": "hello world",
        "URL": "http://x/?a=b",
        "app.toml": "[server]\nport = 8080\n",
        "renamed.txt": "other\n",
    }
    assert list(config_map["data"]) == sorted(config_map["data"])
    # Not UTF-8: base64 in binaryData, in 70-character lines (kyaml/yaml/datamap.go).
    binary = config_map["binaryData"]["blob.bin"]
    assert all(len(line) == 70 for line in binary.splitlines()[:-1])
    assert binary.endswith("\n")
    assert config_map["immutable"] is True


def test_configmap_generator_refusals(tmp_path: Path) -> None:
    refused(
        tmp_path / "repeat",
        {"kustomization.yaml": kust("configMapGenerator:\n- name: c\n  literals: [a=1, a=2]\n")},
        "repeats the key 'a'",
    )
    refused(
        tmp_path / "key",
        {"kustomization.yaml": kust("configMapGenerator:\n- name: c\n  literals: ['a b=1']\n")},
        "'a b' is not a valid ConfigMap key",
    )
    refused(
        tmp_path / "outside/overlay",
        {
            "kustomization.yaml": kust(
                "configMapGenerator:\n- name: c\n  files: [../secret.txt]\n"
            ),
            "../secret.txt": "x",
        },
        "configMapGenerator[0].files[0]",
        "outside the kustomization directory",
    )
    refused(
        tmp_path / "exists",
        {
            "kustomization.yaml": kust(
                "resources:\n- c.yaml\nconfigMapGenerator:\n- name: c\n  literals: [a=1]\n"
            ),
            "c.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
        },
        "configMapGenerator[0]",
        "already exists",
    )


def test_configmap_references_rewritten(tmp_path: Path) -> None:
    out = build(
        tmp_path,
        {
            "kustomization.yaml": kust(
                """
                resources:
                - workloads.yaml
                configMapGenerator:
                - name: settings
                  literals: [a=1]
                """
            ),
            "workloads.yaml": """
                apiVersion: apps/v1
                kind: StatefulSet
                metadata: {name: db}
                spec:
                  template:
                    spec:
                      initContainers:
                      - name: init
                        envFrom: [{configMapRef: {name: settings}}]
                      containers:
                      - name: db
                        env:
                        - name: A
                          valueFrom: {configMapKeyRef: {name: settings, key: a}}
                        - name: B
                          valueFrom: {configMapKeyRef: {name: unrelated, key: b}}
                      volumes:
                      - name: v1
                        configMap: {name: settings}
                      - name: v2
                        projected:
                          sources: [{configMap: {name: settings}}]
                ---
                apiVersion: batch/v1
                kind: CronJob
                metadata: {name: nightly}
                spec:
                  schedule: "@daily"
                  jobTemplate:
                    spec:
                      template:
                        spec:
                          containers:
                          - name: job
                            envFrom: [{configMapRef: {name: settings}}]
                ---
                apiVersion: rbac.authorization.k8s.io/v1
                kind: Role
                metadata: {name: read-settings}
                rules:
                - {apiGroups: [""], resources: [configmaps], resourceNames: [settings, other]}
                ---
                apiVersion: v1
                kind: Pod
                metadata: {name: elsewhere, namespace: other}
                spec:
                  containers:
                  - name: c
                    envFrom: [{configMapRef: {name: settings}}]
            """,
        },
    )
    name = find(out, "ConfigMap")["metadata"]["name"]
    assert name == "settings-" + configmap_hash({"data": {"a": "1"}})
    spec = find(out, "StatefulSet")["spec"]["template"]["spec"]
    assert spec["initContainers"][0]["envFrom"][0]["configMapRef"]["name"] == name
    env = spec["containers"][0]["env"]
    assert env[0]["valueFrom"]["configMapKeyRef"] == {"name": name, "key": "a"}
    assert env[1]["valueFrom"]["configMapKeyRef"] == {"name": "unrelated", "key": "b"}
    assert spec["volumes"][0]["configMap"] == {"name": name}
    assert spec["volumes"][1]["projected"]["sources"][0]["configMap"] == {"name": name}
    cron = find(out, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron["containers"][0]["envFrom"][0]["configMapRef"]["name"] == name
    assert find(out, "Role")["rules"][0]["resourceNames"] == [name, "other"]
    # A reference from another namespace is not to this ConfigMap.
    other = find(out, "Pod")["spec"]["containers"][0]["envFrom"][0]["configMapRef"]
    assert other["name"] == "settings"


# ---------------------------------------------------------------------------------------------
# Strategic-merge patches
# ---------------------------------------------------------------------------------------------


def smp_build(
    tmp_path: Path, patch: str, *resources: str, target: str = ""
) -> list[dict[str, Any]]:
    files = {f"r{i}.yaml": text for i, text in enumerate(resources or (DEPLOYMENT,))}
    files["patch.yaml"] = patch
    entry = "- path: patch.yaml\n" + (f"  target: {target}\n" if target else "")
    files["kustomization.yaml"] = (
        kust(
            "resources:\n" + "".join(f"- {n}\n" for n in files if n.startswith("r")) + "patches:\n"
        )
        + entry
    )
    return build(tmp_path, files)


def test_kustomize_multiple_patches_example(tmp_path: Path) -> None:
    # api/krusty/multiplepatch_test.go TestSimpleMultiplePatches, with commonLabels written as
    # labels+includeSelectors and without namePrefix (names never enter the hash, so the
    # suffixes are kustomize's: 798k5k7g9f and dc6fm46dhm).
    out = build(
        tmp_path,
        {
            "base/kustomization.yaml": kust(
                """
                labels:
                - pairs: {team: foo}
                  includeSelectors: true
                resources:
                - deployment.yaml
                - service.yaml
                configMapGenerator:
                - name: configmap-in-base
                  literals:
                  - foo=bar
                """
            ),
            "base/deployment.yaml": """
                apiVersion: apps/v1
                kind: Deployment
                metadata:
                  name: nginx
                spec:
                  template:
                    spec:
                      containers:
                      - name: nginx
                        image: nginx
                        volumeMounts:
                        - name: nginx-persistent-storage
                          mountPath: /tmp/ps
                      - name: sidecar
                        image: sidecar:latest
                      volumes:
                      - configMap:
                          name: configmap-in-base
                        name: configmap-in-base
            """,
            "base/service.yaml": """
                apiVersion: v1
                kind: Service
                metadata:
                  name: nginx
                spec:
                  ports:
                  - port: 80
            """,
            "overlay/kustomization.yaml": kust(
                """
                labels:
                - pairs: {env: staging}
                  includeSelectors: true
                patches:
                - path: deployment-patch1.yaml
                - path: deployment-patch2.yaml
                resources:
                - ../base
                configMapGenerator:
                - name: configmap-in-overlay
                  literals:
                  - hello=world
                """
            ),
            "overlay/deployment-patch1.yaml": """
                apiVersion: apps/v1
                kind: Deployment
                metadata:
                  name: nginx
                spec:
                  template:
                    spec:
                      containers:
                      - name: nginx
                        image: nginx:latest
                        env:
                        - name: ENVKEY
                          value: ENVVALUE
                      volumes:
                      - name: nginx-persistent-storage
                        gcePersistentDisk:
                          pdName: nginx-persistent-storage
                      - configMap:
                          name: configmap-in-overlay
                        name: configmap-in-overlay
            """,
            "overlay/deployment-patch2.yaml": """
                apiVersion: apps/v1
                kind: Deployment
                metadata:
                  name: nginx
                spec:
                  template:
                    spec:
                      containers:
                      - name: nginx
                        env:
                        - name: ANOTHERENV
                          value: FOO
            """,
        },
        "overlay",
    )
    expected = yaml.safe_load_all(
        textwrap.dedent(
            """
            apiVersion: v1
            data:
              foo: bar
            kind: ConfigMap
            metadata:
              labels:
                env: staging
                team: foo
              name: configmap-in-base-798k5k7g9f
            ---
            apiVersion: v1
            data:
              hello: world
            kind: ConfigMap
            metadata:
              labels:
                env: staging
              name: configmap-in-overlay-dc6fm46dhm
            ---
            apiVersion: v1
            kind: Service
            metadata:
              labels:
                env: staging
                team: foo
              name: nginx
            spec:
              ports:
              - port: 80
              selector:
                env: staging
                team: foo
            ---
            apiVersion: apps/v1
            kind: Deployment
            metadata:
              labels:
                env: staging
                team: foo
              name: nginx
            spec:
              selector:
                matchLabels:
                  env: staging
                  team: foo
              template:
                metadata:
                  labels:
                    env: staging
                    team: foo
                spec:
                  containers:
                  - env:
                    - name: ANOTHERENV
                      value: FOO
                    - name: ENVKEY
                      value: ENVVALUE
                    image: nginx:latest
                    name: nginx
                    volumeMounts:
                    - mountPath: /tmp/ps
                      name: nginx-persistent-storage
                  - image: sidecar:latest
                    name: sidecar
                  volumes:
                  - gcePersistentDisk:
                      pdName: nginx-persistent-storage
                    name: nginx-persistent-storage
                  - configMap:
                      name: configmap-in-overlay-dc6fm46dhm
                    name: configmap-in-overlay
                  - configMap:
                      name: configmap-in-base-798k5k7g9f
                    name: configmap-in-base
            """
        )
    )
    assert out == list(expected)


def test_smp_merges_lists_by_key_with_the_patch_items_first(tmp_path: Path) -> None:
    # kyaml merges with ListIncreaseDirection prepend (api/filters/patchstrategicmerge): the
    # patch's items come first, in the patch's order, then the resource's other items.
    out = smp_build(
        tmp_path,
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: app}
        spec:
          template:
            spec:
              containers:
              - name: sidecar
                image: busybox:1.37
        """,
    )
    assert [(c["name"], c["image"]) for c in containers(find(out, "Deployment"))] == [
        ("sidecar", "busybox:1.37"),
        ("app", "registry.example.com/app:1.0"),
    ]


def test_smp_null_deletes_and_new_keys_are_added_sorted(tmp_path: Path) -> None:
    out = smp_build(
        tmp_path,
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: app}
        spec:
          replicas: null
          template:
            spec:
              containers:
              - name: app
                resources:
                  limits:
                    memory: null
                    nvidia.com/gpu: "1"
              terminationGracePeriodSeconds: 60
              nodeSelector: {pool: gpu}
        """,
    )
    deployment = find(out, "Deployment")
    assert "replicas" not in deployment["spec"]
    app = containers(deployment)[0]
    assert app["resources"] == {"limits": {"cpu": "1", "nvidia.com/gpu": "1"}}
    # New keys are appended in sorted order (kyaml walks field names sorted).
    assert list(deployment["spec"]["template"]["spec"]) == [
        "containers",
        "nodeSelector",
        "terminationGracePeriodSeconds",
    ]


def test_smp_directives_delete_and_replace(tmp_path: Path) -> None:
    out = smp_build(
        tmp_path,
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: app}
        spec:
          selector:
            $patch: delete
          template:
            spec:
              containers:
              - name: sidecar
                $patch: delete
              - name: app
                env:
                - name: LOG_LEVEL
                  $patch: delete
                - name: NEW
                  value: "1"
                resources:
                  $patch: replace
                  requests: {cpu: 500m}
        """,
    )
    deployment = find(out, "Deployment")
    assert "selector" not in deployment["spec"]
    (app,) = containers(deployment)
    assert app["env"] == [{"name": "NEW", "value": "1"}]
    assert app["resources"] == {"requests": {"cpu": "500m"}}


def test_smp_list_level_directives(tmp_path: Path) -> None:
    out = smp_build(
        tmp_path,
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: app}
        spec:
          template:
            spec:
              containers:
              - $patch: replace
              - name: only
                image: only:1
        """,
    )
    assert containers(find(out, "Deployment")) == [{"name": "only", "image": "only:1"}]


def test_smp_replaces_lists_without_merge_key(tmp_path: Path) -> None:
    deployment = DEPLOYMENT.replace(
        "      containers:",
        "      tolerations:\n      - {key: a, operator: Exists}\n      containers:",
    ).replace("image: busybox:1.36", "image: busybox:1.36\n        args: [a, b]")
    out = smp_build(
        tmp_path,
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: app}
        spec:
          template:
            spec:
              tolerations:
              - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
              containers:
              - name: sidecar
                args: [c]
        """,
        deployment,
    )
    spec = find(out, "Deployment")["spec"]["template"]["spec"]
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert spec["containers"][0]["args"] == ["c"]


def test_smp_on_custom_resources_replaces_lists(tmp_path: Path) -> None:
    # Kinds missing from kustomize's built-in schema have no merge keys: lists are replaced.
    widget = """
        apiVersion: example.com/v1
        kind: Widget
        metadata: {name: w}
        spec:
          containers:
          - {name: a, image: a}
          - {name: b, image: b}
    """
    out = smp_build(
        tmp_path,
        """
        apiVersion: example.com/v1
        kind: Widget
        metadata: {name: w}
        spec:
          containers:
          - {name: b, image: b2}
        """,
        widget,
    )
    assert find(out, "Widget")["spec"]["containers"] == [{"name": "b", "image": "b2"}]


def test_smp_service_ports_merge_by_port(tmp_path: Path) -> None:
    out = smp_build(
        tmp_path,
        """
        apiVersion: v1
        kind: Service
        metadata: {name: app}
        spec:
          ports:
          - port: 80
            name: http
          - port: 9090
            name: metrics
        """,
        SERVICE,
    )
    assert find(out, "Service")["spec"]["ports"] == [
        {"port": 80, "targetPort": 8080, "name": "http"},
        {"port": 9090, "name": "metrics"},
    ]


@pytest.mark.parametrize(
    ("patch_spec", "fragment"),
    [
        ("$setElementOrder/containers: [{name: app}]", "'$setElementOrder/containers'"),
        ("$retainKeys: [containers]", "'$retainKeys'"),
        ("containers:\n- name: app\n  $patch: replace", "$patch: replace on a list item"),
        ("containers:\n- name: app\n  $patch: bogus", "unknown patch strategy 'bogus'"),
        ("containers:\n- image: x", "every item needs 'name'"),
        ("tolerations:\n- key: a\n  $patch: delete", "$patch inside a list that is replaced"),
    ],
)
def test_smp_unsupported_directives_refused(tmp_path: Path, patch_spec: str, fragment: str) -> None:
    patch = (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\nspec:\n  template:\n"
        "    spec:\n" + textwrap.indent(patch_spec, "      ") + "\n"
    )
    write(tmp_path, {"patch.yaml": patch})
    refused(
        tmp_path,
        {
            "d.yaml": DEPLOYMENT,
            "kustomization.yaml": kust("resources:\n- d.yaml\npatches:\n- path: patch.yaml\n"),
        },
        "kustomization.yaml",
        "patches[0]",
        fragment,
    )


def test_smp_root_directive_and_primitive_lists_refused(tmp_path: Path) -> None:
    refused(
        tmp_path / "root",
        {
            "d.yaml": DEPLOYMENT,
            "kustomization.yaml": kust(
                "resources:\n- d.yaml\npatches:\n- patch: |\n"
                "    apiVersion: apps/v1\n    kind: Deployment\n    metadata: {name: app}\n"
                "    $patch: delete\n"
            ),
        },
        "$patch at the root",
    )
    refused(
        tmp_path / "finalizers",
        {
            "d.yaml": DEPLOYMENT,
            "kustomization.yaml": kust(
                "resources:\n- d.yaml\npatches:\n- patch: |\n"
                "    apiVersion: apps/v1\n    kind: Deployment\n"
                "    metadata: {name: app, finalizers: [x]}\n"
            ),
        },
        "metadata.finalizers",
        "list of primitives",
    )


def test_smp_multi_key_lists_need_consistent_keys(tmp_path: Path) -> None:
    deployment = DEPLOYMENT.replace(
        "        env:",
        "        ports:\n        - {containerPort: 8080, protocol: TCP}\n        env:",
    )
    patch = """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: app}
        spec:
          template:
            spec:
              containers:
              - name: app
                ports:
                - {containerPort: PORT, name: http}
    """
    refused(
        tmp_path / "inconsistent",
        {
            "d.yaml": deployment,
            "p.yaml": patch.replace("PORT", "8080"),
            "kustomization.yaml": kust("resources:\n- d.yaml\npatches:\n- path: p.yaml\n"),
        },
        "are ambiguous; spell protocol alike",
    )
    out = build(
        tmp_path / "consistent",
        {
            "d.yaml": deployment,
            "p.yaml": patch.replace("PORT", "8080, protocol: TCP"),
            "kustomization.yaml": kust("resources:\n- d.yaml\npatches:\n- path: p.yaml\n"),
        },
    )
    assert containers(find(out, "Deployment"))[0]["ports"] == [
        {"containerPort": 8080, "protocol": "TCP", "name": "http"}
    ]


def test_smp_multi_key_lists_as_kustomize_tests_show(tmp_path: Path) -> None:
    service = """
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports:
          - {port: 30900, targetPort: 30900, protocol: TCP}
          - {port: 30800, targetPort: 30800, protocol: UDP}
          - {port: 30700, targetPort: 30700}
          type: NodePort
    """
    # api/krusty/multiplepatch_test.go TestPatchAddNewServicePort: a new port without protocol
    # comes first; with two merge keys in use the resource's ports follow in their order.
    out = smp_build(
        tmp_path / "add",
        """
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec:
          ports:
          - {port: 30800, protocol: UDP, name: merged}
          - {port: 30901, targetPort: 30901}
        """,
        service,
    )
    assert find(out, "Service")["spec"]["ports"] == [
        {"port": 30901, "targetPort": 30901},
        {"port": 30900, "targetPort": 30900, "protocol": "TCP"},
        {"port": 30800, "targetPort": 30800, "protocol": "UDP", "name": "merged"},
        {"port": 30700, "targetPort": 30700},
    ]
    # TestSmpWithDifferentKeysOnDifferentPorts: ports the patch leaves alone keep their order.
    out = smp_build(
        tmp_path / "untouched",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, labels: {a: b}}\n",
        service,
    )
    assert [p["port"] for p in find(out, "Service")["spec"]["ports"]] == [30900, 30800, 30700]


def test_smp_untargeted_needs_exactly_one_match(tmp_path: Path) -> None:
    patch = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: NAME}\nspec: {replicas: 2}\n"
    refused(
        tmp_path / "name",
        {
            "d.yaml": DEPLOYMENT,
            "p.yaml": patch.replace("NAME", "missing"),
            "kustomization.yaml": kust("resources:\n- d.yaml\npatches:\n- path: p.yaml\n"),
        },
        "kustomization.yaml",
        "patches[0]",
        "no resource matches",
    )
    # kustomize matches the whole apiVersion, not only the group.
    refused(
        tmp_path / "version",
        {
            "d.yaml": DEPLOYMENT,
            "p.yaml": patch.replace("NAME", "app").replace("apps/v1", "apps/v1beta1"),
            "kustomization.yaml": kust("resources:\n- d.yaml\npatches:\n- path: p.yaml\n"),
        },
        "no resource matches",
    )


def test_smp_cannot_rename_and_patch_paths_stay_inside_root(tmp_path: Path) -> None:
    out = smp_build(
        tmp_path / "rename",
        """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: renamed, labels: {patched: "yes"}}
        """,
        target="{kind: Deployment}",
    )
    assert find(out, "Deployment")["metadata"] == {"name": "app", "labels": {"patched": "yes"}}
    refused(
        tmp_path / "outside/overlay",
        {
            "d.yaml": DEPLOYMENT,
            "../p.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\n",
            "kustomization.yaml": kust("resources:\n- d.yaml\npatches:\n- path: ../p.yaml\n"),
        },
        "patches[0].path",
        "outside the kustomization directory",
    )


def test_patch_targets(tmp_path: Path) -> None:
    resources = (
        DEPLOYMENT
        + "---\n"
        + DEPLOYMENT.replace("name: app\nspec", "name: app-2\n  annotations: {gpu: 'true'}\nspec")
        + "---\n"
        + DEPLOYMENT.replace("name: app\nspec", "name: worker\n  labels: {role: worker}\nspec")
    )
    patch = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: any}\nspec: {replicas: 5}\n"

    counter = itertools.count()

    def replicas(target: str) -> dict[str, Any]:
        directory = tmp_path / f"t{next(counter)}"
        out = build(
            directory,
            {
                "all.yaml": resources,
                "p.yaml": patch,
                "kustomization.yaml": kust(
                    f"resources:\n- all.yaml\npatches:\n- path: p.yaml\n  target: {target}\n"
                ),
            },
        )
        return {r["metadata"]["name"]: r["spec"]["replicas"] for r in out}

    # Names are anchored regular expressions.
    assert replicas("{name: app}") == {"app": 5, "app-2": 1, "worker": 1}
    assert replicas("{name: 'app.*'}") == {"app": 5, "app-2": 5, "worker": 1}
    assert replicas("{kind: Deploy.*, group: apps, version: v1}") == {
        "app": 5,
        "app-2": 5,
        "worker": 5,
    }
    assert replicas("{labelSelector: 'role in (worker, x)'}") == {
        "app": 1,
        "app-2": 1,
        "worker": 5,
    }
    assert replicas("{annotationSelector: gpu=true}") == {"app": 1, "app-2": 5, "worker": 1}
    # No namespace is the namespace "default" to kustomize.
    assert replicas("{namespace: default, name: worker}") == {"app": 1, "app-2": 1, "worker": 5}
    with pytest.raises(KustomizeError, match="the target matches no resource"):
        replicas("{kind: StatefulSet}")


# ---------------------------------------------------------------------------------------------
# JSON patches
# ---------------------------------------------------------------------------------------------


def test_json6902_operations(tmp_path: Path) -> None:
    resource = """
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: c
          annotations: {a/b: x}
        data: {one: "1", two: "2"}
        extra: [1, 2, 3]
    """
    ops = """
        - {op: test, path: /data/one, value: "1"}
        - {op: add, path: /data/three, value: "3"}
        - {op: remove, path: /data/two}
        - {op: replace, path: /metadata/annotations/a~1b, value: z}
        - {op: add, path: /extra/-, value: 4}
        - {op: add, path: /extra/0, value: 0}
        - {op: copy, from: /data/one, path: /data/uno}
        - {op: move, from: /extra/1, path: /moved}
    """
    out = build(
        tmp_path,
        {
            "c.yaml": resource,
            "ops.yaml": ops,
            "kustomization.yaml": kust(
                "resources:\n- c.yaml\npatches:\n- path: ops.yaml\n  target: {kind: ConfigMap}\n"
            ),
        },
    )
    assert out == [
        {
            # The patched resource comes back through JSON, keys sorted (as kustomize's does).
            "apiVersion": "v1",
            "data": {"one": "1", "three": "3", "uno": "1"},
            "extra": [0, 2, 3, 4],
            "kind": "ConfigMap",
            "metadata": {"annotations": {"a/b": "z"}, "name": "c"},
            "moved": 1,
        }
    ]
    assert list(out[0]) == sorted(out[0])


def test_json6902_inline_json_and_refusals(tmp_path: Path) -> None:
    out = build(
        tmp_path / "inline",
        {
            "d.yaml": DEPLOYMENT,
            "kustomization.yaml": kust(
                """
                resources: [d.yaml]
                patches:
                - target: {kind: Deployment}
                  patch: '[{"op": "replace", "path": "/spec/replicas", "value": 4}]'
                """
            ),
        },
    )
    assert find(out, "Deployment")["spec"]["replicas"] == 4

    def refuse(name: str, operation: str, target: str, fragment: str) -> None:
        entry = f"- patch: '[{operation}]'\n" + (f"  target: {target}\n" if target else "")
        refused(
            tmp_path / name,
            {
                "d.yaml": DEPLOYMENT,
                "kustomization.yaml": kust("resources: [d.yaml]\npatches:\n") + entry,
            },
            "patches[0]",
            fragment,
        )

    remove = '{"op": "remove", "path": "/spec/replicas"}'
    refuse("no-target", remove, "", "needs a target")
    refuse("no-match", remove, "{name: nope}", "matches no resource")
    refuse(
        "test",
        '{"op": "test", "path": "/spec/replicas", "value": 9}',
        "{kind: Deployment}",
        "test of '/spec/replicas' failed",
    )
    refuse(
        "missing",
        '{"op": "replace", "path": "/spec/paused", "value": true}',
        "{kind: Deployment}",
        "missing key 'paused'",
    )
    refuse(
        "rename",
        '{"op": "replace", "path": "/metadata/name", "value": "x"}',
        "{kind: Deployment}",
        "may not change apiVersion, kind, name or namespace",
    )
    refuse("op", '{"op": "merge", "path": "/spec"}', "{kind: Deployment}", "'merge'")
    refuse("not-json", "{op: remove}", "{kind: Deployment}", "invalid JSON patch")


# ---------------------------------------------------------------------------------------------
# Order of work and output order
# ---------------------------------------------------------------------------------------------


def test_transformer_order_patches_then_namespace_labels_images(tmp_path: Path) -> None:
    out = build(
        tmp_path,
        {
            "d.yaml": DEPLOYMENT,
            "kustomization.yaml": kust(
                """
                resources: [d.yaml]
                namespace: prod
                labels:
                - pairs: {env: prod}
                  includeTemplates: true
                images:
                - {name: added, newTag: "2"}
                patches:
                - patch: |
                    apiVersion: apps/v1
                    kind: Deployment
                    metadata: {name: app}
                    spec:
                      template:
                        metadata: {labels: {from-patch: "yes"}}
                        spec:
                          containers:
                          - {name: added, image: added}
                """
            ),
        },
    )
    deployment = find(out, "Deployment")
    # The image and label transformers see what the patch added.
    assert containers(deployment)[0] == {"name": "added", "image": "added:2"}
    assert deployment["spec"]["template"]["metadata"]["labels"] == {
        "app": "app",
        "from-patch": "yes",
        "env": "prod",
    }
    assert deployment["metadata"]["namespace"] == "prod"


def test_overlay_patches_match_resources_namespaced_by_the_base(tmp_path: Path) -> None:
    # The base moved the Deployment to "team"; the overlay's patch names no namespace and
    # still matches it through its previous id, as kustomize's does.
    out = build(
        tmp_path,
        {
            "base/d.yaml": DEPLOYMENT,
            "base/kustomization.yaml": kust("namespace: team\nresources: [d.yaml]\n"),
            "overlay/kustomization.yaml": kust(
                "resources: [../base]\npatches:\n- patch: |\n"
                "    apiVersion: apps/v1\n    kind: Deployment\n    metadata: {name: app}\n"
                "    spec: {replicas: 3}\n"
            ),
        },
        "overlay",
    )
    assert find(out, "Deployment")["spec"]["replicas"] == 3
    assert find(out, "Deployment")["metadata"]["namespace"] == "team"


def test_hash_is_computed_after_overlay_patches(tmp_path: Path) -> None:
    out = build(
        tmp_path,
        {
            "base/kustomization.yaml": kust(
                "configMapGenerator:\n- name: cfg\n  literals: [a=1]\n"
            ),
            "overlay/kustomization.yaml": kust(
                "resources: [../base]\npatches:\n- patch: |\n"
                "    apiVersion: v1\n    kind: ConfigMap\n    metadata: {name: cfg}\n"
                "    data: {a: '2'}\n"
            ),
        },
        "overlay",
    )
    assert out[0]["metadata"]["name"] == "cfg-" + configmap_hash({"data": {"a": "2"}})
    assert configmap_hash({"data": {"a": "2"}}) != configmap_hash({"data": {"a": "1"}})


def test_legacy_output_order(tmp_path: Path) -> None:
    kinds = [
        ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", "v", None),
        ("apps/v1", "Deployment", "dx", None),
        ("example.com/v1", "Widget", "w", None),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "m", None),
        ("batch/v1", "Job", "j", None),
        ("apps/v1", "Deployment", "dy", "team"),
        ("v1", "Service", "s", None),
        ("policy/v1", "PodDisruptionBudget", "p", None),
        ("autoscaling/v2", "HorizontalPodAutoscaler", "h", None),
        ("batch/v1", "CronJob", "c", None),
        ("v1", "ConfigMap", "cm", None),
        ("rbac.authorization.k8s.io/v1", "Role", "r", None),
        ("v1", "ServiceAccount", "sa", None),
        ("v1", "Namespace", "ns", None),
    ]
    documents = []
    for api_version, kind, name, namespace in kinds:
        metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
        documents.append({"apiVersion": api_version, "kind": kind, "metadata": metadata})
    out = build(
        tmp_path,
        {
            "all.yaml": yaml.safe_dump_all(documents),
            "kustomization.yaml": kust("resources: [all.yaml]\n"),
        },
    )
    assert [(r["kind"], r["metadata"]["name"]) for r in out] == [
        ("Namespace", "ns"),
        ("ServiceAccount", "sa"),
        ("Role", "r"),
        ("ConfigMap", "cm"),
        ("Service", "s"),
        # Same kind: "namespace|name", with "~X" for no namespace (after any letter).
        ("Deployment", "dy"),
        ("Deployment", "dx"),
        ("CronJob", "c"),
        ("PodDisruptionBudget", "p"),
        # Kinds outside the list, by "group_version_kind".
        ("HorizontalPodAutoscaler", "h"),
        ("Job", "j"),
        ("Widget", "w"),
        ("MutatingWebhookConfiguration", "m"),
        ("ValidatingWebhookConfiguration", "v"),
    ]


# ---------------------------------------------------------------------------------------------
# A base and an overlay like the real deployment
# ---------------------------------------------------------------------------------------------


def test_base_and_overlay_like_a_real_deployment(tmp_path: Path) -> None:
    files = {
        "base/kustomization.yaml": kust(
            """
            resources:
            - deployment.yaml
            - service.yaml
            configMapGenerator:
            - name: engine-config
              files:
              - engine.json
            labels:
            - pairs: {app.kubernetes.io/name: inference}
              includeSelectors: true
            """
        ),
        "base/engine.json": '{"max_batch": 8}\n',
        "base/deployment.yaml": """
            apiVersion: apps/v1
            kind: Deployment
            metadata:
              name: inference
            spec:
              replicas: 1
              template:
                spec:
                  containers:
                  - name: server
                    image: registry.example.com/inference:base
                    args: ["--config", /etc/engine/engine.json]
                    env:
                    - {name: DEVICE, value: cpu}
                    - {name: WORKERS, value: "2"}
                    resources:
                      requests: {cpu: "2", memory: 4Gi}
                      limits: {cpu: "4", memory: 8Gi}
                    volumeMounts:
                    - {name: config, mountPath: /etc/engine}
                  volumes:
                  - name: config
                    configMap: {name: engine-config}
        """,
        "base/service.yaml": """
            apiVersion: v1
            kind: Service
            metadata: {name: inference}
            spec:
              ports:
              - {name: grpc, port: 50051, targetPort: 50051}
        """,
        "overlays/gpu/kustomization.yaml": kust(
            """
            namespace: genai-gpu
            resources:
            - ../../base
            images:
            - name: registry.example.com/inference
              newTag: gpu-1.4.0
            configMapGenerator:
            - name: gpu-env
              literals: [CUDA_VISIBLE_DEVICES=0]
            patches:
            - path: server.yaml
            - target: {kind: Deployment, name: inference}
              patch: |
                - op: add
                  path: /spec/template/spec/tolerations
                  value:
                  - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
            """
        ),
        "overlays/gpu/server.yaml": """
            apiVersion: apps/v1
            kind: Deployment
            metadata:
              name: inference
            spec:
              template:
                spec:
                  containers:
                  - name: server
                    env:
                    - {name: DEVICE, value: cuda}
                    envFrom:
                    - configMapRef: {name: gpu-env}
                    resources:
                      $patch: replace
                      limits: {nvidia.com/gpu: "1"}
        """,
    }
    out = build(tmp_path, files, "overlays/gpu")
    engine_name = "engine-config-" + configmap_hash({"data": {"engine.json": '{"max_batch": 8}\n'}})
    gpu_env = "gpu-env-" + configmap_hash({"data": {"CUDA_VISIBLE_DEVICES": "0"}})
    assert [(r["kind"], r["metadata"]["name"]) for r in out] == [
        ("ConfigMap", engine_name),
        ("ConfigMap", gpu_env),
        ("Service", "inference"),
        ("Deployment", "inference"),
    ]
    engine = out[0]
    assert engine["data"] == {"engine.json": '{"max_batch": 8}\n'}
    assert engine["metadata"]["namespace"] == "genai-gpu"

    deployment = find(out, "Deployment")
    assert deployment["metadata"]["namespace"] == "genai-gpu"
    assert deployment["spec"]["selector"] == {
        "matchLabels": {"app.kubernetes.io/name": "inference"}
    }
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["image"] == "registry.example.com/inference:gpu-1.4.0"
    assert server["env"] == [{"name": "DEVICE", "value": "cuda"}, {"name": "WORKERS", "value": "2"}]
    assert server["envFrom"] == [{"configMapRef": {"name": gpu_env}}]
    assert server["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert server["args"] == ["--config", "/etc/engine/engine.json"]
    assert pod["volumes"] == [{"configMap": {"name": engine_name}, "name": "config"}]
    assert pod["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
    ]
    service = find(out, "Service")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "inference"}
    assert service["metadata"]["namespace"] == "genai-gpu"


# ---------------------------------------------------------------------------------------------
# dump and the command line
# ---------------------------------------------------------------------------------------------


def test_dump_reads_back_and_quotes_ambiguous_strings() -> None:
    resources = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "a"},
            "data": {
                "yes": "yes",
                "y": "y",
                "exp": "1e3",
                "octal": "0o17",
                "num": "12",
                "multi": "line one\nline two\n",
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "b"},
            "spec": {"ports": [{"port": 80}]},
        },
    ]
    text = dump(resources)
    assert text.count("---\n") == 1
    assert "|\n" in text  # multi-line strings as literal blocks
    assert list(yaml.safe_load_all(text)) == resources
    for scalar in ("'yes'", "'y'", "'1e3'", "'0o17'", "'12'"):
        assert scalar in text


def test_main_prints_the_rendering_and_reports_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "ok", {"kustomization.yaml": kust("resources: [s.yaml]\n"), "s.yaml": SERVICE})
    assert main([str(tmp_path / "ok")]) == 0
    captured = capsys.readouterr()
    assert list(yaml.safe_load_all(captured.out)) == render(tmp_path / "ok")
    assert captured.err == ""

    write(tmp_path / "bad", {"kustomization.yaml": kust("namePrefix: x-\n")})
    assert main([str(tmp_path / "bad")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "kustomization.yaml" in captured.err
    assert "'namePrefix'" in captured.err
