"""The command line every benchmark shares: `--out DIR`, `--quick`, and writing the outputs."""

import argparse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from benchmarks.stats import BenchmarkResult, output_paths, write_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench-results"


def benchmark_parser(name: str, description: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark has; add the benchmark's own to it."""
    parser = argparse.ArgumentParser(prog=f"scripts/bench {name}", description=description)
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"folder for the JSON and PNG results (default: {DEFAULT_OUT.relative_to(ROOT)}/)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short run (about 10 s) to check that it works"
    )
    return parser


def write_outputs(
    result: BenchmarkResult,
    out_dir: Path,
    plot: Callable[[Path], None],
    started_at: datetime | None = None,
) -> tuple[Path, Path]:
    """Writes the result's JSON and, through `plot`, its PNG; returns both paths."""
    json_path, png_path = output_paths(out_dir, result.benchmark, started_at or result.started_at)
    write_json(result, json_path)
    plot(png_path)
    return json_path, png_path


def shown(path: Path) -> str:
    """`path` relative to the repo root when it lies inside it (shorter in reports)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
