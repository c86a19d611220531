"""``endcap batch``: top-k for every user the model knows, written as CSV or Parquet.

Output columns are ``user_id,item_id,rank,score``. The file is written to a temporary name
beside the target and moved into place only when complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from endcap.errors import InvalidArgument
from endcap.pipeline import Pipeline

OUTPUT_SUFFIXES = (".csv", ".parquet")


def recommend_all(pipeline: Pipeline, k: int) -> pd.DataFrame:
    users: list[str] = []
    items: list[tuple[str, ...]] = []
    scores: list[np.ndarray] = []
    for user_id in pipeline.model.catalog.user_ids.tolist():
        answer, _ = pipeline.recommend(pipeline.make_query(user_id, k))
        users.append(user_id)
        items.append(answer.item_ids)
        scores.append(answer.scores)
    counts = np.array([len(i) for i in items], dtype=np.int64)
    return pd.DataFrame(
        {
            "user_id": np.repeat(np.array(users, dtype=object), counts),
            "item_id": np.array([i for row in items for i in row], dtype=object),
            "rank": np.concatenate([np.arange(1, c + 1) for c in counts]) if counts.size else [],
            "score": np.concatenate(scores) if scores else [],
        }
    )


def write_output(frame: pd.DataFrame, out: Path) -> None:
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InvalidArgument(f"--out must end in {' or '.join(OUTPUT_SUFFIXES)}; got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    if out.suffix.lower() == ".csv":
        frame.to_csv(partial, index=False)
    else:
        frame.to_parquet(partial, index=False)
    os.replace(partial, out)
