"""Tests for principals and the rules of who may see, download and administer a dataset."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datadl.domain.access import (
    CredentialKind,
    Principal,
    can_administer,
    can_download,
    can_view,
    is_org_admin,
)
from datadl.domain.model import Dataset, Grant, Membership, Permission, Role, Scope, Visibility
from tests.unit.domain.strategies import (
    NOW,
    ORG,
    OTHER_ORG,
    OWNER,
    datasets,
    grant_lists,
    make_dataset,
    org_grant,
    principals,
    user,
    user_grant,
)

# The cast: the owner holds no membership, so ownership alone must be what lets them in.
CAST = {
    "owner": user(OWNER),
    "org admin": user("adam", (ORG, Role.ADMIN)),
    "org member": user("mia", (ORG, Role.MEMBER)),
    "other org member": user("otto", (OTHER_ORG, Role.MEMBER)),
    "other org admin": user("oona", (OTHER_ORG, Role.ADMIN)),
    "anonymous": Principal.anonymous(),
}

# (visibility, who) -> (can view, can download), with no grants at all.
MATRIX = {
    (Visibility.PRIVATE, "owner"): (True, True),
    (Visibility.PRIVATE, "org admin"): (True, True),
    (Visibility.PRIVATE, "org member"): (False, False),
    (Visibility.PRIVATE, "other org member"): (False, False),
    (Visibility.PRIVATE, "other org admin"): (False, False),
    (Visibility.PRIVATE, "anonymous"): (False, False),
    (Visibility.ORGANIZATION, "owner"): (True, True),
    (Visibility.ORGANIZATION, "org admin"): (True, True),
    (Visibility.ORGANIZATION, "org member"): (True, True),
    (Visibility.ORGANIZATION, "other org member"): (False, False),
    (Visibility.ORGANIZATION, "other org admin"): (False, False),
    (Visibility.ORGANIZATION, "anonymous"): (False, False),
    (Visibility.PUBLIC, "owner"): (True, True),
    (Visibility.PUBLIC, "org admin"): (True, True),
    (Visibility.PUBLIC, "org member"): (True, True),
    (Visibility.PUBLIC, "other org member"): (True, True),
    (Visibility.PUBLIC, "other org admin"): (True, True),
    (Visibility.PUBLIC, "anonymous"): (True, True),
}


@pytest.mark.parametrize(("visibility", "who"), list(MATRIX))
def test_visibility_matrix(visibility: Visibility, who: str) -> None:
    """Without grants, visibility and the principal's relation to the dataset decide access."""
    dataset = make_dataset(visibility)
    expected_view, expected_download = MATRIX[visibility, who]
    assert can_view(CAST[who], dataset, [], NOW) is expected_view
    assert can_download(CAST[who], dataset, [], NOW) is expected_download


@pytest.mark.parametrize("visibility", list(Visibility))
@pytest.mark.parametrize("who", list(CAST))
def test_deleted_dataset_is_invisible_to_everyone(visibility: Visibility, who: str) -> None:
    """A deleted dataset can be neither seen nor downloaded, not even by its owner or a grantee."""
    dataset = make_dataset(visibility, deleted=True)
    principal = CAST[who]
    grants = [org_grant(ORG), org_grant(OTHER_ORG)]
    if principal.user_id is not None:
        grants.append(user_grant(principal.user_id))
    assert not can_view(principal, dataset, grants, NOW)
    assert not can_download(principal, dataset, grants, NOW)


@pytest.mark.parametrize(
    ("permission", "expected_download"),
    [(Permission.VIEW, False), (Permission.DOWNLOAD, True)],
)
def test_user_grant_on_private_dataset(permission: Permission, expected_download: bool) -> None:
    """A user grant shows a private dataset; only a download grant lets its bytes out."""
    dataset = make_dataset(Visibility.PRIVATE)
    grants = [user_grant("otto", permission)]
    assert can_view(CAST["other org member"], dataset, grants, NOW)
    assert can_download(CAST["other org member"], dataset, grants, NOW) is expected_download


