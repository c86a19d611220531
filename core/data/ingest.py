"""``endcap ingest``: read a purchase log, validate every row, write the canonical parquet.

Two input formats, CSV or Parquet:

* ``instacart``: ``order_id,user_id,order_number,product_id`` (+ optional
  ``days_since_prior_order``, ``order_hour_of_day``, ``order_dow``, ``add_to_cart_order``,
  ``quantity``). Instacart has no absolute dates, so each user's orders are laid on a timeline
  from the gaps between them, ending in the week before :data:`INSTACART_ANCHOR`. With
  ``order_dow`` (0 = Sunday) every order falls on its own weekday: the last order on the latest
  such day, and a gap written as :data:`GAP_CAP_DAYS` ("that long or longer") widened to the
  first day of the order's weekday.
* ``generic``: ``user_id,item_id,timestamp[,quantity][,add_to_cart_order]``; timestamps are
  ISO-8601 or epoch seconds; a basket is one user's purchases on one UTC day (a ratings or
  clicks log becomes day-long sessions).

``add_to_cart_order`` (1 for the first line put in the basket) becomes the canonical log's
``cart_position``; a log without it has no such column.

Columns a format does not use (a rating, a price, ...) are ignored and named in the summary.

The canonical log has ``user_id, item_id, basket_id`` (strings), ``timestamp`` (UTC) and
``quantity`` (int32), one row per basket line, sorted by user and time.

Strings stay in Arrow buffers (:data:`ID_DTYPE`) from the CSV reader to the parquet file and back:
a 50M-line log as Python string objects would need several times the memory. The canonical log
itself (its columns, writing and reading it back) is :mod:`endcap.data.canonical_log`.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from endcap.data.canonical_log import (
    CANONICAL_COLUMNS,
    ID_DTYPE,
    CodedLines,
    IngestSummary,
    canonical,
    load_interactions,
    log_columns,
    store_log,
)
from endcap.data.integer_codes import utc_microseconds
from endcap.errors import InputFileError, InvalidArgument
from endcap.workspace import Workspace

INSTACART_REQUIRED = ("order_id", "user_id", "order_number", "product_id")
GENERIC_REQUIRED = ("user_id", "item_id", "timestamp")
FORMATS = ("auto", "instacart", "generic")
ON_ERROR = ("fail", "quarantine")
EPOCH_SECONDS_LIMIT = 253_402_300_800
INSTACART_ANCHOR = pd.Timestamp("2017-06-01", tz="UTC")
GAP_CAP_DAYS = 30
"""Instacart writes any gap of 30 days or more as 30."""
CART_POSITION = "add_to_cart_order"
KNOWN_COLUMNS = {
    "instacart": (
        *INSTACART_REQUIRED,
        "days_since_prior_order",
        "order_hour_of_day",
        "order_dow",
        "quantity",
        CART_POSITION,
    ),
    "generic": (*GENERIC_REQUIRED, "quantity", CART_POSITION),
}


class _Table:
    """The raw input, all values as Arrow-backed strings, with enough bookkeeping to locate a bad cell."""

    def __init__(self, path: Path, quarantine: bool = False) -> None:
        self.path = path
        self.is_csv = path.suffix.lower() not in (".parquet", ".pq")
        self.frame = _read_raw(path, self.is_csv)
        self.header = [str(c) for c in self.frame.columns]
        self.quarantine = quarantine
        self.problems: dict[int, tuple[str, str]] = {}
        """Rejected rows (quarantine mode): row → (column, reason); the first problem wins."""

    def line(self, row: int) -> int:
        return row + 2 if self.is_csv else row + 1  # CSV: header is line 1; parquet: row number

    def fail(self, row: int, column: str, reason: str) -> InputFileError:
        return InputFileError(str(self.path), self.line(row), self.header.index(column) + 1, reason)

    def reject(self, bad: Any, column: str, reason: Callable[[int], str]) -> None:
        """Refuse the file at the first bad row, or (quarantine mode) set every bad row aside."""
        rows = np.flatnonzero(pd.Series(bad, copy=False).fillna(False).to_numpy(dtype=bool))
        if rows.size == 0:
            return
        if not self.quarantine:
            raise self.fail(int(rows[0]), column, reason(int(rows[0])))
        for row in rows.tolist():
            self.problems.setdefault(row, (column, reason(row)))

    def rejected(self) -> pd.DataFrame:
        """The set-aside rows with where and why, followed by their original values."""
        rows = sorted(self.problems)
        located = pd.DataFrame(
            {
                "line": [self.line(r) for r in rows],
                "column": [self.header.index(self.problems[r][0]) + 1 for r in rows],
                "reason": [self.problems[r][1] for r in rows],
            }
        )
        return pd.concat([located, self.frame.loc[rows].reset_index(drop=True)], axis=1)

    def drop_accepted(self) -> None:
        """Once every column is read: keep only the rejected rows' raw cells (what
        :meth:`rejected` reports), so the raw table's memory is not held beside the parsed one."""
        self.frame = self.frame.loc[sorted(self.problems)]
        gc.collect()  # pandas' caches tie columns to frames in cycles: freed only by a collection

    def integers(self, column: str, minimum: int, default: int | None = None) -> np.ndarray:
        if column not in self.frame.columns:
            if default is None:
                raise InputFileError(str(self.path), 1, 0, f"missing column {column!r}")
            return np.full(len(self.frame), default, dtype=np.int64)
        raw = self.frame[column]
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() | (values < minimum) | (values != np.floor(values))
        if default is not None:
            blank = (raw.str.strip() == "").to_numpy(dtype=bool)
            values = values.where(~blank, default)
            bad &= ~blank
        self.reject(bad, column, lambda row: f"{column} must be an integer >= {minimum}, got {raw.iloc[row]!r}")
        return values.where(~bad, minimum).to_numpy(dtype=np.int64, na_value=minimum)

    def floats(self, column: str, minimum: float) -> np.ndarray:
        """Optional non-negative numbers; blanks become NaN."""
        if column not in self.frame.columns:
            return np.full(len(self.frame), np.nan)
        raw = self.frame[column]
        blank = (raw.str.strip() == "").to_numpy(dtype=bool)
        values = pd.to_numeric(raw, errors="coerce")
        bad = ~blank & (values.isna() | (values < minimum))
        self.reject(bad, column, lambda row: f"{column} must be a number >= {minimum} or empty, got {raw.iloc[row]!r}")
        return values.where(~bad, np.nan).to_numpy(dtype=np.float64, na_value=np.nan)

    def ids(self, column: str) -> pd.Series:
        values = self.frame[column].str.strip()
        values = values.str.replace(r"\.0$", "", regex=True)  # ids written as floats by pandas
        self.reject(values == "", column, lambda row: f"{column} is empty")
        return values

    def timestamps(self, column: str) -> pd.DatetimeIndex:
        raw = self.frame[column].str.strip()
        exact = _iso_with_zone(raw)
        if exact is not None:
            return exact
        numeric = pd.to_numeric(raw, errors="coerce")
        numeric = numeric.where(numeric.abs() < EPOCH_SECONDS_LIMIT)  # beyond year 9999: not a time
        if numeric.notna().all():
            parsed = pd.to_datetime(numeric, unit="s", utc=True, errors="coerce")
        else:  # ISO 8601 on the fast path; only what it cannot read goes through the slow guesser
            parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
            retry = parsed.isna() & numeric.isna()
            if retry.any():
                parsed[retry] = pd.to_datetime(raw[retry], utc=True, errors="coerce", format="mixed")
        bad = parsed.isna()
        self.reject(bad, column, lambda row: f"{column} is not an ISO-8601 time or epoch seconds: {raw.iloc[row]!r}")
        return pd.DatetimeIndex(parsed.where(~bad, pd.Timestamp(0, tz="UTC")))


