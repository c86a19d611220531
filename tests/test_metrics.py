from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from endcap.evaluation.metrics import pad_rankings, ranking_metrics, recall_curve


def test_metrics_on_a_worked_example() -> None:
    # user 0 wants {1, 2, 3}; gets 1 (hit, bought before), 5, 2 (hit, new). user 1 wants {4}; gets nothing right.
    truth = sp.csr_matrix(([1, 1, 1, 1], ([0, 0, 0, 1], [1, 2, 3, 4])), shape=(3, 6))
    history = sp.csr_matrix(([1], ([0], [1])), shape=(3, 6))
    recommended = pad_rankings([np.array([1, 5, 2]), np.array([0]), np.array([3])], 3)
    m = ranking_metrics(recommended, truth, history, ks=(1, 3))
    assert m["users"] == 2  # user 2 has no target basket
    assert m["recall@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["recall@1"] == pytest.approx((1 / 3) / 2)
    assert m["hit_rate@3"] == pytest.approx(0.5)
    ideal = 1 + 1 / np.log2(3) + 1 / np.log2(4)
    assert m["ndcg@3"] == pytest.approx(((1 + 1 / np.log2(4)) / ideal) / 2)
    assert m["recall_repeat@3"] + m["recall_explore@3"] == pytest.approx(m["recall@3"])
    assert m["recall_repeat@3"] == pytest.approx((1 / 3) / 2)
    assert m["ndcg_repeat@3"] + m["ndcg_explore@3"] == pytest.approx(m["ndcg@3"])
    assert m["coverage@3"] == pytest.approx(5 / 6)  # items 0, 1, 2, 3, 5


def test_recall_curve_is_cumulative() -> None:
    truth = sp.csr_matrix(([1, 1], ([0, 0], [2, 4])), shape=(1, 5))
    curve = recall_curve(np.array([[2, 0, 4]]), truth, max_k=3)
    assert curve == pytest.approx([0.5, 0.5, 1.0])
