"""The role matrix: every RPC of the contract, called with a key of each role, on one real
platform (all six services in one process, API keys on, a real Triton serving the zero-compute
model and MiniLM).

The methods come from the contract, and every one needs a CASE below: a new RPC fails
`test_every_contract_method_has_a_case` until it is given one. A case builds the request for
the tenant whose resources it addresses, preparing fresh state first where the call mutates it
(with that tenant's platform-admin key). Callers are tenant A's keys (viewer, member,
tenant_admin, platform_admin) and no key at all; they address tenant A's resources (`own`),
tenant B's (`other`: invisible, NOT_FOUND), tenant B's names as a list filter (`filter`: an
empty answer), and protected labels (`protected`: `Rule.elevated`). The expected status is
computed from `services.common.policy.POLICY` alone and compared exactly; an answer that
carries tenant B's content to a tenant-A caller who may not see it fails too.
"""

import asyncio
import enum
import itertools
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
from genai.common.v1 import chat_pb2, generation_pb2, routing_pb2
from genai.evaluation.v1 import evaluation_pb2, evaluation_service_pb2
from genai.experiment.v1 import experiment_pb2, experiment_service_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2
from genai.inference.v1 import inference_service_pb2
from genai.prompt.v1 import prompt_pb2, prompt_service_pb2
from genai.router.v1 import router_service_pb2
from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from services.common.clients import api_key_metadata
from services.common.contract import contract_services
from services.common.policy import POLICY, Role, Rule
from services.common.status import error_details
from services.inference.adapters.tritonserver import TritonServer
from services.platform.bootstrap import ensure_dev_credentials
from services.platform.runner import Platform, start_platform
from services.platform.settings import PlatformSettings
from tests.support.triton import CPU_REPOSITORY, triton_server

pytestmark = [pytest.mark.system, pytest.mark.usefixtures("tritonserver_installed")]

gs = gateway_service_pb2
ps = prompt_service_pb2
xs = experiment_service_pb2
es = evaluation_service_pb2
rs = router_service_pb2
ins = inference_service_pb2
Code = grpc.StatusCode

A: Final = "rm-alpha"
"""The callers' tenant."""
B: Final = "rm-bravo"
"""The other tenant, whose resources tenant A's callers must not see."""
SECRET_OF_B: Final = "bravo-only-7f3a9c"
"""Written into tenant B's content (descriptions, templates, references, key names), never
into a request of a tenant-A caller: an answer to one that contains it leaks tenant B."""
SLOW_INTERVAL_US: Final = 20_000
"""Pace of `zero_llm_slow` (50 tokens/s): its evaluation runs last long enough to cancel."""
SLOW_TOKENS: Final = 100
"""Tokens of the slow prompt: a run of its one example takes about 2 s."""
TIMEOUT: Final = 30.0
CONCURRENT_CASES: Final = 6
"""Cases run at once; the calls of one case run one after another (they share its state)."""

CATALOG = """
currency: USD
models:
  - name: zero
    capabilities: [chat, streaming]
    max_context_tokens: 1000000
    max_output_tokens: 100000
    quality_tier: 1
    backends:
      - {{id: triton-0, kind: triton, endpoint: "{endpoint}", backend_model: zero_llm}}
  - name: zero-slow
    capabilities: [chat, streaming]
    max_context_tokens: 1000000
    max_output_tokens: 100000
    quality_tier: 1
    pinned_only: true
    backends:
      - {{id: triton-0, kind: triton, endpoint: "{endpoint}", backend_model: zero_llm_slow}}
"""


# ------------------------------------------------------------------------------------------
# Callers and calls
# ------------------------------------------------------------------------------------------

METHODS: Final[dict[str, MethodDescriptor]] = {
    f"{service.full_name}/{method.name}": method
    for service in contract_services()
    for method in service.methods
}
"""Every RPC of the contract, by `"pkg.Service/Method"`."""


@dataclass(frozen=True)
class Outcome:
    """How one call ended."""

    code: grpc.StatusCode
    response: Message | None = None
    details: str = ""
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


class CallFailed(AssertionError):
    """A call that prepares state failed."""


class Caller:
    """Calls any contract method with one API key (or none), generically from the method's
    descriptor; a server-streaming call takes its first message and is then cancelled."""

    def __init__(self, channel: grpc.aio.Channel, key: str, role: Role | None, label: str):
        self._channel = channel
        self._metadata = api_key_metadata(key)
        self.role = role
        """The key's role; None: no key."""
        self.label = label
        self.calls = 0

    async def call(self, method: str, request: Message) -> Outcome:
        descriptor = METHODS[method]
        expected = message_factory.GetMessageClass(descriptor.input_type)
        assert isinstance(request, expected), f"{method} takes {expected.__name__}"
        response_class = message_factory.GetMessageClass(descriptor.output_type)
        path = f"/{method}"
        self.calls += 1
        try:
            if not descriptor.server_streaming:
                unary = self._channel.unary_unary(
                    path,
                    request_serializer=_serialize,
                    response_deserializer=response_class.FromString,
                )
                response = await unary(request, metadata=self._metadata, timeout=TIMEOUT)
                return Outcome(Code.OK, response)
            stream = self._channel.unary_stream(
                path, request_serializer=_serialize, response_deserializer=response_class.FromString
            )
            call = stream(request, metadata=self._metadata, timeout=TIMEOUT)
            try:
                first = await call.read()
                if not isinstance(first, Message):  # grpc.aio.EOF: the stream ended
                    return Outcome(await call.code())
                return Outcome(Code.OK, first)
            finally:
                call.cancel()
        except grpc.aio.AioRpcError as error:
            parsed = error_details(error)
            reason = parsed.reason or ""
            return Outcome(error.code(), None, parsed.message, reason, dict(parsed.metadata))

    async def every(self, method: str, request: Message) -> list[Any]:
        """Every message of a server-streaming call that must succeed, to its end."""
        descriptor = METHODS[method]
        response_class = message_factory.GetMessageClass(descriptor.output_type)
        stream = self._channel.unary_stream(
            f"/{method}",
            request_serializer=_serialize,
            response_deserializer=response_class.FromString,
        )
        self.calls += 1
        return [m async for m in stream(request, metadata=self._metadata, timeout=2 * TIMEOUT)]

    async def ok(self, method: str, request: Message) -> Any:
        """The response of a call that must succeed (preparing state)."""
        outcome = await self.call(method, request)
        if outcome.code is not Code.OK or outcome.response is None:
            raise CallFailed(
                f"preparing with {self.label}: {method} failed: {outcome.code.name} "
                f"{outcome.reason} {outcome.details}"
            )
        return outcome.response


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


