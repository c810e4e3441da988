"""datadl: publish tabular datasets and download them safely and fast.

Importing the package reads no configuration, opens nothing and configures no logging;
``datadl.bootstrap()`` builds the services when asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Datadl", "__version__", "bootstrap"]

if TYPE_CHECKING:
    from datadl.wiring import Datadl, bootstrap


def __getattr__(name: str) -> Any:
    # Lazy, so that importing datadl.domain alone does not pull every adapter in.
    if name in ("bootstrap", "Datadl"):
        from datadl import wiring

        return getattr(wiring, name)
    raise AttributeError(f"module 'datadl' has no attribute {name!r}")
