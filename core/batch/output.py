"""Putting batch output in place safely.

Output is written under a temporary name beside the target and moved into place only when it is
complete: a file with one atomic rename; a Parquet directory by moving the previous one aside,
renaming the new one in, then deleting the old. A run that fails leaves the previous output as it
was; a crash between the two renames is repaired by the next run (the previous output is put back).
"""

from __future__ import annotations

import os
import shutil
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from endcap.errors import InvalidArgument

FILE_SUFFIXES = (".csv", ".parquet")
BUCKETS = 16
"""Partitions (``user_bucket=N`` folders) of a Parquet directory output."""


def output_kind(out: Path) -> str:
    """``csv``, ``parquet`` (one file) or ``dataset`` (a partitioned Parquet directory: a path
    without one of the file suffixes)."""
    suffix = out.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix == ".parquet":
        return "parquet"
    if suffix:
        raise InvalidArgument(
            f"--out must end in {' or '.join(FILE_SUFFIXES)}, or name a directory for partitioned Parquet; got {out}"
        )
    return "dataset"


def user_buckets(user_ids: pd.Series) -> np.ndarray:
    """A stable partition number per user id (CRC-32 of the id, modulo :data:`BUCKETS`)."""
    codes, users = pd.factorize(user_ids.astype(str))  # every user has k rows: hash each user once
    buckets = np.array([zlib.crc32(u.encode()) % BUCKETS for u in users], dtype=np.int32)
    return buckets[codes]


def publish(out: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary)`` and, when it returns, move the result to ``out`` (see the module
    docstring). ``temporary`` is a file path for file outputs and a directory path for datasets."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover(out)
    token = uuid.uuid4().hex[:8]
    temporary = out.with_name(f".{out.name}.partial-{token}")
    try:
        write(temporary)
        if not temporary.is_dir():
            os.replace(temporary, out)
            return
        previous = out.with_name(f".{out.name}.previous")
        if out.exists():
            os.replace(out, previous)
        os.replace(temporary, out)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()


def _recover(out: Path) -> None:
    previous = out.with_name(f".{out.name}.previous")
    if previous.exists() and not out.exists():
        os.replace(previous, out)  # a run died between its two renames: the last good output returns
    elif previous.exists():
        shutil.rmtree(previous, ignore_errors=True)


def write_frame(frame: pd.DataFrame, out: Path) -> None:
    """Write ``frame`` as ``out`` asks (:func:`output_kind`), safely (:func:`publish`)."""
    kind = output_kind(out)

    def write(temporary: Path) -> None:
        if kind == "csv":
            frame.to_csv(temporary, index=False)
        elif kind == "parquet":
            frame.to_parquet(temporary, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame.assign(user_bucket=user_buckets(frame["user_id"])), preserve_index=False)
            pq.write_to_dataset(table, root_path=str(temporary), partition_cols=["user_bucket"])

    publish(out, write)
