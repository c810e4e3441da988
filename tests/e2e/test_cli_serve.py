"""'datadl serve': signing keys, database preparation, the demo world and the running server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from datadl.container import build_container
from datadl.domain.model import Role, Visibility
from datadl.entrypoints import demo
from datadl.entrypoints.cli import ensure_schema_current, main, prepare_database, serve
from datadl.samples import path as sample_path
from datadl.settings import Settings
from datadl.wiring import Datadl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[tuple[Settings, Datadl]]:
    """A migrated embedded-default data dir and the services over it."""
    settings = Settings.load(environ={}, data_dir=tmp_path)
    await prepare_database(settings)
    container = build_container(settings)
    try:
        yield settings, container.app()
    finally:
        await container.app().insight.aclose()
        await container.database().dispose()


async def test_demo_seeding_creates_the_demo_world(opened: tuple[Settings, Datadl]) -> None:
    """Seeding makes the organisation, three users with working keys, a quota and the samples."""
    settings, app = opened
    seed = await demo.seed_demo(app, settings.data_dir)

    org = await app.catalog.get_organization("demo")
    users = {u.name: u for u in await app.catalog.list_users()}
    assert set(users) == {"owner", "member", "outsider"}
    roles = {
        name: {m.organization_id: m.role for m in await app.catalog.memberships_of(u.id)}
        for name, u in users.items()
    }
    assert roles == {"owner": {org.id: Role.ADMIN}, "member": {org.id: Role.MEMBER}, "outsider": {}}
    policy = await app.catalog.get_policy(org.id)
    assert policy is not None
    assert policy.user_quota is not None
    assert policy.user_quota.bytes is not None
    assert policy.user_quota.bytes <= 10_000_000

    slugs = {s.slug: s for s in demo.SAMPLES}
    assert set(seed.datasets) == set(slugs)
    assert {s.filename for s in demo.SAMPLES} == {
        "penguins.csv",
        "penguins-raw.csv",
        "seattle-weather.csv",
        "airports.csv",
        "cars.json",
    }
    for slug, dataset in seed.datasets.items():
        source = sample_path(slugs[slug].filename).read_bytes()
        assert dataset.file.sha256 == hashlib.sha256(source).hexdigest()
        assert dataset.organization_id == org.id
        assert dataset.visibility is slugs[slug].visibility
    assert {d.visibility for d in seed.datasets.values()} == set(Visibility)

    keys_file = settings.data_dir / "demo-keys.json"
    assert keys_file.stat().st_mode & 0o777 == 0o600
    stored = json.loads(keys_file.read_text())
    assert stored == {"organization": "demo", **seed.keys}
    assert set(stored) == {"organization", "owner", "member", "outsider"}
    for name in ("owner", "member", "outsider"):
        principal = await app.accounts.authenticate_api_key(stored[name])
        assert principal.user_id == users[name].id
        assert len(await app.accounts.list_api_keys(principal)) == 1

    outsider = await app.accounts.authenticate_api_key(stored["outsider"])
    seen = await app.datasets.list(outsider)
    assert {d.slug for d in seen.items} == {
        s.slug for s in demo.SAMPLES if s.visibility is Visibility.PUBLIC
    }
    member = await app.accounts.authenticate_api_key(stored["member"])
    assert "penguins-raw" not in {d.slug for d in (await app.datasets.list(member)).items}


async def test_seeding_again_after_a_restart_changes_nothing(
    opened: tuple[Settings, Datadl],
) -> None:
    """A second run on the same data dir adds nothing, keeps ids and keys, and keys still work."""
    settings, app = opened
    first = await demo.seed_demo(app, settings.data_dir)
    keys_file = settings.data_dir / "demo-keys.json"
    before = keys_file.read_bytes(), keys_file.stat().st_mtime_ns
    assert first.created

    container = build_container(settings)
    again = container.app()
    try:
        second = await demo.seed_demo(again, settings.data_dir)
        assert second.created == ()
        assert dict(second.keys) == dict(first.keys)
        assert {s: d.id for s, d in second.datasets.items()} == {
            s: d.id for s, d in first.datasets.items()
        }
        assert (keys_file.read_bytes(), keys_file.stat().st_mtime_ns) == before
        assert len(await again.catalog.list_users()) == 3
        assert len(await again.catalog.list_organizations()) == 1
        owner = await again.accounts.authenticate_api_key(second.keys["owner"])
        page = await again.datasets.list(owner, limit=100)
        assert len(page.items) == len(demo.SAMPLES)
        for name in ("owner", "member", "outsider"):
            principal = await again.accounts.authenticate_api_key(second.keys[name])
            assert len(await again.accounts.list_api_keys(principal)) == 1
    finally:
        await again.insight.aclose()
        await container.database().dispose()


async def test_seeding_replaces_only_a_key_that_no_longer_works(
    opened: tuple[Settings, Datadl],
) -> None:
    """A key lost from demo-keys.json is replaced; the others are kept as they were."""
    settings, app = opened
    first = await demo.seed_demo(app, settings.data_dir)
    keys_file = settings.data_dir / "demo-keys.json"
    stored = json.loads(keys_file.read_text())
    stored["member"] = "ddl_garbage"
    keys_file.write_text(json.dumps(stored))
    keys_file.chmod(0o644)

    second = await demo.seed_demo(app, settings.data_dir)
    assert second.created == ("API key for member",)
    assert second.keys["owner"] == first.keys["owner"]
    assert second.keys["member"] != first.keys["member"]
    assert keys_file.stat().st_mode & 0o777 == 0o600
    assert json.loads(keys_file.read_text())["member"] == second.keys["member"]
    await app.accounts.authenticate_api_key(second.keys["member"])


def test_demo_signing_keys_are_made_once_and_kept_private(tmp_path: Path) -> None:
    """The demo's signing keys are generated on first use, stored mode 0600, then reused."""
    keys, cursor = demo.demo_signing_keys(tmp_path)
    secrets_file = tmp_path / demo.SECRETS_FILE
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    again_keys, again_cursor = demo.demo_signing_keys(tmp_path)
    assert [(k.key_id, k.secret) for k in again_keys] == [(k.key_id, k.secret) for k in keys]
    assert again_cursor == cursor
    assert keys[0].secret.hex() not in secrets_file.read_text()  # stored encoded, not hex
    assert demo.demo_signing_keys(tmp_path / "other")[1] != cursor


