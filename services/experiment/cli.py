"""`genai experiments`: create, start, stop, list experiments and read their results.

    genai experiments create FILE [--start]      an experiment from YAML (the proto's fields)
    genai experiments start NAME | stop NAME [--reason TEXT]
    genai experiments list [--state running]
    genai experiments results NAME [--png PATH] [--confidence 0.95]

`results` prints the table (per variant: units, exposures; per metric: mean with its interval,
difference to control with its interval, p-value and always-valid p-value; the sample-ratio
check) and writes a PNG of the intervals. Every command takes `--target`, `--api-key`
(default: $GENAI_API_KEY) and `--timeout`. Exit status: 0 on success, 1 when a call fails.
"""

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import yaml
from genai.experiment.v1 import experiment_pb2, experiment_service_pb2, experiment_service_pb2_grpc
from google.protobuf import json_format

from services.common.clients import add_target_option, api_key_metadata, create_channel
from services.common.status import error_details
from services.experiment.core.model import MetricKind
from services.experiment.core.results import ExperimentResults, MetricResults, VariantResults
from services.experiment.core.statistics import Comparison, Interval, SrmResult
from services.experiment.report import plot_results, results_table

if TYPE_CHECKING:
    Stub = experiment_service_pb2_grpc.ExperimentServiceAsyncStub
else:
    Stub = experiment_service_pb2_grpc.ExperimentServiceStub

spb = experiment_service_pb2
DEFAULT_TIMEOUT = 10.0
_STATES = {
    "draft": experiment_pb2.EXPERIMENT_STATE_DRAFT,
    "running": experiment_pb2.EXPERIMENT_STATE_RUNNING,
    "stopped": experiment_pb2.EXPERIMENT_STATE_STOPPED,
}
_KINDS = {
    experiment_pb2.METRIC_KIND_NUMERIC: MetricKind.NUMERIC,
    experiment_pb2.METRIC_KIND_BOOLEAN: MetricKind.BOOLEAN,
}


def add_commands(parser: argparse.ArgumentParser, *, default_target: str) -> None:
    """Adds the `experiments` sub-commands to `parser`; each sets `args.run`."""
    connection = argparse.ArgumentParser(add_help=False)
    add_target_option(connection, default=default_target)
    connection.add_argument(
        "--api-key",
        default=os.environ.get("GENAI_API_KEY", ""),
        help="API key (default: $GENAI_API_KEY)",
    )
    connection.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="per call, s")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        name: str, help_: str, run: Callable[[Stub, argparse.Namespace], Awaitable[int]]
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_, parents=[connection])
        sub.set_defaults(run=lambda args: asyncio.run(_run(args, run)))
        return sub

    create = command("create", "create an experiment from a YAML file", _create)
    create.add_argument("file", type=Path)
    create.add_argument("--start", action="store_true", help="start it at once")
    start = command("start", "start assigning units", _start)
    start.add_argument("name")
    stop = command("stop", "stop an experiment", _stop)
    stop.add_argument("name")
    stop.add_argument("--reason", default="")
    listing = command("list", "list experiments", _list)
    listing.add_argument("--state", choices=sorted(_STATES))
    results = command("results", "print the results table and write a PNG", _results)
    results.add_argument("name")
    results.add_argument(
        "--png", type=Path, help="where to write the plot (default: NAME-results.png)"
    )
    results.add_argument("--confidence", type=float, default=0.95)


async def _run(
    args: argparse.Namespace, run: Callable[[Stub, argparse.Namespace], Awaitable[int]]
) -> int:
    async with create_channel(args.target, metadata=api_key_metadata(args.api_key)) as channel:
        stub = experiment_service_pb2_grpc.ExperimentServiceStub(channel)
        try:
            return await run(stub, args)
        except grpc.aio.AioRpcError as error:
            parsed = error_details(error)
            detail = "; ".join(f"{v.field}: {v.description}" for v in parsed.field_violations)
            print(
                f"genai: {args.target}: {parsed.code.name}: {parsed.message}"
                + (f" ({detail})" if detail else ""),
                file=sys.stderr,
            )
            return 1
        except (OSError, yaml.YAMLError, json_format.ParseError) as error:
            print(f"genai: {error}", file=sys.stderr)
            return 1


