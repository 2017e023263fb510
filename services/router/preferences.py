"""Combining a prompt version's defaults with a request's overrides: routing preferences
(`merge_preferences`) and sampling parameters (`merge_parameters`).

For routing preferences the request wins field by field: a set field (a non-empty model, a
policy other than UNSPECIFIED, a non-zero quality tier floor, a present evaluation score floor,
a non-empty evaluation dataset or scorer, a present cost ceiling or latency target) replaces
the version's. Required capabilities are the exception: they are the union of
both lists, because a version's requirement (JSON output for a prompt with an output schema,
say) is a property of the prompt that no request can take away. For sampling parameters every
field the request sets replaces the version's; a non-empty `stop` list replaces the version's
list as a whole.
"""

from genai.common.v1 import generation_pb2, routing_pb2

_MESSAGE_FIELDS = ("max_cost", "max_first_token_duration", "max_total_duration")


def merge_preferences(
    version: routing_pb2.RoutingPreferences | None,
    request: routing_pb2.RoutingPreferences | None,
) -> routing_pb2.RoutingPreferences:
    """The preferences that route one request (see the module docstring); neither argument
    is modified."""
    merged = routing_pb2.RoutingPreferences()
    if version is not None:
        merged.CopyFrom(version)
    if request is None:
        return merged
    if request.model:
        merged.model = request.model
    if request.policy != routing_pb2.ROUTING_POLICY_UNSPECIFIED:
        merged.policy = request.policy
    if request.min_quality_tier:
        merged.min_quality_tier = request.min_quality_tier
    if request.HasField("min_quality_score"):
        merged.min_quality_score = request.min_quality_score
    if request.quality_dataset:
        merged.quality_dataset = request.quality_dataset
    if request.quality_scorer:
        merged.quality_scorer = request.quality_scorer
    for name in _MESSAGE_FIELDS:
        if request.HasField(name):
            getattr(merged, name).CopyFrom(getattr(request, name))
    for capability in request.required_capabilities:
        if capability not in merged.required_capabilities:
            merged.required_capabilities.append(capability)
    return merged


def merge_parameters(
    version: generation_pb2.SamplingParameters | None,
    request: generation_pb2.SamplingParameters,
) -> generation_pb2.SamplingParameters:
    """The version's sampling parameters with the request's set fields on top (a non-empty
    `stop` list replaces the version's); neither argument is modified."""
    merged = generation_pb2.SamplingParameters()
    if version is not None:
        merged.CopyFrom(version)
    for descriptor, value in request.ListFields():
        if descriptor.name == "stop":
            del merged.stop[:]
            merged.stop.extend(value)
        else:
            setattr(merged, descriptor.name, value)
    return merged
