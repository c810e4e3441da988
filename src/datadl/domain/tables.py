"""Table insight values: schema, statistics, quality report, profile and preview page."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs


@attrs.frozen
class Column:
    """One column of a table's schema."""

    name: str
    type: str
    nullable: bool = True
    physical_type: str | None = None


@attrs.frozen
class QualityIssue:
    """A concrete data-quality finding."""

    column: str | None
    kind: str
    severity: str
    message: str
    affected_rows: int


@attrs.frozen
class QualityReport:
    """Scores from 0 to 1 and the issues behind them."""

    score: float
    completeness: float
    consistency: float
    uniqueness: float
    validity: float
    issues: tuple[QualityIssue, ...] = ()


@attrs.frozen
class TableProfile:
    """Schema, row count, per-column statistics and quality of one file's content.

    ``statistics`` maps a column name to its statistics (plain JSON-able values); which
    keys appear depends on the column's type, as the API documents.
    """

    sha256: str
    engine_version: str
    columns: tuple[Column, ...]
    row_count: int
    statistics: Mapping[str, Mapping[str, Any]]
    quality: QualityReport
    analyzed_at: datetime


@attrs.frozen
class Page:
    """A window of rows for preview, with column types and the total row count."""

    columns: tuple[Column, ...]
    rows: tuple[tuple[Any, ...], ...]
    offset: int
    limit: int
    total_rows: int | None
