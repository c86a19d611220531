"""Secrets a workspace generates for itself on first use and keeps, readable by its owner only."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from endcap.errors import ConfigError

SECRETS_DIR = "secrets"


def workspace_secret(root: Path, name: str) -> str:
    """The secret ``name`` of the workspace at ``root`` (``<root>/secrets/<name>``, mode 0600): read
    when it exists, else generated (32 random bytes, hex) and stored. Several processes starting
    at once agree on one value: it is written beside the target and linked into place, which
    fails for all but the first."""
    directory = root / SECRETS_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / name
    if not path.exists():
        partial = directory / f".{name}.{os.getpid()}.partial"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(partial, path)
        except FileExistsError:
            pass  # another process was first: its value is the workspace's
        finally:
            partial.unlink()
    value = path.read_text().strip()
    if not value:
        raise ConfigError(f"{path} is empty; delete it and a new secret is generated on next use")
    return value
