"""Prompts as code: push YAML prompt files to PromptService, pull, diff, promote, roll back.

The file format is `services.prompt.files`.

genai prompts push PATH... [--message M] [--author A] [--dry-run]
genai prompts pull NAME|--all [--label L|--version N] --out DIR
genai prompts diff NAME FROM TO
genai prompts history NAME [--label L] [--limit N]
genai prompts promote NAME --label L --version N [--expected V] [--reason R]
genai prompts rollback NAME --label L [--expected V] [--reason R]
genai prompts list [--prefix P]

Every command takes `--target` (HOST:PORT, IP:PORT,IP:PORT or dns:///NAME:PORT) and `--timeout
SECONDS` (per call). Exit status: 0 when everything worked, 1 when a call or a file failed (the
gRPC status code, message, reason and field violations are printed), 2 for usage errors.

`seed_prompts` is what `genai serve` runs at start: it pushes a folder of sample prompts and
points `production` at them only where the label does not exist yet.
"""

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2, prompt_service_pb2_grpc
from google.protobuf import field_mask_pb2, json_format, struct_pb2, timestamp_pb2

from services.common.clients import (
    DEFAULT_TARGET,
    add_target_option,
    api_key_metadata,
    create_channel,
)
from services.common.errors import FieldViolation
from services.common.status import ParsedError, error_details
from services.prompt.core.registry import (
    DEFAULT_LABEL,
    Change,
    content_violations,
    diff_content,
)
from services.prompt.files import (
    PromptFile,
    PromptFileError,
    find_prompt_files,
    load_prompt_file,
    version_hash,
    write_prompt_file,
)
from services.prompt.wire import version_content

if TYPE_CHECKING:
    Stub = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    Stub = prompt_service_pb2_grpc.PromptServiceStub

pb = prompt_service_pb2

SEED_AUTHOR: Final = "genai serve"
"""Author of the versions `seed_prompts` creates; a prompt whose latest version has another
author is left alone by seeding."""
DEFAULT_TIMEOUT: Final = 10.0
"""Seconds each call may take, unless `--timeout` says otherwise."""
_PAGE_SIZE: Final = 200
_FATAL_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
"""Codes after which a push stops: the next files would fail the same way."""
_CHANGE_SIGNS: Final = {"added": "+", "removed": "-", "modified": "~"}
_PROTO_CHANGE_KINDS: Final = {
    prompt_pb2.CHANGE_KIND_ADDED: "added",
    prompt_pb2.CHANGE_KIND_REMOVED: "removed",
    prompt_pb2.CHANGE_KIND_MODIFIED: "modified",
}


# ------------------------------------------------------------------------------ command line


def add_commands(parser: argparse.ArgumentParser, *, default_target: str) -> None:
    """Adds the `prompts` sub-commands to `parser` (the `genai prompts` parser); each sets
    `args.run`, which returns the exit status."""
    connection = argparse.ArgumentParser(add_help=False)
    add_target_option(connection, default=default_target)
    connection.add_argument(
        "--api-key",
        default=os.environ.get("GENAI_API_KEY", ""),
        help="API key (default: $GENAI_API_KEY)",
    )
    connection.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="deadline of each call, seconds"
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_, parents=[connection])
        sub.set_defaults(run=run, prompts_command=name, prompts_parser=sub)
        return sub

    push = command("push", "push prompt files: a new version only where the content changed")
    push.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="folder or .yaml file")
    push.add_argument("--message", "-m", default="", help="commit message of new versions")
    push.add_argument("--author", default="", help="author of new versions (person or CI job)")
    push.add_argument("--dry-run", action="store_true", help="report what would change; no writes")

    pull = command("pull", "write prompts to <name>.yaml files")
    pull.add_argument("name", nargs="?", help="the prompt to pull")
    pull.add_argument("--all", action="store_true", help="pull every prompt")
    which = pull.add_mutually_exclusive_group()
    which.add_argument("--label", help="the version this label points to (default: latest)")
    which.add_argument("--version", type=int, help="this version number (default: latest)")
    pull.add_argument("--out", type=Path, required=True, help="folder to write into")

    diff = command("diff", "field changes and unified diff between two versions")
    diff.add_argument("name", help="the prompt")
    diff.add_argument("from_", metavar="FROM", help="older version: a number (3, v3) or a label")
    diff.add_argument("to", metavar="TO", help="newer version: a number (3, v3) or a label")

    history = command("history", "versions and label moves of a prompt, newest first")
    history.add_argument("name", help="the prompt")
    history.add_argument("--label", help="only the moves of this label")
    history.add_argument("--limit", type=int, default=50, help="entries per list (1 to 1000)")

    promote = command("promote", "point a label at a version")
    promote.add_argument("name", help="the prompt")
    promote.add_argument("--label", required=True, help="the label, e.g. production")
    promote.add_argument("--version", type=int, required=True, help="the version to point at")
    promote.add_argument(
        "--expected", type=int, help="move only if the label points here now (0: if it is new)"
    )
    promote.add_argument("--reason", default="", help="why; kept in the label's history")

    rollback = command("rollback", "move a label back to where it pointed before its last move")
    rollback.add_argument("name", help="the prompt")
    rollback.add_argument("--label", required=True, help="the label, e.g. production")
    rollback.add_argument("--expected", type=int, help="roll back only if the label points here")
    rollback.add_argument("--reason", default="", help="why; kept in the label's history")

    listing = command("list", "the prompts with their latest version and labels")
    listing.add_argument("--prefix", default="", help="only names starting with this")


