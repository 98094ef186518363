"""IALS: instance-aware latent-space search for disentangled attribute editing (Han et al., IJCAI 2021).

The math of sections 3.2-3.3 of the paper, as pure functions on tensors:

- `instance_specific_direction`: `d_X(w)`, the normalised latent gradient of a classifier (Eq. 2-4).
- `instance_aware_direction`: `dhat_X(w) = lambda * d_X + (1 - lambda) * d_X(w)` (Eq. 5).
- `conditional_direction`: the primal direction with the span of the condition directions removed,
  normalised (Eq. 6, and InterfaceGAN's `project_boundary` for several conditions).
- `condition_directions`: the condition vectors of the official code (`d_B`, or `dhat_B(w)` and `d_B`).
- `shared_forward`: one generator forward, every classifier on that image, one gradient per attribute.
- `edit`: the incremental update `w_{t+1} = w_t + step * dhat_{A|B}(w_t)` on a batch (section 3.3).
- `render_frames`: images for a stack of latents, in batches.

The generator is duck-typed: anything with `synthesis(ws, **kwargs) -> [N, C, H, W]`, `num_ws` and
`w_dim` (NVIDIA's StyleGAN2 `Generator` is one). A classifier is anything with
`logits(images) -> [N, 2]`, fed the generator's output as is. Both must already live on the device
the latents are moved to, be in eval mode, and treat the samples of a batch independently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import torch

from models.misc import assert_shape

__all__ = [
    "AttributeClassifierLike",
    "EditAttribute",
    "EditResult",
    "GradMode",
    "SharedForward",
    "SynthesisGenerator",
    "condition_directions",
    "conditional_direction",
    "edit",
    "instance_aware_direction",
    "instance_specific_direction",
    "render_frames",
    "shared_forward",
]

GradMode = Literal["retain", "batched"]
OnDegenerate = Literal["raise", "stop"]


class SynthesisGenerator(Protocol):
    """What IALS needs of a generator: `synthesis(ws [N, num_ws, w_dim]) -> images [N, C, H, W]`."""

    @property
    def num_ws(self) -> int: ...

    @property
    def w_dim(self) -> int: ...

    @property
    def synthesis(self) -> Callable[..., torch.Tensor]: ...


class AttributeClassifierLike(Protocol):
    """What IALS needs of an attribute classifier: 2-class `logits(images [N, C, H, W]) -> [N, 2]`."""

    def logits(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True, eq=False)
class EditAttribute:
    """One attribute taking part in an edit, as primal or as condition.

    Attributes:
        name: Key of the attribute in `EditResult.scores`; unique within one edit.
        classifier: The steering classifier `H_X`: `logits(images) -> [N, 2]`, class 1 = attribute present.
        direction: The attribute-level direction `d_X`, `[w_dim]` (normalised again on use).
    """

    name: str
    classifier: AttributeClassifierLike
    direction: torch.Tensor


@dataclasses.dataclass(frozen=True)
class SharedForward:
    """What one generator forward yields for K attributes (see `shared_forward`).

    Attributes:
        images: `[N, C, H, W]`, the rendered images, detached.
        probabilities: `[K, N]`, each classifier's softmax probability of class 1 (NaN for a
            classifier that was not run, see `need_score`).
        directions: `[K, N, w_dim]`, the unit instance-specific directions `d_X(w)`; rows of the
            attributes that were not asked for are zero.
    """

    images: torch.Tensor
    probabilities: torch.Tensor
    directions: torch.Tensor


@dataclasses.dataclass(frozen=True)
class EditResult:
    """The frames of an edit (see `edit`). F = steps + 1; frame 0 is the input.

    Attributes:
        ws: `[N, F, w_dim]` or `[N, F, num_ws, w_dim]`, the latents in the input's form.
        scores: Attribute name -> `[N, F]` class-1 probability of its steering classifier, for the
            primal and every condition attribute (NaN where `edit(scores=False)` did not run it).
        images: `[N, F, C, H, W]` in the generator's range, or None unless `return_images`.
        stopped_at: `[N]` int64, the frame at which each sample stopped (its later frames repeat that
            one), or `steps` if it never stopped: where it reached `target_score`, or where `degenerate`.
        degenerate: `[N]` bool, True where a sample stopped because its primal direction fell into the
            span of its conditions (no direction is left that changes the primal and keeps them).
    """

    ws: torch.Tensor
    scores: dict[str, torch.Tensor]
    images: torch.Tensor | None
    stopped_at: torch.Tensor
    degenerate: torch.Tensor


# ----------------------------------------------------------------------------
# Helpers.


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """`x / (||x|| + 1e-8)` along the last dimension; a zero vector stays zero."""
    norm: torch.Tensor = x.norm(dim=-1, keepdim=True)
    return x / (norm + 1e-8)


def _check_lambda(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def _synthesis_kwargs(synthesis_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Constant noise unless the caller says otherwise, so that frames differ only by their latents."""
    return {"noise_mode": "const", **(synthesis_kwargs or {})}


