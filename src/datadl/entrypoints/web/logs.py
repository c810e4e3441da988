"""JSON logging for the server process: one JSON object per line, UTC timestamps."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import time
import weakref
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

#: Lines gathered at most before they are written without waiting for the event loop.
MAX_BUFFERED_LINES = 256


class LineWriter:
    """Writes log lines to a stream, gathering those of one event-loop turn into one write.

    Under load, the access log's line per request was the server's costliest syscall
    (a write and a flush each, about a third of a cached metadata GET). Lines logged
    while an event loop runs are joined and written by a callback at the loop's next
    turn, or at once past ``MAX_BUFFERED_LINES``; outside a loop each line is written at
    once. Nothing waits for a timer, so a line is late by one loop turn at most, and
    lines still gathered when the process exits are written by an ``atexit`` hook.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: list[str] = []
        # The loop that has a flush scheduled, if any.
        self._scheduled: asyncio.AbstractEventLoop | None = None
        _WRITERS.add(self)

    def write_line(self, line: str) -> None:
        self._lines.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._scheduled is loop:
            if len(self._lines) >= MAX_BUFFERED_LINES:
                self.flush()
            return
        # A flush scheduled on a loop that has ended never runs: this loop takes over.
        self._scheduled = loop
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = None
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        self._stream.write(text)
        self._stream.flush()


#: Every writer, for the one exit hook that writes what they still hold.
_WRITERS: weakref.WeakSet[LineWriter] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for writer in list(_WRITERS):
        writer.flush()


class _LineLogger:
    """The structlog logger over a ``LineWriter``: every level writes the rendered line."""

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        self._writer.write_line(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _LineLoggerFactory:
    def __init__(self, stream: TextIO) -> None:
        self._logger = _LineLogger(LineWriter(stream))

    def __call__(self, *args: Any) -> _LineLogger:
        return self._logger


class _UtcTimestamp:
    """``timestamp``: the event's UTC time in ISO 8601 with microseconds and a ``Z``.

    The same text as structlog's ``TimeStamper(fmt="iso", utc=True)``, at a fraction of
    its cost: the part up to the second is formatted once per second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event


_ENCODER = json.JSONEncoder(default=repr)


def _dumps(event: Any, **_: Any) -> str:
    # One encoder for every line; a value JSON cannot hold is written as its repr.
    return _ENCODER.encode(event)


#: The access log's logger and the factory it was built with (see ``access_log``).
_access: tuple[Any, Any] | None = None


def configure_logging(*, stream: TextIO | None = None, level: str = "info") -> None:
    """Send structlog events (the access log among them) as JSON lines to ``stream``.

    Call it once from the process entrypoint (``datadl serve``); importing datadl never
    configures logging.
    """
    global _access
    wrapper = structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()])
    factory = _LineLoggerFactory(stream or sys.stderr)
    timestamp = _UtcTimestamp()
    render = structlog.processors.JSONRenderer(serializer=_dumps)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamp,
            structlog.processors.format_exc_info,
            render,
        ],
        wrapper_class=wrapper,
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    # The access log writes a line per request, so its logger is built once, with only
    # what its events need: they carry every field themselves and never an exception.
    access = structlog.wrap_logger(
        factory(),
        processors=[structlog.processors.add_log_level, timestamp, render],
        wrapper_class=wrapper,
    )
    _access = (access, factory)


def access_log() -> Any:
    """The logger of ``http_request`` events.

    The one ``configure_logging`` built, while structlog is still configured by it;
    otherwise structlog's current default (an embedding application, tests).
    """
    if _access is not None and structlog.get_config()["logger_factory"] is _access[1]:
        return _access[0]
    return structlog.get_logger("datadl.access")
