"""`genai eval`: datasets, evaluation runs with a progress bar, HTML reports and CI gates.

    genai eval datasets create NAME --prompt P [--description D] [--file FILE.jsonl|.yaml]
    genai eval datasets add NAME FILE.jsonl|FILE.yaml
    genai eval run SPEC.yaml [--version N | --label L] [--model M] [--repeats N]
                   [--baseline REPORT_ID] [--html PATH] [--gate]
    genai eval report REPORT_ID [--html PATH]

SPEC.yaml is an `EvaluationRun` in YAML (prompt, dataset, scorers, ...: the proto's fields);
the flags override it. `run` streams the run, prints each scorer's mean with its interval, and
writes the HTML report. With `--gate` it exits 3 when the report regressed against its
baseline or misses a threshold of the prompt's evaluation gate (CI use). Every command takes
`--target`, `--api-key` (default: $GENAI_API_KEY) and `--timeout`.
"""

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import yaml
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2, evaluation_service_pb2_grpc
from genai.prompt.v1 import prompt_service_pb2, prompt_service_pb2_grpc
from google.protobuf import json_format

from services.common.clients import add_target_option, api_key_metadata, create_channel
from services.common.errors import InvalidArgument
from services.common.status import error_details
from services.evaluation.core.datasets import format_of, parse_examples
from services.evaluation.html_report import render_html

if TYPE_CHECKING:
    Stub = evaluation_service_pb2_grpc.EvaluationServiceAsyncStub
else:
    Stub = evaluation_service_pb2_grpc.EvaluationServiceStub

esb = evaluation_service_pb2
EXIT_GATE_FAILED = 3
Command = Callable[[grpc.aio.Channel, argparse.Namespace], Awaitable[int]]


def add_commands(parser: argparse.ArgumentParser, *, default_target: str) -> None:
    """Adds the `eval` sub-commands to `parser`; each sets `args.run`."""
    connection = argparse.ArgumentParser(add_help=False)
    add_target_option(connection, default=default_target)
    connection.add_argument(
        "--api-key",
        default=os.environ.get("GENAI_API_KEY", ""),
        help="API key (default: $GENAI_API_KEY)",
    )
    connection.add_argument("--timeout", type=float, default=30.0, help="per unary call, s")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(where: Any, name: str, help_: str, run: Command) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = where.add_parser(
            name, help=help_, description=help_, parents=[connection]
        )
        sub.set_defaults(run=lambda args: asyncio.run(_run(args, run)))
        return sub

    datasets = commands.add_parser("datasets", help="create datasets and add examples")
    dataset_commands = datasets.add_subparsers(required=True, metavar="COMMAND")
    create = command(dataset_commands, "create", "create a dataset (and add a file)", _create)
    create.add_argument("name")
    create.add_argument("--prompt", required=True, help="the prompt its examples feed")
    create.add_argument("--description", default="")
    create.add_argument("--file", type=Path, help="examples to add (.jsonl or .yaml)")
    add = command(dataset_commands, "add", "add the examples of a file", _add)
    add.add_argument("name")
    add.add_argument("file", type=Path)

    run = command(commands, "run", "run an evaluation, print its report", _evaluate)
    run.add_argument("spec", type=Path, help="the run as YAML (EvaluationRun fields)")
    selector = run.add_mutually_exclusive_group()
    selector.add_argument("--version", type=int, help="prompt version to evaluate")
    selector.add_argument("--label", help="prompt label to evaluate")
    run.add_argument("--model", help="pin a catalog model")
    run.add_argument("--repeats", type=int, help="generations per example")
    run.add_argument("--baseline", default="", help="report id to compare with")
    run.add_argument("--html", type=Path, help="where to write the HTML report")
    run.add_argument("--gate", action="store_true", help=f"exit {EXIT_GATE_FAILED} on a regression")
    report = command(commands, "report", "print a stored report", _report)
    report.add_argument("id")
    report.add_argument("--html", type=Path)


