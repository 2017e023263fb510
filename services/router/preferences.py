"""Combining routing preferences: a prompt version's defaults, then the request's overrides.

The request wins field by field: a set field (a non-empty model, a policy other than
UNSPECIFIED, a non-zero quality floor, a present cost ceiling or latency target) replaces the
version's. Required capabilities are the exception: they are the union of both lists, because
a version's requirement (JSON output for a prompt with an output schema, say) is a property of
the prompt that no request can take away.
"""

from genai.common.v1 import routing_pb2

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
    for name in _MESSAGE_FIELDS:
        if request.HasField(name):
            getattr(merged, name).CopyFrom(getattr(request, name))
    for capability in request.required_capabilities:
        if capability not in merged.required_capabilities:
            merged.required_capabilities.append(capability)
    return merged
