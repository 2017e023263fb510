"""`genai audit`: the audit log, newest first, as a table or JSON lines.

genai audit [--target TARGET] [--api-key KEY] [--tenant ID] [--action RPC] [--actor WHO]
            [--outcome CODE] [--since 10m|2h|1d|ISO-TIME] [--limit N] [--json]
            [--timeout SECONDS]

Calls `GatewayService.ListAuditEvents` with the API key (`--api-key`, else `$GENAI_API_KEY`),
following page tokens until `--limit` events are shown. A tenant admin sees its own tenant's
log; a platform admin names any tenant with `--tenant`. `--action` takes a full RPC name or
just the method (`CreateApiKey`, `SetLabel`). One row per event: time (UTC), actor and role,
action, target, outcome and request id. Exit status: 0 on success, 1 when the call failed (its
code, message and reason on one line), 2 for usage errors.
"""

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Final

import grpc
import grpc.aio
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from google.protobuf import json_format

from services.common.clients import add_target_option, create_channel
from services.common.contract import contract_services
from services.common.status import error_details
from services.common.wire import MAX_PAGE_SIZE, timestamp
from services.gateway.logs_cli import (
    API_KEY_ENV,
    DEFAULT_TIMEOUT,
    STATUS_NAMES,
    add_listing_options,
    error_line,
    key_metadata,
    parse_since,
)

if TYPE_CHECKING:
    Stub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
else:
    Stub = gateway_service_pb2_grpc.GatewayServiceStub

_COLUMNS: Final = (
    "TIME (UTC)",
    "ACTOR",
    "ROLE",
    "TENANT",
    "ACTION",
    "TARGET",
    "OUTCOME",
    "REQUEST ID",
)


def add_commands(parser: argparse.ArgumentParser, *, default_target: str) -> None:
    """Adds the `genai audit` options to `parser` and sets `args.run`."""
    add_target_option(parser, default=default_target, what="gateway")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"a tenant or platform admin's key (default: ${API_KEY_ENV})",
    )
    parser.add_argument("--tenant", default="", help="the tenant (default: the key's)")
    parser.add_argument(
        "--action", default="", help="only this RPC: a full name or just the method (SetLabel)"
    )
    parser.add_argument("--actor", default="", help="only this actor (apikey:<id>)")
    parser.add_argument(
        "--outcome",
        default="",
        type=str.upper,
        choices=STATUS_NAMES,
        metavar="CODE",
        help="only events with this outcome (OK, PERMISSION_DENIED, ...)",
    )
    parser.add_argument(
        "--since",
        type=parse_since,
        metavar="WHEN",
        help="only events from then on: an age (30s, 10m, 2h, 1d, 1w) or an ISO 8601 time",
    )
    add_listing_options(parser, what="events")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Runs the parsed `genai audit` command; returns its exit status."""
    return asyncio.run(run_async(args))


async def run_async(args: argparse.Namespace) -> int:
    """`run` inside a running event loop."""
    metadata = key_metadata(args)
    request = gateway_service_pb2.ListAuditEventsRequest(
        tenant_id=args.tenant,
        action=full_action(args.action),
        actor=args.actor,
        outcome=args.outcome,
    )
    if args.since is not None:
        request.start_time.CopyFrom(timestamp(args.since))
    async with create_channel(args.target) as channel:
        try:
            events = await fetch_events(
                gateway_service_pb2_grpc.GatewayServiceStub(channel),
                request,
                limit=args.limit,
                metadata=metadata,
                rpc_timeout_s=args.timeout,
            )
        except grpc.aio.AioRpcError as error:
            print(f"genai: {args.target}: {error_line(error_details(error))}", file=sys.stderr)
            return 1
    if args.json:
        for event in events:
            print(json.dumps(json_format.MessageToDict(event), separators=(",", ":")))
    else:
        for line in table(events):
            print(line)
        if not events:
            print("no audit events match", file=sys.stderr)
    return 0


def full_action(action: str) -> str:
    """`SetLabel` as `genai.prompt.v1.PromptService/SetLabel` (the one contract RPC of that
    name); a full name, an ambiguous or an unknown method as given."""
    if not action or "/" in action:
        return action
    found = [
        f"{service.full_name}/{method.name}"
        for service in contract_services()
        for method in service.methods
        if method.name == action
    ]
    return found[0] if len(found) == 1 else action


async def fetch_events(
    stub: "Stub",
    request: gateway_service_pb2.ListAuditEventsRequest,
    *,
    limit: int,
    metadata: Sequence[tuple[str, str]] = (),
    rpc_timeout_s: float = DEFAULT_TIMEOUT,
) -> list[gateway_pb2.AuditEvent]:
    """Up to `limit` events, newest first, over as many pages as that takes."""
    events: list[gateway_pb2.AuditEvent] = []
    while len(events) < limit:
        request.page_size = min(limit - len(events), MAX_PAGE_SIZE)
        response: gateway_service_pb2.ListAuditEventsResponse = await stub.ListAuditEvents(
            request, metadata=tuple(metadata), timeout=rpc_timeout_s
        )
        events.extend(response.events[: limit - len(events)])
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    return events


def table(events: Sequence[gateway_pb2.AuditEvent]) -> list[str]:
    """The events as an aligned table, header first; empty without events."""
    if not events:
        return []
    rows = [list(_COLUMNS), *(_cells(e) for e in events)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return [
        "  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _cells(event: gateway_pb2.AuditEvent) -> list[str]:
    role = gateway_pb2.Role.Name(event.actor_role).removeprefix("ROLE_").lower()
    return [
        event.time.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S"),
        event.actor,
        role,
        event.tenant_id,
        event.action.rsplit(".", 1)[-1],  # `GatewayService/CreateApiKey`
        event.target or "-",
        event.outcome,
        event.request_id or "-",
    ]
