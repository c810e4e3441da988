"""Download records, their lifecycle, logical-download sessions and analytics arithmetic."""

from __future__ import annotations

import enum
import hashlib
from collections import Counter
from collections.abc import Iterable
from datetime import date, datetime, timedelta

import attrs

#: Requests for the same version and format by the same downloader within this many
#: seconds of the previous one belong to one logical download (resumes, segments).
SESSION_IDLE_SECONDS = 1800


class DownloadStatus(enum.StrEnum):
    """Where one download attempt stands."""

    DENIED = "denied"
    STARTED = "started"
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """Whether no further transition is possible."""
        return self is not DownloadStatus.STARTED


class Channel(enum.StrEnum):
    """How the download was asked for."""

    BROWSER = "browser"
    API = "api"
    TOKEN = "token"  # noqa: S105 - a credential kind, not a secret
    EMBEDDED = "embedded"


class InvalidTransition(ValueError):
    """A record was asked to move to a status its current status cannot reach."""


@attrs.frozen
class DownloadRecord:
    """One audit entry per download attempt, allowed or not.

    ``downloader`` identifies who downloaded for unique counts: a user id, or a hash
    of the client address for anonymous requests. ``logical`` marks the first request
    of a logical download; its resumes and segments carry ``logical=False``.
    """

    id: str
    dataset_id: str
    organization_id: str
    version: int | None
    format: str
    status: DownloadStatus
    channel: Channel
    started_at: datetime
    downloader: str
    principal_id: str | None = None
    api_key_id: str | None = None
    token_id: str | None = None
    byte_range: str | None = None
    bytes_expected: int | None = None
    bytes_sent: int = 0
    finished_at: datetime | None = None
    denial_code: str | None = None
    failure_reason: str | None = None
    client_address: str | None = None
    user_agent: str | None = None
    session_key: str | None = None
    logical: bool = False

    @classmethod
    def denied(
        cls,
        *,
        id: str,
        dataset_id: str,
        organization_id: str,
        format: str,
        version: int | None,
        code: str,
        channel: Channel,
        downloader: str,
        now: datetime,
        **context: object,
    ) -> DownloadRecord:
        """A record of a refused attempt; it is final as written."""
        return cls(
            id=id,
            dataset_id=dataset_id,
            organization_id=organization_id,
            version=version,
            format=format,
            status=DownloadStatus.DENIED,
            channel=channel,
            started_at=now,
            finished_at=now,
            downloader=downloader,
            denial_code=code,
            **context,  # type: ignore[arg-type]
        )

    def progressed(self, bytes_sent: int) -> DownloadRecord:
        """The record with more bytes sent; only a started download progresses."""
        if self.status is not DownloadStatus.STARTED:
            raise InvalidTransition(f"a {self.status} download does not progress")
        if bytes_sent < self.bytes_sent:
            raise InvalidTransition("bytes sent never decrease")
        return attrs.evolve(self, bytes_sent=bytes_sent)

    def finished(
        self,
        status: DownloadStatus,
        *,
        bytes_sent: int,
        now: datetime,
        reason: str | None = None,
    ) -> DownloadRecord:
        """The record moved from ``started`` to a final status with its byte count."""
        if self.status is not DownloadStatus.STARTED or status not in _FINAL_FROM_STARTED:
            raise InvalidTransition(f"{self.status} cannot become {status}")
        if bytes_sent < self.bytes_sent:
            raise InvalidTransition("bytes sent never decrease")
        return attrs.evolve(
            self, status=status, bytes_sent=bytes_sent, finished_at=now, failure_reason=reason
        )


_FINAL_FROM_STARTED = frozenset(
    {DownloadStatus.COMPLETED, DownloadStatus.ABORTED, DownloadStatus.FAILED}
)


def downloader_key(user_id: str | None, client_address: str | None) -> str:
    """Who downloaded, for unique counts: the user, or a one-way hash of the address."""
    if user_id is not None:
        return f"user:{user_id}"
    digest = hashlib.sha256((client_address or "unknown").encode()).hexdigest()[:24]
    return f"anon:{digest}"


