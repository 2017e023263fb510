"""The CPU models' config.pbtxt files expose exactly the facades of triton_models/README.md
(parsed as Triton's ModelConfig, no server needed)."""

from pathlib import Path

import pytest
from genai_triton import facade
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ROOT = Path(__file__).resolve().parents[3]
CPU = ROOT / "triton_models" / "cpu"
DataType = model_config_pb2.DataType

GENERATION_INPUTS = {
    # name: (type, dims, optional)
    "text_input": (DataType.TYPE_STRING, [1], False),
    "max_tokens": (DataType.TYPE_INT32, [1], False),
    "stream": (DataType.TYPE_BOOL, [1], True),
    "end_id": (DataType.TYPE_INT32, [1], True),
    "pad_id": (DataType.TYPE_INT32, [1], True),
    "temperature": (DataType.TYPE_FP32, [1], True),
    "top_k": (DataType.TYPE_INT32, [1], True),
    "top_p": (DataType.TYPE_FP32, [1], True),
    "repetition_penalty": (DataType.TYPE_FP32, [1], True),
    "presence_penalty": (DataType.TYPE_FP32, [1], True),
    "frequency_penalty": (DataType.TYPE_FP32, [1], True),
    "seed": (DataType.TYPE_UINT64, [1], True),
    "stop_words": (DataType.TYPE_STRING, [-1], True),
    "bad_words": (DataType.TYPE_STRING, [-1], True),
    "exclude_input_in_output": (DataType.TYPE_BOOL, [1], True),
    "guided_decoding_guide_type": (DataType.TYPE_STRING, [1], True),
    "guided_decoding_guide": (DataType.TYPE_STRING, [1], True),
}
GENERATION_OUTPUTS = {
    "text_output": (DataType.TYPE_STRING, [-1]),
    "num_input_tokens": (DataType.TYPE_INT32, [1]),
    "num_output_tokens": (DataType.TYPE_INT32, [1]),
    "finish_reason": (DataType.TYPE_STRING, [1]),
}


def load(model: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((CPU / model / "config.pbtxt").read_text(), config)
    return config


@pytest.mark.parametrize("model", ["ensemble", "zero_llm"])
def test_generation_models_expose_exactly_the_generation_facade(model: str) -> None:
    config = load(model)

    assert config.name == model
    assert config.max_batch_size > 0
    assert config.model_transaction_policy.decoupled
    inputs = {i.name: (i.data_type, list(i.dims), i.optional) for i in config.input}
    outputs = {o.name: (o.data_type, list(o.dims)) for o in config.output}
    assert inputs == GENERATION_INPUTS
    assert outputs == GENERATION_OUTPUTS
    assert (CPU / model / "1" / "model.py").is_file()


def test_the_facade_module_names_every_input_and_output() -> None:
    assert set(facade.GENERATION_INPUTS) == set(GENERATION_INPUTS)
    assert {
        facade.TEXT_OUTPUT,
        facade.NUM_INPUT_TOKENS,
        facade.NUM_OUTPUT_TOKENS,
        facade.FINISH_REASON,
    } == set(GENERATION_OUTPUTS)


def test_zero_llm_paces_from_a_config_parameter_defaulting_to_zero() -> None:
    parameters = load("zero_llm").parameters

    assert parameters["token_interval_us"].string_value == "0"
    assert int(parameters["context_length"].string_value) > 0


def test_minilm_exposes_the_embedding_facade_with_dynamic_batching() -> None:
    config = load("minilm")

    assert config.name == "minilm"
    assert config.max_batch_size >= 32  # InferenceService sends up to 32 texts per request
    assert config.HasField("dynamic_batching")
    assert not config.model_transaction_policy.decoupled
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in config.input] == [
        ("text_input", DataType.TYPE_STRING, [1], False)
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        (facade.EMBEDDING, DataType.TYPE_FP32, [384]),
        ("num_input_tokens", DataType.TYPE_INT32, [1]),
    ]


def test_tensorrt_llm_takes_the_guide_and_the_seed_under_tensorrt_llm_names() -> None:
    """The stand-in declares TensorRT-LLM v1.0's tensors: the facade passes the guided
    decoding pair on unchanged, and the seed is `seed` (formerly `random_seed`)."""
    inputs = {i.name: (i.data_type, list(i.dims), i.optional) for i in load("tensorrt_llm").input}

    assert inputs["guided_decoding_guide_type"] == (DataType.TYPE_STRING, [1], True)
    assert inputs["guided_decoding_guide"] == (DataType.TYPE_STRING, [1], True)
    assert inputs["seed"] == (DataType.TYPE_UINT64, [1], True)
    assert "random_seed" not in inputs
