"""Training the demo pack's classifiers and fitting its attribute-level directions, as pure functions.

- `train_classifiers` / `train_classifier`: `AttributeClassifier`s trained on freshly rendered faces
  labelled by the generator's ground truth (`G.attribute_labels`), Adam, cross-entropy, warm-up plus
  cosine decay; several attributes can share every rendered batch.
- `classifier_accuracy`: agreement with the ground truth on fresh faces.
- `interfacegan_direction`: the unit normal of a linear SVM on sampled `w` (InterfaceGAN).
- `averaged_direction`: the normalised mean of instance-specific directions (IALS, section 3.2).
- `ganspace_directions`: principal components of sampled `w`, each matched to an attribute by the
  correlation of its projection with the attribute's classifier scores (GANSpace).

Randomness only comes in through an explicit `torch.Generator` (or an integer seed for scikit-learn),
and progress is reported only through an optional `on_step(i, n)` callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from models.ials import AttributeClassifierLike, SynthesisGenerator, shared_forward
from models.misc import assert_shape
from models.networks.classifier import AttributeClassifier

__all__ = [
    "ClassifierTraining",
    "LabelledGenerator",
    "averaged_direction",
    "classifier_accuracy",
    "ganspace_directions",
    "interfacegan_direction",
    "sample_training_ws",
    "train_classifier",
    "train_classifiers",
]

PsiSpec = float | tuple[float, float]
AveragedFaces = Literal["positive", "all"]  # The faces an averaged direction is the mean over.


class LabelledGenerator(Protocol):
    """A generator that knows the truth: StyleGAN's interface plus `attribute_labels/logits(ws)`."""

    z_dim: int
    w_dim: int
    num_ws: int

    @property
    def w_avg(self) -> torch.Tensor: ...

    def synthesis(self, ws: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None, **kwargs: Any) -> torch.Tensor: ...

    def attribute_labels(self, ws: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def attribute_logits(self, ws: torch.Tensor) -> dict[str, torch.Tensor]: ...


class ClassifierTraining(NamedTuple):
    """What `train_classifier` returns."""

    classifier: AttributeClassifier  # The trained classifier, in eval mode.
    losses: list[float]  # Training cross-entropy of every step (train-mode BatchNorm), in order.


# ----------------------------------------------------------------------------
# Sampling.


def _check_psi(truncation_psi: PsiSpec) -> tuple[float, float]:
    low, high = (
        (truncation_psi, truncation_psi) if isinstance(truncation_psi, (int, float)) else truncation_psi
    )
    if not 0 <= low <= high:
        raise ValueError(
            f"truncation_psi must be psi >= 0 or (low, high) with 0 <= low <= high, got {truncation_psi}"
        )
    return float(low), float(high)


def sample_training_ws(
    G: LabelledGenerator,
    *,
    n: int,
    truncation_psi: PsiSpec,
    generator: torch.Generator,
    device: torch.device | str,
) -> torch.Tensor:
    """Sample `w+` codes, each truncated by its own psi drawn uniformly from a range.

        z ~ N(0, I),  psi_i ~ U[low, high],  ws_i = w_avg + psi_i * (mapping(z_i) - w_avg)  (every row)

    (The procedural world's mapping is the identity, or a stretch along its attribute axes.) psi > 1
    reaches beyond the typical set, as edits do.

    Args:
        G: Generator with `mapping`, `z_dim`, `w_dim`, `num_ws` and `w_avg`, on `device`.
        n: Number of codes.
        truncation_psi: A fixed psi, or `(low, high)` to draw one per code.
        generator: Source of randomness (z and psi are drawn on its device).
        device: Where `ws` is returned.

    Returns:
        `[n, num_ws, w_dim]` float32 latents.

    Raises:
        ValueError: On n < 1 or a bad psi range.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    low, high = _check_psi(truncation_psi)
    z = torch.randn((n, G.z_dim), generator=generator, device=generator.device)  # [N, Z]
    psi = low + (high - low) * torch.rand((n, 1), generator=generator, device=generator.device)  # [N, 1]
    with torch.no_grad():
        mapped = G.mapping(z.to(G.w_avg.device), None)[:, 0].to(z.device)  # [N, D], untruncated
    w_avg = G.w_avg.to(z.device)
    w = w_avg + psi * (mapped - w_avg)  # [N, D]
    return w.to(device).unsqueeze(1).repeat(1, G.num_ws, 1)  # [N, L, D]


# ----------------------------------------------------------------------------
# Classifiers.


def _lr_factor(step: int, steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1 over `warmup_steps`, then cosine decay to 0 at `steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


def train_classifier(
    classifier: AttributeClassifier,
    G: LabelledGenerator,
    attribute: str,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    truncation_psi: PsiSpec,
    generator: torch.Generator,
    device: torch.device | str,
    weight_decay: float = 0.0,
    warmup_steps: int | None = None,
    label_sharpness: float | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> ClassifierTraining:
    """Train a 2-class attribute classifier on fresh renders labelled by the generator's ground truth.

    The one-attribute case of `train_classifiers` (same randomness: the same generator state gives the
    same faces); see there for the procedure.

    Args:
        classifier: The classifier to train, on `device`; class 1 = has the attribute.
        attribute: Name of the attribute in `G.attribute_labels`.
        Every other argument is `train_classifiers`' own.

    Returns:
        `ClassifierTraining(classifier, losses)`, the classifier in eval mode and the loss of every step.

    Raises:
        ValueError: As `train_classifiers`.
    """
    results = train_classifiers(
        {attribute: classifier},
        G,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        truncation_psi=truncation_psi,
        generator=generator,
        device=device,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        label_sharpness=label_sharpness,
        on_step=on_step,
    )
    return results[attribute]


def train_classifiers(
    classifiers: Mapping[str, AttributeClassifier],
    G: LabelledGenerator,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    truncation_psi: PsiSpec,
    generator: torch.Generator,
    device: torch.device | str,
    weight_decay: float = 0.0,
    warmup_steps: int | None = None,
    label_sharpness: float | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, ClassifierTraining]:
    """Train one classifier per attribute on shared fresh renders labelled by the ground truth.

    Each step draws a new batch (the world is infinite, so there is no epoch and no overfitting to a
    data set): `ws` from `sample_training_ws` (psi drawn per face from `truncation_psi`, so that the
    classifiers also see the stronger attribute values that edits reach), images
    `x = G.synthesis(ws, noise_mode='const')` under `torch.no_grad()`, and for every attribute X the
    label `y_X = G.attribute_labels(ws)[X]` and one Adam step on `cross_entropy(H_X.logits(x), y_X)`.
    With `label_sharpness = s` the target is graded instead: class 1 with probability
    `sigmoid(s * L_X)`, `L_X = G.attribute_logits(ws)[X]` the true logit (same decision boundary).
    Hard labels let the logit margin saturate away from the boundary, where its slope along an
    attribute then has a random sign; graded targets keep the margin growing with the attribute, so
    the classifier's latent gradient points where the attribute grows (what IALS steers by).
    Rendering once for all attributes roughly halves the cost of training them one by one. Each
    classifier has its own optimiser; the learning rate warms up linearly, then decays to 0 on a
    cosine. BatchNorm runs in train mode (batch statistics, running averages updated) during
    training; the classifiers are returned in eval mode, where they use the running averages, which
    at the end of the decay belong to the final weights.

    The classifiers are trained in place (their parameters are the optimisers') and returned.

    Args:
        classifiers: Attribute name -> classifier to train, on `device`; class 1 = has the attribute.
        G: Generator with ground truth (`attribute_labels`), on `device`.
        steps: Number of optimiser steps (>= 1).
        batch_size: Faces per step (>= 2, BatchNorm needs a batch).
        lr: Peak learning rate of Adam.
        truncation_psi: psi of the training faces, fixed or `(low, high)` drawn per face.
        generator: Source of all randomness (latents and psi).
        device: Where training runs.
        weight_decay: Adam's L2 weight decay.
        warmup_steps: Steps of linear warm-up; default 5 % of `steps` (at least 1).
        label_sharpness: Train on graded targets `sigmoid(s * true logit)` (needs
            `G.attribute_logits`); None = hard labels.
        on_step: Called as `on_step(i, steps)` after step i = 1..steps.

    Returns:
        Attribute name -> `ClassifierTraining(classifier, losses)`, in the order of `classifiers`.

    Raises:
        ValueError: On no classifiers, a bad step count, batch size, learning rate, psi, or an
            unknown attribute.
    """
    if not classifiers:
        raise ValueError("Need at least one classifier, got none")
    if steps < 1 or batch_size < 2 or not lr > 0:
        raise ValueError(f"Need steps >= 1, batch_size >= 2 and lr > 0, got {steps}, {batch_size}, {lr}")
    _check_psi(truncation_psi)
    warmup = max(1, round(0.05 * steps)) if warmup_steps is None else warmup_steps
    if warmup < 1:
        raise ValueError(f"warmup_steps must be >= 1, got {warmup_steps}")
    if label_sharpness is not None and not (math.isfinite(label_sharpness) and label_sharpness > 0):
        raise ValueError(f"label_sharpness must be a positive number or None, got {label_sharpness}")
    optimizers = {
        name: torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=weight_decay)
        for name, classifier in classifiers.items()
    }
    schedulers = [
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: _lr_factor(i, steps, warmup))
        for optimizer in optimizers.values()
    ]
    losses: dict[str, list[float]] = {name: [] for name in classifiers}
    for classifier in classifiers.values():
        classifier.train()
    try:
        for i in range(steps):
            # Fresh faces.
            with torch.no_grad():
                ws = sample_training_ws(
                    G, n=batch_size, truncation_psi=truncation_psi, generator=generator, device=device
                )  # [B, L, D]
                labels = G.attribute_labels(ws)
                unknown = sorted(set(classifiers) - set(labels))
                if unknown:
                    raise ValueError(f"Unknown attributes {unknown}; the generator has {sorted(labels)}")
                targets: dict[str, torch.Tensor] = {}
                if label_sharpness is not None:
                    true_logits = G.attribute_logits(ws)
                    for name in classifiers:
                        p = torch.sigmoid(label_sharpness * true_logits[name].to(device, torch.float32))
                        targets[name] = torch.stack([1 - p, p], dim=1)  # [B, 2] class probabilities
                else:
                    targets = {n: labels[n].to(device=device, dtype=torch.int64) for n in classifiers}
                images = G.synthesis(ws, noise_mode="const")  # [B, C, H, W]

            # One optimiser step per classifier.
            for name, classifier in classifiers.items():
                logits = classifier.logits(images)
                target = targets[name]
                if target.is_floating_point():  # Graded: class probabilities in the logits' dtype.
                    target = target.to(logits.dtype)
                loss = F.cross_entropy(logits, target)
                optimizers[name].zero_grad(set_to_none=True)
                torch.autograd.backward([loss])
                optimizers[name].step()
                losses[name].append(float(loss.detach()))
            for scheduler in schedulers:
                scheduler.step()
            if on_step is not None:
                on_step(i + 1, steps)
    finally:
        for classifier in classifiers.values():
            classifier.eval()
    return {
        name: ClassifierTraining(classifier=classifier, losses=losses[name])
        for name, classifier in classifiers.items()
    }


def classifier_accuracy(
    classifier: AttributeClassifierLike,
    G: LabelledGenerator,
    attribute: str,
    *,
    n: int,
    truncation_psi: PsiSpec,
    generator: torch.Generator,
    device: torch.device | str,
    batch_size: int = 250,
) -> float:
    """Fraction of `n` fresh faces on which the classifier's argmax agrees with the ground truth.

    Args:
        classifier: Classifier with `logits(images) -> [N, 2]`, on `device`, in eval mode.
        G: Generator with ground truth (`attribute_labels`), on `device`.
        attribute: Name of the attribute in `G.attribute_labels`.
        n: Number of faces (>= 1).
        truncation_psi: psi of the faces, fixed or `(low, high)` drawn per face.
        generator: Source of the latents.
        device: Where rendering and classification run.
        batch_size: Faces per render.

    Returns:
        Accuracy in [0, 1].

    Raises:
        ValueError: On n < 1, batch_size < 1, or an unknown attribute.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"Need n >= 1 and batch_size >= 1, got {n}, {batch_size}")
    correct = 0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            ws = sample_training_ws(
                G, n=count, truncation_psi=truncation_psi, generator=generator, device=device
            )
            labels = G.attribute_labels(ws)
            if attribute not in labels:
                raise ValueError(f"Unknown attribute {attribute!r}; the generator has {sorted(labels)}")
            predicted = classifier.logits(G.synthesis(ws, noise_mode="const")).argmax(dim=1)  # [b]
            correct += int((predicted == labels[attribute].to(predicted.device).long()).sum())
    return correct / n


# ----------------------------------------------------------------------------
# Attribute-level directions.


def _plain_latents(ws: torch.Tensor) -> torch.Tensor:
    """`[N, w_dim]` from `[N, w_dim]` or `[N, num_ws, w_dim]` (row mean; sampled codes have equal rows)."""
    if ws.ndim == 3:
        mean: torch.Tensor = ws.mean(dim=1)
        return mean
    if ws.ndim != 2:
        raise ValueError(f"Latents must have shape [N, w_dim] or [N, num_ws, w_dim], got {tuple(ws.shape)}")
    return ws


def _unit(v: torch.Tensor, what: str) -> torch.Tensor:
    norm = v.norm()
    if not norm > 1e-12:
        raise ValueError(f"The {what} direction is zero (norm {float(norm)})")
    unit: torch.Tensor = torch.div(v, norm).to(torch.float32)
    return unit


def interfacegan_direction(
    ws: torch.Tensor,
    labels: torch.Tensor,
    *,
    svm_c: float = 0.01,
    max_iter: int = 10000,
    seed: int = 0,
) -> torch.Tensor:
    """InterfaceGAN's attribute-level direction: the unit normal of a linear SVM's boundary in W.

        d = coef / ||coef||,   coef from LinearSVC(C=svm_c).fit(w, labels),

    oriented so that moving along `d` raises class 1 (scikit-learn's `coef_` of a binary problem
    points towards `classes_[1]`, here label 1). `w+` codes are reduced to their row mean. The
    primal problem is solved (`dual=False`), which is deterministic; `seed` is passed as
    `random_state` all the same.

    Args:
        ws: Sampled latents, `[N, w_dim]` or `[N, num_ws, w_dim]`.
        labels: `[N]` labels by the steering classifier, bool or 0/1 (1 = has the attribute).
        svm_c: Inverse regularisation strength of the SVM.
        max_iter: Iteration cap of the solver.
        seed: `random_state` of the SVM.

    Returns:
        `[w_dim]` float32 unit vector.

    Raises:
        ValueError: On mismatched shapes or if the labels do not contain both classes.
    """
    from sklearn.svm import LinearSVC  # Heavy; only the pack build needs it.

    w = _plain_latents(ws).detach().to("cpu", torch.float64)  # [N, D]
    y = labels.detach().to("cpu").long().flatten()  # [N]
    if y.shape[0] != w.shape[0]:
        raise ValueError(f"Need one label per latent, got {y.shape[0]} labels for {w.shape[0]} latents")
    classes = sorted(set(y.tolist()))
    if classes != [0, 1]:
        raise ValueError(f"Labels must contain both classes 0 and 1, got {classes}")
    svm = LinearSVC(C=svm_c, dual=False, max_iter=max_iter, random_state=seed)
    svm.fit(w.numpy(), y.numpy())
    sign = 1.0 if int(svm.classes_[1]) == 1 else -1.0
    normal = torch.from_numpy(np.asarray(svm.coef_[0], dtype=np.float64)) * sign  # [D]
    return _unit(normal, "InterfaceGAN")


def averaged_direction(
    G: SynthesisGenerator,
    classifier: AttributeClassifierLike,
    ws: torch.Tensor,
    *,
    faces: AveragedFaces = "positive",
    batch_size: int = 32,
    synthesis_kwargs: dict[str, Any] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    device: torch.device | str,
) -> torch.Tensor:
    """The averaged attribute-level direction of IALS (section 3.2): mean instance-specific direction.

        d = m / ||m||,   m = (1/|S|) sum_{i in S} d_X(w_i),   d_X(w) = grad_w H_X(G(w)) / ||grad_w H_X(G(w))||

    with `d_X(w)` from `instance_specific_direction` (target y = 1, gradient summed over rows), so `d`
    points towards class 1. With `faces='positive'` the set S holds the faces the classifier puts in
    class 1 (probability > 0.5), as the official `train_attr_level_direction.py` does: it skips every
    face of class 0 and sums, over the others, the direction that takes the attribute away, then
    negates the sum. With `faces='all'` S is every face. Samples with a zero gradient contribute zero.

    Args:
        G: Generator with `synthesis`, `num_ws`, `w_dim`, on `device`.
        classifier: Steering classifier with `logits(images) -> [N, 2]`, on `device`, in eval mode.
        ws: Sampled latents, `[N, w_dim]` or `[N, num_ws, w_dim]`.
        faces: 'positive' (the official set) or 'all'.
        batch_size: Latents per backward pass.
        synthesis_kwargs: Extra keyword arguments of `G.synthesis`.
        on_step: Called as `on_step(i, n)` after batch i = 1..n.
        device: Where the gradients are computed.

    Returns:
        `[w_dim]` float32 unit vector.

    Raises:
        ValueError: On a bad latent shape, batch size or `faces`, if no face is of class 1 (with
            `faces='positive'`), or if the mean direction is zero.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if faces not in ("positive", "all"):
        raise ValueError(f"faces must be 'positive' or 'all', got {faces!r}")
    if ws.ndim not in (2, 3) or ws.shape[0] < 1:
        raise ValueError(f"Latents must have shape [N, w_dim] or [N, num_ws, w_dim], got {tuple(ws.shape)}")
    total = torch.zeros([G.w_dim], dtype=torch.float64, device=device)
    count = 0
    num_batches = math.ceil(ws.shape[0] / batch_size)
    for i in range(num_batches):
        chunk = ws[i * batch_size : (i + 1) * batch_size].detach().to(device)
        forward = shared_forward(
            G, [classifier], chunk, need_direction=[True], target=1, synthesis_kwargs=synthesis_kwargs
        )
        directions = forward.directions[0]
        assert_shape(directions, [chunk.shape[0], G.w_dim])
        if faces == "positive":
            directions = directions[forward.probabilities[0] > 0.5]
        total += directions.to(torch.float64).sum(dim=0)
        count += directions.shape[0]
        if on_step is not None:
            on_step(i + 1, num_batches)
    if count == 0:
        raise ValueError(f"None of the {ws.shape[0]} faces is of class 1")
    return _unit(total / count, "averaged")


def ganspace_directions(
    ws: torch.Tensor,
    scores: Mapping[str, torch.Tensor],
    *,
    num_components: int,
    unique: bool = True,
) -> dict[str, torch.Tensor]:
    """GANSpace directions: principal components of sampled `w`, named by the classifier scores.

        W - mean(W) = U S V^T,   p_k = (w - mean) . v_k,   r_{X,k} = corr(p_k, scores_X),
        d_X = sign(r_{X,k*}) v_{k*},   k* = argmax_k |r_{X,k}|   over the first `num_components` k

    Matching: with `unique=True`, every attribute gets a different component, assigned greedily in
    order of decreasing |r| over all (attribute, component) pairs (ties go to the pair seen first:
    the attribute first in `scores`, then the component of larger variance). With `unique=False`
    each attribute takes its own best component, and two attributes may share one. The sign makes
    moving along `d_X` raise the score. `w+` codes are reduced to their row mean.

    Args:
        ws: Sampled latents, `[N, w_dim]` or `[N, num_ws, w_dim]`, N >= 2.
        scores: Attribute name -> `[N]` classifier scores (e.g. P(class 1) or a logit) of the same latents.
        num_components: Components to search, 1..min(N, w_dim) (>= the number of attributes if unique).
        unique: Give every attribute its own component.

    Returns:
        Attribute name -> `[w_dim]` float32 unit vector, in the order of `scores`.

    Raises:
        ValueError: On mismatched shapes, a bad component count, or a constant score.
    """
    w = _plain_latents(ws).detach().to("cpu", torch.float64)  # [N, D]
    num_samples, w_dim = w.shape
    names = list(scores)
    if num_samples < 2 or not names:
        raise ValueError(f"Need N >= 2 latents and at least one attribute, got N={num_samples}, {names}")
    if not 1 <= num_components <= min(num_samples, w_dim) or (unique and num_components < len(names)):
        raise ValueError(
            f"num_components must lie in [{len(names) if unique else 1}, {min(num_samples, w_dim)}], "
            f"got {num_components}"
        )

    # Principal components.
    centred = w - w.mean(dim=0)  # [N, D]
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # [min(N, D), D], rows by decreasing variance
    components = vh[:num_components]  # [K, D]
    projections = centred @ components.T  # [N, K]

    # Correlation of every component with every score.
    proj = projections - projections.mean(dim=0)
    proj = proj / (proj.norm(dim=0) + 1e-12)
    corr = torch.empty((len(names), num_components), dtype=torch.float64)  # [A, K]
    for a, name in enumerate(names):
        s = scores[name].detach().to("cpu", torch.float64).flatten()
        if s.shape[0] != num_samples:
            raise ValueError(f"scores[{name!r}] needs {num_samples} values, got {s.shape[0]}")
        s = s - s.mean()
        if not s.norm() > 1e-12:
            raise ValueError(f"scores[{name!r}] is constant; it cannot name a component")
        corr[a] = proj.T @ (s / s.norm())

    # Matching.
    chosen: dict[str, int] = {}
    if unique:
        order = sorted(
            ((a, k) for a in range(len(names)) for k in range(num_components)),
            key=lambda ak: -abs(float(corr[ak])),
        )  # Stable: ties keep (attribute, component) order.
        used: set[int] = set()
        for a, k in order:
            if names[a] not in chosen and k not in used:
                chosen[names[a]] = k
                used.add(k)
    else:
        chosen = {name: int(corr[a].abs().argmax()) for a, name in enumerate(names)}
    result: dict[str, torch.Tensor] = {}
    for a, name in enumerate(names):
        k = chosen[name]
        sign = 1.0 if float(corr[a, k]) >= 0 else -1.0
        result[name] = _unit(sign * components[k], "GANSpace")
    return result
