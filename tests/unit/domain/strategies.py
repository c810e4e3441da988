"""Shared builders and hypothesis strategies for the domain unit tests."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta

import attrs
from hypothesis import strategies as st

from datadl.domain.access import CredentialKind, Principal
from datadl.domain.model import (
    EXPORT_FORMATS,
    Dataset,
    DatasetFile,
    DatasetStatus,
    FileFormat,
    Grant,
    Membership,
    Permission,
    Role,
    Scope,
    Visibility,
)
from datadl.domain.policy import DownloadPolicy, PolicyOverride, QuotaLimit, Window
from datadl.domain.ratelimit import RateLimit

NOW = datetime(2025, 3, 14, 12, 30, tzinfo=UTC)
ORG = "acme"
OTHER_ORG = "globex"
OWNER = "olivia"
DATASET_ID = "d1"

#: Ids as the system makes them: short, lower-case letters and digits.
ids = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=8)


def make_file(fmt: FileFormat = FileFormat.CSV, size: int = 1_000) -> DatasetFile:
    """A stored file of ``size`` bytes in ``fmt``."""
    return DatasetFile(
        storage_key=f"datasets/{DATASET_ID}/v1.{fmt.extension}",
        format=fmt,
        size_bytes=size,
        sha256="ab" * 32,
        media_type=fmt.media_type,
        filename=f"table.{fmt.extension}",
    )


def make_dataset(
    visibility: Visibility = Visibility.ORGANIZATION,
    *,
    deleted: bool = False,
    fmt: FileFormat = FileFormat.CSV,
    organization_id: str = ORG,
    owner_id: str = OWNER,
    dataset_id: str = DATASET_ID,
) -> Dataset:
    """A ready dataset of ``organization_id`` owned by ``owner_id``."""
    return Dataset(
        id=dataset_id,
        slug="penguins",
        title="Penguins",
        description="Palmer penguins",
        organization_id=organization_id,
        owner_id=owner_id,
        visibility=visibility,
        tags=("birds",),
        license="CC0-1.0",
        version=1,
        file=make_file(fmt),
        status=DatasetStatus.READY,
        created_at=NOW - timedelta(days=10),
        updated_at=NOW - timedelta(days=10),
        deleted_at=NOW - timedelta(hours=1) if deleted else None,
    )


def user(
    user_id: str,
    *roles: tuple[str, Role],
    credential: CredentialKind = CredentialKind.SESSION,
    scopes: frozenset[Scope] | None = None,
) -> Principal:
    """A signed-in user with the given (organisation, role) memberships."""
    return Principal.for_user(
        user_id,
        [Membership(organization_id=org, user_id=user_id, role=role) for org, role in roles],
        credential=credential,
        scopes=scopes,
    )


def user_grant(
    user_id: str,
    permission: Permission = Permission.DOWNLOAD,
    *,
    expires_at: datetime | None = None,
    dataset_id: str = DATASET_ID,
) -> Grant:
    """A grant of the dataset to one user."""
    return Grant(
        id=f"g-{user_id}",
        dataset_id=dataset_id,
        permission=permission,
        created_at=NOW - timedelta(days=1),
        created_by=OWNER,
        user_id=user_id,
        expires_at=expires_at,
    )


def org_grant(
    organization_id: str,
    permission: Permission = Permission.DOWNLOAD,
    *,
    expires_at: datetime | None = None,
) -> Grant:
    """A grant of the dataset to every member of an organisation."""
    return Grant(
        id=f"g-{organization_id}",
        dataset_id=DATASET_ID,
        permission=permission,
        created_at=NOW - timedelta(days=1),
        created_by=OWNER,
        organization_id=organization_id,
        expires_at=expires_at,
    )


# --- hypothesis strategies --------------------------------------------------------------

USER_IDS = (OWNER, "ann", "ben", "cat")
ORGS = (ORG, OTHER_ORG)

format_sets = st.none() | st.frozensets(st.sampled_from(EXPORT_FORMATS))
caps = st.none() | st.integers(min_value=0, max_value=10**12)
rate_limits = st.none() | st.builds(
    RateLimit,
    requests=st.integers(min_value=1, max_value=1_000),
    per_seconds=st.sampled_from([1, 60, 3600]) | st.floats(min_value=0.5, max_value=86_400.0),
)
quota_limits = st.none() | st.builds(
    QuotaLimit, bytes=caps, downloads=caps, window=st.sampled_from(Window)
)
terms = st.none() | st.sampled_from(["", "Cite the source.", "No resale."])

policies = st.builds(
    DownloadPolicy,
    allowed_formats=format_sets,
    max_download_bytes=caps,
    allow_anonymous=st.booleans(),
    require_token=st.booleans(),
    token_max_ttl_seconds=st.integers(min_value=1, max_value=10**6),
    terms=terms,
    rate_limit=rate_limits,
    user_quota=quota_limits,
    organization_quota=quota_limits,
    audit_retention_days=st.integers(min_value=1, max_value=3_650),
)

overrides = st.builds(
    PolicyOverride,
    allowed_formats=format_sets,
    max_download_bytes=caps,
    allow_anonymous=st.none() | st.booleans(),
    require_token=st.none() | st.booleans(),
    token_max_ttl_seconds=st.none() | st.integers(min_value=1, max_value=10**6),
    terms=terms,
    rate_limit=rate_limits,
    user_quota=quota_limits,
    organization_quota=quota_limits,
    audit_retention_days=st.none() | st.integers(min_value=1, max_value=3_650),
)


@st.composite
def principals(draw: st.DrawFn) -> Principal:
    """Anonymous, or one of a small cast of users with random memberships and credentials."""
    user_id = draw(st.none() | st.sampled_from(USER_IDS))
    if user_id is None:
        return Principal.anonymous()
    roles = draw(
        st.lists(
            st.tuples(st.sampled_from(ORGS), st.sampled_from(Role)),
            max_size=2,
            unique_by=lambda pair: pair[0],
        )
    )
    credential = draw(
        st.sampled_from([k for k in CredentialKind if k is not CredentialKind.ANONYMOUS])
    )
    scopes = draw(st.none() | st.frozensets(st.sampled_from(Scope)))
    return user(user_id, *roles, credential=credential, scopes=scopes)


@st.composite
def datasets(draw: st.DrawFn) -> Dataset:
    """The dataset ``d1`` of ``acme`` in any visibility, sometimes deleted."""
    return make_dataset(
        draw(st.sampled_from(Visibility)),
        deleted=draw(st.booleans()),
        fmt=draw(st.sampled_from(FileFormat)),
    )


expiries = st.sampled_from(
    [
        None,
        NOW,
        NOW - timedelta(seconds=1),
        NOW + timedelta(microseconds=1),
        NOW + timedelta(days=1),
    ]
)


@st.composite
def grant_lists(draw: st.DrawFn) -> list[Grant]:
    """Grants of ``d1`` to users of the cast or to organisations, some expired."""
    grants = []
    for index in range(draw(st.integers(min_value=0, max_value=3))):
        permission = draw(st.sampled_from(Permission))
        expires_at = draw(expiries)
        if draw(st.booleans()):
            grant = user_grant(draw(st.sampled_from(USER_IDS)), permission, expires_at=expires_at)
        else:
            grant = org_grant(draw(st.sampled_from(ORGS)), permission, expires_at=expires_at)
        grants.append(attrs.evolve(grant, id=f"g{index}"))
    return grants
