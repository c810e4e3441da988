"""The command line's pure parts: parsing, the operator principal, signing-key settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from datadl.domain.decision import AuthRequired
from datadl.domain.model import Scope, Visibility
from datadl.domain.policy import DownloadPolicy
from datadl.entrypoints.cli import _parser, _shown_host, operator_principal
from datadl.services.datasets import DatasetFacts
from datadl.settings import (
    MISSING_SIGNING_KEYS,
    ConfigError,
    Settings,
    encode_signing_keys,
    generate_signing_key,
)
from tests.conftest import World, chunks

ANY = "0.0.0.0"  # noqa: S104 - a string under test, nothing binds to it


def test_serve_defaults_match_the_documented_surface() -> None:
    """'datadl serve' listens on 127.0.0.1:8080 and leaves the data dir to the settings."""
    args = _parser().parse_args(["serve"])
    assert (args.host, args.port, args.demo) == ("127.0.0.1", 8080, False)
    assert not hasattr(args, "data_dir")
    assert Settings.load(environ={}).data_dir == Path("./datadl-data")
    demo = _parser().parse_args(["serve", "--demo", "--host", ANY, "--port", "9"])
    assert (demo.host, demo.port, demo.demo) == (ANY, 9, True)


def test_common_options_go_either_side_and_the_later_wins() -> None:
    """--data-dir, --config and --json are read before or after the command name."""
    before = _parser().parse_args(["--data-dir", "a", "--json", "org", "list"])
    after = _parser().parse_args(["org", "list", "--data-dir", "b", "--config", "c.toml"])
    both = _parser().parse_args(["--data-dir", "a", "dataset", "list", "--data-dir", "b"])
    assert (before.data_dir, before.json) == (Path("a"), True)
    assert (after.data_dir, after.config, hasattr(after, "json")) == (
        Path("b"),
        Path("c.toml"),
        False,
    )
    assert both.data_dir == Path("b")


def test_unknown_commands_and_choices_are_usage_errors() -> None:
    """argparse refuses a bad role or visibility with exit status 2."""
    for argv in (
        ["user", "create", "x", "--org", "a", "--role", "owner"],
        ["dataset", "publish", "f.csv", "--org", "a", "--owner", "b", "--visibility", "secret"],
        ["fly"],
    ):
        with pytest.raises(SystemExit) as exited:
            _parser().parse_args(argv)
        assert exited.value.code == 2


def test_wildcard_hosts_are_shown_as_loopback() -> None:
    """Printed URLs never say 0.0.0.0, and IPv6 literals get brackets."""
    assert _shown_host(ANY) == "127.0.0.1"
    assert _shown_host("::") == "[::1]"
    assert _shown_host("::1") == "[::1]"
    assert _shown_host("localhost") == "localhost"


async def test_the_operator_administers_every_organisation_but_owns_nothing(world: World) -> None:
    """The CLI's operator lists private datasets and sets policies, yet cannot publish."""
    app = world.app
    data = b"a,b\n1,2\n"
    private = await app.datasets.publish(
        world.owner, DatasetFacts(organization="acme", filename="p.csv"), chunks(data)
    )
    operator = await operator_principal(app)
    assert operator.user_id is None
    listed = await app.datasets.list(operator)
    assert [d.id for d in listed.items] == [private.id]
    assert private.visibility is Visibility.PRIVATE
    policy = DownloadPolicy(max_download_bytes=10)
    assert await app.datasets.set_organization_policy(operator, "other", policy) == policy
    assert await app.datasets.organization_policy(operator, "other") == policy
    with pytest.raises(AuthRequired):
        await app.datasets.publish(
            operator, DatasetFacts(organization="acme", filename="q.csv"), chunks(data)
        )
    with pytest.raises(AuthRequired):
        await app.accounts.create_api_key(operator, "k", [Scope.READ])


def test_generated_signing_keys_read_back_from_the_environment() -> None:
    """A generated key, encoded as the setting, parses back to the same id and secret."""
    old, new = generate_signing_key("old"), generate_signing_key("new")
    assert old.secret != new.secret
    text = encode_signing_keys([old, new])
    settings = Settings.load(environ={"DATADL_SIGNING_KEYS": text})
    assert [(k.key_id, k.secret) for k in settings.signing_keys] == [
        ("old", old.secret),
        ("new", new.secret),
    ]
    with pytest.raises(ConfigError):
        generate_signing_key("no spaces")


def test_signing_keys_may_be_a_toml_array(tmp_path: Path) -> None:
    """signing_keys in the config file may list one 'id:secret' string per key."""
    a, b = generate_signing_key("a"), generate_signing_key("b")
    file = tmp_path / "datadl.toml"
    file.write_text(
        f'[datadl]\nsigning_keys = ["{encode_signing_keys([a])}", "{encode_signing_keys([b])}"]\n'
    )
    assert [k.key_id for k in Settings.load(file=file, environ={}).signing_keys] == ["a", "b"]
    file.write_text("[datadl]\nsigning_keys = 5\n")
    with pytest.raises(ConfigError, match="signing_keys"):
        Settings.load(file=file, environ={})


def test_the_missing_key_message_names_both_settings_and_the_command() -> None:
    """The start-up error says where a key goes and how to make one."""
    assert "DATADL_SIGNING_KEYS" in MISSING_SIGNING_KEYS
    assert "signing_keys" in MISSING_SIGNING_KEYS.replace("DATADL_SIGNING_KEYS", "")
    assert "datadl keys generate" in MISSING_SIGNING_KEYS
