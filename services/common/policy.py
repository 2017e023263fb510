"""Who may call what: the roles, and the one policy table from every RPC to the role it needs.

The access layer (`services.common.access.AccessInterceptor`) applies this table to every RPC
of every service before the handler runs, so no handler checks roles itself. A handler only
says when a call touches something protected (`elevate`): a move of a protected label needs
`Rule.elevated` instead of `Rule.role`, and is audited.

- `Role.VIEWER`: reads its tenant's prompts, experiments, evaluations, models and request log.
- `Role.MEMBER`: completions, feedback, prompt authoring, datasets and evaluation runs.
- `Role.TENANT_ADMIN`: its own tenant's keys, protected label moves, experiments, audit log.
- `Role.PLATFORM_ADMIN`: tenants, quotas, and any tenant's keys and audit log.

Each role may do what the roles below it may. Resources of another tenant are invisible: a
request naming another tenant (`Rule.tenant_field`) answers NOT_FOUND unless the caller is a
platform admin, exactly as a name that does not exist. The role is checked first, so a caller
without the role learns nothing about other tenants either. This module imports no grpc.
"""

import enum
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final

from services.common import reasons
from services.common.auth import Principal, current_principal
from services.common.errors import NotFound, PermissionDenied

ROLE: Final = "role"
"""`Principal.attributes` key: the caller's role, as `Role.label`."""
INTERNAL: Final = "internal"
"""`Principal.attributes` key: `"true"` for the platform's own service-to-service calls."""


