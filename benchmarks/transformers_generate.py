"""The peer baseline of the `inference` benchmark: plain `transformers` generation on the same
weights, in a process of its own (so that it never competes with Triton for the cores).

`python -m benchmarks.transformers_generate --model-dir DIR [--threads 2]` loads
`LlamaForCausalLM` and its tokenizer from DIR, warms up, prints one JSON line
(`{"ready": true, ...}`), then answers each JSON line on standard input with one JSON line:

request  `{"conversations": [[{"role": "user", "content": "..."}], ...], "max_new_tokens": 64,
          "min_new_tokens": 64}`
answer   `{"batch": 8, "seconds": 3.2, "first_token_seconds": 0.4, "input_tokens": [...],
          "output_tokens": [...], "texts": [...], "cpu_seconds": 6.1}` or `{"error": "..."}`

Each conversation is rendered with the tokenizer's chat template (the same template
InferenceService renders with) and the batch is generated greedily in one `generate` call, left
padded. `seconds` is that call's wall time; `first_token_seconds` is when its first new token
came out (through a streamer). It stops when standard input closes.
"""

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_THREADS = 2


@dataclass(frozen=True)
class GenerateRequest:
    """One batch to generate: a conversation per sequence."""

    conversations: Sequence[Sequence[Mapping[str, str]]]
    max_new_tokens: int
    min_new_tokens: int = 0

    def to_line(self) -> str:
        return json.dumps(
            {
                "conversations": [list(map(dict, c)) for c in self.conversations],
                "max_new_tokens": self.max_new_tokens,
                "min_new_tokens": self.min_new_tokens,
            }
        )

    @classmethod
    def from_line(cls, line: str) -> "GenerateRequest":
        document = json.loads(line)
        conversations = document["conversations"]
        if not conversations or not all(isinstance(c, list) and c for c in conversations):
            raise ValueError("conversations must be a non-empty list of non-empty lists")
        max_new = int(document["max_new_tokens"])
        min_new = int(document.get("min_new_tokens", 0))
        if max_new < 1 or not 0 <= min_new <= max_new:
            raise ValueError("need 1 <= max_new_tokens and 0 <= min_new_tokens <= max_new_tokens")
        return cls(
            conversations=[
                [{"role": m["role"], "content": m["content"]} for m in c] for c in conversations
            ],
            max_new_tokens=max_new,
            min_new_tokens=min_new,
        )


@dataclass(frozen=True)
class GenerateResult:
    """What one `generate` call did."""

    batch: int
    seconds: float
    first_token_seconds: float
    input_tokens: Sequence[int]
    output_tokens: Sequence[int]
    texts: Sequence[str]
    cpu_seconds: float = float("nan")
    """CPU time of the worker process (all its threads) during the call."""

    @property
    def tokens_per_s(self) -> float:
        """New tokens of the whole batch per second of the call."""
        return sum(self.output_tokens) / self.seconds if self.seconds > 0 else float("nan")

    def to_line(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_line(cls, line: str) -> "GenerateResult":
        """Parses an answer line; raises RuntimeError with the worker's error message."""
        document = json.loads(line)
        if "error" in document:
            raise RuntimeError(f"transformers generation failed: {document['error']}")
        return cls(
            batch=int(document["batch"]),
            seconds=float(document["seconds"]),
            first_token_seconds=float(document["first_token_seconds"]),
            input_tokens=[int(n) for n in document["input_tokens"]],
            output_tokens=[int(n) for n in document["output_tokens"]],
            texts=[str(t) for t in document["texts"]],
            cpu_seconds=float(document.get("cpu_seconds", "nan")),
        )


class TransformersWorker:
    """The benchmark's end of a running `python -m benchmarks.transformers_generate`."""

    def __init__(self, process: asyncio.subprocess.Process, ready: Mapping[str, Any]) -> None:
        self._process = process
        self.ready = dict(ready)
        """The worker's ready line: load time, threads, versions, dtype."""

    async def generate(self, request: GenerateRequest, patience_s: float = 600.0) -> GenerateResult:
        """Runs one batch; raises RuntimeError when the worker fails, dies or takes longer
        than `patience_s`."""
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write((request.to_line() + "\n").encode())
        await stdin.drain()
        line = await asyncio.wait_for(stdout.readline(), patience_s)
        if not line:
            raise RuntimeError(f"the transformers worker exited ({await self._process.wait()})")
        return GenerateResult.from_line(line.decode())


@asynccontextmanager
async def transformers_worker(
    model_dir: Path, *, threads: int, log_file: Path, start_timeout: float = 300.0
) -> AsyncIterator[TransformersWorker]:
    """Starts the worker (its stderr in `log_file`), waits until it has loaded and warmed up,
    and stops it (closing its stdin) when the block ends."""
    from benchmarks.serving import ROOT

    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.transformers_generate",
            "--model-dir",
            str(model_dir),
            "--threads",
            str(threads),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), start_timeout)
        if not line:
            raise RuntimeError(
                f"the transformers worker exited ({await process.wait()}); see {log_file}"
            )
        yield TransformersWorker(process, json.loads(line))
    finally:
        if process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()


