"""Helpers for the tests of every service (imported by tests only)."""

from pydantic import BaseModel

from services.common.config import Settings


def undocumented_settings(model: type[BaseModel], *, prefix: str = "") -> list[str]:
    """Returns the dotted names of fields, also in nested sections, that lack a description or
    a default."""
    problems: list[str] = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        if not (field.description or "").strip():
            problems.append(f"{dotted}: no description")
        if field.is_required():
            problems.append(f"{dotted}: no default")
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            problems.extend(undocumented_settings(annotation, prefix=f"{dotted}."))
    return problems


def assert_settings_documented(model: type[Settings]) -> None:
    """Fails when a field of `model` (or of its sections) has no description or no default."""
    problems = undocumented_settings(model)
    assert not problems, f"{model.__name__} fields need a default and a description: {problems}"
