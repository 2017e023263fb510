"""How the console writes values: times, money, numbers, JSON (the templates' filters)."""

import datetime
import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message


def timestamp(value: Any) -> str:
    """A protobuf Timestamp (or datetime) as `2026-12-07 05:12:33 UTC`; '' when unset."""
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, timestamp_pb2.Timestamp):
        if not (value.seconds or value.nanos):
            return ""
        moment = value.ToDatetime(tzinfo=datetime.UTC)
    else:
        return ""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: Any) -> str:
    """A protobuf Timestamp as ISO 8601 (for `<time datetime>`)."""
    if isinstance(value, timestamp_pb2.Timestamp) and (value.seconds or value.nanos):
        return value.ToDatetime(tzinfo=datetime.UTC).isoformat()
    return ""


def money(value: Any, currency: str = "") -> str:
    """A `google.type.Money` (or units/nanos message) as `0.000012 USD`."""
    if value is None:
        return ""
    amount = value.units + value.nanos / 1e9
    code = currency or getattr(value, "currency_code", "")
    text = f"{amount:.6f}".rstrip("0").rstrip(".") if amount else "0"
    return f"{text} {code}".strip()


def micros(value: int, currency: str = "USD") -> str:
    """Micro-units of money as `0.000012 USD`."""
    amount = value / 1e6
    text = f"{amount:.6f}".rstrip("0").rstrip(".") if amount else "0"
    return f"{text} {currency}".strip()


def number(value: float, digits: int = 3) -> str:
    """A number with at most `digits` decimals (no trailing zeros)."""
    if value != value:  # NaN
        return "n/a"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def seconds(value: float) -> str:
    """A duration: `840 ms`, `3.2 s`, `2 min 5 s`."""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(int(value), 60)
    return f"{minutes} min {rest} s"


def percent(value: float, digits: int = 1) -> str:
    return f"{value * 100:.{digits}f} %"


def pretty_json(value: Any) -> str:
    """A Struct, Value, message or plain value as indented JSON."""
    if isinstance(value, struct_pb2.Struct | struct_pb2.Value | struct_pb2.ListValue):
        value = json_format.MessageToDict(value)
    elif isinstance(value, Message):
        value = json_format.MessageToDict(value, preserving_proto_field_name=True)
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def enum_name(value: str, prefix: str) -> str:
    """`FINISH_REASON_STOP` -> `stop` (the part after `prefix`, lower-cased)."""
    name = value[len(prefix) :] if value.startswith(prefix) else value
    return name.lower().replace("_", " ")


FILTERS: Final[Mapping[str, Callable[..., Any]]] = {
    "timestamp": timestamp,
    "iso": iso,
    "money": money,
    "micros": micros,
    "number": number,
    "seconds": seconds,
    "percent": percent,
    "pretty_json": pretty_json,
    "enum_name": enum_name,
}