# ------------------------------------------------------------------------------------------
# The tenants' resources
# ------------------------------------------------------------------------------------------


@dataclass
class Tenant:
    """A tenant, its platform-admin key (to prepare state) and the resources it owns."""

    id: str
    admin: Caller
    content: str
    """Text written into the tenant's content (SECRET_OF_B for tenant B)."""
    served_request: str = ""
    run_ids: list[str] = field(default_factory=list)
    report_ids: list[str] = field(default_factory=list)
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def fresh(self, what: str) -> str:
        """A name no call has used: `rm-alpha-what-7`."""
        return f"{self.id}-{what}-{next(self._counter)}"

    @property
    def chat(self) -> str:
        """The main prompt: versions 1 and 2, labels `production` (protected) and `staging`."""
        return f"{self.id}-chat"

    @property
    def slow(self) -> str:
        """A prompt on `zero-slow`, for evaluation runs that are still running when cancelled."""
        return f"{self.id}-slow"

    def labels_prompt(self, use: str) -> str:
        """A prompt of its own per label-moving case (`delete`, `rollback`, `update`), with
        versions 1 and 2 and `production` protected."""
        return f"{self.id}-{use}"

    @property
    def dataset(self) -> str:
        """The main prompt's dataset (one example): runs and its gate use it."""
        return _dataset_of(self.chat)

    @property
    def growing_dataset(self) -> str:
        """The dataset AddExamples adds to (runs use `dataset`, which stays small)."""
        return f"{self.id}-growing"

    @property
    def experiment(self) -> str:
        """A running experiment of the main prompt, metric `thumbs_up`."""
        return f"{self.id}-ab"


def _version(content: str, word: str, *, model: str = "zero", max_tokens: int = 4) -> Any:
    return prompt_pb2.PromptVersion(
        messages=[
            chat_pb2.ChatMessage(role=chat_pb2.CHAT_ROLE_USER, content=f"Say {word} ({content}).")
        ],
        routing=routing_pb2.RoutingPreferences(model=model),
        parameters=generation_pb2.SamplingParameters(max_tokens=max_tokens, temperature=0),
        commit_message=word,
    )


def _experiment(t: Tenant, name: str) -> Any:
    return experiment_pb2.Experiment(
        name=name,
        description=t.content,
        prompt=t.chat,
        variants=[
            experiment_pb2.Variant(name="control", weight=1, prompt_version=1),
            experiment_pb2.Variant(name="treatment", weight=1, prompt_version=2),
        ],
        control_variant="control",
        unit=experiment_pb2.ASSIGNMENT_UNIT_USER,
        metrics=[
            experiment_pb2.MetricSpec(
                name="thumbs_up", kind=experiment_pb2.METRIC_KIND_BOOLEAN, higher_is_better=True
            )
        ],
    )


def _run(prompt: str, version: int = 1, *, model: str = "zero") -> Any:
    """An evaluation run of `prompt`'s `version` on its dataset (`_dataset_of`)."""
    return evaluation_pb2.EvaluationRun(
        prompt=prompt,
        prompt_version=version,
        dataset=_dataset_of(prompt),
        model=model,
        scorers=[evaluation_pb2.Scorer(name="exact", exact_match={})],
    )


def _dataset_of(prompt: str) -> str:
    """The dataset of a prompt's evaluation runs (and of its evaluation gate)."""
    return f"{prompt}-set"


def _example(t: Tenant, reference: str) -> Any:
    return evaluation_pb2.Example(reference=f"{reference} {t.content}", tags={"set": "matrix"})


_PROMPT = "genai.prompt.v1.PromptService/"
_EXPERIMENT = "genai.experiment.v1.ExperimentService/"
_EVALUATION = "genai.evaluation.v1.EvaluationService/"
_GATEWAY = "genai.gateway.v1.GatewayService/"
_ROUTER = "genai.router.v1.RouterService/"
_INFERENCE = "genai.inference.v1.InferenceService/"


