"""`genai logs`: the gateway's request log, newest first, as a table or JSON lines.

genai logs [--target TARGET] [--api-key KEY] [--prompt NAME] [--status CODE]
           [--since 10m|2h|1d|ISO-TIME] [--limit N] [--json] [--timeout SECONDS]

Calls `GatewayService.ListRequestLogs` with the API key (`--api-key`, else `$GENAI_API_KEY`)
as `authorization: Bearer <key>`, following page tokens until `--limit` entries are shown.
The table has one row per request: arrival time (UTC), request id, status, prompt@version,
model, tokens in/out (followed by `tokenizer` or `estimate` when InferenceService counted them,
the provider having sent none), cost, time to first token and total time in milliseconds.
`--json` prints each entry as one line of protobuf's JSON mapping. Exit status: 0 on success, 1 when
the call failed (its code, message and reason on one line), 2 for usage errors.
"""

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

import grpc
import grpc.aio
from genai.common.v1 import generation_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from google.protobuf import json_format

from services.common.clients import DEFAULT_TARGET, add_target_option, create_channel
from services.common.status import ParsedError, error_details
from services.common.wire import MAX_PAGE_SIZE, counted_by, seconds, timestamp

if TYPE_CHECKING:
    Stub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
else:
    Stub = gateway_service_pb2_grpc.GatewayServiceStub

API_KEY_ENV: Final = "GENAI_API_KEY"
"""The environment variable `--api-key` defaults to."""
DEFAULT_LIMIT: Final = 20
"""Entries shown unless `--limit` says otherwise."""
DEFAULT_TIMEOUT: Final = 10.0
"""Seconds each call may take, unless `--timeout` says otherwise."""
STATUS_NAMES: Final = tuple(code.name for code in grpc.StatusCode)
"""The values `--status` accepts (case-insensitive): canonical status code names."""
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_RELATIVE: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_COLUMNS: Final = (
    ("TIME (UTC)", "<"),
    ("REQUEST ID", "<"),
    ("STATUS", "<"),
    ("PROMPT@VERSION", "<"),
    ("MODEL", "<"),
    ("TOKENS IN/OUT", ">"),
    ("COST", ">"),
    ("TTFT MS", ">"),
    ("TOTAL MS", ">"),
)


def add_commands(parser: argparse.ArgumentParser, *, default_target: str) -> None:
    """Adds the `genai logs` options to `parser` and sets `args.run`, which returns the exit
    status."""
    add_target_option(parser, default=default_target, what="gateway")
    parser.add_argument(
        "--api-key", default=None, help=f"API key of the tenant (default: ${API_KEY_ENV})"
    )
    parser.add_argument("--prompt", default="", help="only requests that used this prompt")
    parser.add_argument(
        "--model", default="", help="only requests served by (or last tried on) this model"
    )
    parser.add_argument("--request-id", default="", help="only the request with this id")
    parser.add_argument(
        "--status",
        default="",
        type=str.upper,
        choices=STATUS_NAMES,
        metavar="CODE",
        help="only requests that ended with this status code name (OK, UNAVAILABLE, ...)",
    )
    parser.add_argument(
        "--since",
        type=parse_since,
        metavar="WHEN",
        help="only requests from then on: an age (30s, 10m, 2h, 1d, 1w) or an ISO 8601 time "
        "(UTC unless it has an offset)",
    )
    add_listing_options(parser, what="entries")
    parser.set_defaults(run=run)


def add_listing_options(parser: argparse.ArgumentParser, *, what: str) -> None:
    """`--limit`, `--json` and `--timeout`, as every listing command of the gateway has them."""
    parser.add_argument(
        "--limit", type=positive_int, default=DEFAULT_LIMIT, help=f"{what} to show at most"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--timeout", type=positive_float, default=DEFAULT_TIMEOUT, help="deadline of each call"
    )