async def _create(stub: Stub, args: argparse.Namespace) -> int:
    document = yaml.safe_load(await asyncio.to_thread(args.file.read_text))
    experiment = json_format.ParseDict(document, experiment_pb2.Experiment())
    created = await stub.CreateExperiment(
        spb.CreateExperimentRequest(experiment=experiment, start=args.start), timeout=args.timeout
    )
    print(f"{created.experiment.name}: created ({_state(created.experiment)})")
    return 0


async def _start(stub: Stub, args: argparse.Namespace) -> int:
    started = await stub.StartExperiment(
        spb.StartExperimentRequest(name=args.name), timeout=args.timeout
    )
    print(f"{started.experiment.name}: {_state(started.experiment)}")
    return 0


async def _stop(stub: Stub, args: argparse.Namespace) -> int:
    stopped = await stub.StopExperiment(
        spb.StopExperimentRequest(name=args.name, reason=args.reason), timeout=args.timeout
    )
    print(f"{stopped.experiment.name}: {_state(stopped.experiment)}")
    return 0


async def _list(stub: Stub, args: argparse.Namespace) -> int:
    token = ""
    print(f"{'name':<32} {'state':<8} {'prompt':<24} variants")
    while True:
        page = await stub.ListExperiments(
            spb.ListExperimentsRequest(
                page_token=token,
                state=_STATES.get(args.state or "", experiment_pb2.EXPERIMENT_STATE_UNSPECIFIED),
            ),
            timeout=args.timeout,
        )
        for experiment in page.experiments:
            variants = ", ".join(f"{v.name}={v.weight:g}" for v in experiment.variants)
            print(
                f"{experiment.name:<32} {_state(experiment):<8} {experiment.prompt:<24} {variants}"
            )
        token = page.next_page_token
        if not token:
            return 0


async def _results(stub: Stub, args: argparse.Namespace) -> int:
    response = await stub.GetExperimentResults(
        spb.GetExperimentResultsRequest(name=args.name, confidence_level=args.confidence),
        timeout=args.timeout,
    )
    results = results_from_proto(response.results, args.confidence)
    print(results_table(results))
    png = args.png or Path(f"{args.name}-results.png")
    await asyncio.to_thread(plot_results, results, png)
    print(f"wrote {png}")
    return 0


def _state(experiment: experiment_pb2.Experiment) -> str:
    return (
        experiment_pb2.ExperimentState.Name(experiment.state)
        .removeprefix("EXPERIMENT_STATE_")
        .lower()
    )


def results_from_proto(
    message: experiment_pb2.ExperimentResults, confidence: float
) -> ExperimentResults:
    """The results a server sent, as the report's input (fields the wire does not carry, such
    as test statistics, are left undefined)."""

    def interval(proto: Any, present: bool) -> Interval:
        if not present:
            return Interval(0.0, 0.0, confidence, defined=False, reason="not reported")
        return Interval(proto.lower, proto.upper, proto.confidence_level or confidence)

    variants = []
    for variant in message.variants:
        metrics = []
        for metric in variant.metrics:
            comparison = None
            if metric.HasField("comparison"):
                c = metric.comparison
                comparison = Comparison(
                    difference=c.difference,
                    difference_interval=interval(
                        c.difference_interval, c.HasField("difference_interval")
                    ),
                    p_value=c.p_value,
                    sequential_p_value=c.sequential_p_value,
                    test=c.test,
                    relative_lift=None,
                    statistic=float("nan"),
                    degrees_of_freedom=None,
                )
            metrics.append(
                MetricResults(
                    metric=metric.metric,
                    kind=_KINDS.get(metric.kind, MetricKind.UNSPECIFIED),
                    count=metric.count,
                    mean=metric.mean,
                    mean_interval=interval(metric.mean_interval, metric.HasField("mean_interval")),
                    comparison=comparison,
                    units=metric.count,
                )
            )
        variants.append(
            VariantResults(
                variant=variant.variant,
                units=variant.units,
                exposures=variant.exposures,
                metrics=tuple(metrics),
            )
        )
    check = message.sample_ratio
    return ExperimentResults(
        experiment=message.experiment,
        variants=tuple(variants),
        sample_ratio=SrmResult(
            chi_square=check.chi_square,
            degrees_of_freedom=max(len(variants) - 1, 1),
            p_value=check.p_value,
            mismatch=check.mismatch,
            expected=(),
        ),
        compute_time=message.compute_time.ToDatetime(tzinfo=UTC),
    )
