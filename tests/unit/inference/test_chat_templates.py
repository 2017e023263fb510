"""Chat templates: the model's own Jinja template, sandboxed, with the caller's messages."""

import json
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.inference.adapters.chat_templates import (
    ChatTemplate,
    JinjaChatTemplates,
    load_chat_template,
)
from services.inference.core.model import ChatTurn

CONVERSATION = (ChatTurn("system", "Be brief."), ChatTurn("user", "Capital of France?"))


def test_builtin_chatml_ends_with_the_assistant_opener() -> None:
    templates = JinjaChatTemplates({"m": load_chat_template("builtin:chatml")})
    assert templates.render("m", CONVERSATION) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_template_from_a_tokenizer_dir_with_special_tokens(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": {"content": "<s>"},
                "eos_token": "</s>",
                "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]"
                "{{ m['content'] }}{{ eos_token }}{% endfor %}",
            }
        )
    )
    templates = JinjaChatTemplates({"m": load_chat_template(str(tmp_path))})
    assert (
        templates.render("m", CONVERSATION)
        == "<s>[system]Be brief.</s>[user]Capital of France?</s>"
    )


def test_a_separate_chat_template_file_wins(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "old"}))
    (tmp_path / "chat_template.jinja").write_text("{{ messages | length }} turns")
    templates = JinjaChatTemplates({"m": load_chat_template(str(tmp_path))})
    assert templates.render("m", CONVERSATION) == "2 turns"


def test_a_model_without_template_refuses_chat_as_a_violation_on_chat() -> None:
    with pytest.raises(InvalidArgument) as raised:
        JinjaChatTemplates({}).render("m", CONVERSATION)
    assert [v.field for v in raised.value.violations] == ["chat"]
    assert "takes `text` input only" in raised.value.violations[0].description
    assert raised.value.metadata == {"model": "m"}


def test_the_template_cannot_reach_python_internals() -> None:
    evil = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InvalidArgument):
        JinjaChatTemplates({"m": evil}).render("m", CONVERSATION)


def test_raise_exception_in_a_template_is_a_field_violation() -> None:
    strict = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InvalidArgument) as raised:
        JinjaChatTemplates({"m": strict}).render("m", CONVERSATION)
    assert raised.value.violations[0].description == "roles must alternate"
