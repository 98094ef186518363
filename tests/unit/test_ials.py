"""Properties of the IALS math (models/ials.py) on toy generators and classifiers defined here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.ials import (
    EditAttribute,
    condition_directions,
    conditional_direction,
    edit,
    instance_aware_direction,
    instance_specific_direction,
    render_frames,
    shared_forward,
)


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Iterator[None]:
    """Tiny ops: intra-op threads only add barrier waits (10x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------
# Toy networks.


class MLPGenerator(torch.nn.Module):
    """A small nonlinear generator: every row of w+ reaches every pixel."""

    def __init__(
        self,
        w_dim: int = 6,
        num_ws: int = 3,
        img_channels: int = 2,
        img_resolution: int = 4,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w_dim, self.num_ws = w_dim, num_ws
        self.img_channels, self.img_resolution = img_channels, img_resolution
        hidden, num_pixels = 16, img_channels * img_resolution**2
        self.fc1 = torch.nn.Parameter(torch.randn(num_ws * w_dim, hidden, generator=gen, dtype=dtype) / 3)
        self.fc2 = torch.nn.Parameter(torch.randn(hidden, num_pixels, generator=gen, dtype=dtype) / 3)
        self.calls: list[tuple[int, bool]] = []  # (batch size, grad enabled) per synthesis call

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random", **kwargs: Any) -> torch.Tensor:
        assert ws.shape[1:] == (self.num_ws, self.w_dim) and noise_mode == "const"
        self.calls.append((ws.shape[0], torch.is_grad_enabled()))
        x = torch.tanh(ws.reshape(ws.shape[0], -1) @ self.fc1) @ self.fc2
        return torch.tanh(x).reshape(-1, self.img_channels, self.img_resolution, self.img_resolution)


class ConvClassifier(torch.nn.Module):
    """A small nonlinear 2-class classifier with `logits`."""

    def __init__(self, img_channels: int = 2, seed: int = 1, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv = torch.nn.Conv2d(img_channels, 4, 3, padding=1).to(dtype)
            self.fc = torch.nn.Linear(4, 2).to(dtype)
        self.calls = 0  # logits calls

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(torch.tanh(self.conv(images)).mean(dim=(2, 3)))


class LinearGenerator(torch.nn.Module):
    """Channel c is flat with brightness tanh(sum_r a_r <w_r, u_c>): the answer is known."""

    def __init__(self, u: torch.Tensor, num_ws: int = 3, img_resolution: int = 4) -> None:
        super().__init__()
        self.u = u  # [C, D]
        self.w_dim, self.num_ws, self.img_resolution = u.shape[1], num_ws, img_resolution
        self.row_weights = torch.linspace(0.5, 1.5, num_ws, dtype=u.dtype) / num_ws  # [L], positive
        self.calls: list[tuple[int, bool]] = []

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random", **kwargs: Any) -> torch.Tensor:
        self.calls.append((ws.shape[0], torch.is_grad_enabled()))
        s = torch.einsum("nld,l,cd->nc", ws, self.row_weights, self.u)  # [N, C]
        return torch.tanh(s)[:, :, None, None].expand(-1, -1, self.img_resolution, self.img_resolution)


class ChannelClassifier(torch.nn.Module):
    """P(class 1) = sigmoid(gain * mean brightness of one channel)."""

    def __init__(self, channel: int, gain: float = 3.0) -> None:
        super().__init__()
        self.channel, self.gain = channel, gain

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        margin = self.gain * images[:, self.channel].mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(margin), margin], dim=1)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def cosine64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.to(torch.float64), b.to(torch.float64)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


@pytest.fixture(scope="module")
def linear_pair() -> tuple[LinearGenerator, ChannelClassifier, ChannelClassifier, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    u = unit(torch.randn(2, 8, generator=gen, dtype=torch.float64))
    u[1] = unit(u[1] + 0.8 * u[0])  # correlated attributes: an unconditioned edit would move B too
    return LinearGenerator(u), ChannelClassifier(0), ChannelClassifier(1), u


# ----------------------------------------------------------------------------
# Instance-specific direction.


def _offset_objective(G: MLPGenerator, clf: ConvClassifier, ws: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample objective `[N]` whose gradient w.r.t. a row-shared offset the direction follows."""
    log_probs = clf.logits(G.synthesis(ws, noise_mode="const")).log_softmax(dim=1)
    return log_probs[:, 1] if kind == "neg_ce" else log_probs[:, 1].exp()


@pytest.mark.parametrize("kind", ["neg_ce", "p1"])
@pytest.mark.parametrize("w_plus", [False, True])
def test_instance_specific_direction_matches_finite_differences(kind: str, w_plus: bool) -> None:
    G, clf = MLPGenerator(), ConvClassifier()
    gen = torch.Generator().manual_seed(3)
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=gen, dtype=torch.float64)
    if not w_plus:
        ws = ws[:, 0]
    direction = instance_specific_direction(G, clf, ws)  # [N, D]
    ws_plus = ws if w_plus else ws.unsqueeze(1).expand(-1, G.num_ws, -1)

    # Central differences of the objective along an offset added to every row.
    h = 1e-5

    def derivative(v: torch.Tensor) -> torch.Tensor:  # v: [D] -> [N]
        up = _offset_objective(G, clf, ws_plus + h * v, kind)
        down = _offset_objective(G, clf, ws_plus - h * v, kind)
        return (up - down) / (2 * h)

    with torch.no_grad():
        grad_fd = torch.stack([derivative(e) for e in torch.eye(G.w_dim, dtype=torch.float64)], dim=1)
        for v in torch.randn(4, G.w_dim, generator=gen, dtype=torch.float64):
            torch.testing.assert_close(derivative(v), grad_fd @ v, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(direction, unit(grad_fd), rtol=0, atol=1e-6)
    # Unit up to the 1e-8 in the denominator of `g / (||g|| + 1e-8)`.
    torch.testing.assert_close(direction.norm(dim=1), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-6)


def test_margin_direction_equals_cross_entropy_direction() -> None:
    G, clf = MLPGenerator(), ConvClassifier()
    ws = torch.randn(3, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    offset = torch.zeros(3, G.w_dim, dtype=torch.float64, requires_grad=True)
    logits = clf.logits(G.synthesis(ws + offset[:, None], noise_mode="const"))
    target = torch.ones(3, dtype=torch.int64)
    (grad_ce,) = torch.autograd.grad(F.cross_entropy(logits, target, reduction="sum"), offset)
    expected = unit(-grad_ce)  # the official SGD step on the offset, normalised
    torch.testing.assert_close(instance_specific_direction(G, clf, ws), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        instance_specific_direction(G, clf, ws, target=0), -expected, rtol=0, atol=1e-6
    )


def test_margin_direction_survives_softmax_saturation(linear_pair: Any) -> None:
    G, _, _, u = linear_pair
    clf = ChannelClassifier(0, gain=200.0)  # float32 softmax saturates: CE's gradient underflows to 0
    ws = (3.0 * u[0]).to(torch.float32).expand(2, -1).clone()
    G32 = LinearGenerator(u.to(torch.float32))
    offset = torch.zeros(2, G32.w_dim, requires_grad=True)
    logits = clf.logits(G32.synthesis(ws[:, None].expand(-1, G32.num_ws, -1) + offset[:, None]))
    (grad_ce,) = torch.autograd.grad(F.cross_entropy(logits, torch.ones(2, dtype=torch.int64)), offset)
    assert float(grad_ce.abs().max()) == 0.0
    direction = instance_specific_direction(G32, clf, ws)
    torch.testing.assert_close(direction, u[0].to(torch.float32).expand(2, -1), rtol=0, atol=1e-6)


class ConstantClassifier(torch.nn.Module):
    def __init__(self, use_input: bool) -> None:
        super().__init__()
        self.use_input = use_input

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        logits = torch.tensor([[0.0, 1.0]], dtype=images.dtype).expand(images.shape[0], -1)
        return logits + 0 * images.sum() if self.use_input else logits


@pytest.mark.parametrize("use_input", [True, False])
def test_zero_gradient_gives_zero_direction(use_input: bool) -> None:
    G = MLPGenerator()
    ws = torch.randn(2, G.w_dim, dtype=torch.float64)
    direction = instance_specific_direction(G, ConstantClassifier(use_input), ws)
    assert torch.equal(direction, torch.zeros_like(direction))


# ----------------------------------------------------------------------------
# Shared forward.


def official_way_direction(G: MLPGenerator, clf: ConvClassifier, ws: torch.Tensor) -> torch.Tensor:
    """The official code's way, restated: its own forward, CE towards class 1 on a row-shared offset,
    `backward()` with the weights' gradients on, then minus the offset's gradient, normalised per sample."""
    offset = torch.zeros(ws.shape[0], 1, G.w_dim, dtype=ws.dtype, requires_grad=True)
    logits = clf.logits(G.synthesis(ws + offset, noise_mode="const"))
    target = torch.ones(ws.shape[0], dtype=torch.long)
    torch.nn.functional.cross_entropy(logits, target, reduction="sum").backward()
    assert offset.grad is not None
    step = -offset.grad[:, 0]  # [N, w_dim]
    for module in (G, clf):
        module.zero_grad(set_to_none=True)
    return step / step.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("grad_mode", ["retain", "batched"])
def test_shared_forward_equals_separate_passes(grad_mode: str) -> None:
    G = MLPGenerator()
    classifiers = [ConvClassifier(seed=s) for s in (1, 2, 3)]
    ws = torch.randn(3, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    G.calls.clear()
    result = shared_forward(G, classifiers, ws, need_direction=[True, False, True], grad_mode=grad_mode)
    assert G.calls == [(3, True)]  # one forward for all attributes
    parameters = [*G.parameters(), *(p for clf in classifiers for p in clf.parameters())]
    assert all(p.requires_grad and p.grad is None for p in parameters)  # no weight gradient computed
    assert result.directions.shape == (3, 3, G.w_dim) and result.probabilities.shape == (3, 3)
    for k, clf in enumerate(classifiers):
        with torch.no_grad():
            images = G.synthesis(ws, noise_mode="const")
            probability = clf.logits(images).softmax(dim=1)[:, 1]
        torch.testing.assert_close(result.probabilities[k], probability, rtol=0, atol=1e-12)
        separate = (
            official_way_direction(G, clf, ws) if k != 1 else torch.zeros(3, G.w_dim, dtype=torch.float64)
        )
        # Equal up to the `+ 1e-8` in the normaliser's denominator (relative 1e-8 / |g|).
        torch.testing.assert_close(result.directions[k], separate, rtol=0, atol=1e-6)
        cosine = (result.directions[k] * separate).sum(dim=1) / (result.directions[k].norm(dim=1) + 1e-300)
        assert k == 1 or torch.allclose(cosine, torch.ones_like(cosine), rtol=0, atol=1e-12)
    torch.testing.assert_close(result.images, images, rtol=0, atol=0)
    assert not result.images.requires_grad


def test_shared_forward_without_directions_takes_no_graph() -> None:
    G = MLPGenerator()
    G.calls.clear()
    result = shared_forward(
        G, [ConvClassifier()], torch.zeros(2, G.w_dim, dtype=torch.float64), need_direction=[False]
    )
    assert G.calls == [(2, False)]
    assert torch.equal(result.directions, torch.zeros(1, 2, G.w_dim, dtype=torch.float64))


@pytest.mark.parametrize("with_gradient", [False, True])
def test_shared_forward_runs_only_the_classifiers_it_needs(with_gradient: bool) -> None:
    G = MLPGenerator()
    classifiers = [ConvClassifier(seed=1), ConvClassifier(seed=2), ConvClassifier(seed=3)]
    ws = torch.randn(3, G.w_dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    full = shared_forward(G, classifiers, ws, need_direction=[with_gradient, False, False])
    for clf in classifiers:
        clf.calls = 0
    lean = shared_forward(
        G, classifiers, ws, need_direction=[with_gradient, False, False], need_score=[False, True, False]
    )
    assert [clf.calls for clf in classifiers] == [int(with_gradient), 1, 0]
    torch.testing.assert_close(lean.probabilities[1], full.probabilities[1], rtol=0, atol=0)
    assert lean.probabilities[2].isnan().all()
    if with_gradient:  # A classifier run for its gradient gives its probability too.
        torch.testing.assert_close(lean.probabilities[0], full.probabilities[0], rtol=0, atol=0)
        assert torch.equal(lean.directions, full.directions)
    else:
        assert lean.probabilities[0].isnan().all()
    with pytest.raises(ValueError, match="need_score needs one flag per classifier"):
        shared_forward(G, classifiers, ws, need_direction=[False] * 3, need_score=[True])


# ----------------------------------------------------------------------------
# Instance-aware and conditional directions.


def test_instance_aware_direction_mixes() -> None:
    level, specific = torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    torch.testing.assert_close(
        instance_aware_direction(level, specific, lam=0.75), torch.tensor([[0.75, 0.25], [0.75, -0.25]])
    )
    with pytest.raises(ValueError, match="got 1.5"):
        instance_aware_direction(level, specific, lam=1.5)


def _project_boundary_np(primal: np.ndarray, *conds: np.ndarray) -> np.ndarray:
    """InterfaceGAN's `project_boundary`, restated for `[1, D]` unit vectors."""
    if len(conds) == 1:
        new = primal - primal.dot(conds[0].T) * conds[0]
    elif len(conds) == 2:
        p1, p2, c12 = primal.dot(conds[0].T), primal.dot(conds[1].T), conds[0].dot(conds[1].T)
        alpha = (p1 - p2 * c12) / (1 - c12**2 + 1e-8)
        beta = (p2 - p1 * c12) / (1 - c12**2 + 1e-8)
        new = primal - alpha * conds[0] - beta * conds[1]
    else:
        c = np.concatenate(conds)  # [K, D]
        new = primal - np.linalg.solve(c @ c.T, c @ primal.T).T @ c
    return new / np.linalg.norm(new)


@pytest.mark.parametrize("num_conditions", [1, 2, 3])
def test_conditional_direction_matches_project_boundary(num_conditions: int) -> None:
    rng = np.random.RandomState(num_conditions)
    vectors = rng.randn(num_conditions + 1, 512)
    vectors[1:] += 0.5 * vectors[:1]  # conditions correlated with the primal
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = _project_boundary_np(vectors[:1], *(v[None] for v in vectors[1:]))[0]
    tensors = torch.from_numpy(vectors)
    result = conditional_direction(tensors[0], list(tensors[1:]))
    assert result.shape == (512,) and result.dtype == torch.float64
    torch.testing.assert_close(result, torch.from_numpy(expected), rtol=0, atol=1e-7)


@pytest.mark.parametrize("num_conditions", [1, 2, 3])
def test_conditional_direction_is_unit_and_orthogonal(num_conditions: int) -> None:
    gen = torch.Generator().manual_seed(num_conditions)
    primal = torch.randn(4, 512, generator=gen)
    conditions = [torch.randn(4, 512, generator=gen) + 0.7 * primal for _ in range(num_conditions - 1)]
    conditions.append(torch.randn(512, generator=gen))  # a shared [w_dim] condition mixed in
    result = conditional_direction(primal, conditions)
    assert result.shape == (4, 512) and result.dtype == torch.float32
    torch.testing.assert_close(result.norm(dim=1), torch.ones(4))
    for cond in conditions:
        assert float(cosine64(result, cond).abs().max()) < 1e-5
    assert bool((cosine64(result, primal) > 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["near", "equal", "scaled", "zero"])
def test_conditional_direction_with_degenerate_conditions(dtype: torch.dtype, kind: str) -> None:
    gen = torch.Generator().manual_seed(7)
    primal, c1 = (
        torch.randn(3, 512, generator=gen, dtype=torch.float64).to(dtype),
        unit(torch.randn(3, 512, generator=gen)),
    )
    c1 = c1.to(dtype)
    c2 = {
        "near": c1 + 1e-7 * torch.randn(3, 512, generator=gen).to(dtype),
        "equal": c1.clone(),
        "scaled": -3 * c1,
        "zero": torch.zeros_like(c1),
    }[kind]
    result = conditional_direction(primal, [c1, c2])
    assert bool(torch.isfinite(result).all())
    torch.testing.assert_close(result.norm(dim=1), torch.ones(3, dtype=dtype))
    for cond in (c1, c2) if kind != "zero" else (c1,):
        assert float(cosine64(result, cond).abs().max()) < 1e-5
    if kind in ("equal", "scaled"):  # the official closed form without its epsilon divides by 1 - c12**2 = 0
        c12 = (unit(c1.double()) * unit(c2.double())).sum(-1)
        assert bool((1 - c12**2 < 1e-12).all())


def test_conditional_direction_rejects_primal_in_span() -> None:
    gen = torch.Generator().manual_seed(8)
    c1, c2 = torch.randn(512, generator=gen), torch.randn(512, generator=gen)
    primal = torch.stack([torch.randn(512, generator=gen), 2 * c1 - c2])
    with pytest.raises(ValueError, match=r"span of the conditions for samples \[1\]"):
        conditional_direction(primal, [c1, c2])
    with pytest.raises(ValueError, match="span"):
        conditional_direction(torch.zeros(512), [])
    torch.testing.assert_close(conditional_direction(3 * c1, []), unit(c1))
    with pytest.raises(ValueError, match=r"got \(2, 3\)"):
        conditional_direction(torch.randn(512), [torch.randn(2, 3)])


def test_condition_directions_follow_the_official_code() -> None:
    d_b, d_c = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    s_b, s_c = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.0, -1.0, 0.0]])
    assert condition_directions([d_b, d_c], None, lambda2=1.0) == [d_b, d_c]
    result = condition_directions([d_b, d_c], [s_b, s_c], lambda2=0.25)
    expected = [0.25 * d_b + 0.75 * s_b, d_b, 0.25 * d_c + 0.75 * s_c, d_c]
    assert len(result) == 4
    for got, want in zip(result, expected, strict=True):
        torch.testing.assert_close(got, want.expand_as(got))
    with pytest.raises(ValueError, match="got None"):
        condition_directions([d_b], None, lambda2=0.5)


# ----------------------------------------------------------------------------
# Edit.


def _attributes(u: torch.Tensor, clf_a: Any, clf_b: Any) -> tuple[EditAttribute, EditAttribute]:
    return EditAttribute("a", clf_a, u[0]), EditAttribute("b", clf_b, u[1])


def _toy_attributes(G: MLPGenerator, gen: torch.Generator) -> tuple[EditAttribute, EditAttribute]:
    """A primal "a" and a condition "b": toy classifiers, random unit directions drawn from `gen`."""
    primal = EditAttribute(
        "a", ConvClassifier(seed=1), unit(torch.randn(G.w_dim, generator=gen, dtype=torch.float64))
    )
    cond = EditAttribute(
        "b", ConvClassifier(seed=2), unit(torch.randn(G.w_dim, generator=gen, dtype=torch.float64))
    )
    return primal, cond


@pytest.mark.parametrize("lambdas", [(0.5, 0.0), (0.5, 1.0), (1.0, 0.0), (1.0, 1.0)])
@pytest.mark.parametrize("return_images", [False, True])
def test_edit_without_scores_gives_the_same_frames(lambdas: tuple[float, float], return_images: bool) -> None:
    """scores=False skips the classifier forwards no gradient needs, and the renders of conditional
    InterfaceGAN when no image is asked for; the frames (and images) stay the same."""
    G = MLPGenerator()
    gen = torch.Generator().manual_seed(4)
    primal, cond = _toy_attributes(G, gen)
    ws = torch.randn(3, G.num_ws, G.w_dim, generator=gen, dtype=torch.float64)
    kwargs: dict[str, Any] = dict(
        primal=primal, conditions=[cond], steps=3, step=0.2, lambda1=lambdas[0], lambda2=lambdas[1],
        return_images=return_images, device="cpu",
    )
    full = edit(G, ws, **kwargs)
    G.calls.clear()
    primal.classifier.calls = cond.classifier.calls = 0  # type: ignore[attr-defined]
    lean = edit(G, ws, scores=False, **kwargs)
    # A classifier runs once per update step where its gradient is needed, else never.
    assert primal.classifier.calls == (3 if lambdas[0] != 1 else 0)  # type: ignore[attr-defined]
    assert cond.classifier.calls == (3 if lambdas[1] != 1 else 0)  # type: ignore[attr-defined]
    assert torch.equal(lean.ws, full.ws)
    if return_images:
        assert full.images is not None and lean.images is not None
        assert torch.equal(lean.images, full.images)
    else:
        assert lean.images is None
    needs_gradient = lambdas != (1.0, 1.0)
    expected_calls = [(3, True)] * 3 if needs_gradient else [(3, False)] * 3 if return_images else []
    expected_calls += [(3, False)] if return_images else []
    assert G.calls == expected_calls
    # Scores only where a gradient ran the classifier (frames 0..2), never at the last frame.
    for name, lam in (("a", lambdas[0]), ("b", lambdas[1])):
        scored = lean.scores[name][:, :3]
        if lam != 1:
            torch.testing.assert_close(scored, full.scores[name][:, :3])
        else:
            assert scored.isnan().all()
        assert lean.scores[name][:, 3].isnan().all()
    with pytest.raises(ValueError, match="target_score"):
        edit(G, ws, scores=False, target_score=0.5, **kwargs)


@pytest.mark.parametrize("w_plus", [False, True])
def test_edit_frames_and_shapes(w_plus: bool) -> None:
    G = MLPGenerator()
    gen = torch.Generator().manual_seed(9)
    primal, cond = _toy_attributes(G, gen)
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=gen, dtype=torch.float64)
    ws = ws if w_plus else ws[:, 0]
    ws_before = ws.clone()
    progress: list[tuple[int, int]] = []
    G.calls.clear()
    result = edit(
        G,
        ws,
        primal=primal,
        conditions=[cond],
        steps=4,
        step=0.1,
        lambda1=0.5,
        lambda2=0.0,
        return_images=True,
        on_step=lambda i, n: progress.append((i, n)),
        device="cpu",
    )
    assert torch.equal(ws, ws_before)
    assert result.ws.shape == (2, 5, *ws.shape[1:])
    assert torch.equal(result.ws[:, 0], ws)
    assert G.calls == [(2, True)] * 4 + [(2, False)]  # one forward per frame, never twice
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert set(result.scores) == {"a", "b"} and result.scores["a"].shape == (2, 5)
    assert torch.equal(result.stopped_at, torch.full((2,), 4))
    steps = result.ws.diff(dim=1)  # [N, 4, ...]
    if w_plus:
        torch.testing.assert_close(
            steps, steps[:, :, :1].expand_as(steps), rtol=0, atol=1e-15
        )  # same on every row
        steps = steps[:, :, 0]
    torch.testing.assert_close(steps.norm(dim=-1), torch.full((2, 4), 0.1, dtype=torch.float64))
    assert result.images is not None and result.images.shape == (2, 5, 2, 4, 4)
    rendered = render_frames(G, result.ws, num_batch_dims=2, batch_size=3, device="cpu")
    torch.testing.assert_close(result.images, rendered, rtol=0, atol=1e-12)
    with torch.no_grad():
        probability = cond.classifier.logits(rendered[:, 2]).softmax(dim=1)[:, 1]
    torch.testing.assert_close(result.scores["b"][:, 2], probability, rtol=0, atol=1e-12)


