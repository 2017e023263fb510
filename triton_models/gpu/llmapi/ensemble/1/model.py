"""ensemble (llmapi): the generation facade of triton_models/README.md over TensorRT-LLM's LLM
API (PyTorch backend, no engine build). Triton glue only: the logic is `llm_facade.py`,
unit-tested without Triton and without a GPU (tests/unit/triton_models/test_llmapi_facade.py).

- `initialize` reads `model.yaml` (the `LLM()` arguments) and the config's parameters, loads the
  tokenizer and starts one `tensorrt_llm.LLM` for this instance (keep one instance: each would
  take its own GPUs).
- `execute` (async) runs each request as a coroutine on the Python backend's event loop, where
  `LLM.generate_async` binds its results. Decoupled, a request sends one response per chunk of
  `llm_facade.generate`, the last flagged final; not decoupled, it returns the final one.
- Errors are in-band, `[REASON] message` (see `genai_triton.facade.FacadeError`).
"""

import asyncio
import contextlib
import json
from pathlib import Path

import llm_facade
import triton_python_backend_utils as pb_utils
import yaml
from genai_triton import facade

MODEL_YAML = Path(__file__).resolve().parent / "model.yaml"


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        parameters = {
            name: value.get("string_value", "")
            for name, value in model_config.get("parameters", {}).items()
        }
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(model_config)
        self.logger = pb_utils.Logger
        self.settings = llm_facade.read_settings(
            yaml.safe_load(MODEL_YAML.read_text(encoding="utf-8")) or {}, parameters
        )
        # Imported here, not at the top: importing tensorrt_llm initialises CUDA (as
        # TensorRT-LLM's own Triton model, triton_backend/all_models/llmapi, defers it).
        import tensorrt_llm.llmapi as api
        from transformers import AutoTokenizer

        self.api = api
        self.tokenizer = AutoTokenizer.from_pretrained(self.settings.tokenizer)
        arguments = llm_facade.llm_arguments(self.settings, api)
        self.logger.log_info(f"ensemble: starting tensorrt_llm.LLM with {arguments}")
        self.llm = api.LLM(**arguments)

    def finalize(self):
        llm = getattr(self, "llm", None)  # absent when initialize failed
        if llm is not None:
            llm.shutdown()

    async def execute(self, requests):
        if self.decoupled:
            await asyncio.gather(*(self._stream(request) for request in requests))
            return None
        return list(await asyncio.gather(*(self._once(request) for request in requests)))

    async def _stream(self, request):
        sender = request.get_response_sender()
        final_sent = False
        try:
            # aclosing: a failed send ends the generator at once, which aborts the LLM request.
            async with contextlib.aclosing(self._chunks(request, sender.is_cancelled)) as chunks:
                async for chunk in chunks:
                    flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if chunk.final else 0
                    sender.send(self._response(chunk), flags=flags)
                    final_sent = chunk.final
        except Exception as error:  # every request ends with a final response
            if final_sent:
                self.logger.log_warn(f"ensemble: after the final response: {error!r}")
                return
            try:
                sender.send(self._error(error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as send_error:  # the request is gone (e.g. cancelled)
                self.logger.log_warn(f"ensemble could not send an error: {send_error!r}")

    async def _once(self, request):
        is_cancelled = getattr(request, "is_cancelled", lambda: False)
        try:
            async with contextlib.aclosing(self._chunks(request, is_cancelled)) as chunks:
                async for chunk in chunks:
                    if chunk.final:
                        return self._response(chunk)
        except Exception as error:
            return self._error(error)
        return self._error(RuntimeError("the request ended without a final response"))

    async def _chunks(self, request, is_cancelled):
        arrays = facade.request_arrays(pb_utils, request)
        plan = llm_facade.plan_generation(
            facade.read_generation_request(arrays),
            self.settings,
            self.tokenizer,
            decoupled=self.decoupled,
        )
        async for chunk in llm_facade.generate(
            self.llm, self.api, plan, is_cancelled, self.settings.check_period_s
        ):
            yield chunk

    def _response(self, chunk):
        return facade.generation_response(
            pb_utils,
            chunk.text,
            num_input_tokens=chunk.num_input_tokens,
            num_output_tokens=chunk.num_output_tokens,
            finish_reason=chunk.finish_reason,
        )

    def _error(self, error):
        if not isinstance(error, facade.FacadeError):
            self.logger.log_error(f"ensemble failed: {error!r}")
            error = facade.FacadeError(facade.INTERNAL_ERROR, f"ensemble failed: {error!r}")
        return facade.error_response(pb_utils, error)
