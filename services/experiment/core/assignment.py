"""Deterministic assignment of units to an experiment's holdout or variants. Pure functions.

A unit's bucket is `int.from_bytes(sha256(f"{salt}:{unit_id}")[:8], "big") % 10_000`: stable
across processes, machines and languages, and independent between salts. (The modulo bias of
2**64 % 10_000 buckets is below 1e-15.) Buckets `[0, H)`, `H = round(holdout_share * 10_000)`,
are the holdout; the rest, `[H, 10_000)`, is cut into one contiguous range per variant, in
variant order, each as wide as its weight's share (boundaries rounded down, the last one
fixed at 10_000).

Stickiness is not these functions' job: `assign` maps a bucket with the *current* weights, so a
weight change would move some units. The store therefore keeps every unit's first assignment
and calls `assign` only for units it has not seen (see
`services.experiment.adapters.sql_store`); the holdout range depends on the holdout share only,
so holdout membership survives weight changes by construction.
"""

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from services.experiment.core.model import Experiment, Variant

BUCKETS: Final = 10_000
"""Buckets of the assignment hash; the finest share a variant or the holdout can get is 1/10,000."""


@dataclass(frozen=True, slots=True)
class BucketRange:
    """The buckets `[start, stop)` of one variant, or of the holdout when `variant` is empty."""

    variant: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        """Number of buckets in the range."""
        return self.stop - self.start


@dataclass(frozen=True, slots=True)
class Assignment:
    """The variant one unit is served, or the holdout (`variant` None)."""

    experiment: str
    prompt: str
    """The prompt of the experiment, which the variant's `prompt_version` refers to."""
    unit_id: str
    bucket: int
    variant: Variant | None
    """The assigned variant as it is now (its weight may have changed since); None when held
    out."""

    @property
    def holdout(self) -> bool:
        """Whether the unit is held out: served as if the experiment did not exist."""
        return self.variant is None

    @property
    def variant_name(self) -> str:
        """Name of the assigned variant; empty when held out."""
        return "" if self.variant is None else self.variant.name


def bucket(salt: str, unit_id: str) -> int:
    """The unit's bucket in [0, 10_000): the first 8 bytes of SHA-256 of `salt:unit_id` (UTF-8),
    big-endian, modulo 10_000."""
    digest = hashlib.sha256(f"{salt}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def holdout_buckets(holdout_share: float) -> int:
    """How many buckets, from 0 up, the holdout takes."""
    return round(holdout_share * BUCKETS)


def bucket_ranges(holdout_share: float, variants: Sequence[Variant]) -> tuple[BucketRange, ...]:
    """The holdout's range (first, possibly empty), then each variant's, covering every bucket.
    `variants` must be non-empty with weights > 0 (as validation ensures)."""
    first = holdout_buckets(holdout_share)
    span = BUCKETS - first
    total = math.fsum(v.weight for v in variants)
    ranges = [BucketRange("", 0, first)]
    start, cumulative = first, 0.0
    for index, variant in enumerate(variants):
        cumulative += variant.weight
        if index == len(variants) - 1:
            stop = BUCKETS
        else:
            stop = min(BUCKETS, first + math.floor(cumulative / total * span))
        ranges.append(BucketRange(variant.name, start, stop))
        start = stop
    return tuple(ranges)


def variant_shares(holdout_share: float, variants: Sequence[Variant]) -> dict[str, float]:
    """Each variant's exact share of the units that are not held out (its buckets over all
    non-holdout buckets): the expectation the sample-ratio check compares with."""
    ranges = bucket_ranges(holdout_share, variants)
    span = BUCKETS - ranges[0].size
    return {r.variant: r.size / span for r in ranges[1:]}


def variant_of_bucket(value: int, ranges: Sequence[BucketRange]) -> str:
    """The variant name whose range holds bucket `value`; empty for the holdout."""
    for candidate in ranges:
        if candidate.start <= value < candidate.stop:
            return candidate.variant
    raise ValueError(f"bucket {value} is outside [0, {BUCKETS})")


def assign(experiment: Experiment, unit_id: str) -> Assignment:
    """Where a unit goes under the experiment's salt, holdout share and *current* weights.

    For units never assigned before only: the store keeps each unit's first assignment, which is
    what makes assignment sticky across weight changes.
    """
    value = bucket(experiment.salt, unit_id)
    name = variant_of_bucket(value, bucket_ranges(experiment.holdout_share, experiment.variants))
    return Assignment(
        experiment=experiment.name,
        prompt=experiment.prompt,
        unit_id=unit_id,
        bucket=value,
        variant=experiment.variant(name) if name else None,
    )
