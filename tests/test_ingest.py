from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from endcap.cli.main import main
from endcap.data.ingest import INSTACART_ANCHOR, ingest, read_purchase_log
from endcap.errors import InputFileError
from endcap.workspace import Workspace


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_instacart_orders_are_laid_on_a_timeline_ending_at_the_anchor(tmp_path: Path) -> None:
    path = write(
        tmp_path / "orders.csv",
        "order_id,user_id,order_number,days_since_prior_order,order_hour_of_day,product_id\n"
        "10,1,1,,8,100\n10,1,1,,8,101\n11,1,2,7.0,9,100\n12,2,1,,10,102\n",
    )
    frame, fmt = read_purchase_log(path)
    assert fmt == "instacart"
    assert list(frame.columns) == ["user_id", "item_id", "basket_id", "timestamp", "quantity"]
    assert len(frame) == 4
    user1 = frame[frame.user_id == "1"].drop_duplicates("basket_id").set_index("basket_id")["timestamp"]
    assert user1["11"] - user1["10"] == pd.Timedelta(days=7, hours=1)
    assert user1["11"] == INSTACART_ANCHOR + pd.Timedelta(hours=9)


def test_generic_format_with_epoch_seconds_and_default_quantity(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\na,x,1700000000\na,y,1700000000\nb,x,1700003600\n")
    frame, fmt = read_purchase_log(path)
    assert fmt == "generic"
    assert frame["quantity"].tolist() == [1, 1, 1]
    assert frame.groupby("user_id")["basket_id"].nunique().to_dict() == {"a": 1, "b": 1}


def test_duplicate_lines_in_one_basket_add_up_their_quantity(tmp_path: Path) -> None:
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp,quantity\na,x,2024-01-01,2\na,x,2024-01-01,3\n")
    frame, _ = read_purchase_log(path)
    assert frame["quantity"].tolist() == [5]


def test_parquet_input(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": ["2024-01-01T10:00:00Z"]}).to_parquet(path)
    frame, _ = read_purchase_log(path)
    assert frame.iloc[0]["timestamp"] == pd.Timestamp("2024-01-01T10:00:00Z")


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("user_id,item_id,timestamp\na,x,2024-01-01\nb,,2024-01-02\n", 3, 2, "item_id is empty"),
        ("user_id,item_id,timestamp\na,x,yesterday\n", 2, 3, "not an ISO-8601"),
        ("user_id,item_id,timestamp,quantity\na,x,2024-01-01,-2\n", 2, 4, "integer >= 1"),
        ("order_id,user_id,order_number,product_id\n1,5,one,7\n", 2, 3, "order_number must be an integer"),
        ("user,thing,when\na,b,c\n", 1, 0, "cannot tell the format"),
    ],
)
def test_bad_rows_are_refused_with_file_line_and_column(
    tmp_path: Path, text: str, line: int, column: int, words: str
) -> None:
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(InputFileError) as caught:
        read_purchase_log(path)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert words in caught.value.reason
    assert str(caught.value).startswith(f"{path}:{line}:{column}: ")


def test_invalid_utf8_is_located(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"user_id,item_id,timestamp\na,caf\xe9,2024-01-01\n")
    with pytest.raises(InputFileError) as caught:
        read_purchase_log(path)
    assert (caught.value.line, caught.value.column) == (2, 6)
    assert "UTF-8" in caught.value.reason


def test_order_shared_by_two_users_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "o.csv", "order_id,user_id,order_number,product_id\n1,5,1,7\n1,6,1,8\n")
    with pytest.raises(InputFileError, match="belongs to more than one user_id"):
        read_purchase_log(path)


