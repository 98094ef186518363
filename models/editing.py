"""One IALS edit with a model pack: attribute checks, the start latent, the edit, and its scores.

The shells (`ials edit`, the service's worker) differ only in where the request comes from and where
the frames go; this module is what they share: tensors and a pack in, frames and scores out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from models.ials import EditAttribute, edit
from models.misc import assert_shape
from models.pack import ModelPack
from models.sampling import sample_ws, truncate

__all__ = [
    "DirectionUnavailableError",
    "EditDivergedError",
    "PackEditResult",
    "UnknownAttributeError",
    "check_edit_attributes",
    "edit_with_pack",
    "scores_table",
    "start_ws",
]


class UnknownAttributeError(ValueError):
    """An attribute the pack does not have."""


class DirectionUnavailableError(ValueError):
    """An attribute without the requested kind of attribute-level direction."""


class EditDivergedError(ValueError):
    """The edit left the finite range (NaN or infinite latents or scores)."""


@dataclasses.dataclass(frozen=True)
class PackEditResult:
    """The frames of one edited face. F = steps + 1; frame 0 is the input.

    Attributes:
        ws: `[F, w_dim]` or `[F, num_ws, w_dim]` latents of the frames.
        images: `[F, C, H, W]` frames in the generator's range.
        steering: Attribute name -> F probabilities of its steering classifier.
        evaluated: Attribute name -> F probabilities of its independent evaluator (attributes that
            have one).
        stopped_at: The frame at which the edit stopped (later frames repeat it), or `steps`.
        stop_reason: Why it stopped early: 'target_score' (the primal reached it) or 'degenerate'
            (the primal direction fell into the span of the conditions), or None.
    """

    ws: torch.Tensor
    images: torch.Tensor
    steering: dict[str, list[float]]
    evaluated: dict[str, list[float]]
    stopped_at: int
    stop_reason: str | None = None


def check_edit_attributes(pack: ModelPack, primal: str, conditions: Sequence[str], kind: str) -> None:
    """Check that the primal and the conditions are distinct attributes of `pack` with `kind` directions.

    Raises:
        UnknownAttributeError: An attribute the pack does not have.
        DirectionUnavailableError: An attribute without a `kind` direction.
        ValueError: The primal is also a condition, or a condition is named twice.
    """
    for name in [primal, *conditions]:
        if name not in pack.attributes:
            raise UnknownAttributeError(
                f"unknown attribute {name!r}; this pack has: {', '.join(sorted(pack.attributes))}"
            )
    if primal in conditions:
        raise ValueError(f"the primal attribute {primal!r} cannot also be a condition")
    if len(set(conditions)) != len(conditions):
        raise ValueError(f"a condition is named twice: {list(conditions)}")
    for name in [primal, *conditions]:
        if kind not in pack.attributes[name].directions:
            available = ", ".join(sorted(pack.attributes[name].directions))
            raise DirectionUnavailableError(
                f"attribute {name!r} has no {kind!r} direction in this pack (it has: {available})"
            )


def start_ws(
    pack: ModelPack,
    *,
    seed: int | None = None,
    latent: torch.Tensor | None = None,
    truncation_psi: float | None = None,
) -> torch.Tensor:
    """The start latent of an edit: a seed's (NVIDIA's `generate.py` z) or a given one, truncated.

    Args:
        pack: The loaded pack.
        seed: Seed of a generated face; exclusive with `latent`.
        latent: `[1, w_dim]` or `[1, num_ws, w_dim]`.
        truncation_psi: psi; for a seed None means the pack's default, for a latent no truncation.

    Returns:
        `[1, num_ws, w_dim]` (seed) or the latent's shape, on the pack's device.
    """
    if (seed is None) == (latent is None):
        raise ValueError("give exactly one of seed and latent")
    if seed is not None:
        psi = pack.defaults["truncation_psi"] if truncation_psi is None else truncation_psi
        return sample_ws(pack.generator, [seed], truncation_psi=psi, device=pack.device)
    assert latent is not None
    if latent.ndim == 2:
        assert_shape(latent, [1, pack.w_dim])
    else:
        assert_shape(latent, [1, pack.num_ws, pack.w_dim])
    ws = latent.to(device=pack.device, dtype=torch.float32)
    if truncation_psi is not None:
        ws = truncate(ws, pack.w_avg, truncation_psi=truncation_psi)
    return ws


def edit_with_pack(
    pack: ModelPack,
    ws: torch.Tensor,
    *,
    primal: str,
    conditions: Sequence[str] = (),
    direction_kind: str,
    steps: int,
    step: float,
    lambda1: float,
    lambda2: float,
    target_score: float | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> PackEditResult:
    """`models.ials.edit` of one face with the pack's steering classifiers and `direction_kind`
    directions, then its frames scored by the independent evaluators.

    Args:
        pack: The loaded pack.
        ws: `[1, w_dim]` or `[1, num_ws, w_dim]` start latent.
        primal, conditions, steps, step, lambda1, lambda2, target_score, on_step: See `edit`.
        direction_kind: A key of the attributes' `directions` (interfacegan, averaged, ganspace).

    Returns:
        `PackEditResult`.

    Raises:
        UnknownAttributeError, DirectionUnavailableError: See `check_edit_attributes`.
        EditDivergedError: The latents or scores became NaN or infinite.
        ValueError: Invalid hyperparameters (see `edit`).
    """
    check_edit_attributes(pack, primal, conditions, direction_kind)
    if ws.shape[0] != 1:
        raise ValueError(f"edit_with_pack edits one face, got {ws.shape[0]}")

    def steer(name: str) -> EditAttribute:
        attribute = pack.attributes[name]
        return EditAttribute(
            name=name, classifier=attribute.steering, direction=attribute.directions[direction_kind]
        )

    result = edit(
        pack.generator,
        ws,
        primal=steer(primal),
        conditions=[steer(name) for name in conditions],
        steps=steps,
        step=step,
        lambda1=lambda1,
        lambda2=lambda2,
        target_score=target_score,
        return_images=True,
        on_degenerate="stop",
        synthesis_kwargs=pack.edit_synthesis_kwargs,
        on_step=on_step,
        device=pack.device,
    )
    assert result.images is not None
    stopped_at = int(result.stopped_at[0])
    degenerate = bool(result.degenerate[0])
    if degenerate and stopped_at == 0:
        remedy = "raise lambda1" if lambda1 < 1 else "use other directions"
        raise ValueError(
            "the primal direction lies in the span of the conditions at the start: no direction changes "
            f"the primal and keeps them; drop a condition or {remedy}"
        )
    scores_finite = all(bool(torch.isfinite(scores).all()) for scores in result.scores.values())
    if not (bool(torch.isfinite(result.ws).all()) and scores_finite):
        raise EditDivergedError(
            "the edit left the finite range (latents or scores are NaN or infinite); use a smaller step"
        )
    images = result.images[0]  # [F, C, H, W]
    evaluators = {name: pack.attributes[name].evaluator for name in [primal, *conditions]}
    with torch.no_grad():
        evaluated = {
            name: model.probability(images).cpu().tolist()
            for name, model in evaluators.items()
            if model is not None
        }
    return PackEditResult(
        ws=result.ws[0],
        images=images,
        steering={name: scores[0].cpu().tolist() for name, scores in result.scores.items()},
        evaluated=evaluated,
        stopped_at=stopped_at,
        stop_reason="degenerate" if degenerate else "target_score" if stopped_at < steps else None,
    )


def scores_table(
    steering: dict[str, list[float]],
    evaluated: dict[str, list[float]],
    stopped_at: int,
    stop_reason: str | None = None,
) -> dict[str, Any]:
    """The per-frame scores as written to `scores.json`: `{"stopped_at", "stop_reason", "frames":
    [{"frame", "steering", "evaluator"}, ...]}`."""
    num_frames = len(next(iter(steering.values())))
    frames = [
        {
            "frame": idx,
            "steering": {name: values[idx] for name, values in steering.items()},
            "evaluator": {name: values[idx] for name, values in evaluated.items()},
        }
        for idx in range(num_frames)
    ]
    return {"stopped_at": stopped_at, "stop_reason": stop_reason, "frames": frames}
