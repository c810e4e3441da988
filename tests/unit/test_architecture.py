"""The dependency rule, checked on the source: what each core layer may import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "datadl"

# What each core layer may import beyond the standard library.
ALLOWED = {
    "domain": {"attrs", "datadl.domain"},
    "ports": {"attrs", "datadl.domain", "datadl.ports"},
    "services": {"attrs", "datadl.domain", "datadl.ports", "datadl.services"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _allowed(module: str, allowed: set[str]) -> bool:
    top = module.split(".")[0]
    if top in sys.stdlib_module_names and top != "datadl":
        return True
    return any(module == a or module.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_core_layers_import_only_what_they_may(layer: str) -> None:
    """Each core layer imports only the standard library, attrs and the layers beneath it."""
    offenders = {
        f"{path.relative_to(SRC)}: {module}"
        for path in (SRC / layer).rglob("*.py")
        for module in _imports(path)
        if not _allowed(module, ALLOWED[layer])
    }
    assert not offenders, sorted(offenders)


def test_domain_does_not_use_asyncio() -> None:
    """The domain is pure: no event loop, so its rules run anywhere."""
    users = [p.name for p in (SRC / "domain").rglob("*.py") if "asyncio" in _imports(p)]
    assert users == []


def test_importing_datadl_opens_and_configures_nothing() -> None:
    """Importing the package pulls in no adapter, driver, container or logging setup."""
    code = (
        "import sys, logging; import datadl, datadl.domain.model; "
        "bad = [m for m in ('datadl.adapters', 'datadl.container', 'datadl.wiring', "
        "'dependency_injector', 'structlog') if m in sys.modules]; "
        "assert not bad, bad; assert not logging.getLogger().handlers"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
