"""Render a small, checked subset of kustomize v5 without the kustomize binary.

No kustomize/kubectl binary can be installed on the CI machines, so CI renders
``deploy/kubernetes/overlays/*`` with this module. Real users run ``kubectl apply -k``; for every
kustomization this renderer accepts it must produce what kustomize produces, and everything
outside the subset below is REFUSED with a `KustomizeError` naming the kustomization file and the
field, so the overlays cannot drift into something CI does not check.

API: `render` (a directory to the list of resources, in kustomize's default "legacy" order),
`dump` (multi-document YAML), `configmap_hash` (kustomize's ConfigMap name suffix) and `main`
(``python -m scripts.lib.kustomize DIR`` prints the rendering; errors go to stderr, exit 1).

The subset (a kustomization file is ``kustomization.yaml``, ``kustomization.yml`` or
``Kustomization``; any other top-level or nested field is refused):

* ``apiVersion: kustomize.config.k8s.io/v1beta1`` and ``kind: Kustomization`` (both required).
* ``resources``: files (multi-document YAML; empty documents are skipped; each document needs
  apiVersion, kind and metadata.name; ``*List`` kinds with ``items`` are refused) and
  directories (rendered recursively as kustomizations). As with kustomize's default load
  restrictor a file must lie inside the kustomization's directory; a directory may lie outside
  (``../../base``) but may not contain a kustomization that includes it (cycle). Remote
  resources are refused. Two resources with the same id (group, version, kind, namespace, name;
  no namespace and ``default`` are the same) are an error.
* ``namespace``: sets metadata.namespace on every namespaced resource (cluster-scoped kinds are
  the ones kustomize's built-in OpenAPI data marks so, by apiVersion and kind) and, as kustomize
  does, renames ``v1`` Namespace objects to it, sets APIService ``spec.service.namespace`` and a
  CRD's conversion webhook service namespace. RoleBindings are handled as kustomize v5 does:
  subjects named ``default`` get the namespace, and at the end subjects that name a
  ServiceAccount of the build get that ServiceAccount's final name and namespace.
* ``labels``: ``[{pairs, includeSelectors (false), includeTemplates (false)}]`` with kustomize's
  field specs (metadata labels; pod-template labels; selectors of Service, Deployment,
  ReplicaSet, DaemonSet, StatefulSet, Job, CronJob, PodDisruptionBudget, NetworkPolicy, ...).
* ``images``: ``[{name, newName, newTag, digest}]``, applied like kustomize's
  ImageTagTransformer: every ``containers``/``initContainers`` list anywhere in a resource (CRDs
  excepted) plus image volumes. newTag and digest together give ``name:tag@digest``.
* ``configMapGenerator`` (``name``, ``files``, ``literals``, ``envs``, ``behavior: create``,
  ``options``) and ``generatorOptions`` (``disableNameSuffixHash``, ``labels``, ``annotations``,
  ``immutable``). The hash suffix is kustomize's (api/hasher/hasher.go): the first 10 hex
  digits of the SHA-256 of the Go-JSON of ``{"data":..., "kind":"ConfigMap", "name":""}`` (plus
  ``binaryData`` when present), with 0,1,3,a,e mapped to g,h,k,m,t. The name is always empty
  because the hasher looks up the single key ``"metadata/name"``; the values pinned in the
  tests come from kustomize's own tests. It is computed once the whole build is assembled
  (after the overlays' patches), and every reference to the ConfigMap is rewritten (pod
  volumes, projected volumes, env valueFrom, envFrom in all pod-template kinds, Role
  resourceNames, ...: kustomize's name-reference table) in the same namespace.
* ``patches``: ``[{path | patch, target}]`` with target fields group, version, kind, name,
  namespace (anchored regular expressions), labelSelector and annotationSelector. A YAML/JSON
  list is an RFC 6902 JSON patch (add, remove, replace, move, copy, test) that needs a target;
  like kustomize's, it sends the resource through JSON (keys come out sorted). A map is a
  strategic-merge patch applied like kustomize's kyaml merge: maps merge (new keys in sorted
  order), null deletes, lists merge by the Kubernetes patch merge keys of kustomize's built-in
  OpenAPI schema (containers by name, ports by containerPort+protocol, ...) with the patch's
  items first (with two merge keys in use: the patch's new items, then the resource's), other
  lists and every list of a custom resource are replaced; ``$patch: delete|replace|merge``.

At the end, as kustomize does, every resource's metadata.annotations is rewritten: dropped when
empty, else its values as strings, keys sorted.

Stricter than kustomize, on purpose: a patch whose target matches nothing and an empty patch are
errors (kustomize silently skips them); a JSON patch may not change a resource's apiVersion,
kind, name or namespace; strategic-merge patches may not carry ``$patch`` at their root,
``$setElementOrder``/``$retainKeys``/``$deleteFromPrimitiveList``, ``$patch: replace`` on a list
item or ``$patch`` in a list that is replaced, may not merge lists of primitives (finalizers),
nor lists where one item could pair with several (a port with and one without ``protocol``),
nor patch a resource holding a null written as an empty value (kustomize drops those and keeps
``null``); ConfigMap keys must be valid Kubernetes keys; annotation values must be strings,
integers or true/false. YAML scalars that YAML 1.1 (kubectl) and YAML 1.2 (kustomize) read
differently (``yes``, ``on``, ``y``, ``0755``, ``1e3``, ``10:30``, timestamps, ...) are refused,
as are YAML merge keys (``<<``) and duplicate keys.

Order of work, as in kustomize (api/internal/target/kusttarget.go ``accumulateTarget`` and
kusttarget_configplugin.go ``configureBuiltinTransformers``): in each kustomization the
resources are read (children fully rendered first), then the generators add theirs, then the
transformers run in the order patches, namespace, labels, images. Once the top kustomization is
assembled, ConfigMap names get their hash suffix, name references are fixed, and the resources
are sorted in kustomize's default "legacy" order (api/krusty/kustomizer.go and
api/internal/builtins/SortOrderTransformer.go; kubectl apply -k sorts the same way).
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import yaml

__all__ = ["KustomizeError", "configmap_hash", "dump", "main", "render"]


class KustomizeError(Exception):
    """A kustomization that cannot be rendered: outside the supported subset, or invalid."""


# ---------------------------------------------------------------------------------------------
# Kustomization files and fields
# ---------------------------------------------------------------------------------------------

KUSTOMIZATION_FILE_NAMES: Final = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_KUSTOMIZATION_API_VERSION: Final = "kustomize.config.k8s.io/v1beta1"
_SUPPORTED_FIELDS: Final = (
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "labels",
    "images",
    "configMapGenerator",
    "generatorOptions",
    "patches",
)
_LABEL_FIELDS: Final = ("pairs", "includeSelectors", "includeTemplates")
_IMAGE_FIELDS: Final = ("name", "newName", "newTag", "digest")
_CONFIGMAP_FIELDS: Final = ("name", "behavior", "files", "literals", "envs", "options")
_GENERATOR_OPTION_FIELDS: Final = ("disableNameSuffixHash", "labels", "annotations", "immutable")
_PATCH_FIELDS: Final = ("path", "patch", "target")
_TARGET_FIELDS: Final = (
    "group",
    "version",
    "kind",
    "name",
    "namespace",
    "labelSelector",
    "annotationSelector",
)
# Annotations kustomize interprets or strips itself (build annotations, local-config,
# needs-hash, behavior): a resource carrying one is outside the subset.
_RESERVED_ANNOTATION_PREFIXES: Final = (
    "config.kubernetes.io/",
    "internal.config.kubernetes.io/",
    "kustomize.config.k8s.io/",
    "config.k8s.io/",
)

# Kinds kustomize's built-in OpenAPI data (kyaml/openapi, Kubernetes v1.21.2) marks as cluster
# scoped, by apiVersion and kind. Every other type, custom resources included, is namespaced.
_CLUSTER_SCOPED: Final = frozenset(
    {
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"),
        ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"),
        ("admissionregistration.k8s.io/v1beta1", "MutatingWebhookConfiguration"),
        ("admissionregistration.k8s.io/v1beta1", "ValidatingWebhookConfiguration"),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
        ("apiextensions.k8s.io/v1beta1", "CustomResourceDefinition"),
        ("apiregistration.k8s.io/v1", "APIService"),
        ("apiregistration.k8s.io/v1beta1", "APIService"),
        ("certificates.k8s.io/v1", "CertificateSigningRequest"),
        ("certificates.k8s.io/v1beta1", "CertificateSigningRequest"),
        ("flowcontrol.apiserver.k8s.io/v1beta1", "FlowSchema"),
        ("flowcontrol.apiserver.k8s.io/v1beta1", "PriorityLevelConfiguration"),
        ("networking.k8s.io/v1", "IngressClass"),
        ("networking.k8s.io/v1beta1", "IngressClass"),
        ("node.k8s.io/v1", "RuntimeClass"),
        ("node.k8s.io/v1beta1", "RuntimeClass"),
        ("policy/v1beta1", "PodSecurityPolicy"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("rbac.authorization.k8s.io/v1beta1", "ClusterRole"),
        ("rbac.authorization.k8s.io/v1beta1", "ClusterRoleBinding"),
        ("scheduling.k8s.io/v1", "PriorityClass"),
        ("scheduling.k8s.io/v1beta1", "PriorityClass"),
        ("storage.k8s.io/v1", "CSIDriver"),
        ("storage.k8s.io/v1", "CSINode"),
        ("storage.k8s.io/v1", "StorageClass"),
        ("storage.k8s.io/v1", "VolumeAttachment"),
        ("storage.k8s.io/v1beta1", "CSIDriver"),
        ("storage.k8s.io/v1beta1", "CSINode"),
        ("storage.k8s.io/v1beta1", "StorageClass"),
        ("storage.k8s.io/v1beta1", "VolumeAttachment"),
        ("v1", "ComponentStatus"),
        ("v1", "Namespace"),
        ("v1", "Node"),
        ("v1", "NodeProxyOptions"),
        ("v1", "PersistentVolume"),
    }
)

# kustomize's default ("legacy") output order: api/internal/builtins/SortOrderTransformer.go.
_ORDER_FIRST: Final = (
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
)
_ORDER_LAST: Final = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
_TYPE_ORDER: Final[dict[str, int]] = {
    **{kind: i - len(_ORDER_FIRST) for i, kind in enumerate(_ORDER_FIRST)},
    **{kind: 1 + i for i, kind in enumerate(_ORDER_LAST)},
}

# Where strategic-merge patches merge lists instead of replacing them: the
# x-kubernetes-patch-strategy "merge" fields of kustomize's built-in OpenAPI schema (kyaml,
# Kubernetes v1.21.2), keyed by x-kubernetes-list-map-keys, else x-kubernetes-patch-merge-key
# (an empty tuple is a list of primitives). Extracted from the schema bundle in
# kyaml/openapi/kubernetesapi; definitions with the same content share one name here, and
# only fields on a path to such a list are listed: {definition: {field: (child, merge keys)}}.
_SMP_DEFS: Final[dict[str, dict[str, tuple[str | None, tuple[str, ...] | None]]]] = {
    "CSINode": {"metadata": ("ObjectMeta", None), "spec": ("CSINodeSpec", None)},
    "CSINodeSpec": {"drivers": (None, ("name",))},
    "ComponentStatus": {"conditions": (None, ("type",)), "metadata": ("ObjectMeta", None)},
    "Conditions": {"conditions": (None, ("type",))},
    "Container": {
        "env": (None, ("name",)),
        "ports": (None, ("containerPort", "protocol")),
        "volumeDevices": (None, ("devicePath",)),
        "volumeMounts": (None, ("mountPath",)),
    },
    "CronJob": {"metadata": ("ObjectMeta", None), "spec": ("CronJobSpec", None)},
    "CronJobSpec": {"jobTemplate": ("JobTemplateSpec", None)},
    "EphemeralContainer": {
        "env": (None, ("name",)),
        "volumeDevices": (None, ("devicePath",)),
        "volumeMounts": (None, ("mountPath",)),
    },
    "EphemeralVolumeSource": {"volumeClaimTemplate": ("Object", None)},
    "JobTemplateSpec": {"metadata": ("ObjectMeta", None), "spec": ("WorkloadSpec", None)},
    "Node": {
        "metadata": ("ObjectMeta", None),
        "spec": ("NodeSpec", None),
        "status": ("NodeStatus", None),
    },
    "NodeSpec": {"podCIDRs": (None, ())},
    "NodeStatus": {"addresses": (None, ("type",)), "conditions": (None, ("type",))},
    "Object": {"metadata": ("ObjectMeta", None)},
    "ObjectMeta": {"finalizers": (None, ()), "ownerReferences": (None, ("uid",))},
    "ObjectWithConditions": {"metadata": ("ObjectMeta", None), "status": ("Conditions", None)},
    "Pod": {
        "metadata": ("ObjectMeta", None),
        "spec": ("PodSpec", None),
        "status": ("PodStatus", None),
    },
    "PodSpec": {
        "containers": ("Container", ("name",)),
        "ephemeralContainers": ("EphemeralContainer", ("name",)),
        "hostAliases": (None, ("ip",)),
        "imagePullSecrets": (None, ("name",)),
        "initContainers": ("Container", ("name",)),
        "topologySpreadConstraints": (None, ("topologyKey", "whenUnsatisfiable")),
        "volumes": ("Volume", ("name",)),
    },
    "PodStatus": {"conditions": (None, ("type",)), "podIPs": (None, ("ip",))},
    "PodTemplate": {"metadata": ("ObjectMeta", None), "template": ("PodTemplateSpec", None)},
    "PodTemplateSpec": {"metadata": ("ObjectMeta", None), "spec": ("PodSpec", None)},
    "Service": {
        "metadata": ("ObjectMeta", None),
        "spec": ("ServiceSpec", None),
        "status": ("Conditions", None),
    },
    "ServiceAccount": {"metadata": ("ObjectMeta", None), "secrets": (None, ("name",))},
    "ServiceSpec": {"ports": (None, ("port", "protocol"))},
    "Volume": {"ephemeral": ("EphemeralVolumeSource", None)},
    "WebhookConfiguration": {"metadata": ("ObjectMeta", None), "webhooks": (None, ("name",))},
    "Workload": {
        "metadata": ("ObjectMeta", None),
        "spec": ("WorkloadSpec", None),
        "status": ("Conditions", None),
    },
    "WorkloadSpec": {"template": ("PodTemplateSpec", None)},
}


def _smp_types() -> dict[tuple[str, str], str]:
    metadata_only = {
        "admissionregistration.k8s.io/v1": (),
        "apiextensions.k8s.io/v1": ("CustomResourceDefinition",),
        "apiextensions.k8s.io/v1beta1": ("CustomResourceDefinition",),
        "apps/v1": ("ControllerRevision",),
        "authentication.k8s.io/v1": ("TokenRequest", "TokenReview"),
        "authentication.k8s.io/v1beta1": ("TokenReview",),
        "authorization.k8s.io/v1": (
            "LocalSubjectAccessReview",
            "SelfSubjectAccessReview",
            "SelfSubjectRulesReview",
            "SubjectAccessReview",
        ),
        "authorization.k8s.io/v1beta1": (
            "LocalSubjectAccessReview",
            "SelfSubjectAccessReview",
            "SelfSubjectRulesReview",
            "SubjectAccessReview",
        ),
        "autoscaling/v1": ("HorizontalPodAutoscaler", "Scale"),
        "autoscaling/v2beta1": ("HorizontalPodAutoscaler",),
        "autoscaling/v2beta2": ("HorizontalPodAutoscaler",),
        "certificates.k8s.io/v1": ("CertificateSigningRequest",),
        "certificates.k8s.io/v1beta1": ("CertificateSigningRequest",),
        "coordination.k8s.io/v1": ("Lease",),
        "coordination.k8s.io/v1beta1": ("Lease",),
        "discovery.k8s.io/v1": ("EndpointSlice",),
        "discovery.k8s.io/v1beta1": ("EndpointSlice",),
        "events.k8s.io/v1": ("Event",),
        "events.k8s.io/v1beta1": ("Event",),
        "extensions/v1beta1": ("Ingress",),
        "flowcontrol.apiserver.k8s.io/v1beta1": ("FlowSchema", "PriorityLevelConfiguration"),
        "networking.k8s.io/v1": ("Ingress", "IngressClass", "NetworkPolicy"),
        "networking.k8s.io/v1beta1": ("Ingress", "IngressClass"),
        "node.k8s.io/v1": ("RuntimeClass",),
        "node.k8s.io/v1beta1": ("RuntimeClass",),
        "policy/v1beta1": ("Eviction", "PodSecurityPolicy"),
        "rbac.authorization.k8s.io/v1": (
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ),
        "rbac.authorization.k8s.io/v1beta1": (
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ),
        "scheduling.k8s.io/v1": ("PriorityClass",),
        "scheduling.k8s.io/v1beta1": ("PriorityClass",),
        "storage.k8s.io/v1": ("CSIDriver", "StorageClass", "VolumeAttachment"),
        "storage.k8s.io/v1beta1": (
            "CSIDriver",
            "CSIStorageCapacity",
            "StorageClass",
            "VolumeAttachment",
        ),
        "v1": (
            "Binding",
            "ConfigMap",
            "Endpoints",
            "Event",
            "LimitRange",
            "PersistentVolume",
            "ResourceQuota",
            "Secret",
        ),
    }
    types = {(av, kind): "Object" for av, kinds in metadata_only.items() for kind in kinds}
    for av in ("admissionregistration.k8s.io/v1", "admissionregistration.k8s.io/v1beta1"):
        types[(av, "MutatingWebhookConfiguration")] = "WebhookConfiguration"
        types[(av, "ValidatingWebhookConfiguration")] = "WebhookConfiguration"
    for kind in ("DaemonSet", "Deployment", "ReplicaSet", "StatefulSet"):
        types[("apps/v1", kind)] = "Workload"
    types[("batch/v1", "Job")] = "Workload"
    types[("v1", "ReplicationController")] = "Workload"
    types[("batch/v1", "CronJob")] = "CronJob"
    types[("batch/v1beta1", "CronJob")] = "CronJob"
    for av, kind in (
        ("apiregistration.k8s.io/v1", "APIService"),
        ("apiregistration.k8s.io/v1beta1", "APIService"),
        ("policy/v1", "PodDisruptionBudget"),
        ("policy/v1beta1", "PodDisruptionBudget"),
        ("v1", "Namespace"),
        ("v1", "PersistentVolumeClaim"),
    ):
        types[(av, kind)] = "ObjectWithConditions"
    types[("storage.k8s.io/v1", "CSINode")] = "CSINode"
    types[("storage.k8s.io/v1beta1", "CSINode")] = "CSINode"
    types[("v1", "ComponentStatus")] = "ComponentStatus"
    types[("v1", "Node")] = "Node"
    types[("v1", "Pod")] = "Pod"
    types[("v1", "PodTemplate")] = "PodTemplate"
    types[("v1", "Service")] = "Service"
    types[("v1", "ServiceAccount")] = "ServiceAccount"
    return types


_SMP_TYPES: Final = _smp_types()


class _FieldSpec(NamedTuple):
    """A kustomize field spec: a path ("[]" marks a list) in resources of a group/version/kind."""

    path: tuple[str, ...]
    create: bool
    group: str = ""
    version: str = ""
    kind: str = ""

    def matches(self, obj: Mapping[str, Any]) -> bool:
        group, version = _split_api_version(obj.get("apiVersion", ""))
        return (
            (not self.kind or self.kind == obj.get("kind"))
            and (not self.group or self.group == group)
            and (not self.version or self.version == version)
        )


def _fs(path: str, create: bool, group: str = "", version: str = "", kind: str = "") -> _FieldSpec:
    return _FieldSpec(tuple(path.split("/")), create, group, version, kind)


# api/internal/konfig/builtinpluginconsts/metadatalabels.go (also templatelabels.go).
_METADATA_LABEL_SPECS: Final = (
    _fs("metadata/labels", True),
    _fs("spec/template/metadata/labels", True, version="v1", kind="ReplicationController"),
    _fs("spec/template/metadata/labels", True, kind="Deployment"),
    _fs("spec/template/metadata/labels", True, kind="ReplicaSet"),
    _fs("spec/template/metadata/labels", True, kind="DaemonSet"),
    _fs("spec/template/metadata/labels", True, group="apps", kind="StatefulSet"),
    _fs("spec/template/metadata/labels", True, group="batch", kind="Job"),
    _fs("spec/jobTemplate/metadata/labels", True, group="batch", kind="CronJob"),
    _fs("spec/jobTemplate/spec/template/metadata/labels", True, group="batch", kind="CronJob"),
)
_AFFINITY_SELECTOR_PATHS: Final = (
    "spec/template/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels",
    "spec/template/spec/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels",
    "spec/template/spec/affinity/podAntiAffinity/preferredDuringSchedulingIgnoredDuringExecution/podAffinityTerm/labelSelector/matchLabels",
    "spec/template/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution/labelSelector/matchLabels",
    "spec/template/spec/topologySpreadConstraints/labelSelector/matchLabels",
)
# api/internal/konfig/builtinpluginconsts/commonlabels.go (used with includeSelectors).
_COMMON_LABEL_SPECS: Final = (
    _fs("spec/selector", True, version="v1", kind="Service"),
    _fs("spec/selector", True, version="v1", kind="ReplicationController"),
    _fs("spec/selector/matchLabels", True, kind="Deployment"),
    *(_fs(p, False, group="apps", kind="Deployment") for p in _AFFINITY_SELECTOR_PATHS),
    _fs("spec/selector/matchLabels", True, kind="ReplicaSet"),
    _fs("spec/selector/matchLabels", True, kind="DaemonSet"),
    _fs("spec/selector/matchLabels", True, group="apps", kind="StatefulSet"),
    *(_fs(p, False, group="apps", kind="StatefulSet") for p in _AFFINITY_SELECTOR_PATHS),
    _fs("spec/selector/matchLabels", False, group="batch", kind="Job"),
    _fs("spec/jobTemplate/spec/selector/matchLabels", False, group="batch", kind="CronJob"),
    _fs("spec/selector/matchLabels", False, group="policy", kind="PodDisruptionBudget"),
    _fs("spec/podSelector/matchLabels", False, group="networking.k8s.io", kind="NetworkPolicy"),
    _fs(
        "spec/ingress/from/podSelector/matchLabels",
        False,
        group="networking.k8s.io",
        kind="NetworkPolicy",
    ),
    _fs(
        "spec/egress/to/podSelector/matchLabels",
        False,
        group="networking.k8s.io",
        kind="NetworkPolicy",
    ),
    *_METADATA_LABEL_SPECS,
    _fs("spec/volumeClaimTemplates[]/metadata/labels", True, group="apps", kind="StatefulSet"),
)
# api/internal/konfig/builtinpluginconsts/namespace.go (metadata/namespace is added by the
# namespace filter itself; metadata/name only for apiVersion v1).
_NAMESPACE_SPECS: Final = (
    _fs("metadata/name", True, kind="Namespace"),
    _fs("spec/service/namespace", True, group="apiregistration.k8s.io", kind="APIService"),
    _fs(
        "spec/conversion/webhook/clientConfig/service/namespace",
        False,
        group="apiextensions.k8s.io",
        kind="CustomResourceDefinition",
    ),
)
# api/internal/konfig/builtinpluginconsts/images.go (never created: the setter has no kind).
_IMAGE_SPECS: Final = (
    _fs("spec/containers[]/image", False),
    _fs("spec/initContainers[]/image", False),
    _fs("spec/volumes[]/image/reference", False),
    _fs("spec/template/spec/containers[]/image", False),
    _fs("spec/template/spec/initContainers[]/image", False),
    _fs("spec/template/spec/volumes[]/image/reference", False),
)


def _pod_template_configmap_refs() -> list[_FieldSpec]:
    refs = (
        "spec/volumes/configMap/name",
        "spec/containers/env/valueFrom/configMapKeyRef/name",
        "spec/initContainers/env/valueFrom/configMapKeyRef/name",
        "spec/containers/envFrom/configMapRef/name",
        "spec/initContainers/envFrom/configMapRef/name",
        "spec/volumes/projected/sources/configMap/name",
    )
    specs = [_fs(r, False, version="v1", kind="Pod") for r in refs]
    specs += [_fs("template/" + r, False, kind="PodTemplate") for r in refs]
    for kind in ("Deployment", "ReplicaSet", "DaemonSet", "StatefulSet", "Job"):
        specs += [_fs("spec/template/" + r, False, kind=kind) for r in refs]
    specs += [_fs("spec/jobTemplate/spec/template/" + r, False, kind="CronJob") for r in refs]
    specs.append(_fs("spec/configSource/configMap", False, kind="Node"))
    specs.append(_fs("rules/resourceNames", False, kind="Role"))
    specs.append(_fs("rules/resourceNames", False, kind="ClusterRole"))
    specs.append(
        _FieldSpec(
            ("metadata", "annotations", "nginx.ingress.kubernetes.io/fastcgi-params-configmap"),
            False,
            kind="Ingress",
        )
    )
    return specs


class _BackReference(NamedTuple):
    """Referrers of a kind (api/internal/konfig/builtinpluginconsts/namereference.go)."""

    kind: str
    version: str
    referrers: tuple[_FieldSpec, ...]


# The name references whose value can change in this subset: ConfigMap names (hash suffix) and
# the map-valued references that also carry the namespace. All other references in kustomize's
# table hold a bare name of a kind whose name never changes here, so fixing them is a no-op.
_BACK_REFERENCES: Final = (
    _BackReference("ConfigMap", "v1", tuple(_pod_template_configmap_refs())),
    _BackReference(
        "ServiceAccount",
        "v1",
        (
            _fs("subjects", False, group="rbac.authorization.k8s.io", kind="RoleBinding"),
            _fs("subjects", False, group="rbac.authorization.k8s.io", kind="ClusterRoleBinding"),
        ),
    ),
    _BackReference(
        "Service",
        "v1",
        (
            _fs(
                "webhooks/clientConfig/service",
                False,
                group="admissionregistration.k8s.io",
                kind="ValidatingWebhookConfiguration",
            ),
            _fs(
                "webhooks/clientConfig/service",
                False,
                group="admissionregistration.k8s.io",
                kind="MutatingWebhookConfiguration",
            ),
        ),
    ),
)

_CONFIGMAP_KEY: Final = re.compile(r"[-._a-zA-Z0-9]+")
_NOT_NAMESPACEABLE: Final = "_non_namespaceable_"


class _Missing:
    """Marks an absent map field (distinct from a present null)."""


class _Clear:
    """Marks a field a strategic-merge patch removes."""


_MISSING: Final = _Missing()
_CLEAR: Final = _Clear()


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------

_YAML12_NULL: Final = frozenset({"", "~", "null", "Null", "NULL"})
_YAML12_BOOL: Final = frozenset({"true", "True", "TRUE", "false", "False", "FALSE"})
_YAML12_INT: Final = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_YAML12_FLOAT: Final = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
# Booleans to go-yaml v2, which kubectl uses to read kustomize's output; strings to PyYAML.
_YAML11_ONLY_BOOL: Final = frozenset({"y", "Y", "n", "N"})


def _yaml12(value: str) -> tuple[str, Any]:
    """The YAML 1.2 core-schema reading of a plain scalar (kustomize's kyaml uses YAML 1.2)."""
    if value in _YAML12_NULL:
        return "null", None
    if value in _YAML12_BOOL:
        return "bool", value.lower() == "true"
    if _YAML12_INT.fullmatch(value):
        if value.startswith("0o"):
            return "int", int(value[2:], 8)
        return "int", int(value, 16) if value.startswith("0x") else int(value, 10)
    if _YAML12_FLOAT.fullmatch(value):
        if value.lstrip("-+").startswith(".") and value.lstrip("-+")[1:].isalpha():
            return "float", float(value.replace(".", "", 1))  # .inf, -.Inf, .NaN, ...
        return "float", float(value)
    return "str", value


class _Loader(yaml.SafeLoader):
    """PyYAML's YAML 1.1 reading (as kubectl reads kustomize's output), refusing any plain
    scalar YAML 1.2 (kustomize's kyaml) reads differently, duplicate or non-string keys, and
    timestamps. Records whether a null was written as an empty value."""

    empty_null: bool = False


def _ambiguous(node: yaml.ScalarNode, reading: str) -> yaml.constructor.ConstructorError:
    return yaml.constructor.ConstructorError(
        None,
        None,
        f"the plain scalar {node.value!r} reads as {reading}; YAML 1.1 (kubectl) and YAML 1.2 "
        "(kustomize) disagree on it: quote it if it is a string, else write a number or "
        "boolean both read alike (decimal, true/false)",
        node.start_mark,
    )


def _check_plain(loader: _Loader, node: yaml.ScalarNode, kind: str, value: Any) -> None:
    if node.style is not None:
        return
    if node.value in _YAML11_ONLY_BOOL:
        raise _ambiguous(node, "a boolean in YAML 1.1 and a string in YAML 1.2")
    kind12, value12 = _yaml12(node.value)
    if kind12 != kind:
        raise _ambiguous(node, f"{kind} in YAML 1.1 but {kind12} in YAML 1.2")
    if kind in ("int", "bool") and value12 != value:
        raise _ambiguous(node, f"{value!r} in YAML 1.1 but {value12!r} in YAML 1.2")
    if kind == "float" and value12 != value and not (value12 != value12 and value != value):
        raise _ambiguous(node, f"{value!r} in YAML 1.1 but {value12!r} in YAML 1.2")


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    assert isinstance(value, str)
    _check_plain(loader, node, "str", value)
    return value


def _construct_null(loader: _Loader, node: yaml.ScalarNode) -> None:
    if node.value == "":
        loader.empty_null = True


def _construct_bool(loader: _Loader, node: yaml.ScalarNode) -> bool:
    value = loader.construct_yaml_bool(node)
    _check_plain(loader, node, "bool", value)
    return value


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    value = loader.construct_yaml_int(node)
    _check_plain(loader, node, "int", value)
    return value


def _construct_float(loader: _Loader, node: yaml.ScalarNode) -> float:
    value = loader.construct_yaml_float(node)
    _check_plain(loader, node, "float", value)
    return value


def _construct_timestamp(loader: _Loader, node: yaml.ScalarNode) -> None:
    raise _ambiguous(node, "a timestamp in YAML 1.1 and a string in YAML 1.2")


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> dict[str, Any]:
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise yaml.constructor.ConstructorError(
                None, None, "YAML merge keys (<<) are unsupported", key_node.start_mark
            )
    result: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"map key {key!r} is not a string", key_node.start_mark
            )
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate map key {key!r}", key_node.start_mark
            )
        if key == "annotations" and isinstance(value_node, yaml.MappingNode):
            _check_annotation_texts(value_node)
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_CANONICAL_TEXT: Final = {
    "tag:yaml.org,2002:str": re.compile(r".*", re.S),
    "tag:yaml.org,2002:int": re.compile(r"-?(?:0|[1-9][0-9]*)"),
    "tag:yaml.org,2002:bool": re.compile(r"true|false"),
}