async def _seed(t: Tenant) -> None:
    """Creates the tenant's resources with its platform-admin key.

    A protected label moves only to a version with a passing report of the prompt's evaluation
    gate, so the prompts whose protected label the cases move have a gate that every report
    passes (`exact` >= 0) and a report of each version the moves reach: then the role alone
    decides."""
    admin = t.admin
    gate = prompt_pb2.EvaluationGate(thresholds=[prompt_pb2.GateThreshold(scorer="exact")])
    prompts = {
        t.chat: ("zero", 4, (1,)),
        t.slow: ("zero-slow", SLOW_TOKENS, ()),
        t.labels_prompt("delete"): ("zero", 4, (1,)),
        t.labels_prompt("rollback"): ("zero", 4, (1, 2)),
        t.labels_prompt("update"): ("zero", 4, ()),
    }
    for name, (model, tokens, evaluated) in prompts.items():
        gate.dataset = _dataset_of(name)
        await admin.ok(
            _PROMPT + "CreatePrompt",
            ps.CreatePromptRequest(
                prompt=prompt_pb2.Prompt(
                    name=name,
                    description=t.content,
                    protected_labels=["production"],
                    evaluation_gate=gate if evaluated else None,
                )
            ),
        )
        for word in ("one", "two"):
            await admin.ok(
                _PROMPT + "CreatePromptVersion",
                ps.CreatePromptVersionRequest(
                    prompt=name, version=_version(t.content, word, model=model, max_tokens=tokens)
                ),
            )
        await _dataset(t, _dataset_of(name), name)
        for version in evaluated:
            run_id, report_id = await _evaluate(t, _run(name, version))
            if name == t.chat:
                t.run_ids.append(run_id)
                t.report_ids.append(report_id)
    await _dataset(t, t.growing_dataset, t.chat)
    run_id, report_id = await _evaluate(t, _run(t.chat))
    t.run_ids.append(run_id)
    t.report_ids.append(report_id)
    for label in ("production", "staging"):
        await admin.ok(
            _PROMPT + "SetLabel",
            ps.SetLabelRequest(prompt=t.chat, label=label, version=1, reason=t.content),
        )
    await admin.ok(
        _EXPERIMENT + "CreateExperiment",
        xs.CreateExperimentRequest(experiment=_experiment(t, t.experiment), start=True),
    )
    completed = await admin.ok(_GATEWAY + "Complete", gs.CompleteRequest(prompt=t.chat, version=1))
    t.served_request = completed.metadata.request_id


async def _dataset(t: Tenant, name: str, prompt: str) -> None:
    await t.admin.ok(
        _EVALUATION + "CreateDataset",
        es.CreateDatasetRequest(
            dataset=evaluation_pb2.Dataset(name=name, prompt=prompt, description=t.content)
        ),
    )
    await t.admin.ok(
        _EVALUATION + "AddExamples",
        es.AddExamplesRequest(dataset=name, examples=[_example(t, "first")]),
    )


async def _evaluate(t: Tenant, run: Any) -> tuple[str, str]:
    """Runs an evaluation to its end: (run id, report id)."""
    run_id = report_id = ""
    for event in await t.admin.every(
        _EVALUATION + "StartEvaluationRun", es.StartEvaluationRunRequest(run=run)
    ):
        if event.HasField("run"):
            run_id = event.run.id
        if event.HasField("report"):
            report_id = event.report.id
    assert run_id, f"the seeding run of {run.prompt} sent no run"
    assert report_id, f"the seeding run of {run.prompt} ended without a report"
    return run_id, report_id


# ------------------------------------------------------------------------------------------
# Variants, cases and the expected status
# ------------------------------------------------------------------------------------------


class Reach(enum.Enum):
    """Whose resources a request names."""

    OWN = "own"
    """The caller's tenant's."""
    OTHER = "other"
    """Another tenant's: invisible (NOT_FOUND), as a name that does not exist."""
    FILTER = "filter"
    """Another tenant's name as a list filter: the answer is as for an unknown name, empty."""


@dataclass(frozen=True)
class Variant:
    """One way of calling an RPC."""

    name: str
    reach: Reach
    protected: bool = False
    """The request touches a protected label (or what protects labels)."""
    elevated: bool = False
    """The call needs `Rule.elevated` rather than `Rule.role`."""
    needs: Role | None = None
    """The role the call needs, where neither rule role says it."""


OWN = Variant("own", Reach.OWN)
OTHER = Variant("other", Reach.OTHER)
FILTER = Variant("filter", Reach.FILTER)
PROTECTED = Variant("protected", Reach.OWN, protected=True, elevated=True)
OTHER_PROTECTED = Variant("other protected", Reach.OTHER, protected=True, elevated=True)
"""UpdatePrompt's mask alone says the change is protected: the elevated role is checked before
the prompt is looked up, so a caller without it learns nothing either way."""
OTHER_PROTECTED_LABEL = Variant("other protected", Reach.OTHER, protected=True)
"""A protected label of another tenant: the handler cannot see that it is protected (it does
not exist for the caller), so the move needs the rule's role and is then NOT_FOUND."""
GRANT_PLATFORM_ADMIN = Variant("grant platform_admin", Reach.OWN, needs=Role.PLATFORM_ADMIN)
"""CreateApiKey granting ROLE_PLATFORM_ADMIN: a caller grants at most its own role."""

Builder = Callable[[Tenant, Variant], Awaitable[Message]]
Check = Callable[[Message], str]
"""What is wrong with a `filter` answer ("" when nothing)."""


@dataclass(frozen=True)
class Case:
    """How to call one RPC: the request for a tenant's resources, and its variants."""

    build: Builder
    variants: tuple[Variant, ...] = (OWN,)
    admin_crosses: bool = False
    """A platform admin may act on the other tenant's resource (a tenant, its keys or audit
    log): OK rather than NOT_FOUND."""
    check: Check | None = None
    """For `filter` variants: what is wrong with the answer."""


