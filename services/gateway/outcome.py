"""What the parts of a completion share (`services.gateway.completion`): who calls (`Caller`),
what one completion did (`Outcome`, filled in by the pipeline as it goes, then logged and
accounted by `services.gateway.accounting`), and what feedback on it needs later
(`ServedRequest`)."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Final

import grpc
from genai.common.v1 import chat_pb2, generation_pb2
from genai.gateway.v1 import gateway_pb2, gateway_service_pb2

from services.gateway.core.idempotency import Claim
from services.gateway.core.quota import Reservation
from services.prompt.client import RenderedPrompt
from services.router.failover import RoutedStream

STREAM_METHOD: Final = "/genai.gateway.v1.GatewayService/StreamComplete"
UNARY_METHOD: Final = "/genai.gateway.v1.GatewayService/Complete"
FEEDBACK_METHOD: Final = "/genai.gateway.v1.GatewayService/RecordFeedback"
OPENAI_CHAT_METHOD: Final = "/openai/v1/chat/completions"
"""The method of the OpenAI-compatible HTTP API's chat completions (`services.gateway.openai`):
the `method` label of metrics and, without the slash, the request log's `method`."""
OPENAI_COMPLETIONS_METHOD: Final = "/openai/v1/completions"
"""The method of the OpenAI-compatible HTTP API's text completions."""
OPENAI_EMBEDDINGS_METHOD: Final = "/openai/v1/embeddings"
"""The method of the OpenAI-compatible HTTP API's embeddings."""

Request = gateway_service_pb2.StreamCompleteRequest
Response = gateway_service_pb2.StreamCompleteResponse


@dataclass(frozen=True)
class Caller:
    """Who asks, and how the engine calls the platform on their behalf."""

    tenant_id: str
    metadata: Sequence[tuple[str, str]]
    """Metadata for every downstream call (the internal token and tenant)."""
    method: str = STREAM_METHOD


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """What feedback on a served request needs: its prompt version and model (online
    evaluation), and its experiment, variant and unit (experiment outcomes)."""

    prompt: str
    prompt_version: int
    model: str
    experiment: str = ""
    variant: str = ""
    unit_id: str = ""


@dataclass
class Outcome:
    """What one completion did, filled in as it goes; logged and accounted at the end."""

    started: float
    request_id: str
    trace_id: str
    request: Request
    arrived: datetime
    rendered: RenderedPrompt | None = None
    label: str = ""
    experiment: str = ""
    variant: str = ""
    unit_id: str = ""
    input_messages: list[chat_pb2.ChatMessage] = field(default_factory=list)
    """What a chat prompt sends the model: the rendered messages, then the request's."""
    input_text: str | None = None
    """What a text prompt sends the model as raw `text` input (None: a chat prompt)."""
    routed: list[RoutedStream] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    """The processed chunks of the current generation (a repair starts it again)."""
    first_token: float | None = None
    last_chunk: float | None = None
    final: gateway_pb2.CompletionMetadata | None = None
    cost: Decimal = Decimal(0)
    currency: str = ""
    code: grpc.StatusCode = grpc.StatusCode.OK
    reservation: Reservation | None = None
    logged: bool = False
    """The request-log record was handed over already (before `final`)."""
    schema_result: str = ""
    """The output schema check: `valid`, `repaired` or `invalid`; empty: none ran."""
    claim: Claim | None = None
    """The request's idempotency claim, until its outcome is stored (None: there is none)."""
    serving: tuple[str, str] | None = None
    """(model, backend id) of the attempt streaming now: set at a generation's first delta,
    from that attempt's `start` (failover happens only before the first token, so this is what
    serves); None before, and again once the generation ended and `routed` records the
    attempt."""

    def sent(self, now: float) -> None:
        """Marks a chunk sent to the caller at `now` (the first one is the TTFT)."""
        if self.first_token is None:
            self.first_token = now
        self.last_chunk = now

    def tokens_used(self) -> int:
        """Input plus output tokens of every attempt so far."""
        return sum(r.usage.input_tokens + r.usage.output_tokens for r in self.routed)

    @property
    def usage(self) -> generation_pb2.TokenUsage:
        """The tokens of every attempt added up; their source is the least exact of theirs
        (`UsageSource` numbers grow from PROVIDER to ESTIMATE)."""
        total = generation_pb2.TokenUsage()
        for routed in self.routed:
            total.input_tokens += routed.usage.input_tokens
            total.output_tokens += routed.usage.output_tokens
            total.usage_source = max(total.usage_source, routed.usage.usage_source)
        return total

    @property
    def constrained(self) -> bool:
        """Whether the first generation decoded under the output schema."""
        return bool(self.routed) and self.routed[0].constrained

    @property
    def operation(self) -> str:
        """The GenAI operation name (`gen_ai.operation.name`): `text_completion` for a text
        prompt, else `chat`."""
        return "chat" if self.input_text is None else "text_completion"

    def attempts(self) -> list[gateway_pb2.Attempt]:
        """Every attempt of every generation so far, in order, as `CompletionMetadata` lists
        them (status `OK`, or the failure's code)."""
        return [
            gateway_pb2.Attempt(
                model=a.model,
                backend_id=a.backend_id,
                status="OK" if not a.error else a.error.split(":", 1)[0],
                error=a.error,
            )
            for routed in self.routed
            for a in routed.attempts
        ]

    @property
    def model(self) -> str:
        """The catalog model that serves (a generation streaming now) or served the latest
        attempt; empty before any."""
        if self.serving is not None:
            return self.serving[0]
        for routed in reversed(self.routed):
            if routed.attempts:
                return routed.attempts[-1].model
        return ""

    @property
    def backend_id(self) -> str:
        """The backend of `model`: the one streaming now, or that of the latest attempt."""
        if self.serving is not None:
            return self.serving[1]
        for routed in reversed(self.routed):
            if routed.attempts:
                return routed.attempts[-1].backend_id
        return ""
