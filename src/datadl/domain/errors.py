"""The error hierarchy every layer speaks: one stable machine code per failure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar


class DatadlError(Exception):
    """Root of every error datadl raises on purpose.

    ``code`` is the stable machine-readable reason that API.md lists; ``hint`` tells a
    person what to do next. ``retry_after`` (seconds) and ``resets_at`` are set where
    waiting is the remedy. ``extra`` carries further fields a problem document may show.
    """

    code: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"
    default_hint: ClassVar[str] = "Try again later; if it persists, report it with the request id."

    def __init__(
        self,
        message: str | None = None,
        *,
        hint: str | None = None,
        retry_after: int | None = None,
        resets_at: datetime | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.message = message or self.title
        self.hint = hint or self.default_hint
        self.retry_after = retry_after
        self.resets_at = resets_at
        self.extra: dict[str, Any] = dict(extra or {})
        super().__init__(self.message)


class BadRequest(DatadlError):
    """The request is malformed: a parameter out of range, a body that does not parse."""

    code = "bad_request"
    title = "Bad request"
    default_hint = "Check the request against the API documentation."


class InvalidCursor(BadRequest):
    """A pagination cursor that was not issued by this server, or was altered."""

    title = "Invalid cursor"
    default_hint = "Start again from the first page without a cursor."


class UnsupportedFormat(DatadlError):
    """A file format datadl cannot read or write, or a file that is not what it claims."""

    code = "unsupported_format"
    title = "Unsupported format"
    default_hint = "Use one of csv, tsv, json, jsonl, parquet or xlsx."


class PayloadTooLarge(DatadlError):
    """An upload larger than the configured maximum."""

    code = "payload_too_large"
    title = "Payload too large"
    default_hint = "Split the file, or ask an operator to raise the upload limit."


class RangeNotSatisfiable(DatadlError):
    """No requested byte range overlaps the representation; ``size`` is its length."""

    code = "range_not_satisfiable"
    title = "Range not satisfiable"
    default_hint = "Request a range inside the file; its size is in Content-Range."

    def __init__(self, size: int, message: str | None = None) -> None:
        super().__init__(message or f"No requested range lies within the {size} bytes.")
        self.size = size


# --- port errors: adapters translate driver and backend errors into these ---------------


class PortError(DatadlError):
    """Raised by an adapter behind a port; a service never sees a driver's own error."""


class NotFound(PortError):
    """The thing asked for does not exist, or the principal may not know that it does."""

    code = "not_found"
    title = "Not found"
    default_hint = "Check the id; you may need to sign in or be granted access."


class Conflict(PortError):
    """The change clashes with the current state: a duplicate slug, a stale version."""

    code = "conflict"
    title = "Conflict"
    default_hint = "Reload the resource and retry with a different value."


class StaleWrite(Conflict):
    """A write based on a read that another writer has since overtaken; re-read and retry."""

    default_hint = "The resource changed meanwhile; reload it and try again."


class Unavailable(PortError):
    """A backend (database, cache) cannot be reached or timed out; retrying may help."""

    code = "unavailable"
    title = "Service unavailable"
    default_hint = "A backend is unreachable; retry in a few seconds."


class StorageUnavailable(Unavailable):
    """The blob store cannot be reached, or refused the operation."""

    code = "storage_unavailable"
    title = "Storage unavailable"
    default_hint = "The file store is unreachable; retry in a few seconds."


class FileMissing(PortError):
    """The stored file of a dataset version is gone from storage."""

    code = "file_missing"
    title = "File missing"
    default_hint = "The stored file is gone; ask the dataset owner to publish it again."


class FileCorrupted(PortError):
    """Stored bytes differ from what the catalog recorded (size or sha256)."""

    code = "file_corrupted"
    title = "File corrupted"
    default_hint = "The stored file failed its integrity check; the owner has been flagged."


# --- download tokens --------------------------------------------------------------------


class TokenInvalid(DatadlError):
    """A download token that is malformed, altered, or signed by a key no longer trusted."""

    code = "token_invalid"
    title = "Invalid download token"
    default_hint = "Ask for a new download token; this one cannot be used."


class TokenExpired(DatadlError):
    """A download token presented at or after the moment it expires."""

    code = "token_expired"
    title = "Download token expired"
    default_hint = "Ask for a new download token; each one is valid only for a short time."


class PreconditionFailed(DatadlError):
    """A conditional request whose precondition (If-Match, If-Unmodified-Since) is false."""

    code = "precondition_failed"
    title = "Precondition failed"
    default_hint = "Fetch the resource again to learn its current ETag."


# --- table insight ----------------------------------------------------------------------


class AnalysisPending(DatadlError):
    """The analysis of the file is still running; ask again after ``retry_after`` seconds."""

    code = "analysis_pending"
    title = "Analysis in progress"
    default_hint = "The dataset is still being analysed; retry after the given number of seconds."

    def __init__(
        self, message: str | None = None, *, retry_after: int = 5, hint: str | None = None
    ) -> None:
        super().__init__(
            message or "The dataset's analysis has not finished yet.",
            hint=hint,
            retry_after=retry_after,
        )


class AnalysisFailed(DatadlError):
    """The analysis of the file failed; ``reason`` says why (the original stays downloadable)."""

    code = "analysis_failed"
    title = "Analysis failed"
    default_hint = (
        "The original file can still be downloaded; publish a corrected file to analyse it again."
    )

    def __init__(self, reason: str, *, hint: str | None = None) -> None:
        super().__init__(
            f"The dataset could not be analysed: {reason}", hint=hint, extra={"reason": reason}
        )
        self.reason = reason


class TooManyRows(BadRequest):
    """A table too long for the requested output format (an xlsx sheet holds 1,048,575 rows).

    ``extra["limit_rows"]`` names the limit; the HTTP answer is ``422``.
    """

    code = "too_many_rows"
    title = "Too many rows for this format"
    default_hint = "Download the dataset as csv or parquet instead."