@pytest.mark.parametrize("grad_mode", ["retain", "batched"])
def test_edit_with_lambdas_one_is_conditional_interfacegan(linear_pair: Any, grad_mode: str) -> None:
    G, clf_a, clf_b, u = linear_pair
    primal, cond = _attributes(u, clf_a, clf_b)
    ws = torch.randn(3, G.w_dim, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    G.calls.clear()
    result = edit(
        G,
        ws,
        primal=primal,
        conditions=[cond],
        steps=3,
        step=-0.2,
        lambda1=1.0,
        lambda2=1.0,
        grad_mode=grad_mode,
        device="cpu",
    )
    assert all(not grad_enabled for _, grad_enabled in G.calls)  # no gradient taken
    direction = _project_boundary_np(u[:1].numpy(), u[1:].numpy())[0]
    expected = ws[:, None] + torch.arange(4, dtype=torch.float64)[None, :, None] * -0.2 * torch.from_numpy(
        direction
    )
    torch.testing.assert_close(result.ws, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_conditions", [2, 3])
def test_edit_with_lambdas_one_and_several_conditions_is_conditional_interfacegan(
    num_conditions: int,
) -> None:
    G = MLPGenerator()
    rng = np.random.RandomState(20 + num_conditions)
    vectors = rng.randn(num_conditions + 1, G.w_dim)
    vectors[1:] += 0.5 * vectors[:1]  # conditions correlated with the primal
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    attributes = [
        EditAttribute(f"attr{k}", ConvClassifier(seed=k), torch.from_numpy(vectors[k]))
        for k in range(len(vectors))
    ]
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    G.calls.clear()
    result = edit(
        G,
        ws,
        primal=attributes[0],
        conditions=attributes[1:],
        steps=2,
        step=0.3,
        lambda1=1.0,
        lambda2=1.0,
        device="cpu",
    )
    assert all(not grad_enabled for _, grad_enabled in G.calls)  # no gradient taken
    direction = torch.from_numpy(_project_boundary_np(vectors[:1], *(v[None] for v in vectors[1:]))[0])
    expected = ws[:, None] + torch.arange(3, dtype=torch.float64)[None, :, None, None] * 0.3 * direction
    # project_boundary's closed form for two conditions keeps `+ 1e-8` in its denominator.
    torch.testing.assert_close(result.ws, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("lambdas", [(0.75, 0.0), (0.0, 0.5), (1.0, 1.0), (0.5, 1.0), (0.0, 0.0)])
@pytest.mark.parametrize("w_plus", [False, True])
def test_edit_moves_primal_and_keeps_condition(
    linear_pair: Any, lambdas: tuple[float, float], w_plus: bool
) -> None:
    G, clf_a, clf_b, u = linear_pair
    primal, cond = _attributes(u, clf_a, clf_b)
    ws = 0.3 * torch.randn(
        2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(11), dtype=torch.float64
    )
    ws = ws if w_plus else ws[:, 0]
    scores = {}
    for sign in (1, -1):
        result = edit(
            G,
            ws,
            primal=primal,
            conditions=[cond],
            steps=6,
            step=sign * 0.2,
            lambda1=lambdas[0],
            lambda2=lambdas[1],
            device="cpu",
        )
        score_a, score_b = result.scores["a"], result.scores["b"]
        assert bool((sign * score_a.diff(dim=1) > 1e-4).all())  # strictly monotone in the edit's direction
        torch.testing.assert_close(score_b, score_b[:, :1].expand_as(score_b), rtol=0, atol=1e-10)
        scores[sign] = score_a[:, -1]
    # Without the condition, B moves (the attributes are correlated).
    unconditioned = edit(
        G, ws, primal=primal, steps=6, step=0.2, lambda1=lambdas[0], lambda2=lambdas[1], device="cpu"
    )
    images = render_frames(G, unconditioned.ws[:, [0, -1]], num_batch_dims=2, device="cpu")  # [N, 2, C, H, W]
    with torch.no_grad():
        score_b = clf_b.logits(images.flatten(0, 1)).softmax(dim=1)[:, 1].reshape(2, 2)
    assert bool((score_b[:, 1] - score_b[:, 0] > 1e-2).all())
    assert bool((scores[1] > scores[-1]).all())


@pytest.mark.parametrize("grad_mode", ["retain", "batched"])
def test_edit_grad_modes_agree(grad_mode: str) -> None:
    G = MLPGenerator()
    gen = torch.Generator().manual_seed(12)
    attrs = [
        EditAttribute(
            name, ConvClassifier(seed=s), unit(torch.randn(G.w_dim, generator=gen, dtype=torch.float64))
        )
        for name, s in (("a", 1), ("b", 2), ("c", 3))
    ]
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=gen, dtype=torch.float64)
    kwargs: dict[str, Any] = dict(
        primal=attrs[0], conditions=attrs[1:], steps=3, step=0.1, lambda1=0.0, lambda2=0.25, device="cpu"
    )
    reference = edit(G, ws, grad_mode="retain", **kwargs)
    result = edit(G, ws, grad_mode=grad_mode, **kwargs)
    torch.testing.assert_close(result.ws, reference.ws, rtol=0, atol=1e-12)
    for name in ("a", "b", "c"):
        torch.testing.assert_close(result.scores[name], reference.scores[name], rtol=0, atol=1e-12)


@pytest.mark.parametrize("sign", [1, -1])
def test_edit_target_score_stops_samples(linear_pair: Any, sign: int) -> None:
    G, clf_a, clf_b, u = linear_pair
    primal, cond = _attributes(u, clf_a, clf_b)
    # Sample 3 starts past the target.
    offsets = torch.tensor([0.0, -0.4, -0.8, 5.0], dtype=torch.float64) * sign
    ws = offsets[:, None] * u[0]  # s_A = offset, s_B = offset * <u_A, u_B>
    target = 0.75 if sign > 0 else 0.25
    G.calls.clear()
    progress: list[tuple[int, int]] = []
    result = edit(
        G,
        ws,
        primal=primal,
        conditions=[cond],
        steps=12,
        step=sign * 0.2,
        lambda1=0.5,
        lambda2=0.0,
        target_score=target,
        return_images=True,
        on_step=lambda i, n: progress.append((i, n)),
        device="cpu",
    )
    score = result.scores["a"]
    stopped_at = result.stopped_at.tolist()
    assert stopped_at[3] == 0 and stopped_at[0] < stopped_at[1] < stopped_at[2] < 12
    assert result.images is not None
    for i, s in enumerate(stopped_at):
        assert sign * (score[i, s] - target) >= 0
        if s > 0:
            assert sign * (score[i, s - 1] - target) < 0
        for frames in (result.ws, score, result.images, result.scores["b"]):
            assert torch.equal(frames[i, s:], frames[i, s : s + 1].expand_as(frames[i, s:]))
    # Stopped samples leave the forward batch; the loop ends when all have stopped.
    batch_sizes = [size for size, _ in G.calls]
    assert batch_sizes[0] == 3 + 1 and batch_sizes == sorted(batch_sizes, reverse=True)
    assert len(G.calls) == max(stopped_at) + 1
    assert progress[-1] == (12, 12) and [i for i, _ in progress[:-1]] == list(range(1, max(stopped_at) + 1))


class CappedClassifier(ChannelClassifier):
    """`ChannelClassifier` whose brightness saturates at `cap`: past it the gradient is exactly zero."""

    def __init__(self, channel: int, cap: float) -> None:
        super().__init__(channel)
        self.cap = cap

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return super().logits(images.clamp(max=self.cap))


def test_edit_stops_samples_whose_primal_direction_degenerates(linear_pair: Any) -> None:
    G, _, clf_b, u = linear_pair
    primal = EditAttribute("a", CappedClassifier(0, cap=0.5), u[0])
    cond = EditAttribute("b", clf_b, u[1])
    # With lambda1 = 0 the primal direction is the classifier's gradient alone: zero past the cap.
    # Sample 3 starts past it; samples 0-2 reach it at different frames (brightness tanh(<w, u_A>));
    # sample 4 starts too low to reach it in 20 steps.
    ws = torch.tensor([0.0, -0.4, -0.8, 3.0, -3.0], dtype=torch.float64)[:, None] * u[0]
    kwargs: dict[str, Any] = dict(
        primal=primal, conditions=[cond], steps=20, step=0.2, lambda1=0.0, lambda2=0.0, device="cpu"
    )
    with pytest.raises(ValueError, match=r"At frame 0 the primal direction .* for samples \[3\]"):
        edit(G, ws, **kwargs)  # on_degenerate='raise' by default: a measurement must not count a stop.
    G.calls.clear()
    progress: list[tuple[int, int]] = []
    on_step = lambda i, n: progress.append((i, n))  # noqa: E731
    result = edit(G, ws, on_degenerate="stop", return_images=True, on_step=on_step, **kwargs)
    stopped_at, degenerate = result.stopped_at.tolist(), result.degenerate.tolist()
    assert degenerate == [True, True, True, True, False]
    assert stopped_at[3] == 0 and 0 < stopped_at[0] < stopped_at[1] < stopped_at[2] < 20 == stopped_at[4]
    assert result.images is not None
    for i, s in enumerate(stopped_at):
        brightness = torch.tanh(result.ws[i] @ u[0] * G.row_weights.sum())  # [F]
        assert (brightness[s] >= 0.5) == degenerate[i] and bool((brightness[:s] < 0.5).all())
        for frames in (result.ws, result.scores["a"], result.scores["b"], result.images):
            assert torch.equal(frames[i, s:], frames[i, s : s + 1].expand_as(frames[i, s:]))
    # Stopped samples leave the forward batch; the last frame's forward is for sample 4 alone.
    batch_sizes = [size for size, _ in G.calls]
    assert batch_sizes[0] == 5 and batch_sizes == sorted(batch_sizes, reverse=True)
    assert len(G.calls) == 21 and batch_sizes[-1] == 1
    assert progress == [(i, 20) for i in range(1, 21)]

    # Every sample stopped: no last-frame forward, and progress ends at 100 %.
    G.calls.clear()
    progress.clear()
    done = edit(G, ws[:4], on_degenerate="stop", on_step=on_step, **kwargs)
    assert done.stopped_at.tolist() == stopped_at[:4] and len(G.calls) == max(stopped_at[:4]) + 1
    last = max(stopped_at[:4])
    assert progress[-1] == (20, 20) and [i for i, _ in progress[:-1]] == list(range(1, last + 1))

    # A target reached in the same step wins: that sample stopped for its score.
    target = float(result.scores["a"][0, stopped_at[0]])  # Sample 0's score where it degenerates.
    assert target > float(result.scores["a"][0, stopped_at[0] - 1])
    hit = edit(G, ws[:1], on_degenerate="stop", target_score=target, **kwargs)
    assert hit.degenerate.tolist() == [False] and hit.stopped_at.tolist() == [stopped_at[0]]

    # An edit that never degenerates marks no sample, and the public function still refuses.
    plain = edit(G, ws[:3], **{**kwargs, "steps": 2, "lambda1": 0.5})
    assert plain.degenerate.tolist() == [False] * 3 and plain.stopped_at.tolist() == [2] * 3
    with pytest.raises(ValueError, match="span of the conditions"):
        conditional_direction(torch.zeros(2, G.w_dim, dtype=torch.float64), [u[1]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"step": 0.0}, "step must be finite and nonzero"),
        ({"lambda1": -0.1}, "lambda1 must lie in"),
        ({"lambda2": 1.1}, "lambda2 must lie in"),
        ({"target_score": 2.0}, "target_score"),
        ({"grad_mode": "vmap"}, "grad_mode"),
        ({"ws": torch.zeros(2, 3)}, r"got \(2, 3\)"),
        ({"ws": torch.zeros(2, 5, 8)}, r"got \(2, 5, 8\)"),
        ({"conditions": "self"}, "primal attribute cannot also be a condition"),
        ({"conditions": "twice"}, "Condition attributes must be distinct"),
    ],
)
def test_edit_validates(linear_pair: Any, kwargs: dict[str, Any], message: str) -> None:
    G, clf_a, clf_b, u = linear_pair
    primal, cond = _attributes(u, clf_a, clf_b)
    kwargs = dict(kwargs)
    conditions = {"self": [cond, EditAttribute("a", clf_b, u[1])], "twice": [cond, cond]}.get(
        kwargs.pop("conditions", ""), [cond]
    )
    arguments: dict[str, Any] = dict(
        ws=torch.zeros(2, 8, dtype=torch.float64), steps=2, step=0.1, lambda1=0.5, lambda2=0.5, device="cpu"
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        edit(G, arguments.pop("ws"), primal=primal, conditions=conditions, **arguments)


def test_render_frames_batches_and_shapes() -> None:
    G = MLPGenerator()
    ws = torch.randn(5, G.w_dim, dtype=torch.float64)
    G.calls.clear()
    images = render_frames(G, ws, batch_size=2, device="cpu")
    assert images.shape == (5, 2, 4, 4) and [size for size, _ in G.calls] == [2, 2, 1]
    assert not any(grad for _, grad in G.calls)
    frames = render_frames(
        G,
        ws.reshape(5, 1, G.w_dim).expand(-1, G.num_ws, -1).reshape(5, 1, G.num_ws, G.w_dim),
        num_batch_dims=2,
        device="cpu",
    )
    torch.testing.assert_close(frames[:, 0], images, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"got \(5, 7\)"):
        render_frames(G, torch.zeros(5, 7), device="cpu")


# ----------------------------------------------------------------------------
# A real (tiny) StyleGAN2.


class TinyClassifier(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.fc = torch.nn.Linear(8, 2)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(F.leaky_relu(self.conv(images), 0.2).mean(dim=(2, 3)))


def tiny_stylegan2(seed: int) -> Any:
    """A frozen 16 px StyleGAN2 with narrow channels."""
    from models.networks.stylegan2 import Generator

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        G = Generator(
            z_dim=16,
            c_dim=0,
            w_dim=16,
            img_resolution=16,
            img_channels=3,
            mapping_kwargs={"num_layers": 2},
            synthesis_kwargs={"channel_base": 64, "channel_max": 16},
        )
    return G.eval().requires_grad_(False)


def test_stylegan2_smoke() -> None:
    from models.sampling import sample_ws

    G = tiny_stylegan2(0)
    ws = sample_ws(G, [1, 2], truncation_psi=0.5, device="cpu")  # [2, num_ws, w_dim]
    classifiers = [TinyClassifier(1).eval(), TinyClassifier(2).eval()]
    retain = shared_forward(G, classifiers, ws, need_direction=[True, True], grad_mode="retain")
    batched = shared_forward(G, classifiers, ws, need_direction=[True, True], grad_mode="batched")
    torch.testing.assert_close(retain.directions, batched.directions, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        retain.directions[0], instance_specific_direction(G, classifiers[0], ws), rtol=1e-4, atol=1e-5
    )
    gen = torch.Generator().manual_seed(0)
    primal, cond = (
        EditAttribute(name, clf, unit(torch.randn(G.w_dim, generator=gen)))
        for name, clf in zip("ab", classifiers, strict=True)
    )
    result = edit(
        G,
        ws,
        primal=primal,
        conditions=[cond],
        steps=2,
        step=0.5,
        lambda1=0.75,
        lambda2=0.0,
        return_images=True,
        device="cpu",
    )
    assert result.ws.shape == (2, 3, G.num_ws, G.w_dim) and torch.equal(result.ws[:, 0], ws)
    assert result.images is not None and result.images.shape == (2, 3, 3, 16, 16)
    assert bool(torch.isfinite(result.images).all()) and bool(torch.isfinite(result.scores["a"]).all())


def test_stylegan2_edit_kwargs_of_the_pack_registry_give_the_same_directions() -> None:
    """The non-fused modulated convolution that packs use for edits computes the fused path's directions."""
    from models.pack import GENERATOR_KINDS
    from models.sampling import sample_ws

    G = tiny_stylegan2(3)
    ws = sample_ws(G, [4, 5], truncation_psi=0.7, device="cpu")
    classifiers = [TinyClassifier(3).eval(), TinyClassifier(4).eval()]
    edit_kwargs = dict(GENERATOR_KINDS["stylegan2"].edit_synthesis_kwargs)
    assert edit_kwargs == {"fused_modconv": False}
    fused = shared_forward(
        G, classifiers, ws, need_direction=[True, True], synthesis_kwargs={"fused_modconv": True}
    )
    split = shared_forward(G, classifiers, ws, need_direction=[True, True], synthesis_kwargs=edit_kwargs)
    torch.testing.assert_close(split.images, fused.images, rtol=0, atol=1e-5)
    torch.testing.assert_close(split.directions, fused.directions, rtol=0, atol=1e-4)