def given(make: Callable[[Tenant], Message]) -> Builder:
    """A builder of a request that needs no preparation."""

    async def build(t: Tenant, v: Variant) -> Message:
        return make(t)

    return build


def _none_of(field_name: str) -> Check:
    def check(response: Message) -> str:
        found = getattr(response, field_name)
        return f"{len(found)} {field_name} of the other tenant" if len(found) else ""

    return check


def _only_own_logs(response: Message) -> str:
    assert isinstance(response, gs.ListRequestLogsResponse)
    foreign = [e.request_id for e in response.entries if e.tenant_id != A]
    return f"request log entries of another tenant: {foreign}" if foreign else ""


def _no_snapshot_labels(response: Message) -> str:
    assert isinstance(response, ps.WatchLabelsResponse)
    labels = response.snapshot.labels
    return f"{len(labels)} labels of the other tenant" if labels else ""


def _admin_crosses(rule: Rule, case: Case) -> bool:
    return case.admin_crosses or bool(rule.tenant_field)


def expected_code(rule: Rule, case: Case, variant: Variant, role: Role | None) -> grpc.StatusCode:
    """The status POLICY says a caller of `role` (None: no key) gets."""
    if role is None:
        return Code.OK if rule.role is Role.NONE else Code.UNAUTHENTICATED
    if role < _needed(rule, variant):
        return Code.PERMISSION_DENIED
    if variant.reach is not Reach.OTHER:
        return Code.OK
    if role is Role.PLATFORM_ADMIN and _admin_crosses(rule, case):
        return Code.OK
    return Code.NOT_FOUND


def first_missing_role(rule: Rule, variant: Variant, role: Role) -> Role:
    """The role a PERMISSION_DENIED names: the rule's, checked before anything else, then the
    elevated one."""
    return rule.role if role < rule.role else _needed(rule, variant)


def _needed(rule: Rule, variant: Variant) -> Role:
    return variant.needs or (rule.elevated if variant.elevated else None) or rule.role


# ----------------------------------------------------------------------------- gateway cases


async def _complete(t: Tenant, v: Variant) -> Message:
    return gs.CompleteRequest(prompt=t.chat, version=1, user_id="matrix")


async def _stream_complete(t: Tenant, v: Variant) -> Message:
    return gs.StreamCompleteRequest(prompt=t.chat, version=1, user_id="matrix")


async def _create_api_key(t: Tenant, v: Variant) -> Message:
    role = gateway_pb2.ROLE_PLATFORM_ADMIN if v.needs else gateway_pb2.ROLE_VIEWER
    return gs.CreateApiKeyRequest(tenant_id=t.id, display_name="matrix", role=role)


async def _fresh_key(t: Tenant) -> str:
    created = await t.admin.ok(
        _GATEWAY + "CreateApiKey",
        gs.CreateApiKeyRequest(
            tenant_id=t.id, display_name=f"to revoke {t.content}", role=gateway_pb2.ROLE_VIEWER
        ),
    )
    key_id: str = created.key.id
    return key_id


async def _revoke_api_key(t: Tenant, v: Variant) -> Message:
    return gs.RevokeApiKeyRequest(id=await _fresh_key(t))


async def _rotate_api_key(t: Tenant, v: Variant) -> Message:
    return gs.RotateApiKeyRequest(id=await _fresh_key(t))


# ----------------------------------------------------------------------------- prompt cases


async def _update_prompt(t: Tenant, v: Variant) -> Message:
    prompt = prompt_pb2.Prompt(
        name=t.labels_prompt("update"), description="updated", protected_labels=["production"]
    )
    paths = ["protected_labels"] if v.protected else ["description"]
    return ps.UpdatePromptRequest(prompt=prompt, update_mask={"paths": paths})


async def _create_prompt_version(t: Tenant, v: Variant) -> Message:
    word = t.fresh("version")
    return ps.CreatePromptVersionRequest(prompt=t.chat, version=_version("matrix", word))


def _label(v: Variant) -> str:
    return "production" if v.protected else "scratch"


async def _set_label(t: Tenant, v: Variant) -> Message:
    return ps.SetLabelRequest(prompt=t.chat, label=_label(v), version=1, reason="matrix")


async def _delete_label(t: Tenant, v: Variant) -> Message:
    prompt = t.labels_prompt("delete")
    await t.admin.ok(
        _PROMPT + "SetLabel", ps.SetLabelRequest(prompt=prompt, label=_label(v), version=1)
    )
    return ps.DeleteLabelRequest(prompt=prompt, label=_label(v), reason="matrix")


async def _rollback_label(t: Tenant, v: Variant) -> Message:
    prompt = t.labels_prompt("rollback")
    for version in (1, 2):
        await t.admin.ok(
            _PROMPT + "SetLabel",
            ps.SetLabelRequest(prompt=prompt, label=_label(v), version=version),
        )
    return ps.RollbackLabelRequest(prompt=prompt, label=_label(v), reason="matrix")


# ----------------------------------------------------------------------------- experiment cases


async def _new_experiment(t: Tenant, *, start: bool) -> str:
    name = t.fresh("exp")
    await t.admin.ok(
        _EXPERIMENT + "CreateExperiment",
        xs.CreateExperimentRequest(experiment=_experiment(t, name), start=start),
    )
    return name


async def _start_experiment(t: Tenant, v: Variant) -> Message:
    return xs.StartExperimentRequest(name=await _new_experiment(t, start=False))


