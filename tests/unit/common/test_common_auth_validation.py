"""The principal context, the anonymous authenticator, and the validator registry."""

import asyncio
import re

import pytest

from services.common.auth import (
    DEFAULT_TENANT,
    AnonymousAuthenticator,
    Principal,
    current_principal,
    principal_scope,
    set_current_principal,
)
from services.common.errors import FieldViolation, InvalidArgument, Unauthenticated
from services.common.interceptors import is_infrastructure_method
from services.common.validation import Validators, validate


def test_there_is_no_principal_outside_a_request() -> None:
    with pytest.raises(Unauthenticated):
        current_principal()


def test_principal_scope_sets_and_restores() -> None:
    alice = Principal(tenant_id="acme", subject="alice")

    with principal_scope(alice) as inside:
        assert current_principal() is alice is inside

    with pytest.raises(Unauthenticated):
        current_principal()


async def test_a_principal_set_in_one_task_stays_in_that_task() -> None:
    async def request(subject: str) -> str:
        set_current_principal(Principal(tenant_id="t", subject=subject))
        await asyncio.sleep(0)
        return current_principal().subject

    assert list(await asyncio.gather(request("a"), request("b"))) == ["a", "b"]
    with pytest.raises(Unauthenticated):
        current_principal()


async def test_anonymous_authenticator_admits_everyone_into_the_default_tenant() -> None:
    principal = await AnonymousAuthenticator().authenticate("/pkg.Service/Method", {})

    assert principal == Principal(
        tenant_id=DEFAULT_TENANT, subject="anonymous", attributes={"role": "platform_admin"}
    )
    assert DEFAULT_TENANT == "default"


@pytest.mark.parametrize(
    ("method", "infrastructure"),
    [
        ("/grpc.health.v1.Health/Check", True),
        ("/grpc.health.v1.Health/Watch", True),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", True),
        ("/genai.prompt.v1.PromptService/GetPrompt", False),
        ("/grpc.health.v1.HealthX/Check", False),
    ],
)
def test_infrastructure_methods(method: str, infrastructure: bool) -> None:
    assert is_infrastructure_method(method) is infrastructure


def reject_empty(request: str) -> list[FieldViolation]:
    return [FieldViolation("value", "must not be empty")] if not request else []


def test_validators_are_found_with_or_without_the_leading_slash() -> None:
    validators = Validators({"pkg.Service/Create": reject_empty})

    assert validators.get("/pkg.Service/Create") is reject_empty
    assert validators.get("pkg.Service/Create") is reject_empty
    assert validators.get("/pkg.Service/Delete") is None
    assert validators.methods == frozenset({"pkg.Service/Create"})


def test_a_method_gets_one_validator_only() -> None:
    validators = Validators({"pkg.Service/Create": reject_empty})

    with pytest.raises(ValueError, match=re.escape("pkg.Service/Create")):
        validators.register("/pkg.Service/Create", reject_empty)
    with pytest.raises(ValueError, match=re.escape("pkg.Service/Create")):
        Validators.combine(validators, Validators({"pkg.Service/Create": reject_empty}))


def test_combine_merges_the_registries_of_several_services() -> None:
    combined = Validators.combine(
        Validators({"a.A/X": reject_empty}), Validators({"b.B/Y": reject_empty})
    )

    assert combined.methods == frozenset({"a.A/X", "b.B/Y"})


def test_validate_raises_one_error_with_every_violation() -> None:
    def two(request: object) -> list[FieldViolation]:
        return [FieldViolation("a", "bad"), FieldViolation("b", "worse")]

    validate(reject_empty, "fine")
    with pytest.raises(InvalidArgument) as caught:
        validate(two, "anything")

    assert caught.value.violations == (FieldViolation("a", "bad"), FieldViolation("b", "worse"))


def test_oversized_lists_are_refused_before_they_are_converted() -> None:
    from services.common.validation import count_violations, refuse_oversized

    assert count_violations((("a", [1, 2], 2), ("b", [], 0))) == []
    with pytest.raises(InvalidArgument) as raised:
        refuse_oversized((("version.variables", range(100_000), 128), ("ok", [1], 5)))
    assert [(v.field, v.description) for v in raised.value.violations] == [
        ("version.variables", "at most 128 are allowed, not 100,000")
    ]
