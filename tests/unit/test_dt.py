"""The DT metric (models/dt.py) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.dt import dt_auc, dt_curve, matched_range_scores, select_source, source_label


def test_dt_curve_on_a_hand_table() -> None:
    primal = torch.tensor([[0, 1, 1], [0, 0, 1], [0, 0, 0]])
    condition = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 1]])
    p, q = dt_curve(primal, condition)
    assert p.dtype == torch.float64
    torch.testing.assert_close(p, torch.tensor([0, 1 / 3, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(q, torch.tensor([1, 2 / 3, 2 / 3], dtype=torch.float64))
    # The official formulas: |a - a_0| and 1 - |b - b_0|, averaged over samples.
    torch.testing.assert_close(p, (primal - primal[:, :1]).abs().double().mean(0))
    torch.testing.assert_close(q, 1 - (condition - condition[:, :1]).abs().double().mean(0))
    p_bool, q_bool = dt_curve(primal.bool(), np.asarray(condition, dtype=bool))
    assert torch.equal(p_bool, p) and torch.equal(q_bool, q)


def test_dt_curve_validates() -> None:
    with pytest.raises(ValueError, match="same shape"):
        dt_curve(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="No samples"):
        dt_curve(torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="only 0 and 1"):
        dt_curve(torch.full((1, 2), 2), torch.zeros(1, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="0/1 integers"):
        dt_curve(torch.zeros(1, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"got \(3,\)"):
        dt_curve(torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))


def test_source_selection() -> None:
    assert source_label(0.1) == 0 and source_label(-0.1) == 1
    with pytest.raises(ValueError):
        source_label(0.0)
    primal = torch.tensor([[0, 1], [1, 1], [0, 0]])
    assert select_source(primal, 0).tolist() == [True, False, True]
    assert select_source(primal, 1).tolist() == [False, True, False]


@pytest.mark.parametrize(
    ("p", "q", "area"),
    [
        ([0.0, 1.0], [1.0, 1.0], 1.0),
        ([0.0, 0.25, 0.5, 0.75], [1.0, 1.0, 0.5, 0.5], 0.25 + 0.1875 + 0.125),  # p never reaches 1
        ([0.0, 0.5, 0.25, 1.0], [1.0, 0.5, 1.0, 0.0], 0.375 - 0.1875 + 0.375),  # p goes back: signed segment
        ([0.0, 0.0, 0.0], [1.0, 0.5, 0.0], 0.0),  # p never moves
        ([0.0], [1.0], 0.0),
    ],
)
def test_dt_auc_by_hand(p: list[float], q: list[float], area: float) -> None:
    assert dt_auc(torch.tensor(p), torch.tensor(q)) == pytest.approx(area, abs=1e-12)
    assert dt_auc(np.array(p), np.array(q)) == pytest.approx(area, abs=1e-12)


def test_dt_auc_of_a_labelled_edit() -> None:
    primal = torch.tensor([[0, 1, 1], [0, 0, 1], [0, 0, 0], [1, 1, 1]])
    condition = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 1], [0, 1, 0]])
    keep = select_source(primal, source_label(0.1))  # the last sample is already the target label
    p, q = dt_curve(primal[keep], condition[keep])
    assert dt_auc(p, q) == pytest.approx((1 + 2 / 3) / 2 / 3 + (2 / 3) / 3)
    with pytest.raises(ValueError, match="same shape"):
        dt_auc([0.0, 1.0], [1.0])  # type: ignore[arg-type]


def test_matched_range_scores_by_hand() -> None:
    a = ([0.0, 0.5, 1.0], [1.0, 1.0, 0.0])
    b = ([0.0, 0.25, 0.5], [1.0, 0.5, 0.5])
    result = matched_range_scores(*a, *b)
    assert result.p_max == 0.5
    assert result.score_a == pytest.approx(1.0) and result.score_b == pytest.approx(0.3125 / 0.5)
    swapped = matched_range_scores(*b, *a)
    assert (swapped.score_a, swapped.score_b) == (result.score_b, result.score_a)

    # First passage: the revisit of p = 0.25 (q = 0.9) is ignored; the range ends inside a's segment.
    c = ([0.0, 0.5, 0.25, 0.75], [1.0, 0.5, 0.9, 0.5])
    result = matched_range_scores(*c, *a)
    assert result.p_max == 0.75
    assert result.score_a == pytest.approx((0.75 * 0.5 + 0.5 * 0.25) / 0.75)
    assert result.score_b == pytest.approx((1.0 * 0.5 + 0.75 * 0.25) / 0.75)

    # A plateau in p keeps the q of its first frame.
    d = ([0.0, 0.5, 0.5, 1.0], [1.0, 0.8, 0.2, 0.0])
    result = matched_range_scores(*d, *a)
    assert result.p_max == 1.0 and result.score_a == pytest.approx((0.9 * 0.5 + 0.4 * 0.5) / 1.0)
    assert result.score_b == pytest.approx((1.0 * 0.5 + 0.5 * 0.5) / 1.0)


def test_matched_range_degenerate_and_invalid() -> None:
    result = matched_range_scores([0.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.5], [1.0, 1.0])
    assert result.p_max == 0.0 and math.isnan(result.score_a) and math.isnan(result.score_b)
    with pytest.raises(ValueError, match="must start at 0"):
        matched_range_scores([0.1, 0.5], [1.0, 1.0], [0.0, 0.5], [1.0, 1.0])
    with pytest.raises(ValueError, match="same shape"):
        matched_range_scores([0.0, 0.5], [1.0], [0.0, 0.5], [1.0, 1.0])
