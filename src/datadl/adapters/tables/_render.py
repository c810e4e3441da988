"""Arrow values as plain JSON-able Python values, rendered faithfully.

Nulls are None; integers stay integers of any size; floats are not rounded, and the values
JSON has no number for become the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``;
decimals are strings with every digit; dates, times and timestamps are ISO 8601 strings at
their stored precision (``Z`` or the offset for zoned timestamps); binary is base64; text
is never truncated.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def logical_type(t: pa.DataType) -> str:
    """The engine's name for an arrow type, as the API shows it."""
    checks = (
        (pa.types.is_boolean, "boolean"),
        (pa.types.is_integer, "integer"),
        (pa.types.is_floating, "float"),
        (pa.types.is_decimal, "decimal"),
        (pa.types.is_date, "date"),
        (pa.types.is_timestamp, "timestamp"),
        (pa.types.is_time, "time"),
        (pa.types.is_duration, "duration"),
        (lambda x: pa.types.is_string(x) or pa.types.is_large_string(x), "string"),
        (lambda x: pa.types.is_binary(x) or pa.types.is_large_binary(x), "binary"),
        (pa.types.is_fixed_size_binary, "binary"),
        (pa.types.is_map, "map"),
        (lambda x: pa.types.is_list(x) or pa.types.is_large_list(x), "list"),
        (pa.types.is_fixed_size_list, "list"),
        (pa.types.is_struct, "struct"),
        (pa.types.is_null, "null"),
    )
    for check, name in checks:
        if check(t):
            return name
    return "other"


def float_value(value: float | None) -> float | str | None:
    """A float as JSON can carry it."""
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return float_value(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def timestamps_as_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """ISO 8601 text at the stored precision: a ``T`` separator, ``Z`` or a ``±hh:mm`` offset."""
    # A cast is some thirty times faster than strftime; it only needs its punctuation fixed.
    text = pc.replace_substring(pc.cast(values, pa.string()), " ", "T", max_replacements=1)
    if values.type.tz is not None:
        text = pc.replace_substring_regex(text, r"([+-][0-9]{2})([0-9]{2})$", r"\1:\2")
    return text


def render_array(values: pa.Array | pa.ChunkedArray) -> list[Any]:
    """Every value of ``values`` as a JSON-able Python value."""
    t = values.type
    if pa.types.is_timestamp(t):
        return timestamps_as_text(values).to_pylist()  # type: ignore[no-any-return]
    if pa.types.is_date(t) or pa.types.is_time(t):
        return pc.cast(values, pa.string()).to_pylist()  # type: ignore[no-any-return]
    if pa.types.is_duration(t):
        return pc.cast(values, pa.int64()).to_pylist()  # type: ignore[no-any-return]
    if pa.types.is_floating(t):
        return [float_value(v) for v in values.to_pylist()]
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or logical_type(t) == "string":
        return values.to_pylist()  # type: ignore[no-any-return]
    try:
        return [_plain(v) for v in values.to_pylist()]
    except ValueError:
        # Nested nanosecond timestamps do not fit Python's datetime; show them as text.
        return [_plain(v) for v in pc.cast(values, pa.string()).to_pylist()]


def render_scalar(value: pa.Scalar) -> Any:
    """One arrow scalar as a JSON-able Python value."""
    return render_array(pa.array([value], type=value.type))[0]
