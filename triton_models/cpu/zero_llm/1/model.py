"""zero_llm: the generation facade with zero compute, for tests and benchmarks.

Behaviour (deterministic, independent of sampling inputs):
- The prompt's tokens are its whitespace-separated words: `num_input_tokens` is the word count.
- Output token `i` (counting from 0) has id `i` and text `tok{i} ` (with a trailing space), so
  `max_tokens=3` generates `tok0 tok1 tok2 `.
- `stream=true`: one response per token; `stream=false`: one response with all the text.
  Either way the last response is flagged FINAL and carries the finish reason:
  `length` after `max_tokens` tokens; `stop_words` when the text reaches a stop word (matched
  on text, possibly across tokens; the stop word and what follows are not returned);
  `stop` when the next token's id equals `end_id` (the end token is not returned);
  `cancelled` when the client cancelled the request (checked before every token).
- `num_output_tokens` counts the tokens generated so far, including those that completed a
  stop word, not the end token. Streamed text that might be the start of a stop word is held
  back until it is known not to be (that step's response then has empty text).
- Sampling inputs (`temperature`, `top_k`, `top_p`, penalties, `seed`) are validated and
  otherwise ignored; so are `pad_id` and `bad_words`, and the guided decoding pair
  (`guided_decoding_guide_type`, `guided_decoding_guide`): a malformed pair (unknown type,
  missing guide, guide without a type) is refused like on the real models, but the guide is
  neither compiled nor followed.
- `exclude_input_in_output` false or absent (as TensorRT-LLM) and `stream=false`: the prompt is
  prepended to `text_output`.
- Pace: `token_interval_us` microseconds before each token, from the request parameter of
  that name when given (KServe request `parameters`, e.g. tritonclient's
  `stream_infer({... "parameters": {"token_interval_us": 10000}})`), else the config parameter
  `token_interval_us` (default 0).
- `num_input_tokens + max_tokens` above the config parameter `context_length` is refused with
  `[CONTEXT_LENGTH_EXCEEDED]`; bad inputs with `[FIELD_VIOLATION]`.

Requests run as coroutines on the Python backend's event loop (`async def execute` of a
decoupled model), so `execute` never blocks Triton and many requests interleave.

Metrics on Triton's metrics port, labelled by model and version (besides Triton's own
`nv_inference_*`): `genai_llm_requests_cancelled_total` and `genai_llm_output_tokens_total`
(counters), `genai_llm_requests_in_flight` (gauge).
"""

import asyncio
import json

import triton_python_backend_utils as pb_utils
from genai_triton import facade

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
TOKEN_INTERVAL_US = "token_interval_us"
CONTEXT_LENGTH = "context_length"


def token_text(index: int) -> str:
    """The text of output token `index`."""
    return f"tok{index} "


