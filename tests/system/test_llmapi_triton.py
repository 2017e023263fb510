"""triton_models/gpu/llmapi on a real Triton 2.51, without a GPU: the repository as
scripts/triton-templates fills it, its `ensemble` serving the generation facade of
triton_models/README.md, with the TensorRT-LLM stand-in of tests/support/trtllm_standin on the
Python backend's path in place of `tensorrt_llm` (the real SmolLM2 tokenizer, a fixed script).
The stand-in records what it was asked (`LLM()` arguments, sampling parameters, aborts), so the
mapping from the facade to the LLM API is checked across the process boundary too.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from scripts.lib import fill_template
from services.inference.adapters.tritonserver import (
    SITE_DIRS_VARIABLE,
    TritonServer,
    TritonServerError,
    model_site_dirs,
    pick_free_ports,
)
from tests.support.smollm2 import smollm2_dir
from tests.support.triton import (
    STARTUP_TIMEOUT,
    Chunk,
    generation_inputs,
    parse_chunk,
    requires_triton,
    stream_generation,
    text_tensor,
)
from tests.support.trtllm_standin import STANDIN_PATH
from tests.support.trtllm_standin.tensorrt_llm import (
    GUIDED_JSON,
    RECORD_DIR_VARIABLE,
    SCRIPT,
    STEP_SECONDS_VARIABLE,
)

pytestmark = [pytest.mark.system, requires_triton]

PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
MAX_SEQ_LEN = 256
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@dataclass
class Served:
    server: TritonServer
    records: Path
    """What the stand-in LLM was asked (see its module docstring)."""

    def record(self, name: str) -> Any:
        return json.loads((self.records / name).read_text())

    def requests(self) -> list[dict[str, Any]]:
        paths = sorted(self.records.glob("request-*.json"), key=lambda p: int(p.stem[8:]))
        return [json.loads(path.read_text()) for path in paths]


@contextmanager
def _serve(root: Path, values: dict[str, str]) -> Iterator[Served]:
    """Fills the llmapi variant (plus `max_seq_len` in model.yaml, an extra LLM() argument)
    and serves it with the stand-in on the Python backend's path."""
    repo, records = root / "repo", root / "records"
    records.mkdir()
    fill_template.fill(
        "llmapi",
        repo,
        {"hf_model_dir": str(smollm2_dir()), "cancellation_check_period_ms": "10", **values},
    )
    with (repo / "ensemble" / "1" / "model.yaml").open("a", encoding="utf-8") as model_yaml:
        model_yaml.write(f"max_seq_len: {MAX_SEQ_LEN}\n")
    server = TritonServer(
        env={
            SITE_DIRS_VARIABLE: os.pathsep.join(model_site_dirs([str(STANDIN_PATH)])),
            RECORD_DIR_VARIABLE: str(records),
            STEP_SECONDS_VARIABLE: "0.01",
        }
    )
    try:
        asyncio.run(
            server.start(repo, log_file=root / "tritonserver.log", startup_timeout=STARTUP_TIMEOUT)
        )
    except TritonServerError as error:
        pytest.fail(f"Triton did not start:\n{error}", pytrace=False)
    try:
        yield Served(server, records)
    finally:
        asyncio.run(server.stop())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with _serve(tmp_path_factory.mktemp("llmapi-triton"), {"triton_max_batch_size": "8"}) as served:
        yield served


@pytest.fixture
async def client(served: Served) -> AsyncIterator[aioclient.InferenceServerClient]:
    client = aioclient.InferenceServerClient(served.server.grpc_address)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir())


def _guided(kind: str, guide: str | None = None, **options: Any) -> list[Any]:
    inputs = generation_inputs(PROMPT, 100, **options)
    inputs.append(text_tensor("guided_decoding_guide_type", [kind], [1, 1]))
    if guide is not None:
        inputs.append(text_tensor("guided_decoding_guide", [guide], [1, 1]))
    return inputs