def _to_w_plus(G: SynthesisGenerator, ws: torch.Tensor) -> torch.Tensor:
    """`[N, w_dim]` (broadcast to every row) or `[N, num_ws, w_dim]` -> `[N, num_ws, w_dim]`."""
    if ws.ndim == 2 and ws.shape[1] == G.w_dim:
        return ws.unsqueeze(1).expand(-1, G.num_ws, -1)
    if ws.ndim == 3 and tuple(ws.shape[1:]) == (G.num_ws, G.w_dim):
        return ws
    raise ValueError(
        f"Latents must have shape [N, {G.w_dim}] or [N, {G.num_ws}, {G.w_dim}], got {tuple(ws.shape)}"
    )


def _margin(logits: torch.Tensor, target: int) -> torch.Tensor:
    """`z_target - z_other` `[N]` from 2-class logits `[N, 2]`."""
    assert_shape(logits, [None, 2])
    return logits[:, target] - logits[:, 1 - target]


# ----------------------------------------------------------------------------
# Directions.


def shared_forward(
    G: SynthesisGenerator,
    classifiers: Sequence[AttributeClassifierLike],
    ws: torch.Tensor,
    *,
    need_direction: Sequence[bool],
    need_score: Sequence[bool] | None = None,
    target: int = 1,
    grad_mode: GradMode = "retain",
    synthesis_kwargs: dict[str, Any] | None = None,
) -> SharedForward:
    """Render `ws` once, score it with every classifier and take each asked-for gradient from that graph.

    For attribute k with `need_direction[k]`, the instance-specific direction (Eq. 4) is

        d_k(w) = g_k / (||g_k|| + 1e-8),   g_k = sum_rows grad_w (z_target - z_other)(H_k(G(w))),

    the gradient taken w.r.t. one `[w_dim]` offset added to every row of `w` (so it is the sum of the
    row gradients, as the official code's `[1, 512]` offset expanded over the rows). The logit margin
    has the direction of the gradient of -CE(H_k(G(w)), target) and of P_k(target): those are the
    margin's gradient times the positive factors 1 - P(target) and P(target) * (1 - P(target)), which
    underflow to zero when the softmax saturates while the margin's gradient does not. A zero
    gradient gives a zero direction.

    Only the latent is differentiated (`torch.autograd.grad` w.r.t. the offset), never the networks'
    parameters, whatever their `requires_grad`. The per-sample gradients come from one backward of
    the batch sum, so the networks must treat samples independently (eval mode). When no direction
    is asked for, the forward runs under `torch.no_grad()`. Do not call this under
    `torch.inference_mode()` when directions are needed.

    Args:
        G: Generator with `synthesis`, `num_ws`, `w_dim`.
        classifiers: K classifiers with `logits(images) -> [N, 2]`.
        ws: `[N, w_dim]` or `[N, num_ws, w_dim]` latents (detached first).
        need_direction: K flags: which attributes need `d_k(w)`.
        need_score: K flags: which attributes need a probability (default all). A classifier needed
            for neither a direction nor a probability is not run, and its probabilities are NaN (in
            the latents' dtype).
        target: The label y whose probability the directions raise (0 or 1).
        grad_mode: 'retain': one `autograd.grad` per attribute on the retained graph. 'batched': one
            call with `is_grads_batched=True` (vmap over the K backward passes).
        synthesis_kwargs: Extra keyword arguments of `G.synthesis`; `noise_mode` defaults to 'const'.

    Returns:
        `SharedForward` with images `[N, C, H, W]` (detached), probabilities `[K, N]` (class 1) and
        directions `[K, N, w_dim]` (zero rows where not asked for).

    Raises:
        ValueError: On a bad latent shape, target, grad_mode or a flag count that differs from K.
    """
    if need_score is None:
        need_score = [True] * len(classifiers)
    for what, flags in (("need_direction", need_direction), ("need_score", need_score)):
        if len(flags) != len(classifiers):
            raise ValueError(f"{what} needs one flag per classifier ({len(classifiers)}), got {len(flags)}")
    if target not in (0, 1):
        raise ValueError(f"target must be 0 or 1, got {target}")
    if grad_mode not in ("retain", "batched"):
        raise ValueError(f"grad_mode must be 'retain' or 'batched', got {grad_mode!r}")
    ws_plus = _to_w_plus(G, ws.detach())  # [N, L, D]
    num_samples = ws_plus.shape[0]
    kwargs = _synthesis_kwargs(synthesis_kwargs)
    directions = ws_plus.new_zeros((len(classifiers), num_samples, G.w_dim))  # [K, N, D]
    wanted = [k for k, flag in enumerate(need_direction) if flag]
    unscored = ws_plus.new_full((num_samples,), float("nan"))  # The probabilities of an unrun classifier.
    probabilities_list: list[torch.Tensor] = []

    # Plain forward.
    if not wanted:
        with torch.no_grad():
            images = G.synthesis(ws_plus, **kwargs)  # [N, C, H, W]
            for k, clf in enumerate(classifiers):
                scored = need_score[k]
                probabilities_list.append(clf.logits(images).softmax(dim=1)[:, 1] if scored else unscored)
        probabilities = torch.stack(probabilities_list)
        return SharedForward(images=images, probabilities=probabilities, directions=directions)

    # Forward with a graph to the offset only.
    with torch.enable_grad():
        offset = ws_plus.new_zeros((num_samples, G.w_dim), requires_grad=True)  # [N, D]
        images = G.synthesis(ws_plus + offset.unsqueeze(1), **kwargs)  # [N, C, H, W]
        margins: list[torch.Tensor] = []
        for k, clf in enumerate(classifiers):
            if k in wanted:
                logits = clf.logits(images)  # [N, 2]
                margins.append(_margin(logits, target))
            elif need_score[k]:
                with torch.no_grad():
                    logits = clf.logits(images.detach())
            if need_score[k] or k in wanted:
                probabilities_list.append(logits.detach().softmax(dim=1)[:, 1])
            else:
                probabilities_list.append(unscored)

        # Gradients from the one graph.
        grads = [torch.zeros_like(offset) for _ in wanted]
        live = [i for i, margin in enumerate(margins) if margin.requires_grad]
        if live and grad_mode == "retain":
            for position, i in enumerate(live):
                (grads[i],) = torch.autograd.grad(
                    margins[i].sum(), offset, retain_graph=position < len(live) - 1
                )
        elif live:
            stacked = torch.stack([margins[i] for i in live])  # [K', N]
            eye = torch.eye(len(live), dtype=stacked.dtype, device=stacked.device)
            grad_outputs = eye.unsqueeze(2).expand(-1, -1, num_samples)  # [K', K', N]
            (batched,) = torch.autograd.grad(stacked, offset, grad_outputs, is_grads_batched=True)
            for position, i in enumerate(live):
                grads[i] = batched[position]

    for i, k in enumerate(wanted):
        directions[k] = _normalize(grads[i].detach())
    return SharedForward(
        images=images.detach(), probabilities=torch.stack(probabilities_list), directions=directions
    )


