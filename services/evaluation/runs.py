"""Evaluation run orchestration: prepare a run (resolve its prompt version and judge rubrics,
build its scorers), generate every example x repeat through GatewayService.Complete with
bounded concurrency, score each output, store results in batches, build and store the report,
and stream what happens to every caller following the run.

A run is a task of its own, created by the `StartEvaluationRun` handler (so it inherits the
caller's principal) but not a child of it: as the contract says, a caller that stops reading
stops its stream, not the run. `CancelEvaluationRun` stops it (`EvaluationRunner.cancel`).
Callers attach to a run of this process through its in-memory event feed; a run of another
replica (or one that has ended) is followed by polling the store.

A generation that fails is a failed result (`scorers.failed_generation`), not a failed run; a
run fails when its setup, the store or every single generation fails, and its stream then ends
with that error. Cancelling ends streams with CANCELLED; a server shutdown fails the runs still
going (`the evaluation service stopped`).

A run belongs to the replica that started it (its `owner`), which renews the run's heartbeat
every `lease_seconds / 3`. A replica that dies cannot fail its runs itself, so every replica
fails the runs whose heartbeat is older than `lease_seconds` (their followers then end with
the error, which tells them to start the run again).
"""

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Final, TypeAlias

import grpc
from genai.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from genai.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from genai.prompt.v1 import prompt_service_pb2, prompt_service_pb2_grpc
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.trace import TracerProvider

from services.common import reasons
from services.common.background import every
from services.common.errors import (
    Cancelled,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from services.common.status import error_details, remote_error
from services.common.wire import decimal_amount, seconds
from services.evaluation.adapters.sql_store import SqlEvaluationStore
from services.evaluation.core.model import (
    DEFAULT_LABEL,
    MAX_ERROR_CHARS,
    EvaluationReport,
    EvaluationRun,
    Example,
    ExampleResult,
    LlmJudge,
    RunProgress,
    RunSpec,
    RunState,
    TokenUsage,
    new_id,
    validate_run_spec,
)
from services.evaluation.core.reports import build_report
from services.evaluation.core.scorers import (
    GenerationOutput,
    Scorer,
    build_scorer,
    failed_generation,
    score_output,
)
from services.prompt.client import PromptClient, PromptClients, ResolvedVersion
from services.prompt.core.registry import parse_content

if TYPE_CHECKING:
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceAsyncStub
    InferenceStub = inference_service_pb2_grpc.InferenceServiceAsyncStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceAsyncStub
else:
    GatewayStub = gateway_service_pb2_grpc.GatewayServiceStub
    InferenceStub = inference_service_pb2_grpc.InferenceServiceStub
    PromptStub = prompt_service_pb2_grpc.PromptServiceStub

_logger = logging.getLogger(__name__)

GATEWAY_SERVICE: Final = "genai.gateway.v1.GatewayService"
INFERENCE_SERVICE: Final = "genai.inference.v1.InferenceService"
PROMPT_SERVICE: Final = "genai.prompt.v1.PromptService"
RUN_TAG: Final = "evaluation_run"
"""Request-log tag of every gateway call a run makes; its value is the run id."""
ROLE_TAG: Final = "evaluation_role"
"""Request-log tag saying what a run's gateway call was: `generation` or `judge`."""
POLL_SECONDS: Final = 0.5
"""How often a run of another replica is read from the store while a caller follows it."""
EXAMPLES_PAGE: Final = 1000
CANCEL_WAIT_SECONDS: Final = 5.0
"""How long CancelEvaluationRun waits for the run's task to wind down."""

RunEvent: TypeAlias = EvaluationRun | RunProgress | ExampleResult | EvaluationReport
"""What a run's stream carries: the run (first), progress, results, the report (last)."""
MetadataFor: TypeAlias = Callable[[str], Sequence[tuple[str, str]]]
"""The call metadata (credentials) of calls made on a tenant's behalf."""


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """The prompt version examples are checked against, and why that one: `production` (the
    label) or `latest` (the prompt has no production label)."""

    version: ResolvedVersion
    source: str


# ------------------------------------------------------------------------------ active runs


_Item: TypeAlias = RunEvent | DomainError


class _ActiveRun:
    """A run executing in this process: its task and the queues of the callers following it.
    `outcome` (the report or the error) is kept for callers that attach after the end."""

    def __init__(self, tenant_id: str, run_id: str) -> None:
        self.tenant_id = tenant_id
        self.run_id = run_id
        self.task: asyncio.Task[None] | None = None
        self.cancel_requested = False
        self._queues: set[asyncio.Queue[_Item]] = set()
        self._outcome: EvaluationReport | DomainError | None = None

    def subscribe(self) -> asyncio.Queue[_Item]:
        """A queue of the run's events from now on (the outcome alone, if it has ended)."""
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        if self._outcome is not None:
            queue.put_nowait(self._outcome)
        else:
            self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[_Item]) -> None:
        """Stops feeding `queue`."""
        self._queues.discard(queue)

    def publish(self, event: RunEvent) -> None:
        """Hands `event` to every follower."""
        for queue in self._queues:
            queue.put_nowait(event)

    def end(self, outcome: EvaluationReport | DomainError) -> None:
        """Hands the run's last item (its report or its error) to every follower."""
        if self._outcome is not None:
            return
        self._outcome = outcome
        for queue in self._queues:
            queue.put_nowait(outcome)
        self._queues.clear()


