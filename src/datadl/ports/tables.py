"""The TableEngine port: profile, preview and convert stored files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import attrs

from datadl.domain.model import DatasetFile, FileFormat
from datadl.domain.tables import Page, TableProfile


@attrs.frozen
class ConvertOptions:
    """How a conversion writes: neutralise formula-like text cells in csv and tsv."""

    neutralize_formulas: bool = False


class TableEngine(Protocol):
    """Reads stored files as tables in bounded memory.

    Every method raises ``UnsupportedFormat`` for a file it cannot parse, ``FileMissing``
    or ``StorageUnavailable`` from storage, and ``BadRequest`` for an impossible request
    (an xlsx of more rows than a sheet holds, an unknown column).
    """

    @property
    def version(self) -> str:
        """The engine version that keys cached profiles and conversions."""
        ...

    async def profile(self, file: DatasetFile) -> TableProfile:
        """Schema, statistics and quality of the whole file."""
        ...

    async def preview(
        self, file: DatasetFile, *, offset: int, limit: int, columns: Sequence[str] | None = None
    ) -> Page:
        """Rows ``[offset, offset + limit)`` with their column types."""
        ...

    def convert(
        self, file: DatasetFile, target: FileFormat, options: ConvertOptions
    ) -> AsyncIterator[bytes]:
        """The file's table written in ``target`` format, streamed chunk by chunk."""
        ...