async def _run(args: argparse.Namespace, run: Command) -> int:
    async with create_channel(args.target, metadata=api_key_metadata(args.api_key)) as channel:
        try:
            return await run(channel, args)
        except grpc.aio.AioRpcError as error:
            parsed = error_details(error)
            detail = "; ".join(f"{v.field}: {v.description}" for v in parsed.field_violations)
            print(
                f"genai: {args.target}: {parsed.code.name}: {parsed.message}"
                + (f" ({detail})" if detail else ""),
                file=sys.stderr,
            )
            return 1
        except InvalidArgument as error:
            for violation in error.violations:
                print(f"genai: {violation.field}: {violation.description}", file=sys.stderr)
            return 1
        except (OSError, ValueError, yaml.YAMLError) as error:
            print(f"genai: {error}", file=sys.stderr)
            return 1


def _examples(path: Path) -> list[evaluation_pb2.Example]:
    sourced = parse_examples(path.read_text(), format_of(path.name), str(path))
    examples = []
    for item in sourced:
        example = evaluation_pb2.Example(
            reference=item.example.reference, tags=dict(item.example.tags)
        )
        example.inputs.update(dict(item.example.inputs))
        examples.append(example)
    return examples


async def _create(channel: grpc.aio.Channel, args: argparse.Namespace) -> int:
    stub = evaluation_service_pb2_grpc.EvaluationServiceStub(channel)
    dataset = evaluation_pb2.Dataset(
        name=args.name, prompt=args.prompt, description=args.description
    )
    await stub.CreateDataset(esb.CreateDatasetRequest(dataset=dataset), timeout=args.timeout)
    print(f"{args.name}: created for prompt {args.prompt}")
    if args.file is not None:
        return await _add(channel, args)
    return 0


async def _add(channel: grpc.aio.Channel, args: argparse.Namespace) -> int:
    stub = evaluation_service_pb2_grpc.EvaluationServiceStub(channel)
    examples = await asyncio.to_thread(_examples, args.file)
    added = await stub.AddExamples(
        esb.AddExamplesRequest(dataset=args.name, examples=examples), timeout=args.timeout
    )
    print(f"{args.name}: {len(added.examples)} examples from {args.file}")
    return 0


async def _evaluate(channel: grpc.aio.Channel, args: argparse.Namespace) -> int:
    stub = evaluation_service_pb2_grpc.EvaluationServiceStub(channel)
    document = yaml.safe_load(await asyncio.to_thread(args.spec.read_text)) or {}
    run = json_format.ParseDict(document, evaluation_pb2.EvaluationRun())
    if args.version is not None:
        run.prompt_version = args.version
    elif args.label:
        run.prompt_label = args.label
    if args.model:
        run.model = args.model
    if args.repeats is not None:
        run.repeats = args.repeats
    if args.baseline:
        run.baseline_report_id = args.baseline
    report: evaluation_pb2.EvaluationReport | None = None
    async for event in stub.StartEvaluationRun(esb.StartEvaluationRunRequest(run=run)):
        kind = event.WhichOneof("event")
        if kind == "run":
            started = event.run
            print(
                f"run {started.id}: {started.prompt} v{started.resolved_prompt_version} on "
                f"{started.dataset}",
                file=sys.stderr,
            )
        elif kind == "progress":
            _progress(event.progress)
        elif kind == "report":
            report = event.report
    print(file=sys.stderr)
    if report is None:
        print("genai: the run ended without a report", file=sys.stderr)
        return 1
    _print_report(report)
    await _write_html(stub, report, args.html or Path(f"eval-{report.id}.html"), args.timeout)
    if args.gate:
        failures = await _gate_failures(channel, report, args.timeout)
        for failure in failures:
            print(f"GATE FAILED: {failure}", file=sys.stderr)
        if failures:
            return EXIT_GATE_FAILED
        print("gate passed", file=sys.stderr)
    return 0


async def _report(channel: grpc.aio.Channel, args: argparse.Namespace) -> int:
    stub = evaluation_service_pb2_grpc.EvaluationServiceStub(channel)
    report = (
        await stub.GetEvaluationReport(
            esb.GetEvaluationReportRequest(id=args.id), timeout=args.timeout
        )
    ).report
    _print_report(report)
    if args.html is not None:
        await _write_html(stub, report, args.html, args.timeout)
    return 0


def _progress(progress: evaluation_pb2.RunProgress) -> None:
    total = max(progress.total, 1)
    done = progress.completed + progress.failed
    width = 30
    filled = int(width * done / total)
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{progress.total}"
        + (f" ({progress.failed} failed)" if progress.failed else "")
    )
    sys.stderr.flush()