@dataclass(frozen=True, slots=True)
class _Rubric:
    """A judge's rubric version and the variables it declares."""

    version: int
    variables: frozenset[str]


@dataclass
class _Plan:
    """Everything a prepared run needs to execute."""

    tenant_id: str
    run: EvaluationRun
    version: ResolvedVersion
    examples: Sequence[Example]
    scorers: Sequence[Scorer]
    results: list[ExampleResult] = field(default_factory=list)
    first_failure: grpc.aio.AioRpcError | None = None


# ------------------------------------------------------------------------------ runner


class EvaluationRunner:
    """Starts, follows and cancels evaluation runs; see the module docstring.

    `gateway()` and `inference()` give the stubs runs call (in process or over gRPC);
    `prompts` the tenant's prompt clients (None: this process cannot reach PromptService, and
    runs and example checks fail with FAILED_PRECONDITION); `prompt_service()` a
    PromptService stub, used only to find a prompt's latest version when it has no
    `production` label. `metadata_for(tenant)` gives the credentials of calls made for a
    tenant (empty in process, where the caller's principal holds).
    """

    def __init__(
        self,
        store: SqlEvaluationStore,
        *,
        gateway: Callable[[], GatewayStub],
        inference: Callable[[], InferenceStub],
        prompts: PromptClients | None,
        prompt_service: Callable[[], PromptStub] | None = None,
        metadata_for: MetadataFor = lambda _tenant: (),
        max_concurrency: int = 4,
        embedding_model: str = "all-minilm-l6-v2",
        call_timeout_s: float = 120.0,
        batch_size: int = 25,
        flush_seconds: float = 0.5,
        tracer_provider: TracerProvider | None = None,
        lease_seconds: float = 30.0,
    ) -> None:
        self._store = store
        self.owner = uuid.uuid4().hex
        """This replica's id, the owner of the runs it starts."""
        self._lease_seconds = lease_seconds
        self._keeper: asyncio.Task[None] | None = None
        self._gateway = gateway
        self._inference = inference
        self._prompts = prompts
        self._prompt_service = prompt_service
        self._metadata_for = metadata_for
        self._max_concurrency = max_concurrency
        self._embedding_model = embedding_model
        self._call_timeout_s = call_timeout_s
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._tracer = trace.get_tracer("genai.evaluation", tracer_provider=tracer_provider)
        self._active: dict[tuple[str, str], _ActiveRun] = {}
        self._stopping = False
        self._report_listeners: list[Callable[[str, EvaluationReport], None]] = []

    def on_report(self, listener: Callable[[str, EvaluationReport], None]) -> None:
        """Calls `listener(tenant_id, report)` each time a run of this replica finishes (its
        report stored): how the router of this process learns of new scores at once."""
        self._report_listeners.append(listener)

    def _report_stored(self, tenant_id: str, report: EvaluationReport) -> None:
        for listener in self._report_listeners:
            try:
                listener(tenant_id, report)
            except Exception:  # a listener's fault is not the run's
                _logger.exception("a report listener failed for report %s", report.id)

    # -------------------------------------------------------------------------- leases

    def start_keeping(self) -> None:
        """Renews this replica's runs and fails other replicas' orphaned runs, in the
        background, until `close`."""
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep(), name="evaluation-run-leases")

    async def _keep(self) -> None:
        await every(
            self._lease_seconds / 3,
            self._keep_once,
            name="renewing evaluation runs",
            immediately=True,
        )

    async def _keep_once(self) -> None:
        await self._store.heartbeat(self.owner)
        orphans = await self._store.fail_orphaned_runs(int(self._lease_seconds * 1e6))
        for tenant_id, run_id in orphans:
            _logger.warning(
                "evaluation run %s of tenant %s failed: its replica stopped", run_id, tenant_id
            )

    # -------------------------------------------------------------------------- prompts

    async def prompt_client(self, tenant_id: str) -> PromptClient:
        """The tenant's prompt client; FailedPrecondition when PromptService is not wired."""
        if self._prompts is None:
            raise FailedPrecondition(
                "EvaluationService has no PromptService to resolve prompts with",
                metadata={"service": PROMPT_SERVICE},
            )
        return await self._prompts.get(tenant_id)

    async def schema_version(self, tenant_id: str, prompt: str) -> SchemaVersion:
        """The version a dataset's examples are checked against: the prompt's `production`
        version, or its latest version when it has no production label."""
        client = await self.prompt_client(tenant_id)
        try:
            return SchemaVersion(await client.resolve(prompt, label=DEFAULT_LABEL), DEFAULT_LABEL)
        except NotFound as error:
            if error.reason != reasons.LABEL_NOT_FOUND or self._prompt_service is None:
                raise
        try:
            latest = await self._prompt_service().GetPromptVersion(
                prompt_service_pb2.GetPromptVersionRequest(prompt=prompt),
                timeout=self._call_timeout_s,
                metadata=self._metadata(tenant_id),
            )
        except grpc.aio.AioRpcError as error:
            raise remote_error(error, service=PROMPT_SERVICE, what="the prompt registry") from None
        number = latest.version.version
        return SchemaVersion(await client.resolve(prompt, version=number), "latest")

    # -------------------------------------------------------------------------- start

    async def start(
        self, tenant_id: str, spec: RunSpec, *, request_id: str = ""
    ) -> AsyncGenerator[RunEvent, None]:
        """Prepares and starts a run (or, for a `request_id` seen before, finds the run it
        started) and returns its events. Raises before anything streams when the run cannot
        start: InvalidArgument, NotFound (dataset, prompt, version, label, baseline report,
        rubric), FailedPrecondition (an empty dataset)."""
        if self._stopping:
            raise Unavailable("the evaluation service is stopping")
        checked = validate_run_spec(spec)
        dataset = await self._store.get_dataset(tenant_id, checked.dataset)
        if dataset.prompt != checked.prompt:
            raise InvalidArgument(
                violations=[
                    FieldViolation(
                        "run.dataset",
                        f"dataset {dataset.name!r} holds examples of prompt {dataset.prompt!r}, "
                        f"not {checked.prompt!r}",
                    )
                ]
            )
        if dataset.example_count == 0:
            raise FailedPrecondition(
                f"dataset {dataset.name!r} has no examples",
                metadata={"dataset": dataset.name},
            )
        client = await self.prompt_client(tenant_id)
        version = await client.resolve(
            checked.prompt,
            label=checked.prompt_label or None,
            version=checked.prompt_version or None,
        )
        rubrics = await self._rubrics(client, checked)
        run, created = await self._store.create_run(
            tenant_id, checked, request_id=request_id, owner=self.owner
        )
        if not created:
            return self._attach(tenant_id, run)
        try:
            examples = await self._examples(tenant_id, checked.dataset)
            run = await self._store.start_run(
                tenant_id,
                run.id,
                resolved_prompt_version=version.number,
                total=len(examples) * checked.repeats,
            )
        except BaseException as error:
            await self._fail_quietly(tenant_id, run.id, _error_text(error))
            raise
        scorers = self._scorers(tenant_id, run, version, rubrics)
        plan = _Plan(tenant_id, run, version, examples, scorers)
        active = self._active[(tenant_id, run.id)] = _ActiveRun(tenant_id, run.id)
        queue = active.subscribe()
        active.task = asyncio.create_task(self._execute(active, plan), name=f"eval-run-{run.id}")
        return self._follow(active, queue, run)

    async def _rubrics(self, client: PromptClient, spec: RunSpec) -> dict[tuple[str, str], _Rubric]:
        """The rubric version of every judge, resolved once so the whole run uses the same."""
        rubrics: dict[tuple[str, str], _Rubric] = {}
        for scorer in spec.scorers:
            settings = scorer.settings
            if not isinstance(settings, LlmJudge):
                continue
            key = (settings.rubric_prompt, settings.rubric_label or DEFAULT_LABEL)
            if key not in rubrics:
                resolved = await client.resolve(key[0], label=key[1])
                _messages, variables, _shape = parse_content(resolved.content)
                rubrics[key] = _Rubric(resolved.number, frozenset(v.name for v in variables))
        return rubrics

    async def _examples(self, tenant_id: str, dataset: str) -> list[Example]:
        examples: list[Example] = []
        token = ""
        while True:
            page, token = await self._store.list_examples(
                tenant_id, dataset, page_size=EXAMPLES_PAGE, page_token=token
            )
            examples += page
            if not token:
                return examples

    def _scorers(
        self,
        tenant_id: str,
        run: EvaluationRun,
        version: ResolvedVersion,
        rubrics: Mapping[tuple[str, str], _Rubric],
    ) -> list[Scorer]:
        schema = version.content.get("output_schema")
        embed = _InferenceEmbedder(
            self._inference, self._embedding_model, self._call_timeout_s, self._metadata(tenant_id)
        )
        judge = _GatewayJudge(
            self._gateway, run.id, rubrics, self._call_timeout_s, self._metadata(tenant_id)
        )
        return [
            build_scorer(
                spec,
                output_schema=schema if isinstance(schema, Mapping) else None,
                embed=embed,
                judge=judge,
            )
            for spec in run.spec.scorers
        ]

    # -------------------------------------------------------------------------- follow

    def _attach(self, tenant_id: str, run: EvaluationRun) -> AsyncGenerator[RunEvent, None]:
        active = self._active.get((tenant_id, run.id))
        if active is not None:
            return self._follow(active, active.subscribe(), run)
        return self._poll(tenant_id, run)

    async def _follow(
        self, active: _ActiveRun, queue: asyncio.Queue[_Item], first: EvaluationRun
    ) -> AsyncGenerator[RunEvent, None]:
        try:
            yield first
            while True:
                item = await queue.get()
                if isinstance(item, DomainError):
                    raise item
                yield item
                if isinstance(item, EvaluationReport):
                    return
        finally:
            active.unsubscribe(queue)

    async def _poll(self, tenant_id: str, run: EvaluationRun) -> AsyncGenerator[RunEvent, None]:
        """A run this process does not execute, followed through the store."""
        yield run
        progress = run.progress
        while not run.state.terminal:
            await asyncio.sleep(POLL_SECONDS)
            run = await self._store.get_run(tenant_id, run.id)
            if run.progress != progress:
                progress = run.progress
                yield progress
        if run.state is RunState.SUCCEEDED:
            yield await self._store.get_report(tenant_id, run.report_id)
            return
        raise _ended(run)

    # -------------------------------------------------------------------------- cancel

    async def cancel(self, tenant_id: str, run_id: str) -> EvaluationRun:
        """Marks a queued or running run cancelled (FailedPrecondition once it succeeded or
        failed) and stops its task when this process runs it; a run of another replica stops
        at its next store write."""
        cancelled = await asyncio.shield(self._store.cancel_run(tenant_id, run_id))
        active = self._active.get((tenant_id, run_id))
        if active is not None and active.task is not None:
            active.cancel_requested = True
            active.task.cancel()
            await asyncio.wait({active.task}, timeout=CANCEL_WAIT_SECONDS)
        return cancelled

    async def close(self) -> None:
        """Refuses new runs and stops every run of this process, each marked failed (the
        service stopped)."""
        self._stopping = True
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        tasks = [a.task for a in self._active.values() if a.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_WAIT_SECONDS)

    # -------------------------------------------------------------------------- execute

    async def _execute(self, active: _ActiveRun, plan: _Plan) -> None:
        """Runs the plan, records how it ended, then ends the run's feed with its report or
        its error (CANCELLED should a cancellation land while a failure is being recorded)."""
        tenant_id, run_id = plan.tenant_id, plan.run.id
        cancelled = Cancelled(f"evaluation run {run_id} was cancelled", metadata=_ids(run_id))
        try:
            with self._tracer.start_as_current_span(
                "evaluation run", attributes={"genai.evaluation.run_id": run_id}
            ):
                report = await self._generate_and_report(active, plan)
            active.end(report)
        except asyncio.CancelledError:
            if not active.cancel_requested:
                message = "the evaluation service stopped before the run finished"
                await self._fail_quietly(tenant_id, run_id, message)
                active.end(Unavailable(message, metadata=_ids(run_id)))
            raise
        except DomainError as error:
            current = await self._current(tenant_id, run_id)
            if current is not None and current.state is RunState.CANCELLED:
                active.end(cancelled)
            else:
                await self._fail_quietly(tenant_id, run_id, error.message)
                active.end(error)
        except Exception as error:
            _logger.exception("evaluation run %s failed", run_id)
            await self._fail_quietly(tenant_id, run_id, f"internal error ({type(error).__name__})")
            active.end(Internal(f"evaluation run {run_id} failed: internal error"))
        finally:
            active.end(cancelled)  # a no-op once the run's outcome is known
            self._active.pop((tenant_id, run_id), None)

    async def _generate_and_report(self, active: _ActiveRun, plan: _Plan) -> EvaluationReport:
        writer = _ResultWriter(
            self._store,
            plan,
            active,
            batch_size=self._batch_size,
            flush_seconds=self._flush_seconds,
        )
        work: Iterator[tuple[Example, int]] = itertools.product(
            plan.examples, range(plan.run.spec.repeats)
        )

        async def worker() -> None:
            for example, repeat in work:  # one shared iterator: each item is taken once
                result = await self._output(plan, example, repeat)
                plan.results.append(result)
                active.publish(result)
                await writer.add(result)

        workers = [asyncio.create_task(worker()) for _ in range(self._max_concurrency)]
        flusher = asyncio.create_task(writer.flush_periodically())
        try:
            await asyncio.gather(*workers)
        finally:
            writer.stop()  # the flusher is never cancelled in the middle of a write
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, flusher, return_exceptions=True)
        await writer.flush()
        if plan.results and all(r.error for r in plan.results) and plan.first_failure:
            error = remote_error(plan.first_failure, service=GATEWAY_SERVICE, what="the gateway")
            error.message = f"every generation failed; the first: {error.message}"
            raise error
        baseline = (
            await self._store.get_report(plan.tenant_id, plan.run.spec.baseline_report_id)
            if plan.run.spec.baseline_report_id
            else None
        )
        report = build_report(
            plan.run,
            plan.results,
            report_id=new_id(),
            prompt_version=plan.version.number,
            prompt_content_hash=plan.version.content_hash,
            create_time=datetime.now(UTC),
            baseline=baseline,
        )
        await asyncio.shield(self._store.finish_run(plan.tenant_id, report))
        self._report_stored(plan.tenant_id, report)
        return report

    async def _output(self, plan: _Plan, example: Example, repeat: int) -> ExampleResult:
        """One generation of `example`, scored; a failed generation as a failed result."""
        run = plan.run
        request = gateway_service_pb2.CompleteRequest(
            prompt=run.spec.prompt,
            version=plan.version.number,
            request_id=f"eval-{run.id}-{example.id}-{repeat}",
            tags={RUN_TAG: run.id, ROLE_TAG: "generation"},
        )
        json_format.ParseDict(dict(example.inputs), request.variables)
        if run.spec.model:
            request.routing.model = run.spec.model
        started = time.monotonic()
        try:
            response = await self._gateway().Complete(
                request, timeout=self._call_timeout_s, metadata=self._metadata(plan.tenant_id)
            )
        except grpc.aio.AioRpcError as error:
            if plan.first_failure is None:
                plan.first_failure = error
            return failed_generation(
                plan.scorers, example.id, repeat, _rpc_text(error), model=run.spec.model
            )
        output = _generation_output(response, time.monotonic() - started)
        scores = await score_output(plan.scorers, example, output)
        return ExampleResult(
            example_id=example.id,
            repeat=repeat,
            output=output.text,
            scores=scores,
            usage=output.usage,
            cost=output.cost,
            currency=output.currency,
            latency_seconds=output.latency_seconds,
            model=output.model,
        )

    # -------------------------------------------------------------------------- helpers

    def _metadata(self, tenant_id: str) -> tuple[tuple[str, str], ...] | None:
        return tuple(self._metadata_for(tenant_id)) or None

    async def _current(self, tenant_id: str, run_id: str) -> EvaluationRun | None:
        try:
            return await self._store.get_run(tenant_id, run_id)
        except Exception:
            _logger.exception("reading evaluation run %s failed", run_id)
            return None

    async def _fail_quietly(self, tenant_id: str, run_id: str, message: str) -> None:
        """Marks the run failed unless it has ended already (cancelled, say)."""
        try:
            await asyncio.shield(self._store.fail_run(tenant_id, run_id, message[:MAX_ERROR_CHARS]))
        except FailedPrecondition:
            return
        except Exception:
            _logger.exception("marking evaluation run %s failed did not work", run_id)


