"""The table engine on pyarrow: profile, preview and convert stored tabular files."""

from datadl.adapters.tables.engine import ENGINE_VERSION, ArrowTableEngine

__all__ = ["ENGINE_VERSION", "ArrowTableEngine"]