def test_missing_signing_key_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a signing key, non-demo 'serve' exits 2 saying how to configure and make one."""
    monkeypatch.delenv("DATADL_SIGNING_KEYS", raising=False)
    data_dir = tmp_path / "data"
    assert main(["serve", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "DATADL_SIGNING_KEYS" in err
    assert "signing_keys" in err
    assert "datadl keys generate" in err
    assert "Traceback" not in err
    assert not data_dir.exists()  # refused before touching anything


def test_keys_generate_prints_a_usable_signing_key(capsys: pytest.CaptureFixture[str]) -> None:
    """'datadl keys generate' prints a value DATADL_SIGNING_KEYS accepts, fresh each time."""
    assert main(["keys", "generate", "--id", "k7"]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["keys", "generate", "--id", "k7"]) == 0
    second = capsys.readouterr().out.strip()
    assert first != second
    settings = Settings.load(environ={"DATADL_SIGNING_KEYS": first})
    assert [k.key_id for k in settings.signing_keys] == ["k7"]
    assert len(settings.signing_keys[0].secret) == 32


def _fake_web() -> types.ModuleType:
    """A stand-in for datadl.entrypoints.web: /healthz and a count of visible datasets."""
    module = types.ModuleType("datadl.entrypoints.web")

    def create_app(
        datadl_app: Datadl, *, base_url: str | None = None, **options: object
    ) -> web.Application:
        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "base_url": base_url})

        application = web.Application()
        application.router.add_get("/healthz", healthz)
        return application

    module.create_app = create_app  # type: ignore[attr-defined]
    module.RUNNER_OPTIONS = {}  # type: ignore[attr-defined]
    module.configure_logging = lambda **kwargs: None  # type: ignore[attr-defined]
    return module


async def test_serve_migrates_the_embedded_database_seeds_and_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'serve --demo' on a fresh dir migrates SQLite, seeds, listens on a free port, prints URLs."""
    monkeypatch.setitem(sys.modules, "datadl.entrypoints.web", _fake_web())
    settings = Settings.load(environ={}, data_dir=tmp_path / "data")
    answers: list[tuple[int, dict[str, str]]] = []

    async def exercise() -> None:
        out = capsys.readouterr().out
        url = out.split("datadl serving on ", 1)[1].split()[0]
        async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as resp:
            answers.append((resp.status, await resp.json()))
        keys = json.loads((tmp_path / "data" / "demo-keys.json").read_text())
        assert f"Authorization: Bearer {keys['owner']}" in out
        assert f"{url}/api/v1/datasets" in out
        assert "-r 0-99" in out

    assert await serve(settings, host="127.0.0.1", port=0, demo=True, stop=exercise) == 0
    assert answers == [(200, {"status": "ok", "base_url": None})]
    assert (tmp_path / "data" / "datadl.db").exists()
    await ensure_schema_current(settings)


