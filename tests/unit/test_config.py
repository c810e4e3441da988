"""Settings come from a file, then the environment, then explicit overrides."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from datadl.settings import ConfigError, Settings


def test_environment_overrides_file_and_overrides_win(tmp_path: Path) -> None:
    """A value in the environment beats the file; an explicit override beats both."""
    file = tmp_path / "datadl.toml"
    file.write_text('[datadl]\ndatabase_url = "sqlite:///a.db"\nkeep_versions = 3\n')
    env = {"DATADL_DATABASE_URL": "sqlite:///b.db", "DATADL_MAX_UPLOAD_BYTES": "100"}
    settings = Settings.load(file=file, environ=env)
    assert (settings.database_url, settings.keep_versions) == ("sqlite:///b.db", 3)
    assert settings.max_upload_bytes == 100
    overridden = Settings.load(file=file, environ=env, database_url="sqlite:///c.db")
    assert overridden.database_url == "sqlite:///c.db"


def test_database_defaults_to_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    """With no database URL the embedded default is a SQLite file under data_dir."""
    settings = Settings.load(environ={}, data_dir=tmp_path)
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'datadl.db'}"


def test_signing_keys_parse_in_order_and_stay_out_of_repr() -> None:
    """Keys are read oldest first, and no secret shows in the settings' repr."""
    a, b = (base64.urlsafe_b64encode(bytes([n]) * 32).decode() for n in (1, 2))
    settings = Settings.load(environ={"DATADL_SIGNING_KEYS": f"old:{a},new:{b}"})
    assert [k.key_id for k in settings.signing_keys] == ["old", "new"]
    assert settings.signing_keys[1].secret == bytes([2]) * 32
    assert a not in repr(settings)
    assert b not in repr(settings)


@pytest.mark.parametrize(
    "env",
    [
        {"DATADL_SIGNING_KEYS": "nocolon"},
        {"DATADL_SIGNING_KEYS": "k:c2hvcnQ"},
        {"DATADL_KEEP_VERSIONS": "many"},
    ],
)
def test_malformed_settings_are_config_errors(env: dict[str, str]) -> None:
    """A malformed value fails with ConfigError naming the setting, not a traceback."""
    with pytest.raises(ConfigError):
        Settings.load(environ=env)


def test_unknown_file_settings_are_refused(tmp_path: Path) -> None:
    """A misspelt setting in the file is an error rather than silently ignored."""
    file = tmp_path / "datadl.toml"
    file.write_text('[datadl]\ndatabse_url = "x"\n')
    with pytest.raises(ConfigError, match="databse_url"):
        Settings.load(file=file, environ={})
