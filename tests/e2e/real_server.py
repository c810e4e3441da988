"""``datadl serve --demo`` as a real process on a free loopback port, for real HTTP clients.

The in-process server of ``conftest.py`` is the fast path for most end-to-end tests; this
one is what curl, wget, aria2c, fsspec, pandas and schemathesis talk to: the command a user
runs, its own event loop, its own SQLite file and blob folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import attrs

START_TIMEOUT = 60.0
API = "/api/v1"

#: An organisation policy without rate limit or quota: the demo's 5 MB a day and 120
#: requests a minute would stop the segmented and fuzzing clients long before they finish.
OPEN_POLICY: dict[str, Any] = {
    "allowed_formats": None,
    "max_download_bytes": None,
    "allow_anonymous": True,
    "require_token": False,
    "token_max_ttl_seconds": 3600,
    "terms": None,
    "rate_limit": None,
    "quota": None,
    "audit_retention_days": 30,
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def datadl_command() -> list[str]:
    """``datadl`` of this interpreter: the module, which is what the console script runs."""
    return [sys.executable, "-m", "datadl.entrypoints.cli"]


@attrs.frozen
class Reply:
    """One HTTP answer, read whole."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class RealServer:
    """A running ``datadl serve --demo`` process and the demo users' API keys."""

    url: str
    keys: dict[str, str]
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80

    def auth(self, who: str = "owner") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def auth_header(self, who: str = "owner") -> str:
        """The header as curl's ``-H`` and wget's ``--header`` take it."""
        return f"Authorization: Bearer {self.keys[who]}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        who: str | None = "owner",
        timeout: float = 60.0,
    ) -> Reply:
        """One request on a fresh connection, as a plain HTTP/1.1 client sends it."""
        sent = dict(self.auth(who)) if who is not None else {}
        sent.update(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            data = response.read()
            return Reply(response.status, dict(response.getheaders()), data)
        finally:
            connection.close()

    def download_path(self, dataset_id: str, **query: Any) -> str:
        path = f"{API}/datasets/{dataset_id}/download"
        return f"{path}?{urlencode(query)}" if query else path

    def download_url(self, dataset_id: str, **query: Any) -> str:
        return self.url + self.download_path(dataset_id, **query)

    def datasets(self) -> dict[str, dict[str, Any]]:
        """Every dataset the owner sees, by slug."""
        found: dict[str, dict[str, Any]] = {}
        cursor: str | None = None
        while True:
            query = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            reply = self.request("GET", f"{API}/datasets?{urlencode(query)}")
            assert reply.status == 200, reply.body
            page = reply.json()
            found.update({item["slug"]: item for item in page["items"]})
            cursor = page["next_cursor"]
            if not cursor:
                return found

    def publish(
        self, data: bytes, *, filename: str, slug: str, content_type: str, **query: str
    ) -> dict[str, Any]:
        """Publish a file as the raw request body (owner), in organisation ``demo``."""
        params = {"organization": "demo", "filename": filename, "slug": slug, **query}
        reply = self.request(
            "POST",
            f"{API}/datasets?{urlencode(params)}",
            body=data,
            headers={"Content-Type": content_type},
        )
        assert reply.status == 201, reply.body
        return reply.json()  # type: ignore[no-any-return]

    def replace_file(self, dataset_id: str, data: bytes, *, content_type: str) -> dict[str, Any]:
        """A new version through ``PUT /api/v1/datasets/{id}/file``."""
        reply = self.request(
            "PUT",
            f"{API}/datasets/{dataset_id}/file",
            body=data,
            headers={"Content-Type": content_type},
        )
        assert reply.status == 200, reply.body
        return reply.json()  # type: ignore[no-any-return]

    def open_policy(self) -> None:
        """Lift the demo organisation's rate limit and quota."""
        reply = self.request(
            "PUT", f"{API}/organizations/demo/download-policy", json_body=OPEN_POLICY
        )
        assert reply.status == 200, reply.body

    def history(self, dataset_id: str, limit: int = 100) -> list[dict[str, Any]]:
        reply = self.request("GET", f"{API}/datasets/{dataset_id}/download-history?limit={limit}")
        assert reply.status == 200, reply.body
        return reply.json()["items"]  # type: ignore[no-any-return]

    def wait_ready(self, dataset_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the dataset's analysis is over (``ready`` or ``failed``)."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self.request("GET", f"{API}/datasets/{dataset_id}")
            assert reply.status == 200, reply.body
            dataset = reply.json()
            if dataset["status"] != "analyzing" or time.monotonic() > deadline:
                return dataset  # type: ignore[no-any-return]
            time.sleep(0.1)


def _healthy(url: str) -> bool:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=2)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def running_server(base_dir: Path, *, timeout: float = START_TIMEOUT) -> Iterator[RealServer]:
    """Start ``datadl serve --demo`` in ``base_dir``, wait for ``/healthz``, stop it after."""
    data_dir = base_dir / "data"
    log_path = base_dir / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        *datadl_command(),
        "serve",
        "--demo",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                output = log_path.read_text(errors="replace")[-8000:]
                raise RuntimeError(
                    f"datadl serve did not become healthy on {url} "
                    f"(exit code {process.poll()}):\n{output}"
                )
            time.sleep(0.1)
        keys_path = data_dir / "demo-keys.json"
        keys = json.loads(keys_path.read_text())
        assert keys["organization"] == "demo"
        yield RealServer(url, keys, data_dir, log_path, process)
    finally:
        _stop(process)
