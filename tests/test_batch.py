"""Batch recommendation jobs: the local engine and Spark (local[*], for real) write the same
answers, and output is replaced atomically or not at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from endcap.batch.output import publish, write_frame


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(user_bucket=frame["user_bucket"].astype(int)) if "user_bucket" in frame else frame
    return frame.sort_values(["user_id", "rank"]).reset_index(drop=True)


@pytest.mark.parametrize("broadcast_mb", ["512", "0"])  # the version broadcast, or read from the workspace
def test_spark_engine_writes_what_the_local_engine_writes(
    synthetic_workspace: Path, tmp_path: Path, broadcast_mb: str
) -> None:
    run_cli("batch", "--out", str(tmp_path / "local"), "--k", "7", workspace=synthetic_workspace)
    said = run_cli(
        "batch",
        "--engine",
        "spark",
        "--master",
        "local[2]",
        "--out",
        str(tmp_path / "spark"),
        "--k",
        "7",
        workspace=synthetic_workspace,
        env={"ENDCAP_SPARK_BROADCAST_MB": broadcast_mb},
    ).stdout
    assert "spark engine" in said
    local, spark = _sorted(pd.read_parquet(tmp_path / "local")), _sorted(pd.read_parquet(tmp_path / "spark"))
    assert list(spark.columns) == ["user_id", "item_id", "rank", "score", "user_bucket"]
    assert local["user_id"].nunique() == 40 and len(local) == 40 * 7
    pd.testing.assert_frame_equal(
        local[["user_id", "item_id", "rank", "user_bucket"]], spark[["user_id", "item_id", "rank", "user_bucket"]]
    )
    np.testing.assert_array_equal(local["score"], spark["score"])  # the same blocks: the same rounding
    assert sorted(p.name for p in (tmp_path / "spark").glob("user_bucket=*"))  # partitioned on disk
    assert not list(tmp_path.glob(".*partial*"))


def test_a_broadcast_model_version_unpacks_to_the_same_checked_files(synthetic_workspace: Path, tmp_path: Path) -> None:
    """What Spark workers load: the packed version, written back, passes the manifest's checksums."""
    from endcap.batch.spark import pack_version, unpack_version
    from endcap.model_versions import CorruptArtifact, ModelRegistry, verify_artifact

    source = ModelRegistry(synthetic_workspace / "models")
    version = source.current()
    assert version is not None
    files = pack_version(source.path(version))
    assert "manifest.json" in files and any(name.startswith("components/candidates/als/") for name in files)
    copy = ModelRegistry(unpack_version(files, version, tmp_path / "copy"))
    verify_artifact(copy.path(version), copy.manifest(version))
    damaged = dict(files)
    name = next(n for n in files if n.startswith("components/candidates/als/"))
    damaged[name] = files[name][:-1] + bytes([files[name][-1] ^ 1])
    broken = ModelRegistry(unpack_version(damaged, version, tmp_path / "damaged"))
    with pytest.raises(CorruptArtifact, match="does not match its checksum"):
        verify_artifact(broken.path(version), broken.manifest(version))


def test_spark_engine_wants_a_directory(synthetic_workspace: Path, tmp_path: Path) -> None:
    result = run_cli(
        "batch", "--engine", "spark", "--out", str(tmp_path / "x.csv"), workspace=synthetic_workspace, check=False
    )
    assert result.returncode != 0 and "directory" in result.stderr and "Traceback" not in result.stderr


def test_a_rerun_replaces_output_and_a_failed_run_leaves_it(tmp_path: Path) -> None:
    first = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "rank": [1, 1], "score": [1.0, 2.0]})
    second = first.assign(item_id=["z", "w"])
    for out in (tmp_path / "recs.csv", tmp_path / "recs.parquet", tmp_path / "recs"):
        read = pd.read_csv if out.suffix == ".csv" else pd.read_parquet
        write_frame(first, out)
        write_frame(second, out)
        assert read(out)["item_id"].tolist() == ["z", "w"]

        def failing(temporary: Path) -> None:
            (temporary.mkdir() if not temporary.suffix else temporary.write_text("half"))
            raise RuntimeError("executor lost")

        with pytest.raises(RuntimeError):
            publish(out, failing)
        assert read(out)["item_id"].tolist() == ["z", "w"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs", "recs.csv", "recs.parquet"]


def test_a_crash_between_the_renames_is_repaired_by_the_next_run(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "rank": [1], "score": [1.0]})
    out = tmp_path / "recs"
    write_frame(frame, out)
    out.rename(tmp_path / ".recs.previous")  # the state a crash after the first rename leaves

    def failing(temporary: Path) -> None:
        raise RuntimeError("stopped again")

    with pytest.raises(RuntimeError):
        publish(out, failing)
    assert pd.read_parquet(out)["item_id"].tolist() == ["x"]


@pytest.mark.parametrize(
    ("command", "value", "said"), [("batch", "0", "got 0"), ("batch", "-2", "got -2"), ("serve", "two", "got 'two'")]
)
def test_a_count_of_processes_below_one_is_refused_by_name(tmp_path: Path, command: str, value: str, said: str) -> None:
    extra = ["--out", str(tmp_path / "out.parquet")] if command == "batch" else []
    result = run_cli(command, *extra, "--processes", value, workspace=tmp_path / "ws", check=False)
    assert result.returncode == 2
    assert f"argument --processes: expected a whole number of at least 1, {said}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.parquet").exists()
