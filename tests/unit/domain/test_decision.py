"""Tests for the download decision: each denial, its precedence, and its error."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from datadl.domain.access import CredentialKind, Principal, can_administer, can_download, can_view
from datadl.domain.decision import (
    DENIAL_ERRORS,
    Decision,
    Denied,
    DownloadRequest,
    decide,
    quota_denial,
    token_exhausted,
)
from datadl.domain.errors import DatadlError
from datadl.domain.model import Dataset, FileFormat, Grant, Permission, Role, Scope, Visibility
from datadl.domain.policy import DownloadPolicy, QuotaLimit, Window
from datadl.domain.quotas import QuotaCharge, QuotaSubject, ReserveOutcome, Usage
from datadl.domain.ratelimit import RateDecision
from datadl.domain.tokens import TokenClaims
from tests.unit.domain.strategies import (
    DATASET_ID,
    NOW,
    ORG,
    OTHER_ORG,
    OWNER,
    datasets,
    grant_lists,
    make_dataset,
    policies,
    principals,
    user,
    user_grant,
)

MEMBER = user("mia", (ORG, Role.MEMBER))
ADMIN = user("adam", (ORG, Role.ADMIN))
OWNER_P = user(OWNER)
OUTSIDER = user("otto", (OTHER_ORG, Role.MEMBER))
ANONYMOUS = Principal.anonymous()

ALLOWED_RATE = RateDecision(
    allowed=True, new_tat=1.0, limit=60, remaining=59, reset_after=1.0, retry_after=0.0
)


def denied_rate(retry_after: float) -> RateDecision:
    """A rate-limit refusal that asks to wait ``retry_after`` seconds."""
    return RateDecision(
        allowed=False,
        new_tat=None,
        limit=60,
        remaining=0,
        reset_after=60.0,
        retry_after=retry_after,
    )


def claims(*, dataset_id: str = DATASET_ID, version: int = 1, fmt: str = "original") -> TokenClaims:
    """Verified token claims for one version and format of a dataset."""
    return TokenClaims(
        token_id="t1",
        dataset_id=dataset_id,
        version=version,
        format=fmt,
        principal_id="mia",
        issued_at=NOW.replace(microsecond=0) - timedelta(minutes=5),
        expires_at=NOW.replace(microsecond=0) + timedelta(hours=1),
        max_uses=1,
        key_id="k1",
    )


ORG_DATASET = make_dataset(Visibility.ORGANIZATION)


def ask(
    *,
    principal: Principal = MEMBER,
    dataset: Dataset | None = ORG_DATASET,
    grants: Sequence[Grant] = (),
    policy: DownloadPolicy | None = None,
    now: datetime = NOW,
    rate: RateDecision | None = None,
    version_exists: bool = True,
    **request: object,
) -> Decision:
    """Call decide with an organisation dataset, an open policy and a plain request by default."""
    return decide(
        principal=principal,
        dataset=dataset,
        grants=grants,
        policy=policy or DownloadPolicy(),
        request=DownloadRequest(**request),  # type: ignore[arg-type]
        now=now,
        rate=rate,
        version_exists=version_exists,
    )


# --- each rule ---------------------------------------------------------------------------


def test_member_with_open_policy_is_allowed() -> None:
    """A member downloading an organisation dataset under an open policy is allowed."""
    decision = ask()
    assert decision == Decision.allow()
    assert decision.allowed
    assert decision.code is None


def test_missing_download_scope_is_forbidden_before_any_lookup() -> None:
    """A key without the download scope gets the same refusal whether the dataset exists or not."""
    principal = user(
        "mia", (ORG, Role.ADMIN), credential=CredentialKind.API_KEY, scopes=frozenset({Scope.READ})
    )
    existing = ask(principal=principal, dataset=make_dataset(Visibility.PUBLIC))
    assert existing.code == "forbidden"
    assert "scope" in existing.hint
    assert ask(principal=principal, dataset=None) == existing
    assert ask(principal=principal, dataset=make_dataset(Visibility.PRIVATE)) == existing


@pytest.mark.parametrize("scopes", [frozenset({Scope.DOWNLOAD}), frozenset({Scope.ADMIN}), None])
def test_download_or_admin_scope_passes_the_scope_rule(scopes: frozenset[Scope] | None) -> None:
    """A key with the download or admin scope, or a session, passes the scope rule."""
    principal = user("mia", (ORG, Role.MEMBER), credential=CredentialKind.API_KEY, scopes=scopes)
    assert ask(principal=principal).allowed


def test_token_request_skips_the_scope_rule() -> None:
    """A request carrying a token is judged by the token, not by the key's scopes."""
    principal = user("mia", (ORG, Role.MEMBER), credential=CredentialKind.TOKEN, scopes=frozenset())
    assert ask(principal=principal, token=claims()).allowed


