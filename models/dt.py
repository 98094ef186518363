"""The Disentanglement-Transformation (DT) metric of IALS (section 3.3, Eq. 7; official `dt_score/`).

For one ordered pair (primal A, condition B) and one edit direction, the evaluator labels of every
kept sample at every frame give a curve of points (p_n, q_n), n = 0..F-1:

- p_n, transformation accuracy: the fraction of samples whose A label differs from frame 0's;
- q_n, disentanglement accuracy: the fraction whose B label equals frame 0's.

DT-AUC is the trapezoid area under those points in order. Labels in, floats out: loading images,
classifying, plotting and printing belong to the caller.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

__all__ = ["MatchedRange", "dt_auc", "dt_curve", "matched_range_scores", "select_source", "source_label"]

ArrayLike = torch.Tensor | np.ndarray


def _labels(name: str, labels: ArrayLike) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 2 or labels.shape[1] < 1:
        raise ValueError(f"{name} must have shape [M, F] with F >= 1, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name} must hold 0/1 integers or booleans, got dtype {labels.dtype}")
    labels = labels.to(torch.int64)
    if bool(((labels != 0) & (labels != 1)).any()):
        raise ValueError(f"{name} must hold only 0 and 1, got values {torch.unique(labels).tolist()}")
    return labels


def _curve(name: str, values: ArrayLike) -> np.ndarray:
    array = torch.as_tensor(values).detach().cpu().to(torch.float64).numpy()
    if array.ndim != 1 or array.shape[0] < 1:
        raise ValueError(f"{name} must have shape [F] with F >= 1, got {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    return array


def source_label(step: float) -> int:
    """The source label of the primal attribute for an edit direction: 0 for step > 0, else 1.

    Raises:
        ValueError: If step is 0.
    """
    if step == 0:
        raise ValueError(f"step must be nonzero, got {step}")
    return 0 if step > 0 else 1


def select_source(primal_labels: ArrayLike, source: int) -> torch.Tensor:
    """Which samples start from the source label: `primal_labels[:, 0] == source`.

    Args:
        primal_labels: `[M, F]` evaluator labels (0/1) of the primal attribute per frame.
        source: The source label, 0 or 1 (see `source_label`).

    Returns:
        `[M]` bool mask of the samples to keep.

    Raises:
        ValueError: On bad labels or a source other than 0 or 1.
    """
    if source not in (0, 1):
        raise ValueError(f"source must be 0 or 1, got {source}")
    return _labels("primal_labels", primal_labels)[:, 0] == source


def dt_curve(primal_labels: ArrayLike, condition_labels: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """The DT curve of the kept samples.

        p_n = mean_i [A_{i,n} != A_{i,0}],   q_n = mean_i [B_{i,n} == B_{i,0}],   n = 0..F-1

    Args:
        primal_labels: `[M, F]` 0/1 (int or bool) labels of the primal attribute A.
        condition_labels: `[M, F]` 0/1 labels of the condition attribute B, same shape.

    Returns:
        `(p, q)`, each `[F]` float64; p_0 = 0 and q_0 = 1.

    Raises:
        ValueError: On shapes that differ or are not `[M, F]`, on no samples (M = 0), or on labels
            other than 0/1.
    """
    primal = _labels("primal_labels", primal_labels)
    condition = _labels("condition_labels", condition_labels)
    if primal.shape != condition.shape:
        raise ValueError(
            f"Label tables must have the same shape, got {tuple(primal.shape)} and {tuple(condition.shape)}"
        )
    if primal.shape[0] == 0:
        raise ValueError(f"No samples to score, got {tuple(primal.shape)}")
    p = (primal != primal[:, :1]).to(torch.float64).mean(dim=0)  # [F]
    q = (condition == condition[:, :1]).to(torch.float64).mean(dim=0)  # [F]
    return p, q


def dt_auc(p: ArrayLike, q: ArrayLike) -> float:
    """DT-AUC: trapezoid area under the points (p_n, q_n) in frame order.

        AUC = sum_n (q_n + q_{n+1}) / 2 * (p_{n+1} - p_n)

    Segments where p decreases count negatively, as in the official loop, so a curve that goes back
    and forth only keeps its net area; the area spans only the p values reached.

    Args:
        p: `[F]` transformation accuracies.
        q: `[F]` disentanglement accuracies.

    Returns:
        The area (0.0 for a single point).

    Raises:
        ValueError: On shapes that differ or are not `[F]`, or non-finite values.
    """
    p_arr, q_arr = _curve("p", p), _curve("q", q)
    if p_arr.shape != q_arr.shape:
        raise ValueError(f"p and q must have the same shape, got {p_arr.shape} and {q_arr.shape}")
    return float(np.sum((q_arr[1:] + q_arr[:-1]) / 2 * np.diff(p_arr)))


@dataclasses.dataclass(frozen=True)
class MatchedRange:
    """Two DT curves compared over the p range both reach (see `matched_range_scores`).

    Attributes:
        score_a: Mean q of curve a over [0, p_max]; NaN if p_max == 0.
        score_b: Mean q of curve b over [0, p_max]; NaN if p_max == 0.
        p_max: The smaller of the two curves' largest p.
    """

    score_a: float
    score_b: float
    p_max: float


def _first_passage(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points where p reaches a new maximum (running maximum), frame 0 included; p strictly increasing."""
    previous_max = np.maximum.accumulate(p)
    new_max = np.concatenate([[True], p[1:] > previous_max[:-1]])
    return p[new_max], q[new_max]