def key_metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The `authorization` metadata of `--api-key`, else of `$GENAI_API_KEY` (none without)."""
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV, "")
    return (("authorization", f"Bearer {key}"),) if key else ()


def run(args: argparse.Namespace) -> int:
    """Runs the parsed `genai logs` command; returns its exit status."""
    return asyncio.run(run_async(args))


async def run_async(args: argparse.Namespace) -> int:
    """`run` inside a running event loop."""
    metadata = key_metadata(args)
    async with create_channel(args.target) as channel:
        try:
            entries = await fetch_entries(
                gateway_service_pb2_grpc.GatewayServiceStub(channel),
                limit=args.limit,
                prompt=args.prompt,
                status=args.status,
                since=args.since,
                model=args.model,
                request_id=args.request_id,
                metadata=metadata,
                rpc_timeout_s=args.timeout,
            )
        except grpc.aio.AioRpcError as error:
            print(f"genai: {args.target}: {error_line(error_details(error))}", file=sys.stderr)
            return 1
    lines = [json_line(e) for e in entries] if args.json else table(entries)
    for line in lines:
        print(line)
    if not entries and not args.json:
        print("no logged requests match", file=sys.stderr)
    return 0


async def main_async(argv: Sequence[str]) -> int:
    """`genai logs ARGV` from code that already runs an event loop (tests); usage errors raise
    `SystemExit(2)` as on the command line."""
    parser = argparse.ArgumentParser(prog="genai logs")
    add_commands(parser, default_target=DEFAULT_TARGET)
    return await run_async(parser.parse_args(list(argv)))


async def fetch_entries(
    stub: "Stub",
    *,
    limit: int,
    prompt: str = "",
    status: str = "",
    since: datetime | None = None,
    metadata: Sequence[tuple[str, str]] = (),
    rpc_timeout_s: float = DEFAULT_TIMEOUT,
    model: str = "",
    request_id: str = "",
) -> list[gateway_pb2.RequestLogEntry]:
    """Up to `limit` entries, newest first, over as many pages as that takes (each call
    within `rpc_timeout_s`)."""
    request = gateway_service_pb2.ListRequestLogsRequest(
        prompt=prompt, status=status, model=model, request_id=request_id
    )
    if since is not None:
        request.start_time.CopyFrom(timestamp(since))
    entries: list[gateway_pb2.RequestLogEntry] = []
    while len(entries) < limit:
        request.page_size = min(limit - len(entries), MAX_PAGE_SIZE)
        response: gateway_service_pb2.ListRequestLogsResponse = await stub.ListRequestLogs(
            request, metadata=tuple(metadata), timeout=rpc_timeout_s
        )
        entries.extend(response.entries[: limit - len(entries)])
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    return entries


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """The moment `--since` names: an age before `now` (`90s`, `10m`, `2h`, `1.5d`, `1w`) or an
    ISO 8601 time, UTC unless it carries an offset."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        amount, unit = relative.groups()
        try:
            return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: float(amount)})
        except OverflowError:
            raise argparse.ArgumentTypeError(f"{text!r} reaches too far back") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an age (10m, 2h, 1d) nor an ISO 8601 time"
        ) from None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)


def table(entries: Sequence[gateway_pb2.RequestLogEntry]) -> list[str]:
    """The entries as an aligned table, header first; empty without entries."""
    if not entries:
        return []
    rows = [[name for name, _ in _COLUMNS], *(_cells(e) for e in entries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return [
        "  ".join(
            f"{cell:{align}{width}}"
            for cell, (_, align), width in zip(row, _COLUMNS, widths, strict=True)
        ).rstrip()
        for row in rows
    ]


def json_line(entry: gateway_pb2.RequestLogEntry) -> str:
    """One entry as one line of JSON (protobuf's JSON mapping)."""
    return json.dumps(json_format.MessageToDict(entry), separators=(",", ":"))


def error_line(error: ParsedError) -> str:
    """A failed call on one line: code, message, reason, and the violations the message does
    not already name."""
    line = f"{error.code.name}: {error.message}"
    if error.reason:
        line += f" ({error.reason})"
    violations = [f"{v.field}: {v.description}" for v in error.field_violations]
    violations += [f"{v.subject}: {v.description}" for v in error.quota_violations]
    violations = [v for v in violations if v not in error.message]
    if violations:
        line += " [" + "; ".join(violations) + "]"
    if error.retry_after is not None:
        line += f", retry after {error.retry_after:g} s"
    return line


def _cells(entry: gateway_pb2.RequestLogEntry) -> list[str]:
    meta = entry.metadata
    prompt = f"{meta.prompt}@{meta.prompt_version}" if meta.prompt_version else meta.prompt
    first_token = (
        f"{seconds(meta.first_token_duration) * 1000:.0f}"
        if meta.HasField("first_token_duration")
        else "-"
    )
    total = f"{seconds(meta.total_duration) * 1000:.0f}" if meta.HasField("total_duration") else "-"
    return [
        entry.create_time.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S"),
        entry.request_id,
        entry.status,
        prompt or "-",
        meta.model or "-",
        _tokens(meta.usage),
        _money(meta) if meta.HasField("cost") else "-",
        first_token,
        total,
    ]


def _tokens(usage: generation_pb2.TokenUsage) -> str:
    """`in/out`, with who counted them when it was not the provider: `12/30 tokenizer`."""
    return f"{usage.input_tokens}/{usage.output_tokens} {counted_by(usage)}".rstrip()


def _money(meta: gateway_pb2.CompletionMetadata) -> str:
    amount = meta.cost.units + meta.cost.nanos / 1e9
    return f"{amount:.6f} {meta.cost.currency_code}".rstrip()


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value