def test_no_dataset_is_not_found() -> None:
    """A dataset that does not exist is not found."""
    assert ask(dataset=None).code == "not_found"


@pytest.mark.parametrize(
    ("principal", "dataset"),
    [
        (OUTSIDER, make_dataset(Visibility.PRIVATE)),
        (OUTSIDER, make_dataset(Visibility.ORGANIZATION)),
        (MEMBER, make_dataset(Visibility.PRIVATE)),
        (ANONYMOUS, make_dataset(Visibility.ORGANIZATION)),
        (OWNER_P, make_dataset(Visibility.PUBLIC, deleted=True)),
        (ADMIN, make_dataset(Visibility.PRIVATE, deleted=True)),
    ],
)
def test_invisible_dataset_is_not_found_even_when_every_other_rule_denies(
    principal: Principal, dataset: Dataset
) -> None:
    """Who cannot see a dataset gets not_found, not the code of a later rule that also fails."""
    strict = DownloadPolicy(
        allowed_formats=frozenset({"parquet"}),
        max_download_bytes=1,
        allow_anonymous=False,
        require_token=True,
        terms="Sign here.",
    )
    decision = ask(
        principal=principal,
        dataset=dataset,
        policy=strict,
        format="xlsx",
        representation_bytes=10**9,
        rate=denied_rate(30.0),
        version_exists=False,
    )
    assert decision.code == "not_found"
    assert decision == ask(principal=principal, dataset=None)


def test_token_for_invisible_dataset_is_invalid() -> None:
    """A token whose holder can no longer see the dataset is an invalid token, not a 404."""
    decision = ask(principal=OUTSIDER, dataset=make_dataset(Visibility.PRIVATE), token=claims())
    assert decision.code == "token_invalid"


@pytest.mark.parametrize(
    ("token", "request_fields"),
    [
        (claims(dataset_id="d2"), {}),
        (claims(fmt="csv"), {"format": "parquet"}),
        (claims(fmt="original"), {"format": "csv"}),
        (claims(version=1), {"version": 2}),
    ],
)
def test_token_claims_must_match_the_request(
    token: TokenClaims, request_fields: dict[str, object]
) -> None:
    """A token used for another dataset, format or version is invalid."""
    decision = ask(token=token, **request_fields)
    assert decision.code == "token_invalid"


def test_matching_token_is_allowed() -> None:
    """A token used for exactly its dataset, version and format is allowed."""
    assert ask(token=claims(version=3, fmt="csv"), format="csv", version=3).allowed
    assert ask(token=claims(version=3, fmt="csv"), format="csv").allowed


def test_missing_version_is_not_found() -> None:
    """A version that does not exist or was removed is not found, for those who see the dataset."""
    decision = ask(version=7, version_exists=False)
    assert decision.code == "not_found"
    assert "7" in decision.message


def test_token_mismatch_comes_before_missing_version() -> None:
    """A token for another version is invalid even when the asked version does not exist."""
    assert ask(token=claims(version=1), version=9, version_exists=False).code == "token_invalid"


def test_anonymous_needs_policy_permission() -> None:
    """Anonymous download of a public dataset needs a policy that allows it."""
    public = make_dataset(Visibility.PUBLIC)
    closed = DownloadPolicy(allow_anonymous=False)
    assert ask(principal=ANONYMOUS, dataset=public, policy=closed).code == "auth_required"
    assert ask(principal=ANONYMOUS, dataset=public, policy=DownloadPolicy()).allowed
    assert ask(principal=OUTSIDER, dataset=public, policy=closed).allowed


