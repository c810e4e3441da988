"""Publishing streams: a 2 GB upload goes to disk with a flat memory profile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import asyncio, json, re, sys
from pathlib import Path
import datadl
from datadl.adapters.storage import FsspecBlobStore
from datadl.domain.model import Role
from datadl.services.datasets import DatasetFacts

ROW = b"1234567,some text with a comma\\, quoted,3.14159,2026-11-25T12:00:00Z\n"
CHUNK = b"id,text,value,at\n" + ROW * (1024 * 1024 // len(ROW))

def high_water_kb():
    # VmHWM belongs to this process alone; ru_maxrss would include the forking parent's peak.
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))

async def upload(total):
    sent = 0
    while sent < total:
        piece = CHUNK[: total - sent]
        sent += len(piece)
        yield piece

class NoTables:
    # Publishing never reads a table; the pyarrow engine's libraries alone map about 135 MB
    # of code into a process, which is the server's baseline, not the pipeline's cost.
    version = "none"

    def __getattr__(self, name):
        raise AssertionError(f"publishing called the table engine's {name}")

async def main(root, total):
    app = datadl.bootstrap(blobs=FsspecBlobStore.from_url(f"file://{root}"), tables=NoTables())
    await app.accounts.create_organization("acme")
    await app.accounts.create_user("olivia")
    await app.accounts.add_member("acme", "olivia", Role.ADMIN)
    owner = await app.accounts.principal_for("olivia")
    before = high_water_kb()
    dataset = await app.datasets.publish(
        owner, DatasetFacts(organization="acme", filename="big.csv"), upload(total)
    )
    peak = high_water_kb()
    print(json.dumps({"size": dataset.file.size_bytes, "before_kb": before, "peak_kb": peak}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from Linux /proc")
def test_publishing_two_gigabytes_keeps_peak_rss_under_200_mb(tmp_path: Path) -> None:
    """A 2 GB upload is hashed and stored while peak RSS of the process stays under 200 MB."""
    total = 2 * 1000**3
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path), str(total)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["size"] == total
    assert result["peak_kb"] < 200 * 1024, result
    assert result["peak_kb"] - result["before_kb"] < 64 * 1024, result
