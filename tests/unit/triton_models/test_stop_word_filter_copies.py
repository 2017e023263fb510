"""The GPU ensemble's `StopWordFilter` (ensemble/1/decoding.py, which cannot import the facade
at run time) is a copy of `genai_triton.facade.StopWordFilter`: the two sources stay equal, and
both filter streamed text the same way."""

import ast
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from genai_triton import facade

ROOT = Path(__file__).resolve().parents[3]
FACADE = ROOT / "triton_models" / "python" / "genai_triton" / "facade.py"
DECODING = (
    ROOT / "triton_models" / "gpu" / "inflight_batcher_llm" / "ensemble" / "1" / "decoding.py"
)
COPIED = ("StopWordFilter", "_overlap")
"""The class and the helper it calls, copied together."""


def _source(path: Path, name: str) -> str:
    """The source text of the top-level class or function `name` of `path`."""
    text = path.read_text()
    for node in ast.parse(text, filename=str(path)).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name == name:
            segment = ast.get_source_segment(text, node)
            assert segment is not None
            return segment
    raise AssertionError(f"{path.relative_to(ROOT)} defines no {name}")


def _decoding() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_ensemble_decoding", DECODING)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", COPIED)
def test_the_gpu_ensemble_copy_has_the_facade_source(name: str) -> None:
    assert _source(DECODING, name) == _source(FACADE, name), (
        f"{name} in {DECODING.relative_to(ROOT)} drifted from {FACADE.relative_to(ROOT)}: "
        "copy the facade's version over"
    )


def _stream(filter_class: Any, stop_words: list[str], deltas: list[str]) -> tuple[str, bool]:
    """(text emitted, stopped) for `deltas` pushed one by one, flushed when no stop word hit."""
    stops = filter_class(stop_words)
    emitted = []
    for delta in deltas:
        out, stopped = stops.push(delta)
        emitted.append(out)
        if stopped:
            return "".join(emitted), True
    emitted.append(stops.flush())
    return "".join(emitted), False


CASES = [
    ([], ["hello ", "world"], ("hello world", False)),
    (["", ""], ["abc"], ("abc", False)),
    (["STOP"], ["hello STOP world"], ("hello ", True)),
    (["STOP"], ["hello ST", "OP world"], ("hello ", True)),
    (["</s>"], ["a </", "b>", "<"], ("a </b><", False)),
    (["ab", "b"], ["xa", "b"], ("x", True)),
    (["\n\nUser:"], ["Hi.\n", "\nUs", "er: more"], ("Hi.", True)),
    (["end"], ["café 🙂 e", "n"], ("café 🙂 en", False)),
]


@pytest.mark.parametrize(("stop_words", "deltas", "expected"), CASES)
def test_both_copies_filter_streamed_text_alike(
    stop_words: list[str], deltas: list[str], expected: tuple[str, bool]
) -> None:
    gpu = _decoding().StopWordFilter

    assert _stream(facade.StopWordFilter, stop_words, deltas) == expected
    assert _stream(gpu, stop_words, deltas) == expected


def test_both_copies_hold_back_a_possible_stop_word_start_alike() -> None:
    gpu = _decoding().StopWordFilter
    steps = ["a </", "b>", "<"]
    for filter_class in (facade.StopWordFilter, gpu):
        stops = filter_class(["</s>"])

        assert [stops.push(delta) for delta in steps] == [
            ("a ", False),
            ("</b>", False),
            ("", False),
        ]
        assert stops.flush() == "<"
