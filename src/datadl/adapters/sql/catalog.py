"""The Catalog port on SQL: organisations, users, datasets, versions, grants, policies, keys."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs
from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    delete,
    exists,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from datadl.adapters.sql.database import SqlDatabase, translate_errors
from datadl.adapters.sql.serde import policy_from_json, policy_to_json
from datadl.adapters.sql.tables import (
    UtcDateTime,
    api_keys,
    dataset_policies,
    dataset_tags,
    dataset_versions,
    datasets,
    grants,
    issued_tokens,
    key_type,
    memberships,
    organization_policies,
    organizations,
    users,
)
from datadl.domain.errors import NotFound, StaleWrite
from datadl.domain.model import (
    ApiKey,
    Dataset,
    DatasetFile,
    DatasetStatus,
    DatasetVersion,
    FileFormat,
    Grant,
    Membership,
    Organization,
    Permission,
    Role,
    Scope,
    User,
    Visibility,
)
from datadl.domain.policy import DownloadPolicy, PolicyOverride
from datadl.domain.tokens import TokenClaims
from datadl.ports.catalog import Audience, DatasetQuery

# --- rows to domain values and back -----------------------------------------------------------


def _organization(row: RowMapping) -> Organization:
    return Organization(
        id=row["id"], slug=row["slug"], title=row["title"], created_at=row["created_at"]
    )


def _user(row: RowMapping) -> User:
    return User(
        id=row["id"],
        name=row["name"],
        display_name=row["display_name"],
        created_at=row["created_at"],
        email=row["email"],
    )


def _api_key(row: RowMapping) -> ApiKey:
    return ApiKey(
        id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        scopes=frozenset(Scope(s) for s in row["scopes"]),
        secret_hash=row["secret_hash"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


def _api_key_values(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "user_id": key.user_id,
        "name": key.name,
        "scopes": sorted(s.value for s in key.scopes),
        "secret_hash": key.secret_hash,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "last_used_at": key.last_used_at,
    }


def _file(row: RowMapping) -> DatasetFile:
    return DatasetFile(
        storage_key=row["storage_key"],
        format=FileFormat(row["format"]),
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        media_type=row["media_type"],
        filename=row["filename"],
    )


def _file_values(file: DatasetFile) -> dict[str, Any]:
    return {
        "storage_key": file.storage_key,
        "format": file.format.value,
        "size_bytes": file.size_bytes,
        "sha256": file.sha256,
        "media_type": file.media_type,
        "filename": file.filename,
    }


def _dataset(row: RowMapping) -> Dataset:
    return Dataset(
        id=row["id"],
        slug=row["slug"],
        title=row["title"],
        description=row["description"],
        organization_id=row["organization_id"],
        owner_id=row["owner_id"],
        visibility=Visibility(row["visibility"]),
        tags=tuple(row["tags"]),
        license=row["license"],
        version=row["version"],
        file=_file(row),
        status=DatasetStatus(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        row_count=row["row_count"],
        column_count=row["column_count"],
        download_count=row["download_count"],
        deleted_at=row["deleted_at"],
        corrupted_reason=row["corrupted_reason"],
        analysis_error=row["analysis_error"],
    )


def _dataset_values(dataset: Dataset) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "slug": dataset.slug,
        "title": dataset.title,
        "description": dataset.description,
        "title_folded": dataset.title.casefold(),
        "description_folded": dataset.description.casefold(),
        "organization_id": dataset.organization_id,
        "owner_id": dataset.owner_id,
        "visibility": dataset.visibility.value,
        "tags": list(dataset.tags),
        "license": dataset.license,
        "version": dataset.version,
        **_file_values(dataset.file),
        "status": dataset.status.value,
        "created_at": dataset.created_at,
        "updated_at": dataset.updated_at,
        "row_count": dataset.row_count,
        "column_count": dataset.column_count,
        "download_count": dataset.download_count,
        "deleted_at": dataset.deleted_at,
        "corrupted_reason": dataset.corrupted_reason,
        "analysis_error": dataset.analysis_error,
    }


def _tag_rows(dataset: Dataset) -> list[dict[str, Any]]:
    return [
        {"dataset_id": dataset.id, "position": i, "tag": tag, "tag_folded": tag.casefold()}
        for i, tag in enumerate(dataset.tags)
    ]


def _version(row: RowMapping) -> DatasetVersion:
    return DatasetVersion(
        dataset_id=row["dataset_id"],
        number=row["number"],
        file=_file(row),
        created_at=row["created_at"],
        created_by=row["created_by"],
        removed_at=row["removed_at"],
    )


def _version_values(version: DatasetVersion) -> dict[str, Any]:
    return {
        "dataset_id": version.dataset_id,
        "number": version.number,
        **_file_values(version.file),
        "created_at": version.created_at,
        "created_by": version.created_by,
        "removed_at": version.removed_at,
    }


def _grant(row: RowMapping) -> Grant:
    return Grant(
        id=row["id"],
        dataset_id=row["dataset_id"],
        permission=Permission(row["permission"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        user_id=row["user_id"],
        organization_id=row["organization_id"],
        expires_at=row["expires_at"],
    )


def _grant_values(grant: Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "dataset_id": grant.dataset_id,
        "permission": grant.permission.value,
        "created_at": grant.created_at,
        "created_by": grant.created_by,
        "user_id": grant.user_id,
        "organization_id": grant.organization_id,
        "expires_at": grant.expires_at,
    }


def _token(row: RowMapping) -> TokenClaims:
    return TokenClaims(
        token_id=row["token_id"],
        dataset_id=row["dataset_id"],
        version=row["version"],
        format=row["format"],
        principal_id=row["principal_id"],
        issued_at=row["issued_at"],
        expires_at=row["expires_at"],
        max_uses=row["max_uses"],
        key_id=row["key_id"],
    )


def _token_values(claims: TokenClaims) -> dict[str, Any]:
    return {
        "token_id": claims.token_id,
        "dataset_id": claims.dataset_id,
        "version": claims.version,
        "format": claims.format,
        "principal_id": claims.principal_id,
        "issued_at": claims.issued_at,
        "expires_at": claims.expires_at,
        "max_uses": claims.max_uses,
        "key_id": claims.key_id,
    }


# --- the listing rule in SQL ------------------------------------------------------------------


def _visible_to(audience: Audience) -> ColumnElement[bool]:
    """``domain.access.can_view`` over an Audience, as the memory catalogue applies it."""
    d = datasets.c
    user_id = audience.user_id
    member_of = sorted(audience.organization_ids | audience.admin_organization_ids)
    visible: list[ColumnElement[bool]] = [d.visibility == Visibility.PUBLIC.value]
    if audience.admin_organization_ids:
        visible.append(d.organization_id.in_(sorted(audience.admin_organization_ids)))
    if user_id is not None:
        visible.append(d.owner_id == user_id)
    if member_of:
        visible.append(
            and_(d.visibility == Visibility.ORGANIZATION.value, d.organization_id.in_(member_of))
        )
    if user_id is not None:
        g = grants.c
        grantee: list[ColumnElement[bool]] = [g.user_id == user_id]
        if member_of:
            grantee.append(g.organization_id.in_(member_of))
        conditions = [g.dataset_id == d.id, or_(*grantee)]
        if audience.now is not None:
            conditions.append(or_(g.expires_at.is_(None), g.expires_at > audience.now))
        visible.append(exists().where(*conditions))
    return or_(*visible)


def _matches(text: str) -> ColumnElement[bool]:
    """``Dataset.matches``: the case-folded text inside the folded title, description or a tag."""
    needle = text.casefold()
    d = datasets.c
    in_tag = exists().where(
        dataset_tags.c.dataset_id == d.id,
        dataset_tags.c.tag_folded.contains(needle, autoescape=True),
    )
    return or_(
        d.title_folded.contains(needle, autoescape=True),
        d.description_folded.contains(needle, autoescape=True),
        in_tag,
    )


class SqlCatalog:
    """The Catalog port on a SQL database (SQLite or PostgreSQL).

    Behaves as ``MemoryCatalog``: a deleted dataset frees its slug (a partial unique
    index holds only live slugs), grant ids are unique across datasets, purging a dataset
    also drops its issued tokens, and revoking a revoked API key keeps the first time.
    Every write is one transaction; a failed write keeps nothing.
    """

    def __init__(self, db: SqlDatabase) -> None:
        self._db = db

    # organisations, users, memberships

    async def add_organization(self, organization: Organization) -> None:
        conflict = (
            f"An organisation with id {organization.id!r} or slug {organization.slug!r} exists."
        )
        async with self._db.write(conflict=conflict) as conn:
            await conn.execute(
                insert(organizations).values(
                    id=organization.id,
                    slug=organization.slug,
                    title=organization.title,
                    created_at=organization.created_at,
                )
            )

    async def get_organization(self, id_or_slug: str) -> Organization:
        o = organizations.c
        query = (
            select(organizations)
            .where(or_(o.id == id_or_slug, o.slug == id_or_slug))
            # An id match wins over a slug match, as in the memory catalogue.
            .order_by(case((o.id == id_or_slug, 0), else_=1))
            .limit(1)
        )
        async with self._db.read() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise NotFound(f"No organisation {id_or_slug!r}.")
        return _organization(row)

    async def list_organizations(self) -> Sequence[Organization]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(organizations).order_by(organizations.c.slug))
            return [_organization(row) for row in rows.mappings()]

    async def add_user(self, user: User) -> None:
        async with self._db.write(
            conflict=f"A user with id {user.id!r} or name {user.name!r} exists."
        ) as conn:
            await conn.execute(
                insert(users).values(
                    id=user.id,
                    name=user.name,
                    display_name=user.display_name,
                    email=user.email,
                    created_at=user.created_at,
                )
            )

    async def get_user(self, id_or_name: str) -> User:
        u = users.c
        query = (
            select(users)
            .where(or_(u.id == id_or_name, u.name == id_or_name))
            .order_by(case((u.id == id_or_name, 0), else_=1))
            .limit(1)
        )
        async with self._db.read() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise NotFound(f"No user {id_or_name!r}.")
        return _user(row)

    async def list_users(self) -> Sequence[User]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(users).order_by(users.c.name))
            return [_user(row) for row in rows.mappings()]

    async def set_membership(self, organization_id: str, user_id: str, role: Role) -> None:
        async with self._db.write() as conn:
            if not await _exists(conn, organizations.c.id, organization_id):
                raise NotFound(f"No organisation {organization_id!r}.")
            if not await _exists(conn, users.c.id, user_id):
                raise NotFound(f"No user {user_id!r}.")
            upsert = self._db.insert(memberships).values(
                organization_id=organization_id, user_id=user_id, role=role.value
            )
            await conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=["organization_id", "user_id"],
                    set_={"role": upsert.excluded.role},
                )
            )

    async def remove_membership(self, organization_id: str, user_id: str) -> None:
        m = memberships.c
        async with self._db.write() as conn:
            await conn.execute(
                delete(memberships).where(
                    m.organization_id == organization_id, m.user_id == user_id
                )
            )

    async def memberships_of(self, user_id: str) -> Sequence[Membership]:
        m = memberships.c
        query = select(memberships).where(m.user_id == user_id).order_by(m.organization_id)
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            Membership(
                organization_id=row["organization_id"],
                user_id=row["user_id"],
                role=Role(row["role"]),
            )
            for row in rows
        ]

    # API keys

    async def add_api_key(self, key: ApiKey) -> None:
        async with self._db.write(conflict=f"An API key with id {key.id!r} exists.") as conn:
            await conn.execute(insert(api_keys).values(_api_key_values(key)))

    async def get_api_key(self, key_id: str) -> ApiKey:
        async with self._db.read() as conn:
            row = (
                (await conn.execute(select(api_keys).where(api_keys.c.id == key_id)))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"No API key {key_id!r}.")
        return _api_key(row)

    async def list_api_keys(self, user_id: str) -> Sequence[ApiKey]:
        k = api_keys.c
        query = (
            select(api_keys).where(k.user_id == user_id).order_by(k.created_at.desc(), k.id.desc())
        )
        async with self._db.read() as conn:
            return [_api_key(row) for row in (await conn.execute(query)).mappings()]

    async def revoke_api_key(self, key_id: str, when: datetime) -> None:
        k = api_keys.c
        async with self._db.write() as conn:
            # Only the first revocation sets the time; repeating it changes nothing.
            result = await conn.execute(
                update(api_keys)
                .where(k.id == key_id, k.revoked_at.is_(None))
                .values(revoked_at=when)
            )
            if result.rowcount == 0 and not await _exists(conn, k.id, key_id):
                raise NotFound(f"No API key {key_id!r}.")

    # datasets and versions

    async def add_dataset(self, dataset: Dataset, version: DatasetVersion) -> None:
        if version.dataset_id != dataset.id:
            raise ValueError("the version belongs to another dataset")
        conflict = (
            f"A dataset with id {dataset.id!r} exists, or the slug {dataset.slug!r} "
            "is taken in this organisation."
        )
        async with self._db.write(conflict=conflict) as conn:
            await conn.execute(insert(datasets).values(_dataset_values(dataset)))
            await _write_tags(conn, dataset)
            await conn.execute(insert(dataset_versions).values(_version_values(version)))

    async def get_dataset(self, dataset_id: str) -> Dataset:
        async with self._db.read() as conn:
            row = await _dataset_row(conn, datasets.c.id == dataset_id)
        if row is None:
            raise NotFound(f"No dataset {dataset_id!r}.")
        return _dataset(row)

    async def find_dataset(self, organization_id: str, slug: str) -> Dataset:
        d = datasets.c
        async with self._db.read() as conn:
            row = await _dataset_row(
                conn,
                and_(d.organization_id == organization_id, d.slug == slug, d.deleted_at.is_(None)),
            )
        if row is None:
            raise NotFound(f"No dataset {slug!r} in organisation {organization_id!r}.")
        return _dataset(row)

    async def list_datasets(self, query: DatasetQuery) -> Sequence[Dataset]:
        if query.limit <= 0:
            return []
        d = datasets.c
        conditions: list[ColumnElement[bool]] = [d.deleted_at.is_(None)]
        if query.after is not None:
            created_at, dataset_id = query.after
            conditions.append(
                tuple_(d.created_at, d.id)
                < tuple_(literal(created_at, UtcDateTime()), literal(dataset_id, key_type()))
            )
        if query.organization_id is not None:
            conditions.append(d.organization_id == query.organization_id)
        if query.visibility is not None:
            conditions.append(d.visibility == query.visibility.value)
        if query.tag is not None:
            conditions.append(
                exists().where(dataset_tags.c.dataset_id == d.id, dataset_tags.c.tag == query.tag)
            )
        if query.text is not None:
            conditions.append(_matches(query.text))
        conditions.append(_visible_to(query.audience))
        statement = (
            select(datasets)
            .where(*conditions)
            .order_by(d.created_at.desc(), d.id.desc())
            .limit(query.limit)
        )
        async with self._db.read() as conn:
            return [_dataset(row) for row in (await conn.execute(statement)).mappings()]

    async def list_deleted_datasets(self) -> Sequence[Dataset]:
        d = datasets.c
        statement = select(datasets).where(d.deleted_at.is_not(None)).order_by(d.deleted_at, d.id)
        async with self._db.read() as conn:
            return [_dataset(row) for row in (await conn.execute(statement)).mappings()]

    async def update_dataset(self, dataset: Dataset, *, expected: Dataset | None = None) -> None:
        conflict = f"The slug {dataset.slug!r} is taken in this organisation."
        async with self._db.write(conflict=conflict) as conn:
            if expected is not None:
                await _check_unchanged(conn, expected)
            await _replace_dataset(conn, dataset)

    async def add_version(
        self, dataset: Dataset, version: DatasetVersion, *, expected: Dataset | None = None
    ) -> None:
        if version.dataset_id != dataset.id:
            raise ValueError("the version belongs to another dataset")
        async with self._db.write() as conn:
            if not await _exists(conn, datasets.c.id, dataset.id):
                raise NotFound(f"No dataset {dataset.id!r}.")
            if expected is not None:
                await _check_unchanged(conn, expected)
            with translate_errors(conflict=f"Version {version.number} of {dataset.id!r} exists."):
                await conn.execute(insert(dataset_versions).values(_version_values(version)))
            with translate_errors(
                conflict=f"The slug {dataset.slug!r} is taken in this organisation."
            ):
                await _replace_dataset(conn, dataset)

    async def list_versions(self, dataset_id: str) -> Sequence[DatasetVersion]:
        v = dataset_versions.c
        statement = select(dataset_versions).where(v.dataset_id == dataset_id).order_by(v.number)
        async with self._db.read() as conn:
            return [_version(row) for row in (await conn.execute(statement)).mappings()]

    async def get_version(self, dataset_id: str, number: int) -> DatasetVersion:
        v = dataset_versions.c
        statement = select(dataset_versions).where(v.dataset_id == dataset_id, v.number == number)
        async with self._db.read() as conn:
            row = (await conn.execute(statement)).mappings().first()
        if row is None:
            raise NotFound(f"No version {number} of dataset {dataset_id!r}.")
        return _version(row)

    async def update_version(self, version: DatasetVersion) -> None:
        v = dataset_versions.c
        values = _version_values(version)
        del values["dataset_id"], values["number"]
        async with self._db.write() as conn:
            result = await conn.execute(
                update(dataset_versions)
                .where(v.dataset_id == version.dataset_id, v.number == version.number)
                .values(values)
            )
            if result.rowcount == 0:
                raise NotFound(f"No version {version.number} of dataset {version.dataset_id!r}.")

    async def increment_download_count(self, dataset_id: str) -> None:
        d = datasets.c
        async with self._db.write() as conn:
            # One statement: the database adds under its row lock, so no increment is lost.
            await conn.execute(
                update(datasets)
                .where(d.id == dataset_id)
                .values(download_count=d.download_count + 1)
            )

    async def purge_dataset(self, dataset_id: str) -> None:
        async with self._db.write() as conn:
            # Explicit deletes rather than trusting ON DELETE CASCADE alone: a SQLite
            # connection opened by other tools may have foreign keys switched off.
            for column in (
                issued_tokens.c.dataset_id,
                grants.c.dataset_id,
                dataset_policies.c.dataset_id,
                dataset_versions.c.dataset_id,
                dataset_tags.c.dataset_id,
                datasets.c.id,
            ):
                await conn.execute(delete(column.table).where(column == dataset_id))

    # grants and policies

    async def add_grant(self, grant: Grant) -> None:
        async with self._db.write(conflict=f"A grant with id {grant.id!r} exists.") as conn:
            if not await _exists(conn, datasets.c.id, grant.dataset_id):
                raise NotFound(f"No dataset {grant.dataset_id!r}.")
            await conn.execute(insert(grants).values(_grant_values(grant)))

    async def list_grants(self, dataset_id: str) -> Sequence[Grant]:
        g = grants.c
        statement = select(grants).where(g.dataset_id == dataset_id).order_by(g.created_at, g.id)
        async with self._db.read() as conn:
            return [_grant(row) for row in (await conn.execute(statement)).mappings()]

    async def delete_grant(self, dataset_id: str, grant_id: str) -> None:
        g = grants.c
        async with self._db.write() as conn:
            result = await conn.execute(
                delete(grants).where(g.dataset_id == dataset_id, g.id == grant_id)
            )
            if result.rowcount == 0:
                raise NotFound(f"No grant {grant_id!r} on dataset {dataset_id!r}.")

    async def get_policy(self, organization_id: str) -> DownloadPolicy | None:
        p = organization_policies.c
        async with self._db.read() as conn:
            document = await conn.scalar(
                select(p.policy).where(p.organization_id == organization_id)
            )
        return None if document is None else policy_from_json(document, DownloadPolicy)

    async def set_policy(self, organization_id: str, policy: DownloadPolicy) -> None:
        async with self._db.write() as conn:
            if not await _exists(conn, organizations.c.id, organization_id):
                raise NotFound(f"No organisation {organization_id!r}.")
            upsert = self._db.insert(organization_policies).values(
                organization_id=organization_id, policy=policy_to_json(policy)
            )
            await conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=["organization_id"], set_={"policy": upsert.excluded.policy}
                )
            )

    async def get_dataset_policy(self, dataset_id: str) -> PolicyOverride | None:
        p = dataset_policies.c
        async with self._db.read() as conn:
            document = await conn.scalar(select(p.policy).where(p.dataset_id == dataset_id))
        return None if document is None else policy_from_json(document, PolicyOverride)

    async def set_dataset_policy(self, dataset_id: str, policy: PolicyOverride | None) -> None:
        p = dataset_policies.c
        async with self._db.write() as conn:
            if not await _exists(conn, datasets.c.id, dataset_id):
                raise NotFound(f"No dataset {dataset_id!r}.")
            if policy is None:
                await conn.execute(delete(dataset_policies).where(p.dataset_id == dataset_id))
                return
            upsert = self._db.insert(dataset_policies).values(
                dataset_id=dataset_id, policy=policy_to_json(policy)
            )
            await conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=["dataset_id"], set_={"policy": upsert.excluded.policy}
                )
            )

    async def list_dataset_policies(self) -> Sequence[tuple[str, PolicyOverride]]:
        p = dataset_policies.c
        async with self._db.read() as conn:
            rows = (await conn.execute(select(p.dataset_id, p.policy).order_by(p.dataset_id))).all()
        return [(row[0], policy_from_json(row[1], PolicyOverride)) for row in rows]

    # issued download tokens

    async def add_token(self, claims: TokenClaims) -> None:
        async with self._db.write(conflict=f"A token with id {claims.token_id!r} exists.") as conn:
            await conn.execute(insert(issued_tokens).values(_token_values(claims)))

    async def get_token(self, token_id: str) -> TokenClaims:
        t = issued_tokens.c
        async with self._db.read() as conn:
            row = (
                (await conn.execute(select(issued_tokens).where(t.token_id == token_id)))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"No token {token_id!r}.")
        return _token(row)

    async def purge_tokens(self, expired_before: datetime) -> int:
        t = issued_tokens.c
        async with self._db.write() as conn:
            result = await conn.execute(delete(issued_tokens).where(t.expires_at < expired_before))
            return result.rowcount


async def _exists(conn: AsyncConnection, column: Any, value: str) -> bool:
    found = await conn.scalar(select(column).where(column == value).limit(1))
    return found is not None


async def _dataset_row(conn: AsyncConnection, condition: ColumnElement[bool]) -> RowMapping | None:
    return (await conn.execute(select(datasets).where(condition).limit(1))).mappings().first()


async def _write_tags(conn: AsyncConnection, dataset: Dataset) -> None:
    rows = _tag_rows(dataset)
    if rows:
        await conn.execute(insert(dataset_tags), rows)


async def _check_unchanged(conn: AsyncConnection, expected: Dataset) -> None:
    """Raise StaleWrite unless the stored dataset equals ``expected`` (its counter aside).

    Runs inside the write transaction: PostgreSQL locks the row until the write commits;
    SQLite's BEGIN IMMEDIATE already holds the database's write lock.
    """
    statement = select(datasets).where(datasets.c.id == expected.id).with_for_update()
    row = (await conn.execute(statement)).mappings().first()
    if row is None:
        raise NotFound(f"No dataset {expected.id!r}.")
    stored = _dataset(row)
    if attrs.evolve(stored, download_count=0) != attrs.evolve(expected, download_count=0):
        raise StaleWrite(f"Dataset {expected.id!r} changed since it was read.")


async def _replace_dataset(conn: AsyncConnection, dataset: Dataset) -> None:
    values = _dataset_values(dataset)
    # The download counter only grows, through increment_download_count.
    del values["id"], values["download_count"]
    result = await conn.execute(update(datasets).where(datasets.c.id == dataset.id).values(values))
    if result.rowcount == 0:
        raise NotFound(f"No dataset {dataset.id!r}.")
    await conn.execute(delete(dataset_tags).where(dataset_tags.c.dataset_id == dataset.id))
    await _write_tags(conn, dataset)