def instance_specific_direction(
    G: SynthesisGenerator,
    classifier: AttributeClassifierLike,
    ws: torch.Tensor,
    *,
    target: int = 1,
    synthesis_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Instance-specific direction `d_X(w)` (Eq. 2-4), one `[w_dim]` vector per sample.

        d_X(w) = (2y - 1) * grad_w H_X(G(w)) / ||grad_w H_X(G(w))||
               = g / (||g|| + 1e-8),   g = sum_rows grad_w (z_y - z_{1-y})(G(w)),

    with the gradient summed over the `num_ws` rows (the direction is added to every row). See
    `shared_forward` for why the logit margin is used and how gradients are taken.

    Args:
        G: Generator with `synthesis`, `num_ws`, `w_dim`.
        classifier: Classifier with `logits(images) -> [N, 2]`.
        ws: `[N, w_dim]` (broadcast to every row) or `[N, num_ws, w_dim]`.
        target: The label y to move towards (1 raises P(class 1)).
        synthesis_kwargs: Extra keyword arguments of `G.synthesis`; `noise_mode` defaults to 'const'.

    Returns:
        `[N, w_dim]` unit directions (zero where the gradient is zero).

    Raises:
        ValueError: On a bad latent shape or target.
    """
    forward = shared_forward(
        G, [classifier], ws, need_direction=[True], target=target, synthesis_kwargs=synthesis_kwargs
    )
    return forward.directions[0]


def instance_aware_direction(
    attribute_level: torch.Tensor, instance_specific: torch.Tensor, *, lam: float
) -> torch.Tensor:
    """Instance-aware direction (Eq. 5): `dhat_X(w) = lam * d_X + (1 - lam) * d_X(w)` (not renormalised).

    Args:
        attribute_level: `d_X`, `[w_dim]` (or `[N, w_dim]`).
        instance_specific: `d_X(w)`, `[N, w_dim]` (or `[w_dim]`).
        lam: The weight of the attribute-level direction, in [0, 1].

    Returns:
        `[N, w_dim]` (the broadcast shape of the inputs).

    Raises:
        ValueError: If `lam` lies outside [0, 1].
    """
    _check_lambda("lam", lam)
    return lam * attribute_level + (1.0 - lam) * instance_specific


def conditional_direction(primal: torch.Tensor, conditions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Conditional direction (Eq. 6): the primal with the span of all conditions removed, normalised.

        dhat_{A|B} = r / ||r||,   r = p - Q Q^T p,

    where the columns of Q are an orthonormal basis of span{c_1, ..., c_K}, per sample. For one
    condition this is `p - <p, c> c` (InterfaceGAN's `project_boundary`); for two it is the
    alpha/beta closed form of InterfaceGAN and of the official `orthogonalization_all`, without
    dividing by `1 - <c_1, c_2>^2`. Computed in float64: the conditions are normalised, and Q is
    the right singular vectors of the `[K, w_dim]` condition matrix whose singular values exceed
    `rtol * s_max`, with `rtol = 10 * eps(input dtype)` (1.2e-6 for float32). A dropped singular
    direction is rounding noise of the input, and every condition is within `rtol * sqrt(K)` of
    the kept span, so nearly or exactly parallel conditions (and zero ones) are safe.

    Args:
        primal: `[w_dim]` or `[N, w_dim]`; any norm.
        conditions: Condition vectors, each `[w_dim]` or `[N, w_dim]`; any nonzero norm (zero
            vectors are ignored). An empty sequence just normalises the primal.

    Returns:
        Unit vectors in the primal's dtype, `[N, w_dim]`, or `[w_dim]` if every input is `[w_dim]`.

    Raises:
        ValueError: If shapes disagree, or if for some sample the primal lies in the span of the
            conditions (`||r|| <= rtol * ||p||`, which includes a zero primal).
    """
    result, degenerate = _conditional_direction(primal, conditions)
    if bool(degenerate.any()):
        raise ValueError(
            "The primal direction lies in the span of the conditions for samples "
            f"{degenerate.nonzero().flatten().tolist()}"
        )
    if primal.ndim == 1 and all(cond.ndim == 1 for cond in conditions):
        return result[0]
    return result


def _conditional_direction(
    primal: torch.Tensor, conditions: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`conditional_direction` of every sample as `[N, w_dim]`, zero where degenerate, and the `[N]`
    mask of the degenerate samples (the primal in the span of the conditions) instead of an error."""
    w_dim = primal.shape[-1]
    if primal.ndim not in (1, 2):
        raise ValueError(f"primal must have shape [w_dim] or [N, w_dim], got {tuple(primal.shape)}")
    for cond in conditions:
        if cond.ndim not in (1, 2) or cond.shape[-1] != w_dim:
            raise ValueError(
                f"Each condition must have shape [{w_dim}] or [N, {w_dim}], got {tuple(cond.shape)}"
            )
    batch_sizes = {t.shape[0] for t in (primal, *conditions) if t.ndim == 2}
    if len(batch_sizes) > 1:
        raise ValueError(f"primal and conditions disagree on the batch size, got sizes {sorted(batch_sizes)}")
    num_samples = batch_sizes.pop() if batch_sizes else 1
    rtol = 10.0 * torch.finfo(primal.dtype).eps

    # Orthonormal basis of the conditions.
    p = primal.to(torch.float64).expand(num_samples, w_dim)  # [N, D]
    residual = p
    if conditions:
        c = torch.stack([cond.to(torch.float64).expand(num_samples, w_dim) for cond in conditions], dim=1)
        c = _normalize(c)  # [N, K, D]
        _, s, vh = torch.linalg.svd(c, full_matrices=False)  # s: [N, K], vh: [N, K, D]
        keep = (s > rtol * s[:, :1]).to(torch.float64)  # [N, K]
        coeff = torch.einsum("nkd,nd->nk", vh, p) * keep  # [N, K]
        residual = p - torch.einsum("nk,nkd->nd", coeff, vh)  # [N, D]

    # Degenerate primal.
    residual_norm = residual.norm(dim=-1)  # [N]
    degenerate = residual_norm <= rtol * p.norm(dim=-1)  # [N]
    result = torch.div(residual, residual_norm.unsqueeze(-1).clamp_min(torch.finfo(torch.float64).tiny))
    result = torch.where(degenerate.unsqueeze(-1), 0.0, result).to(primal.dtype)  # [N, D]
    return result, degenerate


def condition_directions(
    attribute_level: Sequence[torch.Tensor],
    instance_specific: Sequence[torch.Tensor] | None,
    *,
    lambda2: float,
) -> list[torch.Tensor]:
    """The condition vectors whose span is removed from the primal, as the official code builds them.

    Per condition attribute B: `[d_B]` when `lambda2 == 1` (conditional InterfaceGAN), otherwise
    `[dhat_B(w), d_B]` with `dhat_B(w) = lambda2 * d_B + (1 - lambda2) * d_B(w)` (official
    `orthogonalization_all`). All attributes' vectors go into one list (one span). Note that for any
    `lambda2 < 1` the span is `span{d_B(w), d_B}`: lambda2 matters only through `lambda2 == 1`.

    Args:
        attribute_level: `d_B` per condition attribute, each `[w_dim]`.
        instance_specific: `d_B(w)` per condition attribute, each `[N, w_dim]`; None when `lambda2 == 1`.
        lambda2: Weight of the attribute-level direction for the conditions, in [0, 1].

    Returns:
        The condition vectors, `[w_dim]` or `[N, w_dim]` each, for `conditional_direction`.

    Raises:
        ValueError: If `lambda2` lies outside [0, 1], or the instance-specific directions are
            missing (or of another count) while `lambda2 != 1`.
    """
    _check_lambda("lambda2", lambda2)
    if lambda2 == 1:
        return list(attribute_level)
    if instance_specific is None or len(instance_specific) != len(attribute_level):
        raise ValueError(
            f"lambda2 = {lambda2} needs one instance-specific direction per condition "
            f"({len(attribute_level)}), got {None if instance_specific is None else len(instance_specific)}"
        )
    result: list[torch.Tensor] = []
    for level, specific in zip(attribute_level, instance_specific, strict=True):
        result += [instance_aware_direction(level, specific, lam=lambda2), level]
    return result


# ----------------------------------------------------------------------------
# Editing.


def _validate_edit(
    G: SynthesisGenerator,
    ws: torch.Tensor,
    attributes: Sequence[EditAttribute],
    *,
    steps: int,
    step: float,
    lambda1: float,
    lambda2: float,
    target_score: float | None,
    grad_mode: str,
    on_degenerate: str,
) -> None:
    if on_degenerate not in ("raise", "stop"):
        raise ValueError(f"on_degenerate must be 'raise' or 'stop', got {on_degenerate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    if not (step != 0 and abs(step) < float("inf")):
        raise ValueError(f"step must be finite and nonzero, got {step}")
    _check_lambda("lambda1", lambda1)
    _check_lambda("lambda2", lambda2)
    if target_score is not None and not 0.0 <= target_score <= 1.0:
        raise ValueError(f"target_score must lie in [0, 1], got {target_score}")
    if grad_mode not in ("retain", "batched"):
        raise ValueError(f"grad_mode must be 'retain' or 'batched', got {grad_mode!r}")
    names = [attribute.name for attribute in attributes]
    if names[0] in names[1:]:
        raise ValueError(f"The primal attribute cannot also be a condition, got {names[0]!r} in {names[1:]}")
    if len(set(names[1:])) != len(names) - 1:
        raise ValueError(f"Condition attributes must be distinct, got {names[1:]}")
    for attribute in attributes:
        assert_shape(attribute.direction, [G.w_dim])
    if ws.ndim not in (2, 3) or ws.shape[0] < 1:
        raise ValueError(
            f"Latents must have shape [N, {G.w_dim}] or [N, {G.num_ws}, {G.w_dim}], got {tuple(ws.shape)}"
        )
    _to_w_plus(G, ws)


def edit(
    G: SynthesisGenerator,
    ws: torch.Tensor,
    *,
    primal: EditAttribute,
    conditions: Sequence[EditAttribute] = (),
    steps: int,
    step: float,
    lambda1: float,
    lambda2: float,
    target_score: float | None = None,
    return_images: bool = False,
    scores: bool = True,
    synthesis_kwargs: dict[str, Any] | None = None,
    grad_mode: GradMode = "retain",
    on_degenerate: OnDegenerate = "raise",
    on_step: Callable[[int, int], None] | None = None,
    device: torch.device | str,
) -> EditResult:
    """Conditional IALS edit of a batch by incremental updates (section 3.3).

        w_{t+1} = w_t + step * dhat_{A|B}(w_t),   t = 0 .. steps - 1,

    with `dhat_{A|B}(w_t) = conditional_direction(dhat_A(w_t), conditions)`,
    `dhat_A(w) = lambda1 * d_A + (1 - lambda1) * d_A(w)` and the conditions of
    `condition_directions` (lambda2). Every direction is recomputed at every step from one shared
    generator forward at `w_t` (`shared_forward`). As in the official code, the instance-specific
    directions always target y = 1 and the sign of `step` chooses between raising and lowering the
    primal attribute; they are computed only for lambda != 1, so `lambda1 = lambda2 = 1` is
    conditional InterfaceGAN and takes no gradient. The same `[w_dim]` update is added to every
    row of a `w+` code.

    Frame t's scores (and image) come from the forward at `w_t`; the last frame takes one extra
    forward under `torch.no_grad()` (unless `scores=False` and no images are asked for). With
    `target_score`, a sample whose primal probability at frame t has reached it (`>=` for step > 0,
    `<=` for step < 0) stops there: it leaves the forward batch and its later frames repeat frame t.
    Where a sample's primal direction at frame t lies in the span of its conditions (no direction
    changes the primal and keeps them: a saturated classifier's vanishing gradient with `lambda1 = 0`,
    say), `on_degenerate='raise'` raises ValueError and `'stop'` stops that sample there too, marked
    in `EditResult.degenerate`. The loop ends when every sample has stopped.

    Args:
        G: Generator with `synthesis`, `num_ws`, `w_dim`, already on `device`.
        ws: `[N, w_dim]` or `[N, num_ws, w_dim]` start latents.
        primal: The attribute A to change.
        conditions: The attributes B to keep (names distinct, none equal to the primal's).
        steps: Number of updates n >= 1; the result has n + 1 frames.
        step: Step size k != 0 (the paper uses 0.1); its sign is the edit's direction.
        lambda1: Weight of `d_A` in `dhat_A`, in [0, 1].
        lambda2: Weight of `d_B` in `dhat_B`, in [0, 1].
        target_score: Optional primal class-1 probability at which a sample stops.
        return_images: Also return the images of every frame.
        scores: Score every frame with every attribute's classifier. False runs a classifier only
            where its gradient is needed and renders only for a gradient or `return_images` (so
            conditional InterfaceGAN, lambda1 = lambda2 = 1, renders nothing unless asked); the
            scores not computed come back NaN. Needs `target_score` None.
        synthesis_kwargs: Extra keyword arguments of `G.synthesis`; `noise_mode` defaults to 'const'.
        grad_mode: 'retain' or 'batched', see `shared_forward`.
        on_degenerate: 'raise' (measurements, which must not count a stopped sample as kept) or
            'stop' (a service edit keeps the frames made so far).
        on_step: Called as `on_step(i, steps)` after update i = 1..steps; once with
            `(steps, steps)` if every sample stopped earlier.
        device: Where the latents and the computation go.

    Returns:
        `EditResult` with ws `[N, steps + 1, ...]` (frame 0 equal to the input), scores `[N, steps + 1]`
        per attribute name, images `[N, steps + 1, C, H, W]` or None, stopped_at `[N]` and
        degenerate `[N]`.

    Raises:
        ValueError: On invalid hyperparameters, attribute names or latent shape, or with
            `on_degenerate='raise'` if the primal direction of some sample falls in the span of its
            conditions.
    """
    if not scores and target_score is not None:
        raise ValueError("target_score needs the primal's scores (scores=True)")
    attributes = [primal, *conditions]
    _validate_edit(
        G,
        ws,
        attributes,
        steps=steps,
        step=step,
        lambda1=lambda1,
        lambda2=lambda2,
        target_score=target_score,
        grad_mode=grad_mode,
        on_degenerate=on_degenerate,
    )
    ws = ws.detach().to(device)
    num_samples, num_frames = ws.shape[0], steps + 1
    classifiers = [attribute.classifier for attribute in attributes]
    levels = [_normalize(a.direction.detach().to(device=device, dtype=ws.dtype)) for a in attributes]  # [D]
    need_direction = [lambda1 != 1] + [lambda2 != 1] * len(conditions)
    need_score = [True] * len(attributes) if scores else need_direction
    forward_needed = scores or return_images or any(need_direction)  # For a score, an image or a gradient.

    # Frame buffers; frames after a sample's stop are filled at the end.
    w = ws.clone()  # [N, ...], the current latents
    ws_frames = ws.new_empty((num_samples, num_frames, *ws.shape[1:]))  # [N, F, ...]
    ws_frames[:, 0] = ws
    frame_scores = ws.new_full((len(attributes), num_samples, num_frames), float("nan"))  # [K, N, F]
    images: torch.Tensor | None = None  # [N, F, C, H, W]
    stopped_at = torch.full((num_samples,), steps, dtype=torch.int64, device=device)
    degenerate_at = torch.zeros(num_samples, dtype=torch.bool, device=device)
    active = torch.arange(num_samples, device=device)

    def record(frame: int, forward: SharedForward) -> None:
        nonlocal images
        frame_scores[:, active, frame] = forward.probabilities.to(frame_scores.dtype)
        if return_images:
            if images is None:
                images = forward.images.new_empty((num_samples, num_frames, *forward.images.shape[1:]))
            images[active, frame] = forward.images

    # Incremental updates.
    for t in range(steps):
        if forward_needed:
            forward = shared_forward(
                G,
                classifiers,
                w[active],
                need_direction=need_direction,
                need_score=need_score,
                target=1,
                grad_mode=grad_mode,
                synthesis_kwargs=synthesis_kwargs,
            )
            record(t, forward)
            directions = forward.directions  # [K, n, D]
        else:  # Conditional InterfaceGAN without scores or images: no forward at all.
            directions = w.new_zeros((len(attributes), active.numel(), G.w_dim))
        if target_score is not None:
            assert forward_needed  # target_score needs scores=True.
            primal_score = forward.probabilities[0]  # [n]
            reached = primal_score >= target_score if step > 0 else primal_score <= target_score
            stopped_at[active[reached]] = t
            active, directions = active[~reached], directions[:, ~reached]
            if active.numel() == 0:
                break
        num_active = active.numel()

        # Direction of this step.
        primal_direction = levels[0].expand(num_active, -1)  # [n, D]
        if lambda1 != 1:
            primal_direction = instance_aware_direction(levels[0], directions[0], lam=lambda1)
        cond_vectors = condition_directions(
            levels[1:], None if lambda2 == 1 else list(directions[1:]), lambda2=lambda2
        )
        direction, degenerate = _conditional_direction(primal_direction, cond_vectors)  # [n, D], [n]
        if bool(degenerate.any()):  # Nothing of the primal is left to move along.
            if on_degenerate == "raise":
                raise ValueError(
                    f"At frame {t} the primal direction lies in the span of the conditions for samples "
                    f"{active[degenerate].tolist()}"
                )
            stopped_at[active[degenerate]] = t
            degenerate_at[active[degenerate]] = True
            active, direction = active[~degenerate], direction[~degenerate]
            if active.numel() == 0:
                break
        update = step * direction  # [n, D]
        if w.ndim == 3:
            update = update.unsqueeze(1)  # [n, 1, D], the same for every row
        w[active] = w[active] + update
        ws_frames[active, t + 1] = w[active]
        if on_step is not None:
            on_step(t + 1, steps)
    else:
        # Last frame.
        if scores or return_images:
            forward = shared_forward(
                G,
                classifiers,
                w[active],
                need_direction=[False] * len(classifiers),
                need_score=[scores] * len(classifiers),
                synthesis_kwargs=synthesis_kwargs,
            )
            record(steps, forward)
    if active.numel() == 0 and on_step is not None:
        on_step(steps, steps)

    # Stopped samples repeat their stop frame.
    source = torch.minimum(torch.arange(num_frames, device=device).unsqueeze(0), stopped_at.unsqueeze(1))
    rows = torch.arange(num_samples, device=device).unsqueeze(1)  # [N, 1]
    ws_frames = ws_frames[rows, source]
    frame_scores = frame_scores[:, rows, source]
    if images is not None:
        images = images[rows, source]
    return EditResult(
        ws=ws_frames,
        scores={attribute.name: frame_scores[k] for k, attribute in enumerate(attributes)},
        images=images,
        stopped_at=stopped_at,
        degenerate=degenerate_at,
    )


def render_frames(
    G: SynthesisGenerator,
    ws: torch.Tensor,
    *,
    num_batch_dims: int = 1,
    noise_mode: str = "const",
    batch_size: int = 8,
    synthesis_kwargs: dict[str, Any] | None = None,
    device: torch.device | str,
) -> torch.Tensor:
    """Render latents in batches of `batch_size` under `torch.no_grad()`.

    Args:
        G: Generator with `synthesis`, `num_ws`, `w_dim`, already on `device`.
        ws: Latents `[*B, w_dim]` or `[*B, num_ws, w_dim]`, with `num_batch_dims` leading batch
            dimensions B: 1 for `[M, ...]`, 2 for the frames `[N, F, ...]` of an `EditResult`.
        num_batch_dims: How many leading dimensions index images (1 or more).
        noise_mode: Noise mode of the synthesis network ('const' keeps frames comparable).
        batch_size: Images per synthesis call.
        synthesis_kwargs: Other keyword arguments of `G.synthesis`.
        device: Where the rendering runs; the images are returned there.

    Returns:
        `[*B, C, H, W]` images in the generator's range.

    Raises:
        ValueError: On a bad latent shape, `num_batch_dims` or `batch_size`.
    """
    if num_batch_dims < 1:
        raise ValueError(f"num_batch_dims must be >= 1, got {num_batch_dims}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    latent_shape = tuple(ws.shape[num_batch_dims:])
    if latent_shape not in ((G.w_dim,), (G.num_ws, G.w_dim)) or ws.ndim <= num_batch_dims:
        raise ValueError(
            f"Latents must have shape [*B, {G.w_dim}] or [*B, {G.num_ws}, {G.w_dim}] with "
            f"{num_batch_dims} batch dimensions, got {tuple(ws.shape)}"
        )
    batch_shape = tuple(ws.shape[:num_batch_dims])
    if ws.numel() == 0:
        raise ValueError(f"No latents to render, got {tuple(ws.shape)}")
    flat = ws.detach().reshape(-1, *latent_shape)  # [M, ...]
    kwargs = {**(synthesis_kwargs or {}), "noise_mode": noise_mode}
    chunks: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, flat.shape[0], batch_size):
            chunk = _to_w_plus(G, flat[start : start + batch_size].to(device))  # [b, L, D]
            chunks.append(G.synthesis(chunk, **kwargs))  # [b, C, H, W]
    images = torch.cat(chunks)  # [M, C, H, W]
    return images.reshape(*batch_shape, *images.shape[1:])
