"""Per-method request validators, run by the validation interceptor before the handler.

A validator takes a request message and returns every `FieldViolation` it finds (an empty list
when the request is valid); the interceptor raises one `InvalidArgument` listing all of them.
This module imports no grpc.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from typing import Any

from services.common.errors import FieldViolation, InvalidArgument

Validator = Callable[[Any], Iterable[FieldViolation]]
"""Returns the violations in one request message; typed `Any` because each method has its own
request type."""


def method_key(method: str) -> str:
    """Returns `"pkg.Service/Method"` for either that or gRPC's `"/pkg.Service/Method"`."""
    return method.removeprefix("/")


class Validators:
    """Registry of validators by full method name (`"genai.prompt.v1.PromptService/CreatePrompt"`;
    a leading `/` is accepted too)."""

    def __init__(self, validators: Mapping[str, Validator] | None = None) -> None:
        self._by_method: dict[str, Validator] = {}
        for method, validator in (validators or {}).items():
            self.register(method, validator)

    def register(self, method: str, validator: Validator) -> None:
        """Adds the validator of `method`; raises ValueError if it already has one."""
        key = method_key(method)
        if key in self._by_method:
            raise ValueError(f"a validator for {key} is registered already")
        self._by_method[key] = validator

    def get(self, method: str) -> Validator | None:
        """Returns the validator of `method`, None if it has none."""
        return self._by_method.get(method_key(method))

    @property
    def methods(self) -> frozenset[str]:
        """The methods that have a validator."""
        return frozenset(self._by_method)

    @classmethod
    def combine(cls, *registries: "Validators") -> "Validators":
        """Merges the registries of several services served together; duplicates are an error."""
        combined = cls()
        for registry in registries:
            for method, validator in registry._by_method.items():
                combined.register(method, validator)
        return combined


def count_violations(limits: Iterable[tuple[str, Sized, int]]) -> list[FieldViolation]:
    """A violation for each `(field, items, limit)` with more than `limit` items: checked on
    the wire message before a handler converts it, so a request with a million list entries
    is refused in microseconds instead of being converted first."""
    return [
        FieldViolation(field, f"at most {limit} are allowed, not {len(items):,}")
        for field, items, limit in limits
        if len(items) > limit
    ]


def refuse_oversized(limits: Iterable[tuple[str, Sized, int]]) -> None:
    """Raises `InvalidArgument` for the lists of `limits` that are too long (see
    `count_violations`)."""
    violations = count_violations(limits)
    if violations:
        raise InvalidArgument(violations=violations)


def validate(validator: Validator, request: object) -> None:
    """Raises `InvalidArgument` with every violation `validator` finds in `request`."""
    violations: Sequence[FieldViolation] = tuple(validator(request))
    if violations:
        raise InvalidArgument(violations=violations)
