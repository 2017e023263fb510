"""Catalog prices from measured CPU cost per token (the method `services/router/catalog.yaml`
and the README's Routing section document; `scripts/bench routing` measures and prints them).

A model's price per million tokens is what the CPU time it spends on them costs:

    price per million tokens = CPU-seconds per token x DOLLARS_PER_CPU_HOUR / 3600 x 1,000,000

measured apart for input (prefill) and output (decode) tokens, because a model reads a prompt
many tokens per forward pass and writes one token per pass. The CPU-seconds are those of
Triton's process group (the model's own processes and Python-backend stubs), from /proc, over
requests sent one at a time straight to InferenceService (text input, greedy):

- output: (CPU of a short prompt generating n tokens - CPU of the same prompt generating 1)
  / (n - 1), where n is the usage's output token count;
- input: (CPU of a long prompt generating 1 token - CPU of the short prompt generating 1)
  / (difference of the usage's input token counts).

Each probe runs several times and the medians go into the formulas; every request's prompt
starts with a word of its own, so that the engine's prefix cache (KV reuse) serves none of it. One request at a time is
the worst case: batching spreads a forward pass over several streams (SmolLM2 decodes 4 times
the tokens per CPU-second at batch 8 on these machines), so these are list prices for
unbatched traffic. `DOLLARS_PER_CPU_HOUR` is a round figure near on-demand cloud list prices
for one vCPU of a compute-optimised instance; change it for your own hardware.
"""

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

DOLLARS_PER_CPU_HOUR: Final = Decimal("0.05")
"""What one CPU core costs per hour, in the catalog's currency (USD)."""
PRICE_QUANTUM: Final = Decimal("0.001")
"""Catalog prices are rounded to a tenth of a cent per million tokens."""


def price_per_million_tokens(
    cpu_seconds_per_token: float, dollars_per_cpu_hour: Decimal = DOLLARS_PER_CPU_HOUR
) -> Decimal:
    """What a million tokens cost at `cpu_seconds_per_token` (negative measurements, noise
    around zero, count as 0), rounded to `PRICE_QUANTUM`."""
    seconds = Decimal(repr(max(cpu_seconds_per_token, 0.0)))
    price = seconds * dollars_per_cpu_hour / 3600 * 1_000_000
    return price.quantize(PRICE_QUANTUM, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Probe:
    """One request of a price measurement: its usage and the CPU seconds Triton spent on it."""

    input_tokens: int
    output_tokens: int
    cpu_s: float


@dataclass(frozen=True)
class CpuCost:
    """A model's measured CPU-seconds per input and per output token."""

    input_cpu_s_per_token: float
    output_cpu_s_per_token: float

    def prices(
        self, dollars_per_cpu_hour: Decimal = DOLLARS_PER_CPU_HOUR
    ) -> tuple[Decimal, Decimal]:
        """(input, output) price per million tokens."""
        return (
            price_per_million_tokens(self.input_cpu_s_per_token, dollars_per_cpu_hour),
            price_per_million_tokens(self.output_cpu_s_per_token, dollars_per_cpu_hour),
        )


def cpu_cost(
    short_one: Sequence[Probe], short_many: Sequence[Probe], long_one: Sequence[Probe]
) -> CpuCost:
    """The per-token CPU cost from the three probes (see the module docstring): the short
    prompt generating 1 token, the short prompt generating many, the long prompt generating 1.
    ValueError when a probe is missing or the token counts do not differ."""
    if not (short_one and short_many and long_one):
        raise ValueError("every probe needs at least one request")
    base = _median(p.cpu_s for p in short_one)
    extra_outputs = _median(p.output_tokens for p in short_many) - _median(
        p.output_tokens for p in short_one
    )
    extra_inputs = _median(p.input_tokens for p in long_one) - _median(
        p.input_tokens for p in short_one
    )
    if extra_outputs <= 0 or extra_inputs <= 0:
        raise ValueError(
            f"the probes must differ in tokens (outputs +{extra_outputs}, inputs +{extra_inputs})"
        )
    return CpuCost(
        input_cpu_s_per_token=(_median(p.cpu_s for p in long_one) - base) / extra_inputs,
        output_cpu_s_per_token=(_median(p.cpu_s for p in short_many) - base) / extra_outputs,
    )


def _median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))
