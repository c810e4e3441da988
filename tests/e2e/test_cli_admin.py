"""The operator commands round-trip against a SQLite data dir, and fail in one line."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from datadl.container import build_container
from datadl.domain.errors import DatadlError
from datadl.entrypoints.cli import main
from datadl.samples import path as sample_path
from datadl.settings import Settings


class Cli:
    """Runs 'datadl' on one data dir and hands back (status, stdout, stderr)."""

    def __init__(self, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.data_dir = data_dir
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        status = main([*args, "--data-dir", str(self.data_dir)])
        out, err = self.capsys.readouterr()
        return status, out, err

    def ok(self, *args: str) -> str:
        status, out, err = self(*args)
        assert status == 0, err
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fails(self, *args: str, status: int = 1) -> str:
        got, out, err = self(*args)
        assert got == status, (out, err)
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
        return err


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    run = Cli(tmp_path, capsys)
    run.ok("db", "upgrade")
    return run


def _authenticate(data_dir: Path, key: str) -> str | None:
    """The name of the user the key authenticates as, or None if it does not."""

    async def check() -> str | None:
        container = build_container(Settings.load(environ={}, data_dir=data_dir))
        app = container.app()
        try:
            principal = await app.accounts.authenticate_api_key(key)
        except DatadlError:
            return None
        finally:
            await app.insight.aclose()
            await container.database().dispose()
        return principal.name

    return asyncio.run(check())


def test_organisations_users_and_members_round_trip(cli: Cli) -> None:
    """Created organisations and users are listed back with their roles."""
    org = cli.json("org", "create", "acme", "--title", "Acme Research")
    assert (org["slug"], org["title"]) == ("acme", "Acme Research")
    cli.ok("org", "create", "other")
    ada = cli.json("user", "create", "ada", "--org", "acme", "--role", "admin")
    assert (ada["name"], ada["organization"], ada["role"]) == ("ada", "acme", "admin")
    cli.ok("user", "create", "bob", "--email", "bob@example.org")
    assert "bob is now member of other" in cli.ok("org", "add-member", "other", "bob")

    assert {o["slug"] for o in cli.json("org", "list")} == {"acme", "other"}
    users = {u["name"]: u["organizations"] for u in cli.json("user", "list")}
    assert users == {"ada": {"acme": "admin"}, "bob": {"other": "member"}}
    assert "ada\t" in cli.ok("user", "list")


def test_api_keys_are_printed_once_authenticate_and_revoke(cli: Cli) -> None:
    """'apikey create' prints a working key on stdout alone; 'apikey revoke' ends it."""
    cli.ok("org", "create", "acme")
    cli.ok("user", "create", "olivia", "--org", "acme")
    status, out, err = cli("apikey", "create", "olivia", "--name", "ci", "--scopes", "read")
    assert status == 0
    key = out.strip()
    assert key.startswith("ddl_")
    assert len(out.splitlines()) == 1
    assert "shown this once" in err
    assert key not in err
    assert _authenticate(cli.data_dir, key) == "olivia"

    listed = cli.json("apikey", "list", "olivia")
    assert [(k["name"], k["scopes"], k["revoked_at"]) for k in listed] == [("ci", ["read"], None)]
    assert key not in json.dumps(listed)  # the secret is never listed

    expiring = cli.json("apikey", "create", "olivia", "--expires-in", "3600")
    assert expiring["expires_at"] is not None
    assert _authenticate(cli.data_dir, expiring["key"]) == "olivia"

    assert "revoked" in cli.ok("apikey", "revoke", listed[0]["id"])
    assert _authenticate(cli.data_dir, key) is None
    assert _authenticate(cli.data_dir, expiring["key"]) == "olivia"
    cli.ok("apikey", "revoke", expiring["key"])  # the whole key names its id too
    assert _authenticate(cli.data_dir, expiring["key"]) is None


def test_publish_from_a_file_and_list_every_visibility(cli: Cli, tmp_path: Path) -> None:
    """A published file is stored byte for byte; 'dataset list' shows private ones too."""
    cli.ok("org", "create", "acme")
    cli.ok("user", "create", "olivia", "--org", "acme")
    source = sample_path("penguins.csv")
    published = cli.json(
        "dataset",
        "publish",
        str(source),
        "--org",
        "acme",
        "--owner",
        "olivia",
        "--slug",
        "birds",
        "--title",
        "Birds",
        "--tag",
        "a",
        "--tag",
        "b",
    )
    assert published["file"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert published["file"]["size_bytes"] == source.stat().st_size
    assert (published["slug"], published["visibility"], published["owner"]) == (
        "birds",
        "private",
        "olivia",
    )
    assert published["tags"] == ["a", "b"]
    assert published["status"] == "ready"  # analysed before the command returned
    # The same Dataset object as the HTTP API's (API.md), links and counts included.
    assert published["links"]["download"] == f"/api/v1/datasets/{published['id']}/download"
    assert published["download_count"] == 0
    assert published["row_count"] is not None

    cars = tmp_path / "cars-data.json"
    cars.write_bytes(sample_path("cars.json").read_bytes())
    cli.ok(
        "dataset", "publish", str(cars), "--org", "acme", "--owner", "olivia",
        "--visibility", "public", "--format", "json",
    )  # fmt: skip
    listed = {d["slug"]: d for d in cli.json("dataset", "list")}
    assert set(listed) == {"birds", "cars-data"}
    assert (listed["birds"]["visibility"], listed["cars-data"]["visibility"]) == (
        "private",
        "public",
    )
    assert listed["cars-data"]["file"]["format"] == "json"
    assert cli.json("dataset", "list", "--org", "nobody") == []
    assert "acme/birds" in cli.ok("dataset", "list")


def test_policy_set_then_show_gives_the_same_body(cli: Cli, tmp_path: Path) -> None:
    """A policy file is stored and shown back as the same API.md DownloadPolicy JSON."""
    cli.ok("org", "create", "acme")
    default = json.loads(cli.ok("policy", "show", "acme"))
    body = dict(default)
    body.update(
        {
            "allowed_formats": ["csv", "parquet"],
            "max_download_bytes": 1_000_000,
            "rate_limit": {"requests": 10, "per_seconds": 60},
            "quota": {
                "user": {"bytes": 5_000_000, "downloads": 10, "window": "day"},
                "organization": None,
            },
            "audit_retention_days": 30,
        }
    )
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(body))
    assert cli.json("policy", "set", "acme", "--file", str(policy_file)) == body
    assert json.loads(cli.ok("policy", "show", "acme")) == body
    assert json.loads(cli.ok("policy", "show", "acme")) != default


def test_remove_member_keeps_an_admin(cli: Cli) -> None:
    """'org remove-member' ends a membership, but never that of an organisation's last admin."""
    cli.ok("org", "create", "acme")
    cli.ok("user", "create", "ada", "--org", "acme", "--role", "admin")
    cli.ok("user", "create", "bob", "--org", "acme")
    assert "bob is no longer a member of acme" in cli.ok("org", "remove-member", "acme", "bob")
    users = {u["name"]: u["organizations"] for u in cli.json("user", "list")}
    assert users == {"ada": {"acme": "admin"}, "bob": {}}
    assert "not a member" in cli.fails("org", "remove-member", "acme", "bob")

    assert "last admin" in cli.fails("org", "remove-member", "acme", "ada")
    cli.ok("org", "add-member", "acme", "bob", "--role", "admin")
    removed = cli.json("org", "remove-member", "acme", "ada")
    assert removed == {"organization": "acme", "user": "ada", "removed": True}
    users = {u["name"]: u["organizations"] for u in cli.json("user", "list")}
    assert users == {"ada": {}, "bob": {"acme": "admin"}}