def test_view_only_grant_is_forbidden() -> None:
    """A principal who may only view the dataset is forbidden to download it."""
    private = make_dataset(Visibility.PRIVATE)
    view = [user_grant("otto", Permission.VIEW)]
    download = [user_grant("otto", Permission.DOWNLOAD)]
    assert ask(principal=OUTSIDER, dataset=private, grants=view).code == "forbidden"
    assert ask(principal=OUTSIDER, dataset=private, grants=download).allowed


def test_format_not_allowed() -> None:
    """A format outside the policy's list is refused, and the hint lists the allowed ones."""
    policy = DownloadPolicy(allowed_formats=frozenset({"csv", "parquet"}))
    decision = ask(policy=policy, format="xlsx")
    assert decision.code == "format_not_allowed"
    assert "csv, parquet" in decision.hint
    assert ask(policy=policy, format="parquet").allowed


def test_original_format_follows_the_stored_files_format() -> None:
    """``original`` is allowed when the stored file's format is on the list."""
    policy = DownloadPolicy(allowed_formats=frozenset({"parquet"}))
    assert ask(policy=policy, dataset=make_dataset(fmt=FileFormat.PARQUET)).allowed
    assert ask(policy=policy, dataset=make_dataset(fmt=FileFormat.CSV)).code == (
        "format_not_allowed"
    )


@pytest.mark.parametrize(
    ("size", "code"),
    [(None, None), (0, None), (999, None), (1_000, None), (1_001, "too_large")],
)
def test_too_large_boundary(size: int | None, code: str | None) -> None:
    """A download as large as the cap is allowed; one byte more is too large."""
    policy = DownloadPolicy(max_download_bytes=1_000)
    assert ask(policy=policy, representation_bytes=size).code == code


def test_no_size_cap_allows_any_size() -> None:
    """Without a cap, no size is too large."""
    assert ask(representation_bytes=10**15).allowed


def test_token_required() -> None:
    """When the policy requires a token, a plain download by a member is refused."""
    policy = DownloadPolicy(require_token=True)
    assert ask(policy=policy).code == "token_required"


@pytest.mark.parametrize("principal", [ADMIN, OWNER_P])
def test_administrators_are_exempt_from_token_requirement(principal: Principal) -> None:
    """The owner and organisation admins may download without a token."""
    assert ask(principal=principal, policy=DownloadPolicy(require_token=True)).allowed


def test_tokens_satisfy_token_requirement() -> None:
    """A token in the request, or a token credential, satisfies the token requirement."""
    policy = DownloadPolicy(require_token=True)
    assert ask(policy=policy, token=claims()).allowed
    token_principal = user("mia", (ORG, Role.MEMBER), credential=CredentialKind.TOKEN)
    assert ask(principal=token_principal, policy=policy).allowed


def test_issuing_a_token_bypasses_token_requirement() -> None:
    """Asking for a token is not refused for lacking one."""
    assert ask(policy=DownloadPolicy(require_token=True), issuing_token=True).allowed


def test_terms_not_accepted() -> None:
    """Under terms, a download that did not accept them is refused, one that did is allowed."""
    policy = DownloadPolicy(terms="Cite Acme.")
    assert ask(policy=policy).code == "terms_not_accepted"
    assert ask(policy=policy, accepted_terms=True).allowed


def test_issuing_a_token_still_needs_the_terms() -> None:
    """The terms must be accepted to get a token, even where a token is required."""
    policy = DownloadPolicy(require_token=True, terms="Cite Acme.")
    assert ask(policy=policy, issuing_token=True).code == "terms_not_accepted"
    assert ask(policy=policy, issuing_token=True, accepted_terms=True).allowed


@pytest.mark.parametrize("principal", [ADMIN, OWNER_P])
def test_administrators_are_exempt_from_terms(principal: Principal) -> None:
    """The owner and organisation admins need not accept their own terms."""
    assert ask(principal=principal, policy=DownloadPolicy(terms="Cite Acme.")).allowed


