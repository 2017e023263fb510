"""The `genai` command line: run the platform and talk to it.

genai serve [--config FILE] [--host H] [--port P] [--http-port P | --no-http] [--workers N]
            [--service NAME ...] [--ready-file F]
            [--prompts DIR | --no-prompts]
genai chat MESSAGE [--prompt NAME] [--var NAME=VALUE ...] [--model M] ...
genai complete TEXT [--prompt NAME] [--var NAME=VALUE ...] [--model M] [--max-tokens N] ...
genai info [--target TARGET]
genai prompts push|pull|diff|history|promote|rollback|list ... (`genai prompts --help`)
genai experiments create|start|stop|list|results ... (`genai experiments --help`)
genai eval datasets create|add ... | run SPEC.yaml [--gate] | report ID (`genai eval --help`)
genai logs [--prompt NAME] [--status CODE] [--since 10m] [--limit N] [--json]
genai migrate [--config FILE] [--store SECTION ...] [--prompts DIR] [--bootstrap-admin-key]

Commands that call the platform send `--api-key` (default: $GENAI_API_KEY) to `--target`
(default: $GENAI_TARGET, else 127.0.0.1:50051): HOST:PORT, a comma-separated list of IP:PORT
or dns:///NAME:PORT, the last two balanced round robin over the replicas.
genai version
"""

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from genai.common.v1 import chat_pb2, generation_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from genai.inference.v1 import inference_pb2, inference_service_pb2, inference_service_pb2_grpc
from google.protobuf import json_format
from pydantic import ValidationError

from services.common.auth import DEFAULT_TENANT, internal_metadata
from services.common.clients import (
    DEFAULT_TARGET,
    add_target_option,
    api_key_metadata,
    create_channel,
)
from services.common.config import ConfigError, load_settings
from services.common.http import http_url
from services.common.status import error_details
from services.common.telemetry import quiet_cross_context_detach
from services.common.wire import counted_by
from services.evaluation import cli as eval_cli
from services.experiment import cli as experiments_cli
from services.gateway import audit_cli, logs_cli
from services.gateway.logs_cli import API_KEY_ENV, error_line
from services.inference.adapters import tritonserver
from services.platform.bootstrap import dev_key_file, ensure_dev_credentials
from services.platform.migrate import STORES, migrate_all
from services.platform.runner import (
    REPOSITORY_ROOT,
    Platform,
    client_tls,
    platform_version,
    start_platform,
)
from services.platform.settings import ALL_SERVICES, PlatformSettings
from services.platform.workers import WorkerPool, WorkerStartError, start_workers
from services.prompt import cli as prompts_cli

_logger = logging.getLogger("genai")