def _iso_with_zone(raw: pd.Series) -> pd.DatetimeIndex | None:
    """Times when every cell is ISO 8601 with a zone (``2024-03-01 08:00:00Z``, ``...+01:00``),
    parsed by Arrow without leaving its buffers; ``None`` sends the column to pandas' parsers."""
    try:
        parsed = pc.cast(pa.array(raw.array), pa.timestamp("us", tz="UTC"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError):
        return None
    if parsed.null_count:
        return None
    return pd.DatetimeIndex(parsed.to_pandas())


def _utc_days(timestamps: pd.DatetimeIndex) -> pd.Series:
    """``YYYY-MM-DD`` of each UTC time: each distinct day formatted once, then taken per row."""
    days, rows = np.unique(utc_microseconds(timestamps) // 86_400_000_000, return_inverse=True)
    names = pa.array(np.datetime_as_string(days.astype("datetime64[D]")), type=pa.string())
    per_row = pa.DictionaryArray.from_arrays(pa.array(rows.astype(np.int32)), names).cast(pa.string())
    return pd.Series(per_row, dtype=ID_DTYPE)


def _read_csv_with_arrow(path: Path) -> pd.DataFrame | None:
    """Every cell of the CSV file ``path`` as a string, read by Arrow's multi-threaded reader
    under the names pandas gives the header; ``None`` when Arrow refuses the file (a row of
    another length, bad UTF-8, a value over several lines): pandas' reader then reads it, and
    its errors name the line."""
    try:
        names = [str(c) for c in pd.read_csv(path, nrows=0, encoding="utf-8").columns]
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowException, ValueError, UnicodeDecodeError, pd.errors.ParserError):
        return None
    frame: pd.DataFrame = table.to_pandas(types_mapper={pa.string(): ID_DTYPE}.get)
    return frame


def _read_raw(path: Path, is_csv: bool) -> pd.DataFrame:
    if not path.exists():
        raise InputFileError(str(path), 0, 0, "no such file")
    try:
        if is_csv:
            frame = _read_csv_with_arrow(path)
            if frame is None:
                frame = pd.read_csv(path, dtype=ID_DTYPE, keep_default_na=False, encoding="utf-8")
        else:
            frame = pd.read_parquet(path).astype(str).astype(ID_DTYPE)
    except UnicodeDecodeError as exc:
        line, column = _first_invalid_utf8(path)
        raise InputFileError(str(path), line, column, "not valid UTF-8 text") from exc
    except pd.errors.ParserError as exc:
        raise InputFileError(str(path), _line_in(str(exc)), 0, f"malformed CSV: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise InputFileError(str(path), 0, 0, f"cannot read: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.reset_index(drop=True)  # rows longer than the header: pandas made an index of the surplus
    if frame.empty:
        raise InputFileError(str(path), 1, 0, "no rows")
    return frame


def _first_invalid_utf8(path: Path) -> tuple[int, int]:
    """Line and byte column (1-based) of the first byte sequence that is not UTF-8."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return number, exc.start + 1
    return 0, 0


def _line_in(message: str) -> int:
    words = message.replace(",", " ").split()
    for before, word in itertools.pairwise(words):
        if before == "line" and word.isdigit():
            return int(word)
    return 0


def detect_format(columns: list[str]) -> str | None:
    if all(c in columns for c in INSTACART_REQUIRED):
        return "instacart"
    if all(c in columns for c in GENERIC_REQUIRED):
        return "generic"
    return None


def _instacart(table: _Table) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "user_id": table.ids("user_id"),
            "item_id": table.ids("product_id"),
            "basket_id": table.ids("order_id"),
            "order_number": table.integers("order_number", 1),
            "gap_days": table.floats("days_since_prior_order", 0.0),
            "hour": table.integers("order_hour_of_day", 0, default=12),
            "weekday": _weekdays(table),
            "quantity": table.integers("quantity", 1, default=1),
            **_cart_positions(table),
        }
    )
    table.drop_accepted()
    frame = _without(frame, table.problems)  # quarantined rows must not shape the timeline
    orders = frame.drop_duplicates("basket_id")[["basket_id", "user_id", "order_number", "gap_days", "hour", "weekday"]]
    owners = frame.groupby("basket_id", sort=False)["user_id"].nunique()
    if (owners > 1).any():
        basket = owners.index[int(np.argmax((owners > 1).to_numpy()))]
        row = int(frame.index[np.flatnonzero(frame["basket_id"].to_numpy() == basket)[0]])  # the input's row
        raise table.fail(row, "order_id", f"order {basket} belongs to more than one user_id")
    orders = orders.sort_values(["user_id", "order_number"], kind="stable")
    days_before_last = _days_before_last(orders)
    orders["timestamp"] = (
        INSTACART_ANCHOR
        - pd.to_timedelta(days_before_last, unit="D")
        + pd.to_timedelta(orders["hour"].to_numpy(), unit="h")
    )
    frame = frame.merge(orders[["basket_id", "timestamp"]], on="basket_id", how="left")
    return frame[log_columns(frame)]


def _weekdays(table: _Table) -> np.ndarray:
    """``order_dow`` as Monday-first weekdays (Instacart's 0 is Sunday); -1 where not given."""
    sunday_first = table.integers("order_dow", 0, default=-1)
    table.reject(
        sunday_first > 6, "order_dow", lambda row: f"order_dow must be 0 (Sunday) to 6, got {sunday_first[row]}"
    )
    return np.where((sunday_first >= 0) & (sunday_first <= 6), (sunday_first + 6) % 7, -1)


def _cart_positions(table: _Table) -> dict[str, np.ndarray]:
    """``{"cart_position": ...}`` when the input has ``add_to_cart_order`` (blank: 0, not known)."""
    if CART_POSITION not in table.header:
        return {}
    return {"cart_position": table.integers(CART_POSITION, 1, default=0)}


def _days_before_last(orders: pd.DataFrame) -> np.ndarray:
    """Days from each order (sorted by user and number) to the day :data:`INSTACART_ANCHOR`
    stands for in its user's timeline: the anchor itself, or with weekdays the latest day
    before it on the last order's weekday. With weekdays a capped gap is widened to the order's
    weekday."""
    users = orders["user_id"]
    gaps = orders["gap_days"].fillna(0.0).to_numpy()
    weekday = orders["weekday"].to_numpy()
    before = pd.Series(weekday, index=orders.index).groupby(users, sort=False).shift().fillna(-1).to_numpy()
    capped = (gaps >= GAP_CAP_DAYS) & (weekday >= 0) & (before >= 0)
    gaps = np.where(capped, gaps + (weekday - before - np.round(gaps)) % 7, gaps)
    day = pd.Series(gaps, index=orders.index).groupby(users, sort=False).cumsum()
    last_day = day.groupby(users, sort=False).transform("max").to_numpy()
    last_weekday = pd.Series(weekday, index=orders.index).groupby(users, sort=False).transform("last").to_numpy()
    shift = np.where(last_weekday >= 0, (INSTACART_ANCHOR.weekday() - last_weekday) % 7, 0)
    return np.asarray(last_day - day.to_numpy() + shift, dtype=np.float64)


def _without(frame: pd.DataFrame, rows: dict[int, Any], renumber: bool = False) -> pd.DataFrame:
    """``frame`` without the rejected ``rows`` (numbered from 0 again with ``renumber``); the
    frame itself when there are none (dropping nothing still copies every column: gigabytes at scale)."""
    if not rows:
        return frame
    kept = frame.drop(index=sorted(rows))
    return kept.reset_index(drop=True) if renumber else kept


def _generic(table: _Table) -> pd.DataFrame:
    timestamps = table.timestamps("timestamp")
    users = table.ids("user_id")
    items = table.ids("item_id")
    quantity = table.integers("quantity", 1, default=1)
    positions = _cart_positions(table)
    table.drop_accepted()
    frame = pd.DataFrame(
        {
            "user_id": users,
            "item_id": items,
            "basket_id": users + "@" + _utc_days(timestamps),
            "timestamp": timestamps,
            "quantity": quantity,
            **positions,
        },
        copy=False,
    )
    return _without(frame, table.problems, renumber=True)


def read_purchase_log(path: Path, fmt: str = "auto") -> tuple[pd.DataFrame, str]:
    """Validate ``path`` and return the canonical log and the format it was read as; the first
    bad row refuses the whole file."""
    frame, chosen, _ = read_purchase_log_quarantining(path, fmt, quarantine=False)
    return frame, chosen


def read_purchase_log_quarantining(
    path: Path, fmt: str = "auto", quarantine: bool = True
) -> tuple[pd.DataFrame, str, pd.DataFrame]:
    """Like :func:`read_purchase_log`, but bad rows are set aside (returned third, with line,
    column and reason) instead of refusing the file. Problems with the file itself (encoding,
    header, CSV structure) still refuse it."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    table = _Table(path, quarantine)
    chosen = detect_format(table.header) if fmt == "auto" else fmt
    if chosen is None:
        raise InputFileError(
            str(path),
            1,
            0,
            f"cannot tell the format from the header {table.header}; expected the Instacart columns "
            f"{', '.join(INSTACART_REQUIRED)} or the generic columns {', '.join(GENERIC_REQUIRED)}",
        )
    required = INSTACART_REQUIRED if chosen == "instacart" else GENERIC_REQUIRED
    missing = [c for c in required if c not in table.header]
    if missing:
        raise InputFileError(str(path), 1, 0, f"{chosen} format needs column(s) {', '.join(missing)}")
    frame = _instacart(table) if chosen == "instacart" else _generic(table)
    rejected = table.rejected()  # each format's frame already leaves the rejected rows out
    del table
    if frame.empty:
        raise InputFileError(
            str(path), 0, 0, f"no valid rows ({len(rejected)} rejected; the first: {rejected['reason'].iloc[0]})"
        )
    lines = CodedLines.of(frame)
    del frame  # the codes hold everything the canonical log is built from: at scale, gigabytes
    gc.collect()  # that the sort below does not need, freed only by a collection (see drop_accepted)
    return lines.canonical(), chosen, rejected


def ignored_columns(path: Path, fmt: str) -> list[str]:
    """Columns of ``path`` that the format does not use (they are ignored, not an error)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        header = pq.read_schema(path).names
    else:
        header = pd.read_csv(path, nrows=0, encoding="utf-8").columns
    return [
        str(c).strip() for c in header if str(c).strip() not in KNOWN_COLUMNS[fmt] and not str(c).startswith("Unnamed")
    ]


def ingest(
    path: Path, workspace: Workspace, fmt: str = "auto", append: bool = False, on_error: str = "fail"
) -> IngestSummary:
    """Validate ``path`` and replace the workspace's canonical log with it, or add it to the log
    with ``append``. With ``on_error="fail"`` nothing is written unless every row is valid; with
    ``"quarantine"`` bad rows go to ``data/quarantine/<file>-<time>.csv`` and the rest is ingested."""
    if on_error not in ON_ERROR:
        raise InvalidArgument(f"--on-error must be one of {', '.join(ON_ERROR)}; got {on_error!r}")
    frame, chosen, rejected = read_purchase_log_quarantining(path, fmt, quarantine=on_error == "quarantine")
    if append and workspace.interactions.exists():
        frame = canonical(pd.concat([load_interactions(workspace), frame], ignore_index=True))
    quarantine_file = ""
    if len(rejected):
        stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%SZ")
        target = workspace.root / "data" / "quarantine" / f"{path.stem}-{stamp}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        rejected.to_csv(target, index=False)
        quarantine_file = str(target)
    summary = store_log(frame, workspace, source=str(path), fmt=chosen, ignored=tuple(ignored_columns(path, chosen)))
    return replace(summary, quarantined=len(rejected), quarantine_file=quarantine_file)


__all__ = [
    "CANONICAL_COLUMNS",
    "INSTACART_ANCHOR",
    "IngestSummary",
    "canonical",
    "detect_format",
    "ignored_columns",
    "ingest",
    "load_interactions",
    "read_purchase_log",
    "read_purchase_log_quarantining",
    "store_log",
]
