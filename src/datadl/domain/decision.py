"""The download decision: one pure function from the facts of a request to allow or deny."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime

import attrs

from datadl.domain.access import (
    CredentialKind,
    Principal,
    can_administer,
    can_download,
    can_view,
)
from datadl.domain.errors import DatadlError
from datadl.domain.model import ORIGINAL, Dataset, Grant, Scope
from datadl.domain.policy import DownloadPolicy
from datadl.domain.quotas import QuotaSubject, ReserveOutcome
from datadl.domain.ratelimit import RateDecision
from datadl.domain.tokens import TokenClaims


@attrs.frozen
class Decision:
    """Allowed, or denied with a stable code, a message, a hint and when to retry."""

    allowed: bool
    code: str | None = None
    message: str = ""
    hint: str = ""
    retry_after: int | None = None
    resets_at: datetime | None = None

    @classmethod
    def allow(cls) -> Decision:
        """The request may proceed."""
        return cls(allowed=True)

    @classmethod
    def deny(
        cls,
        code: str,
        message: str,
        hint: str,
        *,
        retry_after: int | None = None,
        resets_at: datetime | None = None,
    ) -> Decision:
        """The request is refused for ``code``."""
        return cls(
            allowed=False,
            code=code,
            message=message,
            hint=hint,
            retry_after=retry_after,
            resets_at=resets_at,
        )

    def error(self) -> DatadlError:
        """The exception that carries this denial to the edge."""
        if self.allowed or self.code is None:
            raise ValueError("an allowed decision is not an error")
        cls = DENIAL_ERRORS.get(self.code, Forbidden)
        return cls(
            self.message,
            hint=self.hint,
            retry_after=self.retry_after,
            resets_at=self.resets_at,
        )


class Denied(DatadlError):
    """A download or action refused by a rule; subclasses carry the stable code."""


class NotVisible(Denied):
    code = "not_found"
    title = "Not found"
    default_hint = "Check the id; you may need to sign in or be granted access."


class AuthRequired(Denied):
    code = "auth_required"
    title = "Authentication required"
    default_hint = "Send an API key as 'Authorization: Bearer <key>' or use a download token."


class Forbidden(Denied):
    code = "forbidden"
    title = "Forbidden"
    default_hint = "Ask the dataset owner or an organisation admin for access."


class FormatNotAllowed(Denied):
    code = "format_not_allowed"
    title = "Format not allowed"
    default_hint = "Request one of the formats the policy allows."


class TooLarge(Denied):
    code = "too_large"
    title = "Download too large"
    default_hint = "Ask an organisation admin to raise the download size limit."


class TokenRequired(Denied):
    code = "token_required"
    title = "Download token required"
    default_hint = "Get a token with POST /api/v1/datasets/{id}/download-token and use its url."


class TermsNotAccepted(Denied):
    code = "terms_not_accepted"
    title = "Terms not accepted"
    default_hint = "Read the dataset's terms and accept them with accept_terms=true."


class TokenMismatch(Denied):
    code = "token_invalid"
    title = "Invalid download token"
    default_hint = "Ask for a new download token for this dataset, version and format."


class TokenExhausted(Denied):
    code = "token_exhausted"
    title = "Download token used up"
    default_hint = "Ask for a new download token."


class RateLimited(Denied):
    code = "rate_limited"
    title = "Too many requests"
    default_hint = "Wait for Retry-After seconds before the next request."


class QuotaExceeded(Denied):
    code = "quota_exceeded"
    title = "Download quota exceeded"
    default_hint = "Wait for the quota to reset or ask an organisation admin for a larger quota."


DENIAL_ERRORS: dict[str, type[Denied]] = {
    cls.code: cls
    for cls in (
        NotVisible,
        AuthRequired,
        Forbidden,
        FormatNotAllowed,
        TooLarge,
        TokenRequired,
        TermsNotAccepted,
        TokenMismatch,
        TokenExhausted,
        RateLimited,
        QuotaExceeded,
    )
}


@attrs.frozen
class DownloadRequest:
    """What is asked: format, version, size of what would be sent, and the credential.

    ``issuing_token`` marks a request for a download token rather than for bytes: the
    rule that requires a token does not apply to it, the terms rule does.
    """

    format: str = ORIGINAL
    version: int | None = None
    representation_bytes: int | None = None
    accepted_terms: bool = False
    token: TokenClaims | None = None
    issuing_token: bool = False


def _not_found() -> Decision:
    return Decision.deny("not_found", "No such dataset.", NotVisible.default_hint)


def decide(
    *,
    principal: Principal,
    dataset: Dataset | None,
    grants: Iterable[Grant],
    policy: DownloadPolicy,
    request: DownloadRequest,
    now: datetime,
    rate: RateDecision | None = None,
    version_exists: bool = True,
) -> Decision:
    """Decide whether ``principal`` may download ``request`` of ``dataset``.

    Rules run from the one that reveals least to the one that reveals most: a principal
    who may not see the dataset learns nothing but ``not_found``. Token claims, when
    given, must have been verified (MAC and expiry) already; here they must match the
    dataset, version and format. Quota and token-use limits are applied atomically by the
    store afterwards (see ``quota_denial`` and ``token_exhausted``).
    """
    grants = tuple(grants)
    if request.token is None and not principal.has_scope(Scope.DOWNLOAD):
        return Decision.deny(
            "forbidden",
            "This API key may not download.",
            "Create a key with the 'download' scope.",
        )
    if dataset is None or not can_view(principal, dataset, grants, now):
        if request.token is not None:
            return _token_mismatch("its issuer can no longer see this dataset")
        return _not_found()
    if request.token is not None:
        claims = request.token
        if claims.dataset_id != dataset.id:
            return _token_mismatch("it was issued for another dataset")
        if claims.format != request.format:
            return _token_mismatch(f"it was issued for the {claims.format} format")
        if request.version is not None and claims.version != request.version:
            return _token_mismatch(f"it was issued for version {claims.version}")
    if not version_exists:
        return Decision.deny(
            "not_found",
            f"Version {request.version} of this dataset does not exist or was removed.",
            "List the versions at /api/v1/datasets/{id}/versions.",
        )
    admin = can_administer(principal, dataset)
    if principal.is_anonymous:
        if not policy.allow_anonymous:
            return Decision.deny(
                "auth_required",
                "This organisation does not allow anonymous downloads.",
                AuthRequired.default_hint,
            )
    elif not can_download(principal, dataset, grants, now):
        return Decision.deny(
            "forbidden",
            "You may view this dataset but not download it.",
            Forbidden.default_hint,
        )
    if not policy.allows_format(request.format, dataset.file.format.value):
        allowed = ", ".join(sorted(policy.allowed_formats or ()))
        return Decision.deny(
            "format_not_allowed",
            f"The {request.format} format is not allowed for this dataset.",
            f"Request one of: {allowed}.",
        )
    if (
        policy.max_download_bytes is not None
        and request.representation_bytes is not None
        and request.representation_bytes > policy.max_download_bytes
    ):
        return Decision.deny(
            "too_large",
            f"This download is {request.representation_bytes} bytes; the limit is "
            f"{policy.max_download_bytes} bytes.",
            "Ask an organisation admin to raise the limit, or pick a smaller format.",
        )
    credential = principal.credential
    if request.token is not None:
        credential = CredentialKind.TOKEN
    wants_token = request.issuing_token or credential is CredentialKind.TOKEN
    if policy.require_token and not wants_token and not admin:
        return Decision.deny(
            "token_required",
            "This organisation requires a download token for downloads.",
            TokenRequired.default_hint,
        )
    needs_terms = policy.terms and credential is not CredentialKind.TOKEN and not admin
    if needs_terms and not request.accepted_terms:
        return Decision.deny(
            "terms_not_accepted",
            "The dataset's terms must be accepted before downloading.",
            "Read the terms (GET the download policy) and add accept_terms=true.",
        )
    if rate is not None and not rate.allowed:
        wait = max(1, math.ceil(rate.retry_after))
        return Decision.deny(
            "rate_limited",
            f"Rate limit of {rate.limit} requests reached.",
            f"Retry in {wait} seconds.",
            retry_after=wait,
        )
    return Decision.allow()


def _token_mismatch(why: str) -> Decision:
    return Decision.deny(
        "token_invalid", f"The download token is not valid here: {why}.", TokenMismatch.default_hint
    )


def token_exhausted(max_uses: int) -> Decision:
    """The denial when a token's download sessions are used up."""
    return Decision.deny(
        "token_exhausted",
        f"This download token allowed {max_uses} download(s) and they are used.",
        TokenExhausted.default_hint,
    )


def quota_denial(outcome: ReserveOutcome, now: datetime) -> Decision:
    """The denial for a refused reservation, naming the counter and its reset time."""
    charge, usage = outcome.refused, outcome.usage
    if outcome.ok or charge is None or usage is None:
        raise ValueError("only a refused reservation is a denial")
    whose = "your" if charge.subject is QuotaSubject.USER else "the organisation's"
    parts = []
    if charge.bytes_limit is not None:
        parts.append(f"{_human_bytes(usage.bytes)} of {_human_bytes(charge.bytes_limit)}")
    if charge.downloads_limit is not None:
        parts.append(f"{usage.downloads} of {charge.downloads_limit} downloads")
    used = " and ".join(parts)
    wait = max(1, math.ceil((charge.window_end - now).total_seconds()))
    return Decision.deny(
        "quota_exceeded",
        f"This download does not fit {whose} quota: {used} used or reserved.",
        f"The quota resets at {charge.window_end:%Y-%m-%dT%H:%M:%SZ}; "
        "ask an organisation admin for a larger quota.",
        retry_after=wait,
        resets_at=charge.window_end,
    )


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} bytes"
