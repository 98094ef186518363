"""ProceduralGenerator: the StyleGAN interface, ground truth, row roles and the calibrated biases."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from models.networks.procedural import (
    ATTRIBUTES,
    BIAS_TABLE,
    FACTORS,
    NOISE_MODES,
    ProceduralGenerator,
    bias_table,
    row_groups,
)


@pytest.fixture(scope="module")
def G() -> ProceduralGenerator:
    return ProceduralGenerator(img_resolution=32).eval().requires_grad_(False)


def sample(G: ProceduralGenerator, n: int, seed: int = 0, psi: float = 1.0) -> torch.Tensor:
    z = torch.randn([n, G.z_dim], generator=torch.Generator().manual_seed(seed))
    ws: torch.Tensor = G.mapping(z, None, truncation_psi=psi)
    return ws


def replace_rows(ws: torch.Tensor, rows: list[int], seed: int) -> torch.Tensor:
    """`ws` with the given rows replaced by fresh random latents (one per sample, shared by the rows)."""
    fresh = torch.randn([ws.shape[0], 1, ws.shape[2]], generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros([1, ws.shape[1], 1], dtype=torch.bool)
    mask[:, rows] = True
    return torch.where(mask, fresh.expand_as(ws), ws)


@pytest.mark.parametrize(("resolution", "num_ws"), [(32, 8), (64, 10)])
def test_shapes_and_range(resolution: int, num_ws: int) -> None:
    G = ProceduralGenerator(img_resolution=resolution)
    assert (G.num_ws, G.w_dim, G.z_dim, G.c_dim, G.img_channels) == (num_ws, 512, 512, 0, 3)
    assert G.img_resolution == resolution
    z = torch.randn([3, 512], generator=torch.Generator().manual_seed(0))
    ws = G.mapping(z, None)
    assert ws.shape == (3, num_ws, 512)
    with torch.no_grad():
        img = G(z, None, truncation_psi=0.7, noise_mode="const")
    assert img.shape == (3, 3, resolution, resolution) and img.dtype == torch.float32
    assert img.min() >= -1 and img.max() <= 1
    assert G.w_avg.shape == (512,)
    assert G.mapping.w_avg is G.w_avg


def test_invalid_configurations() -> None:
    with pytest.raises(ValueError, match="c_dim"):
        ProceduralGenerator(c_dim=3)
    with pytest.raises(ValueError, match="z_dim == w_dim"):
        ProceduralGenerator(z_dim=256)
    with pytest.raises(ValueError, match="power of two"):
        ProceduralGenerator(img_resolution=48)
    with pytest.raises(ValueError, match="w_dim"):
        ProceduralGenerator(z_dim=16, w_dim=16)


def test_determinism_and_seed() -> None:
    a = ProceduralGenerator(img_resolution=32, seed=3)
    b = ProceduralGenerator(img_resolution=32, seed=3)
    c = ProceduralGenerator(img_resolution=32, seed=4)
    ws = sample(a, 4)
    with torch.no_grad():
        assert torch.equal(a.synthesis(ws), a.synthesis(ws))
        assert torch.equal(a.synthesis(ws), b.synthesis(ws))
        assert not torch.equal(a.synthesis(ws), c.synthesis(ws))
    assert torch.equal(a.synthesis.directions, b.synthesis.directions)
    directions = a.synthesis.directions
    gram = directions @ directions.T
    assert torch.allclose(gram, torch.eye(len(FACTORS)), atol=1e-5)


def test_noise_modes_render_the_same(G: ProceduralGenerator) -> None:
    ws = sample(G, 2)
    with torch.no_grad():
        images = [G.synthesis(ws, noise_mode=mode, force_fp32=True) for mode in NOISE_MODES]
    for img in images[1:]:
        assert torch.equal(img, images[0])


def test_truncation(G: ProceduralGenerator) -> None:
    z = torch.randn([4, G.z_dim], generator=torch.Generator().manual_seed(1))
    ws = G.mapping(z, None, truncation_psi=1)
    assert torch.equal(ws, z.unsqueeze(1).expand(-1, G.num_ws, -1))
    half = G.mapping(z, torch.zeros([4, 0]), truncation_psi=0.5)
    assert torch.allclose(half, G.w_avg.lerp(ws, 0.5))
    cut = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=3)
    assert torch.allclose(cut[:, :3], half[:, :3]) and torch.equal(cut[:, 3:], ws[:, 3:])
    assert torch.equal(G(z, None), G.synthesis(ws))


def test_gradients_finite_and_informative(G: ProceduralGenerator) -> None:
    ws = sample(G, 16, seed=2).requires_grad_(True)
    (grad,) = torch.autograd.grad(G.synthesis(ws).square().mean(), ws)
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).norm(dim=1) > 0).all()

    # Every attribute's ground-truth gradient moves the picture of every face.
    logits = G.attribute_logits(ws)
    with torch.no_grad():
        base = G.synthesis(ws)
    for name in ATTRIBUTES:
        (g,) = torch.autograd.grad(logits[name].sum(), ws, retain_graph=True)
        assert torch.isfinite(g).all()
        direction = g.sum(1, keepdim=True)
        direction = direction / direction.norm(dim=2, keepdim=True)
        with torch.no_grad():
            moved = G.synthesis(ws + 0.1 * direction)
        change = (moved - base).abs().amax(dim=(1, 2, 3))
        assert (change > 1e-3).all(), name


def test_state_dict_round_trip(G: ProceduralGenerator) -> None:
    state = G.state_dict()
    keys = ["mapping.w_avg", "synthesis.directions", "synthesis.attribute_mixing", "synthesis.attribute_bias",
            "synthesis.coupling_gain", "synthesis.palette_skin"]
    for key in keys:
        assert key in state
    assert "synthesis.row_weights" not in state  # Derived from num_ws, not stored.
    assert json.loads(json.dumps(G.init_kwargs)) == G.init_kwargs
    other = type(G)(**{**G.init_kwargs, "seed": 99})
    other.load_state_dict(state)
    ws = sample(G, 4, seed=5)
    with torch.no_grad():
        assert torch.equal(other.synthesis(ws), G.synthesis(ws))
    for name, logit in other.attribute_logits(ws).items():
        assert torch.equal(logit, G.attribute_logits(ws)[name])


def test_labels_are_functions_of_ws(G: ProceduralGenerator) -> None:
    ws = sample(G, 8, seed=6)
    labels = G.attribute_labels(ws)
    logits = G.attribute_logits(ws)
    assert list(labels) == list(ATTRIBUTES)
    for name in ATTRIBUTES:
        assert labels[name].dtype == torch.bool and labels[name].shape == (8,)
        assert torch.equal(labels[name], logits[name] > 0)
        assert torch.equal(labels[name], G.attribute_labels(ws.clone())[name])
        single = torch.cat([G.attribute_labels(ws[i : i + 1])[name] for i in range(8)])
        assert torch.equal(single, labels[name])


def test_face_parameters_in_range(G: ProceduralGenerator) -> None:
    ws = sample(G, 64, seed=7) * 3  # Far outside the training-like range.
    params = G.face_parameters(ws)
    for name, value in params.items():
        assert value.shape == (64,) and torch.isfinite(value).all(), name
        low, high = {"smile": (-1, 1), "parting": (-1, 1), "yaw": (-0.6, 0.6)}.get(name, (0, 1))
        assert value.min() >= low and value.max() <= high, name
    with torch.no_grad():
        assert torch.isfinite(G.synthesis(ws)).all()


def test_row_roles(G: ProceduralGenerator) -> None:
    groups = row_groups(G.num_ws)
    assert sorted(groups["coarse"] + groups["middle"] + groups["fine"]) == list(range(G.num_ws))
    ws = sample(G, 32, seed=8)
    logits = G.attribute_logits(ws)
    with torch.no_grad():
        base = G.synthesis(ws)

    # Fine rows: colours change, no attribute does.
    fine = replace_rows(ws, groups["fine"], seed=9)
    with torch.no_grad():
        assert (G.synthesis(fine) - base).abs().amax(dim=(1, 2, 3)).min() > 0.02
    for name, logit in G.attribute_logits(fine).items():
        assert torch.equal(logit, logits[name]), name

    # Coarse rows: the pose changes; smiling, age and eyeglasses do not.
    coarse = replace_rows(ws, groups["coarse"], seed=10)
    coarse_logits = G.attribute_logits(coarse)
    assert (coarse_logits["pose"] - logits["pose"]).abs().min() > 0
    assert (G.attribute_labels(coarse)["pose"] != (logits["pose"] > 0)).any()
    for name in ("smiling", "young", "eyeglasses"):
        assert torch.equal(coarse_logits[name], logits[name]), name


def test_bias_table_is_json_and_matches_the_world(G: ProceduralGenerator) -> None:
    table = bias_table()
    assert json.loads(json.dumps(table)) == table
    assert set(table["frequencies"]) == set(ATTRIBUTES)
    world = G.describe_world()
    assert json.loads(json.dumps(world)) == world
    assert world["row_groups"] == row_groups(G.num_ws)

    # Factors are N(0, 1) at psi = 1, so the label statistics can be sampled without rendering.
    factors = torch.randn([50000, len(FACTORS)], generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        labels = (G.synthesis.logits_from_factors(factors) > 0).double().numpy()
    freq = labels.mean(0)
    phi = np.corrcoef(labels.T)
    for i, name in enumerate(ATTRIBUTES):
        assert abs(freq[i] - BIAS_TABLE["frequencies"][name]) < 0.015, name
    for a, b in itertools.combinations(ATTRIBUTES, 2):
        target = BIAS_TABLE["phi"].get(f"{a}|{b}", 0.0)
        assert abs(phi[ATTRIBUTES.index(a), ATTRIBUTES.index(b)] - target) < 0.025, (a, b)


SCALES = (1.8, 1.65, 1.5, 1.35, 1.2)


def test_stretched_w_draws_the_same_faces() -> None:
    """`attribute_scales` stretches W along the attribute axes and the synthesis undoes it: the same z
    gives other latents but the same faces and truths, and the state dict does not change."""
    plain = ProceduralGenerator(z_dim=64, w_dim=64, img_resolution=32).eval()
    stretched = ProceduralGenerator(z_dim=64, w_dim=64, img_resolution=32, attribute_scales=SCALES).eval()
    z = torch.randn([6, 64], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ws_plain = plain.mapping(z, truncation_psi=0.7)
        ws_stretched = stretched.mapping(z, truncation_psi=0.7)
        assert (ws_plain - ws_stretched).abs().max() > 0.1
        assert torch.allclose(plain.synthesis(ws_plain), stretched.synthesis(ws_stretched), atol=1e-5)
        for name, logit in plain.attribute_logits(ws_plain).items():
            assert torch.allclose(logit, stretched.attribute_logits(ws_stretched)[name], atol=1e-5)
        assert torch.equal(plain.mapping(z)[:, 0], z)  # Without scales W is Z.
    assert plain.state_dict().keys() == stretched.state_dict().keys()
    assert all(torch.equal(v, stretched.state_dict()[k]) for k, v in plain.state_dict().items())
    with pytest.raises(ValueError, match="attribute_scales"):
        ProceduralGenerator(z_dim=64, w_dim=64, img_resolution=32, attribute_scales=(1.0, 2.0))
    with pytest.raises(ValueError, match="attribute_scales"):
        ProceduralGenerator(z_dim=64, w_dim=64, img_resolution=32, attribute_scales=(1, 1, 1, 1, 0))


def test_principal_components_of_stretched_w_are_the_attribute_axes() -> None:
    """What GANSpace needs: with distinct scales, the top principal components of sampled w are the
    attribute axes, in the order of their scales; each axis is an attribute's true direction in W."""
    G = ProceduralGenerator(z_dim=64, w_dim=64, img_resolution=32, attribute_scales=SCALES).eval()
    z = torch.randn([20_000, 64], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w = G.mapping(z.float())[:, 0].double()
    _, _, v = torch.linalg.svd(w - w.mean(0), full_matrices=False)
    axes = G.synthesis.attribute_axes.double()
    for i in range(len(ATTRIBUTES)):
        assert abs(float(v[i] @ axes[i])) > 0.97, i
    # The true logit of an attribute without mixing terms grows along its axis.
    ws = G.mapping(z[:8].float())
    offset = torch.zeros([8, 64], requires_grad=True)
    (grad,) = torch.autograd.grad(G.attribute_logits(ws + offset.unsqueeze(1))["pose"].sum(), offset)
    pose_axis = axes[ATTRIBUTES.index("pose")].float()
    assert float(torch.nn.functional.normalize(grad, dim=1).mean(0) @ pose_axis) > 0.5
