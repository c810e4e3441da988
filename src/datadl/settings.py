"""Settings from a TOML file and DATADL_* environment variables (the environment wins)."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from datadl.domain.tokens import SigningKey

ENV_PREFIX = "DATADL_"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def _keys(text: str) -> tuple[SigningKey, ...]:
    keys = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key_id, sep, secret = item.partition(":")
        if not sep:
            raise ConfigError(
                "signing_keys must be 'id:base64secret[,id:base64secret...]', oldest first"
            )
        try:
            raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
            keys.append(SigningKey(key_id, raw))
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"signing key {key_id!r} is not valid: {exc}") from None
    return tuple(keys)


def encode_signing_keys(keys: Sequence[SigningKey]) -> str:
    """The ``signing_keys`` setting that reads back as ``keys`` (secrets in the clear)."""
    return ",".join(
        f"{k.key_id}:{base64.urlsafe_b64encode(k.secret).rstrip(b'=').decode()}" for k in keys
    )


def generate_signing_key(key_id: str) -> SigningKey:
    """A fresh random signing key of 32 bytes from the operating system's CSPRNG."""
    try:
        return SigningKey(key_id, secrets.token_bytes(32))
    except ValueError as exc:
        raise ConfigError(f"cannot use {key_id!r} as a key id: {exc}") from None


#: What to tell an operator who started a server without a signing key.
MISSING_SIGNING_KEYS = (
    "no signing key is configured, and datadl has no built-in one. Set the environment "
    "variable DATADL_SIGNING_KEYS (or signing_keys in the [datadl] table of the --config "
    "file) to 'id:base64secret', oldest first when rotating; "
    "'datadl keys generate' prints a fresh one, for example "
    "export DATADL_SIGNING_KEYS=$(datadl keys generate)"
)


@attrs.frozen
class Settings:
    """Everything a datadl process is configured with.

    URLs pick adapters: ``sqlite:///file.db`` or ``postgresql://user@host/db`` for the
    database, ``redis://host:6379/0`` for the hot counters and the cache (they default to
    the database and to memory). Secrets are never given defaults here.
    """

    data_dir: Path = Path("./datadl-data")
    database_url: str | None = None
    database_schema: str | None = None
    storage_url: str | None = None
    usage_url: str | None = None
    cache_url: str | None = None
    signing_keys: tuple[SigningKey, ...] = ()
    cursor_key: bytes | None = attrs.field(default=None, repr=False)
    max_upload_bytes: int | None = None
    keep_versions: int | None = 5
    #: Seconds the catalogue's download-path lookups are reused (0: never); other
    #: processes' changes are seen within it. See docs/decisions.md.
    catalog_cache_seconds: float = 2.0
    #: Seconds between batched saves of download records (0: every record written at
    #: once). At most this much of the audit trail is lost if the process is killed.
    audit_flush_seconds: float = 0.25
    #: For an ``s3://bucket/prefix`` storage URL: where S3 is and who datadl is there.
    #: Left unset, credentials and region come from the usual AWS sources (environment,
    #: shared config files, instance roles).
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = attrs.field(default=None, repr=False)
    s3_secret_access_key: str | None = attrs.field(default=None, repr=False)
    s3_session_token: str | None = attrs.field(default=None, repr=False)

    @property
    def s3_options(self) -> dict[str, str]:
        """The options of an S3 blob store, from the ``s3_*`` settings that are set."""
        named = {
            "endpoint_url": self.s3_endpoint_url,
            "region": self.s3_region,
            "key": self.s3_access_key_id,
            "secret": self.s3_secret_access_key,
            "token": self.s3_session_token,
        }
        return {name: value for name, value in named.items() if value}

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        return self.database_url or f"sqlite:///{self.data_dir / 'datadl.db'}"

    @classmethod
    def load(
        cls, *, file: Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Read the file (if any), then the environment, then explicit overrides."""
        values: dict[str, Any] = {}
        if file is not None:
            try:
                values.update(tomllib.loads(file.read_text(encoding="utf-8")).get("datadl", {}))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read configuration file {file}: {exc}") from None
        env = os.environ if environ is None else environ
        for field in attrs.fields(cls):
            name = ENV_PREFIX + field.name.upper()
            if name in env:
                values[field.name] = env[name]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls._parse(values)

    @classmethod
    def _parse(cls, values: dict[str, Any]) -> Settings:
        known = {f.name for f in attrs.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        parsed: dict[str, Any] = dict(values)
        if "data_dir" in parsed:
            parsed["data_dir"] = Path(parsed["data_dir"])
        signing = parsed.get("signing_keys")
        if isinstance(signing, list) and all(isinstance(item, str) for item in signing):
            # A TOML array of 'id:secret' strings reads like the comma-separated form.
            signing = ",".join(signing)
        if isinstance(signing, str):
            parsed["signing_keys"] = _keys(signing)
        elif signing is not None and not (
            isinstance(signing, tuple) and all(isinstance(k, SigningKey) for k in signing)
        ):
            raise ConfigError("signing_keys must be 'id:base64secret[,id:base64secret...]'")
        if isinstance(parsed.get("cursor_key"), str):
            text = parsed["cursor_key"]
            try:
                parsed["cursor_key"] = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            except binascii.Error:
                raise ConfigError("cursor_key must be base64") from None
        for name in ("max_upload_bytes", "keep_versions"):
            if isinstance(parsed.get(name), str):
                try:
                    parsed[name] = int(parsed[name])
                except ValueError:
                    raise ConfigError(f"{name} must be an integer") from None
        for name in ("catalog_cache_seconds", "audit_flush_seconds"):
            if name in parsed:
                try:
                    seconds = float(parsed[name])
                except (TypeError, ValueError):
                    raise ConfigError(f"{name} must be a number of seconds") from None
                if not 0 <= seconds <= 60:
                    raise ConfigError(f"{name} must be between 0 and 60 seconds")
                parsed[name] = seconds
        return cls(**parsed)