def run(args: argparse.Namespace) -> int:
    """Runs the parsed `genai prompts` command; returns its exit status."""
    _check_usage(args)
    return asyncio.run(run_async(args))


async def run_async(args: argparse.Namespace) -> int:
    """`run` inside a running event loop (usage already checked)."""
    async with create_channel(args.target, metadata=api_key_metadata(args.api_key)) as channel:
        stub = prompt_service_pb2_grpc.PromptServiceStub(channel)
        try:
            status: int = await _COMMANDS[args.prompts_command](stub, args)
        except grpc.aio.AioRpcError as error:
            _print_error(error_details(error), prefix=f"genai: {args.target}: ")
            return 1
        except OSError as error:  # reading or writing prompt files
            print(f"genai: {error}", file=sys.stderr)
            return 1
        return status


async def main_async(argv: Sequence[str]) -> int:
    """`genai prompts ARGV` from code that already runs an event loop (tests); usage errors
    raise `SystemExit(2)` as on the command line."""
    parser = argparse.ArgumentParser(prog="genai prompts")
    add_commands(parser, default_target=DEFAULT_TARGET)
    args = parser.parse_args(list(argv))
    _check_usage(args)
    return await run_async(args)


def _check_usage(args: argparse.Namespace) -> None:
    """Usage errors argparse cannot see; exits with status 2 like argparse."""
    parser: argparse.ArgumentParser = args.prompts_parser
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    match args.prompts_command:
        case "pull":
            if bool(args.name) == args.all:
                parser.error("name a prompt or give --all (not both)")
            if args.version is not None and args.version < 1:
                parser.error("--version must be >= 1")
        case "history":
            if not 1 <= args.limit <= 1000:
                parser.error("--limit must be in [1, 1000]")
        case "promote" | "rollback":
            if args.expected is not None and args.expected < 0:
                parser.error("--expected must be >= 0")
        case "push":
            missing = [str(p) for p in args.paths if not p.exists()]
            if missing:
                parser.error("no such file or folder: " + ", ".join(missing))


def _print_error(error: ParsedError, *, prefix: str = "genai: ", indent: str = "  ") -> None:
    for line in _error_lines(error, prefix=prefix, indent=indent):
        print(line, file=sys.stderr, flush=True)


def _error_lines(error: ParsedError, *, prefix: str = "", indent: str = "  ") -> list[str]:
    head = f"{prefix}{error.code.name}: {error.message}"
    if error.reason:
        head += f" ({error.reason})"
    lines = [head]
    lines += [f"{indent}{v.field}: {v.description}" for v in error.field_violations]
    lines += [f"{indent}{v.subject}: {v.description}" for v in error.quota_violations]
    if error.retry_after is not None:
        lines.append(f"{indent}retry after {error.retry_after:g} s")
    return lines


# -------------------------------------------------------------------------------------- push