def test_serve_refuses_an_external_database_that_is_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database configured by URL is never migrated by 'serve': it says to upgrade it."""
    monkeypatch.setitem(sys.modules, "datadl.entrypoints.web", _fake_web())
    url = f"sqlite:///{tmp_path / 'external.db'}"
    assert main(["serve", "--demo", "--data-dir", str(tmp_path), "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert "datadl db upgrade" in err
    assert main(["--database-url", url, "db", "current"]) == 1  # still unmigrated


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "served"


def _start(args: list[str], preamble: str = "") -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATADL_")}
    code = (
        f"{preamble}\nimport sys\nfrom datadl.entrypoints.cli import main\nsys.exit(main({args!r}))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _wait_for_url(process: subprocess.Popen[str], timeout: float = 60) -> tuple[str, list[str]]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if not ready:
            if process.poll() is not None:
                break
            continue
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("datadl serving on "):
            return line.split()[3], lines
    process.kill()
    _, err = process.communicate()
    pytest.fail(f"the server did not start: {''.join(lines)}{err}")


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes to end after the test, whatever happens."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_sigterm_stops_the_server_gracefully(
    data_dir: Path, stopped: list[subprocess.Popen[str]]
) -> None:
    """The served process answers, then exits 0 on SIGTERM after closing its listener."""
    fake = (
        "import sys\nfrom tests.e2e.test_cli_serve import _fake_web\n"
        "sys.modules['datadl.entrypoints.web'] = _fake_web()"
    )
    process = _start(["serve", "--demo", "--port", "0", "--data-dir", str(data_dir)], fake)
    stopped.append(process)
    url, _ = _wait_for_url(process)

    async def get() -> int:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as resp:
            return resp.status

    assert asyncio.run(get()) == 200
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopping" in err
    assert "Traceback" not in err


def _web_missing() -> str | None:
    try:
        from datadl.entrypoints.web import create_app  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


@pytest.mark.skipif(
    _web_missing() is not None,
    reason=f"datadl.entrypoints.web.create_app cannot be imported yet: {_web_missing()}",
)
def test_demo_server_answers_healthz_and_the_printed_listing(
    data_dir: Path, stopped: list[subprocess.Popen[str]]
) -> None:
    """'datadl serve --demo' in a subprocess answers /healthz and lists datasets for the owner."""
    process = _start(["serve", "--demo", "--port", "0", "--data-dir", str(data_dir)])
    stopped.append(process)
    url, _ = _wait_for_url(process)
    keys = json.loads((data_dir / "demo-keys.json").read_text())

    async def fetch() -> tuple[int, int, set[str], set[str]]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/healthz") as health:
                status = health.status
            headers = {"Authorization": f"Bearer {keys['owner']}"}
            async with session.get(f"{url}/api/v1/datasets", headers=headers) as listing:
                owner_slugs = {d["slug"] for d in (await listing.json())["items"]}
                listed = listing.status
            headers = {"Authorization": f"Bearer {keys['outsider']}"}
            async with session.get(f"{url}/api/v1/datasets", headers=headers) as listing:
                outsider_slugs = {d["slug"] for d in (await listing.json())["items"]}
        return status, listed, owner_slugs, outsider_slugs

    status, listed, owner_slugs, outsider_slugs = asyncio.run(fetch())
    assert (status, listed) == (200, 200)
    assert owner_slugs == {s.slug for s in demo.SAMPLES}
    assert outsider_slugs == {s.slug for s in demo.SAMPLES if s.visibility is Visibility.PUBLIC}
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    assert process.returncode == 0


def test_a_port_in_use_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """'serve' on a port another process holds exits 1 naming the address, no traceback."""
    import socket

    monkeypatch.setitem(sys.modules, "datadl.entrypoints.web", _fake_web())
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        status = main(["serve", "--demo", "--port", str(port), "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err
