"""GCRA rate limiting: a token bucket kept as one timestamp (the TAT) per key."""

from __future__ import annotations

import math
from typing import Any

import attrs

# A float only converts integers up to 2**53 exactly; larger bursts would silently round.
_MAX_REQUESTS = 2**53


def _check_requests(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # bool is an int subclass, and RateLimit(True, 60) is surely a mistake.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be an int, not {type(value).__name__}")
    if not 1 <= value <= _MAX_REQUESTS:
        raise ValueError(f"{attribute.name} must be between 1 and 2**53, got {value}")


def _check_per_seconds(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a number, not {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be finite and positive, got {value!r}")


@attrs.frozen
class RateLimit:
    """A burst of ``requests`` at once, refilling at ``requests / per_seconds`` per second."""

    requests: int = attrs.field(validator=_check_requests)
    per_seconds: float = attrs.field(validator=_check_per_seconds)

    def __attrs_post_init__(self) -> None:
        # A subnormal per_seconds over a large burst underflows to a zero interval, which
        # would admit everything and divide by zero when counting what remains.
        if self.emission_interval <= 0:
            raise ValueError("per_seconds / requests is too small to represent")

    @property
    def emission_interval(self) -> float:
        """Seconds of capacity one request uses; the bucket regains one request this often."""
        return self.per_seconds / self.requests


@attrs.frozen
class RateDecision:
    """The outcome of one request against a limit, and what to store for the key.

    ``new_tat`` is the state to store when ``allowed``; it is None on denial, when the
    stored state must stay as it was. ``remaining`` counts the further requests that would
    be admitted at the same instant, ``reset_after`` the seconds until the bucket is full
    again, and ``retry_after`` the seconds until a denied request would be admitted (0 when
    allowed).
    """

    allowed: bool
    new_tat: float | None
    limit: int
    remaining: int
    reset_after: float
    retry_after: float


def _rounding_allowance(limit: RateLimit, *times: float) -> float:
    # Each request adds the interval to the stored float and rounds once, by at most half a
    # unit in the last place; over a burst that adds up, and an interval such as 1/3 s is
    # never exact. Without this allowance the last request of a full burst at epoch-sized
    # times could be refused. It is capped well below one interval so that it can never
    # admit a whole extra request.
    scale = max(limit.per_seconds, *(abs(t) for t in times))
    return min(2 * limit.requests * math.ulp(scale), limit.emission_interval / 16)


def gcra(limit: RateLimit, tat: float | None, now: float) -> RateDecision:
    """Decide one request at ``now`` (epoch seconds) for a key whose stored TAT is ``tat``.

    ``tat`` is None for a key never seen (or whose state expired); it is equivalent to any
    TAT at or before ``now``. Store ``new_tat`` only when the request is allowed.
    """
    if not math.isfinite(now):
        raise ValueError(f"now must be finite, got {now!r}")
    if tat is not None and not math.isfinite(tat):
        raise ValueError(f"tat must be finite, got {tat!r}")
    interval = limit.emission_interval
    start = now if tat is None else max(tat, now)
    new_tat = start + interval
    if new_tat <= start:
        # An interval below the float resolution of ``start`` would vanish and admit
        # everything; advancing by one representable step is stricter, never laxer.
        new_tat = math.nextafter(start, math.inf)
    # Seconds of admitted work still outstanding once this request is counted; the bucket
    # holds per_seconds of it.
    backlog = new_tat - now
    allowance = _rounding_allowance(limit, now, new_tat)
    if backlog > limit.per_seconds + allowance:
        return RateDecision(
            allowed=False,
            new_tat=None,
            limit=limit.requests,
            remaining=0,
            reset_after=start - now,
            retry_after=backlog - limit.per_seconds,
        )
    headroom = int((limit.per_seconds + allowance - backlog) // interval)
    return RateDecision(
        allowed=True,
        new_tat=new_tat,
        limit=limit.requests,
        remaining=max(0, min(headroom, limit.requests - 1)),
        reset_after=backlog,
        retry_after=0.0,
    )


def _sf_string(value: str) -> str:
    # RFC 8941 strings hold printable ASCII only, with backslash and quote escaped.
    if not all(" " <= char <= "~" for char in value):
        raise ValueError(f"policy name must be printable ASCII, got {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ratelimit_fields(
    limit: RateLimit, decision: RateDecision, name: str = "default"
) -> dict[str, str]:
    """Render the IETF ``RateLimit-Policy`` and ``RateLimit`` header fields for a decision.

    Follows draft-ietf-httpapi-ratelimit-headers: ``q`` is the quota, ``w`` the window in
    whole seconds (rounded up), ``r`` the remaining quota and ``t`` the seconds (rounded up)
    until the quota resets, or, after a denial, until a retry would be admitted.
    """
    item = _sf_string(name)
    if decision.allowed:
        remaining, reset = decision.remaining, math.ceil(decision.reset_after)
    else:
        remaining, reset = 0, math.ceil(decision.retry_after)
    return {
        "RateLimit-Policy": f"{item};q={limit.requests};w={math.ceil(limit.per_seconds)}",
        "RateLimit": f"{item};r={remaining};t={reset}",
    }