@dataclass
class PushOutcome:
    """What pushing one prompt file did (or, in a dry run, would do)."""

    name: str
    dry_run: bool = False
    created_prompt: bool = False
    updated_fields: tuple[str, ...] = ()
    version: int = 0
    """The version holding the file's content; 0 when there is none (rejected, or skipped)."""
    created: bool = False
    """Whether `version` is new."""
    changes: list[Change] = field(default_factory=list)
    """What changed from the previous latest version, when `created`."""
    skipped: str = ""
    """Why the file was not pushed (seeding only)."""
    error: ParsedError | None = None

    @property
    def ok(self) -> bool:
        """Whether the file was pushed (or would be), or deliberately skipped."""
        return self.error is None

    def lines(self) -> list[str]:
        """The report: one line, then the changed fields or the error's details."""
        would = "would " if self.dry_run else ""
        parts = []
        if self.created_prompt:
            parts.append(f"{would}create prompt" if self.dry_run else "created prompt")
        if self.updated_fields:
            verb = "would update" if self.dry_run else "updated"
            parts.append(f"{verb} {', '.join(self.updated_fields)}")
        if self.error is not None:
            rejected = "would be rejected" if self.dry_run else "rejected"
            parts.append(f"{rejected}: " + _error_lines(self.error)[0])
            details = _error_lines(self.error, indent="    ")[1:]
            return [f"{self.name}: {'; '.join(parts)}", *details]
        if self.skipped:
            parts.append(self.skipped)
        elif self.created:
            parts.append(
                f"{would}create v{self.version}" if self.dry_run else f"created v{self.version}"
            )
        else:
            parts.append(f"unchanged (v{self.version})")
        changes = [f"    {_CHANGE_SIGNS[c.kind]} {c.path}" for c in self.changes]
        return [f"{self.name}: {'; '.join(parts)}", *changes]


async def push_file(
    stub: Stub,
    file: PromptFile,
    *,
    author: str = "",
    message: str = "",
    dry_run: bool = False,
    rpc_timeout_s: float = DEFAULT_TIMEOUT,
    seed: bool = False,
) -> PushOutcome:
    """Pushes one prompt file: creates the prompt if it is missing (or updates its
    description, protected labels and evaluation gate where the file differs), then creates a
    version unless the content equals the latest version's.

    With `seed`, a prompt that exists keeps its fields, and one whose latest version was not
    made by seeding (`SEED_AUTHOR`) is left alone entirely.
    """
    outcome = PushOutcome(name=file.name, dry_run=dry_run)
    try:
        existing = await _find_prompt(stub, file.name, rpc_timeout_s)
        latest = None
        if existing is not None and existing.latest_version:
            response = await stub.GetPromptVersion(
                pb.GetPromptVersionRequest(prompt=file.name), timeout=rpc_timeout_s
            )
            latest = response.version
        if seed and latest is not None and latest.author != SEED_AUTHOR:
            outcome.version = latest.version
            outcome.skipped = (
                f"left alone (v{latest.version} is by {latest.author or 'someone else'}, "
                "not a seeded version)"
            )
            return outcome
        if existing is not None and not seed:
            outcome.updated_fields = _changed_fields(existing, file.prompt)
        if dry_run:
            return _dry_run(outcome, file, existing, latest)

        if existing is None:
            await stub.CreatePrompt(
                pb.CreatePromptRequest(prompt=file.prompt), timeout=rpc_timeout_s
            )
            outcome.created_prompt = True
        elif outcome.updated_fields:
            await stub.UpdatePrompt(
                pb.UpdatePromptRequest(
                    prompt=file.prompt,
                    update_mask=field_mask_pb2.FieldMask(paths=outcome.updated_fields),
                ),
                timeout=rpc_timeout_s,
            )
        version = prompt_pb2.PromptVersion()
        version.CopyFrom(file.version)
        version.author = author
        version.commit_message = message
        created = await stub.CreatePromptVersion(
            pb.CreatePromptVersionRequest(prompt=file.name, version=version), timeout=rpc_timeout_s
        )
    except grpc.aio.AioRpcError as error:
        outcome.error = error_details(error)
        return outcome
    outcome.version = created.version.version
    outcome.created = created.created
    if created.created and latest is not None:
        outcome.changes = diff_content(version_content(latest), version_content(file.version))
    return outcome


