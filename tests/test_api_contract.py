"""The committed gRPC stubs match protos/, and every hook is documented."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pluggy
from endcap import hookspecs

ROOT = Path(__file__).resolve().parent.parent


def check_generated(tool: str) -> None:
    """``tools/<tool> --check`` exits 0: what it generates is committed and current."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / tool), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_stubs_are_up_to_date() -> None:
    check_generated("generate_protos.py")


def hooks() -> list[tuple[str, object]]:
    return [(name, fn) for name, fn in vars(hookspecs).items() if name.startswith("endcap_") and callable(fn)]


def test_every_hook_is_a_spec_with_the_project_prefix() -> None:
    marker = pluggy.HookspecMarker("endcap").project_name + "_spec"
    assert hooks(), "no hooks found"
    for name, function in hooks():
        assert hasattr(function, marker), f"{name} is not decorated with @hookspec"


def test_every_hook_documents_each_argument_and_its_version() -> None:
    for name, function in hooks():
        doc = inspect.getdoc(function) or ""
        summary = doc.splitlines()[0] if doc else ""
        assert summary.endswith("."), f"{name}: the docstring must open with a one-line summary"
        for parameter in inspect.signature(function).parameters:
            assert f":param {parameter}:" in doc, f"{name}: document ':param {parameter}:'"
        assert ".. versionadded::" in doc, f"{name}: say in which version the hook appeared"
        annotations = inspect.get_annotations(function)
        assert "return" in annotations, f"{name}: annotate the return type"


def test_plugin_reference_is_up_to_date() -> None:
    check_generated("generate_docs.py")
    text = (ROOT / "docs" / "plugins.md").read_text()
    for name, _ in hooks():
        assert f"### `{name}`" in text, f"docs/plugins.md does not document {name}"


def test_every_hook_has_a_test_that_implements_it() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for name, _ in hooks():
        assert f"def {name}(" in sources, f"no test implements {name}; add one under tests/"
