"""Renders conversations with each model's own chat template (Jinja, sandboxed), the way
Hugging Face tokenizers define it: `messages`, `add_generation_prompt`, special tokens."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.common.errors import FieldViolation, InvalidArgument
from services.inference.core.model import ChatTurn

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""The ChatML layout, for models configured with `builtin:chatml`."""


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    """A model's template source and the special tokens it may reference."""

    source: str
    bos_token: str = ""
    eos_token: str = ""


def load_chat_template(location: str) -> ChatTemplate:
    """Reads a template: `builtin:chatml`, a `.jinja` file, a `tokenizer_config.json`, or a
    tokenizer directory holding `chat_template.jinja` and/or `tokenizer_config.json`."""
    if location == "builtin:chatml":
        return ChatTemplate(CHATML)
    path = Path(location)
    if path.is_dir():
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        jinja_file = path / "chat_template.jinja"
        source = jinja_file.read_text() if jinja_file.exists() else config.get("chat_template")
        if not source:
            raise ValueError(f"{path} has no chat template")
        return ChatTemplate(
            str(source), _token(config.get("bos_token")), _token(config.get("eos_token"))
        )
    if path.suffix == ".json":
        config = json.loads(path.read_text())
        return ChatTemplate(
            str(config["chat_template"]),
            _token(config.get("bos_token")),
            _token(config.get("eos_token")),
        )
    return ChatTemplate(path.read_text())


def _token(value: Any) -> str:
    if isinstance(value, dict):  # {"content": "<|im_start|>", ...}
        return str(value.get("content", ""))
    return str(value) if value else ""


def _raise(message: str) -> NoReturn:
    raise InvalidArgument(violations=[FieldViolation("chat.messages", message)])


def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined
    )
    environment.globals["raise_exception"] = _raise
    return environment


class CompiledChatTemplate:
    """One chat template, compiled once in a sandbox."""

    def __init__(self, template: ChatTemplate) -> None:
        self._spec = template
        self._template = _environment().from_string(template.source)

    def render(self, messages: Sequence[ChatTurn]) -> str:
        """The prompt for `messages`, ending with the opener of the assistant's turn; raises
        `InvalidArgument` on `chat.messages` when the template refuses them."""
        try:
            return self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=True,
                bos_token=self._spec.bos_token,
                eos_token=self._spec.eos_token,
            )
        except TemplateError as error:
            raise InvalidArgument(
                violations=[FieldViolation("chat.messages", f"the chat template failed: {error}")]
            ) from None


class JinjaChatTemplates:
    """The chat templates of the served models, compiled once."""

    def __init__(self, templates: Mapping[str, ChatTemplate]) -> None:
        self._templates = {model: CompiledChatTemplate(t) for model, t in templates.items()}

    def render(self, model: str, messages: Sequence[ChatTurn]) -> str:
        """The prompt for `messages`, ending with the opener of the assistant's turn."""
        template = self._templates.get(model)
        if template is None:  # the engine refuses such requests first (ModelSpec.input_kinds)
            raise InvalidArgument(
                violations=[
                    FieldViolation(
                        "chat",
                        f"model {model!r} has no chat template, so it takes `text` input only: "
                        "send the prompt as `text`",
                    )
                ],
                metadata={"model": model},
            )
        return template.render(messages)
