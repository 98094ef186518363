"""Classifier training and attribute-level directions (models/training.py) on tiny worlds."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from models.networks.classifier import AttributeClassifier
from models.networks.procedural import ProceduralGenerator
from models.training import (
    averaged_direction,
    classifier_accuracy,
    ganspace_directions,
    interfacegan_direction,
    sample_training_ws,
    train_classifier,
    train_classifiers,
)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.to(torch.float64), b.to(torch.float64)
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def tiny_world() -> ProceduralGenerator:
    """A 32 px procedural world with the smallest W it allows (one direction per factor)."""
    return ProceduralGenerator(z_dim=64, w_dim=64, img_resolution=32).eval()


def tiny_classifier(seed: int = 0) -> AttributeClassifier:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AttributeClassifier("resnet18", width=8, input_resolution=32)


# ----------------------------------------------------------------------------
# Sampling and classifier training.


def test_sample_training_ws_draws_psi_per_face(tiny_world: ProceduralGenerator) -> None:
    G = tiny_world
    ws = sample_training_ws(
        G, n=64, truncation_psi=(0.5, 1.5), generator=torch.Generator().manual_seed(3), device="cpu"
    )
    assert ws.shape == (64, G.num_ws, G.w_dim) and ws.dtype == torch.float32
    assert torch.equal(ws[:, 0], ws[:, -1])  # every row the same
    again = sample_training_ws(
        G, n=64, truncation_psi=(0.5, 1.5), generator=torch.Generator().manual_seed(3), device="cpu"
    )
    assert torch.equal(ws, again)
    # psi_i = |w_i| / |z_i|: reproduce z from the same generator.
    gen = torch.Generator().manual_seed(3)
    z = torch.randn((64, G.w_dim), generator=gen)
    psi = ws[:, 0].norm(dim=1) / z.norm(dim=1)
    assert float(psi.min()) >= 0.5 - 1e-5 and float(psi.max()) <= 1.5 + 1e-5
    assert float(psi.max() - psi.min()) > 0.5  # really drawn per face
    with pytest.raises(ValueError, match="truncation_psi"):
        sample_training_ws(G, n=4, truncation_psi=(1.2, 0.8), generator=torch.Generator(), device="cpu")


def _train(G: ProceduralGenerator, classifier: AttributeClassifier, *, steps: int, seed: int) -> Any:
    return train_classifier(
        classifier,
        G,
        "pose",
        steps=steps,
        batch_size=16,
        lr=3e-3,
        truncation_psi=(0.8, 1.2),
        generator=torch.Generator().manual_seed(seed),
        device="cpu",
    )


def test_training_lowers_the_loss_and_leaves_eval_mode(tiny_world: ProceduralGenerator) -> None:
    G = tiny_world
    classifier = tiny_classifier()
    before = copy.deepcopy(classifier.state_dict())
    calls: list[tuple[int, int]] = []
    result = train_classifier(
        classifier,
        G,
        "pose",
        steps=24,
        batch_size=16,
        lr=3e-3,
        truncation_psi=(0.8, 1.2),
        generator=torch.Generator().manual_seed(0),
        device="cpu",
        on_step=lambda i, n: calls.append((i, n)),
    )
    assert result.classifier is classifier and not classifier.training
    assert calls == [(i, 24) for i in range(1, 25)]
    assert len(result.losses) == 24
    first, last = sum(result.losses[:4]) / 4, sum(result.losses[-4:]) / 4
    assert last < first - 0.1, result.losses
    # BatchNorm statistics were updated in train mode.
    assert not torch.equal(before["net.bn1.running_mean"], classifier.state_dict()["net.bn1.running_mean"])

    accuracy = classifier_accuracy(
        classifier,
        G,
        "pose",
        n=64,
        truncation_psi=1.0,
        generator=torch.Generator().manual_seed(1),
        device="cpu",
        batch_size=32,
    )
    assert 0.0 <= accuracy <= 1.0


def test_training_is_deterministic(tiny_world: ProceduralGenerator) -> None:
    G = tiny_world
    a, b = tiny_classifier(), tiny_classifier()
    result_a = _train(G, a, steps=3, seed=5)
    result_b = _train(G, b, steps=3, seed=5)
    assert result_a.losses == result_b.losses
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    result_c = _train(G, tiny_classifier(), steps=3, seed=6)
    assert result_c.losses != result_a.losses


def test_shared_training_equals_separate(tiny_world: ProceduralGenerator) -> None:
    G = tiny_world
    shared = train_classifiers(
        {"pose": tiny_classifier(), "male": tiny_classifier(1)},
        G,
        steps=2,
        batch_size=8,
        lr=3e-3,
        truncation_psi=(0.8, 1.2),
        generator=torch.Generator().manual_seed(7),
        device="cpu",
    )
    assert list(shared) == ["pose", "male"]
    assert all(not result.classifier.training for result in shared.values())
    alone = train_classifier(
        tiny_classifier(),
        G,
        "pose",
        steps=2,
        batch_size=8,
        lr=3e-3,
        truncation_psi=(0.8, 1.2),
        generator=torch.Generator().manual_seed(7),
        device="cpu",
    )
    assert alone.losses == shared["pose"].losses
    for key, value in alone.classifier.state_dict().items():
        assert torch.equal(value, shared["pose"].classifier.state_dict()[key]), key


def test_training_rejects_unknown_attribute(tiny_world: ProceduralGenerator) -> None:
    with pytest.raises(ValueError, match="Unknown attribute"):
        train_classifier(
            tiny_classifier(),
            tiny_world,
            "bald",
            steps=1,
            batch_size=2,
            lr=1e-3,
            truncation_psi=1.0,
            generator=torch.Generator(),
            device="cpu",
        )


def test_graded_targets_are_the_sigmoid_of_the_true_logit(tiny_world: ProceduralGenerator) -> None:
    """With `label_sharpness = s` the first step's loss is the cross-entropy against sigmoid(s * logit)
    of the very faces drawn (same generator state), not against the hard labels."""
    sharpness = 3.0
    classifier = tiny_classifier(seed=5)
    reference = copy.deepcopy(classifier).train()
    gen = torch.Generator().manual_seed(11)
    result = train_classifier(
        classifier, tiny_world, "smiling", steps=1, batch_size=16, lr=1e-3, truncation_psi=(0.8, 1.2),
        generator=torch.Generator().manual_seed(11), device="cpu", label_sharpness=sharpness,
    )
    ws = sample_training_ws(tiny_world, n=16, truncation_psi=(0.8, 1.2), generator=gen, device="cpu")
    with torch.no_grad():
        logits = reference.logits(tiny_world.synthesis(ws))
        p = torch.sigmoid(sharpness * tiny_world.attribute_logits(ws)["smiling"])
        graded = F.cross_entropy(logits, torch.stack([1 - p, p], dim=1))
        hard = F.cross_entropy(logits, tiny_world.attribute_labels(ws)["smiling"].long())
    assert result.losses[0] == pytest.approx(float(graded), rel=1e-5)
    assert abs(float(graded) - float(hard)) > 1e-3
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="label_sharpness"):
            train_classifier(
                tiny_classifier(), tiny_world, "smiling", steps=1, batch_size=2, lr=1e-3, truncation_psi=1.0,
                generator=torch.Generator(), device="cpu", label_sharpness=bad,
            )


# ----------------------------------------------------------------------------
# InterfaceGAN.


def _separable(num: int, w_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    normal = unit(torch.randn(w_dim, generator=gen))
    w = torch.randn(num, w_dim, generator=gen)
    w = w[(w @ normal).abs() > 0.2]  # a margin, so the boundary is well defined
    return w, normal


def test_interfacegan_recovers_normal_towards_class_1() -> None:
    w, normal = _separable(3000, 32, seed=0)
    labels = w @ normal > 0
    direction = interfacegan_direction(w, labels, seed=0)
    assert direction.shape == (32,) and direction.dtype == torch.float32
    assert abs(float(direction.norm()) - 1) < 1e-5
    assert cosine(direction, normal) > 0.99

    # Swapping the classes flips the direction: it always points to class 1.
    flipped = interfacegan_direction(w, ~labels, seed=0)
    assert cosine(flipped, -normal) > 0.99

    # w+ codes (equal rows) give the same answer; 0/1 integer labels as bool ones.
    plus = interfacegan_direction(w.unsqueeze(1).expand(-1, 4, -1), labels.long(), seed=0)
    assert torch.allclose(plus, direction, atol=1e-5)
    assert torch.equal(interfacegan_direction(w, labels, seed=0), direction)


def test_interfacegan_needs_both_classes() -> None:
    w, _ = _separable(100, 8, seed=1)
    with pytest.raises(ValueError, match="both classes"):
        interfacegan_direction(w, torch.ones(len(w), dtype=torch.bool))
    with pytest.raises(ValueError, match="one label per latent"):
        interfacegan_direction(w, torch.ones(3, dtype=torch.bool))


# ----------------------------------------------------------------------------
# Averaged instance-specific direction.


class BrightnessGenerator(torch.nn.Module):
    """A flat image of brightness tanh(<w, u> + <w, v>^2 / 2), w the mean row: d(w) is along u + <w, v> v."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor, num_ws: int = 3, img_resolution: int = 4) -> None:
        super().__init__()
        self.u, self.v = u, v
        self.w_dim, self.num_ws, self.img_resolution = u.shape[0], num_ws, img_resolution

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random", **kwargs: Any) -> torch.Tensor:
        w = ws.mean(dim=1)  # [N, D]
        s = w @ self.u + 0.5 * (w @ self.v) ** 2
        return torch.tanh(s)[:, None, None, None].expand(-1, 1, self.img_resolution, self.img_resolution)