def _print_report(report: evaluation_pb2.EvaluationReport) -> None:
    print(f"report {report.id}: {report.prompt} v{report.prompt_version} on {report.dataset}")
    print(f"{'scorer':<24} {'n':>5} {'mean':>8}  95% CI")
    for summary in report.summaries:
        interval = (
            f"[{summary.mean_interval.lower:.3f}, {summary.mean_interval.upper:.3f}]"
            if summary.HasField("mean_interval")
            else "n/a"
        )
        print(f"{summary.scorer:<24} {summary.count:>5} {summary.mean:>8.3f}  {interval}")
    if report.HasField("baseline_comparison"):
        comparison = report.baseline_comparison
        print(f"against baseline {comparison.baseline_report_id}:")
        for scorer in comparison.scorers:
            mark = "  REGRESSED" if scorer.regressed else ""
            print(f"  {scorer.scorer:<22} {scorer.difference:+.3f} (p={scorer.p_value:.4f}){mark}")
        for regression in comparison.example_regressions:
            print(
                f"  example {regression.example_id} {regression.scorer}: "
                f"{regression.baseline_value:.3f} -> {regression.candidate_value:.3f}"
            )


async def _write_html(
    stub: Stub, report: evaluation_pb2.EvaluationReport, path: Path, rpc_timeout: float
) -> None:
    """Writes the report's page, with each output beside its example's inputs and reference and
    with the run's scorer kinds. Without them (the dataset or run is gone, or not readable with
    this key) it still writes the page, with example ids only, and says so."""
    examples: dict[str, evaluation_pb2.Example] | None = None
    scorers: list[evaluation_pb2.Scorer] = []
    try:
        examples = await _dataset_examples(stub, report.dataset, rpc_timeout)
    except grpc.aio.AioRpcError as error:
        _lacking(f"the examples of dataset {report.dataset}", error)
    try:
        run = await stub.GetEvaluationRun(
            esb.GetEvaluationRunRequest(id=report.run_id), timeout=rpc_timeout
        )
        scorers = list(run.run.scorers)
    except grpc.aio.AioRpcError as error:
        _lacking(f"the scorers of run {report.run_id}", error)
    page = await asyncio.to_thread(render_html, report, examples, scorers)
    await asyncio.to_thread(path.write_text, page)
    print(f"wrote {path}", file=sys.stderr)


def _lacking(what: str, error: grpc.aio.AioRpcError) -> None:
    print(
        f"genai: the HTML report goes without {what}: {error.code().name}: {error.details()}",
        file=sys.stderr,
    )


async def _dataset_examples(
    stub: Stub, dataset: str, rpc_timeout: float
) -> dict[str, evaluation_pb2.Example]:
    """Every example of `dataset` by id, read page by page."""
    examples: dict[str, evaluation_pb2.Example] = {}
    token = ""
    while True:
        page = await stub.ListExamples(
            esb.ListExamplesRequest(dataset=dataset, page_size=1000, page_token=token),
            timeout=rpc_timeout,
        )
        examples.update((e.id, e) for e in page.examples)
        token = page.next_page_token
        if not token:
            return examples


async def _gate_failures(
    channel: grpc.aio.Channel, report: evaluation_pb2.EvaluationReport, rpc_timeout: float
) -> list[str]:
    """Why the report fails CI: a regression against its baseline, or a threshold of the
    prompt's evaluation gate it misses (when the gate's dataset is the report's)."""
    failures = []
    if report.HasField("baseline_comparison") and report.baseline_comparison.regressed:
        names = [s.scorer for s in report.baseline_comparison.scorers if s.regressed]
        failures.append(
            f"regressed against {report.baseline_comparison.baseline_report_id}: {', '.join(names)}"
        )
    prompts = prompt_service_pb2_grpc.PromptServiceStub(channel)
    prompt = (
        await prompts.GetPrompt(
            prompt_service_pb2.GetPromptRequest(name=report.prompt), timeout=rpc_timeout
        )
    ).prompt
    gate = prompt.evaluation_gate
    if prompt.HasField("evaluation_gate") and gate.dataset == report.dataset:
        means = {s.scorer: s.mean for s in report.summaries}
        for threshold in gate.thresholds:
            mean = means.get(threshold.scorer)
            if mean is None or mean < threshold.min_mean:
                shown = "missing" if mean is None else f"{mean:.3f}"
                failures.append(f"{threshold.scorer} mean {shown} < {threshold.min_mean:.3f}")
    return failures
