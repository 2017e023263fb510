"""Small conversions every servicer needs at the proto edge: durations, timestamps, money and
offset-based page tokens."""

from datetime import datetime
from decimal import Decimal

from genai.common.v1 import chat_pb2, generation_pb2, money_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def duration(seconds: float) -> Duration:
    """`seconds` as a Duration, to the nanosecond (negative values become zero)."""
    message = Duration()
    message.FromNanoseconds(round(max(seconds, 0.0) * 1e9))
    return message


def seconds(message: Duration) -> float:
    """A Duration in seconds."""
    return message.ToNanoseconds() / 1e9


def timestamp(moment: datetime) -> Timestamp:
    """A timezone-aware datetime as a Timestamp."""
    message = Timestamp()
    message.FromDatetime(moment)
    return message


NANOS = Decimal(1_000_000_000)


def money(amount: Decimal, currency: str) -> money_pb2.Money:
    """`amount` of `currency` as Money (nanos rounded half-even, the sign of `units`)."""
    units = int(amount)
    nanos = int(((amount - units) * NANOS).to_integral_value())
    return money_pb2.Money(currency_code=currency, units=units, nanos=nanos)


def decimal_amount(message: money_pb2.Money) -> Decimal:
    """The amount of a Money, exactly."""
    return Decimal(message.units) + Decimal(message.nanos) / NANOS


def chat_role_name(role: chat_pb2.ChatRole) -> str:
    """A chat message's role as logs and pages write it: `system`, `user`, `assistant`."""
    return chat_pb2.ChatRole.Name(role).removeprefix("CHAT_ROLE_").lower()


def usage_source_name(usage: generation_pb2.TokenUsage) -> str:
    """Who counted `usage`, as metrics labels and span attributes name it: `provider`,
    `tokenizer`, `estimate` (or `unspecified`)."""
    return generation_pb2.UsageSource.Name(usage.usage_source).removeprefix("USAGE_SOURCE_").lower()


def counted_by(usage: generation_pb2.TokenUsage) -> str:
    """Who counted `usage` when it was not the provider (`tokenizer`, `estimate`), for people
    reading counts; "" for the provider's own counts (or none said)."""
    name = usage_source_name(usage)
    return name if name in ("tokenizer", "estimate") else ""


def offset_page(page_size: int, page_token: str) -> tuple[int, int]:
    """(offset, size) of a page request whose tokens are offsets this service issued; raises
    `InvalidArgument` naming every bad field."""
    violations = []
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        violations.append(FieldViolation("page_size", f"must be in [0, {MAX_PAGE_SIZE}]"))
    if page_token and not page_token.isdigit():
        violations.append(FieldViolation("page_token", "is not a token this service issued"))
    if violations:
        raise InvalidArgument(violations=violations)
    return int(page_token or 0), page_size or DEFAULT_PAGE_SIZE


def next_offset_token(offset: int, returned: int, total: int) -> str:
    """The token of the page after one that returned `returned` of `total` items from
    `offset`; empty on the last page."""
    after = offset + returned
    return str(after) if after < total else ""