def session_key(
    *, downloader: str, dataset_id: str, version: int, format: str, token_id: str | None = None
) -> str:
    """The key that groups the requests of one logical download.

    A resume or a segmented download is several requests with the same downloader,
    version and format (and token, if one is used); they share this key.
    """
    material = "\x1f".join((downloader, dataset_id, str(version), format, token_id or ""))
    return hashlib.sha256(material.encode()).hexdigest()


@attrs.frozen
class DayCount:
    """One day of a dataset's download series."""

    day: date
    downloads: int = 0
    requests: int = 0
    bytes: int = 0
    denials: int = 0
    failures: int = 0


@attrs.frozen
class TopDownloader:
    """A downloader and how much they took."""

    downloader: str
    principal_id: str | None
    downloads: int
    bytes: int


@attrs.frozen
class Analytics:
    """Totals and series for one dataset over a period.

    ``downloads`` counts logical downloads; ``requests`` counts every allowed request
    (resumes and segments included); ``unique_downloaders`` counts distinct downloaders.
    """

    since: datetime
    until: datetime
    downloads: int
    requests: int
    bytes: int
    unique_downloaders: int
    completed: int
    aborted: int
    failures: int
    denials: int
    denials_by_code: dict[str, int]
    per_day: tuple[DayCount, ...]
    per_format: dict[str, int]
    top_downloaders: tuple[TopDownloader, ...]


def analytics_from_records(
    records: Iterable[DownloadRecord], *, since: datetime, until: datetime, top: int = 10
) -> Analytics:
    """Aggregate the records started in [since, until): the reference every store matches."""
    days: dict[date, dict[str, int]] = {}
    day = since.date()
    while day <= (until - timedelta(microseconds=1)).date():
        days[day] = Counter()
        day += timedelta(days=1)
    downloads = requests = total_bytes = completed = aborted = failures = denials = 0
    by_code: Counter[str] = Counter()
    per_format: Counter[str] = Counter()
    who: dict[str, list[int]] = {}
    who_principal: dict[str, str | None] = {}
    for r in records:
        if not since <= r.started_at < until:
            continue
        bucket = days.setdefault(r.started_at.date(), Counter())
        if r.status is DownloadStatus.DENIED:
            denials += 1
            bucket["denials"] += 1
            by_code[r.denial_code or "unknown"] += 1
            continue
        requests += 1
        total_bytes += r.bytes_sent
        bucket["requests"] += 1
        bucket["bytes"] += r.bytes_sent
        stats = who.setdefault(r.downloader, [0, 0])
        who_principal.setdefault(r.downloader, r.principal_id)
        stats[1] += r.bytes_sent
        if r.logical:
            downloads += 1
            bucket["downloads"] += 1
            per_format[r.format] += 1
            stats[0] += 1
        if r.status is DownloadStatus.COMPLETED:
            completed += 1
        elif r.status is DownloadStatus.ABORTED:
            aborted += 1
        elif r.status is DownloadStatus.FAILED:
            failures += 1
            bucket["failures"] += 1
    ranked = sorted(who.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))[:top]
    return Analytics(
        since=since,
        until=until,
        downloads=downloads,
        requests=requests,
        bytes=total_bytes,
        unique_downloaders=len(who),
        completed=completed,
        aborted=aborted,
        failures=failures,
        denials=denials,
        denials_by_code=dict(sorted(by_code.items())),
        per_day=tuple(
            DayCount(
                day=d,
                downloads=c["downloads"],
                requests=c["requests"],
                bytes=c["bytes"],
                denials=c["denials"],
                failures=c["failures"],
            )
            for d, c in sorted(days.items())
        ),
        per_format=dict(sorted(per_format.items())),
        top_downloaders=tuple(
            TopDownloader(downloader=k, principal_id=who_principal[k], downloads=v[0], bytes=v[1])
            for k, v in ranked
        ),
    )
