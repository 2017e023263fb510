"""preprocessing: the facade's request -> tensorrt_llm's inputs (Python backend).

Per batch row of a request:
- `QUERY` is encoded with the Hugging Face tokenizer of the `tokenizer_dir` parameter
  (`add_special_tokens` parameter, default false: the prompt arrives chat-templated).
  `INPUT_ID` is padded with the pad id to the longest row; `REQUEST_INPUT_LEN` is the true length.
- `REQUEST_OUTPUT_LEN` (the facade's `max_tokens`) must be >= 1. When the engine's
  `config.json` (`engine_dir` parameter) gives `max_input_len`/`max_seq_len`, a longer prompt
  is refused with `[CONTEXT_LENGTH_EXCEEDED]` and `OUT_REQUEST_OUTPUT_LEN` is lowered to what
  is left of `max_seq_len`, so generation ends with finish reason `length` instead of failing.
- `STOP_WORDS_DICT`/`BAD_WORDS_DICT` (empty strings ignored) become TensorRT-LLM word lists
  `[2, n]`: row 0 the concatenated token ids of the words, row 1 the cumulative end offset of
  each word, padded with 0 and -1. Each word is encoded on its own, without special tokens.
- `END_ID`/`PAD_ID` default to the tokenizer's EOS and pad token (EOS when it has none).
  With the default end id, the other end-of-turn ids of the tokenizer directory's
  `generation_config.json` (e.g. Llama 3's <|eot_id|>) are added to the stop words, as
  TensorRT-LLM takes one end id; the ensemble treats them as end tokens.
- Sampling is normalised to the facade's meaning: temperature absent or 0 is greedy
  (top_k 1, top_p 1, temperature 1); otherwise top_k 0 means no top-k filter and top_p
  absent means 1. Out-of-range values are refused with `[FIELD_VIOLATION]`.

Errors are in-band, `[REASON] message` with a reason of `genai.common.v1.ErrorReason`.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

FIELD_VIOLATION = "FIELD_VIOLATION"
CONTEXT_LENGTH_EXCEEDED = "CONTEXT_LENGTH_EXCEEDED"

# The facade's names of this model's inputs (error messages speak the client's language).
FACADE_NAMES = {
    "QUERY": "text_input",
    "REQUEST_OUTPUT_LEN": "max_tokens",
    "BAD_WORDS_DICT": "bad_words",
    "STOP_WORDS_DICT": "stop_words",
    "END_ID": "end_id",
    "PAD_ID": "pad_id",
    "TEMPERATURE": "temperature",
    "TOP_K": "top_k",
    "TOP_P": "top_p",
}


class RequestError(Exception):
    """A refused request; `str()` is `[REASON] message`."""

    def __init__(self, reason, message):
        super().__init__(f"[{reason}] {message}")
        self.reason = reason


def _parameter(model_config, name, default=""):
    value = model_config.get("parameters", {}).get(name, {}).get("string_value", "")
    return value or default


def _as_bool(text):
    return text.strip().lower() in ("1", "true", "yes", "on")


def _engine_limits(engine_dir):
    """(max_input_len, max_seq_len) from an engine's config.json; None for what is unknown."""
    path = os.path.join(engine_dir, "config.json") if engine_dir else ""
    if not path or not os.path.isfile(path):
        return None, None
    with open(path, encoding="utf-8") as file:
        build = json.load(file).get("build_config", {})
    max_input_len = build.get("max_input_len")
    max_seq_len = build.get("max_seq_len")
    return (
        int(max_input_len) if max_input_len else None,
        int(max_seq_len) if max_seq_len else None,
    )


def other_end_ids(tokenizer_dir, end_id):
    """The end-of-turn ids a model's generation_config.json lists besides `end_id` (Llama 3
    Instruct lists <|end_of_text|>, <|eom_id|> and <|eot_id|>)."""
    path = os.path.join(tokenizer_dir, "generation_config.json")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as file:
        ids = json.load(file).get("eos_token_id")
    ids = ids if isinstance(ids, list) else [] if ids is None else [ids]
    return [int(i) for i in ids if int(i) != end_id]


def word_list(words_per_row, pad_offsets=-1):
    """TensorRT-LLM's word-list tensor `[rows, 2, n]` for token-id lists per row."""
    rows = []
    for words in words_per_row:
        ids = [token for word in words for token in word]
        offsets = np.cumsum([len(word) for word in words]).tolist() if words else []
        rows.append((ids, offsets))
    width = max((len(ids) for ids, _ in rows), default=0)
    tensor = np.zeros((len(rows), 2, width), dtype=np.int32)
    tensor[:, 1, :] = pad_offsets
    for index, (ids, offsets) in enumerate(rows):
        tensor[index, 0, : len(ids)] = ids
        tensor[index, 1, : len(offsets)] = offsets
    return tensor