class BrightnessClassifier(torch.nn.Module):
    """Class-1 margin = 4 * mean brightness."""

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        margin = 4.0 * images.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(margin), margin], dim=1)


def brightness_world(seed: int) -> tuple[torch.Tensor, torch.Tensor, BrightnessGenerator, torch.Generator]:
    """Orthonormal u, v in 16 dimensions, the `BrightnessGenerator` on them, and the seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    u = unit(torch.randn(16, generator=gen, dtype=torch.float64))
    v = torch.randn(16, generator=gen, dtype=torch.float64)
    v = unit(v - (v @ u) * u)
    return u, v, BrightnessGenerator(u, v), gen


def test_averaged_direction_recovers_mean_gradient() -> None:
    u, v, G, gen = brightness_world(0)
    w = torch.randn(200, 16, generator=gen, dtype=torch.float64)
    w = torch.cat([w, -w])  # d(-w) mirrors d(w) about u, so the mean of the unit directions is along u
    calls: list[tuple[int, int]] = []
    direction = averaged_direction(
        G, BrightnessClassifier(), w, faces="all", batch_size=64, device="cpu",
        on_step=lambda i, n: calls.append((i, n)),
    )
    assert direction.shape == (16,) and direction.dtype == torch.float32
    assert abs(float(direction.norm()) - 1) < 1e-5
    assert cosine(direction, u) > 0.99
    assert calls == [(1, 7), (2, 7), (3, 7), (4, 7), (5, 7), (6, 7), (7, 7)]
    # Individual directions differ from u (the toy is not trivially linear).
    far = int((w @ v).abs().argmax())
    single = averaged_direction(G, BrightnessClassifier(), w[far : far + 1], faces="all", device="cpu")
    assert cosine(single, u) < 0.9
    # Batching does not change the answer.
    again = averaged_direction(
        G, BrightnessClassifier(), w.unsqueeze(1).expand(-1, 3, -1), faces="all", batch_size=400, device="cpu"
    )
    assert torch.allclose(direction, again, atol=1e-6)


def test_averaged_direction_over_class_1_faces_as_the_official_script() -> None:
    """The default averages over the faces of class 1 only (`train_attr_level_direction.py` skips the
    others), whatever the batching; with no face of class 1 there is no direction."""
    u, v, G, gen = brightness_world(1)
    w = torch.randn(120, 16, generator=gen, dtype=torch.float64)
    positive = (w @ u + 0.5 * (w @ v) ** 2) > 0  # Brightness > 0: class 1.
    assert 20 < int(positive.sum()) < 100
    official = torch.zeros(16, dtype=torch.float64)  # The official loop, one face at a time.
    for i in range(w.shape[0]):
        if positive[i]:
            official += averaged_direction(G, BrightnessClassifier(), w[i : i + 1], faces="all", device="cpu")
    official = unit(official)
    for batch_size in (7, 120):
        direction = averaged_direction(G, BrightnessClassifier(), w, batch_size=batch_size, device="cpu")
        assert cosine(direction, official) > 1 - 1e-6
    everyone = averaged_direction(G, BrightnessClassifier(), w, faces="all", device="cpu")
    assert cosine(everyone, official) < 0.999  # The subset matters here.
    with pytest.raises(ValueError, match="None of the 5 faces is of class 1"):
        averaged_direction(G, BrightnessClassifier(), -10 * u.expand(5, -1), device="cpu")
    with pytest.raises(ValueError, match="faces must be"):
        averaged_direction(G, BrightnessClassifier(), w, faces="negative", device="cpu")


# ----------------------------------------------------------------------------
# GANSpace.


def _anisotropic(num: int, w_dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents with principal axes `basis` (rows, by decreasing variance) and their coordinates."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(w_dim, w_dim, generator=gen, dtype=torch.float64))
    basis = basis.T  # rows orthonormal
    scales = 4.0 * 0.8 ** torch.arange(w_dim, dtype=torch.float64)  # well separated, so PCA finds the axes
    coords = torch.randn(num, w_dim, generator=gen, dtype=torch.float64) * scales  # [N, D]
    return coords @ basis + 0.7, basis, coords


def test_ganspace_picks_component_and_sign() -> None:
    w, basis, coords = _anisotropic(2000, 16, seed=0)
    gen = torch.Generator().manual_seed(1)
    noise = 0.3 * torch.randn(2000, generator=gen, dtype=torch.float64)
    scores = {
        "smiling": torch.sigmoid(-coords[:, 2] + noise),  # lowered by the third component
        "pose": torch.tanh(coords[:, 0] / 4) + noise,  # raised by the first
    }
    directions = ganspace_directions(w, scores, num_components=6)
    assert list(directions) == ["smiling", "pose"]
    assert cosine(directions["smiling"], -basis[2]) > 0.99
    assert cosine(directions["pose"], basis[0]) > 0.99
    for d in directions.values():
        assert d.dtype == torch.float32 and abs(float(d.norm()) - 1) < 1e-5
    # Deterministic, and w+ codes give the same.
    again = ganspace_directions(w.unsqueeze(1).expand(-1, 3, -1), scores, num_components=6)
    for name in scores:
        assert torch.allclose(directions[name], again[name], atol=1e-6)


def test_ganspace_duplicates() -> None:
    w, basis, coords = _anisotropic(2000, 12, seed=2)
    scores = {"young": coords[:, 1] + 0.5 * coords[:, 3], "male": coords[:, 1]}
    # Both attributes follow component 1; "male" more purely, so it keeps it when components are unique.
    unique = ganspace_directions(w, scores, num_components=5, unique=True)
    assert cosine(unique["male"], basis[1]) > 0.99
    assert cosine(unique["young"], basis[3]) > 0.99  # the next best for "young"
    shared = ganspace_directions(w, scores, num_components=5, unique=False)
    assert cosine(shared["young"], basis[1]) > 0.99 and cosine(shared["male"], basis[1]) > 0.99
    with pytest.raises(ValueError, match="num_components"):
        ganspace_directions(w, scores, num_components=1, unique=True)
    with pytest.raises(ValueError, match="constant"):
        ganspace_directions(w, {"young": torch.ones(2000)}, num_components=3)
