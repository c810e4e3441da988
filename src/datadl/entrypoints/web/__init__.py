"""The aiohttp entrypoint: ``create_app(datadl_app)`` serves the HTTP API of API.md."""

from __future__ import annotations

from datadl.entrypoints.web.app import ROUTES, RUNNER_OPTIONS, create_app
from datadl.entrypoints.web.config import WebConfig
from datadl.entrypoints.web.logs import configure_logging

__all__ = ["ROUTES", "RUNNER_OPTIONS", "WebConfig", "configure_logging", "create_app"]