async def _stop_experiment(t: Tenant, v: Variant) -> Message:
    return xs.StopExperimentRequest(name=await _new_experiment(t, start=True), reason="matrix")


async def _assigned(t: Tenant) -> tuple[str, str]:
    unit = t.fresh("unit")
    assigned = await t.admin.ok(
        _EXPERIMENT + "AssignVariant",
        xs.AssignVariantRequest(experiment=t.experiment, unit_id=unit),
    )
    variant: str = assigned.assignment.variant
    assert variant, f"unit {unit} was held out of {t.experiment}"
    return unit, variant


async def _record_exposure(t: Tenant, v: Variant) -> Message:
    unit, variant = await _assigned(t)
    return xs.RecordExposureRequest(experiment=t.experiment, unit_id=unit, variant=variant)


async def _record_outcome(t: Tenant, v: Variant) -> Message:
    unit, _ = await _assigned(t)
    return xs.RecordOutcomeRequest(
        experiment=t.experiment, unit_id=unit, metric="thumbs_up", boolean_value=True
    )


# ----------------------------------------------------------------------------- evaluation cases


async def _cancel_evaluation_run(t: Tenant, v: Variant) -> Message:
    started = await t.admin.ok(
        _EVALUATION + "StartEvaluationRun",
        es.StartEvaluationRunRequest(run=_run(t.slow, model="zero-slow")),
    )
    assert started.HasField("run"), started
    return es.CancelEvaluationRunRequest(id=started.run.id)


_OWN_OTHER = (OWN, OTHER)
_LABEL_MOVE = (OWN, PROTECTED, OTHER_PROTECTED_LABEL)

