"""The download use case: authorise, reserve, record, stream, settle."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import BinaryIO

import attrs

from datadl.domain import conditional, multipart
from datadl.domain.access import CredentialKind, Principal, can_administer
from datadl.domain.accounting import (
    SESSION_IDLE_SECONDS,
    Channel,
    DownloadRecord,
    DownloadStatus,
    downloader_key,
    session_key,
)
from datadl.domain.decision import Decision, DownloadRequest, decide, quota_denial, token_exhausted
from datadl.domain.errors import (
    DatadlError,
    FileCorrupted,
    NotFound,
    PreconditionFailed,
    RangeNotSatisfiable,
    Unavailable,
    UnsupportedFormat,
)
from datadl.domain.model import EXPORT_FORMATS, ORIGINAL, Dataset, DatasetFile, DatasetVersion
from datadl.domain.policy import DownloadPolicy
from datadl.domain.quotas import QuotaCharge, QuotaSubject, Reservation
from datadl.domain.ranges import ByteRange, parse_range
from datadl.domain.ratelimit import RateDecision
from datadl.domain.tokens import TokenClaims, check_expiry, read_token
from datadl.ports.audit import AuditLog
from datadl.ports.catalog import Catalog
from datadl.ports.clock import Clock, Entropy, KeyRing
from datadl.ports.storage import BlobStore, LocalFiles
from datadl.ports.usage import UsageStore
from datadl.services._shared import change_dataset, check_rate, policy_for

#: Progress is written to the audit log at most this often while bytes flow.
PROGRESS_INTERVAL = timedelta(seconds=1)
#: How long a reservation may stay unsettled before cleanup drops it.
RESERVATION_TTL = timedelta(hours=24)
#: A full read of a local file whose SHA-256 this process checked this recently, on the
#: same stored file (size and modification time unchanged), may skip hashing and be sent
#: with ``sendfile`` (see docs/decisions.md).
VERIFIED_FOR = timedelta(hours=1)
#: A download session this process recorded less than this long ago is known to be alive
#: (sessions idle out after SESSION_IDLE_SECONDS): a resume or another range within it
#: skips the usage store. The store's idle deadline is then at most this far behind,
#: which other processes see as a session ending that much sooner.
SESSION_TOUCH_EVERY = timedelta(seconds=60)
#: Bytes of the first ``sendfile`` call (the fewest of any) and the most of any: progress
#: and accounting advance after each. Between the two, a call is sized to last about
#: ``SENDFILE_SLICE_SECONDS`` at the rate the client took the previous one, so a fast client
#: costs few calls (each wakes the event loop) while any call stays short for the server's
#: write timeout, and a slow but steady client is not taken for a silent one.
SENDFILE_SLICE = 256 * 1024
#: The most ``send`` hands to ``write`` at once, and counts at once.
SEND_PIECE = 256 * 1024
SENDFILE_MAX_SLICE = 16 * 1024 * 1024
SENDFILE_SLICE_SECONDS = 0.25

#: Sends ``count`` bytes of an open file from ``offset`` to the client and returns how many
#: it sent (fewer only at the end of the file). If it raises, the file's position must
#: tell how far it got, as with ``asyncio``'s ``loop.sendfile``.
SendFile = Callable[[BinaryIO, int, int], Awaitable[int]]


@attrs.frozen
class ClientInfo:
    """Where a request came from, for the audit trail and anonymous accounting."""

    address: str | None = None
    user_agent: str | None = None
    channel: Channel = Channel.EMBEDDED


@attrs.frozen
class DownloadAsk:
    """A download request as a client states it, HTTP preconditions included.

    ``head`` asks for the answer without the body: it is authorised like a download
    but transfers nothing, so it reserves nothing and writes no record.
    """

    dataset_id: str
    format: str = ORIGINAL
    version: int | None = None
    token: str | None = None
    accept_terms: bool = False
    range: str | None = None
    if_range: str | None = None
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    if_unmodified_since: str | None = None
    head: bool = False
    client: ClientInfo = ClientInfo()


@attrs.frozen
class Representation:
    """The bytes a download serves: a stored object and the facts that describe it."""

    key: str
    size: int
    sha256: str
    media_type: str
    filename: str
    variant: str
    verify: bool

    @classmethod
    def of_original(cls, file: DatasetFile, variant: str) -> Representation:
        """The stored file itself, served as ``variant`` and verified on full reads."""
        return cls(
            key=file.storage_key,
            size=file.size_bytes,
            sha256=file.sha256,
            media_type=file.media_type,
            filename=file.filename,
            variant=variant,
            verify=True,
        )


#: Resolves a converted format to its stored derivative; supplied by the table engine layer.
Deriver = Callable[[Dataset, DatasetVersion, str], Awaitable[Representation]]


def _filename_for(filename: str, extension: str) -> str:
    stem = filename.rsplit(".", 1)[0] if "." in filename else filename
    return f"{stem}.{extension}"


class Download:
    """An authorised download: the response facts, and a body that settles itself.

    Send the body with ``send(write)`` (a server does this) or iterate it, and always
    ``aclose()`` it (or use ``async with``): closing before the end records an abort with
    the bytes actually sent and settles the quota with them.
    """

    def __init__(
        self,
        *,
        service: DownloadService,
        record: DownloadRecord | None,
        dataset: Dataset,
        version: DatasetVersion,
        representation: Representation,
        status: int,
        ranges: tuple[ByteRange, ...] | None,
        layout: multipart.MultipartLayout | None,
        reservation: Reservation | None,
        ratelimit_headers: dict[str, str],
    ) -> None:
        self._service = service
        self._record = record
        self.dataset = dataset
        self.version = version
        self.representation = representation
        self.status = status
        self.ranges = ranges
        self.multipart = layout
        self._reservation = reservation
        self.ratelimit_headers = ratelimit_headers
        self.bytes_sent = 0
        self._finished = False
        self._started = False
        self._body_iter: AsyncIterator[bytes] | None = None

    @property
    def id(self) -> str | None:
        """The DownloadRecord id (``X-Download-Id``); None for HEAD."""
        return self._record.id if self._record else None

    @property
    def etag(self) -> str:
        """The strong ETag of the representation."""
        return conditional.make_etag(self.representation.sha256, self.representation.variant)

    @property
    def last_modified(self) -> datetime:
        """When this version was published."""
        return self.version.created_at

    @property
    def content_type(self) -> str:
        """The Content-Type of the body (multipart framing included)."""
        if self.multipart is not None:
            return self.multipart.content_type
        return self.representation.media_type

    @property
    def content_length(self) -> int:
        """The exact length of the body this answer would carry (0 for 304)."""
        if self.status == 304:
            return 0
        if self.multipart is not None:
            return self.multipart.content_length
        if self.ranges:
            return self.ranges[0].length
        return self.representation.size

    @property
    def content_range(self) -> str | None:
        """The Content-Range of a single-range 206."""
        if self.status == 206 and self.multipart is None and self.ranges:
            return self.ranges[0].content_range(self.representation.size)
        return None

    @property
    def repr_digest(self) -> str | None:
        """The RFC 9530 ``Repr-Digest`` value, for the original format only."""
        if self.representation.variant != ORIGINAL:
            return None
        raw = bytes.fromhex(self.representation.sha256)
        return f"sha-256=:{base64.b64encode(raw).decode()}:"

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._body_iter is None:
            self._body_iter = self._iterate()
        return self._body_iter

    async def __aenter__(self) -> Download:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _produce(self) -> AsyncIterator[tuple[bytes, bool]]:
        """The body as (bytes, is payload) pieces; multipart framing is not payload."""
        if self._started:
            raise RuntimeError("a download body can be sent once")
        self._started = True
        if self._finished or self.status == 304:
            return
        blobs = self._service._blobs
        rep = self.representation
        hasher = hashlib.sha256() if rep.verify and self.ranges is None else None
        pieces: Sequence[tuple[bytes, ByteRange | None]]
        if self.multipart is not None:
            pieces = self.multipart.parts
        elif self.ranges:
            pieces = [(b"", self.ranges[0])]
        else:
            pieces = [(b"", None)]
        held = b""
        for frame, byte_range in pieces:
            if frame:
                yield frame, False
            start, end = (0, None) if byte_range is None else (byte_range.start, byte_range.end + 1)
            async for chunk in blobs.read(rep.key, start, end):
                if hasher is None:
                    yield chunk, True
                    continue
                # Hold one chunk back so that a hash mismatch can still break the transfer.
                hasher.update(chunk)
                if held:
                    yield held, True
                held = chunk
        if hasher is not None:
            if hasher.hexdigest() != rep.sha256:
                raise FileCorrupted(
                    "The stored file does not match its recorded SHA-256.",
                    extra={"reason": "sha256 mismatch while streaming"},
                )
            await self._service._remember_verified(rep)
            if held:
                yield held, True
        if self.multipart is not None:
            yield self.multipart.closing, False

    async def send(
        self, write: Callable[[bytes], Awaitable[object]], sendfile: SendFile | None = None
    ) -> None:
        """Write the body through ``write`` in pieces of at most ``SEND_PIECE`` bytes, counting
        each piece once ``write`` returns.

        With ``sendfile``, a single-part body of a local file goes through it instead
        (ranges always; a full read once this process has verified the file's SHA-256
        recently), counted slice by slice. An error raised by ``write`` or ``sendfile``
        (the client went away) records an abort with the bytes sent so far; a storage or
        integrity error records a failure and is raised, so the caller can break the
        transfer instead of ending it cleanly.
        """
        client_gone = False
        try:
            local = await self._service._local_body(self) if sendfile is not None else None
            if local is not None and sendfile is not None:
                file, start, stop = local
                with file:
                    self._started = True
                    offset, size = start, SENDFILE_SLICE
                    while offset < stop:
                        count = min(size, stop - offset)
                        file.seek(offset)
                        began = self._service._clock.now()
                        try:
                            sent = await sendfile(file, offset, count)
                        except BaseException:
                            client_gone = True
                            self.bytes_sent += max(0, file.tell() - offset)
                            raise
                        if sent != count:
                            self.bytes_sent += sent
                            raise FileCorrupted(
                                "The stored file is shorter than recorded.",
                                extra={"reason": "file shrank while streaming"},
                            )
                        offset += count
                        took = (self._service._clock.now() - began).total_seconds()
                        rate = count / max(took, 0.001)
                        size = int(rate * SENDFILE_SLICE_SECONDS)
                        size = max(SENDFILE_SLICE, min(SENDFILE_MAX_SLICE, size))
                        await self._count(count)
                await self._finish(DownloadStatus.COMPLETED)
                return
            async for chunk, payload in self._produce():
                # Written and counted in pieces: the record and the quota follow a slow
                # client closely, and a client gone mid-chunk is charged what it was given.
                for start in range(0, len(chunk), SEND_PIECE):
                    piece = chunk if len(chunk) <= SEND_PIECE else chunk[start : start + SEND_PIECE]
                    try:
                        await write(piece)
                    except BaseException:
                        client_gone = True
                        raise
                    if payload:
                        await self._count(len(piece))
        except BaseException as exc:
            aborted = client_gone or isinstance(exc, asyncio.CancelledError)
            status = DownloadStatus.ABORTED if aborted else DownloadStatus.FAILED
            await asyncio.shield(self._finish(status, None if aborted else exc))
            raise
        await self._finish(DownloadStatus.COMPLETED)

    async def _iterate(self) -> AsyncIterator[bytes]:
        # Bytes count as sent when handed over: the consumer has them once it resumes us.
        try:
            async for piece, payload in self._produce():
                if payload:
                    await self._count(len(piece))
                yield piece
        except (GeneratorExit, asyncio.CancelledError):
            await asyncio.shield(self._finish(DownloadStatus.ABORTED))
            raise
        except Exception as exc:
            await asyncio.shield(self._finish(DownloadStatus.FAILED, exc))
            raise
        await self._finish(DownloadStatus.COMPLETED)

    async def _count(self, n: int) -> None:
        self.bytes_sent += n
        await self._service._progress(self)

    async def _finish(self, status: DownloadStatus, error: BaseException | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        # Shielded: a client that hangs up as soon as it has the last byte cancels the
        # handler while the download settles; the settlement (quota, final record) must
        # still run to its end, or the record would stay ``started`` for good.
        await asyncio.shield(self._service._settle(self, status, error))

    async def aclose(self) -> None:
        """Settle the download as aborted if its body was not sent to the end."""
        body = self._body_iter
        if body is not None and hasattr(body, "aclose"):
            await body.aclose()
        await self._finish(DownloadStatus.ABORTED)

    @property
    def record(self) -> DownloadRecord | None:
        """The record as it stands."""
        return self._record


class DownloadService:
    """Authorises, accounts for and streams downloads; tracks their progress.

    ``deriver`` resolves converted formats (the table engine layer supplies it); without
    one only ``original`` is served. ``reads`` is where ``open`` looks up what it decides
    on (dataset, version, grants, policies, a token holder's memberships): a short-lived
    cache of ``catalog`` may stand there (``adapters.readcache``); everything else, writes
    and the reads that decide them, goes to ``catalog``.
    """

    def __init__(
        self,
        *,
        catalog: Catalog,
        blobs: BlobStore,
        audit: AuditLog,
        usage: UsageStore,
        clock: Clock,
        entropy: Entropy,
        keys: KeyRing,
        deriver: Deriver | None = None,
        reads: Catalog | None = None,
    ) -> None:
        self._catalog = catalog
        self._reads = catalog if reads is None else reads
        self._blobs = blobs
        self._audit = audit
        self._usage = usage
        self._clock = clock
        self._entropy = entropy
        self._keys = keys
        self._deriver = deriver
        self._active: dict[str, Download] = {}
        self._last_progress: dict[str, datetime] = {}
        # storage key -> (sha256, size, modified at, when this process verified it)
        self._verified: dict[str, tuple[str, int, datetime | None, datetime]] = {}
        # session key -> when this process last recorded it with the usage store
        self._touched: dict[str, datetime] = {}

    # --- authorisation -------------------------------------------------------------------

    async def _token_principal(self, claims: TokenClaims) -> Principal:
        if claims.principal_id is None:
            return Principal(user_id=None, credential=CredentialKind.TOKEN)
        memberships = await self._reads.memberships_of(claims.principal_id)
        return Principal.for_user(claims.principal_id, memberships, credential=CredentialKind.TOKEN)

    async def _representation(
        self, dataset: Dataset, version: DatasetVersion, fmt: str
    ) -> Representation:
        file = version.file
        if fmt == ORIGINAL or (fmt == file.format.value and self._deriver is None):
            return Representation.of_original(file, fmt)
        if self._deriver is None:
            raise UnsupportedFormat(
                f"This server cannot convert to {fmt}.",
                hint="Download the original format, or ask an operator to enable conversion.",
            )
        return await self._deriver(dataset, version, fmt)

    async def open(self, principal: Principal, ask: DownloadAsk) -> Download:
        """Authorise a download and prepare its body.

        Every refusal is recorded as a ``denied`` DownloadRecord and raised as the
        domain error for its code (its ``extra`` holds RateLimit header fields where a
        rate limit applies). An allowed request reserves its bytes on the quotas and is
        recorded as ``started`` before the first byte; the returned ``Download`` settles
        both when its body ends or is closed.
        """
        now = self._clock.now()
        if ask.format not in EXPORT_FORMATS:
            raise UnsupportedFormat(
                f"Unknown download format {ask.format!r}.",
                hint="Use one of: " + ", ".join(EXPORT_FORMATS) + ".",
            )
        claims: TokenClaims | None = None
        token_error: DatadlError | None = None
        if ask.token is not None:
            try:
                claims = read_token(ask.token, {k.key_id: k for k in self._keys.signing_keys()})
                check_expiry(claims, now)
                if await self._usage.is_revoked(claims.token_id):
                    token_error = Decision.deny(
                        "token_invalid",
                        "The download token was revoked.",
                        "Ask for a new download token.",
                    ).error()
            except DatadlError as exc:
                token_error = exc
            if token_error is None and claims is not None:
                principal = await self._token_principal(claims)
        dataset: Dataset | None
        try:
            dataset = await self._reads.get_dataset(ask.dataset_id)
        except NotFound:
            dataset = None
        downloader = downloader_key(principal.user_id, ask.client.address)
        channel = Channel.TOKEN if ask.token is not None else ask.client.channel
        context = {
            "principal_id": principal.user_id,
            "api_key_id": principal.api_key_id,
            "token_id": claims.token_id if claims else None,
            "client_address": ask.client.address,
            "user_agent": ask.client.user_agent,
            "byte_range": ask.range[:200] if ask.range else None,
        }

        async def refuse(error: DatadlError, version: int | None = None) -> DatadlError:
            if dataset is not None and not ask.head:
                await self._audit.append(
                    DownloadRecord.denied(
                        id=self._entropy.new_id(),
                        dataset_id=dataset.id,
                        organization_id=dataset.organization_id,
                        format=ask.format,
                        version=version,
                        code=error.code,
                        channel=channel,
                        downloader=downloader,
                        now=now,
                        **context,
                    )
                )
            return error

        if token_error is not None:
            raise await refuse(token_error)
        grants = await self._reads.list_grants(dataset.id) if dataset else ()
        policy = await policy_for(self._reads, dataset) if dataset else DownloadPolicy()
        version: DatasetVersion | None = None
        number = ask.version if ask.version is not None else (claims.version if claims else None)
        if dataset is not None:
            number = number if number is not None else dataset.version
            try:
                version = await self._reads.get_version(dataset.id, number)
            except NotFound:
                version = None
            if version is not None and version.removed_at is not None:
                version = None
        request = DownloadRequest(
            format=ask.format,
            version=number,
            representation_bytes=None,
            accepted_terms=ask.accept_terms,
            token=claims,
        )

        def judge(request: DownloadRequest, rate: RateDecision | None = None) -> Decision:
            return decide(
                principal=principal,
                dataset=dataset,
                grants=grants,
                policy=policy,
                request=request,
                now=now,
                version_exists=version is not None,
                rate=rate,
            )

        async def refuse_limited(error: DatadlError) -> DatadlError:
            error.extra["ratelimit"] = rate_headers
            return await refuse(error, number)

        # First the rules that need no file facts, so nothing about a hidden dataset leaks.
        decision = judge(request)
        if not decision.allowed or dataset is None or version is None:
            raise await refuse(decision.error(), number)
        # The rate limit before the representation: a conversion is the costly part, and
        # a client over its rate (a HEAD included) must not start one.
        rate, rate_headers = await check_rate(
            self._usage, policy.rate_limit, f"rate:{dataset.organization_id}:{downloader}", now
        )
        decision = judge(request, rate)
        if not decision.allowed:
            raise await refuse_limited(decision.error())
        try:
            rep = await self._representation(dataset, version, ask.format)
        except DatadlError as exc:
            raise await refuse_limited(exc) from None
        decision = judge(attrs.evolve(request, representation_bytes=rep.size), rate)
        if not decision.allowed:
            raise await refuse_limited(decision.error())

        etag = conditional.make_etag(rep.sha256, rep.variant)
        outcome = conditional.evaluate_preconditions(
            method="HEAD" if ask.head else "GET",
            etag=etag,
            last_modified=version.created_at,
            if_match=ask.if_match,
            if_none_match=ask.if_none_match,
            if_modified_since=ask.if_modified_since,
            if_unmodified_since=ask.if_unmodified_since,
        )
        if outcome is conditional.Outcome.PRECONDITION_FAILED:
            raise await refuse(
                PreconditionFailed("The representation has changed.", extra={"etag": etag}),
                number,
            )
        ranges: tuple[ByteRange, ...] | None = None
        if outcome is conditional.Outcome.PROCEED and conditional.if_range_allows(
            ask.if_range, etag=etag, last_modified=version.created_at
        ):
            try:
                ranges = parse_range(ask.range, rep.size)
            except RangeNotSatisfiable as exc:
                exc.extra["ratelimit"] = rate_headers
                raise await refuse(exc, number) from None
        layout = None
        if ranges is not None and len(ranges) > 1:
            layout = multipart.layout(
                ranges,
                size=rep.size,
                content_type=rep.media_type,
                boundary=f"datadl-{self._entropy.new_id()}",
            )
        status = 304 if outcome is conditional.Outcome.NOT_MODIFIED else (206 if ranges else 200)
        download = Download(
            service=self,
            record=None,
            dataset=dataset,
            version=version,
            representation=rep,
            status=status,
            ranges=ranges,
            layout=layout,
            reservation=None,
            ratelimit_headers=rate_headers,
        )
        if ask.head:
            download._finished = True
            return download
        found: DatasetVersion = version

        async def start_record(
            payload: int = 0, key: str | None = None, logical: bool = False
        ) -> DownloadRecord:
            """Append this attempt's ``started`` record."""
            record = DownloadRecord(
                id=self._entropy.new_id(),
                dataset_id=dataset.id,
                organization_id=dataset.organization_id,
                version=found.number,
                format=ask.format,
                status=DownloadStatus.STARTED,
                channel=channel,
                started_at=now,
                downloader=downloader,
                bytes_expected=payload,
                session_key=key,
                logical=logical,
                **context,  # type: ignore[arg-type]
            )
            await self._audit.append(record)
            return record

        async def record_unsent(
            status: DownloadStatus,
            reason: str,
            at: datetime,
            payload: int = 0,
            key: str | None = None,
        ) -> None:
            """Record this attempt as ended at ``at`` with nothing sent."""
            record = await start_record(payload, key)
            await self._audit.update(record.finished(status, bytes_sent=0, now=at, reason=reason))

        if status == 304:
            # Nothing leaves, so nothing is reserved; the attempt is still on record.
            download._record = await start_record()
            await download._finish(DownloadStatus.COMPLETED)
            return download
        try:
            await self._check_stored(dataset, version, rep)
        except DatadlError as exc:
            await record_unsent(DownloadStatus.FAILED, _reason(exc), now)
            raise

        key = session_key(
            downloader=downloader,
            dataset_id=dataset.id,
            version=version.number,
            format=ask.format,
            token_id=claims.token_id if claims else None,
        )
        framing = sum(len(h) for h, _ in layout.parts) + len(layout.closing) if layout else 0
        payload = download.content_length - framing
        # A resume or another segment of the same logical download counts no new download
        # against the quota, only its bytes.
        logical = await self._touch_session(key, now)
        reservation = None
        charges = self._charges(principal, dataset, policy, downloader, now)
        if charges:
            reservation = Reservation(
                id=self._entropy.new_id(),
                charges=charges,
                bytes=payload,
                downloads=1 if logical else 0,
                expires_at=now + RESERVATION_TTL,
            )
            try:
                reserved = await self._usage.reserve(reservation)
            except Unavailable:
                # The store may have applied the reservation before the reply was lost;
                # settling it with nothing sent undoes it if it did, and is a no-op if not.
                with contextlib.suppress(Unavailable):
                    await self._usage.settle(reservation.id, 0)
                raise
            if not reserved.ok:
                error = quota_denial(reserved, now).error()
                error.extra["ratelimit"] = rate_headers
                raise await refuse(error, number)
        try:
            if claims is not None:
                use = await self._usage.use_token(
                    claims.token_id,
                    key,
                    max_uses=claims.max_uses,
                    now=now,
                    idle_seconds=SESSION_IDLE_SECONDS,
                    expires_at=claims.expires_at,
                )
                if not use.allowed:
                    raise await refuse(token_exhausted(claims.max_uses or 0).error(), number)
            if logical:
                await self._catalog.increment_download_count(dataset.id)
            download._reservation = reservation
            download._record = await start_record(payload, key, logical)
        except BaseException as exc:
            # Nothing was sent: whatever stopped the download here (a refusal, a store, a
            # client gone while it waited), its reservation is undone, not left to expire,
            # and a client that left is on record like any other attempt.
            if reservation is not None:
                await asyncio.shield(self._usage.settle(reservation.id, 0))
            if download._record is None and isinstance(exc, asyncio.CancelledError):
                gone = "the client left before the first byte"
                await asyncio.shield(record_unsent(DownloadStatus.ABORTED, gone, self._clock.now()))
            raise
        self._active[download._record.id] = download
        # The started record is the first progress: the next write waits PROGRESS_INTERVAL,
        # so a short download (a range) writes its record twice, not three times.
        self._last_progress[download._record.id] = now
        return download

    async def _check_stored(
        self, dataset: Dataset, version: DatasetVersion, rep: Representation
    ) -> None:
        """Refuse to serve a stored object whose size differs from the recorded one."""
        stat = await self._blobs.stat(rep.key)
        if stat.size != rep.size:
            reason = f"stored size {stat.size} differs from the recorded {rep.size}"
            await self._corrupted(dataset.id, version, rep, reason)
            raise FileCorrupted(
                "The stored file does not match the catalogue.", extra={"reason": reason}
            )

    async def _touch_session(self, key: str, now: datetime) -> bool:
        """Whether a new logical download starts; the usage store decides, at most once
        a ``SESSION_TOUCH_EVERY`` per session and process."""
        last = self._touched.get(key)
        if last is not None and timedelta(0) <= now - last < SESSION_TOUCH_EVERY:
            return False
        logical = await self._usage.touch_session(key, now=now, idle_seconds=SESSION_IDLE_SECONDS)
        if len(self._touched) >= 10_000:
            self._touched.clear()
        self._touched[key] = now
        return logical

    def _charges(
        self,
        principal: Principal,
        dataset: Dataset,
        policy: DownloadPolicy,
        downloader: str,
        now: datetime,
    ) -> tuple[QuotaCharge, ...]:
        charges = []
        org = dataset.organization_id
        if policy.user_quota is not None and not policy.user_quota.unlimited:
            charges.append(
                QuotaCharge.for_subject(
                    QuotaSubject.USER, downloader, policy.user_quota, now, organization_id=org
                )
            )
        quota = policy.organization_quota
        if quota is not None and not quota.unlimited:
            charges.append(
                QuotaCharge.for_subject(
                    QuotaSubject.ORGANIZATION, org, quota, now, organization_id=org
                )
            )
        return tuple(charges)

    # --- sendfile ---------------------------------------------------------------------------

    async def _local_body(self, download: Download) -> tuple[BinaryIO, int, int] | None:
        """The open local file and ``[start, stop)`` a download may ``sendfile``, or None.

        Only a single-part 200 or 206 from a store with local files qualifies. A full read
        of a verified representation also needs this process to have checked the same
        stored file's SHA-256 within ``VERIFIED_FOR``: ``sendfile`` bypasses the hashing.
        """
        if download.multipart is not None or download.status not in (200, 206):
            return None
        if download._finished or download._started or not isinstance(self._blobs, LocalFiles):
            return None
        rep = download.representation
        if download.ranges:
            start, stop = download.ranges[0].start, download.ranges[0].end + 1
        else:
            start, stop = 0, rep.size
            if rep.verify:
                seen = self._verified.get(rep.key)
                if seen is None or seen[0] != rep.sha256:
                    return None
                if self._clock.now() - seen[3] > VERIFIED_FOR:
                    return None
                stat = await self._blobs.stat(rep.key)
                if (stat.size, stat.modified_at) != seen[1:3]:
                    return None
        file = await self._blobs.open_local(rep.key)
        return None if file is None else (file, start, stop)

    async def _remember_verified(self, rep: Representation) -> None:
        if not isinstance(self._blobs, LocalFiles):
            return
        stat = await self._blobs.stat(rep.key)
        if len(self._verified) >= 10_000:
            self._verified.clear()
        self._verified[rep.key] = (rep.sha256, stat.size, stat.modified_at, self._clock.now())

    # --- progress and settlement ----------------------------------------------------------

    async def _progress(self, download: Download) -> None:
        record = download._record
        if record is None:
            return
        now = self._clock.now()
        last = self._last_progress.get(record.id)
        if last is not None and now - last < PROGRESS_INTERVAL:
            return
        self._last_progress[record.id] = now
        download._record = record.progressed(download.bytes_sent)
        await self._audit.update(download._record)

    async def _settle(
        self, download: Download, status: DownloadStatus, error: BaseException | None
    ) -> None:
        record = download._record
        if record is None:
            return
        self._active.pop(record.id, None)
        self._last_progress.pop(record.id, None)
        if download._reservation is not None:
            await self._usage.settle(download._reservation.id, download.bytes_sent)
        reason = _reason(error) if error is not None else None
        download._record = record.finished(
            status, bytes_sent=download.bytes_sent, now=self._clock.now(), reason=reason
        )
        await self._audit.update(download._record)
        if isinstance(error, FileCorrupted):
            await self._corrupted(
                download.dataset.id,
                download.version,
                download.representation,
                reason or "integrity check failed",
            )

    async def _corrupted(
        self, dataset_id: str, version: DatasetVersion, rep: Representation, reason: str
    ) -> None:
        if rep.key != version.file.storage_key:
            # A bad derivative says nothing about the dataset's file: drop it, so the next
            # request converts again.
            await self._blobs.delete(rep.key)
            return
        await self._flag_corrupted(dataset_id, version, reason)

    async def _flag_corrupted(self, dataset_id: str, version: DatasetVersion, reason: str) -> None:
        """Flag the dataset while the corrupted file is still its current one.

        The flag speaks of the current file: a corrupted older version (``?version=``) or
        one replaced meanwhile leaves the dataset as it is; the record says why.
        """

        def change(current: Dataset) -> Dataset | None:
            if (current.version, current.file.sha256) != (version.number, version.file.sha256):
                return None
            return attrs.evolve(current, corrupted_reason=reason)

        dataset = await self._catalog.get_dataset(dataset_id)
        await change_dataset(self._catalog, dataset, change)

    async def progress(self, principal: Principal, download_id: str) -> DownloadRecord:
        """A download record with live progress.

        Visible to the user who downloaded and to the dataset's administrators; a record
        of an anonymous download is visible to whoever holds its (unguessable) id.
        """
        active = self._active.get(download_id)
        if active is not None and active._record is not None:
            record = attrs.evolve(active._record, bytes_sent=active.bytes_sent)
        else:
            record = await self._audit.get(download_id)
        if record.principal_id is None or record.principal_id == principal.user_id:
            return record
        try:
            dataset = await self._catalog.get_dataset(record.dataset_id)
        except NotFound:
            raise NotFound("No such download.") from None
        if can_administer(principal, dataset):
            return record
        raise NotFound("No such download.")


def _reason(error: BaseException) -> str:
    """What the audit trail says about a failure: the code and, where known, why."""
    if isinstance(error, DatadlError):
        why = error.extra.get("reason")
        return f"{error.code}: {why}" if why else error.code
    return type(error).__name__
