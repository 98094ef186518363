"""GAN inversion (models/inversion.py): batched optimisation, encoder training, perceptual distances."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from models.inversion import (
    ClassifierPerceptual,
    VGG16Perceptual,
    invert,
    invert_with_pack,
    load_vgg16_perceptual,
    psnr,
    sample_encoder_ws,
    train_encoder,
)
from models.networks.classifier import AttributeClassifier
from models.networks.encoder import LatentEncoder
from models.networks.procedural import ProceduralGenerator
from models.pack import load_pack
from models.sampling import sample_ws
from tests.packs import tiny_generator


@pytest.fixture(scope="module")
def world() -> ProceduralGenerator:
    """A 16 px procedural world (the demo pack's generator, small), differentiable in ws."""
    return ProceduralGenerator(z_dim=64, w_dim=64, img_resolution=16).eval().requires_grad_(False)


def classifiers(count: int, resolution: int = 16) -> list[AttributeClassifier]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return [
            AttributeClassifier("resnet18", width=8, input_resolution=resolution).eval().requires_grad_(False)
            for _ in range(count)
        ]


def faces(G: ProceduralGenerator, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    ws = sample_ws(G, seeds, truncation_psi=0.7, device="cpu")
    return ws, G.synthesis(ws, noise_mode="const")


# ----------------------------------------------------------------------------
# Optimisation.


def test_batch_inversion_reduces_the_loss_and_images_stay_independent(world: ProceduralGenerator) -> None:
    G = world
    _, images = faces(G, [1, 2, 3, 4])
    perceptual = ClassifierPerceptual(classifiers(1))
    steps: list[tuple[int, int]] = []
    result = invert(
        G, images, perceptual=perceptual, steps=25, lr=0.03, on_step=lambda i, n: steps.append((i, n)),
        device="cpu",
    )  # fmt: skip
    assert result.ws.shape == (4, G.num_ws, G.w_dim) and result.reconstruction.shape == images.shape
    assert result.steps_run == 25 and steps[-1] == (25, 25) and len(result.losses["total"]) == 25
    assert result.losses["total"][-1] < 0.3 * result.losses["total"][0]
    start_psnr = psnr(G.synthesis(G.w_avg.expand(4, G.num_ws, -1)), images)
    assert (result.psnr > start_psnr + 3).all() and (result.perceptual_distance >= 0).all()
    torch.testing.assert_close(result.psnr, psnr(G.synthesis(result.ws).clamp(-1, 1), images))

    # Each image follows the path it would follow alone.
    alone = invert(G, images[2:3], perceptual=perceptual, steps=25, lr=0.03, device="cpu")
    torch.testing.assert_close(alone.ws[0], result.ws[2], atol=1e-4, rtol=0)


def test_invert_from_start_codes_and_zero_steps(world: ProceduralGenerator) -> None:
    G = world
    ws, images = faces(G, [5, 6])
    result = invert(G, images, start_ws=ws[:, 0], steps=0, device="cpu")  # [N, w_dim] start
    assert result.steps_run == 0 and torch.equal(result.ws, ws)
    assert (result.psnr > 60).all() and result.perceptual_distance.isnan().all()
    with pytest.raises(ValueError, match="start_ws"):
        invert(G, images, start_ws=ws[:1], steps=1, device="cpu")


def test_early_stopping_ramps_down_and_ends(world: ProceduralGenerator) -> None:
    G = world
    ws, images = faces(G, [7])
    calls: list[tuple[int, int]] = []
    result = invert(
        G, images, start_ws=ws, steps=1000, lr=0.01, patience=5, lr_rampdown=0.01,
        on_step=lambda i, n: calls.append((i, n)), device="cpu",
    )  # fmt: skip
    # The start is exact, so the loss cannot improve: stop after `patience`, then 10 steps of ramp-down.
    assert result.steps_run == 16 and calls[-1] == (1000, 1000)
    assert torch.equal(result.ws, ws)  # The best code is the start.


def test_noise_maps_are_optimised_per_image_without_touching_the_generator() -> None:
    G = tiny_generator()
    for name, param in G.synthesis.named_parameters():
        if name.endswith("noise_strength"):
            param.fill_(0.5)  # Random-weight generators start with the noise switched off.
    before = {name: buf.clone() for name, buf in G.synthesis.named_buffers()}
    ws = sample_ws(G, [1, 2], truncation_psi=0.7, device="cpu")
    images = G.synthesis(ws, noise_mode="const")
    result = invert(G, images, steps=15, lr=0.01, optimize_noise=True, device="cpu")
    assert result.noise is not None and set(result.noise) == {n for n in before if n.endswith("noise_const")}
    for name, buf in result.noise.items():
        assert buf.shape == (2, 1, *before[name].shape)
        torch.testing.assert_close(buf.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    assert result.losses["noise"][0] > 0 and result.losses["total"][-1] < result.losses["total"][0]
    for name, buf in G.synthesis.named_buffers():
        assert torch.equal(buf, before[name])


def test_invert_with_pack_encoder_effort_is_the_encoder(tiny_pack_path: Path) -> None:
    pack = load_pack(tiny_pack_path, "cpu")
    assert pack.encoder is not None
    images = pack.generator.synthesis(sample_ws(pack.generator, [3], device="cpu"), noise_mode="const")
    result = invert_with_pack(pack, images, effort="encoder")
    assert result.steps_run == 0 and torch.equal(result.ws, pack.encoder(images))
    fast = invert_with_pack(pack, images, effort="fast")
    assert fast.steps_run > 0 and fast.losses["total"][-1] < fast.losses["total"][0]
    with pytest.raises(ValueError, match="effort"):
        invert_with_pack(pack, images, effort="ultra")


# ----------------------------------------------------------------------------
# Encoder.


def test_sample_encoder_ws_mixes_runs_of_rows(world: ProceduralGenerator) -> None:
    G = world
    plain = sample_encoder_ws(
        G, n=16, truncation_psi=0.5, mixing_prob=0.0, generator=torch.Generator().manual_seed(0), device="cpu"
    )
    assert plain.shape == (16, G.num_ws, G.w_dim) and (plain == plain[:, :1]).all()
    mixed = sample_encoder_ws(
        G, n=64, truncation_psi=0.5, mixing_prob=1.0, generator=torch.Generator().manual_seed(0), device="cpu"
    )
    changes = (mixed[:, 1:] != mixed[:, :-1]).any(dim=2).sum(dim=1)  # [N] row-to-row changes
    assert (changes >= 1).all() and (changes <= 2).all() and (changes == 2).any()


def test_train_encoder_reduces_the_latent_error() -> None:
    G = tiny_generator()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        encoder = LatentEncoder(G.img_resolution, G.num_ws, G.w_dim, width=8, hidden=64)
    held_out = sample_encoder_ws(
        G, n=64, truncation_psi=(0.5, 1.0), mixing_prob=0.5, generator=torch.Generator().manual_seed(99),
        device="cpu",
    )  # fmt: skip
    images = G.synthesis(held_out, noise_mode="const")

    def error() -> float:
        with torch.no_grad():
            return float((encoder(images) - held_out).square().mean())

    before = error()
    out = train_encoder(
        encoder, G, steps=60, batch_size=8, lr=1e-2, truncation_psi=(0.5, 1.0), pixel_weight=1.0,
        generator=torch.Generator().manual_seed(1), device="cpu",
    )  # fmt: skip
    assert out.encoder is encoder and not encoder.training
    assert torch.equal(encoder.w_avg, G.w_avg)
    assert len(out.losses["latent"]) == 60 and out.losses["pixel"][-1] > 0
    assert error() < 0.8 * before


# ----------------------------------------------------------------------------
# Perceptual distances.


def test_classifier_perceptual_features() -> None:
    nets = classifiers(2, resolution=32)
    perceptual = ClassifierPerceptual(nets)
    gen = torch.Generator().manual_seed(0)
    a = torch.rand((3, 3, 16, 16), generator=gen) * 2 - 1
    b = torch.rand((3, 3, 16, 16), generator=gen) * 2 - 1
    features = perceptual.features(a)
    assert len(features) == 8  # layer1..layer4 of two classifiers
    assert [f.shape[1] for f in features[:4]] == [8, 16, 32, 64]
    for f in features:
        torch.testing.assert_close(f.norm(dim=1), torch.ones_like(f[:, 0]), atol=1e-4, rtol=0)
    assert torch.equal(perceptual(a, a), torch.zeros(3))
    dist = perceptual(a, b)
    assert dist.shape == (3,) and (dist > 0).all()
    torch.testing.assert_close(dist, perceptual(b, a))
    # The average of the two classifiers' distances.
    one = [ClassifierPerceptual([net])(a, b) for net in nets]
    torch.testing.assert_close(dist, (one[0] + one[1]) / 2)
    # Gradients reach the images only.
    x = a.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(perceptual(x, b).sum(), [x])
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="layers"):
        ClassifierPerceptual(nets, layers=("layer5",))


def test_vgg16_loads_from_a_torchvision_state_dict(tmp_path: Path) -> None:
    with torch.device("meta"):
        shapes = {f"features.{k}": v.shape for k, v in VGG16Perceptual().features_net.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=gen) * 0.05 for key, shape in shapes.items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision's head: ignored
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)

    network = load_vgg16_perceptual(path)
    for key, value in network.features_net.state_dict().items():
        assert torch.equal(value, state[f"features.{key}"])
    assert not any(p.requires_grad for p in network.parameters())
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.rand((2, 3, 32, 32), generator=gen) * 2 - 1 for _ in range(2))
    assert len(network.features(a)) == 5
    assert torch.equal(network(a, a), torch.zeros(2)) and (network(a, b) > 0).all()

    # An open file works as well; bad files are refused with a ValueError.
    with open(path, "rb") as f:
        assert torch.equal(load_vgg16_perceptual(f)(a, b), network(a, b))
    torch.save({"features.0.weight": state["features.0.weight"]}, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"lacks .*features\.28\.bias"):
        load_vgg16_perceptual(tmp_path / "missing.pth")
    torch.save({key: torch.zeros(3) for key in shapes}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"features\.0\.weight: expected \(64, 3, 3, 3\)"):
        load_vgg16_perceptual(tmp_path / "shape.pth")
    buffer = io.BytesIO()
    torch.save({"features.0.weight": Path("x")}, buffer)  # Not loadable with weights_only=True.
    buffer.seek(0)
    with pytest.raises(ValueError, match="cannot read"):
        load_vgg16_perceptual(buffer)


def test_psnr() -> None:
    a = torch.zeros((2, 3, 4, 4))
    b = a.clone()
    b[1] += 0.2  # 0.1 in [0, 1]: mse 0.01, 20 dB
    torch.testing.assert_close(psnr(a, b)[1], torch.tensor(20.0))
    assert psnr(a, b)[0] > 100
