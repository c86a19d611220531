"""The canonical purchase log: ``user_id, item_id, basket_id`` (strings), ``timestamp`` (UTC) and
``quantity`` (int32), one row per basket line, sorted by user and time; written atomically to the
workspace with its description in ``data/ingest.json``, and read back with ids in Arrow buffers.

A log whose input said where each line went into the basket also has ``cart_position`` (int32,
1 for the first line added, 0 where not known): see :data:`OPTIONAL_COLUMNS`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from endcap.data.integer_codes import order_by, run_starts, sorted_codes_of, utc_microseconds
from endcap.errors import FailedPrecondition
from endcap.workspace import Workspace

CANONICAL_COLUMNS = ("user_id", "item_id", "basket_id", "timestamp", "quantity")
OPTIONAL_COLUMNS = ("cart_position",)
"""Columns a canonical log has only when its input gave them (0 in a line that did not)."""
ID_COLUMNS = ("user_id", "item_id", "basket_id")
ID_DTYPE = pd.StringDtype("pyarrow")
"""Strings held in Arrow buffers: the input's cells and the canonical log's ids."""


@dataclass(frozen=True)
class IngestSummary:
    source: str
    format: str
    rows: int
    users: int
    items: int
    baskets: int
    fingerprint: str
    """sha256 of the canonical log (see :func:`data_fingerprint`)."""
    ignored_columns: tuple[str, ...] = ()
    """Input columns the format does not use."""
    quarantined: int = 0
    """Rows set aside by ``--on-error quarantine``."""
    quarantine_file: str = ""


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, basket, item) — repeated lines add their quantities — sorted by user,
    time, basket and item, with the canonical column types (:class:`CodedLines`)."""
    return CodedLines.of(frame).canonical()


def log_columns(frame: pd.DataFrame) -> list[str]:
    """The canonical columns, then the optional ones ``frame`` has."""
    return [*CANONICAL_COLUMNS, *(column for column in OPTIONAL_COLUMNS if column in frame.columns)]


@dataclass(frozen=True)
class CodedLines:
    """A log's lines as integer codes: each id column numbered in string order (so sorting the
    codes sorts the strings), with the distinct strings kept in Arrow to take back only for the
    final rows. Once built, the caller can drop the frame it came from before the sort."""

    codes: dict[str, np.ndarray]
    strings: dict[str, pd.Index]
    times: np.ndarray
    quantity: np.ndarray
    positions: np.ndarray | None = None
    """Each line's ``cart_position`` (0: not known); ``None`` when the lines have none."""

    @classmethod
    def of(cls, frame: pd.DataFrame) -> CodedLines:
        ids = sorted_codes_of({column: _strings(frame[column]) for column in ID_COLUMNS})
        return cls(
            codes={column: codes for column, (codes, _) in ids.items()},
            strings={column: uniques for column, (_, uniques) in ids.items()},
            times=utc_microseconds(frame["timestamp"]),
            quantity=frame["quantity"].to_numpy(dtype=np.int64),
            positions=(
                frame["cart_position"].fillna(0).to_numpy(dtype=np.int64) if "cart_position" in frame.columns else None
            ),
        )

    def canonical(self) -> pd.DataFrame:
        """The canonical log of these lines."""
        user, basket, item = (self.codes[column] for column in ("user_id", "basket_id", "item_id"))
        order = order_by(user, basket, item)
        user, basket, item = user[order], basket[order], item[order]
        first = run_starts(user, basket, item)
        times = np.minimum.reduceat(self.times[order], first) if first.size else self.times
        quantity = np.add.reduceat(self.quantity[order], first) if first.size else self.quantity
        positions = None if self.positions is None else _first_position(self.positions[order], first)
        del order
        user, basket, item = user[first], basket[first], item[first]
        final = order_by(user, times)  # the rows are in (user, basket, item) order: ties keep it
        return pd.DataFrame(
            {
                "user_id": self.strings["user_id"].take(user[final]),
                "item_id": self.strings["item_id"].take(item[final]),
                "basket_id": self.strings["basket_id"].take(basket[final]),
                "timestamp": pd.DatetimeIndex(times[final].astype("datetime64[us]")).tz_localize("UTC"),
                "quantity": quantity[final].astype(np.int32),
                **({} if positions is None else {"cart_position": positions[final].astype(np.int32)}),
            },
            copy=False,  # each column is new: a copy would only double the peak
        )


def _first_position(positions: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The earliest known cart position of each run of repeated lines starting at ``first`` (0
    when no line of the run knows it)."""
    if not first.size:
        return positions
    unknown = np.iinfo(np.int64).max
    earliest = np.minimum.reduceat(np.where(positions > 0, positions, unknown), first)
    return np.where(earliest == unknown, 0, earliest)


def _strings(values: pd.Series) -> pd.Series:
    """``values`` as Arrow-backed strings (ids from other sources may be objects or numbers)."""
    return values if values.dtype == ID_DTYPE else values.astype(str).astype(ID_DTYPE)


def data_fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the canonical log's content (independent of the files it came from).

    The id columns are hashed as categoricals, which pandas hashes exactly like their strings
    but with each distinct string hashed once."""
    hashed_columns = frame[log_columns(frame)].astype({column: "category" for column in ID_COLUMNS})
    hashed = pd.util.hash_pandas_object(hashed_columns, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()


def store_log(
    frame: pd.DataFrame, workspace: Workspace, source: str, fmt: str, ignored: tuple[str, ...] = ()
) -> IngestSummary:
    """Write the canonical log atomically and describe it in ``data/ingest.json``."""
    summary = IngestSummary(
        source=source,
        format=fmt,
        rows=len(frame),
        users=int(frame["user_id"].nunique()),
        items=int(frame["item_id"].nunique()),
        baskets=int(frame["basket_id"].nunique()),
        fingerprint=data_fingerprint(frame),
        ignored_columns=ignored,
    )
    target = workspace.interactions
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".parquet.partial")
    frame.to_parquet(partial, index=False)
    os.replace(partial, target)
    workspace.ingest_manifest.write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary


def load_interactions(workspace: Workspace) -> pd.DataFrame:
    """The canonical log; a clear error when ``endcap ingest`` has not run."""
    if not workspace.interactions.exists():
        raise FailedPrecondition(
            f"no purchase log in {workspace.root}; run 'endcap ingest PATH' (or 'endcap ingest --demo') first"
        )
    table = pq.read_table(workspace.interactions)
    frame: pd.DataFrame = table.to_pandas(types_mapper={pa.string(): ID_DTYPE, pa.large_string(): ID_DTYPE}.get)
    return frame
