"""Table-driven tests of merging a prompt version's routing preferences and sampling parameters
with a request's."""

import pytest
from genai.common.v1 import generation_pb2, money_pb2, routing_pb2
from google.protobuf.duration_pb2 import Duration

from services.router.preferences import merge_parameters, merge_preferences

P = routing_pb2.RoutingPreferences
CHAT, JSON, STREAMING = (
    routing_pb2.CAPABILITY_CHAT,
    routing_pb2.CAPABILITY_JSON_OUTPUT,
    routing_pb2.CAPABILITY_STREAMING,
)
COST, LATENCY = routing_pb2.ROUTING_POLICY_COST, routing_pb2.ROUTING_POLICY_LATENCY
FLOOR = routing_pb2.ROUTING_POLICY_QUALITY_FLOOR


def usd(nanos: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", nanos=nanos)


CASES = [
    ("neither", None, None, P()),
    ("version only", P(policy=COST, min_quality_tier=3), None, P(policy=COST, min_quality_tier=3)),
    ("request only", None, P(model="smollm2"), P(model="smollm2")),
    (
        "request policy wins",
        P(policy=COST),
        P(policy=LATENCY),
        P(policy=LATENCY),
    ),
    (
        "unset request fields inherit",
        P(policy=COST, min_quality_tier=4, max_cost=usd(5000)),
        P(model="zero"),
        P(model="zero", policy=COST, min_quality_tier=4, max_cost=usd(5000)),
    ),
    (
        "request ceiling and targets replace the version's",
        P(max_cost=usd(5000), max_first_token_duration=Duration(seconds=2)),
        P(max_cost=usd(100), max_total_duration=Duration(seconds=9)),
        P(
            max_cost=usd(100),
            max_first_token_duration=Duration(seconds=2),
            max_total_duration=Duration(seconds=9),
        ),
    ),
    (
        "capabilities are the union, in order, without repeats",
        P(required_capabilities=[CHAT, JSON]),
        P(required_capabilities=[JSON, STREAMING]),
        P(required_capabilities=[CHAT, JSON, STREAMING]),
    ),
    (
        "a version's quality floor passes through",
        P(policy=FLOOR, min_quality_score=0.7, quality_dataset="chat-basics"),
        P(model=""),
        P(policy=FLOOR, min_quality_score=0.7, quality_dataset="chat-basics"),
    ),
    (
        "a request's quality floor passes through",
        None,
        P(policy=FLOOR, min_quality_score=0.5, quality_dataset="facts", quality_scorer="answer"),
        P(policy=FLOOR, min_quality_score=0.5, quality_dataset="facts", quality_scorer="answer"),
    ),
    (
        "the request's floor, dataset and scorer win, a floor of 0 included",
        P(policy=FLOOR, min_quality_score=0.7, quality_dataset="a", quality_scorer="x"),
        P(min_quality_score=0.0, quality_dataset="b"),
        P(policy=FLOOR, min_quality_score=0.0, quality_dataset="b", quality_scorer="x"),
    ),
    (
        "a request cannot drop a version's capability",
        P(required_capabilities=[JSON]),
        P(required_capabilities=[]),
        P(required_capabilities=[JSON]),
    ),
]


@pytest.mark.parametrize(
    ("version", "request_", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_merge(version: P | None, request_: P | None, expected: P) -> None:
    before = [P(), P()]
    for copy, original in zip(before, (version, request_), strict=True):
        if original is not None:
            copy.CopyFrom(original)

    assert merge_preferences(version, request_) == expected
    assert [version or P(), request_ or P()] == before  # inputs untouched


S = generation_pb2.SamplingParameters

PARAMETER_CASES = [
    ("neither", None, S(), S()),
    ("version only", S(temperature=0.5, stop=["\n"]), S(), S(temperature=0.5, stop=["\n"])),
    ("request only", None, S(max_tokens=8), S(max_tokens=8)),
    (
        "set request fields win, unset ones inherit",
        S(temperature=0.5, top_p=0.9, max_tokens=64),
        S(temperature=0.0, seed=7),
        S(temperature=0.0, top_p=0.9, max_tokens=64, seed=7),
    ),
    (
        "a request stop list replaces the version's",
        S(stop=["a", "b"]),
        S(stop=["c"]),
        S(stop=["c"]),
    ),
    (
        "an empty request stop list keeps the version's",
        S(stop=["a"]),
        S(top_k=5),
        S(stop=["a"], top_k=5),
    ),
]


@pytest.mark.parametrize(
    ("version", "request_", "expected"),
    [case[1:] for case in PARAMETER_CASES],
    ids=[case[0] for case in PARAMETER_CASES],
)
def test_merge_parameters(version: S | None, request_: S, expected: S) -> None:
    originals = [
        S() if m is None else S.FromString(m.SerializeToString()) for m in (version, request_)
    ]
    assert merge_parameters(version, request_) == expected
    assert [S() if m is None else m for m in (version, request_)] == originals  # unmodified
