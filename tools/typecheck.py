"""Run ``mypy --strict`` (configured in pyproject.toml) over the ``endcap`` package.

The package is installed from three directories (``core`` is ``endcap``, ``plugins`` is
``endcap.plugins``, ``feature_repo`` is ``endcap.feature_repo``), which mypy cannot map by
itself. This script builds the installed layout as a tree of symlinks under ``.mypy_cache/layout``
(stable, so mypy's incremental cache stays valid), checks ``-p endcap`` there, and reports every
error against the file in the repository.

Usage: ``python tools/typecheck.py [extra mypy arguments]``; exits with mypy's status.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = ROOT / ".mypy_cache" / "layout"
# Package directory -> repository directory, most specific first (for mapping paths back).
PACKAGES = {
    "endcap/plugins": "plugins",
    "endcap/feature_repo": "feature_repo",
    "endcap": "core",
}


def build_layout() -> None:
    """Symlink every entry of core/ into ``endcap/``, and plugins/ and feature_repo/ under it."""
    package = LAYOUT / "endcap"
    package.mkdir(parents=True, exist_ok=True)
    wanted = {entry.name: entry for entry in (ROOT / "core").iterdir() if entry.name != "__pycache__"}
    wanted["plugins"] = ROOT / "plugins"
    wanted["feature_repo"] = ROOT / "feature_repo"
    for existing in package.iterdir():  # drop links to entries since removed or moved
        if existing.name not in wanted or existing.resolve() != wanted[existing.name]:
            existing.unlink()
    for name, target in wanted.items():
        link = package / name
        if not link.is_symlink():
            link.symlink_to(target)


def to_repository_path(line: str) -> str:
    """``<layout>/endcap/plugins/als.py:3: ...`` -> ``plugins/als.py:3: ...``."""
    for prefix in (str(LAYOUT) + os.sep, os.path.relpath(LAYOUT, Path.cwd()) + os.sep):
        if line.startswith(prefix):
            rest = line[len(prefix) :]
            for package, directory in PACKAGES.items():
                if rest.startswith(package + "/"):
                    return directory + rest[len(package) :]
    return line


def main(argv: list[str]) -> int:
    build_layout()
    env = dict(os.environ, MYPYPATH=str(LAYOUT))
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "-p", "endcap", *argv]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    for line in result.stdout.splitlines():
        print(to_repository_path(line))
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
