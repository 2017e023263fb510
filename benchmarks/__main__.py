"""`python -m benchmarks NAME [options]` (what `scripts/bench` runs); `--list` names them.

To add a benchmark: write `benchmarks/<name>.py` with a `main(argv) -> int` (build its parser
with `benchmarks.cli.benchmark_parser`), add one line to `BENCHMARKS`, and one to `QUICK_RUNS`
in tests/system/test_bench_quick_runs.py: CI runs every benchmark's `--quick` form, and a test
there fails while one is missing. Its report prints the load average at its start and end
(`benchmarks.stats.run_subtitle`, `with_load_at_end`) and, under it, `starved_lines`.
"""

import importlib
import sys
from collections.abc import Sequence
from typing import Final

BENCHMARKS: Final[dict[str, str]] = {
    "chain": "per-RPC cost of the server interceptor chain against a bare grpc.aio server",
    "console": "web console prompts list with 1,000 prompts in headless Chromium vs gRPC",
    "experiment": "A/B experiment through the gateway: SmolLM2 vs Gemma 3 on one text prompt",
    "gateway": "GatewayService gRPC and HTTP (SSE) streams vs InferenceService vs direct Triton",
    "inference": "InferenceService vs direct Triton streams (zero_llm); SmolLM2 vs transformers",
    "replicas": "two replicas of each service over PostgreSQL and Redis, SIGKILLs under load",
    "router": "routing decision cost with a 20-model catalog, in process and over gRPC",
    "routing": "cost, score and latency of routing policies on the evaluation datasets",
    "structured": "extract-invoice on SmolLM2 with and without constrained decoding",
}
"""Each benchmark's name (its module in this package) and what it measures, in one line."""

USAGE = """\
usage: scripts/bench NAME [options]     run a benchmark (NAME --help shows its options)
       scripts/bench --list             list the benchmarks"""


def listing() -> str:
    width = max(len(name) for name in BENCHMARKS)
    return "\n".join(f"{name.ljust(width)}  {what}" for name, what in BENCHMARKS.items())


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(f"{USAGE}\n\nbenchmarks:\n{listing()}")
        return 0 if args else 2
    if args[0] in ("-l", "--list"):
        print(listing())
        return 0
    name, *rest = args
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}; the benchmarks are:\n{listing()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{name}")
    code: int = module.main(rest)
    return code


if __name__ == "__main__":
    sys.exit(main())