def _dry_run(
    outcome: PushOutcome,
    file: PromptFile,
    existing: prompt_pb2.Prompt | None,
    latest: prompt_pb2.PromptVersion | None,
) -> PushOutcome:
    """Fills in what a push would do; checks the content with the registry's own rules."""
    outcome.created_prompt = existing is None
    violations = _local_violations(file)
    if violations:
        outcome.error = ParsedError(
            code=grpc.StatusCode.INVALID_ARGUMENT,
            message="the version fails the registry's checks (checked here)",
            field_violations=tuple(violations),
        )
        return outcome
    if latest is not None and latest.content_hash == version_hash(file.version):
        outcome.version = latest.version
        return outcome
    outcome.created = True
    outcome.version = latest.version + 1 if latest is not None else 1
    if latest is not None:
        outcome.changes = diff_content(version_content(latest), version_content(file.version))
    return outcome


def _local_violations(file: PromptFile) -> list[FieldViolation]:
    return content_violations(version_content(file.version))


def _changed_fields(existing: prompt_pb2.Prompt, wanted: prompt_pb2.Prompt) -> tuple[str, ...]:
    changed = []
    if existing.description != wanted.description:
        changed.append("description")
    if list(existing.protected_labels) != list(wanted.protected_labels):
        changed.append("protected_labels")
    if (
        existing.HasField("evaluation_gate") != wanted.HasField("evaluation_gate")
        or existing.evaluation_gate != wanted.evaluation_gate
    ):
        changed.append("evaluation_gate")
    return tuple(changed)


async def _find_prompt(stub: Stub, name: str, rpc_timeout_s: float) -> prompt_pb2.Prompt | None:
    try:
        response = await stub.GetPrompt(pb.GetPromptRequest(name=name), timeout=rpc_timeout_s)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return response.prompt


async def _push(stub: Stub, args: argparse.Namespace) -> int:
    paths = find_prompt_files(args.paths)
    if not paths:
        print(
            "genai: no prompt files (*.yaml, *.yml) in " + ", ".join(map(str, args.paths)),
            file=sys.stderr,
        )
        return 1
    failed = 0
    seen: dict[str, Path] = {}
    for path in paths:
        try:
            file = load_prompt_file(path)
        except PromptFileError as error:
            failed += 1
            _say(f"{path.stem}: invalid file", *(f"    {path}: {p}" for p in error.problems))
            continue
        if file.name in seen:
            failed += 1
            _say(f"{file.name}: invalid file", f"    {path}: same prompt as {seen[file.name]}")
            continue
        seen[file.name] = path
        outcome = await push_file(
            stub,
            file,
            author=args.author,
            message=args.message,
            dry_run=args.dry_run,
            rpc_timeout_s=args.timeout,
        )
        _say(*outcome.lines())
        if outcome.error is not None:
            failed += 1
            if outcome.error.code in _FATAL_CODES:
                print(f"genai: {args.target}: stopped after {path}", file=sys.stderr)
                return 1
    if failed:
        print(f"genai: {failed} of {len(paths)} prompt files failed", file=sys.stderr)
        return 1
    return 0


def _say(*lines: str) -> None:
    for line in lines:
        print(line, flush=True)


# ---------------------------------------------------------------------------------- commands


async def _pull(stub: Stub, args: argparse.Namespace) -> int:
    if args.all:
        prompts = await _all_prompts(stub, "", args.timeout)
    else:
        response = await stub.GetPrompt(pb.GetPromptRequest(name=args.name), timeout=args.timeout)
        prompts = [response.prompt]
    selector: dict[str, Any] = {}
    if args.label:
        selector["label"] = args.label
    elif args.version:
        selector["version"] = args.version
    for prompt in prompts:
        try:
            found = await stub.GetPromptVersion(
                pb.GetPromptVersionRequest(prompt=prompt.name, **selector), timeout=args.timeout
            )
        except grpc.aio.AioRpcError as error:
            if not args.all or error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            _say(f"{prompt.name}: skipped ({error.details()})")
            continue
        version = found.version
        via = f" ({args.label})" if args.label else ""
        header = (
            f"{prompt.name}@{version.version}{via}, content_hash {version.content_hash[:16]}, "
            "written by `genai prompts pull`"
        )
        path = write_prompt_file(args.out, prompt, version, header=header)
        _say(f"{prompt.name}@{version.version}{via} -> {path}")
    return 0


