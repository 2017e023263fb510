"""Structural rules of the code base, checked on every run."""

import ast
import fnmatch
from pathlib import Path

import pytest
from genai.common.v1 import error_reason_pb2

from services.common import reasons
from services.common.contract import contract_services

ROOT = Path(__file__).resolve().parents[2]

PURE_MODULES = [
    *sorted((ROOT / "services").glob("*/core/**/*.py")),
    ROOT / "services/common/errors.py",
    ROOT / "services/common/reasons.py",
    ROOT / "services/common/auth.py",
    ROOT / "services/common/validation.py",
]
"""Domain code: it must run without gRPC or generated code."""

FORBIDDEN_IMPORTS = ("grpc", "grpc_status", "grpc_health", "grpc_reflection", "genai", "google")


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, and for `from M import N` also `M.N` (N may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_domain_code_imports_neither_grpc_nor_generated_code(path: Path) -> None:
    offending = sorted(name for name in _imports(path) if name.split(".")[0] in FORBIDDEN_IMPORTS)
    assert not offending, f"{path.relative_to(ROOT)} imports {offending}"


LAYER_RULES = [
    ("services/prompt/**/*.py", "services.gateway"),
    *(
        (f"services/{package}/**/*.py", higher)
        for package in (
            "common",
            "prompt",
            "experiment",
            "evaluation",
            "router",
            "inference",
            "gateway",
        )
        for higher in ("services.platform", "services.cli")
    ),
    ("services/*/client.py", "services.*.servicer"),
]
"""(files, module pattern): the files must not import a module the pattern matches (or one
inside it). The prompt service does not depend on the gateway; only the platform and the
command line compose the services; clients do not import servicers."""


@pytest.mark.parametrize(("files", "forbidden"), LAYER_RULES, ids=str)
def test_lower_layers_do_not_import_higher_ones(files: str, forbidden: str) -> None:
    paths = sorted(ROOT.glob(files))
    assert paths, f"no file matches {files}"
    offending = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in paths
        for name in sorted(_imports(path))
        if fnmatch.fnmatchcase(name, forbidden) or fnmatch.fnmatchcase(name, f"{forbidden}.*")
    ]
    assert not offending, offending


def test_every_reason_the_code_uses_is_in_the_contract() -> None:
    contract = set(error_reason_pb2.ErrorReason.keys())
    used = {
        value
        for name, value in vars(reasons).items()
        if name.isupper() and isinstance(value, str) and name != "ERROR_DOMAIN"
    }
    assert used, "services.common.reasons defines no reasons"
    assert used <= contract, f"reasons missing from ErrorReason: {sorted(used - contract)}"


def test_contract_has_the_six_services() -> None:
    assert [s.full_name for s in contract_services()] == [
        "genai.evaluation.v1.EvaluationService",
        "genai.experiment.v1.ExperimentService",
        "genai.gateway.v1.GatewayService",
        "genai.inference.v1.InferenceService",
        "genai.prompt.v1.PromptService",
        "genai.router.v1.RouterService",
    ]


def test_each_service_package_has_the_layered_shape() -> None:
    for service in ("prompt", "experiment", "evaluation", "router", "inference", "gateway"):
        package = ROOT / "services" / service
        for part in ("__init__.py", "server.py", "servicer.py", "core", "adapters"):
            assert (package / part).exists(), f"services/{service}/{part} is missing"