class _InferenceEmbedder:
    """`scorers.Embedder` on InferenceService.Embed; an empty model means `default_model`."""

    def __init__(
        self,
        inference: Callable[[], InferenceStub],
        default_model: str,
        timeout_s: float,
        metadata: Sequence[tuple[str, str]] | None,
    ) -> None:
        self._inference = inference
        self._default_model = default_model
        self._timeout_s = timeout_s
        self._metadata = metadata

    async def __call__(self, texts: Sequence[str], model: str) -> Sequence[Sequence[float]]:
        """One vector per text; InferenceService's errors as domain errors."""
        try:
            response = await self._inference().Embed(
                inference_service_pb2.EmbedRequest(
                    model=model or self._default_model, inputs=list(texts)
                ),
                timeout=self._timeout_s,
                metadata=self._metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise remote_error(error, service=INFERENCE_SERVICE, what="InferenceService") from None
        return [list(embedding.values) for embedding in response.embeddings]


class _GatewayJudge:
    """`scorers.Judge` on GatewayService.Complete: the rubric version resolved when the run
    started, rendered with the judge variables it declares (`input`, `output`,
    `reference`), on the judge's model or the router's choice."""

    def __init__(
        self,
        gateway: Callable[[], GatewayStub],
        run_id: str,
        rubrics: Mapping[tuple[str, str], _Rubric],
        timeout_s: float,
        metadata: Sequence[tuple[str, str]] | None,
    ) -> None:
        self._gateway = gateway
        self._run_id = run_id
        self._rubrics = rubrics
        self._timeout_s = timeout_s
        self._metadata = metadata

    async def __call__(self, settings: LlmJudge, variables: Mapping[str, str]) -> str:
        """The judge's reply; the gateway's errors as domain errors."""
        rubric = self._rubrics[(settings.rubric_prompt, settings.rubric_label or DEFAULT_LABEL)]
        request = gateway_service_pb2.CompleteRequest(
            prompt=settings.rubric_prompt,
            version=rubric.version,
            tags={RUN_TAG: self._run_id, ROLE_TAG: "judge"},
        )
        request.variables.update({k: v for k, v in variables.items() if k in rubric.variables})
        if settings.model:
            request.routing.model = settings.model
        try:
            response = await self._gateway().Complete(
                request, timeout=self._timeout_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise remote_error(error, service=GATEWAY_SERVICE, what="the gateway") from None
        return response.text


class _ResultWriter:
    """Stores a run's results in batches: when `batch_size` are pending, and at least every
    `flush_seconds`; after each write the stored progress goes to the run's followers."""

    def __init__(
        self,
        store: SqlEvaluationStore,
        plan: _Plan,
        active: _ActiveRun,
        *,
        batch_size: int,
        flush_seconds: float,
    ) -> None:
        self._store = store
        self._plan = plan
        self._active = active
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._pending: list[ExampleResult] = []
        self._lock = asyncio.Lock()
        self._stopped = asyncio.Event()

    async def add(self, result: ExampleResult) -> None:
        """Queues `result`, writing the batch when it is full."""
        self._pending.append(result)
        if len(self._pending) >= self._batch_size:
            await self.flush()

    async def flush_periodically(self) -> None:
        """Writes what is pending every `flush_seconds`, until `stop()`."""
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_seconds):
                    await self._stopped.wait()
            await self.flush()

    def stop(self) -> None:
        """Ends `flush_periodically` after its current write."""
        self._stopped.set()

    async def flush(self) -> None:
        """Writes every pending result (FailedPrecondition once the run was cancelled). The
        write is shielded: a cancelled run never leaves a SQLite write transaction open."""
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            run = await asyncio.shield(
                self._store.add_results(self._plan.tenant_id, self._plan.run.id, batch)
            )
        self._active.publish(run.progress)


def _generation_output(
    response: gateway_service_pb2.CompleteResponse, measured_s: float
) -> GenerationOutput:
    """What the scorers see of a completion: the text, its parsed JSON, timings (the
    gateway's own, or the measured round trip when it reported none), usage, cost, model."""
    metadata = response.metadata
    parsed = (
        json_format.MessageToDict(metadata.output_json)
        if metadata.HasField("output_json")
        else None
    )
    total = seconds(metadata.total_duration) if metadata.HasField("total_duration") else 0.0
    return GenerationOutput(
        text=response.text,
        parsed=parsed,
        first_token_seconds=seconds(metadata.first_token_duration),
        latency_seconds=total or measured_s,
        cost=decimal_amount(metadata.cost) if metadata.HasField("cost") else Decimal(0),
        currency=metadata.cost.currency_code,
        usage=TokenUsage(metadata.usage.input_tokens, metadata.usage.output_tokens),
        model=metadata.model,
    )


def _rpc_text(error: grpc.aio.AioRpcError) -> str:
    """A failed call as `CODE (REASON): message`."""
    details = error_details(error)
    reason = f" ({details.reason})" if details.reason else ""
    return f"{details.code.name}{reason}: {details.message}"[:MAX_ERROR_CHARS]


def _error_text(error: BaseException) -> str:
    if isinstance(error, DomainError):
        return error.message
    if isinstance(error, asyncio.CancelledError):
        return "the caller went away before the run started"
    return f"internal error ({type(error).__name__})"


def _ids(run_id: str) -> dict[str, str]:
    return {"run_id": run_id}


def _ended(run: EvaluationRun) -> DomainError:
    """The error a follower of a run that failed or was cancelled gets."""
    if run.state is RunState.CANCELLED:
        return Cancelled(f"evaluation run {run.id} was cancelled", metadata=_ids(run.id))
    return FailedPrecondition(
        f"evaluation run {run.id} failed: {run.error}",
        metadata={**_ids(run.id), "state": run.state.value},
    )
