"""The server's JSON log lines: how they are timestamped, gathered and written."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime

import structlog
from structlog.testing import capture_logs

from datadl.entrypoints.web.logs import (
    MAX_BUFFERED_LINES,
    LineWriter,
    access_log,
    configure_logging,
)


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_outside_an_event_loop_each_line_is_written_at_once() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)
    writer.write_line("a")
    writer.write_line("b")
    assert stream.getvalue() == "a\nb\n"
    assert stream.writes == 2


async def test_lines_of_one_loop_turn_are_written_together_at_the_next() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)
    for i in range(5):
        writer.write_line(f"line {i}")
    assert stream.getvalue() == ""
    await asyncio.sleep(0)
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(5)]
    assert stream.writes == 1


async def test_a_full_buffer_is_written_without_waiting_for_the_loop() -> None:
    stream = CountingStream()
    writer = LineWriter(stream)
    for i in range(MAX_BUFFERED_LINES):
        writer.write_line(str(i))
    assert len(stream.getvalue().splitlines()) == MAX_BUFFERED_LINES
    writer.write_line("late")
    await asyncio.sleep(0)
    assert stream.getvalue().splitlines()[-1] == "late"


def test_configured_events_are_json_with_a_utc_timestamp_and_level() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, level="info")
    try:
        before = datetime.now(UTC)
        structlog.get_logger().info("something", odd=object(), count=3)
        structlog.get_logger().debug("filtered out")
        after = datetime.now(UTC)
    finally:
        structlog.reset_defaults()
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (event["event"], event["level"], event["count"]) == ("something", "info", 3)
    assert event["odd"].startswith("<object object")
    stamp = event["timestamp"]
    assert stamp.endswith("Z") and len(stamp) == len("2026-11-26T04:51:11.887637Z")
    assert before.replace(microsecond=0) <= datetime.fromisoformat(stamp) <= after


def test_the_access_log_is_bound_once_and_yields_to_a_later_configuration() -> None:
    """configure_logging builds the access logger; any other configuration takes over."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    try:
        access_log().info("http_request", status=200)
    finally:
        structlog.reset_defaults()
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (event["event"], event["status"], event["level"]) == ("http_request", 200, "info")
    assert "timestamp" in event
    with capture_logs() as logs:
        access_log().info("http_request", status=201)
    assert [e["status"] for e in logs] == [201]
    assert len(stream.getvalue().splitlines()) == 1


def test_lines_left_by_an_ended_loop_are_written_with_the_next_one() -> None:
    """A flush scheduled on a loop that stopped before running it holds nothing back."""
    stream = CountingStream()
    writer = LineWriter(stream)
    loop = asyncio.new_event_loop()

    def write_and_stop() -> None:
        writer.write_line("in the loop")
        loop.stop()  # the scheduled flush never runs

    loop.call_soon(write_and_stop)
    loop.run_forever()
    loop.close()
    assert stream.getvalue() == ""
    writer.write_line("after it")
    assert stream.getvalue().splitlines() == ["in the loop", "after it"]


def test_the_access_line_is_what_the_processors_would_render() -> None:
    """The access log's direct rendering equals structlog's chain for the same event."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    try:
        fields = {"request_id": "r1", "status": 200, "path": "/é\n", "bytes": None}
        access_log().info("http_request", **fields)
        structlog.get_logger().info("http_request", **fields)
    finally:
        structlog.reset_defaults()
    direct, chained = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(direct) == list(chained)
    del direct["timestamp"], chained["timestamp"]
    assert direct == chained


def test_above_info_the_access_log_writes_nothing() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, level="warning")
    try:
        access_log().info("http_request", status=200)
        structlog.get_logger().warning("kept")
    finally:
        structlog.reset_defaults()
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["kept"]


def test_captured_logs_see_the_access_events_after_configure_logging() -> None:
    """Another configuration (structlog's capture) takes the access events over."""
    stream = io.StringIO()
    configure_logging(stream=stream)
    try:
        with capture_logs() as logs:
            access_log().info("http_request", status=204)
    finally:
        structlog.reset_defaults()
    assert [(e["event"], e["status"]) for e in logs] == [("http_request", 204)]
    assert stream.getvalue() == ""
