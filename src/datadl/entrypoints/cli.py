"""The ``datadl`` command: the server, administration, migrations and housekeeping jobs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import attrs

from datadl.domain.errors import DatadlError
from datadl.settings import (
    MISSING_SIGNING_KEYS,
    ConfigError,
    Settings,
    encode_signing_keys,
    generate_signing_key,
)

if TYPE_CHECKING:
    from datadl.adapters.sql import SqlDatabase
    from datadl.domain.access import Principal
    from datadl.domain.model import ApiKey, Dataset
    from datadl.wiring import Datadl

#: Bytes read from disk per chunk when publishing a file.
PUBLISH_CHUNK = 1024 * 1024
#: Seconds that open connections get to finish when the server is told to stop.
SHUTDOWN_TIMEOUT = 10.0


def make_data_dir(path: Path) -> None:
    """Create the data folder readable by its owner only; an existing folder is left as is.

    It holds the SQLite database (API key hashes, the audit trail) and the stored files.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


class SchemaBehind(RuntimeError):
    """The database schema is older than this version of datadl expects."""


class CliError(Exception):
    """A mistake the user can fix: printed as one line on stderr, exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# --- database ------------------------------------------------------------------------------


async def _database(settings: Settings) -> SqlDatabase:
    from datadl.adapters.sql import SqlDatabase

    return SqlDatabase.from_url(settings.effective_database_url, schema=settings.database_schema)


def _in_memory(settings: Settings) -> bool:
    from datadl.container import scheme

    return settings.database_url is not None and scheme(settings.database_url) == "memory"


async def ensure_schema_current(settings: Settings) -> None:
    """Refuse to run against a database whose schema is behind; say how to fix it."""
    if settings.database_url is None and not (settings.data_dir / "datadl.db").exists():
        raise SchemaBehind(
            f"there is no database in {settings.data_dir}; run 'datadl db upgrade' "
            "(or start 'datadl serve' once) to create it"
        )
    db = await _database(settings)
    try:
        if not await db.is_current():
            current = await db.current()
            raise SchemaBehind(
                f"the database schema is at {current or 'nothing'} but this datadl needs "
                f"{await db.head()}; run 'datadl db upgrade' first"
            )
    finally:
        await db.dispose()


async def prepare_database(settings: Settings) -> str | None:
    """Make the database ready for a server: what ``serve`` does before it listens.

    The embedded default (a SQLite file in the data directory, used when no database URL
    is configured) belongs to datadl, so it is created and migrated here. A database
    configured by URL belongs to its operator: it is only checked, and a schema that is
    behind raises ``SchemaBehind`` naming ``datadl db upgrade``. Returns a line saying
    what was migrated, if anything was.
    """
    if _in_memory(settings):
        return None
    if settings.database_url is not None:
        await ensure_schema_current(settings)
        return None
    make_data_dir(settings.data_dir)
    db = await _database(settings)
    try:
        before = await db.current()
        if await db.is_current():
            return None
        await db.upgrade()
        after = await db.current()
    finally:
        await db.dispose()
    return f"database migrated: {before or 'empty'} -> {after}"


async def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    if settings.database_url is None:
        make_data_dir(settings.data_dir)
    db = await _database(settings)
    try:
        before = await db.current()
        await db.upgrade()
        after = await db.current()
    finally:
        await db.dispose()
    print(f"database upgraded: {before or 'empty'} -> {after}")
    return 0


async def _db_current(settings: Settings, args: argparse.Namespace) -> int:
    db = await _database(settings)
    try:
        current, head = await db.current(), await db.head()
    finally:
        await db.dispose()
    state = "up to date" if current == head else f"behind (head is {head})"
    print(f"{current or 'empty'}: {state}")
    return 0 if current == head else 1


# --- the container -------------------------------------------------------------------------


async def _close(container: Any) -> None:
    """Stop background analyses, then dispose what the container opened (engines, clients)."""
    app = container.app()
    await app.insight.aclose()
    failures = []
    for adapter in (app.audit_log, app.usage, app.cache):
        close = getattr(adapter, "aclose", None)
        if close is None:
            continue
        try:
            await close()
        except Exception as exc:
            # The next adapter and the database still get closed; the failure is told.
            failures.append(exc)
            pending = getattr(adapter, "pending", None)
            lost = f" ({pending} download records not saved)" if pending else ""
            print(f"datadl: closing {type(adapter).__name__} failed{lost}: {exc}", file=sys.stderr)
    if container.config.database_url() not in (None, "memory://"):
        await container.database().dispose()
    if failures:
        raise failures[0]


@contextlib.asynccontextmanager
async def _opened(settings: Settings) -> AsyncIterator[Datadl]:
    """The services over the configured adapters, once the schema is known to be current."""
    from datadl.container import build_container

    if not _in_memory(settings):
        await ensure_schema_current(settings)
    container = build_container(settings)
    try:
        yield container.app()
    finally:
        await _close(container)


async def _cleanup(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as app:
        report = await app.cleanup.run()
    print(
        f"removed: {report.datasets} deleted datasets, {report.versions} old versions, "
        f"{report.files} files, {report.tokens} expired tokens, "
        f"{report.audit_records} audit records past retention, "
        f"{report.usage.reservations} stale reservations, {report.usage.counters} old counters"
    )
    return 0


async def _verify(settings: Settings, args: argparse.Namespace) -> int:
    counts: dict[str, int] = {}
    async with _opened(settings) as app:
        async for result in app.integrity.verify():
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
            if result.outcome != "ok":
                print(f"{result.dataset_id} v{result.version}: {result.outcome} {result.detail}")
    print(", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no files")
    return 0 if set(counts) <= {"ok"} else 1


async def operator_principal(app: Datadl) -> Principal:
    """The principal the admin commands act as: an administrator of every organisation.

    It belongs to the command line alone (whoever can run it can read the database
    anyway); no HTTP request can ever carry it, and it has no user, so it cannot own a
    dataset or an API key: those commands act as the user they name.
    """
    from datadl.domain.access import CredentialKind, Principal
    from datadl.domain.model import Membership, Role

    organizations = await app.catalog.list_organizations()
    return Principal(
        user_id=None,
        memberships=tuple(Membership(o.id, "operator", Role.ADMIN) for o in organizations),
        credential=CredentialKind.INTERNAL,
        scopes=None,
        name="operator",
    )


# --- output --------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, text: str, data: Any) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=False))
    else:
        print(text)


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _key_json(key: ApiKey, user: str) -> dict[str, Any]:
    return {
        "id": key.id,
        "user": user,
        "name": key.name,
        "scopes": sorted(key.scopes),
        "created_at": _time(key.created_at),
        "expires_at": _time(key.expires_at),
        "revoked_at": _time(key.revoked_at),
    }


async def _dataset_json(app: Datadl, dataset: Dataset) -> dict[str, Any]:
    """The dataset as the HTTP API renders it (API.md's Dataset object)."""
    from datadl.entrypoints.web.render import dataset_json

    org = await app.catalog.get_organization(dataset.organization_id)
    owner = await app.catalog.get_user(dataset.owner_id)
    return dataset_json(dataset, organization=org.slug, owner=owner.name)


# --- admin commands ------------------------------------------------------------------------


async def _keys_generate(settings: Settings | None, args: argparse.Namespace) -> int:
    key_id = args.id or "k" + datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    value = encode_signing_keys([generate_signing_key(key_id)])
    _emit(args, value, {"key_id": key_id, "signing_keys": value})
    return 0


async def _org_create(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as app:
        org = await app.accounts.create_organization(args.name, args.title)
    data = {"id": org.id, "slug": org.slug, "title": org.title, "created_at": _time(org.created_at)}
    _emit(args, f"created organisation {org.slug} ({org.id})", data)
    return 0


async def _org_list(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as app:
        orgs = await app.catalog.list_organizations()
    data = [{"id": o.id, "slug": o.slug, "title": o.title} for o in orgs]
    _emit(args, "\n".join(f"{o.slug}\t{o.id}\t{o.title}" for o in orgs), data)
    return 0


async def _org_add_member(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as app:
        await app.accounts.add_member(args.org, args.user, args.role)
    data = {"organization": args.org, "user": args.user, "role": args.role}
    _emit(args, f"{args.user} is now {args.role} of {args.org}", data)
    return 0


async def _org_remove_member(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as app:
        await app.accounts.remove_member(args.org, args.user)
    data = {"organization": args.org, "user": args.user, "removed": True}
    _emit(args, f"{args.user} is no longer a member of {args.org}", data)
    return 0


async def _user_create(settings: Settings, args: argparse.Namespace) -> int:
    if args.role is not None and args.org is None:
        raise CliError("--role needs --org: the role is the user's role in that organisation", 2)
    async with _opened(settings) as app:
        if args.org is not None:
            # Look the organisation up first, so a typo creates no half-made user.
            await app.catalog.get_organization(args.org)
        user = await app.accounts.create_user(args.name, args.display_name, args.email)
        role = args.role or "member"
        if args.org is not None:
            await app.accounts.add_member(args.org, user.id, role)
    data = {
        "id": user.id,
        "name": user.name,
        "display_name": user.display_name,
        "email": user.email,
        "organization": args.org,
        "role": role if args.org else None,
    }
    where = f", {role} of {args.org}" if args.org else ""
    _emit(args, f"created user {user.name} ({user.id}){where}", data)
    return 0


async def _user_list(settings: Settings, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    async with _opened(settings) as app:
        orgs = {o.id: o.slug for o in await app.catalog.list_organizations()}
        for user in await app.catalog.list_users():
            roles = {
                orgs.get(m.organization_id, m.organization_id): str(m.role)
                for m in await app.catalog.memberships_of(user.id)
            }
            rows.append({"id": user.id, "name": user.name, "organizations": roles})
    text = "\n".join(
        f"{r['name']}\t{r['id']}\t"
        + (", ".join(f"{o}:{role}" for o, role in r["organizations"].items()) or "-")
        for r in rows
    )
    _emit(args, text, rows)
    return 0


def _scopes(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


async def _apikey_create(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as app:
        principal = await app.accounts.principal_for(args.user)
        made = await app.accounts.create_api_key(
            principal, args.name, _scopes(args.scopes), expires_in=args.expires_in
        )
    key = made.key
    if getattr(args, "json", False):
        print(json.dumps({**_key_json(key, args.user), "key": made.plaintext}, indent=2))
    else:
        print(made.plaintext)
        expiry = f"expires {_time(key.expires_at)}" if key.expires_at else "does not expire"
        print(
            f"API key {key.id} for {args.user} ({', '.join(sorted(key.scopes))}), {expiry}. "
            "It is shown this once: store it now.",
            file=sys.stderr,
        )
    return 0


async def _apikey_list(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as app:
        keys = await app.accounts.list_api_keys(await app.accounts.principal_for(args.user))
    data = [_key_json(k, args.user) for k in keys]
    text = "\n".join(
        f"{k['id']}\t{k['name']}\t{','.join(k['scopes'])}\t"
        + (
            "revoked"
            if k["revoked_at"]
            else f"expires {k['expires_at']}"
            if k["expires_at"]
            else "active"
        )
        for k in data
    )
    _emit(args, text, data)
    return 0


async def _apikey_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from datadl.domain import apikeys

    parts = apikeys.split_key(args.id)
    key_id = parts[0] if parts else args.id
    async with _opened(settings) as app:
        key = await app.catalog.get_api_key(key_id)
        owner = await app.accounts.principal_for(key.user_id)
        await app.accounts.revoke_api_key(owner, key.id)
    _emit(args, f"revoked API key {key.id}", {"id": key.id, "revoked": True})
    return 0


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, PUBLISH_CHUNK):
            yield chunk


async def _dataset_publish(settings: Settings, args: argparse.Namespace) -> int:
    from datadl.domain.model import FileFormat, Visibility
    from datadl.services.datasets import DatasetFacts

    path: Path = args.path
    if not await asyncio.to_thread(path.is_file):
        raise CliError(f"{path} is not a readable file")
    facts = DatasetFacts(
        organization=args.org,
        filename=path.name,
        format=FileFormat(args.format) if args.format else None,
        slug=args.slug,
        title=args.title,
        description=args.description or "",
        visibility=Visibility(args.visibility),
        tags=tuple(args.tag or ()),
        license=args.license,
    )
    async with _opened(settings) as app:
        owner = await app.accounts.principal_for(args.owner)
        dataset = await app.datasets.publish(owner, facts, _file_chunks(path))
        if app.insight.pending:
            # Analyse now, so that the dataset is ready (or failed, with a reason) on exit.
            print(f"datadl: analysing {path.name}...", file=sys.stderr, flush=True)
            await app.insight.drain()
            dataset = await app.catalog.get_dataset(dataset.id)
        data = await _dataset_json(app, dataset)
    _emit(
        args,
        f"published {data['organization']}/{dataset.slug} ({dataset.id}): "
        f"{dataset.file.size_bytes} bytes of {dataset.file.format}, {dataset.visibility}",
        data,
    )
    return 0


async def _dataset_list(settings: Settings, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    async with _opened(settings) as app:
        operator = await operator_principal(app)
        cursor = None
        while True:
            page = await app.datasets.list(
                operator, organization=args.org, limit=100, cursor=cursor
            )
            rows.extend([await _dataset_json(app, d) for d in page.items])
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    text = "\n".join(
        f"{r['id']}\t{r['organization']}/{r['slug']}\t{r['visibility']}\tv{r['version']}\t"
        f"{r['file']['size_bytes']}\t{r['title']}"
        for r in rows
    )
    _emit(args, text or "no datasets", rows)
    return 0


async def _dataset_delete(settings: Settings, args: argparse.Namespace) -> int:
    async with _opened(settings) as app:
        operator = await operator_principal(app)
        await app.datasets.delete(operator, args.dataset_id)
        data = await _dataset_json(app, await app.catalog.get_dataset(args.dataset_id))
    _emit(
        args,
        f"deleted {data['organization']}/{data['slug']} ({data['id']}); "
        "its files go with the next 'datadl cleanup'",
        data,
    )
    return 0


async def _json_file(source: str, what: str, *, allow_null: bool = False) -> dict[str, Any]:
    """The JSON object in ``source`` ('-' is stdin); ``null`` is ``{}`` if ``allow_null``."""
    try:
        if str(source) == "-":
            text = await asyncio.to_thread(sys.stdin.read)
        else:
            text = await asyncio.to_thread(Path(source).read_text, "utf-8")
        body = json.loads(text)
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CliError(f"{source} is not valid JSON: {exc}") from None
    if body is None and allow_null:
        return {}
    if not isinstance(body, dict):
        raise CliError(f"{source} must hold a JSON object ({what})")
    return body


def _policy_target(args: argparse.Namespace) -> None:
    """Exactly one of ORG and --dataset: the organisation's policy or a dataset's own."""
    if (args.org is None) == (args.dataset is None):
        raise CliError("name an organisation, or a dataset with --dataset (not both)", 2)


async def _policy_show(settings: Settings, args: argparse.Namespace) -> int:
    from datadl.entrypoints.web.render import policy_json

    _policy_target(args)
    async with _opened(settings) as app:
        if args.dataset is not None:
            # The body of GET /api/v1/datasets/{id}/download-policy.
            operator = await operator_principal(app)
            own, effective = await app.datasets.dataset_policy(operator, args.dataset)
            body = policy_json(own) if own is not None else {}
            body["effective"] = policy_json(effective)
        else:
            operator = await operator_principal(app)
            body = policy_json(await app.datasets.organization_policy(operator, args.org))
    print(json.dumps(body, indent=2))
    return 0


async def _policy_set(settings: Settings, args: argparse.Namespace) -> int:
    # The HTTP API's own readers of policy bodies, so both accept the same JSON.
    from datadl.entrypoints.web.render import override_from, policy_from, policy_json

    _policy_target(args)
    if args.dataset is not None:
        override = override_from(
            await _json_file(args.file, "a dataset's policy, or null", allow_null=True)
        )
        async with _opened(settings) as app:
            operator = await operator_principal(app)
            effective = await app.datasets.set_dataset_policy(operator, args.dataset, override)
        # The body of PUT /api/v1/datasets/{id}/download-policy.
        body = policy_json(override) if override is not None else {}
        body["effective"] = policy_json(effective)
        done = "replaced" if override is not None else "cleared"
        _emit(args, f"download policy of dataset {args.dataset} {done}", body)
        return 0
    policy = policy_from(await _json_file(args.file, "a DownloadPolicy"))
    async with _opened(settings) as app:
        operator = await operator_principal(app)
        stored = await app.datasets.set_organization_policy(operator, args.org, policy)
    _emit(args, f"download policy of {args.org} replaced", policy_json(stored))
    return 0


# --- the server ----------------------------------------------------------------------------


def _shown_host(host: str) -> str:
    if host in ("", "0.0.0.0"):  # noqa: S104 - naming the wildcard, not binding to it
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def _stop_on_signals(stopping: asyncio.Event) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into ``stopping``: work under way finishes, then all closes."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal() -> None:
        print("datadl: stopping", file=sys.stderr, flush=True)
        stopping.set()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal)
    try:
        yield
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    demo: bool = False,
    base_url: str | None = None,
    cleanup_interval: float | None = 3600.0,
    stop: Callable[[], Awaitable[object]] | None = None,
) -> int:
    """Run the web server until SIGINT or SIGTERM (or until ``stop()`` returns).

    Refuses to start without a signing key unless ``demo`` (which keeps generated keys
    in the data directory); prepares the database (see ``prepare_database``); seeds the
    demo when asked; prints the address once it listens (port 0 picks a free one).
    ``cleanup_interval`` (seconds; None or 0 for never) runs the cleanup job in process.
    On the way out, open requests get ``SHUTDOWN_TIMEOUT`` seconds and background
    analyses are cancelled (a later metadata request starts them again).
    """
    from aiohttp import web

    from datadl.container import build_container
    from datadl.entrypoints.demo import demo_signing_keys, instructions, seed_demo

    if demo and not settings.signing_keys:
        make_data_dir(settings.data_dir)
        signing_keys, cursor_key = demo_signing_keys(settings.data_dir)
        settings = attrs.evolve(
            settings, signing_keys=signing_keys, cursor_key=settings.cursor_key or cursor_key
        )
    if not settings.signing_keys:
        raise CliError(MISSING_SIGNING_KEYS, status=2)
    try:
        from datadl.entrypoints.web import RUNNER_OPTIONS, create_app
    except ImportError as exc:
        raise CliError(f"the web server is not available in this installation: {exc}") from None
    stopping = asyncio.Event()
    # Signals are caught from here on, so a stop during migration or seeding is orderly.
    with _stop_on_signals(stopping) if stop is None else contextlib.nullcontext():
        migrated = await prepare_database(settings)
        if migrated:
            print(f"datadl: {migrated}", file=sys.stderr, flush=True)
        container = build_container(settings)
        try:
            app = container.app()
            seed = await seed_demo(app, settings.data_dir) if demo else None
            web_app = create_app(
                app, base_url=base_url, settings=settings, cleanup_interval=cleanup_interval or None
            )
            runner = web.AppRunner(web_app, shutdown_timeout=SHUTDOWN_TIMEOUT, **RUNNER_OPTIONS)
            await runner.setup()
            try:
                site = web.TCPSite(runner, host, port)
                try:
                    await site.start()
                except OSError as exc:
                    raise CliError(
                        f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                    ) from None
                bound = runner.addresses[0][1] if runner.addresses else port
                shown = (base_url or f"http://{_shown_host(host)}:{bound}").rstrip("/")
                print(f"datadl serving on {shown} (data in {settings.data_dir})", flush=True)
                if seed is not None:
                    print(instructions(seed, shown, settings.data_dir), flush=True)
                if stop is not None:
                    await stop()
                else:
                    await stopping.wait()
            finally:
                await runner.cleanup()
        finally:
            await _close(container)
    return 0


async def _serve(settings: Settings, args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    return await serve(
        settings,
        host=args.host,
        port=args.port,
        demo=args.demo,
        base_url=args.base_url,
        cleanup_interval=args.cleanup_every,
    )


class _CurrentStderr(io.TextIOBase):
    """Whatever ``sys.stderr`` is when a line is written (tests swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _configure_logging(level: str) -> None:
    """JSON log lines on stderr, so that stdout carries only what a command prints."""
    try:
        from datadl.entrypoints.web import configure_logging
    except ImportError:
        return
    configure_logging(stream=cast(TextIO, _CurrentStderr()), level=level)


# --- the command line ----------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name (the later one wins)."""
    common = argparse.ArgumentParser(add_help=False)
    suppress = argparse.SUPPRESS
    common.add_argument(
        "--config", type=Path, default=suppress, help="a TOML file with a [datadl] table"
    )
    common.add_argument(
        "--data-dir",
        type=Path,
        default=suppress,
        help="where the embedded defaults keep their files (default ./datadl-data)",
    )
    common.add_argument(
        "--database-url",
        default=suppress,
        help="sqlite:///file.db or postgresql://user@host/db (default: a SQLite file in the "
        "data dir)",
    )
    common.add_argument(
        "--json", action="store_true", default=suppress, help="print JSON instead of text"
    )
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="datadl",
        description="Run the datadl server, administer it, migrate its database, run its jobs.",
        epilog="'datadl serve --demo' starts a demo with users, keys and sample datasets.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        group: Any, name: str, handler: Any, help_text: str, **kw: Any
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=help_text, description=help_text, parents=[common], **kw
        )
        sub.set_defaults(handler=handler)
        return sub

    def group(name: str, help_text: str) -> Any:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        return sub.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")

    serve_cmd = command(commands, "serve", _serve, "run the HTTP server")
    serve_cmd.add_argument("--demo", action="store_true", help="seed and run the demo")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve_cmd.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    serve_cmd.add_argument(
        "--base-url", help="the public URL of the server, if a proxy stands in front"
    )
    serve_cmd.add_argument(
        "--cleanup-every",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="run the cleanup job in the server this often (0: never; default 3600)",
    )
    serve_cmd.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="JSON log lines on stderr from this level up (default info)",
    )

    db = group("db", "database schema migrations")
    command(db, "upgrade", _db_upgrade, "migrate the schema to this version's head")
    command(db, "current", _db_current, "show the schema revision; exit 1 if behind")
    command(commands, "cleanup", _cleanup, "remove expired and deleted things (run on a schedule)")
    command(commands, "verify", _verify, "re-hash every stored file; exit 1 on any mismatch")

    keys = group("keys", "signing keys for download tokens")
    generate = command(keys, "generate", _keys_generate, "print a fresh signing key")
    generate.add_argument("--id", help="the key id (default: k and the current UTC time)")

    org = group("org", "organisations")
    create = command(org, "create", _org_create, "create an organisation")
    create.add_argument("name", help="the organisation's slug, e.g. acme")
    create.add_argument("--title", help="a display title (default: the slug)")
    command(org, "list", _org_list, "list the organisations")
    add = command(org, "add-member", _org_add_member, "add a user to an organisation, or re-role")
    add.add_argument("org")
    add.add_argument("user")
    add.add_argument("--role", choices=("member", "admin"), default="member")
    remove = command(org, "remove-member", _org_remove_member, "remove a user from an organisation")
    remove.add_argument("org")
    remove.add_argument("user")

    user = group("user", "users")
    create = command(user, "create", _user_create, "create a user")
    create.add_argument("name")
    create.add_argument("--display-name")
    create.add_argument("--email")
    create.add_argument("--org", help="make the user a member of this organisation")
    create.add_argument("--role", choices=("member", "admin"), help="role in --org (member)")
    command(user, "list", _user_list, "list the users and their organisations")

    apikey = group("apikey", "API keys")
    create = command(apikey, "create", _apikey_create, "create an API key; printed once")
    create.add_argument("user", help="the user the key acts as")
    create.add_argument("--name", default="cli", help="what the key is for (default: cli)")
    create.add_argument(
        "--scopes", default="read,download", help="comma-separated: read,download,publish,admin"
    )
    create.add_argument("--expires-in", type=int, metavar="SECONDS", help="lifetime in seconds")
    listing = command(apikey, "list", _apikey_list, "list a user's API keys (never the secrets)")
    listing.add_argument("user")
    revoke = command(apikey, "revoke", _apikey_revoke, "revoke an API key")
    revoke.add_argument("id", help="the key id (or the whole key)")

    dataset = group("dataset", "datasets")
    publish = command(dataset, "publish", _dataset_publish, "publish a file from disk")
    publish.add_argument("path", type=Path)
    publish.add_argument("--org", required=True, help="the organisation publishing it")
    publish.add_argument("--owner", required=True, help="the user who owns it (a member)")
    publish.add_argument("--slug")
    publish.add_argument("--title")
    publish.add_argument("--description")
    publish.add_argument(
        "--visibility", choices=("private", "organization", "public"), default="private"
    )
    publish.add_argument(
        "--format",
        choices=("csv", "tsv", "json", "jsonl", "parquet", "xlsx"),
        help="the file's format (default: from its name and content)",
    )
    publish.add_argument("--tag", action="append", help="a tag (repeat for more)")
    publish.add_argument("--license")
    listing = command(dataset, "list", _dataset_list, "list every dataset (all visibilities)")
    listing.add_argument("--org", help="only this organisation's")
    delete = command(dataset, "delete", _dataset_delete, "delete a dataset (files go at cleanup)")
    delete.add_argument("dataset_id")

    policy = group("policy", "download policies of organisations and datasets")
    show = command(
        policy, "show", _policy_show, "print an organisation's or a dataset's policy as JSON"
    )
    show.add_argument("org", nargs="?", help="the organisation (or give --dataset)")
    show.add_argument("--dataset", metavar="DATASET_ID", help="a dataset's own policy instead")
    put = command(policy, "set", _policy_set, "replace an organisation's or a dataset's policy")
    put.add_argument("org", nargs="?", help="the organisation (or give --dataset)")
    put.add_argument("--dataset", metavar="DATASET_ID", help="a dataset's own policy instead")
    put.add_argument(
        "--file",
        required=True,
        help="a JSON DownloadPolicy as in API.md ('-' reads stdin; with --dataset, "
        "the fields to tighten, or null to clear)",
    )
    return parser


def _database_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("sqlalchemy", "asyncpg", "sqlite3", "aiosqlite"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0 on success; 1 when a command failed (datadl refused it or something was not found);
    2 for usage, configuration and schema errors, and a missing signing key.
    """
    import structlog

    args = _parser().parse_args(argv)
    handler = args.handler
    # Logging is configured for this command only, so that calling main() from other
    # code (or a test) leaves that code's own logging as it was.
    saved_logging = structlog.get_config()
    try:
        settings = None
        if handler is not _keys_generate:
            settings = Settings.load(
                file=getattr(args, "config", None),
                data_dir=getattr(args, "data_dir", None),
                database_url=getattr(args, "database_url", None),
            )
        if handler is not _serve:
            _configure_logging("warning")
        return int(asyncio.run(handler(settings, args)))
    except ConfigError as exc:
        print(f"datadl: configuration error: {exc}", file=sys.stderr)
        return 2
    except (SchemaBehind, CliError) as exc:
        print(f"datadl: {exc}", file=sys.stderr)
        return getattr(exc, "status", 2)
    except DatadlError as exc:
        print(f"datadl: {exc.message} {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not _database_error(exc):
            raise
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"datadl: database error: {detail}", file=sys.stderr)
        return 1
    finally:
        structlog.configure(**saved_logging)


if __name__ == "__main__":
    sys.exit(main())
