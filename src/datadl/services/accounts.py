"""Organisations, users, memberships, API keys, and turning credentials into principals."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta

import attrs

from datadl.domain import apikeys
from datadl.domain.access import CredentialKind, Principal, is_org_admin
from datadl.domain.decision import AuthRequired, Forbidden
from datadl.domain.errors import BadRequest, Conflict, NotFound
from datadl.domain.model import ApiKey, Membership, Organization, Role, Scope, User, is_slug
from datadl.ports.catalog import Catalog
from datadl.ports.clock import Clock, Entropy

#: The longest lifetime an API key may be given, in seconds (two years).
MAX_API_KEY_SECONDS = 2 * 366 * 86_400


@attrs.frozen
class CreatedKey:
    """A new API key: ``plaintext`` exists only here and is never stored."""

    key: ApiKey
    plaintext: str = attrs.field(repr=False)


@attrs.frozen
class Me:
    """The principal's own view of itself."""

    user: User | None
    memberships: tuple[Membership, ...]
    organizations: tuple[Organization, ...]
    credential: CredentialKind
    scopes: frozenset[Scope] | None


class AccountService:
    """Organisations, users and API keys, and authentication of presented credentials."""

    def __init__(self, *, catalog: Catalog, clock: Clock, entropy: Entropy) -> None:
        self._catalog = catalog
        self._clock = clock
        self._entropy = entropy

    async def create_organization(self, slug: str, title: str | None = None) -> Organization:
        """Create an organisation; ``Conflict`` if the slug is taken."""
        if not is_slug(slug):
            raise BadRequest(
                f"{slug!r} is not a valid organisation slug.",
                hint="Use 1 to 64 lower-case letters, digits and inner hyphens.",
            )
        org = Organization(
            id=self._entropy.new_id(), slug=slug, title=title or slug, created_at=self._clock.now()
        )
        await self._catalog.add_organization(org)
        return org

    async def create_user(
        self, name: str, display_name: str | None = None, email: str | None = None
    ) -> User:
        """Create a user; ``Conflict`` if the name is taken."""
        try:
            user = User(
                id=self._entropy.new_id(),
                name=name,
                display_name=display_name or name,
                email=email,
                created_at=self._clock.now(),
            )
        except ValueError as exc:
            raise BadRequest(str(exc), hint="Use letters, digits, '_', '.' and '-'.") from exc
        await self._catalog.add_user(user)
        return user

    async def add_member(
        self, organization: str, user: str, role: Role | str = Role.MEMBER
    ) -> None:
        """Make a user (id or name) a member of an organisation (id or slug) with ``role``."""
        try:
            role = Role(role)
        except ValueError:
            raise BadRequest(f"Unknown role {role!r}.", hint="Use member or admin.") from None
        org = await self._catalog.get_organization(organization)
        member = await self._catalog.get_user(user)
        await self._catalog.set_membership(org.id, member.id, role)

    async def remove_member(self, organization: str, user: str) -> None:
        """Remove a user (id or name) from an organisation (id or slug).

        ``NotFound`` if the user is not a member; ``Conflict`` if they are its last admin,
        so an organisation that has an admin never loses its only one.
        """
        org = await self._catalog.get_organization(organization)
        member = await self._catalog.get_user(user)
        role = next(
            (
                m.role
                for m in await self._catalog.memberships_of(member.id)
                if m.organization_id == org.id
            ),
            None,
        )
        if role is None:
            raise NotFound(
                f"{member.name} is not a member of {org.slug}.",
                hint="'datadl user list' shows each user's organisations.",
            )
        if role is Role.ADMIN and not await self._has_other_admin(org.id, member.id):
            raise Conflict(
                f"{member.name} is the last admin of {org.slug}.",
                hint="Make another member an admin first, then remove this one.",
            )
        await self._catalog.remove_membership(org.id, member.id)

    async def _has_other_admin(self, organization_id: str, user_id: str) -> bool:
        # Memberships are stored per user; the port has no listing by organisation.
        for other in await self._catalog.list_users():
            if other.id == user_id:
                continue
            for m in await self._catalog.memberships_of(other.id):
                if m.organization_id == organization_id and m.role is Role.ADMIN:
                    return True
        return False

    async def principal_for(
        self,
        user: str,
        *,
        credential: CredentialKind = CredentialKind.INTERNAL,
        scopes: frozenset[Scope] | None = None,
        api_key_id: str | None = None,
    ) -> Principal:
        """The principal of a user (id or name) with their current memberships."""
        found = await self._catalog.get_user(user)
        memberships = await self._catalog.memberships_of(found.id)
        return Principal.for_user(
            found.id,
            memberships,
            credential=credential,
            scopes=scopes,
            api_key_id=api_key_id,
            name=found.name,
        )

    async def authenticate_api_key(self, presented: str) -> Principal:
        """The principal behind a presented API key.

        Raises ``AuthRequired`` for a key that is malformed, unknown, revoked or expired,
        with one message for all of them so a caller learns nothing about which.
        """
        parts = apikeys.split_key(presented)
        invalid = AuthRequired(
            "The API key is not valid.",
            hint="Check the key; it may have been revoked or have expired. Create a new one.",
        )
        if parts is None:
            raise invalid
        key_id, secret = parts
        try:
            key = await self._catalog.get_api_key(key_id)
        except NotFound:
            # Spend the same hashing work as a real check so timing does not tell.
            apikeys.secret_matches(secret, "0" * 64)
            raise invalid from None
        if not apikeys.secret_matches(secret, key.secret_hash):
            raise invalid
        if not key.is_usable(self._clock.now()):
            raise invalid
        return await self.principal_for(
            key.user_id, credential=CredentialKind.API_KEY, scopes=key.scopes, api_key_id=key.id
        )

    async def me(self, principal: Principal) -> Me:
        """The principal with its user, memberships and organisations."""
        if principal.user_id is None:
            return Me(None, (), (), principal.credential, principal.scopes)
        user = await self._catalog.get_user(principal.user_id)
        memberships = tuple(await self._catalog.memberships_of(user.id))
        orgs = tuple([await self._catalog.get_organization(m.organization_id) for m in memberships])
        return Me(user, memberships, orgs, principal.credential, principal.scopes)

    async def create_api_key(
        self,
        principal: Principal,
        name: str,
        scopes: Iterable[Scope | str] = (Scope.READ, Scope.DOWNLOAD),
        *,
        expires_in: int | None = None,
    ) -> CreatedKey:
        """Create an API key for the principal's own user; the plaintext is returned once.

        A key can carry no scope its creator's credential lacks.
        """
        user_id = _require_user(principal)
        try:
            wanted = frozenset(Scope(s) for s in scopes)
        except ValueError as exc:
            raise BadRequest(
                str(exc), hint="Scopes are read, download, publish and admin."
            ) from exc
        if not wanted:
            raise BadRequest("An API key needs at least one scope.", hint="Add 'read'.")
        if principal.scopes is not None and not all(principal.has_scope(s) for s in wanted):
            raise Forbidden(
                "A key cannot grant scopes its creator lacks.",
                hint="Create the key from a session or a key with those scopes.",
            )
        if not name.strip() or len(name) > 100:
            raise BadRequest("An API key needs a name of 1 to 100 characters.", hint="Name it.")
        now = self._clock.now()
        expires_at = None
        if expires_in is not None:
            if not 0 < expires_in <= MAX_API_KEY_SECONDS:
                raise BadRequest(
                    f"expires_in must be between 1 and {MAX_API_KEY_SECONDS} seconds.",
                    hint="Leave it out for a key that does not expire.",
                )
            expires_at = now + timedelta(seconds=expires_in)
        issued = apikeys.issue_key(self._entropy.new_id(), self._entropy.secret(32))
        key = ApiKey(
            id=issued.key_id,
            user_id=user_id,
            name=name.strip(),
            scopes=wanted,
            secret_hash=issued.secret_hash,
            created_at=now,
            expires_at=expires_at,
        )
        await self._catalog.add_api_key(key)
        return CreatedKey(key, issued.plaintext)

    async def list_api_keys(self, principal: Principal) -> Sequence[ApiKey]:
        """The principal's own keys, newest first (hashes never leave the service)."""
        return await self._catalog.list_api_keys(_require_user(principal))

    async def revoke_api_key(self, principal: Principal, key_id: str) -> None:
        """Revoke one of the principal's own keys; another user's key is ``NotFound``."""
        user_id = _require_user(principal)
        key = await self._catalog.get_api_key(key_id)
        if key.user_id != user_id:
            raise NotFound("No such API key.")
        await self._catalog.revoke_api_key(key_id, self._clock.now())

    async def require_org_admin(self, principal: Principal, organization: str) -> Organization:
        """The organisation, if the principal administers it; else ``Forbidden``/``NotFound``.

        Organisations are not secret, but a non-member learns only ``not_found``.
        """
        org = await self._catalog.get_organization(organization)
        if principal.role_in(org.id) is None:
            raise NotFound("No such organisation.")
        if not is_org_admin(principal, org.id) or not principal.has_scope(Scope.ADMIN):
            raise Forbidden(
                "Only organisation admins may do this.",
                hint="Ask an admin of the organisation, or use a key with the admin scope.",
            )
        return org


def _require_user(principal: Principal) -> str:
    if principal.user_id is None:
        raise AuthRequired(
            "Sign in or send an API key.", hint="Send 'Authorization: Bearer <key>'."
        )
    return principal.user_id
