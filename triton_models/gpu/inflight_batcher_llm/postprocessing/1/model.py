"""postprocessing: output ids -> text, stateless (Python backend).

Per batch row: the ids are `TOKENS_BATCH[row, 0, :SEQUENCE_LENGTH[row, 0]]` (beam 0; all of
`TOKENS_BATCH[row, 0]` without `SEQUENCE_LENGTH`). `OUTPUT` is `decoding.text_delta`: the text
they add to what their first `PREVIOUS_LENGTH` ids (default 0) showed, cut before the first of
`STOP_WORDS`. A call is final (nothing held back) when `FINAL` is true or `PREVIOUS_LENGTH` is
absent or 0, so a whole output decodes in one call, and a stream decodes call by call with
`PREVIOUS_LENGTH` = the previous call's length. `decoding.py` is a symlink to the ensemble's
copy, so both models detokenize alike.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from decoding import text_delta
from transformers import AutoTokenizer


def _parameter(model_config, name, default=""):
    value = model_config.get("parameters", {}).get(name, {}).get("string_value", "")
    return value or default


def _as_bool(text):
    return text.strip().lower() in ("1", "true", "yes", "on")


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        self.tokenizer = AutoTokenizer.from_pretrained(_parameter(model_config, "tokenizer_dir"))
        self.skip_special_tokens = _as_bool(_parameter(model_config, "skip_special_tokens", "true"))

    def decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        tokens = _optional(request, "TOKENS_BATCH")
        rows = tokens.shape[0]
        lengths = _optional(request, "SEQUENCE_LENGTH")
        previous = _optional(request, "PREVIOUS_LENGTH")
        stop_words = _optional(request, "STOP_WORDS")
        final = _optional(request, "FINAL")
        texts = []
        for row in range(rows):
            ids = tokens[row].reshape(-1, tokens.shape[-1])[0]
            if lengths is not None:
                ids = ids[: int(lengths.reshape(rows, -1)[row, 0])]
            before = 0 if previous is None else int(previous.reshape(rows, -1)[row, 0])
            words = [] if stop_words is None else [_text(w) for w in stop_words[row].reshape(-1)]
            last = before == 0 or (final is not None and bool(final.reshape(rows, -1)[row, 0]))
            text, _ = text_delta(self.decode, ids.tolist(), before, words, final=last)
            texts.append(text.encode("utf-8"))
        output = np.array(texts, dtype=np.object_).reshape(rows, 1)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", output)])