def matched_range_scores(p_a: ArrayLike, q_a: ArrayLike, p_b: ArrayLike, q_b: ArrayLike) -> MatchedRange:
    """Compare two DT curves by their mean q over the range of p that both reach.

        p_max = min(max_n p^a_n, max_n p^b_n),   score = (1 / p_max) * integral_0^{p_max} q(p) dp,

    where q(p) of each curve is read along its first passage: the points at which p reaches a new
    running maximum, joined by straight lines (later visits to a p already reached are ignored).
    The integral of that piecewise-linear function is exact by the trapezoid rule on the union of
    both curves' breakpoints. Unlike DT-AUC, a method is not rewarded for reaching larger p, only
    for keeping the condition over the same amount of transformation.

    Degenerate case: if either curve never moves p (max p = 0), no range is shared; p_max is 0.0 and
    both scores are NaN (no comparison; DT-AUC already scores such a curve 0).

    Args:
        p_a: `[F_a]` p of curve a, starting at 0.
        q_a: `[F_a]` q of curve a.
        p_b: `[F_b]` p of curve b, starting at 0.
        q_b: `[F_b]` q of curve b.

    Returns:
        `MatchedRange(score_a, score_b, p_max)`.

    Raises:
        ValueError: On shapes that differ or are not 1-D, non-finite values, or a curve whose p
            does not start at 0.
    """
    curves = []
    for name, p, q in (("a", p_a, q_a), ("b", p_b, q_b)):
        p_arr, q_arr = _curve(f"p_{name}", p), _curve(f"q_{name}", q)
        if p_arr.shape != q_arr.shape:
            raise ValueError(
                f"p_{name} and q_{name} must have the same shape, got {p_arr.shape} and {q_arr.shape}"
            )
        if p_arr[0] != 0:
            raise ValueError(f"p_{name} must start at 0, got {p_arr[0]}")
        curves.append(_first_passage(p_arr, q_arr))
    p_max = float(min(curves[0][0][-1], curves[1][0][-1]))
    if p_max == 0:
        return MatchedRange(score_a=float("nan"), score_b=float("nan"), p_max=0.0)

    # Exact integral of the piecewise-linear q(p) over [0, p_max].
    grid = np.union1d(np.concatenate([curves[0][0], curves[1][0]]), [p_max])
    grid = grid[grid <= p_max]
    scores = [
        float(np.sum((q[1:] + q[:-1]) / 2 * np.diff(grid)) / p_max)
        for q in (np.interp(grid, xp, fp) for xp, fp in curves)
    ]
    return MatchedRange(score_a=scores[0], score_b=scores[1], p_max=p_max)