def _wait_for(directory: Path, pattern: str, seconds: float = 10) -> list[Path]:
    """The files matching `pattern` in `directory` once there is one (or after `seconds`)."""
    deadline = time.monotonic() + seconds
    while not (found := sorted(directory.glob(pattern))) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _text(chunks: list[Chunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


def test_the_llm_gets_the_arguments_of_model_yaml(served: Served) -> None:
    assert served.record("llm.json") == {
        "model": str(smollm2_dir()),
        "backend": "pytorch",
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "max_batch_size": 64,
        "kv_cache_config": {
            "free_gpu_memory_fraction": 0.9,
            "enable_block_reuse": True,
            "max_tokens": None,
        },
        "guided_decoding_backend": "xgrammar",
        "enable_trtllm_sampler": True,
        "max_seq_len": MAX_SEQ_LEN,
    }


async def test_streaming_sends_each_step_and_one_final_response(
    client: aioclient.InferenceServerClient, tokenizer: Any
) -> None:
    chunks = await stream_generation(client, generation_inputs(PROMPT, 100), model="ensemble")

    assert _text(chunks) == SCRIPT
    assert not any("\ufffd" in chunk.text for chunk in chunks), "a response split a character"
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert [c.finish_reason for c in chunks] == [""] * (len(chunks) - 1) + ["stop"]
    assert [c.num_output_tokens for c in chunks[:3]] == [1, 2, 3]
    assert chunks[-1].num_output_tokens == len(tokenizer.encode(SCRIPT, add_special_tokens=False))
    assert {c.num_input_tokens for c in chunks} == {len(tokenizer.encode(PROMPT))}


async def test_one_response_without_streaming_the_prompt_first(
    client: aioclient.InferenceServerClient,
) -> None:
    inputs = generation_inputs(PROMPT, 100, stream=False, exclude_input_in_output=False)

    (chunk,) = await stream_generation(client, inputs, model="ensemble")

    assert chunk.text == "user\nhi\nassistant\n" + SCRIPT
    assert (chunk.finish_reason, chunk.final) == ("stop", True)


async def test_max_tokens_ends_with_length(client: aioclient.InferenceServerClient) -> None:
    chunks = await stream_generation(client, generation_inputs(PROMPT, 3), model="ensemble")

    assert (_text(chunks), chunks[-1].finish_reason) == ("Hello world,", "length")
    assert chunks[-1].num_output_tokens == 3


async def test_stop_words_end_the_text_before_them(
    client: aioclient.InferenceServerClient, served: Served
) -> None:
    inputs = generation_inputs(PROMPT, 100, stop_words=["User:"])

    chunks = await stream_generation(client, inputs, model="ensemble")

    assert _text(chunks) == SCRIPT.split("User:")[0]
    assert chunks[-1].finish_reason == "stop_words"
    assert served.requests()[-1]["sampling_params"]["stop"] == ["User:"]


async def test_sampling_inputs_reach_the_llm_as_sampling_params(
    client: aioclient.InferenceServerClient, served: Served, tokenizer: Any
) -> None:
    inputs = generation_inputs(PROMPT, 5, stream=False, temperature=0.5)

    await stream_generation(client, inputs, model="ensemble")
    sent = served.requests()[-1]

    assert sent["streaming"] is False
    assert sent["prompt_token_ids"] == tokenizer.encode(PROMPT, add_special_tokens=False)
    params = sent["sampling_params"]
    assert (params["temperature"], params["top_p"], params["top_k"]) == (0.5, 1.0, None)
    assert (params["max_tokens"], params["end_id"], params["guided_decoding"]) == (5, None, None)


async def test_a_cancelled_stream_aborts_the_llm_request(
    client: aioclient.InferenceServerClient, served: Served
) -> None:
    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": "ensemble", "inputs": generation_inputs(PROMPT, 100)}

    stream = client.stream_infer(requests())
    received = []
    async for result, error in stream:
        assert error is None, error
        received.append(parse_chunk(result))
        if len(received) == 3:
            stream.cancel()
            break
    (aborted,) = await asyncio.to_thread(_wait_for, served.records, "aborted-*.json")
    assert [c.text for c in received] == ["Hello", " world", ","]
    assert 3 <= json.loads(aborted.read_text())["generated"] < 29


async def test_guided_json_schema_gives_valid_json(
    client: aioclient.InferenceServerClient, served: Served
) -> None:
    chunks = await stream_generation(
        client, _guided("json_schema", json.dumps(SCHEMA)), model="ensemble"
    )

    jsonschema.validate(json.loads(_text(chunks)), SCHEMA)
    assert _text(chunks) == GUIDED_JSON
    assert served.requests()[-1]["sampling_params"]["guided_decoding"] == {
        "json": json.dumps(SCHEMA),
        "regex": None,
        "grammar": None,
        "json_object": False,
        "structural_tag": None,
    }


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        pytest.param(
            generation_inputs(PROMPT, 0), "[FIELD_VIOLATION] max_tokens must be >= 1", id="max"
        ),
        pytest.param(
            _guided("yaml", "a: 1"),
            "[FIELD_VIOLATION] guided_decoding_guide_type: unknown guide type 'yaml'",
            id="guide-type",
        ),
        pytest.param(
            _guided("json_schema", "{not json"),
            "[FIELD_VIOLATION] guided_decoding_guide: not JSON",
            id="schema",
        ),
        pytest.param(
            generation_inputs("word" * 300, 10),
            f"[CONTEXT_LENGTH_EXCEEDED] prompt has 300 tokens, the context is {MAX_SEQ_LEN}",
            id="context",
        ),
    ],
)
async def test_bad_requests_get_a_tagged_error(
    client: aioclient.InferenceServerClient, inputs: list[Any], expected: str
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        await stream_generation(client, inputs, model="ensemble")

    assert expected in str(caught.value)


def test_not_decoupled_it_answers_unary_calls_and_refuses_streaming(tmp_path: Path) -> None:
    with _serve(tmp_path, {"decoupled_mode": "false"}) as served:
        client = grpcclient.InferenceServerClient(served.server.grpc_address)
        try:
            result = client.infer("ensemble", generation_inputs(PROMPT, 100, stream=False))
            with pytest.raises(InferenceServerException) as refused:
                client.infer("ensemble", generation_inputs(PROMPT, 10, stream=True))
        finally:
            client.close()

    text = result.as_numpy("text_output").reshape(-1)[0].decode()
    finish = result.as_numpy("finish_reason").reshape(-1)[0].decode()
    assert (text, finish) == (SCRIPT, "stop")
    assert result.as_numpy("num_output_tokens").dtype == np.int32
    assert "[FIELD_VIOLATION] stream=true needs the model deployed decoupled" in str(refused.value)


# --------------------------------------------------------------------------------------------
# The real LLM API on a GPU host (the serving container)
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_the_real_llm_api_serves_the_facade(tmp_path: Path) -> None:
    """The filled repository on `tritonserver` with TensorRT-LLM's LLM API and SmolLM2-135M:
    a stream, a guided JSON Schema, stop words, and a cancelled stream. Runs in
    nvcr.io/nvidia/tritonserver:25.09-trtllm-python-py3 with this project installed."""
    for tool in ("nvidia-smi", "tritonserver"):
        if shutil.which(tool) is None:
            pytest.skip(
                f"{tool} not found (run in a tritonserver:<yy.mm>-trtllm-python-py3 container)"
            )
    if importlib.util.find_spec("tensorrt_llm") is None:
        pytest.skip("tensorrt_llm is not installed")
    repo = tmp_path / "repo"
    fill_template.fill(
        "llmapi",
        repo,
        {
            "hf_model_dir": str(smollm2_dir()),
            "kv_cache_free_gpu_mem_fraction": "0.3",
            "cancellation_check_period_ms": "10",
        },
    )
    with (repo / "ensemble" / "1" / "model.yaml").open("a", encoding="utf-8") as model_yaml:
        model_yaml.write("max_seq_len: 1024\n")
    grpc_port, http_port, metrics_port = pick_free_ports(3)
    log_path = tmp_path / "tritonserver.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            ["tritonserver", f"--model-repository={repo}", f"--grpc-port={grpc_port}",
             f"--http-port={http_port}", f"--metrics-port={metrics_port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            probe = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            deadline = time.monotonic() + 900
            while not _ready(probe):
                assert server.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "tritonserver not ready in 15 minutes"
                time.sleep(2)
            results = asyncio.run(_gpu_cases(f"127.0.0.1:{grpc_port}"))
        finally:
            server.terminate()
            server.wait(timeout=120)

    stream = results["stream"]
    assert [c.final for c in stream] == [False] * (len(stream) - 1) + [True]
    assert stream[-1].finish_reason in {"stop", "length"}
    assert 0 < stream[-1].num_output_tokens <= 32
    assert [c.num_output_tokens for c in stream] == sorted(c.num_output_tokens for c in stream)
    assert "\ufffd" not in _text(stream)
    jsonschema.validate(json.loads(_text(results["guided"])), SCHEMA)
    stopped = results["stop"]
    assert " " not in _text(stopped)
    assert stopped[-1].finish_reason in {"stop_words", "stop", "length"}
    assert results["after_cancel"][-1].final, "the server still serves after a cancelled stream"


def _ready(client: Any) -> bool:
    try:
        return bool(client.is_server_ready())
    except Exception:
        return False


async def _gpu_cases(address: str) -> dict[str, list[Chunk]]:
    prompt = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    json_prompt = (
        "<|im_start|>user\nGive a name and an age as JSON.<|im_end|>\n<|im_start|>assistant\n"
    )
    client = aioclient.InferenceServerClient(address)
    try:
        results = {
            "stream": await stream_generation(
                client, generation_inputs(prompt, 32), model="ensemble", time_limit=120
            ),
            "guided": await stream_generation(
                client,
                [
                    *generation_inputs(json_prompt, 64),
                    text_tensor("guided_decoding_guide_type", ["json_schema"], [1, 1]),
                    text_tensor("guided_decoding_guide", [json.dumps(SCHEMA)], [1, 1]),
                ],
                model="ensemble",
                time_limit=120,
            ),
            "stop": await stream_generation(
                client,
                generation_inputs(prompt, 32, stop_words=[" "]),
                model="ensemble",
                time_limit=120,
            ),
        }

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": "ensemble", "inputs": generation_inputs(prompt, 200)}

        stream = client.stream_infer(requests())
        async for _result, error in stream:
            assert error is None, error
            stream.cancel()
            break
        results["after_cancel"] = await stream_generation(
            client, generation_inputs(prompt, 4), model="ensemble", time_limit=120
        )
        return results
    finally:
        await client.close()