@pytest.mark.parametrize(
    ("permission", "expected_download"),
    [(Permission.VIEW, False), (Permission.DOWNLOAD, True)],
)
def test_organization_grant_reaches_every_member(
    permission: Permission, expected_download: bool
) -> None:
    """An organisation grant applies to each member of that organisation, whatever their role."""
    dataset = make_dataset(Visibility.ORGANIZATION)
    grants = [org_grant(OTHER_ORG, permission)]
    for who in ("other org member", "other org admin"):
        assert can_view(CAST[who], dataset, grants, NOW)
        assert can_download(CAST[who], dataset, grants, NOW) is expected_download


def test_grants_to_someone_else_do_not_apply() -> None:
    """A grant to another user or another organisation gives nothing to the principal."""
    dataset = make_dataset(Visibility.PRIVATE)
    grants = [user_grant("somebody"), org_grant("initech")]
    assert not can_view(CAST["other org member"], dataset, grants, NOW)
    assert not can_download(CAST["other org member"], dataset, grants, NOW)


def test_view_and_download_grants_combine() -> None:
    """Holding both a view and a download grant lets the principal download."""
    dataset = make_dataset(Visibility.PRIVATE)
    grants = [user_grant("otto", Permission.VIEW), org_grant(OTHER_ORG, Permission.DOWNLOAD)]
    assert can_download(CAST["other org member"], dataset, grants, NOW)


def test_view_grant_does_not_take_away_what_visibility_gives() -> None:
    """A view grant to a member does not stop them downloading an organisation dataset."""
    dataset = make_dataset(Visibility.ORGANIZATION)
    grants = [user_grant("mia", Permission.VIEW)]
    assert can_download(CAST["org member"], dataset, grants, NOW)


def test_anonymous_gains_nothing_from_grants() -> None:
    """No grant can reach the anonymous principal."""
    dataset = make_dataset(Visibility.PRIVATE)
    grants = [org_grant(ORG), org_grant(OTHER_ORG), user_grant(OWNER)]
    assert not can_view(Principal.anonymous(), dataset, grants, NOW)
    assert not can_download(Principal.anonymous(), dataset, grants, NOW)


@pytest.mark.parametrize(
    ("expires_at", "active"),
    [
        (NOW - timedelta(days=1), False),
        (NOW, False),
        (NOW + timedelta(microseconds=1), True),
        (None, True),
    ],
)
@pytest.mark.parametrize("kind", ["user", "organization"])
def test_expired_grants_are_ignored(expires_at: datetime | None, active: bool, kind: str) -> None:
    """A grant applies strictly before its expiry; at ``expires_at == now`` it is expired."""
    dataset = make_dataset(Visibility.PRIVATE)
    if kind == "user":
        grant = user_grant("otto", expires_at=expires_at)
    else:
        grant = org_grant(OTHER_ORG, expires_at=expires_at)
    assert can_view(CAST["other org member"], dataset, [grant], NOW) is active
    assert can_download(CAST["other org member"], dataset, [grant], NOW) is active


def test_expired_download_grant_leaves_active_view_grant() -> None:
    """When the download grant has expired, an active view grant still shows but never serves."""
    dataset = make_dataset(Visibility.PRIVATE)
    grants = [
        user_grant("otto", Permission.DOWNLOAD, expires_at=NOW),
        org_grant(OTHER_ORG, Permission.VIEW),
    ]
    assert can_view(CAST["other org member"], dataset, grants, NOW)
    assert not can_download(CAST["other org member"], dataset, grants, NOW)


def test_grants_may_be_a_one_shot_iterator() -> None:
    """can_download reads the grants once even when given a generator."""
    dataset = make_dataset(Visibility.PRIVATE)
    grants = (g for g in [user_grant("otto", Permission.DOWNLOAD)])
    assert can_download(CAST["other org member"], dataset, grants, NOW)


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("owner", True),
        ("org admin", True),
        ("org member", False),
        ("other org member", False),
        ("other org admin", False),
        ("anonymous", False),
    ],
)
def test_can_administer(who: str, expected: bool) -> None:
    """Only the owner and admins of the dataset's organisation administer it."""
    assert can_administer(CAST[who], make_dataset(Visibility.PUBLIC)) is expected


