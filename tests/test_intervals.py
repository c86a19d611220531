"""Bootstrap intervals over users and the pipeline-against-best-single comparison."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from endcap.evaluation.evaluate import versus_best_single
from endcap.evaluation.intervals import bootstrap_interval, paired_interval, resampled_means
from endcap.evaluation.metrics import per_user_metrics, ranking_metrics


def test_interval_brackets_the_mean_and_narrows_with_more_users() -> None:
    rng = np.random.default_rng(5)
    few, many = rng.random(50), rng.random(5000)
    small, large = bootstrap_interval(few), bootstrap_interval(many)
    assert small.low < small.mean < small.high and small.mean == pytest.approx(float(few.mean()))
    assert large.high - large.low < (small.high - small.low) / 4
    assert bootstrap_interval(few) == small  # seeded
    assert bootstrap_interval(np.array([])).mean == 0.0


def test_rows_are_resampled_with_the_same_draws() -> None:
    rng = np.random.default_rng(6)
    values = rng.random((3, 80))
    together = resampled_means(values, resamples=200)
    assert together.shape == (3, 200)
    np.testing.assert_allclose(together[1], resampled_means(values[1], resamples=200))
    # chunked draws (many users) give the same means as one draw would with the same generator
    assert resampled_means(np.ones(10), resamples=7).tolist() == [1.0] * 7


def test_per_user_values_average_to_the_reported_metrics() -> None:
    rng = np.random.default_rng(7)
    users, items = 30, 40
    dense = (rng.random((users, items)) < 0.15).astype(np.float32)
    dense[0] = 0.0  # a user with an empty target is left out of both
    truth = sp.csr_matrix(dense)
    recommended = np.argsort(-rng.random((users, items)), axis=1)[:, :20]
    recommended[3, 12:] = -1
    means = ranking_metrics(recommended, truth, ks=(10, 20))
    per_user = per_user_metrics(recommended, truth, (10, 20))
    assert per_user["ndcg@10"].size == users - 1
    for key in ("recall@10", "ndcg@10", "recall@20", "ndcg@20"):
        assert per_user[key].mean() == pytest.approx(means[key])


def test_the_pipeline_is_compared_with_the_best_single_system_paired() -> None:
    rng = np.random.default_rng(8)
    best = rng.random(400)
    per_user = {
        "pipeline": {"ndcg@10": best + 0.05, "recall@10": best + 0.02},
        "merged candidates": {"ndcg@10": best + 0.5, "recall@10": best + 0.5},  # combined: never the reference
        "repurchase alone": {"ndcg@10": best, "recall@10": best},
        "G-TopFreq": {"ndcg@10": best * 0.5, "recall@10": best * 0.5},
    }
    versus = versus_best_single(per_user)
    assert versus is not None and versus.reference == "repurchase alone" and versus.better
    assert versus.differences["ndcg@10"].mean == pytest.approx(0.05)
    noisy = best + rng.normal(0.0, 0.2, best.size)
    tie = versus_best_single({"pipeline": {"ndcg@10": noisy}, "repurchase alone": {"ndcg@10": best}})
    assert tie is not None and not tie.better and tie.differences["ndcg@10"].low < 0.0
    assert paired_interval(noisy, best).mean == pytest.approx(float((noisy - best).mean()))
    assert versus_best_single({"pipeline": {"ndcg@10": best}}) is None
