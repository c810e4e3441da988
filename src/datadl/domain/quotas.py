"""Quota counters, reservations and the arithmetic of reserve and settle."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime

import attrs

from datadl.domain.policy import QuotaLimit


class QuotaSubject(enum.StrEnum):
    """Whose usage a counter measures."""

    USER = "user"
    ORGANIZATION = "organization"


@attrs.frozen
class Usage:
    """What a counter holds: bytes and downloads, reservations included."""

    bytes: int = 0
    downloads: int = 0

    def plus(self, bytes: int, downloads: int) -> Usage:
        """The usage after adding (or, with negatives, removing) an amount."""
        return Usage(bytes=self.bytes + bytes, downloads=self.downloads + downloads)


@attrs.frozen
class QuotaCharge:
    """One counter that a reservation must fit into: its key, its caps and its window."""

    key: str
    subject: QuotaSubject
    bytes_limit: int | None
    downloads_limit: int | None
    window_end: datetime

    @classmethod
    def for_subject(
        cls,
        subject: QuotaSubject,
        subject_id: str,
        limit: QuotaLimit,
        now: datetime,
        *,
        organization_id: str,
    ) -> QuotaCharge:
        """The charge against ``subject_id``'s counter for the window holding ``now``.

        Counters belong to the organisation whose policy sets the quota: what a user
        downloads from one organisation does not use up another's quota.
        """
        start, end = limit.window.bounds(now)
        key = f"quota:{organization_id}:{subject}:{subject_id}:{limit.window}:{start:%Y-%m-%d}"
        return cls(
            key=key,
            subject=subject,
            bytes_limit=limit.bytes,
            downloads_limit=limit.downloads,
            window_end=end,
        )

    def fits(self, current: Usage, bytes: int, downloads: int) -> bool:
        """Whether adding the amount keeps the counter within both caps."""
        if self.bytes_limit is not None and current.bytes + bytes > self.bytes_limit:
            return False
        return not (
            self.downloads_limit is not None
            and current.downloads + downloads > self.downloads_limit
        )


@attrs.frozen
class Reservation:
    """Bytes and downloads held on counters while a download runs.

    It is settled with the bytes actually sent; one never settled is dropped by cleanup
    after ``expires_at`` and stays charged as reserved, since bytes may have left.
    """

    id: str
    charges: tuple[QuotaCharge, ...]
    bytes: int
    downloads: int
    expires_at: datetime


@attrs.frozen
class ReserveOutcome:
    """The result of an atomic reservation: all counters charged, or none."""

    ok: bool
    refused: QuotaCharge | None = None
    usage: Usage | None = None

    @classmethod
    def accepted(cls) -> ReserveOutcome:
        """Every counter had room."""
        return cls(ok=True)

    @classmethod
    def refused_by(cls, charge: QuotaCharge, usage: Usage) -> ReserveOutcome:
        """``charge`` had no room; ``usage`` is what it held."""
        return cls(ok=False, refused=charge, usage=usage)


def first_refusal(
    charges: Sequence[QuotaCharge], usages: Sequence[Usage], bytes: int, downloads: int
) -> ReserveOutcome:
    """The outcome of reserving on counters whose current usage is known.

    Every store applies this rule inside its atomic section, so all agree.
    """
    for charge, usage in zip(charges, usages, strict=True):
        if not charge.fits(usage, bytes, downloads):
            return ReserveOutcome.refused_by(charge, usage)
    return ReserveOutcome.accepted()


def settled_amount(reservation: Reservation, bytes_sent: int) -> tuple[int, int]:
    """The (bytes, downloads) deltas that replace a reservation with what was delivered.

    The reserved bytes are swapped for the bytes sent; a download that delivered no
    byte gives its download back.
    """
    if bytes_sent < 0:
        raise ValueError("bytes_sent must not be negative")
    downloads_kept = reservation.downloads if bytes_sent > 0 else 0
    return bytes_sent - reservation.bytes, downloads_kept - reservation.downloads