def test_cli_reports_error_without_traceback_and_keeps_previous_log(tmp_path: Path, capsys) -> None:
    workspace = Workspace.resolve(tmp_path / "ws")
    good = write(tmp_path / "good.csv", "user_id,item_id,timestamp\na,x,2024-01-01\n")
    ingest(good, workspace)
    before = workspace.interactions.read_bytes()
    bad = write(tmp_path / "bad.csv", "user_id,item_id,timestamp\na,x,never\n")
    code = main(["ingest", str(bad), "--workspace", str(workspace.root)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:2:3:" in err
    assert "Traceback" not in err
    assert workspace.interactions.read_bytes() == before


def test_forced_format_must_match_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "g.csv", "user_id,item_id,timestamp\na,x,2024-01-01\n")
    with pytest.raises(InputFileError, match="instacart format needs column"):
        read_purchase_log(path, "instacart")


def test_generic_baskets_are_days_and_extra_columns_are_noted(tmp_path: Path, capsys) -> None:
    path = write(
        tmp_path / "ratings.csv",
        "user_id,item_id,rating,timestamp\na,x,5,2024-01-01T08:00:00Z\na,y,3,2024-01-01T20:00:00Z\na,z,4,2024-01-02T09:00:00Z\n",
    )
    frame, _ = read_purchase_log(path)
    assert frame.groupby("basket_id")["item_id"].apply(sorted).to_dict() == {
        "a@2024-01-01": ["x", "y"],
        "a@2024-01-02": ["z"],
    }
    workspace = tmp_path / "ws"
    assert main(["ingest", str(path), "--workspace", str(workspace)]) == 0
    assert "columns not used by the generic format were ignored: rating" in capsys.readouterr().out


def test_append_adds_to_the_log_and_changes_the_fingerprint(tmp_path: Path) -> None:
    workspace = Workspace.resolve(tmp_path / "ws")
    first = ingest(write(tmp_path / "a.csv", "user_id,item_id,timestamp\na,x,2024-01-01\n"), workspace)
    second = ingest(
        write(tmp_path / "b.csv", "user_id,item_id,timestamp\nb,y,2024-01-02\na,x,2024-01-01\n"), workspace, append=True
    )
    assert (first.rows, second.rows) == (1, 2)
    assert first.fingerprint != second.fingerprint
    assert second.users == 2


def test_epoch_seconds_beyond_year_9999_are_refused_not_crashed(tmp_path: Path) -> None:
    # found by the fuzzer: pandas overflowed converting this to a time
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,i,999999999999999999999999999999\n")
    with pytest.raises(InputFileError, match="not an ISO-8601 time or epoch seconds"):
        read_purchase_log(path)


AWKWARD_CSV = (
    "\ufeffuser_id, item_id ,timestamp,note,note\r\n"
    'u1,"p,1",2024-03-01T08:00:00Z,"said ""hi""",a\r\n'
    "\r\n"
    "  u2 ,p2,1709280000,,b\r\n"
    "ü3,p\u00e93,2024-03-02 09:00:00+01:00,NA,NULL\r\n"
    'u4,p4,2024-03-03,"",c\r\n'
)


def test_the_fast_csv_reader_reads_every_cell_as_pandas_does(tmp_path: Path) -> None:
    from endcap.data.canonical_log import ID_DTYPE
    from endcap.data.ingest import _read_csv_with_arrow

    path = tmp_path / "awkward.csv"
    path.write_bytes(AWKWARD_CSV.encode())
    fast = _read_csv_with_arrow(path)
    assert fast is not None
    expected = pd.read_csv(path, dtype=ID_DTYPE, keep_default_na=False, encoding="utf-8")
    assert list(fast.columns) == list(expected.columns) == ["user_id", " item_id ", "timestamp", "note", "note.1"]
    pd.testing.assert_frame_equal(fast, expected)
    assert fast["note"].tolist() == ['said "hi"', "", "NA", ""]  # nothing became missing


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("user_id,item_id,timestamp\nu1,p1,2024-03-01\nu2,p2\nu3,p3,2024-03-02\n", 3),  # a short row
        ("user_id,item_id,timestamp\nu1,p1,2024-03-01\nu2,p2,2024-03-01,extra\n", 3),  # a long one
    ],
)
def test_a_row_the_fast_reader_refuses_is_read_by_pandas_and_located(tmp_path: Path, text: str, line: int) -> None:
    from endcap.data.ingest import _read_csv_with_arrow

    path = tmp_path / "uneven.csv"
    path.write_text(text)
    assert _read_csv_with_arrow(path) is None
    with pytest.raises(InputFileError) as raised:
        read_purchase_log(path)
    assert raised.value.line == line


