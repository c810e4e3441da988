"""schemathesis against the OpenAPI document served by a real ``datadl serve --demo``.

Examples, coverage and fuzzing phases, bounded in examples per operation: no 5xx, and every
answer's status code, Content-Type, headers and body conform to the document.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.real_server import API, RealServer, running_server

pytest.importorskip("schemathesis")

pytestmark = pytest.mark.slow

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
MAX_EXAMPLES = 8
MAX_SECONDS = 60


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    with running_server(tmp_path_factory.mktemp("schemathesis-server")) as running:
        running.open_policy()
        yield running


def _config(server: RealServer, path: Path) -> Path:
    """Real identifiers for the path parameters, so requests get past the 404s.

    The fuzzed requests still replace the dataset's file, tighten its policy and the like:
    this server is the fuzzer's alone.

    Every operation on ``{dataset_id}`` uses a dataset of its own except ``DELETE``, which
    gets a sacrificial one: deleting the shared one early would leave the rest with 404s.
    """
    target = server.publish(
        b"a,b,when\n1,x,2024-01-01\n2,y,2024-01-02\n3,,2024-01-03\n",
        filename="fuzz.csv",
        slug="fuzz-target",
        content_type="text/csv",
    )
    victim = server.publish(
        b"a\n1\n", filename="victim.csv", slug="fuzz-victim", content_type="text/csv"
    )
    server.wait_ready(target["id"])
    download = server.request("GET", server.download_path(target["id"]))
    assert download.status == 200, download.body
    grant = server.request(
        "POST",
        f"{API}/datasets/{target['id']}/grants",
        json_body={"user": "member", "permission": "view"},
    )
    assert grant.status == 201, grant.body
    lines = [
        "[parameters]",
        'org = "demo"',
        f"dataset_id = {json.dumps(target['id'])}",
        f"download_id = {json.dumps(download.header('X-Download-Id'))}",
        f"grant_id = {json.dumps(grant.json()['id'])}",
        "",
        "[[operations]]",
        f'include-path = "{API}/datasets/{{dataset_id}}"',
        'include-method = "DELETE"',
        f"parameters = {{ dataset_id = {json.dumps(victim['id'])} }}",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    server: RealServer, tmp_path: Path
) -> None:
    config = _config(server, tmp_path / "schemathesis.toml")
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        f"{server.url}{API}/openapi.json",
        "--header",
        f"Authorization: Bearer {server.keys['owner']}",
        "--phases",
        "examples,coverage,fuzzing",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        # One worker: with several threads, hypothesis' lambda descriptions (Python 3.11's
        # ast module) sometimes fail inside schemathesis with "AST constructor recursion
        # depth mismatch", an error of the tool, not of the API.
        "--workers",
        "1",
        "--seed",
        "20261126",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--no-color",
    ]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS + 60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"schemathesis exited {result.returncode}:\n{output[-20000:]}\n"
        f"--- server log (tail) ---\n{server.log()[-6000:]}"
    )
    assert "Tested: 0" not in output, output[-4000:]