async def _diff(stub: Stub, args: argparse.Namespace) -> int:
    old = await _resolve_version(stub, args.name, args.from_, args.timeout)
    new = await _resolve_version(stub, args.name, args.to, args.timeout)
    response = await stub.DiffPromptVersions(
        pb.DiffPromptVersionsRequest(prompt=args.name, from_version=old, to_version=new),
        timeout=args.timeout,
    )
    count = len(response.changes)
    _say(f"{args.name}@{old} -> {args.name}@{new}: {count} change{'s' * (count != 1)}")
    for change in response.changes:
        kind = _PROTO_CHANGE_KINDS.get(change.kind, "modified")
        sign = _CHANGE_SIGNS[kind]
        old_value = _json(change.old_value) if change.HasField("old_value") else ""
        new_value = _json(change.new_value) if change.HasField("new_value") else ""
        if kind == "added":
            _say(f"  {sign} {change.path}: {new_value}")
        elif kind == "removed":
            _say(f"  {sign} {change.path}: {old_value}")
        else:
            _say(f"  {sign} {change.path}: {old_value} -> {new_value}")
    if response.unified_diff:
        _say("", response.unified_diff.rstrip("\n"))
    return 0


async def _history(stub: Stub, args: argparse.Namespace) -> int:
    if not args.label:
        prompt = (
            await stub.GetPrompt(pb.GetPromptRequest(name=args.name), timeout=args.timeout)
        ).prompt
        labels: dict[int, list[str]] = {}
        for label, number in sorted(prompt.labels.items()):
            labels.setdefault(number, []).append(label)
        versions = await stub.ListPromptVersions(
            pb.ListPromptVersionsRequest(prompt=args.name, page_size=args.limit),
            timeout=args.timeout,
        )
        _say(f"versions of {args.name}, newest first:")
        for v in versions.versions:
            message = v.commit_message.splitlines()[0] if v.commit_message else ""
            tags = f"  [{', '.join(labels[v.version])}]" if v.version in labels else ""
            _say(
                f"  v{v.version}  {_time(v.create_time)}  {v.author or '-'}"
                f"{'  ' + message if message else ''}{tags}"
            )
        if not versions.versions:
            _say("  (none)")
    events = await stub.ListLabelHistory(
        pb.ListLabelHistoryRequest(prompt=args.name, label=args.label or "", page_size=args.limit),
        timeout=args.timeout,
    )
    which = f"label {args.label}" if args.label else "labels"
    _say(f"moves of {which} of {args.name}, newest first:")
    for event in events.events:
        _say(f"  {_time(event.event_time)}  {_event_text(event)}")
    if not events.events:
        _say("  (none)")
    return 0


async def _promote(stub: Stub, args: argparse.Namespace) -> int:
    request = pb.SetLabelRequest(
        prompt=args.name, label=args.label, version=args.version, reason=args.reason
    )
    if args.expected is not None:
        request.expected_version = args.expected
    response = await stub.SetLabel(request, timeout=args.timeout)
    _say(f"{args.name}: {_event_text(response.event)}")
    return 0


async def _rollback(stub: Stub, args: argparse.Namespace) -> int:
    request = pb.RollbackLabelRequest(prompt=args.name, label=args.label, reason=args.reason)
    if args.expected is not None:
        request.expected_version = args.expected
    response = await stub.RollbackLabel(request, timeout=args.timeout)
    _say(f"{args.name}: {_event_text(response.event)}")
    return 0