def _publish(cli: Cli, slug: str) -> str:
    """Publish the cars sample to acme as olivia; the new dataset's id."""
    published = cli.json(
        "dataset", "publish", str(sample_path("cars.json")), "--org", "acme",
        "--owner", "olivia", "--slug", slug,
    )  # fmt: skip
    return str(published["id"])


def test_dataset_delete_hides_the_dataset(cli: Cli) -> None:
    """'dataset delete' soft-deletes: it leaves 'dataset list' and cannot be deleted twice."""
    cli.ok("org", "create", "acme")
    cli.ok("user", "create", "olivia", "--org", "acme")
    first, second = _publish(cli, "first"), _publish(cli, "second")

    out = cli.ok("dataset", "delete", first)
    assert f"deleted acme/first ({first})" in out
    deleted = cli.json("dataset", "delete", second)
    assert (deleted["id"], deleted["slug"], deleted["organization"]) == (second, "second", "acme")
    assert cli.json("dataset", "list") == []
    assert "dataset" in cli.fails("dataset", "delete", first)


def test_dataset_policy_set_show_and_clear(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dataset's own policy is set, shown with the effective one, refused if looser, cleared."""
    cli.ok("org", "create", "acme")
    cli.ok("user", "create", "olivia", "--org", "acme")
    dataset = _publish(cli, "cars")
    org_policy = json.loads(cli.ok("policy", "show", "acme"))
    assert json.loads(cli.ok("policy", "show", "--dataset", dataset)) == {"effective": org_policy}

    own = tmp_path / "own.json"
    own.write_text(json.dumps({"allowed_formats": ["csv"], "max_download_bytes": 1000}))
    body = cli.json("policy", "set", "--dataset", dataset, "--file", str(own))
    assert (body["allowed_formats"], body["max_download_bytes"]) == (["csv"], 1000)
    assert body["effective"]["max_download_bytes"] == 1000
    assert json.loads(cli.ok("policy", "show", "--dataset", dataset)) == body

    cli.ok("policy", "set", "acme", "--file", str(own))  # the organisation tightens too
    looser = tmp_path / "looser.json"
    looser.write_text(json.dumps({"max_download_bytes": 2000}))
    assert "max_download_bytes" in cli.fails(
        "policy", "set", "--dataset", dataset, "--file", str(looser)
    )

    monkeypatch.setattr("sys.stdin", io.StringIO("null"))
    assert "cleared" in cli.ok("policy", "set", "--dataset", dataset, "--file", "-")
    shown = json.loads(cli.ok("policy", "show", "--dataset", dataset))
    assert list(shown) == ["effective"]


def test_policy_commands_need_an_organisation_or_a_dataset(cli: Cli) -> None:
    """'policy show' and 'policy set' take ORG or --dataset, exactly one: else exit 2."""
    cli.ok("org", "create", "acme")
    assert "--dataset" in cli.fails("policy", "show", status=2)
    assert "--dataset" in cli.fails("policy", "show", "acme", "--dataset", "x", status=2)
    assert "--dataset" in cli.fails("policy", "set", "--file", "-", status=2)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("org", "create", "Not A Slug"), "slug"),
        (("user", "create", "olivia"), "exists"),
        (("user", "create", "zed", "--org", "nowhere"), "organisation"),
        (("apikey", "create", "nobody"), "user"),
        (("apikey", "create", "olivia", "--scopes", "read,fly"), "fly"),
        (("apikey", "revoke", "ddl0000000000"), "API key"),
        (("dataset", "publish", "/no/such/file.csv", "--org", "acme", "--owner", "olivia"), ""),
        (("dataset", "publish", "SAMPLE", "--org", "acme", "--owner", "outsider"), "member"),
        (("policy", "show", "nowhere"), "organisation"),
        (("policy", "set", "acme", "--file", "/no/such/policy.json"), "policy.json"),
        (("policy", "set", "acme", "--file", "BAD_POLICY"), "bytes"),
        (("org", "remove-member", "nowhere", "olivia"), "organisation"),
        (("org", "remove-member", "acme", "nobody"), "user"),
        (("org", "remove-member", "acme", "outsider"), "not a member"),
        (("dataset", "delete", "nosuchdataset"), "dataset"),
        (("policy", "show", "--dataset", "nosuchdataset"), "dataset"),
        (("policy", "set", "--dataset", "nosuchdataset", "--file", "NULL_POLICY"), "dataset"),
        (("policy", "set", "--dataset", "nosuchdataset", "--file", "BAD_POLICY"), "bytes"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(
    cli: Cli, tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    """A mistake the operator can fix prints one line on stderr and exits 1, no traceback."""
    cli.ok("org", "create", "acme")
    cli.ok("user", "create", "olivia", "--org", "acme")
    cli.ok("user", "create", "outsider")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"quota": {"user": {"bytes": "lots"}}}))
    null = tmp_path / "null.json"
    null.write_text("null")
    replace = {
        "SAMPLE": str(sample_path("cars.json")),
        "BAD_POLICY": str(bad),
        "NULL_POLICY": str(null),
    }
    err = cli.fails(*(replace.get(a, a) for a in args))
    assert err.startswith("datadl: ")
    assert says.lower() in err.lower()


def test_commands_on_a_missing_database_say_how_to_create_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Admin commands never create or migrate a database: they exit 2 naming the fix."""
    run = Cli(tmp_path / "nothing-here", capsys)
    err = run.fails("org", "list", status=2)
    assert "datadl db upgrade" in err
    assert not (tmp_path / "nothing-here").exists()
    assert "--org" in run.fails("user", "create", "x", "--role", "admin", status=2)


def test_options_may_come_before_or_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--data-dir and --json work on either side of the command name."""
    assert main(["--data-dir", str(tmp_path), "db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["--data-dir", str(tmp_path), "--json", "org", "create", "acme"]) == 0
    assert json.loads(capsys.readouterr().out)["slug"] == "acme"
    assert main(["org", "list", "--json", "--data-dir", str(tmp_path)]) == 0
    assert [o["slug"] for o in json.loads(capsys.readouterr().out)] == ["acme"]
