"""The workspace: one directory holding config, data, the Feast state, models and the event log."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WORKSPACE = ".endcap"
WORKSPACE_ENV = "ENDCAP_WORKSPACE"


@dataclass(frozen=True)
class Workspace:
    """Paths inside one workspace directory."""

    root: Path

    @classmethod
    def resolve(cls, path: str | os.PathLike[str] | None = None) -> Workspace:
        """``path``, else ``$ENDCAP_WORKSPACE``, else ``./.endcap``; always absolute."""
        chosen = path if path is not None else os.environ.get(WORKSPACE_ENV, DEFAULT_WORKSPACE)
        return cls(Path(chosen).expanduser().resolve())

    @property
    def interactions(self) -> Path:
        """The canonical purchase log written by ``endcap ingest``."""
        return self.root / "data" / "interactions.parquet"

    @property
    def ingest_manifest(self) -> Path:
        return self.root / "data" / "ingest.json"

    @property
    def features(self) -> Path:
        """Feature tables: the Feast offline store (parquet files)."""
        return self.root / "features"

    @property
    def feast(self) -> Path:
        """Feast registry and SQLite online store."""
        return self.root / "feast"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def events_log(self) -> Path:
        return self.root / "events" / "events.jsonl"
