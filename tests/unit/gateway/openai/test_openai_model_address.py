"""`model` addresses a catalog model, or a prompt version by label or number."""

import pytest

from services.gateway.openai.convert import ModelAddress, model_address
from services.gateway.openai.errors import WireError


@pytest.mark.parametrize(
    ("model", "address"),
    [
        ("smollm2-135m-instruct", ModelAddress(catalog="smollm2-135m-instruct")),
        ("gemma3-270m", ModelAddress(catalog="gemma3-270m")),
        ("prompt:chat", ModelAddress(prompt="chat")),
        ("prompt:chat@production", ModelAddress(prompt="chat", label="production")),
        ("prompt:chat@canary-2", ModelAddress(prompt="chat", label="canary-2")),
        ("prompt:chat@7", ModelAddress(prompt="chat", version=7)),
        ("prompt:chat@007", ModelAddress(prompt="chat", version=7)),
        ("prompt:summarize@v7", ModelAddress(prompt="summarize", label="v7")),
    ],
)
def test_addresses(model: str, address: ModelAddress) -> None:
    assert model_address(model) == address


@pytest.mark.parametrize(
    "model",
    [
        "",
        "prompt:",
        "prompt:@production",
        "prompt:chat@",
        "prompt:chat@0",
        "prompt:chat@99999999999",
    ],
)
def test_malformed_addresses_are_400_on_model(model: str) -> None:
    with pytest.raises(WireError) as raised:
        model_address(model)
    assert (raised.value.status, raised.value.param) == (400, "model")