CASES: Final[dict[str, Case]] = {
    # GatewayService
    _GATEWAY + "Complete": Case(_complete, _OWN_OTHER),
    _GATEWAY + "StreamComplete": Case(_stream_complete, _OWN_OTHER),
    _GATEWAY + "RecordFeedback": Case(
        given(
            lambda t: gs.RecordFeedbackRequest(
                request_id=t.served_request, metric="thumbs_up", boolean_value=True
            )
        ),
        _OWN_OTHER,
    ),
    _GATEWAY + "ListRequestLogs": Case(
        given(lambda t: gs.ListRequestLogsRequest(prompt=t.chat)),
        (OWN, FILTER),
        check=_only_own_logs,
    ),
    _GATEWAY + "CreateTenant": Case(
        given(lambda t: gs.CreateTenantRequest(tenant=gateway_pb2.Tenant(id=t.fresh("tenant"))))
    ),
    _GATEWAY + "UpdateTenantQuota": Case(
        given(
            lambda t: gs.UpdateTenantQuotaRequest(
                tenant_id=t.id, quota=gateway_pb2.TenantQuota(requests_per_minute=100_000)
            )
        ),
        _OWN_OTHER,
    ),
    _GATEWAY + "CreateApiKey": Case(_create_api_key, (OWN, OTHER, GRANT_PLATFORM_ADMIN)),
    _GATEWAY + "ListApiKeys": Case(
        given(lambda t: gs.ListApiKeysRequest(tenant_id=t.id)), _OWN_OTHER
    ),
    _GATEWAY + "RevokeApiKey": Case(_revoke_api_key, _OWN_OTHER, admin_crosses=True),
    _GATEWAY + "RotateApiKey": Case(_rotate_api_key, _OWN_OTHER, admin_crosses=True),
    _GATEWAY + "ListAuditEvents": Case(
        given(lambda t: gs.ListAuditEventsRequest(tenant_id=t.id)), _OWN_OTHER
    ),
    _GATEWAY + "GetServerInfo": Case(given(lambda t: gs.GetServerInfoRequest())),
    # PromptService
    _PROMPT + "CreatePrompt": Case(
        given(lambda t: ps.CreatePromptRequest(prompt=prompt_pb2.Prompt(name=t.fresh("new"))))
    ),
    _PROMPT + "GetPrompt": Case(given(lambda t: ps.GetPromptRequest(name=t.chat)), _OWN_OTHER),
    _PROMPT + "ListPrompts": Case(
        given(lambda t: ps.ListPromptsRequest(name_prefix=t.chat)),
        (OWN, FILTER),
        check=_none_of("prompts"),
    ),
    _PROMPT + "UpdatePrompt": Case(_update_prompt, (OWN, PROTECTED, OTHER, OTHER_PROTECTED)),
    _PROMPT + "CreatePromptVersion": Case(_create_prompt_version, _OWN_OTHER),
    _PROMPT + "GetPromptVersion": Case(
        given(lambda t: ps.GetPromptVersionRequest(prompt=t.chat, version=1)), _OWN_OTHER
    ),
    _PROMPT + "ListPromptVersions": Case(
        given(lambda t: ps.ListPromptVersionsRequest(prompt=t.chat)), _OWN_OTHER
    ),
    _PROMPT + "DiffPromptVersions": Case(
        given(lambda t: ps.DiffPromptVersionsRequest(prompt=t.chat, from_version=1, to_version=2)),
        _OWN_OTHER,
    ),
    _PROMPT + "SetLabel": Case(_set_label, _LABEL_MOVE),
    _PROMPT + "DeleteLabel": Case(_delete_label, _LABEL_MOVE),
    _PROMPT + "RollbackLabel": Case(_rollback_label, _LABEL_MOVE),
    _PROMPT + "ListLabelHistory": Case(
        given(lambda t: ps.ListLabelHistoryRequest(prompt=t.chat)), _OWN_OTHER
    ),
    _PROMPT + "RenderPrompt": Case(
        given(lambda t: ps.RenderPromptRequest(prompt=t.chat, version=1)), _OWN_OTHER
    ),
    _PROMPT + "WatchLabels": Case(
        given(lambda t: ps.WatchLabelsRequest(prompts=[t.chat])),
        (OWN, FILTER),
        check=_no_snapshot_labels,
    ),
    # ExperimentService
    _EXPERIMENT + "CreateExperiment": Case(
        given(lambda t: xs.CreateExperimentRequest(experiment=_experiment(t, t.fresh("exp"))))
    ),
    _EXPERIMENT + "GetExperiment": Case(
        given(lambda t: xs.GetExperimentRequest(name=t.experiment)), _OWN_OTHER
    ),
    _EXPERIMENT + "ListExperiments": Case(given(lambda t: xs.ListExperimentsRequest())),
    _EXPERIMENT + "StartExperiment": Case(_start_experiment, _OWN_OTHER),
    _EXPERIMENT + "StopExperiment": Case(_stop_experiment, _OWN_OTHER),
    _EXPERIMENT + "SetVariantWeights": Case(
        given(
            lambda t: xs.SetVariantWeightsRequest(
                experiment=t.experiment, weights={"treatment": 1.0}
            )
        ),
        _OWN_OTHER,
    ),
    _EXPERIMENT + "AssignVariant": Case(
        given(lambda t: xs.AssignVariantRequest(experiment=t.experiment, unit_id=t.fresh("u"))),
        _OWN_OTHER,
    ),
    _EXPERIMENT + "RecordExposure": Case(_record_exposure, _OWN_OTHER),
    _EXPERIMENT + "RecordOutcome": Case(_record_outcome, _OWN_OTHER),
    _EXPERIMENT + "GetExperimentResults": Case(
        given(lambda t: xs.GetExperimentResultsRequest(name=t.experiment)), _OWN_OTHER
    ),
    # EvaluationService
    _EVALUATION + "CreateDataset": Case(
        given(
            lambda t: es.CreateDatasetRequest(
                dataset=evaluation_pb2.Dataset(name=t.fresh("set"), prompt=t.chat)
            )
        )
    ),
    _EVALUATION + "GetDataset": Case(
        given(lambda t: es.GetDatasetRequest(name=t.dataset)), _OWN_OTHER
    ),
    _EVALUATION + "ListDatasets": Case(
        given(lambda t: es.ListDatasetsRequest(prompt=t.chat)),
        (OWN, FILTER),
        check=_none_of("datasets"),
    ),
    _EVALUATION + "AddExamples": Case(
        given(
            lambda t: es.AddExamplesRequest(
                dataset=t.growing_dataset, examples=[_example(t, t.fresh("example"))]
            )
        ),
        _OWN_OTHER,
    ),
    _EVALUATION + "ListExamples": Case(
        given(lambda t: es.ListExamplesRequest(dataset=t.dataset)), _OWN_OTHER
    ),
    _EVALUATION + "StartEvaluationRun": Case(
        given(lambda t: es.StartEvaluationRunRequest(run=_run(t.chat))), _OWN_OTHER
    ),
    _EVALUATION + "GetEvaluationRun": Case(
        given(lambda t: es.GetEvaluationRunRequest(id=t.run_ids[0])), _OWN_OTHER
    ),
    _EVALUATION + "ListEvaluationRuns": Case(
        given(lambda t: es.ListEvaluationRunsRequest(prompt=t.chat)),
        (OWN, FILTER),
        check=_none_of("runs"),
    ),
    _EVALUATION + "CancelEvaluationRun": Case(_cancel_evaluation_run, _OWN_OTHER),
    _EVALUATION + "GetEvaluationReport": Case(
        given(lambda t: es.GetEvaluationReportRequest(id=t.report_ids[0])), _OWN_OTHER
    ),
    _EVALUATION + "CompareEvaluationReports": Case(
        given(
            lambda t: es.CompareEvaluationReportsRequest(
                baseline_report_id=t.report_ids[0], candidate_report_id=t.report_ids[1]
            )
        ),
        _OWN_OTHER,
    ),
    _EVALUATION + "ListQualityAlerts": Case(
        given(lambda t: es.ListQualityAlertsRequest(prompt=t.chat)),
        (OWN, FILTER),
        check=_none_of("alerts"),
    ),
    # RouterService: the shared catalog and live statistics, nothing of a tenant's.
    _ROUTER + "ListModels": Case(given(lambda t: rs.ListModelsRequest())),
    _ROUTER + "GetModel": Case(given(lambda t: rs.GetModelRequest(name="zero"))),
    _ROUTER + "Route": Case(
        given(
            lambda t: rs.RouteRequest(
                preferences=routing_pb2.RoutingPreferences(model="zero"),
                input_tokens=8,
                max_output_tokens=4,
            )
        )
    ),
    _ROUTER + "ReportOutcome": Case(
        given(
            lambda t: rs.ReportOutcomeRequest(
                model="zero",
                backend_id="triton-0",
                result=router_service_pb2.ATTEMPT_RESULT_SUCCESS,
            )
        )
    ),
    _ROUTER + "GetBackendHealth": Case(given(lambda t: rs.GetBackendHealthRequest())),
    # InferenceService: models, nothing of a tenant's.
    _INFERENCE + "Generate": Case(
        given(
            lambda t: ins.GenerateRequest(
                model="zero",
                text="one two",
                parameters=generation_pb2.SamplingParameters(max_tokens=2),
            )
        )
    ),
    _INFERENCE + "GenerateStream": Case(
        given(
            lambda t: ins.GenerateStreamRequest(
                model="zero",
                text="one two",
                parameters=generation_pb2.SamplingParameters(max_tokens=2),
            )
        )
    ),
    _INFERENCE + "Embed": Case(
        given(lambda t: ins.EmbedRequest(model="minilm", inputs=["one two"]))
    ),
    _INFERENCE + "ListModels": Case(given(lambda t: ins.ListModelsRequest())),
    _INFERENCE + "GetModelStatus": Case(given(lambda t: ins.GetModelStatusRequest(model="zero"))),
}
"""One case per RPC of the contract."""


