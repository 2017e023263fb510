"""ensemble: the generation facade over TensorRT-LLM (Python backend, BLS, async).

One coroutine per request (one prompt per request; the facade sends shape [1, 1]):
1. `preprocessing` (BLS) gets the facade inputs of `PREPROCESSING_INPUTS`: it tokenizes,
   validates max_tokens against the engine, builds word lists and normalises sampling.
2. `tensorrt_llm` (BLS, streaming when `stream` is true) gets the inputs of
   `TENSORRT_LLM_INPUTS`, from preprocessing's outputs or straight from the request.
3. The tokens of every tensorrt_llm response go through a `decoding.RequestDecoder`.
   Streaming, each response carries only its new tokens; the decoder detokenizes
   incrementally, so each `text_output` is the text those tokens complete and the responses
   concatenate to the whole text, with every space and no UTF-8 character split. Not
   streaming, the single response carries the whole output, after the prompt's tokens unless
   `exclude_input_in_output` is true (absent means false, as in TensorRT-LLM): `text_output`
   then starts with the prompt's text, which stop words never cut.
4. Streaming sends one response per tensorrt_llm response with tokens; every request ends with
   exactly one final response carrying the finish reason (rules in `decoding.RequestDecoder`,
   plus `cancelled`) and the last text, possibly empty. `num_input_tokens` is the prompt
   length, `num_output_tokens` the tokens generated so far.
5. tensorrt_llm is stopped early when the text reaches a stop word its token-level match
   missed, and when the client cancels (looked for every `cancellation_check_period_ms`):
   with the BLS iterator's `cancel()` where the Python backend has it, else with tensorrtllm's
   own way, a `stop` request carrying the same request id.

Errors are in-band, `[REASON] message`: preprocessing's `[FIELD_VIOLATION]` and
`[CONTEXT_LENGTH_EXCEEDED]` pass through; `[BACKEND_ERROR]` is an error tensorrt_llm reported.
"""

import asyncio
import contextlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils
from decoding import RequestDecoder, parse_word_list
from genai_triton.guides import GUIDE, JSON_SCHEMA, GuideError, read_guide
from transformers import AutoTokenizer

PREPROCESSING = "preprocessing"
TENSORRT_LLM = "tensorrt_llm"

