"""Issuing and revoking download tokens."""

from __future__ import annotations

from datetime import timedelta

import attrs

from datadl.domain.access import Principal, can_administer
from datadl.domain.accounting import downloader_key
from datadl.domain.decision import DownloadRequest, decide
from datadl.domain.errors import BadRequest, NotFound, UnsupportedFormat
from datadl.domain.model import EXPORT_FORMATS, ORIGINAL, Scope
from datadl.domain.tokens import TokenClaims, newest_key, sign_token
from datadl.ports.catalog import Catalog
from datadl.ports.clock import Clock, Entropy, KeyRing
from datadl.ports.usage import UsageStore
from datadl.services._shared import check_rate, policy_for, require_scope, visible_dataset

#: The most uses one token may carry.
MAX_TOKEN_USES = 1000


@attrs.frozen
class IssuedToken:
    """A signed token (shown once) and its claims."""

    token: str = attrs.field(repr=False)
    claims: TokenClaims
    #: The RateLimit header fields of the rate limit this issuance counted against.
    ratelimit: dict[str, str] = attrs.field(factory=dict)


class TokenService:
    """Download tokens: signed, expiring grants for one format of one dataset version."""

    def __init__(
        self, *, catalog: Catalog, usage: UsageStore, clock: Clock, entropy: Entropy, keys: KeyRing
    ) -> None:
        self._catalog = catalog
        self._usage = usage
        self._clock = clock
        self._entropy = entropy
        self._keys = keys

    async def issue(
        self,
        principal: Principal,
        dataset_id: str,
        *,
        format: str = ORIGINAL,
        expires_in: int = 3600,
        max_uses: int | None = 1,
        accept_terms: bool = False,
        version: int | None = None,
        client_address: str | None = None,
    ) -> IssuedToken:
        """Issue a token if the principal could download the dataset in that format.

        The lifetime is capped by the policy's ``token_max_ttl_seconds``; terms, if any,
        must be accepted here. Raises the download denials (``not_found``, ``forbidden``,
        ``format_not_allowed``, ``terms_not_accepted``, ``rate_limited``, ...) and
        ``BadRequest`` for impossible values.
        """
        require_scope(principal, Scope.DOWNLOAD)
        if format not in EXPORT_FORMATS:
            raise UnsupportedFormat(
                f"Unknown download format {format!r}.",
                hint="Use one of: " + ", ".join(EXPORT_FORMATS) + ".",
            )
        if expires_in <= 0:
            raise BadRequest("expires_in must be a positive number of seconds.", hint="Use 3600.")
        if max_uses is not None and not 1 <= max_uses <= MAX_TOKEN_USES:
            raise BadRequest(
                f"max_uses must be between 1 and {MAX_TOKEN_USES}, or null.", hint="Use 1."
            )
        now = self._clock.now().replace(microsecond=0)
        dataset, grants = await visible_dataset(self._catalog, principal, dataset_id, now)
        number = dataset.version if version is None else version
        try:
            found = await self._catalog.get_version(dataset.id, number)
            exists = found.removed_at is None
        except NotFound:
            exists = False
        policy = await policy_for(self._catalog, dataset)
        rate, headers = await check_rate(
            self._usage,
            policy.rate_limit,
            f"rate:{dataset.organization_id}:{downloader_key(principal.user_id, client_address)}",
            now,
        )
        decision = decide(
            principal=principal,
            dataset=dataset,
            grants=grants,
            policy=policy,
            request=DownloadRequest(
                format=format,
                version=number,
                accepted_terms=accept_terms,
                issuing_token=True,
            ),
            now=now,
            rate=rate,
            version_exists=exists,
        )
        if not decision.allowed:
            error = decision.error()
            error.extra["ratelimit"] = headers
            raise error
        lifetime = min(expires_in, policy.token_max_ttl_seconds)
        key = newest_key(self._keys.signing_keys())
        claims = TokenClaims(
            token_id=self._entropy.new_id(),
            dataset_id=dataset.id,
            version=number,
            format=format,
            principal_id=principal.user_id,
            issued_at=now,
            expires_at=now + timedelta(seconds=lifetime),
            max_uses=max_uses,
            key_id=key.key_id,
        )
        token = sign_token(claims, key)
        await self._catalog.add_token(claims)
        return IssuedToken(token, claims, dict(headers))

    async def revoke(self, principal: Principal, token_id: str) -> None:
        """Revoke a token: its issuer, the dataset's owner or an organisation admin may.

        Anyone else gets ``NotFound``, as for a token id that does not exist.
        """
        require_scope(principal, Scope.DOWNLOAD)
        claims = await self._catalog.get_token(token_id)
        allowed = principal.user_id is not None and principal.user_id == claims.principal_id
        if not allowed:
            try:
                dataset = await self._catalog.get_dataset(claims.dataset_id)
            except NotFound:
                raise NotFound("No such download token.") from None
            allowed = can_administer(principal, dataset)
        if not allowed:
            raise NotFound("No such download token.")
        await self._usage.revoke_token(claims.token_id, expires_at=claims.expires_at)
