"""JSON logging for the server process: one JSON object per line, UTC timestamps."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(*, stream: TextIO | None = None, level: str = "info") -> None:
    """Send structlog events (the access log among them) as JSON lines to ``stream``.

    Call it once from the process entrypoint (``datadl serve``); importing datadl never
    configures logging.
    """
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
