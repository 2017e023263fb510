"""What the prompt service's servers and clients share at the proto edge: the service's name
and a version's content document (`version_content`).

The servicer, the client (`services.prompt.client`), the prompt files and the `genai prompts`
commands convert versions the same way through this module, so no client imports the servicer.
"""

from typing import Any, Final

from genai.prompt.v1 import prompt_pb2
from google.protobuf import json_format

from services.common.errors import FieldViolation, InvalidArgument
from services.prompt.core.registry import CONTENT_FIELDS

SERVICE_NAME: Final = "genai.prompt.v1.PromptService"


def version_content(version: prompt_pb2.PromptVersion) -> dict[str, Any]:
    """The behaviour-defining fields of a version as its JSON content document.

    Raises `InvalidArgument` when a JSON value in it (a default value, the output schema) is
    a number JSON cannot hold (NaN or an infinity)."""
    try:
        document = json_format.MessageToDict(version, preserving_proto_field_name=True)
    except (ValueError, json_format.Error) as error:
        raise InvalidArgument(
            violations=[FieldViolation("version", f"is not representable as JSON: {error}")]
        ) from None
    return {field: document[field] for field in CONTENT_FIELDS if field in document}