def sampling(temperature, top_k, top_p):
    """(temperature, runtime_top_k, runtime_top_p) for TensorRT-LLM from the facade's values
    (None when absent)."""
    if temperature is not None and temperature < 0:
        raise RequestError(FIELD_VIOLATION, f"temperature must be >= 0, got {temperature:g}")
    if top_k is not None and top_k < 0:
        raise RequestError(FIELD_VIOLATION, f"top_k must be >= 0, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise RequestError(FIELD_VIOLATION, f"top_p must be in (0, 1], got {top_p:g}")
    if not temperature:
        return 1.0, 1, 1.0
    return float(temperature), int(top_k or 0), float(1.0 if top_p is None else top_p)


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        tokenizer_dir = _parameter(model_config, "tokenizer_dir")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.add_special_tokens = _as_bool(_parameter(model_config, "add_special_tokens", "false"))
        self.end_id = self.tokenizer.eos_token_id
        if self.end_id is None:
            raise pb_utils.TritonModelException(f"the tokenizer in {tokenizer_dir} has no EOS")
        pad_id = self.tokenizer.pad_token_id
        self.pad_id = self.end_id if pad_id is None else pad_id
        self.other_end_ids = other_end_ids(tokenizer_dir, self.end_id)
        self.max_input_len, self.max_seq_len = _engine_limits(
            _parameter(model_config, "engine_dir")
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._outputs(request)))
            except RequestError as error:
                code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
                triton_error = (
                    pb_utils.TritonError(str(error))
                    if code is None
                    else pb_utils.TritonError(str(error), code)
                )
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=triton_error))
        return responses

    def _outputs(self, request):
        queries = _strings(request, "QUERY")
        rows = len(queries)
        max_tokens = _per_row(request, "REQUEST_OUTPUT_LEN", rows, int)
        end_ids = _per_row(request, "END_ID", rows, int, default=self.end_id)
        pad_ids = _per_row(request, "PAD_ID", rows, int, default=self.pad_id)
        temperatures = _per_row(request, "TEMPERATURE", rows, float, default=None)
        top_ks = _per_row(request, "TOP_K", rows, int, default=None)
        top_ps = _per_row(request, "TOP_P", rows, float, default=None)

        input_ids, output_lens = [], []
        for query, tokens in zip(queries, max_tokens, strict=True):
            if tokens is None:
                raise RequestError(FIELD_VIOLATION, "max_tokens is required")
            ids = self.tokenizer.encode(query, add_special_tokens=self.add_special_tokens)
            input_ids.append(ids)
            output_lens.append(self._output_len(len(ids), tokens))
        samplings = [sampling(*row) for row in zip(temperatures, top_ks, top_ps, strict=True)]
        stop_words = self._words(request, "STOP_WORDS_DICT", rows)
        for words, end_id in zip(stop_words, end_ids, strict=True):
            if end_id == self.end_id:  # not a client's own end id
                # The model's other end-of-turn tokens stop the engine too (as stop words).
                words.extend([token] for token in self.other_end_ids)

        width = max(len(ids) for ids in input_ids)
        padded = np.empty((rows, width), dtype=np.int32)
        for index, ids in enumerate(input_ids):
            padded[index, :] = pad_ids[index]
            padded[index, : len(ids)] = ids

        def column(values, dtype):
            return np.asarray(values, dtype=dtype).reshape(rows, 1)

        return [
            pb_utils.Tensor("INPUT_ID", padded),
            pb_utils.Tensor("REQUEST_INPUT_LEN", column([len(ids) for ids in input_ids], np.int32)),
            pb_utils.Tensor("OUT_REQUEST_OUTPUT_LEN", column(output_lens, np.int32)),
            pb_utils.Tensor(
                "BAD_WORDS_IDS", word_list(self._words(request, "BAD_WORDS_DICT", rows))
            ),
            pb_utils.Tensor("STOP_WORDS_IDS", word_list(stop_words)),
            pb_utils.Tensor("OUT_END_ID", column(end_ids, np.int32)),
            pb_utils.Tensor("OUT_PAD_ID", column(pad_ids, np.int32)),
            pb_utils.Tensor("OUT_TEMPERATURE", column([s[0] for s in samplings], np.float32)),
            pb_utils.Tensor("OUT_TOP_K", column([s[1] for s in samplings], np.int32)),
            pb_utils.Tensor("OUT_TOP_P", column([s[2] for s in samplings], np.float32)),
        ]

    def _output_len(self, prompt_tokens, max_tokens):
        if max_tokens < 1:
            raise RequestError(FIELD_VIOLATION, f"max_tokens must be >= 1, got {max_tokens}")
        if prompt_tokens == 0:
            raise RequestError(FIELD_VIOLATION, "text_input has no tokens")
        if self.max_input_len is not None and prompt_tokens > self.max_input_len:
            raise RequestError(
                CONTEXT_LENGTH_EXCEEDED,
                f"prompt has {prompt_tokens} tokens, the engine accepts {self.max_input_len}",
            )
        if self.max_seq_len is None:
            return max_tokens
        room = self.max_seq_len - prompt_tokens
        if room < 1:
            raise RequestError(
                CONTEXT_LENGTH_EXCEEDED,
                f"prompt has {prompt_tokens} tokens, the context is {self.max_seq_len}",
            )
        return min(max_tokens, room)

    def _words(self, request, name, rows):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return [[] for _ in range(rows)]
        values = tensor.as_numpy().reshape(rows, -1)
        lists = []
        for row in values:
            words = [_decode(value, FACADE_NAMES[name]) for value in row]
            encoded = [
                self.tokenizer.encode(word, add_special_tokens=False) for word in words if word
            ]
            lists.append([ids for ids in encoded if ids])
        return lists


def _decode(value, name):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(FIELD_VIOLATION, f"{name} is not valid UTF-8") from None
    return str(value)


def _strings(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise RequestError(FIELD_VIOLATION, "text_input is required")
    return [_decode(value, "text_input") for value in tensor.as_numpy().reshape(-1)]


def _per_row(request, name, rows, kind, default=None):
    """One value per batch row of a [rows, 1] input; `default` for every row when absent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return [default] * rows
    values = tensor.as_numpy().reshape(-1)
    if values.size != rows:
        raise RequestError(FIELD_VIOLATION, f"{FACADE_NAMES[name]} must hold one value per row")
    return [kind(value.item()) for value in values]
