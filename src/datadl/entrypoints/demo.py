"""The ``datadl serve --demo`` world: an organisation, three users, keys, a policy, samples."""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from datadl.domain.errors import DatadlError, NotFound
from datadl.domain.model import Dataset, DatasetStatus, FileFormat, Role, Scope, Visibility
from datadl.domain.policy import DownloadPolicy, QuotaLimit, Window
from datadl.domain.ratelimit import RateLimit
from datadl.domain.tokens import SigningKey
from datadl.services.datasets import DatasetFacts
from datadl.settings import ConfigError, Settings, encode_signing_keys
from datadl.wiring import Datadl

ORGANIZATION = "demo"
#: The demo users and their role in the demo organisation (None: not a member).
USERS: Mapping[str, Role | None] = {"owner": Role.ADMIN, "member": Role.MEMBER, "outsider": None}
#: The scopes of each demo user's API key.
KEY_SCOPES: Mapping[str, tuple[Scope, ...]] = {
    "owner": (Scope.READ, Scope.DOWNLOAD, Scope.PUBLISH, Scope.ADMIN),
    "member": (Scope.READ, Scope.DOWNLOAD, Scope.PUBLISH),
    "outsider": (Scope.READ, Scope.DOWNLOAD),
}
KEYS_FILE = "demo-keys.json"
SECRETS_FILE = "demo-secrets.json"
KEY_NAME = "demo"

#: A small quota, so that ``quota_exceeded`` is easy to see: about a dozen full downloads.
DEMO_POLICY = DownloadPolicy(
    allow_anonymous=True,
    token_max_ttl_seconds=3600,
    rate_limit=RateLimit(requests=120, per_seconds=60),
    user_quota=QuotaLimit(bytes=5_000_000, downloads=100, window=Window.DAY),
    organization_quota=QuotaLimit(bytes=50_000_000, downloads=1000, window=Window.DAY),
    audit_retention_days=30,
)

_CHUNK = 64 * 1024


@attrs.frozen
class Sample:
    """One shipped sample file and how the demo publishes it."""

    filename: str
    slug: str
    title: str
    visibility: Visibility
    description: str
    license: str
    tags: tuple[str, ...]
    format: FileFormat


SAMPLES = (
    Sample(
        "penguins.csv",
        "penguins",
        "Palmer penguins",
        Visibility.PUBLIC,
        "Species, island, bill and flipper sizes, body mass and sex of 344 penguins.",
        "CC0-1.0",
        ("biology", "penguins"),
        FileFormat.CSV,
    ),
    Sample(
        "seattle-weather.csv",
        "seattle-weather",
        "Seattle weather 2012-2015",
        Visibility.PUBLIC,
        "Daily precipitation, temperature extremes, wind and a weather label.",
        "MIT",
        ("weather",),
        FileFormat.CSV,
    ),
    Sample(
        "airports.csv",
        "airports",
        "US airports",
        Visibility.ORGANIZATION,
        "IATA code, name, city, state, country, latitude and longitude of US airports.",
        "MIT",
        ("geography", "transport"),
        FileFormat.CSV,
    ),
    Sample(
        "cars.json",
        "cars",
        "Cars",
        Visibility.ORGANIZATION,
        "Car models with mpg, cylinders, horsepower, year and origin (a JSON array).",
        "MIT",
        ("transport",),
        FileFormat.JSON,
    ),
    Sample(
        "penguins-raw.csv",
        "penguins-raw",
        "Palmer penguins, raw",
        Visibility.PRIVATE,
        "The raw penguin study: 17 columns with comments, dates and isotope values.",
        "CC0-1.0",
        ("biology", "penguins"),
        FileFormat.CSV,
    ),
)


@attrs.frozen
class DemoSeed:
    """What the demo holds after seeding: plaintext keys by user, datasets by slug.

    ``created`` names what this run added (empty on a restart that found everything).
    """

    organization: str
    keys: Mapping[str, str] = attrs.field(repr=False)
    datasets: Mapping[str, Dataset]
    created: tuple[str, ...]


