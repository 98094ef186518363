"""Attribute-level directions for a converted generator that comes without any (NVIDIA, rosinality).

Classifiers are image classifiers and move from one generator to another; directions live in one
generator's latent space and must be fitted on it. This samples faces as the official
`train_attr_level_direction.py` does (truncation psi 0.5 on all rows), scores them with the steering
classifiers, and fits the kinds asked for with `models.training`; the averaged direction, as that
script's, over the faces each classifier puts in class 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from models.ials import render_frames
from models.networks.classifier import AttributeClassifier
from models.sampling import sample_ws
from models.training import averaged_direction, ganspace_directions, interfacegan_direction

__all__ = ["FITTED_KINDS", "fit_directions"]

FITTED_KINDS = ("averaged", "interfacegan", "ganspace")


def fit_directions(
    G: Any,
    classifiers: Mapping[str, AttributeClassifier],
    *,
    kinds: Sequence[str],
    num_samples: int,
    generator: torch.Generator,
    truncation_psi: float = 0.5,
    batch_size: int = 8,
    synthesis_kwargs: dict[str, Any] | None = None,
    on_progress: Callable[[str], None] | None = None,
    device: torch.device | str,
) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Fit attribute-level directions `[w_dim]` for every classifier on sampled faces.

    Args:
        G: Generator with `mapping`, `synthesis`, `num_ws`, `w_dim`, on `device`.
        classifiers: Attribute name -> steering classifier, on `device`, in eval mode.
        kinds: Any of `FITTED_KINDS`.
        num_samples: Faces to sample (the official script averages 500).
        generator: The source of the latents `z`.
        truncation_psi: Truncation of the samples (0.5 as the official scripts).
        batch_size: Faces per forward (and backward) pass.
        synthesis_kwargs: Extra keyword arguments of `G.synthesis` for the gradient passes.
        on_progress: Called with a short line after each stage.
        device: Where to compute.

    Returns:
        (attribute -> kind -> unit direction, problems): a kind that cannot be fitted for an attribute
        (e.g. InterfaceGAN when the classifier gives every sample the same label, the averaged direction
        when it gives none class 1) is left out and said in `problems`.

    Raises:
        ValueError: On an unknown kind or `num_samples < 2`.
    """
    unknown = sorted(set(kinds) - set(FITTED_KINDS))
    if unknown or num_samples < 2:
        raise ValueError(
            f"kinds must be among {FITTED_KINDS} and num_samples >= 2, got {list(kinds)}, {num_samples}"
        )
    ws = sample_ws(G, n=num_samples, generator=generator, truncation_psi=truncation_psi, device=device)
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in classifiers}
    with torch.no_grad():
        for i in range(math.ceil(num_samples / batch_size)):
            images = render_frames(
                G, ws[i * batch_size : (i + 1) * batch_size], device=device
            )  # [B, C, H, W]
            for name, classifier in classifiers.items():
                scores[name].append(classifier.probability(images).cpu())
    probabilities = {name: torch.cat(s) for name, s in scores.items()}  # name -> [N]
    if on_progress is not None:
        on_progress(f"scored {num_samples} sampled faces")

    result: dict[str, dict[str, torch.Tensor]] = {name: {} for name in classifiers}
    problems: list[str] = []
    for name, classifier in classifiers.items():
        if "interfacegan" in kinds:
            try:
                result[name]["interfacegan"] = interfacegan_direction(ws, probabilities[name] > 0.5)
            except ValueError as err:
                problems.append(f"{name}: no interfacegan direction: {err}")
        if "averaged" in kinds:
            try:
                result[name]["averaged"] = averaged_direction(
                    G, classifier, ws, batch_size=batch_size, synthesis_kwargs=synthesis_kwargs, device=device
                )
            except ValueError as err:
                problems.append(f"{name}: no averaged direction: {err}")
        if on_progress is not None:
            on_progress(f"{name}: fitted {sorted(result[name])}")
    if "ganspace" in kinds:
        try:
            found = ganspace_directions(
                ws, probabilities, num_components=min(num_samples, G.w_dim, max(10, len(classifiers)))
            )
            for name, direction in found.items():
                result[name]["ganspace"] = direction
        except ValueError as err:
            problems.append(f"no ganspace directions: {err}")
    return result, problems