def test_every_contract_method_has_a_case() -> None:
    missing = sorted(METHODS.keys() - CASES.keys())
    unknown = sorted(CASES.keys() - METHODS.keys())
    assert not missing, f"contract methods without a CASE in {__name__}: {missing}"
    assert not unknown, f"CASES for methods outside the contract: {unknown}"
    assert METHODS.keys() <= POLICY.keys(), sorted(METHODS.keys() - POLICY.keys())


def test_the_expected_status_follows_the_policy() -> None:
    """The table's arithmetic on rules whose answers are known by heart."""
    member = POLICY[_PROMPT + "SetLabel"]
    case = CASES[_PROMPT + "SetLabel"]
    assert expected_code(member, case, OWN, Role.VIEWER) is Code.PERMISSION_DENIED
    assert expected_code(member, case, OWN, Role.MEMBER) is Code.OK
    assert expected_code(member, case, PROTECTED, Role.MEMBER) is Code.PERMISSION_DENIED
    assert expected_code(member, case, PROTECTED, Role.TENANT_ADMIN) is Code.OK
    assert expected_code(member, case, OTHER_PROTECTED_LABEL, Role.MEMBER) is Code.NOT_FOUND
    assert expected_code(member, case, OTHER_PROTECTED_LABEL, Role.VIEWER) is (
        Code.PERMISSION_DENIED
    )
    assert expected_code(member, case, OWN, None) is Code.UNAUTHENTICATED
    keys = POLICY[_GATEWAY + "ListApiKeys"]
    keys_case = CASES[_GATEWAY + "ListApiKeys"]
    assert expected_code(keys, keys_case, OTHER, Role.TENANT_ADMIN) is Code.NOT_FOUND
    assert expected_code(keys, keys_case, OTHER, Role.PLATFORM_ADMIN) is Code.OK
    prompt_case = CASES[_PROMPT + "GetPrompt"]
    rule = POLICY[_PROMPT + "GetPrompt"]
    assert expected_code(rule, prompt_case, OTHER, Role.PLATFORM_ADMIN) is Code.NOT_FOUND
    info = POLICY[_GATEWAY + "GetServerInfo"]
    assert expected_code(info, CASES[_GATEWAY + "GetServerInfo"], OWN, None) is Code.OK


# ------------------------------------------------------------------------------------------
# The platform
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """zero_llm, a paced copy `zero_llm_slow`, and minilm."""
    root = tmp_path_factory.mktemp("repository")
    for model in ("zero_llm", "minilm"):
        shutil.copytree(CPU_REPOSITORY / model, root / model, symlinks=True)
    slow = root / "zero_llm_slow"
    shutil.copytree(CPU_REPOSITORY / "zero_llm", slow, symlinks=True)
    config = (slow / "config.pbtxt").read_text()
    config = config.replace('name: "zero_llm"', 'name: "zero_llm_slow"')
    config, count = re.subn(
        r'(key: "token_interval_us"\s*value: \{ string_value: )"\d+"',
        rf'\1"{SLOW_INTERVAL_US}"',
        config,
    )
    assert count == 1
    (slow / "config.pbtxt").write_text(config)
    with triton_server(tmp_path_factory.mktemp("triton-log"), None, repository=root) as server:
        yield server


def _settings(triton: TritonServer, data: Path) -> PlatformSettings:
    catalog = data / "catalog.yaml"
    catalog.write_text(CATALOG.format(endpoint=triton.grpc_address))

    def model(name: str, triton_model: str, **fields: Any) -> dict[str, Any]:
        backend = {"id": "triton-0", "endpoint": triton.grpc_address, "triton_model": triton_model}
        return {"name": name, "backends": [backend], **fields}

    def sqlite(name: str) -> str:
        return f"sqlite+aiosqlite:///{data / name}"

    return PlatformSettings.model_validate(
        {
            "auth": {"mode": "api_key", "api_key_cache_seconds": 0},
            "server": {"port": 0, "grace_seconds": 1},
            "prompt": {"database_url": sqlite("prompts.db")},
            "experiment": {"database_url": sqlite("experiments.db")},
            "evaluation": {"database_url": sqlite("evaluation.db")},
            "gateway": {
                "database_url": sqlite("gateway.db"),
                "request_log": {"max_delay_seconds": 0.01},
            },
            "router": {"catalog_file": str(catalog)},
            "inference": {
                "triton": {"launch": False},
                "models": [
                    model("zero", "zero_llm", chat_template="builtin:chatml"),
                    model(
                        "zero-slow",
                        "zero_llm_slow",
                        chat_template="builtin:chatml",
                        max_output_tokens=100_000,
                    ),
                    model("minilm", "minilm", task="embedding"),
                ],
            },
        }
    )