SAMPLE_PROMPTS = REPOSITORY_ROOT / "prompts"
"""The sample prompts `genai serve` seeds PromptService with (when the folder exists)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one `genai` command and returns its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["triton"]:  # its own parser, options included (`genai triton --help`)
        return tritonserver.main(arguments[1:])
    parser = _parser()
    args = parser.parse_args(arguments)
    logging.basicConfig(
        level=os.environ.get("GENAI_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    quiet_cross_context_detach()
    try:
        result: int = args.run(args)
    except ConfigError as error:
        print(f"genai: {error}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genai", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run platform services (all of them by default)")
    serve.add_argument("--config", type=Path, help="YAML settings file (GENAI_* env overrides)")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on; 0 picks a free one")
    http = serve.add_mutually_exclusive_group()
    http.add_argument(
        "--http-port",
        type=int,
        metavar="P",
        help="port of the OpenAI-compatible HTTP API (/v1) on the same host; 0 picks a free "
        "one (default: server.http_port, 8080, or a free one with --port 0)",
    )
    http.add_argument(
        "--no-http", action="store_true", help="serve no HTTP API (server.http_port: null)"
    )
    serve.add_argument(
        "--workers",
        type=_worker_count,
        metavar="N",
        help="processes serving the port together (SO_REUSEPORT), under a supervisor that "
        "launches Triton once and merges their metrics (default: server.workers, 1)",
    )
    serve.add_argument(
        "--service",
        action="append",
        choices=ALL_SERVICES,
        help="host only this service (repeatable); default: every service in one process",
    )
    serve.add_argument(
        "--ready-file", type=Path, help="write the address as JSON here once serving"
    )
    seeding = serve.add_mutually_exclusive_group()
    seeding.add_argument(
        "--prompts",
        type=Path,
        metavar="DIR",
        help="prompt files to push at start when PromptService is hosted; `production` is set "
        "only where it does not exist yet (default: the repository's prompts/ folder)",
    )
    seeding.add_argument("--no-prompts", action="store_true", help="push no prompt files at start")
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser(
        "migrate",
        help="apply every store's database migrations and exit (a deployment's migration Job)",
        description="Applies the migrations of every store the settings name (tenants and "
        "keys, request log, idempotency, prompts, experiments, evaluations), then exits 0; "
        "exits 2 naming the setting when a database cannot be reached or migrated.",
    )
    migrate.add_argument("--config", type=Path, help="YAML settings file (GENAI_* env overrides)")
    migrate.add_argument(
        "--prompts",
        type=Path,
        metavar="DIR",
        help="then push these prompt files for the `default` tenant, as `genai serve` seeds "
        "them (`production` is set only where it does not exist yet)",
    )
    migrate.add_argument(
        "--store",
        action="append",
        choices=sorted({spec.setting for spec in STORES}),
        help="migrate only the stores of this settings section (repeatable; default: all)",
    )
    migrate.add_argument(
        "--bootstrap-admin-key",
        action="store_true",
        help="also make a platform-admin API key for the `default` tenant and print it once "
        "(the first key of a deployment whose replicas run with auth.development_key off)",
    )
    migrate.set_defaults(run=_migrate)

    info = commands.add_parser("info", help="describe a running gateway and its dependencies")
    add_target_option(info, default=DEFAULT_TARGET, what="gateway")
    info.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds")
    _api_key_option(info)
    info.set_defaults(run=_info)

    chat = commands.add_parser(
        "chat", help="stream a completion of a prompt through the gateway (StreamComplete)"
    )
    chat.add_argument(
        "message", nargs="?", help="the `message` variable (for the default `chat` prompt)"
    )
    chat.add_argument("--prompt", default="chat", help="prompt name (default: chat)")
    _completion_options(chat)
    chat.set_defaults(run=_chat)

    complete = commands.add_parser(
        "complete",
        help="stream a raw text completion through the gateway: a text prompt, sent to the "
        "model as `text` input without a chat template (for base models)",
    )
    complete.add_argument(
        "text",
        nargs="?",
        help="the text to continue: the `text` variable of the default `complete` prompt",
    )
    complete.add_argument(
        "--prompt", default="complete", help="a text prompt's name (default: complete)"
    )
    _completion_options(complete)
    complete.set_defaults(run=_complete)

    experiments = commands.add_parser(
        "experiments",
        help="A/B experiments: create, start, stop, list, results (table and PNG)",
        description=experiments_cli.__doc__.splitlines()[0] if experiments_cli.__doc__ else None,
    )
    experiments_cli.add_commands(experiments, default_target=DEFAULT_TARGET)

    evaluation = commands.add_parser(
        "eval",
        help="evaluation: datasets, runs with a progress bar, HTML reports, CI gates",
        description=eval_cli.__doc__.splitlines()[0] if eval_cli.__doc__ else None,
    )
    eval_cli.add_commands(evaluation, default_target=DEFAULT_TARGET)

    logs = commands.add_parser(
        "logs", help="list the request log of your tenant, newest first (ListRequestLogs)"
    )
    logs_cli.add_commands(logs, default_target=DEFAULT_TARGET)

    audit = commands.add_parser(
        "audit",
        help="list the audit log: admin actions and protected label moves (ListAuditEvents)",
    )
    audit_cli.add_commands(audit, default_target=DEFAULT_TARGET)

    generate = commands.add_parser(
        "generate", help="stream a completion from InferenceService, as a chat turn"
    )
    generate.add_argument("prompt", help="the user message (or raw text with --raw)")
    add_target_option(generate, default=DEFAULT_TARGET)
    generate.add_argument("--model", default="smollm2-135m-instruct", help="served model name")
    generate.add_argument("--raw", action="store_true", help="send the prompt as raw text")
    generate.add_argument("--system", help="a system message before the prompt")
    generate.add_argument("--max-tokens", type=int, help="tokens to generate at most")
    generate.add_argument("--temperature", type=float, help="0 is greedy")
    generate.add_argument("--top-p", type=float)
    generate.add_argument("--top-k", type=int)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--stop", action="append", default=[], help="stop sequence")
    generate.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    _api_key_option(generate)
    generate.set_defaults(run=_generate)

    # Listed for --help only: main() hands `genai triton ...` to the launcher's own parser.
    commands.add_parser(
        "triton", help="run Triton Inference Server in the foreground (`genai triton --help`)"
    )

    prompts = commands.add_parser(
        "prompts",
        help="prompts as code: push and pull YAML files, diff, history, promote, rollback",
        description=prompts_cli.__doc__.splitlines()[0] if prompts_cli.__doc__ else None,
    )
    prompts_cli.add_commands(prompts, default_target=DEFAULT_TARGET)

    version = commands.add_parser("version", help="print the platform version")
    version.set_defaults(run=lambda _args: print(platform_version()) or 0)
    return parser


def _completion_options(parser: argparse.ArgumentParser) -> None:
    """The options `genai chat` and `genai complete` share."""
    selector = parser.add_mutually_exclusive_group()
    selector.add_argument("--label", help="label to serve (default: production)")
    selector.add_argument("--version", type=int, help="version number to serve")
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a template variable (repeatable); VALUE is parsed as JSON when it can be",
    )
    parser.add_argument("--model", help="pin a catalog model (routing preference)")
    parser.add_argument("--max-tokens", type=int, help="tokens to generate at most")
    parser.add_argument("--temperature", type=float, help="0 is greedy")
    parser.add_argument("--user", default="", help="end-user id (experiments, request log)")
    add_target_option(parser, default=DEFAULT_TARGET, what="gateway")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    _api_key_option(parser)


def _api_key_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV, ""),
        help=f"API key (default: ${API_KEY_ENV})",
    )


def _channel(args: argparse.Namespace) -> grpc.aio.Channel:
    return create_channel(args.target, metadata=api_key_metadata(args.api_key))


def _serve(args: argparse.Namespace) -> int:
    settings = serve_settings(args, os.environ)
    seed = _seed_folder(args, settings)
    try:
        return asyncio.run(_serve_until_signalled(settings, args.ready_file, seed))
    except WorkerStartError as error:
        print(f"genai: {error}", file=sys.stderr)
        return 1


def serve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> PlatformSettings:
    """The settings `genai serve ARGS` runs with: the file and `env`, then the options."""
    settings = load_settings(PlatformSettings, path=args.config, env=env)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.workers is not None:
        overrides["workers"] = args.workers
    if args.no_http:
        overrides["http_port"] = None
    elif args.http_port is not None:
        overrides["http_port"] = args.http_port
    server = settings.server.model_dump()
    if "http_port" not in settings.server.model_fields_set:
        del server["http_port"]  # its default follows the port (--port 0: a free one)
    try:
        return PlatformSettings.model_validate(
            {
                **settings.model_dump(),
                "server": {**server, **overrides},
                **({"services": tuple(args.service)} if args.service else {}),
            }
        )
    except ValidationError as error:
        raise ConfigError(
            [
                f"{'.'.join(str(part) for part in e['loc'])} (with the options): {e['msg']}"
                for e in error.errors(include_input=False)
            ]
        ) from None


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= 256:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of processes from 1 to 256")
    return count


def _seed_folder(args: argparse.Namespace, settings: PlatformSettings) -> Path | None:
    """The folder of prompt files to push at start, if any."""
    if args.no_prompts or "prompt" not in settings.services:
        return None
    if args.prompts is not None:
        if not args.prompts.is_dir():
            raise ConfigError([f"--prompts: {args.prompts} is not a folder"])
        return Path(args.prompts)
    return SAMPLE_PROMPTS if SAMPLE_PROMPTS.is_dir() else None  # absent from a wheel install


async def _serve_until_signalled(
    settings: PlatformSettings, ready_file: Path | None, seed: Path | None = None
) -> int:
    platform: Platform | WorkerPool
    if settings.server.workers > 1:
        platform = await start_workers(settings)
    else:
        platform = await start_platform(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    address = platform.address
    print(f"genai platform {platform_version()} serving on {address}", flush=True)
    for name in platform.hosted_services:
        print(f"  {name}", flush=True)
    print("  grpc.health.v1.Health, grpc.reflection.v1alpha.ServerReflection", flush=True)
    if isinstance(platform, WorkerPool):
        pids = ", ".join(str(pid) for pid in platform.worker_pids)
        print(f"{len(platform.worker_pids)} worker processes (pids {pids}) share it", flush=True)
    if platform.metrics_port is not None:
        print(f"metrics: http://{settings.server.host}:{platform.metrics_port}/metrics", flush=True)
    api_url = None
    if platform.http_port is not None:
        tls = bool(settings.server.tls_certificate_file)
        base_url = http_url(settings.server.host, platform.http_port, tls=tls)
        api_url = base_url + "/v1"
        print(f"OpenAI-compatible HTTP API: {api_url}", flush=True)
        if "gateway" in settings.services and settings.gateway.console.enabled:
            print(f"web console: {base_url}/console/ (sign in with an API key)", flush=True)
    credentials = None
    if (
        settings.auth.mode == "api_key"
        and settings.auth.development_key
        and platform.tenants is not None
    ):
        credentials = await ensure_dev_credentials(platform.tenants, dev_key_file())
        made = "created" if credentials.created else "kept"
        print(
            f"development tenant '{credentials.tenant_id}', platform-admin API key ({made}, "
            f"saved in {credentials.key_file}, mode 0600):",
            flush=True,
        )
        # The secret goes only to a person's terminal, never into a service's log.
        shown = credentials.secret if sys.stdout.isatty() else f"$(cat {credentials.key_file})"
        print(f"  export {API_KEY_ENV}={shown}", flush=True)
    print(f"try: grpcurl -plaintext {address} list", flush=True)
    print(f"     genai info --target {address}", flush=True)
    if "gateway" in settings.services:
        print(f'     genai chat --target {address} "What is a large language model?"', flush=True)
    if api_url is not None:
        print(f"     {_curl_line(api_url, settings)}", flush=True)
    if seed is not None:
        await _seed_prompts(platform, seed, settings)
    if ready_file is not None:
        ready: dict[str, object] = {
            "address": address,
            "port": platform.port if isinstance(platform, WorkerPool) else platform.server.port,
            "services": list(platform.hosted_services),
            "metrics_port": platform.metrics_port,
            "http_port": platform.http_port,
            "api_key_file": str(credentials.key_file) if credentials is not None else "",
            "pid": os.getpid(),
        }
        if isinstance(platform, WorkerPool):
            ready["workers"] = list(platform.worker_pids)
        await asyncio.to_thread(_write_atomically, ready_file, json.dumps(ready))

    await stop.wait()
    print(f"shutting down (draining for up to {settings.server.grace_seconds:g} s)", flush=True)
    await platform.stop()
    if ready_file is not None:
        await asyncio.to_thread(ready_file.unlink, missing_ok=True)
    return 0


def _curl_line(api_url: str, settings: PlatformSettings) -> str:
    """A streamed chat completion with curl, as `genai serve` suggests trying one."""
    auth = ' -H "Authorization: Bearer $GENAI_API_KEY"' if settings.auth.mode == "api_key" else ""
    body = json.dumps(
        {
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "What is a large language model?"}],
            "stream": True,
        }
    )
    return (
        f"curl -N {api_url}/chat/completions{auth} -H 'Content-Type: application/json' -d '{body}'"
    )


def _migrate(args: argparse.Namespace) -> int:
    settings = load_settings(PlatformSettings, path=args.config, env=os.environ)
    if args.prompts is not None and not args.prompts.is_dir():
        raise ConfigError([f"--prompts: {args.prompts} is not a folder"])
    if args.bootstrap_admin_key and args.store and "gateway" not in args.store:
        raise ConfigError(["--bootstrap-admin-key: the key lives in the gateway's store"])
    return asyncio.run(
        _migrate_and_seed(settings, args.prompts, args.bootstrap_admin_key, args.store)
    )


async def _migrate_and_seed(
    settings: PlatformSettings,
    prompts: Path | None,
    bootstrap_admin_key: bool,
    stores: Sequence[str] | None = None,
) -> int:
    report = await migrate_all(
        settings, bootstrap_admin_key=bootstrap_admin_key, sections=stores or None
    )
    for line in report.lines():
        print(line, flush=True)
    if prompts is not None:
        # PromptService alone, on a loopback port of its own, for as long as the push takes.
        local = PlatformSettings.model_validate(
            {
                **settings.model_dump(),
                "services": ("prompt",),
                "server": {
                    **settings.server.model_dump(),
                    "host": "127.0.0.1",
                    "port": 0,
                    "workers": 1,
                    "metrics_port": None,
                    "tls_certificate_file": "",
                    "tls_private_key_file": "",
                    "tls_client_ca_file": "",
                },
                "clients": {},
            }
        )
        platform = await start_platform(local)
        try:
            failures = await _seed_prompts(platform, prompts, local)
        finally:
            await platform.stop()
        if failures:
            return 1
    if report.bootstrap_secret:
        print(
            f"platform-admin API key of tenant '{DEFAULT_TENANT}' (shown once, only its hash "
            "is stored; revoke it once you have made your own):",
            flush=True,
        )
        print(f"  export {API_KEY_ENV}={report.bootstrap_secret}", flush=True)
    return 0


def _write_atomically(path: Path, text: str) -> None:
    """Writes `path` whole or not at all (readers never see half of it)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)