PREPROCESSING_INPUTS = {
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
"""preprocessing input -> the facade input passed as it (when the request has it)."""

TENSORRT_LLM_INPUTS = {
    "input_ids": ("preprocessing", "INPUT_ID"),
    "input_lengths": ("preprocessing", "REQUEST_INPUT_LEN"),
    "request_output_len": ("preprocessing", "OUT_REQUEST_OUTPUT_LEN"),
    "end_id": ("preprocessing", "OUT_END_ID"),
    "pad_id": ("preprocessing", "OUT_PAD_ID"),
    "stop_words_list": ("preprocessing", "STOP_WORDS_IDS"),
    "bad_words_list": ("preprocessing", "BAD_WORDS_IDS"),
    "temperature": ("preprocessing", "OUT_TEMPERATURE"),
    "runtime_top_k": ("preprocessing", "OUT_TOP_K"),
    "runtime_top_p": ("preprocessing", "OUT_TOP_P"),
    "streaming": ("request", "stream"),
    "exclude_input_in_output": ("request", "exclude_input_in_output"),
    "repetition_penalty": ("request", "repetition_penalty"),
    "presence_penalty": ("request", "presence_penalty"),
    "frequency_penalty": ("request", "frequency_penalty"),
    "seed": ("request", "seed"),
    "guided_decoding_guide_type": ("request", "guided_decoding_guide_type"),
    "guided_decoding_guide": ("request", "guided_decoding_guide"),
}
"""tensorrt_llm input -> (where from, tensor name): a preprocessing output, or a facade input
passed as the client sent it (skipped when absent)."""

TENSORRT_LLM_OUTPUTS = ("output_ids", "sequence_length")

FIELD_VIOLATION = "FIELD_VIOLATION"
BACKEND_ERROR = "BACKEND_ERROR"
INTERNAL_ERROR = "INTERNAL_ERROR"
INVALID_ARGUMENT_REASONS = ("[FIELD_VIOLATION]", "[CONTEXT_LENGTH_EXCEEDED]")
FINISH_CANCELLED = "cancelled"
FACADE_INPUTS = sorted(
    {
        *PREPROCESSING_INPUTS.values(),
        *(name for source, name in TENSORRT_LLM_INPUTS.values() if source == "request"),
    }
)
"""The facade inputs this model reads."""

WAITING_THREADS = 1024
"""Threads that wait for tensorrt_llm's next response (one per streaming request at a time)
where the Python backend's BLS iterator is blocking."""


class RequestError(Exception):
    """A request that ends with an error response; `str()` is `[REASON] message`."""

    def __init__(self, reason, message):
        super().__init__(f"[{reason}] {message}")


class TaggedError(Exception):
    """An error another model reported, already `[REASON] message`."""


def _parameter(model_config, name, default=""):
    value = model_config.get("parameters", {}).get(name, {}).get("string_value", "")
    return value or default


def _as_bool(text):
    return text.strip().lower() in ("1", "true", "yes", "on")


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


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        tokenizer_dir = _parameter(model_config, "tokenizer_dir")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.skip_special_tokens = _as_bool(_parameter(model_config, "skip_special_tokens", "true"))
        self.default_end_id = self.tokenizer.eos_token_id
        self.other_end_ids = other_end_ids(tokenizer_dir, self.default_end_id)
        self.check_period_s = (
            float(_parameter(model_config, "cancellation_check_period_ms", "100")) / 1000
        )
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(model_config)
        self.waiters = ThreadPoolExecutor(WAITING_THREADS, thread_name_prefix="bls-wait")
        self.logger = pb_utils.Logger

    def finalize(self):
        self.waiters.shutdown(wait=False, cancel_futures=True)

    def decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    async def execute(self, requests):
        if self.decoupled:
            await asyncio.gather(*(self._serve_stream(request) for request in requests))
            return None
        return list(await asyncio.gather(*(self._serve_once(request) for request in requests)))

    async def _serve_stream(self, request):
        sender = request.get_response_sender()
        sent_final = False
        try:
            # aclosing: a failed send ends the generator now, which stops tensorrt_llm.
            async with contextlib.aclosing(self._responses(request, sender.is_cancelled)) as out:
                async for response, final in out:
                    flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
                    sender.send(response, flags=flags)
                    sent_final = final
        except Exception as error:  # every request must end with a final response
            if sent_final:
                self.logger.log_warn(f"ensemble: after the final response: {error!r}")
                return
            try:
                sender.send(
                    self._error_response(error),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
            except Exception as send_error:  # the request is gone (e.g. cancelled)
                self.logger.log_warn(f"ensemble could not send an error: {send_error!r}")

    async def _serve_once(self, request):
        result = None
        try:
            async with contextlib.aclosing(self._responses(request, lambda: False)) as out:
                async for response, final in out:
                    if final:
                        result = response
        except Exception as error:
            if result is None:
                return self._error_response(error)
            self.logger.log_warn(f"ensemble: after the final response: {error!r}")
        return result if result is not None else self._error_response(RuntimeError("no response"))

    def _error_response(self, error):
        message = str(error)
        if isinstance(error, TaggedError) and not message.startswith("["):
            message = f"[{INTERNAL_ERROR}] {message}"
        elif not isinstance(error, RequestError | TaggedError):
            self.logger.log_error(f"ensemble failed: {error!r}")
            message = f"[{INTERNAL_ERROR}] ensemble failed: {message}"
        code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
        if code is not None and message.startswith(INVALID_ARGUMENT_REASONS):
            return pb_utils.InferenceResponse(
                output_tensors=[], error=pb_utils.TritonError(message, code)
            )
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

    async def _responses(self, request, is_cancelled):
        """Yields (InferenceResponse, final) for one request, ending with final=True."""
        facade = {}
        for name in FACADE_INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                facade[name] = tensor.as_numpy()
        if facade["text_input"].shape[0] != 1:
            raise RequestError(FIELD_VIOLATION, "one prompt per request (batch size 1)")
        streaming = bool(facade["stream"].item()) if "stream" in facade else False
        if streaming and not self.decoupled:
            raise RequestError(FIELD_VIOLATION, "stream=true needs the models deployed decoupled")
        exclude = (
            bool(facade["exclude_input_in_output"].item())
            if "exclude_input_in_output" in facade
            else False
        )
        _check_guide(facade)
        pre = await self._preprocess(facade)
        input_length = int(pre["REQUEST_INPUT_LEN"].item())
        prompt = [] if streaming or exclude else pre["INPUT_ID"][0, :input_length].tolist()
        stop_words = [_text(w) for w in facade.get("stop_words", np.empty(0)).reshape(-1)]
        end_id = int(pre["OUT_END_ID"].item())
        decoder = RequestDecoder(
            self.decode,
            end_id=end_id,
            max_tokens=int(pre["OUT_REQUEST_OUTPUT_LEN"].item()),
            stop_words=[word for word in stop_words if word],
            stop_ids=parse_word_list(pre["STOP_WORDS_IDS"][0].tolist()),
            context=prompt,
            # The model's other end-of-turn ids, unless the client chose its own end id.
            other_end_ids=self.other_end_ids if end_id == self.default_end_id else (),
        )

        def respond(text, finish_reason=""):
            return pb_utils.InferenceResponse(
                output_tensors=[
                    _tensor("text_output", text.encode("utf-8"), np.object_),
                    _tensor("num_input_tokens", input_length, np.int32),
                    _tensor("num_output_tokens", decoder.generated, np.int32),
                    _tensor("finish_reason", finish_reason.encode("utf-8"), np.object_),
                ]
            )

        inputs = [
            pb_utils.Tensor(trtllm_name, (pre if source == PREPROCESSING else facade)[name])
            for trtllm_name, (source, name) in TENSORRT_LLM_INPUTS.items()
            if name in (pre if source == PREPROCESSING else facade)
        ]
        request_id = f"ensemble-{uuid.uuid4().hex}"
        responses = _Responses(
            await pb_utils.InferenceRequest(
                model_name=TENSORRT_LLM,
                inputs=inputs,
                requested_output_names=list(TENSORRT_LLM_OUTPUTS),
                request_id=request_id,
            ).async_exec(decoupled=self.decoupled),
            self.waiters,
        )
        stopper = _Stopper(self, responses, inputs, request_id)
        watcher = asyncio.create_task(self._watch(is_cancelled, stopper))
        shown_prompt = self.decode(prompt) if prompt else ""
        final_sent = False
        try:
            async for response in responses:
                if stopper.cancelled or is_cancelled():
                    stopper.cancelled = True
                    break
                if response.has_error():
                    message = response.error().message()
                    raise RequestError(BACKEND_ERROR, f"tensorrt_llm: {message}")
                tokens = _tokens(response)
                text = decoder.feed(tokens[len(prompt) :] if prompt else tokens)
                if decoder.finish_reason:
                    if not decoder.engine_finished:
                        await stopper.stop()
                    final_sent = True
                    yield respond(shown_prompt + text, decoder.finish_reason), True
                    break
                if not streaming:
                    shown_prompt += text
                elif tokens:  # (a response without tokens shows nothing new)
                    yield respond(text), False
            else:
                if not stopper.cancelled:
                    text = decoder.finish()
                    final_sent = True
                    yield respond(shown_prompt + text, decoder.finish_reason), True
            if not final_sent:  # the client cancelled
                await stopper.stop()
                final_sent = True
                yield respond("", FINISH_CANCELLED), True
        finally:
            watcher.cancel()
            if not final_sent:  # an error, or the caller could not send: stop the engine
                await stopper.stop()
        async for _ in responses:  # the final flag, or what a stopped request still sends
            pass

    async def _preprocess(self, facade):
        inputs = [
            pb_utils.Tensor(own, facade[name])
            for own, name in PREPROCESSING_INPUTS.items()
            if name in facade
        ]
        response = await pb_utils.InferenceRequest(
            model_name=PREPROCESSING,
            inputs=inputs,
            requested_output_names=sorted(
                {name for source, name in TENSORRT_LLM_INPUTS.values() if source == PREPROCESSING}
            ),
        ).async_exec()
        if response.has_error():
            raise TaggedError(response.error().message())
        return {tensor.name(): tensor.as_numpy() for tensor in response.output_tensors()}

    async def _watch(self, is_cancelled, stopper):
        """Stops tensorrt_llm once the client cancelled, even while no token arrives."""
        while not stopper.responses.done:
            await asyncio.sleep(self.check_period_s)
            if is_cancelled():
                stopper.cancelled = True
                await stopper.stop()
                return


class _Stopper:
    """Ends the tensorrt_llm request of one facade request early, once."""

    def __init__(self, model, responses, inputs, request_id):
        self.model = model
        self.responses = responses
        self.inputs = inputs
        self.request_id = request_id
        self.cancelled = False
        self._stopped = False

    async def stop(self):
        if self._stopped or self.responses.done or not self.model.decoupled:
            return
        self._stopped = True
        cancel = getattr(self.responses.source, "cancel", None)
        if cancel is not None:  # the Python backend of Triton 25.04 and later
            cancel()
            return
        # Before 25.04 the BLS iterator has no cancel(): the tensorrtllm backend stops the
        # running request with the same request id.
        stop = pb_utils.Tensor("stop", np.array([[True]], dtype=np.bool_))
        try:
            stopper = await pb_utils.InferenceRequest(
                model_name=TENSORRT_LLM,
                inputs=[*self.inputs, stop],
                requested_output_names=list(TENSORRT_LLM_OUTPUTS),
                request_id=self.request_id,
            ).async_exec(decoupled=True)
            async for _ in _Responses(stopper, self.model.waiters):
                pass
        except Exception as error:  # the request ends for the client either way
            self.model.logger.log_warn(f"ensemble: could not stop tensorrt_llm: {error!r}")


class _Responses:
    """Async iteration over a BLS result: a decoupled response iterator (async, or blocking
    and then waited for in `waiters`) or a single response. `done` once the last arrived."""

    def __init__(self, source, waiters):
        self.source = source
        self.done = False
        self._single = isinstance(source, pb_utils.InferenceResponse)
        self._async = hasattr(source, "__anext__")
        self._waiters = waiters

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.done:
            raise StopAsyncIteration
        if self._single:
            self.done = True
            return self.source
        if self._async:
            try:
                return await self.source.__anext__()
            except StopAsyncIteration:
                self.done = True
                raise
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self._waiters, next, self.source, None)
        if response is None:
            self.done = True
            raise StopAsyncIteration
        return response


def _check_guide(facade):
    """Refuses malformed guided-decoding inputs (the CPU models' rules, genai_triton.guides)
    and a JSON Schema that is not JSON, which tensorrt_llm would only report as a backend
    error. Whether a guide compiles is for the executor to say."""

    def text(name):
        return _text(facade[name].reshape(-1)[0]) if name in facade else None

    try:
        guide = read_guide(text("guided_decoding_guide_type"), text(GUIDE))
        if guide is not None and guide.type == JSON_SCHEMA:
            json.loads(guide.text)
    except GuideError as error:
        raise RequestError(FIELD_VIOLATION, str(error)) from None
    except ValueError as error:
        raise RequestError(FIELD_VIOLATION, f"{GUIDE}: not JSON ({error})") from None


def _tensor(name, value, dtype):
    return pb_utils.Tensor(name, np.array([[value]], dtype=dtype))


def _tokens(response):
    """Beam 0's tokens of a tensorrt_llm response ([] for a final response without outputs)."""
    ids = pb_utils.get_output_tensor_by_name(response, "output_ids")
    if ids is None:
        return []
    lengths = pb_utils.get_output_tensor_by_name(response, "sequence_length").as_numpy()
    return ids.as_numpy()[0, 0, : int(lengths.reshape(-1)[0])].tolist()


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