def _config_parameter(model_config: dict, name: str, default: str) -> str:
    value = model_config.get("parameters", {}).get(name, {}).get("string_value", "")
    return value or default


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        self.token_interval_us = int(_config_parameter(model_config, TOKEN_INTERVAL_US, "0"))
        self.context_length = int(_config_parameter(model_config, CONTEXT_LENGTH, "1000000"))
        self.logger = pb_utils.Logger
        labels = {"model": args["model_name"], "version": args["model_version"]}
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self._families = [
            pb_utils.MetricFamily(
                "genai_llm_requests_cancelled_total", "Requests cancelled by the client", counter
            ),
            pb_utils.MetricFamily("genai_llm_output_tokens_total", "Tokens generated", counter),
            pb_utils.MetricFamily(
                "genai_llm_requests_in_flight", "Requests being generated now", gauge
            ),
        ]
        self.cancelled, self.output_tokens, self.in_flight = (
            family.Metric(labels=labels) for family in self._families
        )

    async def execute(self, requests):
        await asyncio.gather(*(self._serve(request) for request in requests))
        return None

    async def _serve(self, request):
        sender = request.get_response_sender()
        self.in_flight.increment(1)
        try:
            generation = facade.read_generation_request(facade.request_arrays(pb_utils, request))
            num_input_tokens = len(generation.prompt.split())
            if num_input_tokens + generation.max_tokens > self.context_length:
                raise facade.FacadeError(
                    facade.CONTEXT_LENGTH_EXCEEDED,
                    f"prompt has {num_input_tokens} tokens and max_tokens is "
                    f"{generation.max_tokens}, the context is {self.context_length}",
                )
            interval_s = self._token_interval_us(request) / 1e6
            generated = await self._generate(sender, generation, num_input_tokens, interval_s)
            self.output_tokens.increment(generated)
        except facade.FacadeError as error:
            _send(sender, facade.error_response(pb_utils, error))
        except Exception as error:  # a bug here must still end the request
            self.logger.log_error(f"zero_llm failed: {error!r}")
            internal = facade.FacadeError(facade.INTERNAL_ERROR, f"zero_llm failed: {error}")
            _send(sender, facade.error_response(pb_utils, internal))
        finally:
            self.in_flight.increment(-1)

    def _token_interval_us(self, request) -> int:
        raw = request.parameters()
        parameters = json.loads(raw) if raw else {}
        value = parameters.get(TOKEN_INTERVAL_US, self.token_interval_us)
        try:
            interval = int(value)
        except (TypeError, ValueError):
            interval = -1
        if interval < 0:
            raise facade.FacadeError(
                facade.FIELD_VIOLATION, f"{TOKEN_INTERVAL_US} must be an integer >= 0"
            )
        return interval

    async def _generate(self, sender, generation, num_input_tokens, interval_s):
        """Sends the responses of one request; returns the number of tokens generated."""
        stops = facade.StopWordFilter(generation.stop_words)
        echo = not (generation.stream or generation.exclude_input_in_output)
        collected = [generation.prompt] if echo else []
        generated = 0
        while True:
            # Pace, and let the other requests' coroutines run.
            await asyncio.sleep(interval_s)
            if sender.is_cancelled():
                self._cancelled(sender, num_input_tokens, generated)
                return generated
            finish = ""
            if generation.end_id is not None and generated == generation.end_id:
                delta, finish = stops.flush(), facade.FINISH_STOP
            else:
                delta, stopped = stops.push(token_text(generated))
                generated += 1
                if stopped:
                    finish = facade.FINISH_STOP_WORDS
                elif generated >= generation.max_tokens:
                    delta, finish = delta + stops.flush(), facade.FINISH_LENGTH
            if not generation.stream:
                collected.append(delta)
                if not finish:
                    continue
                delta = "".join(collected)
            response = facade.generation_response(
                pb_utils,
                delta,
                num_input_tokens=num_input_tokens,
                num_output_tokens=generated,
                finish_reason=finish,
            )
            if finish:
                _send(sender, response)
                return generated
            if not _send(sender, response, flags=0):
                self._cancelled(sender, num_input_tokens, generated)
                return generated

    def _cancelled(self, sender, num_input_tokens, generated):
        """Ends a request the client cancelled with a final `cancelled` response (which the
        client no longer reads) so that Triton releases it."""
        self.cancelled.increment(1)
        response = facade.generation_response(
            pb_utils,
            "",
            num_input_tokens=num_input_tokens,
            num_output_tokens=generated,
            finish_reason=facade.FINISH_CANCELLED,
        )
        if not _send(sender, response):
            _send(sender, None)

    def finalize(self):
        # Metrics go before their families (the Python backend requires that order).
        del self.cancelled, self.output_tokens, self.in_flight
        self._families.clear()


def _send(sender, response, flags=FINAL) -> bool:
    """Sends `response` (None: flags only); False when the request is gone (e.g. cancelled
    meanwhile)."""
    try:
        if response is None:
            sender.send(flags=flags)
        else:
            sender.send(response, flags=flags)
    except Exception as error:  # whatever the sender raises, the request is gone
        pb_utils.Logger.log_warn(f"zero_llm could not send a response: {error}")
        return False
    return True