async def _seed_prompts(
    platform: Platform | WorkerPool, folder: Path, settings: PlatformSettings
) -> int:
    """Pushes `folder`'s prompt files to the PromptService of `platform` for the `default`
    tenant, over a client channel of its own (TLS as configured); failures are logged, never
    raised. Returns how many files failed (1 when the registry was unreachable)."""
    channel = create_channel(
        platform.address,
        tls=client_tls(settings.clients),
        metadata=internal_metadata(platform.internal_token, DEFAULT_TENANT),
    )
    try:
        report = await prompts_cli.seed_prompts(channel, folder)
    except Exception:  # seeding is a convenience: the platform serves without it
        _logger.exception("seeding prompts from %s failed", folder)
        return 1
    finally:
        await channel.close(None)
    print(f"prompts from {folder}:", flush=True)
    for line in report.lines:
        print(f"  {line}", flush=True)
    if report.failures:
        _logger.error(
            "%d of the prompt files in %s were not seeded (see above)", report.failures, folder
        )
    return report.failures


def _info(args: argparse.Namespace) -> int:
    async def call() -> gateway_service_pb2.GetServerInfoResponse:
        async with _channel(args) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            response: gateway_service_pb2.GetServerInfoResponse = await stub.GetServerInfo(
                gateway_service_pb2.GetServerInfoRequest(), timeout=args.timeout
            )
            return response

    try:
        response = asyncio.run(call())
    except grpc.aio.AioRpcError as error:
        print(f"genai: {args.target}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    print(json_format.MessageToJson(response, indent=2))
    return 0


def _generate(args: argparse.Namespace) -> int:
    parameters = generation_pb2.SamplingParameters(stop=args.stop)
    for field in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
        value = getattr(args, field)
        if value is not None:
            setattr(parameters, field, value)
    request = inference_service_pb2.GenerateStreamRequest(model=args.model, parameters=parameters)
    if args.raw:
        request.text = args.prompt
    else:
        if args.system:
            request.chat.messages.add(role=chat_pb2.CHAT_ROLE_SYSTEM, content=args.system)
        request.chat.messages.add(role=chat_pb2.CHAT_ROLE_USER, content=args.prompt)

    async def stream() -> inference_pb2.GenerationFinal:
        final = inference_pb2.GenerationFinal()
        async with _channel(args) as channel:
            stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
            async for response in stub.GenerateStream(request, timeout=args.timeout):
                if response.HasField("delta"):
                    sys.stdout.write(response.delta.text)
                    sys.stdout.flush()
                elif response.HasField("final"):
                    final = response.final
        return final

    try:
        final = asyncio.run(stream())
    except grpc.aio.AioRpcError as error:
        print(f"\ngenai: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    timings = final.timings
    print(
        f"\n[{final.model} on {final.backend_id}: "
        f"{generation_pb2.FinishReason.Name(final.finish_reason).removeprefix('FINISH_REASON_')}"
        f", {_usage(final.usage)}, "
        f"first token {timings.first_token_duration.ToTimedelta().total_seconds() * 1000:.0f} ms"
        f", total {timings.total_duration.ToTimedelta().total_seconds():.2f} s]",
        file=sys.stderr,
    )
    return 0


def _usage(usage: generation_pb2.TokenUsage) -> str:
    """`12 tokens in, 30 out`, and who counted them when the provider did not."""
    note = {"tokenizer": " (tokenizer count)", "estimate": " (estimate)"}.get(counted_by(usage), "")
    return f"{usage.input_tokens} tokens in, {usage.output_tokens} out{note}"


def _chat(args: argparse.Namespace) -> int:
    return _stream_completion(
        args, "chat", {} if args.message is None else {"message": args.message}
    )


def _complete(args: argparse.Namespace) -> int:
    return _stream_completion(args, "complete", {} if args.text is None else {"text": args.text})


def _stream_completion(args: argparse.Namespace, command: str, variables: dict[str, Any]) -> int:
    """`genai chat` and `genai complete`: StreamComplete, the text to stdout as it streams,
    a summary line to stderr. Whether the model gets chat or raw text input is the prompt's
    (a chat prompt or a text prompt); the commands differ only in their defaults."""
    request = gateway_service_pb2.StreamCompleteRequest(prompt=args.prompt, user_id=args.user)
    if args.label:
        request.label = args.label
    elif args.version is not None:
        request.version = args.version
    for assignment in args.var:
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            print(f"genai {command}: --var {assignment!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        try:
            variables[name] = json.loads(value)
        except ValueError:
            variables[name] = value
    request.variables.update(variables)
    if args.model:
        request.routing.model = args.model
    if args.max_tokens is not None:
        request.parameters.max_tokens = args.max_tokens
    if args.temperature is not None:
        request.parameters.temperature = args.temperature

    async def stream() -> gateway_pb2.CompletionMetadata:
        final = gateway_pb2.CompletionMetadata()
        async with _channel(args) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            async for response in stub.StreamComplete(request, timeout=args.timeout):
                if response.HasField("delta"):
                    sys.stdout.write(response.delta.text)
                    sys.stdout.flush()
                elif response.HasField("final"):
                    final = response.final
        return final

    try:
        final = asyncio.run(stream())
    except grpc.aio.AioRpcError as error:
        print(f"\ngenai: {error_line(error_details(error))}", file=sys.stderr)
        return 1
    cost = final.cost
    print(
        f"\n[{final.prompt} v{final.prompt_version} on {final.model}/{final.backend_id}: "
        f"{generation_pb2.FinishReason.Name(final.finish_reason).removeprefix('FINISH_REASON_')}"
        f", {_usage(final.usage)}, "
        f"cost {cost.units + cost.nanos / 1e9:.6f} {cost.currency_code}, "
        f"first token {final.first_token_duration.ToTimedelta().total_seconds() * 1000:.0f} ms"
        f", total {final.total_duration.ToTimedelta().total_seconds():.2f} s, "
        f"request {final.request_id}]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
