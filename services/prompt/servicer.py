"""genai.prompt.v1.PromptService: converts between protos and the registry's domain types."""

from genai.prompt.v1 import prompt_service_pb2_grpc

from services.common.unimplemented import pending_rpcs

SERVICE_NAME = "genai.prompt.v1.PromptService"

_REGISTRY = "the prompt registry with SQLite/PostgreSQL storage (issue #4)"
_LABELS = "labels with expected-version preconditions and history (issue #4)"


@pending_rpcs(
    SERVICE_NAME,
    {
        "CreatePrompt": _REGISTRY,
        "GetPrompt": _REGISTRY,
        "ListPrompts": _REGISTRY,
        "UpdatePrompt": _REGISTRY,
        "CreatePromptVersion": "immutable, gapless prompt versions with template checks (issue #4)",
        "GetPromptVersion": _REGISTRY,
        "ListPromptVersions": _REGISTRY,
        "DiffPromptVersions": "the version diff of messages, variables and parameters (issue #4)",
        "SetLabel": _LABELS,
        "DeleteLabel": _LABELS,
        "RollbackLabel": _LABELS,
        "ListLabelHistory": _LABELS,
        "RenderPrompt": "sandboxed Jinja2 rendering with typed variables (issue #4)",
        "WatchLabels": "the push stream of label moves (issue #4)",
    },
)
class PromptServicer(prompt_service_pb2_grpc.PromptServiceServicer):
    """Serves PromptService. Every RPC waits on the registry of issue #4."""
