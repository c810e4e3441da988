"""One table of routes: what the app serves and what the OpenAPI document describes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from datadl.entrypoints.web.handlers import Handler


@attrs.frozen
class Param:
    """A path or query parameter."""

    name: str
    where: str = "query"
    type: str = "string"
    description: str = ""
    enum: tuple[str, ...] | None = None
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    example: Any = None


@attrs.frozen
class Route:
    """One operation: method, path, handler and what the document says about it.

    ``responses`` maps a status to a description; ``body`` names a request body schema
    (``json:<Schema>``, ``upload``); ``returns`` the schema of the main success body.
    """

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    responses: Mapping[str, str] = attrs.field(factory=dict)
    params: tuple[Param, ...] = ()
    body: str | None = None
    returns: str | None = None
    auth: bool = True
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.lstrip("_")