# ------------------------------------------------------------------------------------------
# The matrix
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    method: str
    variant: str
    caller: str
    expected: str
    got: str
    details: str


def _leaks(response: Message | None) -> bool:
    return response is not None and SECRET_OF_B in text_format.MessageToString(response)


async def _run_case(
    method: str, case: Case, callers: Sequence[Caller], tenants: dict[str, Tenant]
) -> tuple[int, list[Mismatch]]:
    rule = POLICY[method]
    mismatches: list[Mismatch] = []
    calls = 0
    for variant in case.variants:
        target = tenants[A] if variant.reach is Reach.OWN else tenants[B]
        for caller in callers:
            request = await case.build(target, variant)
            outcome = await caller.call(method, request)
            calls += 1
            want = expected_code(rule, case, variant, caller.role)
            problem = ""
            if outcome.code is not want:
                problem = outcome.code.name
            elif want is Code.PERMISSION_DENIED:
                assert caller.role is not None
                required = outcome.metadata.get("required_role", "")
                if required != first_missing_role(rule, variant, caller.role).label:
                    problem = f"PERMISSION_DENIED naming required_role={required!r}"
            elif want is Code.OK:
                crossing = variant.reach is Reach.OTHER  # a platform admin's, on purpose
                if not crossing and _leaks(outcome.response):
                    problem = f"OK, but the answer carries tenant {B}'s content"
                elif variant.reach is Reach.FILTER and case.check and outcome.response is not None:
                    problem = case.check(outcome.response)
                    problem = f"OK, but {problem}" if problem else ""
            if problem:
                mismatches.append(
                    Mismatch(
                        method=method,
                        variant=variant.name,
                        caller=caller.label,
                        expected=want.name,
                        got=problem,
                        details=f"{outcome.reason} {outcome.details}".strip()[:200],
                    )
                )
    return calls, mismatches


def _table(mismatches: Sequence[Mismatch]) -> str:
    rows = [("method", "variant", "caller", "expected", "got", "details")] + [
        (m.method, m.variant, m.caller, m.expected, m.got, m.details) for m in mismatches
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True))
        + "  "
        + row[5]
        for row in rows
    )


async def test_every_rpc_answers_every_role_as_the_policy_says(
    triton: TritonServer, tmp_path: Path
) -> None:
    started = time.monotonic()
    platform: Platform = await start_platform(_settings(triton, tmp_path))
    channel = grpc.aio.insecure_channel(platform.address)
    try:
        assert platform.tenants is not None
        dev = await ensure_dev_credentials(platform.tenants, tmp_path / "dev-key")
        developer = Caller(channel, dev.secret, Role.PLATFORM_ADMIN, "dev platform_admin")
        keys: dict[tuple[str, Role], str] = {}
        for tenant_id in (A, B):
            await developer.ok(
                _GATEWAY + "CreateTenant",
                gs.CreateTenantRequest(tenant=gateway_pb2.Tenant(id=tenant_id)),
            )
            for role in (Role.VIEWER, Role.MEMBER, Role.TENANT_ADMIN, Role.PLATFORM_ADMIN):
                created = await developer.ok(
                    _GATEWAY + "CreateApiKey",
                    gs.CreateApiKeyRequest(
                        tenant_id=tenant_id,
                        display_name=f"{role.label} {SECRET_OF_B if tenant_id == B else ''}",
                        role=f"ROLE_{role.name}",  # the contract names the roles as Role does
                    ),
                )
                keys[tenant_id, role] = created.secret
        tenants = {
            tenant_id: Tenant(
                tenant_id,
                Caller(
                    channel,
                    keys[tenant_id, Role.PLATFORM_ADMIN],
                    Role.PLATFORM_ADMIN,
                    f"{tenant_id} platform_admin (preparing)",
                ),
                SECRET_OF_B if tenant_id == B else f"{tenant_id} content",
            )
            for tenant_id in (A, B)
        }
        await asyncio.gather(*(_seed(t) for t in tenants.values()))
        seeded = time.monotonic()

        callers = [
            Caller(channel, keys[A, role], role, role.label)
            for role in (Role.VIEWER, Role.MEMBER, Role.TENANT_ADMIN, Role.PLATFORM_ADMIN)
        ] + [Caller(channel, "", None, "no key")]
        limit = asyncio.Semaphore(CONCURRENT_CASES)

        async def run(method: str) -> tuple[int, list[Mismatch]]:
            async with limit:
                return await _run_case(method, CASES[method], callers, tenants)

        methods = sorted(METHODS)
        results = await asyncio.gather(*(run(method) for method in methods))
        calls = sum(count for count, _ in results)
        mismatches = [m for _, found in results for m in found]
        variants = sum(len(CASES[method].variants) for method in methods)
        preparing = sum(t.admin.calls for t in tenants.values())
        print(
            f"\nrole matrix: {len(methods)} RPCs of {len(contract_services())} services, "
            f"{variants} RPC variants ({variants - len(methods)} beyond `own`) x "
            f"{len(callers)} callers (4 roles + no key) = {calls} calls checked, "
            f"{preparing} calls preparing state; {len(mismatches)} mismatches; "
            f"seeding {seeded - started:.1f} s, matrix {time.monotonic() - seeded:.1f} s"
        )
        assert len(set(methods) & CASES.keys()) == len(METHODS)
        assert calls == variants * len(callers)
        assert not mismatches, (
            f"{len(mismatches)} of {calls} calls got another status than POLICY says:\n"
            + _table(mismatches)
        )
    finally:
        await channel.close(None)
        await platform.stop(grace=1)