def test_an_admin_without_a_user_administers_its_organisations_datasets() -> None:
    """The operator (admin memberships, no user) administers; a bare token principal not."""
    operator = Principal(user_id=None, memberships=(Membership(ORG, "operator", Role.ADMIN),))
    assert can_administer(operator, make_dataset(Visibility.PRIVATE))
    assert not can_administer(Principal(user_id=None), make_dataset(Visibility.PRIVATE))
    stranger = Principal(user_id=None, memberships=(Membership(OTHER_ORG, "operator", Role.ADMIN),))
    assert not can_administer(stranger, make_dataset(Visibility.PRIVATE))


def test_download_grant_does_not_make_an_administrator() -> None:
    """Being granted a dataset, even for download, is not administering it."""
    dataset = make_dataset(Visibility.PRIVATE)
    principal = CAST["org member"]
    assert can_download(principal, dataset, [user_grant("mia")], NOW)
    assert not can_administer(principal, dataset)


def test_is_org_admin_and_role_in() -> None:
    """Roles are per organisation: an admin of one is a plain member or stranger elsewhere."""
    principal = user("zoe", (ORG, Role.ADMIN), (OTHER_ORG, Role.MEMBER))
    assert is_org_admin(principal, ORG)
    assert not is_org_admin(principal, OTHER_ORG)
    assert not is_org_admin(principal, "initech")
    assert principal.role_in(OTHER_ORG) is Role.MEMBER
    assert principal.role_in("initech") is None
    assert principal.organization_ids == frozenset({ORG, OTHER_ORG})


def test_anonymous_principal() -> None:
    """The anonymous principal has no user, no organisation and the anonymous credential."""
    principal = Principal.anonymous()
    assert principal.is_anonymous
    assert principal.organization_ids == frozenset()
    assert principal.credential is CredentialKind.ANONYMOUS
    assert not user("ann").is_anonymous


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        (None, set(Scope)),
        (frozenset(), set()),
        (frozenset({Scope.READ}), {Scope.READ}),
        (frozenset({Scope.READ, Scope.DOWNLOAD}), {Scope.READ, Scope.DOWNLOAD}),
        (frozenset({Scope.PUBLISH}), {Scope.PUBLISH}),
        (frozenset({Scope.ADMIN}), set(Scope)),
    ],
)
def test_has_scope(scopes: frozenset[Scope] | None, allowed: set[Scope]) -> None:
    """An unrestricted credential has every scope; a key has its own, and admin implies all."""
    principal = user("ann", credential=CredentialKind.API_KEY, scopes=scopes)
    assert {s for s in Scope if principal.has_scope(s)} == allowed


@given(principals(), datasets(), grant_lists())
def test_download_implies_view(principal: Principal, dataset: Dataset, grants: list[Grant]) -> None:
    """No combination of principal, dataset and grants lets bytes out of an unseen dataset."""
    if can_download(principal, dataset, grants, NOW):
        assert can_view(principal, dataset, grants, NOW)


@given(principals(), datasets(), grant_lists())
def test_administrators_see_and_download_every_live_dataset(
    principal: Principal,
    dataset: Dataset,
    grants: list[Grant],
) -> None:
    """Whoever administers a dataset sees and downloads it unless it is deleted."""
    if can_administer(principal, dataset):
        live = not dataset.is_deleted
        assert can_view(principal, dataset, grants, NOW) is live
        assert can_download(principal, dataset, grants, NOW) is live


@given(principals(), datasets(), grant_lists(), st.data())
def test_expired_grants_change_nothing(
    principal: Principal,
    dataset: Dataset,
    grants: list[Grant],
    data: st.DataObject,
) -> None:
    """Adding grants that expired at or before now never changes what the principal may do."""
    expired = [
        g for g in data.draw(grant_lists()) if g.expires_at is not None and g.expires_at <= NOW
    ]
    for rule in (can_view, can_download):
        before = rule(principal, dataset, grants, NOW)
        assert rule(principal, dataset, [*grants, *expired], NOW) is before
