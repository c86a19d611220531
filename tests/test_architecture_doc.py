"""docs/architecture.md names every package under core/, so the map cannot go stale."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def documented_packages() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("<!-- packages:", 1)[1].split("<!-- end packages -->", 1)[0]
    return set(re.findall(r"^\| `core/(\w+)/` \|", table, re.MULTILINE))


def test_the_architecture_doc_names_exactly_the_packages_under_core() -> None:
    packages = {p.parent.name for p in (ROOT / "core").glob("*/__init__.py")} - {"v1", "__pycache__"}
    assert packages, "no packages found under core/"
    assert documented_packages() == packages, "update the package table in docs/architecture.md"
