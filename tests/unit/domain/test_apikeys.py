"""Tests for API key secrets: issuing, splitting, hashing and checking."""

from __future__ import annotations

import hmac
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datadl.domain import apikeys
from datadl.domain.apikeys import PREFIX, hash_secret, issue_key, secret_matches, split_key

KEY_ID = "k3y1d0ab"
SECRET = bytes(range(32))

key_ids = st.text(alphabet=string.ascii_letters + string.digits, min_size=8, max_size=32)
secrets_ = st.binary(min_size=32, max_size=96)


def test_issued_key_shape() -> None:
    """An issued key reads ddl_<id>_<base64url secret> and keeps only the secret's hash."""
    issued = issue_key(KEY_ID, SECRET)
    assert issued.key_id == KEY_ID
    assert issued.plaintext.startswith(f"{PREFIX}_{KEY_ID}_")
    secret_text = issued.plaintext.removeprefix(f"{PREFIX}_{KEY_ID}_")
    assert len(secret_text) == 43  # 32 bytes, unpadded base64url
    assert set(secret_text) <= set(string.ascii_letters + string.digits + "-_")
    assert issued.secret_hash == hash_secret(secret_text)
    assert len(issued.secret_hash) == 64


@given(key_ids, secrets_)
def test_issue_split_round_trip(key_id: str, secret: bytes) -> None:
    """Splitting an issued key gives back its id and a secret that matches the stored hash."""
    issued = issue_key(key_id, secret)
    split = split_key(issued.plaintext)
    assert split is not None
    got_id, secret_text = split
    assert got_id == key_id
    assert secret_matches(secret_text, issued.secret_hash)


@given(key_ids, secrets_)
def test_stored_hash_reveals_neither_key_nor_secret(key_id: str, secret: bytes) -> None:
    """The stored hash differs from the key and contains neither the key nor its secret part."""
    issued = issue_key(key_id, secret)
    split = split_key(issued.plaintext)
    assert split is not None
    assert issued.secret_hash != issued.plaintext
    assert issued.secret_hash != split[1]
    assert split[1] not in issued.secret_hash
    assert issued.secret_hash not in issued.plaintext


def test_issued_key_repr_hides_secrets() -> None:
    """Neither the key nor its hash appears in the repr, so logs cannot leak them."""
    issued = issue_key(KEY_ID, SECRET)
    shown = repr(issued)
    assert issued.plaintext not in shown
    assert issued.secret_hash not in shown
    assert KEY_ID in shown


@given(secrets_, secrets_)
def test_different_secrets_give_different_keys(a: bytes, b: bytes) -> None:
    """Two different secrets never yield the same key or hash."""
    if a != b:
        one, two = issue_key(KEY_ID, a), issue_key(KEY_ID, b)
        assert one.plaintext != two.plaintext
        assert one.secret_hash != two.secret_hash


def test_secret_matches() -> None:
    """The right secret matches its hash; a changed, truncated or empty one does not."""
    issued = issue_key(KEY_ID, SECRET)
    split = split_key(issued.plaintext)
    assert split is not None
    _, secret_text = split
    assert secret_matches(secret_text, issued.secret_hash)
    flipped = ("A" if secret_text[0] != "A" else "B") + secret_text[1:]
    assert not secret_matches(flipped, issued.secret_hash)
    assert not secret_matches(secret_text[:-1], issued.secret_hash)
    assert not secret_matches("", issued.secret_hash)
    assert not secret_matches(secret_text, issue_key(KEY_ID, b"\xff" * 32).secret_hash)


@pytest.mark.parametrize("correct", [True, False])
def test_secret_matches_compares_in_constant_time(
    monkeypatch: pytest.MonkeyPatch, correct: bool
) -> None:
    """The comparison goes through hmac.compare_digest, for right and wrong secrets alike."""
    issued = issue_key(KEY_ID, SECRET)
    split = split_key(issued.plaintext)
    assert split is not None
    presented = split[1] if correct else split[1][::-1]
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(apikeys.hmac, "compare_digest", spy)
    assert secret_matches(presented, issued.secret_hash) is correct
    assert calls == [(hash_secret(presented), issued.secret_hash)]


VALID_SECRET_TEXT = "A" * 43


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "ddl",
        "ddl_",
        f"ddl_{KEY_ID}",
        f"ddl_{KEY_ID}_",
        f"xyz_{KEY_ID}_{VALID_SECRET_TEXT}",
        f"DDL_{KEY_ID}_{VALID_SECRET_TEXT}",
        f"{KEY_ID}_{VALID_SECRET_TEXT}",
        f"ddl_short_{VALID_SECRET_TEXT}",
        f"ddl_{'a' * 33}_{VALID_SECRET_TEXT}",
        f"ddl_k3y-1d0ab_{VALID_SECRET_TEXT}",
        f"ddl_{KEY_ID}_{'A' * 31}",
        f"ddl_{KEY_ID}_{'A' * 129}",
        f"ddl_{KEY_ID}_{'A' * 42}=",
        f"ddl_{KEY_ID}_{'A' * 42}+",
        f"ddl_{KEY_ID}_{'A' * 42} ",
        f" ddl_{KEY_ID}_{VALID_SECRET_TEXT}",
        f"ddl_{KEY_ID}_{VALID_SECRET_TEXT}\n",
        f"Bearer ddl_{KEY_ID}_{VALID_SECRET_TEXT}",
        f"ddl_{KEY_ID}_{'Ä' * 43}",
    ],
)
def test_malformed_keys_are_not_ours(presented: str) -> None:
    """Anything that is not exactly ddl_<8-32 alphanumerics>_<32-128 base64url> splits to None."""
    assert split_key(presented) is None


@pytest.mark.parametrize(
    ("presented", "expected"),
    [
        (f"ddl_{'a' * 8}_{'A' * 32}", ("a" * 8, "A" * 32)),
        (f"ddl_{'Z9' * 16}_{'-_' * 64}", ("Z9" * 16, "-_" * 64)),
    ],
)
def test_split_key_boundaries(presented: str, expected: tuple[str, str]) -> None:
    """The shortest and longest ids and secrets are still keys."""
    assert split_key(presented) == expected


@pytest.mark.parametrize("length", [0, 1, 16, 31])
def test_short_secrets_are_refused(length: int) -> None:
    """A secret of fewer than 32 bytes is refused."""
    with pytest.raises(ValueError, match="32"):
        issue_key(KEY_ID, b"s" * length)


@pytest.mark.parametrize("length", [97, 128, 1024])
def test_overlong_secrets_are_refused(length: int) -> None:
    """A secret too long to fit a key that split_key accepts is refused, not silently issued."""
    with pytest.raises(ValueError, match="96"):
        issue_key(KEY_ID, b"s" * length)


@pytest.mark.parametrize(
    "key_id", ["", "short", "a" * 33, "has_underscore", "dash-ed-id", "ünïcode1"]
)
def test_invalid_key_ids_are_refused(key_id: str) -> None:
    """Key ids are 8 to 32 ASCII letters and digits, so that splitting stays unambiguous."""
    with pytest.raises(ValueError, match="key ids"):
        issue_key(key_id, SECRET)