async def _list(stub: Stub, args: argparse.Namespace) -> int:
    prompts = await _all_prompts(stub, args.prefix, args.timeout)
    if not prompts:
        _say("no prompts")
        return 0
    rows = [
        (
            p.name,
            f"v{p.latest_version}" if p.latest_version else "-",
            " ".join(f"{k}=v{v}" for k, v in sorted(p.labels.items())) or "-",
            p.description.splitlines()[0] if p.description else "",
        )
        for p in prompts
    ]
    rows.insert(0, ("NAME", "LATEST", "LABELS", "DESCRIPTION"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        _say("  ".join([*cells, row[3]]).rstrip())
    return 0


_COMMANDS: Final = {
    "push": _push,
    "pull": _pull,
    "diff": _diff,
    "history": _history,
    "promote": _promote,
    "rollback": _rollback,
    "list": _list,
}


async def _all_prompts(stub: Stub, prefix: str, rpc_timeout_s: float) -> list[prompt_pb2.Prompt]:
    prompts: list[prompt_pb2.Prompt] = []
    token = ""
    while True:
        page = await stub.ListPrompts(
            pb.ListPromptsRequest(page_size=_PAGE_SIZE, page_token=token, name_prefix=prefix),
            timeout=rpc_timeout_s,
        )
        prompts += page.prompts
        token = page.next_page_token
        if not token:
            return prompts


async def _resolve_version(stub: Stub, prompt: str, ref: str, rpc_timeout_s: float) -> int:
    """A version number from `3`, `v3` or a label name."""
    number = ref.removeprefix("v")
    if number.isdigit():
        return int(number)
    response = await stub.GetPromptVersion(
        pb.GetPromptVersionRequest(prompt=prompt, label=ref), timeout=rpc_timeout_s
    )
    return response.version.version


def _event_text(event: prompt_pb2.LabelEvent) -> str:
    label = event.label
    match event.kind:
        case prompt_pb2.LABEL_EVENT_KIND_CREATED:
            text = f"{label} created at v{event.to_version}"
        case prompt_pb2.LABEL_EVENT_KIND_ROLLED_BACK:
            text = f"{label} rolled back v{event.from_version} -> v{event.to_version}"
        case prompt_pb2.LABEL_EVENT_KIND_DELETED:
            text = f"{label} deleted (was v{event.from_version})"
        case _:
            text = f"{label} moved v{event.from_version} -> v{event.to_version}"
    if event.actor:
        text += f" by {event.actor}"
    if event.reason:
        text += f": {event.reason}"
    return text


def _time(stamp: timestamp_pb2.Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _json(value: struct_pb2.Value) -> str:
    return json.dumps(json_format.MessageToDict(value), ensure_ascii=False)


# ------------------------------------------------------------------------------------ seeding


@dataclass(frozen=True)
class SeedReport:
    """What `seed_prompts` did: one line per file, and how many files failed."""

    lines: tuple[str, ...]
    failures: int


async def seed_prompts(
    channel: grpc.aio.Channel,
    directory: Path,
    *,
    label: str = DEFAULT_LABEL,
    rpc_timeout_s: float = DEFAULT_TIMEOUT,
) -> SeedReport:
    """Pushes the prompt files of `directory` as `SEED_AUTHOR` (see `push_file`'s `seed`) and
    points `label` at each pushed version only where the label does not exist yet, so that a
    restart never moves a label someone set. Stops early only when the registry is
    unreachable; raises nothing for RPC failures (they are in the report)."""
    stub = prompt_service_pb2_grpc.PromptServiceStub(channel)
    lines: list[str] = []
    failures = 0
    for path in find_prompt_files([directory]):
        try:
            file = load_prompt_file(path)
        except PromptFileError as error:
            failures += 1
            lines += [f"{path.stem}: invalid file", *(f"    {path}: {p}" for p in error.problems)]
            continue
        outcome = await push_file(
            stub,
            file,
            author=SEED_AUTHOR,
            message=f"sample prompt {path.name}",
            rpc_timeout_s=rpc_timeout_s,
            seed=True,
        )
        report = outcome.lines()
        if outcome.error is not None:
            failures += 1
            lines += report
            if outcome.error.code in _FATAL_CODES:
                break
            continue
        if not outcome.skipped:
            moved, text = await _seed_label(stub, file.name, label, outcome.version, rpc_timeout_s)
            report[0] += f"; {text}"
            failures += not moved
        lines += report
    return SeedReport(tuple(lines), failures)


async def _seed_label(
    stub: Stub, prompt: str, label: str, version: int, rpc_timeout_s: float
) -> tuple[bool, str]:
    """Creates `label` at `version` unless it exists; returns (no failure, what happened)."""
    try:
        await stub.SetLabel(
            pb.SetLabelRequest(
                prompt=prompt,
                label=label,
                version=version,
                expected_version=0,
                reason="seeded by genai serve",
            ),
            timeout=rpc_timeout_s,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ABORTED:
            return False, f"{label} not set: " + _error_lines(error_details(error))[0]
        try:
            found = await stub.GetPrompt(pb.GetPromptRequest(name=prompt), timeout=rpc_timeout_s)
        except grpc.aio.AioRpcError:
            return True, f"{label} exists; left as it is"
        current = found.prompt.labels.get(label)
        return True, f"{label} stays at v{current}" if current else f"{label} left as it is"
    return True, f"{label} -> v{version}"