def write_private(path: Path, text: str) -> None:
    """Write ``text`` so that only the owner can read it (mode 0600), replacing atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o600)  # the umask may have taken bits away, never added them
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def demo_signing_keys(data_dir: Path) -> tuple[tuple[SigningKey, ...], bytes]:
    """The demo's signing keys and cursor key: read from the data dir, made on first use.

    They are kept in ``demo-secrets.json`` (mode 0600) so that tokens and cursors issued
    before a restart stay valid after it.
    """
    path = data_dir / SECRETS_FILE
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            settings = Settings.load(
                environ={},
                signing_keys=stored["signing_keys"],
                cursor_key=stored["cursor_key"],
            )
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ConfigError(
                f"cannot read the demo secrets in {path}: {exc}; delete the file to make new "
                "ones (download tokens issued before will stop working)"
            ) from None
        assert settings.cursor_key is not None
        return settings.signing_keys, settings.cursor_key
    keys = (SigningKey("demo1", secrets.token_bytes(32)),)
    cursor_key = secrets.token_bytes(32)
    write_private(
        path,
        json.dumps(
            {
                "signing_keys": encode_signing_keys(keys),
                "cursor_key": base64.urlsafe_b64encode(cursor_key).decode(),
            },
            indent=2,
        )
        + "\n",
    )
    return keys, cursor_key


async def _sample_bytes(filename: str) -> AsyncIterator[bytes]:
    with resources.files("datadl.samples").joinpath(filename).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def _read_keys(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


async def _valid_key(app: Datadl, presented: object, user_id: str) -> bool:
    if not isinstance(presented, str):
        return False
    try:
        principal = await app.accounts.authenticate_api_key(presented)
    except DatadlError:
        return False
    return principal.user_id == user_id


async def seed_demo(app: Datadl, data_dir: Path) -> DemoSeed:
    """Make the demo world, or find it: safe to run on every start.

    Each step checks what exists before adding, so a second run on the same data
    changes nothing and a run that was interrupted is completed. Keys live in
    ``demo-keys.json``: a key there that still authenticates for its user is kept; a
    missing or invalid one is replaced by a new key (and the file rewritten, mode 0600).
    """
    created: list[str] = []
    accounts = app.accounts
    try:
        org = await app.catalog.get_organization(ORGANIZATION)
    except NotFound:
        org = await accounts.create_organization(ORGANIZATION, "Demo organisation")
        created.append(f"organisation {ORGANIZATION}")
    user_ids: dict[str, str] = {}
    for name, role in USERS.items():
        try:
            user = await app.catalog.get_user(name)
        except NotFound:
            user = await accounts.create_user(name, display_name=f"Demo {name}")
            created.append(f"user {name}")
        user_ids[name] = user.id
        if role is not None:
            memberships = await app.catalog.memberships_of(user.id)
            if not any(m.organization_id == org.id and m.role is role for m in memberships):
                await accounts.add_member(org.id, user.id, role)
                created.append(f"membership {name}={role}")
    if await app.catalog.get_policy(org.id) is None:
        await app.catalog.set_policy(org.id, DEMO_POLICY)
        created.append("download policy")

    owner = await accounts.principal_for(user_ids["owner"])
    datasets: dict[str, Dataset] = {}
    for sample in SAMPLES:
        try:
            found = await app.catalog.find_dataset(org.id, sample.slug)
        except NotFound:
            pass
        else:
            datasets[sample.slug] = found
            if found.status is DatasetStatus.ANALYZING:
                # The last run stopped before its analysis ended: finish it in the background.
                app.insight.schedule(found.id, found.version)
            continue
        facts = DatasetFacts(
            organization=org.id,
            filename=sample.filename,
            format=sample.format,
            slug=sample.slug,
            title=sample.title,
            description=sample.description,
            visibility=sample.visibility,
            tags=sample.tags,
            license=sample.license,
        )
        datasets[sample.slug] = await app.datasets.publish(
            owner, facts, _sample_bytes(sample.filename)
        )
        created.append(f"dataset {sample.slug}")

    path = data_dir / KEYS_FILE
    stored = _read_keys(path)
    keys: dict[str, str] = {}
    for name, user_id in user_ids.items():
        if await _valid_key(app, stored.get(name), user_id):
            keys[name] = stored[name]
            continue
        principal = await accounts.principal_for(user_id)
        made = await accounts.create_api_key(principal, KEY_NAME, KEY_SCOPES[name])
        keys[name] = made.plaintext
        created.append(f"API key for {name}")
    document = {"organization": ORGANIZATION, **keys}
    if stored != document or (path.stat().st_mode & 0o777) != 0o600:
        write_private(path, json.dumps(document, indent=2) + "\n")
    return DemoSeed(ORGANIZATION, keys, datasets, tuple(created))


def instructions(seed: DemoSeed, base_url: str, data_dir: Path) -> str:
    """The text printed once the demo server listens: keys and curl commands to try."""
    api = f"{base_url}/api/v1"
    owner, member, outsider = (seed.keys[name] for name in USERS)
    public = seed.datasets["penguins"].id
    shared = seed.datasets["airports"].id
    private = seed.datasets["penguins-raw"].id
    cars = seed.datasets["cars"].id
    keys_file = data_dir / KEYS_FILE

    def bearer(key: str) -> str:
        return f'-H "Authorization: Bearer {key}"'

    lines = [
        f"datadl demo: organisation '{seed.organization}' at {base_url}",
        f"  users: owner (admin), member, outsider (no organisation); their API keys are in "
        f"{keys_file} (mode 0600)",
        f"  owner    {owner}",
        f"  member   {member}",
        f"  outsider {outsider}",
        "  policy: each user may download 5 MB (100 downloads) a day, 120 requests a minute",
        "  "
        + (
            "added: " + ", ".join(seed.created)
            if seed.created
            else "found from an earlier start: nothing was added, every key above still works"
        ),
        "",
        "Try:",
        f"  curl {base_url}/healthz",
        "  # every dataset the owner may see (outsider: only the public ones)",
        f"  curl {bearer(owner)} {api}/datasets",
        f"  curl {bearer(outsider)} {api}/datasets",
        "  # a public dataset, no key needed",
        f"  curl -OJ {api}/datasets/{public}/download",
        "  # the first 100 bytes only (206 Partial Content)",
        f"  curl -r 0-99 {bearer(member)} {api}/datasets/{shared}/download",
        "  # an organisation dataset converted to CSV; the outsider gets 404",
        f'  curl {bearer(member)} "{api}/datasets/{cars}/download?format=csv"',
        f'  curl -i {bearer(outsider)} "{api}/datasets/{cars}/download"',
        "  # a private dataset: only its owner (and organisation admins) see it",
        f"  curl {bearer(owner)} {api}/datasets/{private}",
        f"  curl -i {bearer(member)} {api}/datasets/{private}",
    ]
    return "\n".join(lines)