class Role(enum.IntEnum):
    """What a caller may do; the values are those of the contract's `genai.gateway.v1.Role`."""

    NONE = 0
    """No role: an unauthenticated caller of a public method."""
    VIEWER = 1
    MEMBER = 2
    TENANT_ADMIN = 3
    PLATFORM_ADMIN = 4

    @property
    def label(self) -> str:
        """The role's name in rules, comments and metadata: `tenant_admin`, ..."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> "Role":
        """The role named `label` (`Role.NONE` for an unknown or empty name: fail closed)."""
        try:
            return cls[label.upper()]
        except KeyError:
            return cls.NONE


ASSIGNABLE_ROLES: Final = (Role.VIEWER, Role.MEMBER, Role.TENANT_ADMIN, Role.PLATFORM_ADMIN)
"""The roles an API key may have."""


@dataclass(frozen=True, slots=True)
class Rule:
    """What one RPC needs."""

    role: Role
    """The role the caller needs; `Role.NONE`: any caller, without credentials."""
    elevated: Role | None = None
    """The role a call needs when the handler says it touches something protected."""
    audited: bool = False
    """Every call is appended to the audit log, whatever its outcome (elevated calls are
    audited too)."""
    tenant_field: str = ""
    """A request field naming the tenant the call acts on (empty there: the caller's own)."""
    target: str = ""
    """The audit log's target: a template over request fields, `api_key/{id}`."""


_V, _M, _T, _P = Role.VIEWER, Role.MEMBER, Role.TENANT_ADMIN, Role.PLATFORM_ADMIN
_GATEWAY: Final = "genai.gateway.v1.GatewayService/"
_PROMPT: Final = "genai.prompt.v1.PromptService/"
_EXPERIMENT: Final = "genai.experiment.v1.ExperimentService/"
_EVALUATION: Final = "genai.evaluation.v1.EvaluationService/"
_ROUTER: Final = "genai.router.v1.RouterService/"
_INFERENCE: Final = "genai.inference.v1.InferenceService/"
_LABEL_TARGET: Final = "prompt/{prompt}/label/{label}"

POLICY: Final[Mapping[str, Rule]] = {
    # GatewayService
    _GATEWAY + "Complete": Rule(_M),
    _GATEWAY + "StreamComplete": Rule(_M),
    _GATEWAY + "RecordFeedback": Rule(_M),
    _GATEWAY + "ListRequestLogs": Rule(_V),
    _GATEWAY + "CreateTenant": Rule(_P, audited=True, target="tenant/{tenant.id}"),
    _GATEWAY + "UpdateTenantQuota": Rule(
        _P, audited=True, tenant_field="tenant_id", target="tenant/{tenant_id}"
    ),
    _GATEWAY + "CreateApiKey": Rule(
        _T, audited=True, tenant_field="tenant_id", target="tenant/{tenant_id}/api_key"
    ),
    _GATEWAY + "ListApiKeys": Rule(_T, tenant_field="tenant_id"),
    _GATEWAY + "RevokeApiKey": Rule(_T, audited=True, target="api_key/{id}"),
    _GATEWAY + "RotateApiKey": Rule(_T, audited=True, target="api_key/{id}"),
    _GATEWAY + "ListAuditEvents": Rule(_T, tenant_field="tenant_id"),
    _GATEWAY + "GetServerInfo": Rule(Role.NONE),
    # PromptService
    _PROMPT + "CreatePrompt": Rule(_M),
    _PROMPT + "GetPrompt": Rule(_V),
    _PROMPT + "ListPrompts": Rule(_V),
    _PROMPT + "UpdatePrompt": Rule(_M, elevated=_T, target="prompt/{prompt.name}"),
    _PROMPT + "CreatePromptVersion": Rule(_M),
    _PROMPT + "GetPromptVersion": Rule(_V),
    _PROMPT + "ListPromptVersions": Rule(_V),
    _PROMPT + "DiffPromptVersions": Rule(_V),
    _PROMPT + "SetLabel": Rule(_M, elevated=_T, target=_LABEL_TARGET),
    _PROMPT + "DeleteLabel": Rule(_M, elevated=_T, target=_LABEL_TARGET),
    _PROMPT + "RollbackLabel": Rule(_M, elevated=_T, target=_LABEL_TARGET),
    _PROMPT + "ListLabelHistory": Rule(_V),
    _PROMPT + "RenderPrompt": Rule(_V),
    _PROMPT + "WatchLabels": Rule(_V),
    # ExperimentService
    _EXPERIMENT + "CreateExperiment": Rule(_T, audited=True, target="experiment/{experiment.name}"),
    _EXPERIMENT + "GetExperiment": Rule(_V),
    _EXPERIMENT + "ListExperiments": Rule(_V),
    _EXPERIMENT + "StartExperiment": Rule(_T, audited=True, target="experiment/{name}"),
    _EXPERIMENT + "StopExperiment": Rule(_T, audited=True, target="experiment/{name}"),
    _EXPERIMENT + "SetVariantWeights": Rule(_T, audited=True, target="experiment/{name}"),
    _EXPERIMENT + "AssignVariant": Rule(_M),
    _EXPERIMENT + "RecordExposure": Rule(_M),
    _EXPERIMENT + "RecordOutcome": Rule(_M),
    _EXPERIMENT + "GetExperimentResults": Rule(_V),
    # EvaluationService
    _EVALUATION + "CreateDataset": Rule(_M),
    _EVALUATION + "GetDataset": Rule(_V),
    _EVALUATION + "ListDatasets": Rule(_V),
    _EVALUATION + "AddExamples": Rule(_M),
    _EVALUATION + "ListExamples": Rule(_V),
    _EVALUATION + "StartEvaluationRun": Rule(_M),
    _EVALUATION + "GetEvaluationRun": Rule(_V),
    _EVALUATION + "ListEvaluationRuns": Rule(_V),
    _EVALUATION + "CancelEvaluationRun": Rule(_M),
    _EVALUATION + "GetEvaluationReport": Rule(_V),
    _EVALUATION + "CompareEvaluationReports": Rule(_V),
    _EVALUATION + "ListQualityAlerts": Rule(_V),
    # RouterService
    _ROUTER + "ListModels": Rule(_V),
    _ROUTER + "GetModel": Rule(_V),
    _ROUTER + "Route": Rule(_M),
    # Live routing statistics are shared by every tenant: only the platform reports outcomes.
    _ROUTER + "ReportOutcome": Rule(_P),
    _ROUTER + "GetBackendHealth": Rule(_V),
    # InferenceService
    _INFERENCE + "Generate": Rule(_M),
    _INFERENCE + "GenerateStream": Rule(_M),
    _INFERENCE + "Embed": Rule(_M),
    _INFERENCE + "ListModels": Rule(_V),
    _INFERENCE + "GetModelStatus": Rule(_V),
}
"""Every RPC of the contract, by `"pkg.Service/Method"`. A method missing here is refused
(PERMISSION_DENIED), and a test fails for every contract method without a rule."""


def rule_of(method: str) -> Rule | None:
    """The rule of `method` (`"/pkg.Service/Method"` or without the slash); None if it has
    none."""
    return POLICY.get(method.removeprefix("/"))


def role_of(principal: Principal) -> Role:
    """The caller's role: the platform's internal calls act as platform admins of the tenant
    they name; a principal without a role has none (fail closed)."""
    if principal.attributes.get(INTERNAL) == "true":
        return Role.PLATFORM_ADMIN
    return Role.from_label(principal.attributes.get(ROLE, ""))


def require(principal: Principal, needed: Role, *, action: str) -> None:
    """Raises `PermissionDenied` unless `principal` has at least `needed`."""
    role = role_of(principal)
    if role < needed:
        raise PermissionDenied(
            f"{action} needs the {needed.label} role; the caller "
            + (f"is a {role.label}" if role is not Role.NONE else "has no role"),
            reason=reasons.PERMISSION_DENIED,
            metadata={
                "required_role": needed.label,
                "role": role.label,
                "subject": principal.subject,
            },
        )


def scope_tenant(principal: Principal, tenant_id: str, *, what: str = "tenant") -> str:
    """The tenant a call acts on: `tenant_id`, or the caller's when it is empty.

    Another tenant than the caller's is NOT_FOUND (invisible) unless the caller is a platform
    admin."""
    if not tenant_id or tenant_id == principal.tenant_id:
        return principal.tenant_id
    if role_of(principal) >= Role.PLATFORM_ADMIN:
        return tenant_id
    raise NotFound(
        f"{what} {tenant_id!r} not found",
        reason=reasons.TENANT_NOT_FOUND,
        metadata={"tenant_id": tenant_id},
    )


def sees_every_tenant(principal: Principal) -> bool:
    """Whether the caller may act on any tenant's resources (a platform admin)."""
    return role_of(principal) >= Role.PLATFORM_ADMIN


# ------------------------------------------------------------------------- per-call state


@dataclass
class CallAccess:
    """What the access layer and the handler know about the RPC being handled."""

    method: str
    rule: Rule
    elevated: bool = False
    """The handler said the call touches something protected."""
    target: str = ""
    """The audit target the handler named (overrides the rule's template)."""
    tenant_id: str = ""
    """The tenant the call acted in, where the handler knows better than the request (the
    tenant of a key revoked by id)."""


_current_call: ContextVar[CallAccess | None] = ContextVar("genai_call_access", default=None)


@contextmanager
def call_scope(access: CallAccess) -> Iterator[CallAccess]:
    """Makes `access` the current call's for the block (the access layer does this)."""
    token = _current_call.set(access)
    try:
        yield access
    finally:
        # A streaming handler that grpc.aio dropped when its client went away is closed later
        # by asyncio, from a task of its own: the RPC's task, whose context held the value, is
        # gone, there is nothing to restore, and resetting raises ValueError.
        with suppress(ValueError):
            _current_call.reset(token)


def elevate(target: str = "") -> None:
    """Says that the current call touches something protected (a protected label): it then
    needs the rule's `elevated` role, else raises `PermissionDenied`, and is audited.

    Outside an RPC served through the access layer (a test calling a servicer directly, a
    library use) the call is checked against the principal alone when there is one."""
    access = _current_call.get()
    if access is None:
        return
    if target:
        access.target = target
    access.elevated = True
    needed = access.rule.elevated or access.rule.role
    require(current_principal(), needed, action=f"{access.method.rsplit('/', 1)[-1]} on {target}")


def set_audit_target(target: str, *, tenant_id: str = "") -> None:
    """Names what the current call acted on, for the audit log (e.g. the id of a new key), and
    the tenant it belongs to when the request did not name it."""
    access = _current_call.get()
    if access is not None:
        access.target = target
        if tenant_id:
            access.tenant_id = tenant_id
