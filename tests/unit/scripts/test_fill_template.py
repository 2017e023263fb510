"""scripts/lib/fill_template.py: values, defaults, strictness and what a failed fill leaves.

(The contract test tests/contract/test_triton_configs.py fills the real templates through
scripts/triton-templates; these tests use small templates of their own.)
"""

from pathlib import Path

import pytest

from scripts.lib import fill_template
from scripts.lib.fill_template import TemplateError, fill


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A variant `demo` with a config, a YAML file and a Python file."""
    root = tmp_path / "templates"
    model = root / "demo" / "model"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(
        'name: "model"\nbackend: "python"\nmax_batch_size: ${batch}\n'
        'parameters { key: "dir", value: { string_value: "${path}" } }\n'
    )
    (model / "1" / "settings.yaml").write_text("flag: ${flag}\npath: ${path}\n")
    (model / "1" / "model.py").write_text('TEXT = "${not_a_placeholder_here}"\n')
    return root


DEFAULTS = {"batch": "8", "path": "/default", "flag": "false"}


def test_fill_substitutes_given_values_over_defaults(templates: Path, tmp_path: Path) -> None:
    result = fill(
        "demo", tmp_path / "out", {"path": "/given"}, templates=templates, defaults=DEFAULTS
    )

    config = (tmp_path / "out" / "model" / "config.pbtxt").read_text()
    assert "max_batch_size: 8\n" in config
    assert 'string_value: "/given"' in config
    assert (tmp_path / "out" / "model" / "1" / "settings.yaml").read_text() == (
        "flag: false\npath: /given\n"
    )
    assert result.values == {"batch": "8", "flag": "false", "path": "/given"}
    assert result.defaulted == ["batch", "flag"]
    assert sorted(map(str, result.files)) == ["model/1/settings.yaml", "model/config.pbtxt"]


def test_only_template_files_are_filled(templates: Path, tmp_path: Path) -> None:
    fill("demo", tmp_path / "out", {}, templates=templates, defaults=DEFAULTS)

    model_py = (tmp_path / "out" / "model" / "1" / "model.py").read_text()
    assert model_py == 'TEXT = "${not_a_placeholder_here}"\n'


@pytest.mark.parametrize(
    ("given", "message"),
    [
        pytest.param({"bach": "4"}, "not used by any template of demo: bach", id="unknown-key"),
        pytest.param({"path": 'a"b'}, "path contain a quote", id="quote"),
        pytest.param(
            {"path": "a\nb"}, "path contain a quote, backslash or line break", id="newline"
        ),
        pytest.param({"path": "a\\b"}, "backslash", id="backslash"),
    ],
)
def test_fill_refuses_bad_keys_and_values(
    templates: Path, tmp_path: Path, given: dict[str, str], message: str
) -> None:
    with pytest.raises(TemplateError, match=message):
        fill("demo", tmp_path / "out", given, templates=templates, defaults=DEFAULTS)

    assert not (tmp_path / "out").exists()


def test_a_failed_fill_leaves_the_output_directory_as_it_was(
    templates: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    fill("demo", out, {}, templates=templates, defaults=DEFAULTS)
    before = (out / "model" / "config.pbtxt").read_text()

    with pytest.raises(TemplateError, match="left without a value"):
        fill("demo", out, {}, templates=templates, defaults={"batch": "1"}, force=True)

    assert (out / "model" / "config.pbtxt").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "templates"], "scratch left"


def test_fill_needs_force_to_replace_a_repository(templates: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    fill("demo", out, {}, templates=templates, defaults=DEFAULTS)
    (out / "stale").write_text("from an earlier fill")

    with pytest.raises(TemplateError, match="not empty"):
        fill("demo", out, {}, templates=templates, defaults=DEFAULTS)
    fill("demo", out, {"batch": "2"}, templates=templates, defaults=DEFAULTS, force=True)

    assert not (out / "stale").exists()
    assert "max_batch_size: 2\n" in (out / "model" / "config.pbtxt").read_text()


def test_a_config_that_does_not_parse_is_an_error(templates: Path, tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=r"model/config.pbtxt does not parse"):
        fill("demo", tmp_path / "out", {"batch": "many"}, templates=templates, defaults=DEFAULTS)


def test_values_file_and_command_line(templates: Path, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("batch: 16\nflag: true\npath: /from/file\n")

    status = fill_template.main(
        [
            "--variant",
            "demo",
            "--templates",
            str(templates),
            "--out",
            str(tmp_path / "out"),
            "--values",
            str(values),
            "path=/from/cli",
        ]
    )

    assert status == 0
    settings = (tmp_path / "out" / "model" / "1" / "settings.yaml").read_text()
    assert settings == "flag: true\npath: /from/cli\n"


def test_main_reports_errors_with_status_1(
    templates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = fill_template.main(
        ["--variant", "nope", "--templates", str(templates), "--out", str(tmp_path / "o")]
    )

    assert status == 1
    assert "unknown variant 'nope' (have: demo)" in capsys.readouterr().err


def test_every_placeholder_of_the_real_templates_has_a_default() -> None:
    used = {
        key
        for variant in fill_template.variants()
        for key in fill_template.placeholders(fill_template.TEMPLATES / variant)
    }

    assert used == set(fill_template.DEFAULTS), "a default without a placeholder, or vice versa"


def test_list_keys_prints_each_key_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    status = fill_template.main(["--variant", "llmapi", "--list-keys"])

    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert "hf_model_dir=/models/hf\t# ensemble/1/model.yaml" in lines
    assert [line.split("=")[0] for line in lines] == sorted(line.split("=")[0] for line in lines)


def test_llmapi_ships_its_own_python_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repo"

    status = fill_template.main(["--variant", "llmapi", "--out", str(out)])

    assert status == 0
    assert "note:" not in capsys.readouterr().err
    version = out / "ensemble" / "1"
    shipped = sorted(str(p.relative_to(version)) for p in version.rglob("*.py"))
    assert shipped == [
        "genai_triton/__init__.py",
        "genai_triton/facade.py",
        "genai_triton/guides.py",
        "llm_facade.py",
        "model.py",
    ]
    assert not any(p.is_symlink() for p in version.rglob("*")), "symlinks become copies"
    model_yaml = (version / "model.yaml").read_text()
    assert "model: /models/hf\n" in model_yaml
    assert "enable_block_reuse: true\n" in model_yaml
    assert "guided_decoding_backend: xgrammar\n" in model_yaml


def test_llmapi_model_dir_option_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        fill_template.main(["--variant", "llmapi", "--out", "x", "--llmapi-model-dir", "y"])

    assert exited.value.code == 2
    assert "unrecognized arguments: --llmapi-model-dir" in capsys.readouterr().err
