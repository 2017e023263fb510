"""The router's catalog and InferenceService's models must agree when one process hosts both."""

from pathlib import Path
from typing import Any

import pytest

from services.inference.config import InferenceSettings
from services.platform.consistency import catalog_problems
from services.router.config import DEFAULT_CATALOG, load_catalog

CATALOG = """
currency: USD
models:
  - name: chat-model
    capabilities: [chat, streaming]
    max_context_tokens: 4096
    max_output_tokens: 512
    quality_tier: 3
    backends:
      - {id: triton-0, kind: triton, endpoint: "", backend_model: ensemble}
      - {id: hosted, kind: openai_compatible, endpoint: "http://llm:8000/v1", backend_model: m}
"""


def _inference(**changes: Any) -> InferenceSettings:
    triton = {"id": "triton-0", "triton_model": "ensemble"}
    hosted = {
        "id": "hosted",
        "kind": "openai_compatible",
        "endpoint": "http://llm:8000/v1",
        "provider_model": "m",
    }
    triton.update(changes.pop("triton", {}))
    hosted.update(changes.pop("hosted", {}))
    model = {"name": "chat-model", "backends": [triton, hosted], **changes}
    return InferenceSettings.model_validate({"models": [model]})


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG)
    return path


def test_the_shipped_catalog_matches_the_default_models() -> None:
    assert catalog_problems(load_catalog(DEFAULT_CATALOG), InferenceSettings(), "") == []


def test_matching_settings_have_no_problems(catalog_file: Path) -> None:
    assert catalog_problems(load_catalog(catalog_file), _inference(), "") == []


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"name": "other"}, "'chat-model' is not in inference.models (served: other)"),
        ({"triton": {"id": "triton-1"}}, "backend 'triton-0' is not a backend of"),
        (
            {"triton": {"triton_model": "zero_llm"}},
            "names model 'ensemble', inference serves 'zero_llm'",
        ),
        (
            {"triton": {"endpoint": "gpu:8001"}},
            "is at (local Triton), inference reaches it at gpu:8001",
        ),
        ({"hosted": {"provider_model": "n"}}, "names model 'm', inference serves 'n'"),
        ({"hosted": {"endpoint": "http://other/v1"}}, "inference reaches it at http://other/v1"),
    ],
    ids=["model", "backend-id", "triton-model", "endpoint", "provider-model", "http-endpoint"],
)
def test_each_disagreement_is_named(
    catalog_file: Path, changes: dict[str, Any], complaint: str
) -> None:
    problems = catalog_problems(load_catalog(catalog_file), _inference(**changes), "")

    assert len(problems) == 1, problems
    assert complaint in problems[0]


def test_a_kind_mismatch_is_named(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(
        CATALOG.replace("id: hosted, kind: openai_compatible", "id: hosted, kind: triton")
    )

    problems = catalog_problems(load_catalog(path), _inference(), "")

    assert problems == [
        "router catalog model 'chat-model' backend 'hosted' is triton in the catalog, "
        "openai_compatible in inference"
    ]
