"""The quality report: four scores from 0 to 1 and the concrete issues behind them.

- completeness: the share of cells that are not missing.
- consistency: the share of present cells that fit their column (not text in a typed column,
  not a case or spacing variant of a commoner spelling, not a date in a minority layout).
- uniqueness: the share of rows that do not repeat an earlier row.
- validity: the share of present cells that are not Tukey outliers, empty or blank strings.

The overall score is their mean. An issue's severity follows the share of rows it touches:
high from 20%, medium from 5%, low below; outliers are at most medium, since they may be
real. A likely key is a text or integer column with at least 20 values that are nearly all
(99% or more) different; its repeated values are reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from datadl.adapters.tables._infer import Finding
from datadl.adapters.tables._stats import ColumnStats, NumericStats, StringStats
from datadl.domain.tables import QualityIssue, QualityReport

_HIGH, _MEDIUM = 0.2, 0.05
_KEY_MIN_VALUES = 20
_KEY_UNIQUENESS = 0.99
_SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2}


def _severity(affected: int, rows: int, ceiling: str = "high") -> str:
    share = affected / rows if rows else 0.0
    level = "high" if share >= _HIGH else "medium" if share >= _MEDIUM else "low"
    return level if _SEVERITY_ORDER[level] >= _SEVERITY_ORDER[ceiling] else ceiling


def _score(bad: int, total: int) -> float:
    return round(1.0 - bad / total, 6) if total else 1.0


def report(
    *,
    rows: int,
    columns: Sequence[ColumnStats],
    statistics: Mapping[str, Mapping[str, Any]],
    findings: Sequence[Finding],
    duplicate_rows: int,
) -> QualityReport:
    """The quality report of a profiled table."""
    issues: list[QualityIssue] = []
    cells = rows * len(columns)
    nulls = sum(c.nulls for c in columns)
    present = cells - nulls

    for column in columns:
        if column.nulls:
            share = column.nulls / rows
            issues.append(
                QualityIssue(
                    column.name,
                    "missing_values",
                    _severity(column.nulls, rows),
                    f"{column.nulls} of {rows} values in column {column.name!r} are missing "
                    f"({share:.1%}).",
                    column.nulls,
                )
            )

    inconsistent = 0
    for finding in findings:
        inconsistent += finding.affected_rows
        issues.append(
            QualityIssue(
                finding.column,
                finding.kind,
                _severity(finding.affected_rows, rows),
                finding.message,
                finding.affected_rows,
            )
        )
    for column in columns:
        if not isinstance(column, StringStats):
            continue
        found = column.variants()
        if found is None or found[0] == 0:
            continue
        affected, example = found
        inconsistent += affected
        shown = ", ".join(repr(v) for v in example[:4])
        issues.append(
            QualityIssue(
                column.name,
                "case_variants",
                _severity(affected, rows),
                f"{affected} values in column {column.name!r} differ from a more common "
                f"spelling only in letter case or surrounding spaces (for example {shown}).",
                affected,
            )
        )

    if duplicate_rows:
        issues.append(
            QualityIssue(
                None,
                "duplicate_rows",
                _severity(duplicate_rows, rows),
                f"{duplicate_rows} of {rows} rows repeat an earlier row exactly.",
                duplicate_rows,
            )
        )
    for column in columns:
        stats = statistics[column.name]
        distinct = stats.get("distinct")
        if (
            stats["type"] not in ("integer", "string")
            or not distinct
            or not distinct["exact"]
            or column.count < _KEY_MIN_VALUES
        ):
            continue
        repeats = column.count - distinct["value"]
        if repeats > 0 and distinct["value"] >= _KEY_UNIQUENESS * column.count:
            issues.append(
                QualityIssue(
                    column.name,
                    "duplicate_key",
                    _severity(repeats, rows),
                    f"Column {column.name!r} looks like a key ({distinct['value']} distinct of "
                    f"{column.count} values) but {repeats} values repeat an earlier one.",
                    repeats,
                )
            )

    invalid = 0
    for column in columns:
        if isinstance(column, NumericStats) and column.outliers and column.outliers.count:
            outliers = column.outliers
            invalid += outliers.count
            about = "" if outliers.exact else "about "
            issues.append(
                QualityIssue(
                    column.name,
                    "outliers",
                    _severity(outliers.count, rows, ceiling="medium"),
                    f"{about}{outliers.count} values in column {column.name!r} lie outside the "
                    f"Tukey fences [{outliers.lower:g}, {outliers.upper:g}].",
                    outliers.count,
                )
            )
        if column.empty_strings or column.blank_strings:
            affected = column.empty_strings + column.blank_strings
            invalid += affected
            issues.append(
                QualityIssue(
                    column.name,
                    "empty_strings",
                    _severity(affected, rows),
                    f"{affected} values in column {column.name!r} are empty or only spaces.",
                    affected,
                )
            )

    completeness = _score(nulls, cells)
    consistency = _score(min(inconsistent, present), present)
    uniqueness = _score(duplicate_rows, rows)
    validity = _score(min(invalid, present), present)
    score = round((completeness + consistency + uniqueness + validity) / 4, 6)
    issues.sort(key=lambda i: (_SEVERITY_ORDER[i.severity], i.kind, i.column or ""))
    return QualityReport(
        score=score,
        completeness=completeness,
        consistency=consistency,
        uniqueness=uniqueness,
        validity=validity,
        issues=tuple(issues),
    )