def _check_annotation_texts(node: yaml.MappingNode) -> None:
    """kustomize rewrites annotations from their YAML text ("8080", "true"); only texts the
    loaded value gives back are accepted (no floats, nulls, True, 0x1F, ...)."""
    for _, value in node.value:
        pattern = _CANONICAL_TEXT.get(value.tag)
        if (
            not isinstance(value, yaml.ScalarNode)
            or not pattern
            or not pattern.fullmatch(value.value)
        ):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "annotation values must be strings (quote them)",
                value.start_mark,
            )


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> list[Any]:
    return [loader.construct_object(child, deep=True) for child in node.value]


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_Loader.add_constructor("tag:yaml.org,2002:null", _construct_null)
_Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


class _Document(NamedTuple):
    value: Any
    empty_null: bool


def _fresh(value: Any, where: str) -> Any:
    """A deep copy with no shared sub-objects (YAML aliases), checking JSON-like types only."""
    if isinstance(value, dict):
        return {k: _fresh(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh(v, where) for v in value]
    if value is None or isinstance(value, str | int | float):
        return value
    raise KustomizeError(f"{where}: unsupported YAML value of type {type(value).__name__}")


def _load_yaml(text: str, where: str) -> list[_Document]:
    loader = _Loader(text)
    documents: list[_Document] = []
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]
            loader.empty_null = False
            value = loader.get_data()
            documents.append(_Document(_fresh(value, where), loader.empty_null))
    except yaml.YAMLError as exc:
        raise KustomizeError(f"{where}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return documents


class _Dumper(yaml.SafeDumper):
    """Block-style YAML; quotes every string a YAML 1.1 or a YAML 1.2 reader would not read
    back as that string; never writes anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Dumper.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?)$"),
    list("-+0123456789."),
)
_Dumper.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^0o[0-7]+$"), ["0"])
_Dumper.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))


def _represent_str(dumper: _Dumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def dump(resources: Iterable[Mapping[str, Any]]) -> str:
    """Multi-document YAML (``---`` between documents), keys in the order of the resources."""
    documents = [
        yaml.dump(
            dict(resource),
            Dumper=_Dumper,
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
            width=1 << 20,
        )
        for resource in resources
    ]
    return "---\n".join(documents)


# ---------------------------------------------------------------------------------------------
# Resources and ids
# ---------------------------------------------------------------------------------------------


def _split_api_version(api_version: Any) -> tuple[str, str]:
    text = api_version if isinstance(api_version, str) else ""
    group, sep, version = text.partition("/")
    return (group, version) if sep else ("", text)


def _is_cluster_scoped(api_version: str, kind: str) -> bool:
    return (api_version, kind) in _CLUSTER_SCOPED


@dataclass(frozen=True)
class _Id:
    group: str
    version: str
    kind: str
    name: str
    namespace: str
    cluster_scoped: bool = False

    def effective_namespace(self) -> str:
        if self.cluster_scoped:
            return _NOT_NAMESPACEABLE
        if self.namespace in ("", "default"):
            return "default"
        return self.namespace

    def equals(self, other: _Id) -> bool:
        return self.effective_namespace() == other.effective_namespace() and (
            self.group,
            self.version,
            self.kind,
            self.name,
        ) == (other.group, other.version, other.kind, other.name)

    def __str__(self) -> str:
        api_version = f"{self.group}/{self.version}" if self.group else self.version
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{api_version} {self.kind} {where}"


@dataclass
class _Res:
    obj: dict[str, Any]
    source: str
    prev_ids: list[_Id] = field(default_factory=list)
    needs_hash: bool = False
    empty_null: bool = False

    @property
    def api_version(self) -> str:
        return str(self.obj["apiVersion"])

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str:
        namespace = self.obj["metadata"].get("namespace")
        return namespace if isinstance(namespace, str) else ""

    def cluster_scoped(self) -> bool:
        return _is_cluster_scoped(self.api_version, self.kind)

    def cur_id(self) -> _Id:
        group, version = _split_api_version(self.api_version)
        return _Id(group, version, self.kind, self.name, self.namespace, self.cluster_scoped())

    def org_id(self) -> _Id:
        return self.prev_ids[0] if self.prev_ids else self.cur_id()

    def store_previous_id(self) -> None:
        cur = self.cur_id()
        self.prev_ids.append(
            _Id(cur.group, cur.version, cur.kind, cur.name, cur.effective_namespace())
        )

    def labels(self) -> dict[str, str]:
        return _string_map(self.obj["metadata"].get("labels"))

    def annotations(self) -> dict[str, str]:
        return _string_map(self.obj["metadata"].get("annotations"))


def _scalar_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {k: _scalar_text(v) for k, v in value.items()}


def _check_resource(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise KustomizeError(f"{where}: a resource must be a map, got {type(obj).__name__}")
    for key in ("apiVersion", "kind"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise KustomizeError(f"{where}: resource without {key}")
    if obj["kind"].endswith("List") and "items" in obj:
        raise KustomizeError(f"{where}: {obj['kind']} lists are unsupported; list the items")
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        raise KustomizeError(f"{where}: {obj['kind']} without metadata.name")
    if not metadata["name"]:
        raise KustomizeError(f"{where}: {obj['kind']} with an empty metadata.name")
    if "namespace" in metadata and not isinstance(metadata["namespace"], str):
        raise KustomizeError(f"{where}: metadata.namespace must be a string")
    for key in ("labels", "annotations"):
        if key in metadata and not isinstance(metadata[key], dict | None):
            raise KustomizeError(f"{where}: metadata.{key} must be a map")
    for key in _string_map(metadata.get("annotations")):
        if key.startswith(_RESERVED_ANNOTATION_PREFIXES):
            raise KustomizeError(
                f"{where}: annotation {key!r} is interpreted by kustomize; unsupported"
            )
    _check_no_null_list_items(obj, where)
    return obj


def _check_no_null_list_items(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for child in value.values():
            _check_no_null_list_items(child, where)
    elif isinstance(value, list):
        for child in value:
            if child is None:
                raise KustomizeError(f"{where}: empty list item")
            _check_no_null_list_items(child, where)


def _append(resources: list[_Res], res: _Res, where: str) -> None:
    new_id = res.cur_id()
    for other in resources:
        if other.cur_id().equals(new_id):
            raise KustomizeError(
                f"{where}: duplicate resource id {new_id} (from {res.source}; already added "
                f"from {other.source})"
            )
    resources.append(res)


# ---------------------------------------------------------------------------------------------
# Reading and checking kustomization files
# ---------------------------------------------------------------------------------------------


class _GeneratorOptions(NamedTuple):
    disable_hash: bool
    labels: dict[str, str]
    annotations: dict[str, str]
    immutable: bool


class _ConfigMapArgs(NamedTuple):
    name: str
    files: list[str]
    literals: list[str]
    envs: list[str]
    options: _GeneratorOptions | None
    where: str


class _Target(NamedTuple):
    group: str
    version: str
    kind: str
    name: str
    namespace: str
    label_selector: str
    annotation_selector: str


class _Patch(NamedTuple):
    text: str
    source: str
    target: _Target | None
    where: str


class _Image(NamedTuple):
    name: str
    new_name: str
    new_tag: str
    digest: str


class _Labels(NamedTuple):
    pairs: dict[str, str]
    include_selectors: bool
    include_templates: bool


@dataclass
class _Kustomization:
    file: Path
    root: Path
    resources: list[str]
    namespace: str
    labels: list[_Labels]
    images: list[_Image]
    config_maps: list[_ConfigMapArgs]
    generator_options: _GeneratorOptions | None
    patches: list[_Patch]

    def fail(self, message: str) -> KustomizeError:
        return KustomizeError(f"{self.file}: {message}")


class _Checker:
    """Type checks of kustomization fields, with errors naming the file and the field."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def fail(self, where: str, message: str) -> KustomizeError:
        return KustomizeError(f"{self.file}: {where}: {message}")

    def fields(self, value: Any, where: str, allowed: Sequence[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a map, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                raise self.fail(
                    where,
                    f"unsupported field {key!r} (the renderer supports: {', '.join(allowed)})",
                )
        return value

    def string(self, value: Any, where: str, *, required: bool = False) -> str:
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            raise self.fail(where, f"must be a string, got {type(value).__name__} (quote it)")
        if required and not value:
            raise self.fail(where, "must not be empty")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.fail(where, f"must be true or false, got {value!r}")
        return value

    def strings(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, f"must be a list, got {type(value).__name__}")
        return [self.string(item, f"{where}[{i}]", required=True) for i, item in enumerate(value)]

    def string_map(self, value: Any, where: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a map, got {type(value).__name__}")
        return {k: self.string(v, f"{where}.{k}", required=False) for k, v in value.items()}

    def items(self, value: Any, where: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, f"must be a list, got {type(value).__name__}")
        return value

    def generator_options(self, value: Any, where: str) -> _GeneratorOptions | None:
        if value is None:
            return None
        options = self.fields(value, where, _GENERATOR_OPTION_FIELDS)
        return _GeneratorOptions(
            self.boolean(options.get("disableNameSuffixHash"), f"{where}.disableNameSuffixHash"),
            self.string_map(options.get("labels"), f"{where}.labels"),
            self.string_map(options.get("annotations"), f"{where}.annotations"),
            self.boolean(options.get("immutable"), f"{where}.immutable"),
        )


def _find_kustomization_file(directory: Path) -> Path:
    found = [directory / name for name in KUSTOMIZATION_FILE_NAMES if (directory / name).is_file()]
    if not found:
        raise KustomizeError(
            f"{directory}: no kustomization file (one of {', '.join(KUSTOMIZATION_FILE_NAMES)})"
        )
    if len(found) > 1:
        raise KustomizeError(
            f"{directory}: found multiple kustomization files: {', '.join(p.name for p in found)}"
        )
    return found[0]


def _read_text(path: Path, where: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise KustomizeError(f"{where}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KustomizeError(f"{where}: {path} is not UTF-8") from None


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _checked_file(k: _Kustomization, entry: str, where: str) -> Path:
    """A file the kustomization may load: relative, and inside its root once resolved."""
    if os.path.isabs(entry):
        raise k.fail(f"{where}: absolute paths are unsupported: {entry!r}")
    path = (k.root / entry).resolve()
    if not _inside(path, k.root):
        raise k.fail(
            f"{where}: file {entry!r} is outside the kustomization directory {k.root}; "
            "kustomize's default load restrictor (LoadRestrictionsRootOnly) refuses it"
        )
    if not path.is_file():
        raise k.fail(f"{where}: {entry!r} is not a file")
    return path


def _parse_kustomization(file: Path, root: Path) -> _Kustomization:
    documents = _load_yaml(_read_text(file, str(file)), str(file))
    if len(documents) != 1 or not isinstance(documents[0].value, dict):
        raise KustomizeError(f"{file}: a kustomization file must hold one YAML map")
    c = _Checker(file)
    data = c.fields(documents[0].value, "top level", _SUPPORTED_FIELDS)
    if data.get("apiVersion") != _KUSTOMIZATION_API_VERSION:
        raise c.fail("apiVersion", f"must be {_KUSTOMIZATION_API_VERSION!r}")
    if data.get("kind") != "Kustomization":
        raise c.fail("kind", "must be 'Kustomization' (components are unsupported)")

    labels = []
    for i, item in enumerate(c.items(data.get("labels"), "labels")):
        where = f"labels[{i}]"
        spec = c.fields(item, where, _LABEL_FIELDS)
        pairs = c.string_map(spec.get("pairs"), f"{where}.pairs")
        labels.append(
            _Labels(
                pairs,
                c.boolean(spec.get("includeSelectors"), f"{where}.includeSelectors"),
                c.boolean(spec.get("includeTemplates"), f"{where}.includeTemplates"),
            )
        )

    images = []
    for i, item in enumerate(c.items(data.get("images"), "images")):
        where = f"images[{i}]"
        spec = c.fields(item, where, _IMAGE_FIELDS)
        image = _Image(
            c.string(spec.get("name"), f"{where}.name", required=True),
            c.string(spec.get("newName"), f"{where}.newName"),
            c.string(spec.get("newTag"), f"{where}.newTag"),
            c.string(spec.get("digest"), f"{where}.digest"),
        )
        images.append(image)

    config_maps = []
    for i, item in enumerate(c.items(data.get("configMapGenerator"), "configMapGenerator")):
        where = f"configMapGenerator[{i}]"
        spec = c.fields(item, where, _CONFIGMAP_FIELDS)
        behavior = c.string(spec.get("behavior"), f"{where}.behavior")
        if behavior not in ("", "create"):
            raise c.fail(f"{where}.behavior", f"{behavior!r} is unsupported (only 'create')")
        config_maps.append(
            _ConfigMapArgs(
                c.string(spec.get("name"), f"{where}.name", required=True),
                c.strings(spec.get("files"), f"{where}.files"),
                c.strings(spec.get("literals"), f"{where}.literals"),
                c.strings(spec.get("envs"), f"{where}.envs"),
                c.generator_options(spec.get("options"), f"{where}.options"),
                where,
            )
        )

    patches = []
    for i, item in enumerate(c.items(data.get("patches"), "patches")):
        where = f"patches[{i}]"
        spec = c.fields(item, where, _PATCH_FIELDS)
        path = c.string(spec.get("path"), f"{where}.path")
        inline = c.string(spec.get("patch"), f"{where}.patch")
        if bool(path) == bool(inline):
            raise c.fail(where, "needs exactly one of 'path' and 'patch'")
        target = None
        if spec.get("target") is not None:
            t = c.fields(spec["target"], f"{where}.target", _TARGET_FIELDS)
            target = _Target(*(c.string(t.get(f), f"{where}.target.{f}") for f in _TARGET_FIELDS))
            for name in ("group", "version", "kind", "name", "namespace"):
                try:
                    re.compile(t.get(name) or "")
                except re.error as exc:
                    raise c.fail(f"{where}.target.{name}", f"invalid regex: {exc}") from None
        patches.append(_Patch(inline, path, target, where))

    k = _Kustomization(
        file=file,
        root=root,
        resources=c.strings(data.get("resources"), "resources"),
        namespace=c.string(data.get("namespace"), "namespace"),
        labels=labels,
        images=images,
        config_maps=config_maps,
        generator_options=c.generator_options(data.get("generatorOptions"), "generatorOptions"),
        patches=patches,
    )
    return k


# ---------------------------------------------------------------------------------------------
# Field specs
# ---------------------------------------------------------------------------------------------

_Leaf = Callable[[dict[str, Any], str, bool], None]


def _visit(node: Any, path: Sequence[str], create: bool, leaf: _Leaf, where: str) -> None:
    """Walks a field-spec path as kustomize's fieldspec filter does: lists are traversed
    element by element, maps created where ``create`` allows, and ``leaf(parent, key,
    may_create)`` handles the last field."""
    if node is None:
        return
    if isinstance(node, list):
        for element in node:
            _visit(element, path, create, leaf, where)
        return
    if not isinstance(node, dict):
        raise KustomizeError(f"{where}: expected a map or a list on the way to {'/'.join(path)}")
    name = path[0].removesuffix("[]")
    may_create = create and not path[0].endswith("[]")
    if len(path) == 1:
        leaf(node, name, may_create)
        return
    child = node.get(name, _MISSING)
    if isinstance(child, _Missing) or child is None:
        if not may_create:
            return
        node[name] = child = {}
    _visit(child, path[1:], create, leaf, where)


def _apply_spec(obj: dict[str, Any], spec: _FieldSpec, leaf: _Leaf, where: str) -> None:
    if spec.matches(obj):
        _visit(obj, spec.path, spec.create, leaf, where)


def _gvk_sort_key(spec: _FieldSpec) -> tuple[int, str]:
    return _TYPE_ORDER.get(spec.kind, 0), _gvk_sort_string(spec.group, spec.version, spec.kind)


def _gvk_sort_string(group: str, version: str, kind: str) -> str:
    return "_".join((group or "~G", version or "~V", kind or "~K"))


# ---------------------------------------------------------------------------------------------
# Transformers: namespace, labels, images
# ---------------------------------------------------------------------------------------------


def _set_namespace(k: _Kustomization, resources: list[_Res]) -> None:
    namespace = k.namespace

    def leaf(parent: dict[str, Any], key: str, may_create: bool) -> None:
        value = parent.get(key, _MISSING)
        if isinstance(value, _Missing):
            if may_create:
                parent[key] = namespace
            return
        if isinstance(value, dict | list):
            raise k.fail(f"namespace: the field {key!r} to set must hold a string")
        if value is None and not may_create:
            return
        parent[key] = namespace

    for res in resources:
        where = f"namespace: {res.cur_id()}"
        res.store_previous_id()
        if not res.cluster_scoped():
            _visit(res.obj, ("metadata", "namespace"), True, leaf, where)
        if res.kind in ("RoleBinding", "ClusterRoleBinding"):
            subjects = res.obj.get("subjects")
            for subject in subjects if isinstance(subjects, list) else ():
                if not isinstance(subject, dict):
                    raise k.fail(f"{where}: subjects must be maps")
                if subject.get("name") == "default":
                    subject["namespace"] = namespace
        for spec in _NAMESPACE_SPECS:
            if spec.path == ("metadata", "name") and res.api_version != "v1":
                continue
            _apply_spec(res.obj, spec, leaf, where)
        new_id = res.cur_id()
        if sum(1 for other in resources if other.cur_id().equals(new_id)) != 1:
            raise k.fail(f"namespace transformation produces an id conflict on {new_id}")


def _label_setter(k: _Kustomization, where: str, name: str, value: str) -> _Leaf:
    def leaf(parent: dict[str, Any], key: str, may_create: bool) -> None:
        current = parent.get(key, _MISSING)
        if isinstance(current, _Missing) or current is None:
            if not may_create:
                if current is None:
                    raise k.fail(f"{where}: the label map {key!r} is null")
                return
            parent[key] = current = {}
        if not isinstance(current, dict):
            raise k.fail(f"{where}: {key!r} must be a map to hold labels")
        current[name] = value

    return leaf


def _apply_labels(k: _Kustomization, labels: _Labels, resources: list[_Res]) -> None:
    if labels.include_selectors:
        specs = sorted(_COMMON_LABEL_SPECS, key=_gvk_sort_key)
    elif labels.include_templates:
        specs = sorted(_METADATA_LABEL_SPECS, key=_gvk_sort_key)
    else:
        specs = [_fs("metadata/labels", True)]
    for res in resources:
        where = f"labels: {res.cur_id()}"
        for name in sorted(labels.pairs):
            leaf = _label_setter(k, where, name, labels.pairs[name])
            for spec in specs:
                _apply_spec(res.obj, spec, leaf, where)


def _image_matches(image: str, name: str) -> bool:
    # api/internal/image/image.go IsImageMatched: the name is used as a regular expression.
    try:
        pattern = re.compile(
            "^"
            + name
            + r"(:[a-zA-Z0-9_.{}-]*)?(@[a-zA-Z0-9]+([.+_-][a-zA-Z0-9]+)*:[a-zA-Z0-9_.{}-]*)?\Z"
        )
    except re.error:
        return False
    return pattern.match(image) is not None


def _split_image(image: str) -> tuple[str, str, str]:
    """Name, tag and digest, as api/internal/image/image.go Split."""
    slash = image.find("/")
    offset = slash if slash > 0 else 0
    search = image[offset:]
    at, colon = search.find("@"), search.find(":")
    if colon < 0 and at < 0:
        return image, "", ""
    if at >= 0 and (at < colon or colon < 0):
        return image[: at + offset], "", image[at + offset + 1 :]
    if at >= 0 and colon >= 0:
        return (
            image[: colon + offset],
            image[colon + offset + 1 : at + offset],
            image[at + offset + 1 :],
        )
    return image[: colon + offset], image[colon + offset + 1 :], ""


def _new_image(value: str, image: _Image) -> str:
    if not _image_matches(value, image.name):
        return value
    name, tag, digest = _split_image(value)
    if image.new_name:
        name = image.new_name
    if image.new_tag:
        tag, digest = image.new_tag, image.digest
    elif image.digest:
        tag, digest = "", image.digest
    if tag:
        name += ":" + tag
    if digest:
        name += "@" + digest
    return name


def _apply_image(k: _Kustomization, image: _Image, resources: list[_Res]) -> None:
    def update(holder: dict[str, Any], key: str, where: str) -> None:
        value = holder.get(key, _MISSING)
        if isinstance(value, _Missing) or value is None:
            return
        if not isinstance(value, str):
            raise k.fail(f"{where}: image must be a string, got {value!r}")
        holder[key] = _new_image(value, image)

    def legacy_walk(node: Any, where: str) -> None:
        # api/filters/imagetag/legacy.go: every containers/initContainers list, anywhere.
        if isinstance(node, dict):
            for key, value in node.items():
                legacy_walk(value, where)
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for container in value:
                        if not isinstance(container, dict):
                            raise k.fail(f"{where}: {key} items must be maps")
                        update(container, "image", where)
        elif isinstance(node, list):
            for item in node:
                legacy_walk(item, where)

    for res in resources:
        if res.kind == "CustomResourceDefinition":
            continue
        where = f"images: {res.cur_id()}"
        legacy_walk(res.obj, where)

        def leaf(parent: dict[str, Any], key: str, may_create: bool, where: str = where) -> None:
            update(parent, key, where)

        for spec in _IMAGE_SPECS:
            _apply_spec(res.obj, spec, leaf, where)


# ---------------------------------------------------------------------------------------------
# ConfigMap generator and hash
# ---------------------------------------------------------------------------------------------


def _merge_options(
    local: _GeneratorOptions | None, common: _GeneratorOptions | None
) -> _GeneratorOptions | None:
    # api/types/generatoroptions.go MergeGlobalOptionsIntoLocal: local values win.
    if common is None:
        return local
    if local is None:
        local = _GeneratorOptions(False, {}, {}, False)
    return _GeneratorOptions(
        local.disable_hash or common.disable_hash,
        {**common.labels, **local.labels},
        {**common.annotations, **local.annotations},
        local.immutable or common.immutable,
    )


def _base64_lines(data: bytes) -> str:
    # kyaml/yaml/datamap.go encodeBase64: 70-character lines, each ended by a newline when
    # there is more than one.
    encoded = base64.b64encode(data).decode("ascii")
    if len(encoded) // 70 + 1 == 1:
        return encoded
    return "".join(encoded[i : i + 70] + "\n" for i in range(0, len(encoded), 70))


def _env_pairs(content: bytes, where: str) -> list[tuple[str, str]]:
    # api/kv/kv.go keyValuesFromLines.
    pairs = []
    for number, raw in enumerate(content.split(b"\n")):
        line = raw.removesuffix(b"\r")
        if number == 0:
            line = line.removeprefix(b"\xef\xbb\xbf")
        try:
            text = line.decode("utf-8").lstrip()
        except UnicodeDecodeError:
            raise KustomizeError(f"{where}: line {number + 1} is not UTF-8") from None
        if not text or text.startswith("#"):
            continue
        key, _, value = text.partition("=")
        if key:
            pairs.append((key, value))
    return pairs


def _literal_pair(source: str, where: str) -> tuple[str, str]:
    key, sep, value = source.partition("=")
    if not sep or not key:
        raise KustomizeError(f"{where}: invalid literal {source!r}, expected key=value")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return key, value


def _generate_configmap(k: _Kustomization, args: _ConfigMapArgs) -> _Res:
    where = f"{k.file}: {args.where}"
    pairs: list[tuple[str, str | bytes]] = []
    for i, env in enumerate(args.envs):
        path = _checked_file(k, env, f"{args.where}.envs[{i}]")
        pairs.extend(_env_pairs(path.read_bytes(), f"{where}: {env}"))
    pairs.extend(_literal_pair(s, f"{where}.literals") for s in args.literals)
    for i, source in enumerate(args.files):
        key, sep, file = source.partition("=")
        if not sep:
            key, file = os.path.basename(source.rstrip("/")), source
        if not key or not file or "=" in file:
            raise k.fail(f"{args.where}.files[{i}]: invalid file source {source!r}")
        pairs.append((key, _checked_file(k, file, f"{args.where}.files[{i}]").read_bytes()))

    data: dict[str, str | bytes] = {}
    for key, value in pairs:
        if not _CONFIGMAP_KEY.fullmatch(key) or key in (".", "..") or len(key) > 253:
            raise KustomizeError(f"{where}: {key!r} is not a valid ConfigMap key")
        if key in data:
            raise KustomizeError(f"{where}: ConfigMap {args.name} repeats the key {key!r}")
        data[key] = value

    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": args.name}}
    for key in sorted(data):
        raw = data[key]
        if isinstance(raw, bytes):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                obj.setdefault("binaryData", {})[key] = _base64_lines(raw)
                continue
        else:
            text = raw
        obj.setdefault("data", {})[key] = text
    options = _merge_options(args.options, k.generator_options)
    if options is not None:
        if options.labels:
            obj["metadata"]["labels"] = {n: options.labels[n] for n in sorted(options.labels)}
        if options.annotations:
            obj["metadata"]["annotations"] = {
                n: options.annotations[n] for n in sorted(options.annotations)
            }
        if options.immutable:
            obj["immutable"] = True
    return _Res(
        obj,
        source=where,
        needs_hash=options is None or not options.disable_hash,
    )


def _go_json(value: Any) -> str:
    """Go's encoding/json output for JSON-like data: sorted keys, no spaces, HTML escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escaped)
    return text


def configmap_hash(obj: Mapping[str, Any]) -> str:
    """kustomize's ConfigMap name suffix (api/hasher/hasher.go encodeConfigMap + encode)."""
    encoded: dict[str, Any] = {"kind": "ConfigMap", "name": ""}
    for key in ("data", "binaryData"):
        value = obj.get(key, _MISSING)
        if isinstance(value, _Missing):
            if key == "data":
                encoded[key] = ""
            continue
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise KustomizeError(f"ConfigMap {key} must map keys to strings to be hashed")
        encoded[key] = value
    digest = hashlib.sha256(_go_json(encoded).encode("utf-8")).hexdigest()
    return digest[:10].translate(str.maketrans("013ae", "ghkmt"))


# ---------------------------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------------------------


class _Sch(NamedTuple):
    """A position in the built-in schema: a definition of `_SMP_DEFS` (None: a known type with
    no mergeable list below), and the merge keys when the field is a mergeable list."""

    definition: str | None
    keys: tuple[str, ...] | None = None


_OPAQUE: Final = _Sch(None)


def _type_schema(*nodes: Any) -> _Sch | None:
    for node in nodes:
        if isinstance(node, dict):
            api_version, kind = node.get("apiVersion"), node.get("kind")
            if isinstance(api_version, str) and isinstance(kind, str) and api_version and kind:
                definition = _SMP_TYPES.get((api_version, kind))
                if definition is not None:
                    return _Sch(definition)
    return None


def _child_schema(sch: _Sch | None, key: str) -> _Sch | None:
    if sch is None:
        return None
    if sch.definition is None:
        return _OPAQUE
    entry = _SMP_DEFS[sch.definition].get(key)
    return _OPAQUE if entry is None else _Sch(*entry)


def _kind_name(value: Any) -> str:
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "list"
    return "scalar"


class _Merger:
    """kustomize's strategic merge (kyaml/yaml/merge2 with ListIncreaseDirection prepend)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, message: str) -> KustomizeError:
        return KustomizeError(f"{self.where}: {path or '<root>'}: {message}")

    def walk(self, dest: Any, patch: Any, sch: _Sch | None, path: str) -> Any:
        if sch is None:
            sch = _type_schema(dest, patch)
        present = [v for v in (dest, patch) if not isinstance(v, _Missing) and v is not None]
        if not present:
            return dest if isinstance(patch, _Missing) else _CLEAR
        kinds = {_kind_name(v) for v in present}
        if len(kinds) > 1:
            raise self.fail(path, "the resource and the patch disagree on map/list/scalar")
        if isinstance(present[0], dict):
            return self.merge_map(dest, patch, sch, path)
        if isinstance(present[0], list) and sch is not None and sch.keys is not None:
            return self.merge_list(dest, patch, sch, path)
        if isinstance(patch, _Missing):
            return dest
        if patch is None:
            return _CLEAR
        self.refuse_directives(patch, path)
        return patch

    def directive(self, patch: dict[str, Any], path: str) -> str:
        value = patch.pop("$patch", "merge")
        if value not in ("delete", "replace", "merge"):
            raise self.fail(path, f"unknown patch strategy {value!r}")
        return str(value)

    def refuse_directives(self, value: Any, path: str) -> None:
        if isinstance(value, dict):
            if "$patch" in value:
                raise self.fail(path, "$patch inside a list that is replaced, not merged")
            for child in value.values():
                self.refuse_directives(child, path)
        elif isinstance(value, list):
            for child in value:
                self.refuse_directives(child, path)

    def merge_map(self, dest: Any, patch: Any, sch: _Sch | None, path: str) -> Any:
        if isinstance(dest, _Missing) or dest is None:
            if self.directive(patch, path) == "delete":
                return _CLEAR
            dest = patch
        elif patch is None:
            return _CLEAR
        elif not isinstance(patch, _Missing):
            directive = self.directive(patch, path)
            if directive == "delete":
                return _CLEAR
            if directive == "replace":
                dest = patch
        source: dict[str, Any] = patch if isinstance(patch, dict) else {}
        for key in sorted(set(dest) | set(source)):
            value = self.walk(
                dest.get(key, _MISSING),
                source.get(key, _MISSING),
                _child_schema(sch, key),
                f"{path}.{key}" if path else key,
            )
            if isinstance(value, _Clear):
                dest.pop(key, None)
            else:
                dest[key] = value
        return dest

    def list_directive(self, patch: list[Any], path: str) -> str:
        first = next((e for e in patch if isinstance(e, dict) and "$patch" in e), None)
        if first is None or len(first) > 1:
            return "merge"
        value = first["$patch"]
        if value not in ("delete", "replace", "merge"):
            raise self.fail(path, f"unknown patch strategy {value!r}")
        patch[:] = [e for e in patch if not (isinstance(e, dict) and e.get("$patch") == value)]
        return str(value)

    def merge_list(self, dest: Any, patch: Any, sch: _Sch, path: str) -> Any:
        keys = sch.keys
        assert keys is not None
        if not keys:
            raise self.fail(path, "merging a list of primitives (e.g. finalizers) is unsupported")
        if isinstance(dest, _Missing) or dest is None:
            if any(isinstance(e, dict) and "$patch" in e and len(e) == 1 for e in patch):
                raise self.fail(path, "a $patch directive for a list the resource does not have")
            dest = patch
        elif patch is None:
            return _CLEAR
        elif not isinstance(patch, _Missing):
            directive = self.list_directive(patch, path)
            if directive == "delete":
                return _CLEAR
            if directive == "replace":
                dest = patch
        source: list[Any] = patch if isinstance(patch, list) else []
        same = source is dest
        elements = dest if same else dest + source
        for element in elements:
            if not isinstance(element, dict):
                raise self.fail(path, f"merged by {'+'.join(keys)}: every item must be a map")
        for element in source:
            if element.get("$patch") == "replace":
                raise self.fail(path, "$patch: replace on a list item is unsupported")

        used = [k for k in keys if any(_scalar_text(e.get(k)) != "" for e in elements)]
        if used[:1] != [keys[0]] or any(_scalar_text(e.get(keys[0])) == "" for e in elements):
            raise self.fail(path, f"merged by {'+'.join(keys)}: every item needs {keys[0]!r}")
        for element in elements:
            for key in used:
                if isinstance(element.get(key), dict | list):
                    raise self.fail(path, f"merge key {key!r} must be a scalar")

        def ident(element: dict[str, Any]) -> tuple[str, ...]:
            return tuple(_scalar_text(element.get(key)) for key in used)

        # kyaml pairs items whose keys agree where both are set (walk/associative_sequence.go
        # mergeValues) but then looks them up with every key set; when some items omit a key
        # (e.g. protocol) that goes wrong. Only unambiguous lists are accepted: two items
        # agreeing that way must be one item of the resource and its twin in the patch.
        tagged = [(e, "resource") for e in dest] + ([] if same else [(e, "patch") for e in source])
        for i, (x, x_side) in enumerate(tagged):
            for y, y_side in tagged[i + 1 :]:
                ix, iy = ident(x), ident(y)
                if all(a == b or not a or not b for a, b in zip(ix, iy, strict=True)) and (
                    ix != iy or x_side == y_side
                ):
                    raise self.fail(
                        path,
                        f"merged by {'+'.join(keys)}: items {ix} and {iy} "
                        f"({x_side}, {y_side}) are ambiguous; spell {', '.join(used[1:])} "
                        "alike on the items of the resource and of the patch",
                    )
        if len(used) > 1:
            for element in source:
                if element.get("$patch") == "delete" and "" in ident(element):
                    raise self.fail(path, f"$patch: delete needs all of {', '.join(used)}")

        dest_items = {ident(e): e for e in dest}
        source_items = {ident(e): e for e in source}
        if len(used) > 1:
            # appendListNode re-appends every item of the resource, in its order, after the
            # patch's new items when more than one merge key is in use.
            order = [i for i in source_items if i not in dest_items] + list(dest_items)
        else:
            order = list(source_items) + [i for i in dest_items if i not in source_items]
        element_schema = _Sch(sch.definition) if sch.definition else _OPAQUE
        merged = []
        for item_id in order:
            value = self.walk(
                dest_items.get(item_id, _MISSING),
                source_items.get(item_id, _MISSING),
                element_schema,
                f"{path}[{','.join(item_id)}]",
            )
            if isinstance(value, _Clear) or value == {}:
                continue
            merged.append(value)
        return merged


def _check_patch_keys(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            if key.startswith("$") and key != "$patch":
                raise KustomizeError(f"{where}: the directive {key!r} is unsupported")
            _check_patch_keys(child, where)
    elif isinstance(value, list):
        for child in value:
            _check_patch_keys(child, where)


def _apply_strategic_merge(res: _Res, patch: dict[str, Any], where: str, *, targeted: bool) -> None:
    where = f"{where}: {res.cur_id()}"
    if res.empty_null:
        raise KustomizeError(
            f"{where}: the resource ({res.source}) has a null written as an empty value, which "
            "kustomize drops when it patches; write null explicitly"
        )
    patch = _fresh(patch, where)
    if "$patch" in patch:
        raise KustomizeError(f"{where}: $patch at the root of a patch is unsupported")
    kind, name, namespace = res.kind, res.name, res.namespace
    if targeted:
        patch["apiVersion"] = res.api_version
    merged = _Merger(where).merge_map(res.obj, patch, _type_schema(res.obj, patch), "")
    if not isinstance(merged, dict):
        raise KustomizeError(f"{where}: the patch deletes the resource; unsupported")
    merged["kind"] = kind
    metadata = merged.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise KustomizeError(f"{where}: the patch makes metadata a non-map")
    metadata["name"] = name
    if namespace:
        metadata["namespace"] = namespace
    else:
        metadata.pop("namespace", None)
    res.obj = _check_resource(merged, where)


def _json_pointer(pointer: Any, where: str) -> list[str]:
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise KustomizeError(f"{where}: JSON pointer {pointer!r} must start with '/'")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _json_index(token: str, size: int, where: str, *, append: bool = False) -> int:
    if append and token == "-":
        return size
    if not token.isdigit() or (token != "0" and token.startswith("0")) or not token.isascii():
        raise KustomizeError(f"{where}: {token!r} is not a list index")
    index = int(token)
    if index > size or (index == size and not append):
        raise KustomizeError(f"{where}: list index {index} out of range")
    return index


def _json_parent(doc: Any, tokens: list[str], where: str) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise KustomizeError(f"{where}: missing key {token!r}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_json_index(token, len(node), where)]
        else:
            raise KustomizeError(f"{where}: cannot descend into a scalar at {token!r}")
    if not isinstance(node, dict | list):
        raise KustomizeError(f"{where}: the parent of the target is a scalar")
    return node


def _json_get(doc: Any, tokens: list[str], where: str) -> Any:
    parent, last = _json_parent(doc, tokens, where), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise KustomizeError(f"{where}: missing key {last!r}")
        return parent[last]
    return parent[_json_index(last, len(parent), where)]


def _json_add(doc: Any, tokens: list[str], value: Any, where: str) -> None:
    parent, last = _json_parent(doc, tokens, where), tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    else:
        parent.insert(_json_index(last, len(parent), where, append=True), value)


def _json_remove(doc: Any, tokens: list[str], where: str) -> Any:
    parent, last = _json_parent(doc, tokens, where), tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise KustomizeError(f"{where}: missing key {last!r}")
        return parent.pop(last)
    return parent.pop(_json_index(last, len(parent), where))


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _json_roundtrip(value: Any) -> Any:
    """What kustomize's JSON-patch round trip (Go map, float64, yaml.v3 'g' formatting) makes
    of a resource: keys sorted, numbers float64, integers below 1e6 written as integers."""
    if isinstance(value, dict):
        return {k: _json_roundtrip(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_json_roundtrip(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    number = float(value)
    return int(number) if number.is_integer() and abs(number) < 1e6 else number


def _apply_json6902(res: _Res, operations: list[Any], where: str) -> None:
    where = f"{where}: {res.cur_id()}"
    before = (res.api_version, res.kind, res.name, res.namespace)
    res.store_previous_id()
    doc = _fresh(res.obj, where)
    for i, operation in enumerate(operations):
        at = f"{where}: operation {i}"
        if not isinstance(operation, dict):
            raise KustomizeError(f"{at}: must be a map")
        op = operation.get("op")
        tokens = _json_pointer(operation.get("path"), at)
        if op in ("add", "replace", "test") and "value" not in operation:
            raise KustomizeError(f"{at}: {op} needs a value")
        value = _fresh(operation.get("value"), at)
        if op == "add":
            _json_add(doc, tokens, value, at)
        elif op == "remove":
            _json_remove(doc, tokens, at)
        elif op == "replace":
            _json_get(doc, tokens, at)
            parent = _json_parent(doc, tokens, at)
            if isinstance(parent, dict):
                parent[tokens[-1]] = value
            else:
                parent[_json_index(tokens[-1], len(parent), at)] = value
        elif op in ("move", "copy"):
            source = _json_pointer(operation.get("from"), at)
            if op == "move" and tokens[: len(source)] == source and tokens != source:
                raise KustomizeError(f"{at}: cannot move a value into itself")
            if op == "move":
                _json_add(doc, tokens, _json_remove(doc, source, at), at)
            else:
                _json_add(doc, tokens, _fresh(_json_get(doc, source, at), at), at)
        elif op == "test":
            if not _json_equal(_json_get(doc, tokens, at), value):
                raise KustomizeError(f"{at}: test of {operation['path']!r} failed")
        else:
            raise KustomizeError(f"{at}: unsupported op {op!r}")
    if not isinstance(doc, dict):
        raise KustomizeError(f"{where}: the JSON patch must leave a map")
    doc = _json_roundtrip(doc)
    _check_resource(doc, where)
    metadata = doc["metadata"]
    after = (doc["apiVersion"], doc["kind"], metadata["name"], metadata.get("namespace") or "")
    if after != before:
        raise KustomizeError(
            f"{where}: JSON patches may not change apiVersion, kind, name or namespace"
        )
    res.obj = doc
    res.empty_null = False


def _parse_selector(text: str, where: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """A Kubernetes label selector (k8s.io/apimachinery labels.Parse), without < and >."""
    requirements: list[tuple[str, str, tuple[str, ...]]] = []
    for part in re.split(r",(?![^()]*\))", text):
        part = part.strip()
        if not part:
            if text.strip():
                raise KustomizeError(f"{where}: invalid selector {text!r}")
            continue
        if m := re.fullmatch(r"!\s*([^\s=!<>(),]+)", part):
            requirements.append((m[1], "!", ()))
        elif m := re.fullmatch(r"([^\s=!<>(),]+)\s+(in|notin)\s*\(([^()]*)\)", part):
            values = tuple(v.strip() for v in m[3].split(","))
            requirements.append((m[1], m[2], values))
        elif m := re.fullmatch(r"([^\s=!<>(),]+)\s*(==|=|!=)\s*([^\s=!<>(),]*)", part):
            requirements.append((m[1], "!=" if m[2] == "!=" else "=", (m[3],)))
        elif re.fullmatch(r"[^\s=!<>(),]+", part):
            requirements.append((part, "exists", ()))
        else:
            raise KustomizeError(f"{where}: unsupported selector {part!r}")
    return requirements


def _selector_matches(
    requirements: list[tuple[str, str, tuple[str, ...]]], labels: Mapping[str, str]
) -> bool:
    for key, op, values in requirements:
        present = key in labels
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
        if op in ("=", "in") and (not present or labels[key] not in values):
            return False
        if op in ("!=", "notin") and present and labels[key] in values:
            return False
    return True


def _select(resources: list[_Res], target: _Target, where: str) -> list[_Res]:
    def matches(pattern: str, *values: str) -> bool:
        return not pattern or any(re.fullmatch(f"(?:{pattern})", v) for v in values)

    labels = _parse_selector(target.label_selector, f"{where}.target.labelSelector")
    annotations = _parse_selector(target.annotation_selector, f"{where}.target.annotationSelector")
    selected = []
    for res in resources:
        cur, org = res.cur_id(), res.org_id()
        if not (
            matches(target.namespace, org.effective_namespace(), cur.effective_namespace())
            and matches(target.name, org.name, cur.name)
            and matches(target.group, cur.group)
            and matches(target.version, cur.version)
            and matches(target.kind, cur.kind)
            and _selector_matches(labels, res.labels())
            and _selector_matches(annotations, res.annotations())
        ):
            continue
        selected.append(res)
    return selected


def _apply_patch(k: _Kustomization, patch: _Patch, resources: list[_Res]) -> None:
    where = f"{k.file}: {patch.where}"
    if patch.source:
        source = _checked_file(k, patch.source, f"{patch.where}.path")
        text = _read_text(source, where)
        where = f"{where} ({patch.source})"
    else:
        text = patch.text
    text = text.strip()
    if text.startswith("["):
        try:
            documents = [_Document(json.loads(text), False)]
        except json.JSONDecodeError as exc:
            raise KustomizeError(f"{where}: invalid JSON patch: {exc}") from None
    else:
        documents = [d for d in _load_yaml(text, where) if d.value is not None]
    if not documents:
        raise KustomizeError(f"{where}: the patch is empty")

    if len(documents) == 1 and isinstance(documents[0].value, list):
        if patch.target is None:
            raise KustomizeError(f"{where}: a JSON patch needs a target")
        selected = _select(resources, patch.target, patch.where)
        if not selected:
            raise KustomizeError(f"{where}: the target matches no resource")
        for res in selected:
            _apply_json6902(res, documents[0].value, where)
        return

    smps = []
    for document in documents:
        if not isinstance(document.value, dict):
            raise KustomizeError(f"{where}: neither a strategic-merge nor a JSON patch")
        _check_patch_keys(document.value, where)
        _check_resource(
            {"apiVersion": "-", **document.value} if patch.target else document.value, where
        )
        smps.append(document.value)
    if patch.target is not None:
        if len(smps) > 1:
            raise KustomizeError(f"{where}: one strategic-merge patch per entry with a target")
        selected = _select(resources, patch.target, patch.where)
        if not selected:
            raise KustomizeError(f"{where}: the target matches no resource")
        for res in selected:
            _apply_strategic_merge(res, smps[0], where, targeted=True)
        return
    for smp in smps:
        group, version = _split_api_version(smp["apiVersion"])
        metadata = smp["metadata"]
        wanted = _Id(
            group,
            version,
            smp["kind"],
            metadata["name"],
            metadata.get("namespace") or "",
            _is_cluster_scoped(smp["apiVersion"], smp["kind"]),
        )
        found = [r for r in resources if any(i.equals(wanted) for i in (*r.prev_ids, r.cur_id()))]
        if len(found) != 1:
            problem = "no resource matches" if not found else "several resources match"
            raise KustomizeError(f"{where}: {problem} the strategic-merge patch for {wanted}")
        _apply_strategic_merge(found[0], smp, where, targeted=False)


# ---------------------------------------------------------------------------------------------
# Name references
# ---------------------------------------------------------------------------------------------


def _referable(resources: list[_Res], referrer: _Res) -> list[_Res]:
    # api/resmap/reswrangler.go SubsetThatCouldBeReferencedByResource.
    if referrer.cluster_scoped():
        return resources
    namespace = referrer.cur_id().effective_namespace()
    subject_namespaces = set()
    if referrer.kind == "RoleBinding":
        subjects = referrer.obj.get("subjects")
        for subject in subjects if isinstance(subjects, list) else ():
            if (
                isinstance(subject, dict)
                and "namespace" in subject
                and subject.get("kind") == "ServiceAccount"
            ):
                if not isinstance(subject["namespace"], str):
                    raise KustomizeError(
                        f"{referrer.source}: a subject's namespace is not a string"
                    )
                subject_namespaces.add(subject["namespace"])
    return [
        r
        for r in resources
        if r.cluster_scoped()
        or r.cur_id().effective_namespace() == namespace
        or r.namespace in subject_namespaces
    ]


def _select_referral(
    referrer: _Res,
    back_reference: _BackReference,
    old_name: str,
    candidates: list[_Res],
    identical: Callable[[list[_Res]], bool],
) -> _Res | None:
    # api/filters/nameref/nameref.go selectReferral (prefixes and suffixes are out of scope).
    def selected(i: _Id) -> bool:
        return i.kind == back_reference.kind and i.version == back_reference.version

    found = [
        r
        for r in candidates
        if any(i.name == old_name for i in r.prev_ids) and any(selected(i) for i in r.prev_ids)
    ]
    if not referrer.cluster_scoped():
        namespace = referrer.cur_id().effective_namespace()
        found = [
            r
            for r in found
            if r.cluster_scoped()
            or r.kind == "ServiceAccount"
            or r.cur_id().effective_namespace() == namespace
        ]
    if not found:
        return None
    if len(found) == 1 or identical(found):
        return found[0]
    raise KustomizeError(
        f"{referrer.source}: {referrer.cur_id()} refers to {old_name!r}, which could be any of "
        + ", ".join(str(r.cur_id()) for r in found)
    )


def _fix_name_references(resources: list[_Res]) -> None:
    for referrer in resources:
        candidates: list[_Res] | None = None
        for back_reference in _BACK_REFERENCES:
            for spec in back_reference.referrers:
                if not spec.matches(referrer.obj):
                    continue
                if candidates is None:
                    candidates = _referable(resources, referrer)
                _fix_reference(referrer, back_reference, spec, candidates)


def _fix_reference(
    referrer: _Res, back_reference: _BackReference, spec: _FieldSpec, candidates: list[_Res]
) -> None:
    where = f"{referrer.source}: {referrer.cur_id()}"

    def new_name(value: str) -> str:
        referral = _select_referral(
            referrer,
            back_reference,
            value,
            candidates,
            lambda rs: len({r.name for r in rs}) == 1,
        )
        return value if referral is None else referral.name

    def fix_map(node: dict[str, Any]) -> None:
        name = node.get("name", _MISSING)
        if isinstance(name, _Missing):
            raise KustomizeError(f"{where}: {'/'.join(spec.path)} has no name field")
        if not isinstance(name, str):
            return
        pool = candidates
        if "namespace" in node:
            wanted = node["namespace"]
            by_origin = [
                r
                for r in candidates
                if r.org_id().effective_namespace() == wanted and wanted != _NOT_NAMESPACEABLE
            ]
            pool = by_origin or [
                r
                for r in candidates
                if r.cur_id().effective_namespace() == wanted and wanted != _NOT_NAMESPACEABLE
            ]
        referral = _select_referral(
            referrer,
            back_reference,
            name,
            pool,
            lambda rs: len({(r.name, r.namespace) for r in rs}) == 1,
        )
        if referral is None or (referral.name == name and not referral.namespace):
            return
        node["name"] = referral.name
        if referral.namespace:
            node["namespace"] = referral.namespace

    def leaf(parent: dict[str, Any], key: str, may_create: bool) -> None:
        value = parent.get(key)
        if isinstance(value, str):
            parent[key] = new_name(value)
        elif isinstance(value, dict):
            fix_map(value)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    value[i] = new_name(item)
                elif isinstance(item, dict):
                    fix_map(item)

    _visit(referrer.obj, spec.path, False, leaf, where)


# ---------------------------------------------------------------------------------------------
# Output order
# ---------------------------------------------------------------------------------------------


def _normalize_annotations(res: _Res) -> None:
    """What kustomize's final RemoveOriginAnnotations (SetAnnotations on every resource) does:
    metadata.annotations is dropped when empty, else rewritten as sorted strings at the end."""
    metadata = res.obj["metadata"]
    annotations = metadata.pop("annotations", None)
    if not annotations:
        return
    text = {}
    for key in sorted(annotations):
        value = annotations[key]
        if isinstance(value, bool | int | str) and not isinstance(value, float):
            text[key] = _scalar_text(value)
        else:
            raise KustomizeError(
                f"{res.source}: {res.cur_id()}: annotation {key!r} must be a string, got {value!r}"
            )
    metadata["annotations"] = text


def _legacy_compare(a: _Res, b: _Res) -> int:
    ia, ib = a.cur_id(), b.cur_id()
    ga, gb = (ia.group, ia.version, ia.kind), (ib.group, ib.version, ib.kind)
    if ga != gb:
        oa, ob = _TYPE_ORDER.get(ia.kind, 0), _TYPE_ORDER.get(ib.kind, 0)
        if oa != ob:
            return -1 if oa < ob else 1
        sa, sb = _gvk_sort_string(*ga), _gvk_sort_string(*gb)
        if ia.kind == ib.kind == "Namespace" and (not ia.group or not ib.group):
            return -1 if sa > sb else 1
        return -1 if sa < sb else 1
    ka = f"{ia.namespace or '~X'}|{ia.name or '~N'}"
    kb = f"{ib.namespace or '~X'}|{ib.name or '~N'}"
    return -1 if ka < kb else (1 if ka > kb else 0)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _looks_remote(entry: str) -> bool:
    return "://" in entry or entry.startswith(("github.com/", "git@", "gitlab.com/"))


def _accumulate(directory: Path, display: Path, chain: tuple[Path, ...]) -> list[_Res]:
    root = directory.resolve()
    k = _parse_kustomization(_find_kustomization_file(display), root)
    k.file = display / k.file.name
    resources: list[_Res] = []
    for i, entry in enumerate(k.resources):
        where = f"resources[{i}] {entry!r}"
        if _looks_remote(entry):
            raise k.fail(f"{where}: remote resources are unsupported")
        if os.path.isabs(entry):
            raise k.fail(f"{where}: absolute paths are unsupported")
        candidate = root / entry
        if candidate.is_file():
            path = _checked_file(k, entry, where)
            source = str(Path(os.path.normpath(display / entry)))
            for n, document in enumerate(_load_yaml(_read_text(path, source), source)):
                if document.value is None:
                    continue
                obj = _check_resource(document.value, f"{source} (document {n + 1})")
                _append(
                    resources,
                    _Res(obj, source=source, empty_null=document.empty_null),
                    f"{k.file}: {where}",
                )
        elif candidate.is_dir():
            child = candidate.resolve()
            for visited in (root, *chain):
                if _inside(visited, child):
                    raise k.fail(f"{where}: cycle: {child} contains {visited}, already visited")
            child_display = Path(os.path.normpath(display / entry))
            for res in _accumulate(child, child_display, (root, *chain)):
                _append(resources, res, f"{k.file}: {where}")
        else:
            raise k.fail(f"{where}: no such file or directory")

    for args in k.config_maps:
        res = _generate_configmap(k, args)
        new_id = res.cur_id()
        for other in resources:
            if any(i.equals(new_id) for i in (*other.prev_ids, other.cur_id())):
                raise k.fail(
                    f"{args.where}: {new_id} already exists (from {other.source}); "
                    "behavior merge/replace is unsupported"
                )
        resources.append(res)

    for patch in k.patches:
        _apply_patch(k, patch, resources)
    if k.namespace:
        _set_namespace(k, resources)
    for labels in k.labels:
        _apply_labels(k, labels, resources)
    for image in k.images:
        _apply_image(k, image, resources)
    return resources


def render(directory: Path) -> list[dict[str, Any]]:
    """Renders the kustomization in ``directory`` as ``kustomize build`` would, in its default
    (legacy) output order; raises `KustomizeError` for anything outside the subset."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KustomizeError(f"{directory}: not a directory")
    resources = _accumulate(directory, directory, ())
    for res in resources:
        if res.needs_hash:
            try:
                suffix = configmap_hash(res.obj)
            except KustomizeError as exc:
                raise KustomizeError(f"{res.source}: {exc}") from None
            res.store_previous_id()
            res.obj["metadata"]["name"] = f"{res.name}-{suffix}"
    _fix_name_references(resources)
    for res in resources:
        _normalize_annotations(res)
    ordered = sorted(resources, key=functools.cmp_to_key(_legacy_compare))
    return [res.obj for res in ordered]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.lib.kustomize",
        description="Render a kustomization (a checked subset of kustomize v5) to stdout.",
    )
    parser.add_argument("directory", type=Path, help="directory holding kustomization.yaml")
    args = parser.parse_args(argv)
    try:
        output = dump(render(args.directory))
    except KustomizeError as exc:
        print(f"kustomize: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