class _Generator:
    """The model and tokenizer, loaded once."""

    def __init__(self, model_dir: str, threads: int) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaForCausalLM

        torch.set_num_threads(threads)
        self._torch = torch
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # from_pretrained returns the model in eval mode (no dropout).
        self.model: Any = LlamaForCausalLM.from_pretrained(model_dir)

    def generate(self, request: GenerateRequest) -> GenerateResult:
        from transformers.generation.streamers import BaseStreamer

        prompts = [
            self.tokenizer.apply_chat_template(
                list(conversation), tokenize=False, add_generation_prompt=True
            )
            for conversation in request.conversations
        ]
        # The rendered text carries its special tokens already (as InferenceService sends it).
        encoded = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        )
        first_token_at: list[float] = []

        class FirstToken(BaseStreamer):
            calls = 0

            def put(self, value: Any) -> None:
                self.calls += 1  # the first call carries the prompt, the second the first token
                if self.calls == 2:
                    first_token_at.append(time.perf_counter())

            def end(self) -> None:
                pass

        cpu_started = time.process_time()
        started = time.perf_counter()
        with self._torch.inference_mode():
            output = self.model.generate(
                **encoded,
                do_sample=False,
                max_new_tokens=request.max_new_tokens,
                min_new_tokens=request.min_new_tokens or None,
                pad_token_id=self.tokenizer.pad_token_id,
                streamer=FirstToken(),
            )
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        prompt_length = encoded["input_ids"].shape[1]
        new = output[:, prompt_length:]
        end_ids = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        output_tokens = []
        texts = []
        for row in new.tolist():
            # A sequence that ended early is padded to the longest one: count up to its end.
            length = next((i for i, t in enumerate(row) if t in end_ids), len(row))
            output_tokens.append(length)
            texts.append(self.tokenizer.decode(row[:length], skip_special_tokens=True))
        return GenerateResult(
            batch=len(prompts),
            seconds=seconds,
            first_token_seconds=(first_token_at[0] if first_token_at else started + seconds)
            - started,
            input_tokens=[int(n) for n in encoded["attention_mask"].sum(dim=1).tolist()],
            output_tokens=output_tokens,
            texts=texts,
            cpu_seconds=cpu_seconds,
        )


def serve(model_dir: str, threads: int) -> None:
    """Loads the model, warms it up, reports ready, then answers requests until stdin closes."""
    import torch
    import transformers

    started = time.perf_counter()
    generator = _Generator(model_dir, threads)
    loaded = time.perf_counter() - started
    generator.generate(GenerateRequest([[{"role": "user", "content": "Hi"}]], max_new_tokens=2))
    ready = {
        "ready": True,
        "load_seconds": loaded,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": str(generator.model.dtype),
    }
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = generator.generate(GenerateRequest.from_line(line)).to_line()
        except Exception as error:  # reported to the benchmark, which fails with it
            answer = json.dumps({"error": f"{type(error).__name__}: {error}"})
        print(answer, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.transformers_generate",
        description="Greedy transformers generation, one JSON line in, one out.",
    )
    parser.add_argument("--model-dir", required=True, help="the prepared SmolLM2 directory")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="torch threads")
    args = parser.parse_args(argv)
    serve(args.model_dir, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