def test_token_credential_passes_terms() -> None:
    """Terms were accepted when the token was issued, so a token download passes them."""
    policy = DownloadPolicy(terms="Cite Acme.")
    assert ask(policy=policy, token=claims()).allowed
    token_principal = user("mia", (ORG, Role.MEMBER), credential=CredentialKind.TOKEN)
    assert ask(principal=token_principal, policy=policy).allowed


def test_empty_terms_need_no_acceptance() -> None:
    """An empty terms text is no terms."""
    assert ask(policy=DownloadPolicy(terms="")).allowed


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(0.0, 1), (0.001, 1), (0.5, 1), (1.0, 1), (1.01, 2), (29.2, 30)],
)
def test_rate_limited(retry_after: float, expected: int) -> None:
    """A refused rate check denies with a whole number of seconds to wait, at least one."""
    decision = ask(rate=denied_rate(retry_after))
    assert decision.code == "rate_limited"
    assert decision.retry_after == expected
    assert ask(rate=ALLOWED_RATE).allowed


def test_admins_are_rate_limited_too() -> None:
    """Administering a dataset does not lift the rate limit."""
    assert ask(principal=ADMIN, rate=denied_rate(3.0)).code == "rate_limited"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        # Each row: two failing rules; the earlier one in the documented order must win.
        ({"version_exists": False, "format": "xlsx"}, "not_found"),
        ({"principal": ANONYMOUS, "format": "xlsx"}, "auth_required"),
        ({"format": "xlsx", "representation_bytes": 10**9}, "format_not_allowed"),
        ({"representation_bytes": 10**9, "policy_require_token": True}, "too_large"),
        ({"policy_require_token": True, "policy_terms": "x"}, "token_required"),
        ({"policy_terms": "x", "rate": denied_rate(5.0)}, "terms_not_accepted"),
        (
            {
                "principal": OUTSIDER,
                "dataset": make_dataset(Visibility.PRIVATE),
                "grants": [user_grant("otto", Permission.VIEW)],
                "format": "xlsx",
            },
            "forbidden",
        ),
    ],
)
def test_rule_precedence(kwargs: dict[str, object], code: str) -> None:
    """When two rules fail, the one that reveals less answers."""
    fields = dict(kwargs)
    policy = DownloadPolicy(
        allowed_formats=frozenset({"original", "csv"}),
        max_download_bytes=1_000,
        allow_anonymous=False,
        require_token=bool(fields.pop("policy_require_token", False)),
        terms=fields.pop("policy_terms", None),  # type: ignore[arg-type]
    )
    if fields.get("principal") is ANONYMOUS:
        fields["dataset"] = make_dataset(Visibility.PUBLIC)
    assert ask(policy=policy, **fields).code == code  # type: ignore[arg-type]


# --- properties --------------------------------------------------------------------------

requests = st.builds(
    DownloadRequest,
    format=st.sampled_from(["original", "csv", "parquet", "xlsx"]),
    version=st.none() | st.integers(min_value=1, max_value=3),
    representation_bytes=st.none() | st.integers(min_value=0, max_value=2 * 10**12),
    accepted_terms=st.booleans(),
    token=st.none()
    | st.builds(
        claims,
        dataset_id=st.sampled_from([DATASET_ID, "d2"]),
        version=st.integers(min_value=1, max_value=3),
        fmt=st.sampled_from(["original", "csv", "parquet"]),
    ),
    issuing_token=st.booleans(),
)
rates = st.none() | st.just(ALLOWED_RATE) | st.floats(0.0, 100.0).map(denied_rate)


@given(
    principals(),
    datasets(),
    grant_lists(),
    policies,
    requests,
    rates,
    st.booleans(),
)
def test_hidden_dataset_reveals_nothing(
    principal: Principal,
    dataset: Dataset,
    grants: list[Grant],
    policy: DownloadPolicy,
    request: DownloadRequest,
    rate: RateDecision | None,
    version_exists: bool,
) -> None:
    """A principal who cannot see the dataset gets exactly the answer for a missing dataset."""

    def judge(subject: Dataset | None) -> Decision:
        return decide(
            principal=principal,
            dataset=subject,
            grants=grants,
            policy=policy,
            request=request,
            now=NOW,
            rate=rate,
            version_exists=version_exists,
        )

    decision, missing = judge(dataset), judge(None)
    if not can_view(principal, dataset, grants, NOW):
        assert decision == missing
        if request.token is not None:
            assert decision.code == "token_invalid"
        elif principal.has_scope(Scope.DOWNLOAD):
            assert decision.code == "not_found"
        else:
            assert decision.code == "forbidden"
    elif decision.code == "not_found":
        assert not version_exists


