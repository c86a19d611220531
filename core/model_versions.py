"""The model registry: versioned directories written complete, made current by an atomic switch.

Layout under ``<workspace>/models``::

    <version>/manifest.json      what was trained, when, on what data, with which parameters
    <version>/catalog.npz        user and item ids (index = position)
    <version>/user_items.npz     users × items purchase counts (CSR)
    <version>/components/<kind>/<name>/   each component's own artifacts
    CURRENT                      the version servers load
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import scipy.sparse as sp
from endcap.errors import FailedPrecondition, NotFound
from endcap.types import Catalog

CURRENT = "CURRENT"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ComponentManifest:
    kind: str
    type: str
    plugin: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    version: str
    trained_at: str
    """ISO-8601 UTC."""
    data_fingerprint: str
    data_source: str
    training_rows: int
    users: int
    items: int
    components: dict[str, ComponentManifest]
    """By ``<kind>/<name>``."""
    endcap_version: str
    validation: dict[str, float] = field(default_factory=dict)
    """The pipeline's metrics on the validation holdout (each user's newest basket; a random
    quarter of their items in a no-repeat log), trained without it, and ``popularity_ndcg@10``
    (G-TopFreq on the same holdout); empty when skipped."""
    checksums: dict[str, str] = field(default_factory=dict)
    """sha256 of every artifact file, by path relative to the version directory."""
    repeat_share: float | None = None
    """Share of the log's purchases that repeat an item the user had bought before (``None``: not measured)."""
    exclude_purchased: bool = False
    """Whether serving leaves out items the user already bought (``serving.exclude_purchased``,
    decided from :attr:`repeat_share` under ``auto``)."""
    holdout_fingerprint: str = ""
    """The validation holdout the per-user values in ``validation.npz`` were measured on
    (:func:`endcap.evaluation.holdout.holdout_fingerprint`); empty when validation was skipped."""
    configuration: dict[str, Any] = field(default_factory=dict)
    """The resolved model configuration (:func:`endcap.release.validation_record.model_configuration`):
    what the promotion gate rebuilds to score this model on another version's holdout."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        raw["components"] = {k: ComponentManifest(**v) for k, v in raw["components"].items()}
        return cls(**raw)


def component_dir(version_dir: Path, kind: str, name: str) -> Path:
    return version_dir / "components" / kind / name


def save_catalog(directory: Path, catalog: Catalog, user_items: sp.csr_matrix) -> None:
    np.savez(directory / "catalog.npz", user_ids=catalog.user_ids, item_ids=catalog.item_ids)
    sp.save_npz(directory / "user_items.npz", user_items, compressed=False)


def load_catalog(directory: Path) -> tuple[Catalog, sp.csr_matrix]:
    with np.load(directory / "catalog.npz") as arrays:
        catalog = Catalog(user_ids=arrays["user_ids"], item_ids=arrays["item_ids"])
    # load_npz is typed for any sparse container; save_catalog wrote a CSR matrix, which loads as one.
    return catalog, cast(sp.csr_matrix, sp.load_npz(directory / "user_items.npz")).tocsr()


class CorruptArtifact(FailedPrecondition):
    """A model version's files do not match the checksums recorded when it was written."""


def artifact_checksums(directory: Path) -> dict[str, str]:
    checksums = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(functools.partial(handle.read, 1 << 20), b""):
                digest.update(block)
        checksums[str(path.relative_to(directory))] = digest.hexdigest()
    return checksums


def verify_artifact(directory: Path, manifest: Manifest) -> None:
    """Refuse a version whose files were changed, removed or added since it was written."""
    if not manifest.checksums:
        raise CorruptArtifact(f"model {manifest.version} records no checksums; retrain it with this Endcap")
    found = artifact_checksums(directory)
    for name in sorted(manifest.checksums.keys() | found.keys()):
        expected, actual = manifest.checksums.get(name), found.get(name)
        if expected != actual:
            what = (
                "is missing" if actual is None else "was added" if expected is None else "does not match its checksum"
            )
            raise CorruptArtifact(
                f"model {manifest.version}: {name} {what}; the artifact was modified or corrupted — "
                "promote another version or retrain"
            )


class ModelRegistry:
    """Model versions of one workspace."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def new_version_name(self, now: datetime | None = None) -> str:
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
        return f"v{stamp}"

    def staging_dir(self) -> Path:
        """An empty directory on the same filesystem, renamed into place by :meth:`commit`."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))

    def commit(self, staging: Path, manifest: Manifest) -> Path:
        """Record every file's checksum in the manifest, then move the version into place."""
        manifest = replace(manifest, checksums=artifact_checksums(staging))
        (staging / MANIFEST).write_text(manifest.to_json())
        target = self.root / manifest.version
        os.replace(staging, target)
        return target

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def versions(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST).exists())

    def current(self) -> str | None:
        pointer = self.root / CURRENT
        return pointer.read_text().strip() if pointer.exists() else None

    def set_current(self, version: str) -> None:
        if not (self.root / version / MANIFEST).exists():
            raise NotFound(f"no model version {version!r} in {self.root}; 'endcap train' writes one")
        partial = self.root / f".{CURRENT}.partial"
        partial.write_text(version + "\n")
        os.replace(partial, self.root / CURRENT)

    def path(self, version: str | None = None) -> Path:
        """Directory of ``version`` (default: the current one)."""
        chosen = version or self.current()
        if chosen is None:
            raise FailedPrecondition(f"no current model in {self.root}; run 'endcap train' first")
        directory = self.root / chosen
        if not (directory / MANIFEST).exists():
            raise NotFound(f"model version {chosen!r} not found in {self.root}")
        return directory

    def manifest(self, version: str | None = None) -> Manifest:
        return Manifest.from_json((self.path(version) / MANIFEST).read_text())
