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

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain JSON-able values (what ``from_dict`` reads back)."""
        return {
            "sha256": self.sha256,
            "engine_version": self.engine_version,
            "columns": [attrs.asdict(c) for c in self.columns],
            "row_count": self.row_count,
            "statistics": {name: dict(stats) for name, stats in self.statistics.items()},
            "quality": {
                "score": self.quality.score,
                "completeness": self.quality.completeness,
                "consistency": self.quality.consistency,
                "uniqueness": self.quality.uniqueness,
                "validity": self.quality.validity,
                "issues": [attrs.asdict(i) for i in self.quality.issues],
            },
            "analyzed_at": self.analyzed_at.isoformat(),
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> TableProfile:
        """The profile a ``to_dict`` document holds; ``KeyError``/``TypeError``/``ValueError``
        for a document of another shape."""
        quality = document["quality"]
        return cls(
            sha256=str(document["sha256"]),
            engine_version=str(document["engine_version"]),
            columns=tuple(
                Column(
                    name=str(c["name"]),
                    type=str(c["type"]),
                    nullable=bool(c["nullable"]),
                    physical_type=c.get("physical_type"),
                )
                for c in document["columns"]
            ),
            row_count=int(document["row_count"]),
            statistics={str(k): dict(v) for k, v in document["statistics"].items()},
            quality=QualityReport(
                score=float(quality["score"]),
                completeness=float(quality["completeness"]),
                consistency=float(quality["consistency"]),
                uniqueness=float(quality["uniqueness"]),
                validity=float(quality["validity"]),
                issues=tuple(
                    QualityIssue(
                        column=i["column"],
                        kind=str(i["kind"]),
                        severity=str(i["severity"]),
                        message=str(i["message"]),
                        affected_rows=int(i["affected_rows"]),
                    )
                    for i in quality["issues"]
                ),
            ),
            analyzed_at=datetime.fromisoformat(document["analyzed_at"]),
        )


@attrs.frozen
class Page:
    """A window of rows for preview, with column types and the total row count."""

    columns: tuple[Column, ...]
    rows: tuple[tuple[Any, ...], ...]
    offset: int
    limit: int
    total_rows: int | None