@given(
    principals(),
    datasets(),
    grant_lists(),
    policies,
    requests,
    rates,
    st.booleans(),
)
def test_an_allowed_download_passes_every_rule(
    principal: Principal,
    dataset: Dataset,
    grants: list[Grant],
    policy: DownloadPolicy,
    request: DownloadRequest,
    rate: RateDecision | None,
    version_exists: bool,
) -> None:
    """Whatever the facts, an allowed decision implies each rule was met."""
    decision = decide(
        principal=principal,
        dataset=dataset,
        grants=grants,
        policy=policy,
        request=request,
        now=NOW,
        rate=rate,
        version_exists=version_exists,
    )
    if not decision.allowed:
        assert decision.code in DENIAL_ERRORS
        assert decision.message
        assert decision.hint
        return
    assert version_exists
    assert can_download(principal, dataset, grants, NOW)
    assert not principal.is_anonymous or policy.allow_anonymous
    assert policy.allows_format(request.format, dataset.file.format.value)
    if policy.max_download_bytes is not None and request.representation_bytes is not None:
        assert request.representation_bytes <= policy.max_download_bytes
    if request.token is not None:
        assert request.token.dataset_id == dataset.id
        assert request.token.format == request.format
        assert request.version is None or request.token.version == request.version
    else:
        assert principal.has_scope(Scope.DOWNLOAD)
    admin = can_administer(principal, dataset)
    by_token = request.token is not None or principal.credential is CredentialKind.TOKEN
    if policy.require_token and not admin:
        assert by_token or request.issuing_token
    if policy.terms and not admin and not by_token:
        assert request.accepted_terms
    assert rate is None or rate.allowed


# --- quota and token-use denials ---------------------------------------------------------


def refused(subject: QuotaSubject, limit: QuotaLimit, usage: Usage) -> ReserveOutcome:
    """A reservation refused by the counter of ``subject`` under ``limit``."""
    charge = QuotaCharge.for_subject(subject, "mia", limit, NOW, organization_id=ORG)
    return ReserveOutcome.refused_by(charge, usage)


@pytest.mark.parametrize("window", list(Window))
def test_quota_denial_resets_at_window_end(window: Window) -> None:
    """A quota denial names the window's end as reset time and asks to wait until then."""
    limit = QuotaLimit(bytes=10_000_000_000, downloads=None, window=window)
    outcome = refused(QuotaSubject.USER, limit, Usage(bytes=9_500_000_000, downloads=3))
    decision = quota_denial(outcome, NOW)
    _, end = window.bounds(NOW)
    assert decision.code == "quota_exceeded"
    assert not decision.allowed
    assert decision.resets_at == end
    assert decision.retry_after == int((end - NOW).total_seconds())
    assert decision.retry_after > 0
    assert "your" in decision.message
    assert "9.5 GB of 10.0 GB" in decision.message
    assert end.strftime("%Y-%m-%dT%H:%M:%SZ") in decision.hint


def test_quota_denial_for_organization_downloads() -> None:
    """An organisation's download-count denial says whose quota and how many downloads."""
    limit = QuotaLimit(bytes=None, downloads=100, window=Window.MONTH)
    outcome = refused(QuotaSubject.ORGANIZATION, limit, Usage(bytes=5, downloads=100))
    decision = quota_denial(outcome, NOW)
    assert "organisation" in decision.message
    assert "100 of 100 downloads" in decision.message


