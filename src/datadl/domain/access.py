"""Who may see, download and administer a dataset: principals and the access rules."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime

import attrs

from datadl.domain.model import Dataset, Grant, Membership, Permission, Role, Scope, Visibility


class CredentialKind(enum.StrEnum):
    """How the principal proved who it is; decides which policy rules apply."""

    ANONYMOUS = "anonymous"
    API_KEY = "api_key"
    SESSION = "session"
    TOKEN = "token"  # noqa: S105 - a credential kind, not a secret
    INTERNAL = "internal"


@attrs.frozen(cache_hash=True)
class Principal:
    """Who asks: a user with memberships, acting through a credential, or anonymous.

    ``scopes`` limits what an API key may do; ``None`` means unrestricted (a signed-in
    session or the embedding code itself).
    """

    user_id: str | None
    memberships: tuple[Membership, ...] = ()
    credential: CredentialKind = CredentialKind.ANONYMOUS
    scopes: frozenset[Scope] | None = None
    api_key_id: str | None = None
    name: str | None = None

    @classmethod
    def anonymous(cls) -> Principal:
        """The principal of a request with no credential."""
        return cls(user_id=None)

    @classmethod
    def for_user(
        cls,
        user_id: str,
        memberships: Iterable[Membership] = (),
        *,
        credential: CredentialKind = CredentialKind.INTERNAL,
        scopes: frozenset[Scope] | None = None,
        api_key_id: str | None = None,
        name: str | None = None,
    ) -> Principal:
        """A signed-in user (or the user behind an API key or token)."""
        return cls(
            user_id=user_id,
            memberships=tuple(memberships),
            credential=credential,
            scopes=scopes,
            api_key_id=api_key_id,
            name=name,
        )

    @property
    def is_anonymous(self) -> bool:
        """Whether no user stands behind the request."""
        return self.user_id is None

    def role_in(self, organization_id: str) -> Role | None:
        """The principal's role in an organisation, or None if not a member."""
        for membership in self.memberships:
            if membership.organization_id == organization_id:
                return membership.role
        return None

    @property
    def organization_ids(self) -> frozenset[str]:
        """The organisations the principal belongs to."""
        return frozenset(m.organization_id for m in self.memberships)

    def has_scope(self, scope: Scope) -> bool:
        """Whether the credential allows ``scope`` (``admin`` allows everything)."""
        if self.scopes is None:
            return True
        return scope in self.scopes or Scope.ADMIN in self.scopes


def is_org_admin(principal: Principal, organization_id: str) -> bool:
    """Whether the principal administers the organisation."""
    return principal.role_in(organization_id) is Role.ADMIN


def can_administer(principal: Principal, dataset: Dataset) -> bool:
    """Owners and organisation admins may change, share and delete a dataset.

    An admin needs no user of its own: the command line's operator administers every
    organisation without being a user. Anonymous and token principals have no
    memberships, so they administer nothing.
    """
    owner = principal.user_id is not None and principal.user_id == dataset.owner_id
    return owner or is_org_admin(principal, dataset.organization_id)


def _granted(principal: Principal, grants: Iterable[Grant], now: datetime) -> set[Permission]:
    found: set[Permission] = set()
    if principal.user_id is None:
        return found
    orgs = principal.organization_ids
    for grant in grants:
        if not grant.is_active(now):
            continue
        if grant.user_id == principal.user_id or (
            grant.organization_id is not None and grant.organization_id in orgs
        ):
            found.add(grant.permission)
    return found


def can_view(
    principal: Principal, dataset: Dataset, grants: Iterable[Grant], now: datetime
) -> bool:
    """Whether the principal may know that the dataset exists.

    Deleted datasets are invisible to all. Public ones are visible to everyone,
    organisation ones to members, private ones to owner and admins; grants add to that.
    """
    if dataset.is_deleted:
        return False
    if dataset.visibility is Visibility.PUBLIC or can_administer(principal, dataset):
        return True
    if (
        dataset.visibility is Visibility.ORGANIZATION
        and principal.role_in(dataset.organization_id) is not None
    ):
        return True
    return bool(_granted(principal, grants, now))


def can_download(
    principal: Principal, dataset: Dataset, grants: Iterable[Grant], now: datetime
) -> bool:
    """Whether access rules (not policy) let the principal download the dataset.

    Everyone who can see a public or organisation dataset through its visibility may
    download it; a ``view`` grant alone shows a dataset without letting its bytes out.
    """
    grants = tuple(grants)
    if not can_view(principal, dataset, grants, now):
        return False
    if dataset.visibility is Visibility.PUBLIC or can_administer(principal, dataset):
        return True
    if (
        dataset.visibility is Visibility.ORGANIZATION
        and principal.role_in(dataset.organization_id) is not None
    ):
        return True
    return Permission.DOWNLOAD in _granted(principal, grants, now)
