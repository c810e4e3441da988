"""Publishing, finding, changing, sharing and deleting datasets."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, Callable, Sequence
from datetime import datetime

import attrs

from datadl.domain.access import Principal, is_org_admin
from datadl.domain.cursors import decode_cursor, encode_cursor
from datadl.domain.decision import Forbidden
from datadl.domain.errors import BadRequest, Conflict, InvalidCursor, NotFound, StaleWrite
from datadl.domain.formats import SNIFF_BYTES, resolve_format
from datadl.domain.model import (
    Dataset,
    DatasetFile,
    DatasetStatus,
    DatasetVersion,
    FileFormat,
    Grant,
    Permission,
    Scope,
    Visibility,
    is_slug,
    slugify,
)
from datadl.domain.policy import DownloadPolicy, PolicyOverride, check_override
from datadl.ports.catalog import Audience, Catalog, DatasetQuery
from datadl.ports.clock import Clock, Entropy, KeyRing
from datadl.ports.storage import BlobStore
from datadl.services._shared import (
    DEFAULT_POLICY,
    administered_dataset,
    change_dataset,
    policy_for,
    prepend,
    read_head,
    require_scope,
    require_user,
    visible_dataset,
)

MAX_PAGE = 100
MAX_TAGS = 32


@attrs.frozen
class DatasetFacts:
    """What a publisher says about a new dataset; only ``organization`` is required."""

    organization: str
    filename: str | None = None
    format: FileFormat | None = None
    slug: str | None = None
    title: str | None = None
    description: str = ""
    visibility: Visibility = Visibility.PRIVATE
    tags: tuple[str, ...] = ()
    license: str | None = None


@attrs.frozen
class DatasetChanges:
    """A partial update: fields left None stay as they are."""

    title: str | None = None
    description: str | None = None
    tags: tuple[str, ...] | None = None
    license: str | None = None
    visibility: Visibility | None = None


@attrs.frozen
class DatasetPage:
    """One page of a listing and the cursor of the next, if any."""

    items: tuple[Dataset, ...]
    next_cursor: str | None


def _check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    cleaned = tuple(dict.fromkeys(t.strip() for t in tags if t.strip()))
    if len(cleaned) > MAX_TAGS or any(len(t) > 64 for t in cleaned):
        raise BadRequest(
            f"At most {MAX_TAGS} tags of up to 64 characters each.", hint="Use fewer tags."
        )
    return cleaned


def _check_text(name: str, value: str | None, limit: int) -> None:
    if value is not None and len(value) > limit:
        raise BadRequest(f"{name} is longer than {limit} characters.", hint=f"Shorten the {name}.")


class DatasetService:
    """Use cases over datasets: publish, list, get, update, replace, delete, share, policies.

    ``max_upload_bytes`` caps every upload while it streams. ``analyze`` says whether an
    analysis will follow publication (datasets then start as ``analyzing``); when it does,
    ``on_published`` is called with each newly published dataset or version (to start
    the analysis in the background; it must not block).
    """

    def __init__(
        self,
        *,
        catalog: Catalog,
        blobs: BlobStore,
        clock: Clock,
        entropy: Entropy,
        keys: KeyRing,
        max_upload_bytes: int | None = None,
        analyze: bool = False,
        on_published: Callable[[Dataset], object] | None = None,
    ) -> None:
        self._catalog = catalog
        self._blobs = blobs
        self._clock = clock
        self._entropy = entropy
        self._keys = keys
        self._max_upload = max_upload_bytes
        self._analyze = analyze
        self._on_published = on_published

    # --- publishing ----------------------------------------------------------------------

    async def _store(
        self,
        dataset_id: str,
        number: int,
        stream: AsyncIterable[bytes],
        declared: FileFormat | None,
        filename: str | None,
    ) -> DatasetFile:
        head, rest = await read_head(stream, SNIFF_BYTES)
        file_format = resolve_format(declared=declared, filename=filename, head=head)
        # The key is ours alone: ids and a random part, never a user-supplied name.
        key = f"datasets/{dataset_id}/v{number}-{self._entropy.new_id()}.{file_format.extension}"
        stored = await self._blobs.write(key, prepend(head, rest), max_bytes=self._max_upload)
        shown = _display_filename(filename, dataset_id, file_format)
        return DatasetFile(
            storage_key=stored.key,
            format=file_format,
            size_bytes=stored.size,
            sha256=stored.sha256,
            media_type=file_format.media_type,
            filename=shown,
        )

    async def publish(
        self, principal: Principal, facts: DatasetFacts, stream: AsyncIterable[bytes]
    ) -> Dataset:
        """Publish a new dataset from a byte stream of any length.

        The file is hashed and sized while it streams to storage; the dataset enters the
        catalogue only once its file is complete, and on any failure nothing is kept.
        Raises ``BadRequest`` (empty body, bad facts), ``UnsupportedFormat``,
        ``PayloadTooLarge``, ``Conflict`` (slug taken), ``Forbidden`` (not a member).
        """
        require_scope(principal, Scope.PUBLISH)
        owner = require_user(principal)
        try:
            org = await self._catalog.get_organization(facts.organization)
        except NotFound:
            raise NotFound(
                "No such organisation.", hint="Publish into an organisation you belong to."
            ) from None
        if principal.role_in(org.id) is None:
            raise Forbidden(
                "Only members of an organisation may publish into it.",
                hint="Ask an organisation admin to add you.",
            )
        _check_text("title", facts.title, 200)
        _check_text("description", facts.description, 20_000)
        tags = _check_tags(facts.tags)
        dataset_id = self._entropy.new_id()
        title = (facts.title or "").strip() or _title_from(facts.filename) or "Untitled dataset"
        slug = facts.slug or slugify(title) or dataset_id
        if not is_slug(slug):
            raise BadRequest(
                f"{slug!r} is not a valid slug.",
                hint="Use 1 to 64 lower-case letters, digits and inner hyphens.",
            )
        await self._check_slug_free(org.id, slug)
        file = await self._store(dataset_id, 1, stream, facts.format, facts.filename)
        now = self._clock.now()
        dataset = Dataset(
            id=dataset_id,
            slug=slug,
            title=title,
            description=facts.description,
            organization_id=org.id,
            owner_id=owner,
            visibility=facts.visibility,
            tags=tags,
            license=facts.license,
            version=1,
            file=file,
            status=DatasetStatus.ANALYZING if self._analyze else DatasetStatus.READY,
            created_at=now,
            updated_at=now,
        )
        version = DatasetVersion(dataset_id, 1, file, now, owner)
        try:
            await self._catalog.add_dataset(dataset, version)
        except BaseException:
            await self._blobs.delete(file.storage_key)
            raise
        self._published(dataset)
        return dataset

    async def _check_slug_free(self, organization_id: str, slug: str) -> None:
        try:
            await self._catalog.find_dataset(organization_id, slug)
        except NotFound:
            return
        raise Conflict(
            f"The slug {slug!r} is taken in this organisation.",
            hint="Pass another ?slug= or title.",
        )

    async def replace_file(
        self,
        principal: Principal,
        dataset_id: str,
        stream: AsyncIterable[bytes],
        *,
        filename: str | None = None,
        format: FileFormat | None = None,
    ) -> Dataset:
        """Publish a new version of a dataset's file; the old versions stay downloadable.

        Raises as ``publish`` does, plus ``Conflict`` when another replace won the race.
        """
        require_scope(principal, Scope.PUBLISH)
        dataset, _ = await administered_dataset(self._catalog, principal, dataset_id, self._now())
        number = dataset.version + 1
        file = await self._store(
            dataset.id, number, stream, format, filename or dataset.file.filename
        )
        now = self._clock.now()
        version = DatasetVersion(dataset.id, number, file, now, principal.user_id)
        try:
            updated = await self._add_version(dataset, version)
        except BaseException:
            await self._blobs.delete(file.storage_key)
            raise
        self._published(updated)
        return updated

    def _published(self, dataset: Dataset) -> None:
        if self._analyze and self._on_published is not None:
            self._on_published(dataset)

    # --- reading -------------------------------------------------------------------------

    async def _add_version(self, read: Dataset, version: DatasetVersion) -> Dataset:
        """Make ``version`` current, over whatever else changed since ``read`` (an analysis
        finishing, a PATCH): the upload took a while and those writes must not be undone."""
        current = read
        for _ in range(8):
            if current.version != version.number - 1 or current.is_deleted:
                raise Conflict(
                    "The dataset changed while the file was uploaded.",
                    hint="Reload the dataset; another version may have been published.",
                )
            updated = attrs.evolve(
                current,
                version=version.number,
                file=version.file,
                status=DatasetStatus.ANALYZING if self._analyze else DatasetStatus.READY,
                row_count=None,
                column_count=None,
                corrupted_reason=None,
                analysis_error=None,
                updated_at=version.created_at,
            )
            try:
                await self._catalog.add_version(updated, version, expected=current)
            except StaleWrite:
                current = await self._catalog.get_dataset(read.id)
                continue
            return updated
        raise StaleWrite(f"Dataset {read.id!r} kept changing while a version was added.")

    def _now(self) -> datetime:
        return self._clock.now()

    async def get(self, principal: Principal, dataset_id: str) -> Dataset:
        """One dataset the principal may see; ``not_found`` otherwise, as for a missing id."""
        require_scope(principal, Scope.READ)
        dataset, _ = await visible_dataset(self._catalog, principal, dataset_id, self._now())
        return dataset

    async def versions(self, principal: Principal, dataset_id: str) -> Sequence[DatasetVersion]:
        """The versions of a dataset the principal may see, oldest first."""
        dataset = await self.get(principal, dataset_id)
        return await self._catalog.list_versions(dataset.id)

    async def list(
        self,
        principal: Principal,
        *,
        text: str | None = None,
        organization: str | None = None,
        tag: str | None = None,
        visibility: Visibility | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> DatasetPage:
        """A page of the datasets the principal may see, newest first.

        The cursor is bound to the filters it was issued for; reusing it with other
        filters, or altering it, raises ``InvalidCursor``.
        """
        require_scope(principal, Scope.READ)
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be between 1 and {MAX_PAGE}.", hint="Use ?limit=20.")
        org_id = None
        if organization is not None:
            try:
                org_id = (await self._catalog.get_organization(organization)).id
            except NotFound:
                return DatasetPage((), None)
        fingerprint = hashlib.sha256(
            repr((principal.user_id, text, org_id, tag, visibility)).encode()
        ).hexdigest()[:16]
        after = None
        if cursor is not None:
            values = decode_cursor(cursor, self._keys.cursor_key())
            created, last_id = values.get("c"), values.get("i")
            if values.get("f") != fingerprint or not isinstance(created, str):
                raise InvalidCursor("The cursor belongs to another listing.")
            if not isinstance(last_id, str):
                raise InvalidCursor("The cursor is incomplete.")
            after = (datetime.fromisoformat(created), last_id)
        now = self._now()
        audience = Audience(
            user_id=principal.user_id,
            organization_ids=principal.organization_ids,
            admin_organization_ids=frozenset(
                o for o in principal.organization_ids if is_org_admin(principal, o)
            ),
            now=now,
        )
        found = await self._catalog.list_datasets(
            DatasetQuery(
                audience=audience,
                text=text,
                organization_id=org_id,
                tag=tag,
                visibility=visibility,
                limit=limit + 1,
                after=after,
            )
        )
        items = tuple(found[:limit])
        next_cursor = None
        if len(found) > limit:
            last = items[-1]
            next_cursor = encode_cursor(
                {"c": last.created_at.isoformat(), "i": last.id, "f": fingerprint},
                self._keys.cursor_key(),
            )
        return DatasetPage(items, next_cursor)

    # --- changing ------------------------------------------------------------------------

    async def update(
        self, principal: Principal, dataset_id: str, changes: DatasetChanges
    ) -> Dataset:
        """Change a dataset's descriptive fields or visibility (owner or organisation admin)."""
        require_scope(principal, Scope.PUBLISH)
        dataset, _ = await administered_dataset(self._catalog, principal, dataset_id, self._now())
        _check_text("title", changes.title, 200)
        _check_text("description", changes.description, 20_000)
        if changes.title is not None and not changes.title.strip():
            raise BadRequest("The title must not be empty.", hint="Give the dataset a title.")
        tags = None if changes.tags is None else _check_tags(changes.tags)
        now = self._now()

        def change(current: Dataset) -> Dataset:
            return attrs.evolve(
                current,
                title=current.title if changes.title is None else changes.title.strip(),
                description=(
                    current.description if changes.description is None else changes.description
                ),
                tags=current.tags if tags is None else tags,
                license=current.license if changes.license is None else changes.license,
                visibility=current.visibility if changes.visibility is None else changes.visibility,
                updated_at=now,
            )

        return await change_dataset(self._catalog, dataset, change)

    async def delete(self, principal: Principal, dataset_id: str) -> None:
        """Delete a dataset (owner or organisation admin); its files go with the next cleanup."""
        require_scope(principal, Scope.PUBLISH)
        now = self._now()
        dataset, _ = await administered_dataset(self._catalog, principal, dataset_id, now)

        def change(current: Dataset) -> Dataset | None:
            if current.is_deleted:
                return None
            return attrs.evolve(current, deleted_at=now, updated_at=now)

        await change_dataset(self._catalog, dataset, change)

    # --- sharing -------------------------------------------------------------------------

    async def add_grant(
        self,
        principal: Principal,
        dataset_id: str,
        *,
        permission: Permission,
        user: str | None = None,
        organization: str | None = None,
        expires_at: datetime | None = None,
    ) -> Grant:
        """Share a dataset with a user (id or name) or an organisation (id or slug)."""
        require_scope(principal, Scope.PUBLISH)
        now = self._now()
        dataset, _ = await administered_dataset(self._catalog, principal, dataset_id, now)
        if (not user) == (not organization):
            raise BadRequest(
                "A grant names exactly one user or one organisation.",
                hint='Send {"user": "bob"} or {"organization": "acme"}.',
            )
        if expires_at is not None and expires_at <= now:
            raise BadRequest("expires_at is in the past.", hint="Give a future time or none.")
        try:
            user_id = (await self._catalog.get_user(user)).id if user else None
            org_id = (
                (await self._catalog.get_organization(organization)).id if organization else None
            )
        except NotFound:
            raise BadRequest(
                "No such user or organisation to share with.", hint="Check the name."
            ) from None
        assert principal.user_id is not None  # administered_dataset guarantees a user
        grant = Grant(
            id=self._entropy.new_id(),
            dataset_id=dataset.id,
            permission=permission,
            created_at=now,
            created_by=principal.user_id,
            user_id=user_id,
            organization_id=org_id,
            expires_at=expires_at,
        )
        await self._catalog.add_grant(grant)
        return grant

    async def grants(self, principal: Principal, dataset_id: str) -> Sequence[Grant]:
        """The dataset's grants (owner or organisation admin)."""
        require_scope(principal, Scope.READ)
        _, grants = await administered_dataset(self._catalog, principal, dataset_id, self._now())
        return grants

    async def remove_grant(self, principal: Principal, dataset_id: str, grant_id: str) -> None:
        """Withdraw a share (owner or organisation admin); ``NotFound`` if no such grant."""
        require_scope(principal, Scope.PUBLISH)
        dataset, _ = await administered_dataset(self._catalog, principal, dataset_id, self._now())
        await self._catalog.delete_grant(dataset.id, grant_id)

    # --- policies ------------------------------------------------------------------------

    async def organization_policy(self, principal: Principal, organization: str) -> DownloadPolicy:
        """The organisation's download policy; members may read it."""
        require_scope(principal, Scope.READ)
        org = await self._catalog.get_organization(organization)
        if principal.role_in(org.id) is None:
            raise NotFound("No such organisation.")
        return await self._catalog.get_policy(org.id) or DEFAULT_POLICY

    async def set_organization_policy(
        self, principal: Principal, organization: str, policy: DownloadPolicy
    ) -> DownloadPolicy:
        """Replace the organisation's download policy (organisation admins only)."""
        require_scope(principal, Scope.ADMIN)
        org = await self._catalog.get_organization(organization)
        if principal.role_in(org.id) is None:
            raise NotFound("No such organisation.")
        if not is_org_admin(principal, org.id):
            raise Forbidden(
                "Only organisation admins may change the download policy.",
                hint="Ask an admin of the organisation.",
            )
        await self._catalog.set_policy(org.id, policy)
        return policy

    async def dataset_policy(
        self, principal: Principal, dataset_id: str
    ) -> tuple[PolicyOverride | None, DownloadPolicy]:
        """The dataset's own policy (if any) and the effective one, for whoever can see it."""
        require_scope(principal, Scope.READ)
        dataset, _ = await visible_dataset(self._catalog, principal, dataset_id, self._now())
        own = await self._catalog.get_dataset_policy(dataset.id)
        return own, await policy_for(self._catalog, dataset)

    async def set_dataset_policy(
        self, principal: Principal, dataset_id: str, policy: PolicyOverride | None
    ) -> DownloadPolicy:
        """Replace the dataset's own policy; refuses one that loosens its organisation's.

        Returns the effective policy that now applies.
        """
        require_scope(principal, Scope.PUBLISH)
        dataset, _ = await administered_dataset(self._catalog, principal, dataset_id, self._now())
        if policy is not None:
            base = await self._catalog.get_policy(dataset.organization_id) or DEFAULT_POLICY
            check_override(base, policy)
        await self._catalog.set_dataset_policy(dataset.id, policy)
        return await policy_for(self._catalog, dataset)


def _title_from(filename: str | None) -> str | None:
    if not filename:
        return None
    stem = filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1].rsplit(".", 1)[0]
    return stem.replace("_", " ").replace("-", " ").strip() or None


def _display_filename(filename: str | None, dataset_id: str, file_format: FileFormat) -> str:
    """The name shown to downloaders: the basename of what the user gave, without controls."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable() and ch not in "\r\n\t").strip()[:200]
    return base or f"{dataset_id}.{file_format.extension}"