@pytest.mark.parametrize(
    ("before_end", "expected"),
    [
        (timedelta(0), 1),
        (timedelta(microseconds=1), 1),
        (timedelta(seconds=1), 1),
        (timedelta(seconds=1, microseconds=1), 2),
    ],
)
def test_quota_denial_waits_at_least_a_second(before_end: timedelta, expected: int) -> None:
    """Retry-After rounds the time to reset up and is never zero."""
    limit = QuotaLimit(bytes=1, window=Window.DAY)
    outcome = refused(QuotaSubject.USER, limit, Usage(bytes=1))
    _, end = Window.DAY.bounds(NOW)
    assert quota_denial(outcome, end - before_end).retry_after == expected


def test_quota_denial_refuses_an_accepted_outcome() -> None:
    """An accepted reservation is not a denial."""
    with pytest.raises(ValueError, match="refused"):
        quota_denial(ReserveOutcome.accepted(), NOW)


def test_token_exhausted() -> None:
    """A used-up token is denied with token_exhausted, naming its number of uses."""
    decision = token_exhausted(3)
    assert decision.code == "token_exhausted"
    assert not decision.allowed
    assert "3" in decision.message


# --- errors ------------------------------------------------------------------------------

PUBLIC = make_dataset(Visibility.PUBLIC)
REACHABLE: dict[str, Decision] = {
    "not_found": ask(dataset=make_dataset(Visibility.PRIVATE)),
    "auth_required": ask(
        principal=ANONYMOUS, dataset=PUBLIC, policy=DownloadPolicy(allow_anonymous=False)
    ),
    "forbidden": ask(
        principal=OUTSIDER,
        dataset=make_dataset(Visibility.PRIVATE),
        grants=[user_grant("otto", Permission.VIEW)],
    ),
    "format_not_allowed": ask(
        policy=DownloadPolicy(allowed_formats=frozenset({"csv"})), format="json"
    ),
    "too_large": ask(policy=DownloadPolicy(max_download_bytes=1), representation_bytes=2),
    "token_required": ask(policy=DownloadPolicy(require_token=True)),
    "terms_not_accepted": ask(policy=DownloadPolicy(terms="Cite Acme.")),
    "token_invalid": ask(token=claims(dataset_id="d2")),
    "rate_limited": ask(rate=denied_rate(12.5)),
    "quota_exceeded": quota_denial(
        refused(QuotaSubject.USER, QuotaLimit(bytes=10), Usage(bytes=10)), NOW
    ),
    "token_exhausted": token_exhausted(1),
}


def test_every_denial_code_is_reachable() -> None:
    """Each code with an error class is produced by decide or by the quota and token-use helpers."""
    assert {code: d.code for code, d in REACHABLE.items()} == {code: code for code in REACHABLE}
    assert set(REACHABLE) == set(DENIAL_ERRORS)


@pytest.mark.parametrize("code", sorted(REACHABLE))
def test_decision_error_carries_the_code(code: str) -> None:
    """A denial's error has the same code, message, hint, retry time and reset time."""
    decision = REACHABLE[code]
    error = decision.error()
    assert isinstance(error, Denied)
    assert isinstance(error, DatadlError)
    assert error.code == code
    assert error.message == decision.message
    assert error.hint == decision.hint
    assert error.retry_after == decision.retry_after
    assert error.resets_at == decision.resets_at


def test_retry_fields_reach_the_error() -> None:
    """Rate and quota denials hand their waiting times to the error."""
    assert REACHABLE["rate_limited"].error().retry_after == 13
    quota = REACHABLE["quota_exceeded"].error()
    assert quota.resets_at == Window.DAY.bounds(NOW)[1]
    assert quota.retry_after is not None
    assert quota.retry_after > 0


def test_allowed_decision_is_not_an_error() -> None:
    """Asking an allowed decision for its error is a programming error."""
    with pytest.raises(ValueError, match="allowed"):
        Decision.allow().error()


def test_deny_keeps_its_fields() -> None:
    """Decision.deny builds a refusal with every field it was given."""
    decision = Decision.deny("too_large", "Too big.", "Pick parquet.", retry_after=3)
    assert attrs.asdict(decision) == {
        "allowed": False,
        "code": "too_large",
        "message": "Too big.",
        "hint": "Pick parquet.",
        "retry_after": 3,
        "resets_at": None,
    }