@pytest.mark.parametrize("span", [10, 2**40, 2**60])  # the last too wide to pack: lexsort itself
def test_order_by_is_lexsorts_order(span: int) -> None:
    import numpy as np
    from endcap.data.integer_codes import order_by

    rng = np.random.default_rng(span)
    first = rng.integers(-5, 50, 5000)  # negative keys (times before 1970) and many ties
    second = rng.integers(-span, span, 5000)
    third = rng.integers(0, 7, 5000)
    assert np.array_equal(order_by(first, second, third), np.lexsort((third, second, first)))
    assert order_by(np.empty(0, np.int64), np.empty(0, np.int64)).size == 0


def test_instacart_orders_fall_on_their_weekdays_and_capped_gaps_are_widened_to_them(tmp_path: Path) -> None:
    # user 1: Sunday, then 3 days later (Wednesday), then "30 days or more" to a Monday; user 2
    # orders on Fridays only. Instacart's order_dow counts from Sunday = 0.
    path = write(
        tmp_path / "orders.csv",
        "order_id,user_id,order_number,order_dow,days_since_prior_order,order_hour_of_day,product_id\n"
        "10,1,1,0,,8,100\n11,1,2,3,3.0,9,100\n12,1,3,1,30.0,10,101\n20,2,1,5,,11,102\n21,2,2,5,7.0,12,102\n",
    )
    frame, _ = read_purchase_log(path)
    orders = frame.drop_duplicates("basket_id").set_index("basket_id")["timestamp"]
    assert {basket: orders[basket].day_name() for basket in orders.index} == {
        "10": "Sunday",
        "11": "Wednesday",
        "12": "Monday",
        "20": "Friday",
        "21": "Friday",
    }
    assert orders["11"] - orders["10"] == pd.Timedelta(days=3, hours=1)
    assert orders["12"].normalize() - orders["11"].normalize() == pd.Timedelta(days=33)  # 30 days or more: 33
    assert orders["21"].normalize() - orders["20"].normalize() == pd.Timedelta(days=7)
    for last in ("12", "21"):  # each user's last order: the latest day of its weekday up to the anchor
        assert pd.Timedelta(0) <= INSTACART_ANCHOR - orders[last].normalize() < pd.Timedelta(days=7)


def test_add_to_cart_order_becomes_the_cart_position_and_a_log_without_it_has_none(tmp_path: Path) -> None:
    instacart = write(
        tmp_path / "orders.csv",
        "order_id,user_id,order_number,product_id,add_to_cart_order\n10,1,1,100,2\n10,1,1,101,1\n11,1,2,100,\n",
    )
    frame, _ = read_purchase_log(instacart)
    positions = frame.set_index(["basket_id", "item_id"])["cart_position"]
    assert positions.to_dict() == {("10", "100"): 2, ("10", "101"): 1, ("11", "100"): 0}  # blank: not known
    generic = write(
        tmp_path / "log.csv",
        "user_id,item_id,timestamp,add_to_cart_order\na,x,2024-01-01T10:00:00Z,3\na,x,2024-01-01T10:05:00Z,1\n",
    )
    frame, _ = read_purchase_log(generic)
    assert frame["cart_position"].tolist() == [1]  # one line of the basket twice: its earliest position
    plain = write(tmp_path / "plain.csv", "user_id,item_id,timestamp\na,x,2024-01-01\n")
    assert "cart_position" not in read_purchase_log(plain)[0].columns


@pytest.mark.parametrize(
    ("header", "row", "column", "words"),
    [
        ("order_id,user_id,order_number,product_id,order_dow", "1,5,1,7,7", 5, "order_dow must be 0 (Sunday) to 6"),
        ("order_id,user_id,order_number,product_id,add_to_cart_order", "1,5,1,7,0", 5, "add_to_cart_order must be"),
    ],
)
def test_an_optional_column_out_of_range_is_refused_where_it_is(
    tmp_path: Path, header: str, row: str, column: int, words: str
) -> None:
    path = write(tmp_path / "orders.csv", f"{header}\n1,5,1,8,1\n{row}\n")
    with pytest.raises(InputFileError) as raised:
        read_purchase_log(path)
    assert (raised.value.line, raised.value.column) == (3, column) and words in str(raised.value)
