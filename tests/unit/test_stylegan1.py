"""Properties of the StyleGAN (v1) generator on tiny random networks (exactness: test_convert_ials.py)."""

from __future__ import annotations

import pytest
import torch

from models.networks.stylegan1 import Generator
from models.pack import generator_class


def make_generator(img_resolution: int = 16, **synthesis_kwargs) -> Generator:
    torch.manual_seed(0)
    G = Generator(
        z_dim=16, c_dim=0, w_dim=16, img_resolution=img_resolution, img_channels=3,
        mapping_kwargs={"num_layers": 2},
        synthesis_kwargs={"fmap_base": 64, "fmap_max": 16, **synthesis_kwargs},
    ).eval()  # fmt: skip
    with torch.no_grad():
        for name, tensor in G.named_parameters():
            if name.endswith("noise.weight"):
                tensor.normal_()
        G.mapping.w_avg.normal_()
    return G


def test_sizes_and_names() -> None:
    G = make_generator(32)
    assert (G.num_ws, G.w_dim, G.img_resolution, G.img_channels, G.c_dim) == (8, 16, 32, 3, 0)
    keys = set(G.state_dict())
    expected = [
        "mapping.dense0.weight",
        "mapping.w_avg",
        "synthesis.blocks.4x4.const",
        "synthesis.blocks.4x4.bias",
        "synthesis.blocks.4x4.epi1.top_epi.noise.weight",
        "synthesis.blocks.4x4.epi2.style_mod.lin.bias",
        "synthesis.blocks.32x32.conv0_up.intermediate.kernel",
        "synthesis.torgb.weight",
        "synthesis.blocks.8x8.epi1.top_epi.noise.noise_const",
    ]
    for key in expected:
        assert key in keys, key
    assert G.synthesis.blocks["32x32"].epi2.top_epi.noise.noise_const.shape == (32, 32)
    assert generator_class("stylegan1") is Generator
    rebuilt = Generator(**G.init_kwargs)
    rebuilt.load_state_dict(G.state_dict())
    ws = torch.randn([2, G.num_ws, G.w_dim])
    with torch.no_grad():
        assert torch.equal(
            rebuilt.eval().synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const")
        )


def test_noise_modes_and_ignored_kwargs() -> None:
    G = make_generator()
    ws = torch.randn([2, G.num_ws, G.w_dim])
    with torch.no_grad():
        const = G.synthesis(ws, noise_mode="const", fused_modconv=False, force_fp32=True)
        assert torch.equal(const, G.synthesis(ws, noise_mode="const"))
        assert not torch.allclose(const, G.synthesis(ws, noise_mode="none"))
        assert not torch.allclose(G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random"))
    assert const.shape == (2, 3, 16, 16) and torch.isfinite(const).all()


def test_truncation() -> None:
    G = make_generator()
    z = torch.randn([3, G.z_dim])
    with torch.no_grad():
        ws = G.mapping(z, None)
        assert torch.equal(ws[:, 0], ws[:, -1])
        half = G.mapping(z, torch.zeros([3, 0]), truncation_psi=0.5)
        assert torch.allclose(half, G.mapping.w_avg + 0.5 * (ws - G.mapping.w_avg), atol=1e-6)
        cut = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
        assert torch.equal(cut[:, :2], half[:, :2]) and torch.equal(cut[:, 2:], ws[:, 2:])


def test_latent_gradient_with_frozen_weights() -> None:
    G = make_generator().requires_grad_(False)
    ws = torch.randn([2, G.num_ws, G.w_dim], requires_grad=True)
    (grad,) = torch.autograd.grad(G.synthesis(ws, noise_mode="const").square().sum(), ws)
    assert grad.shape == ws.shape and grad.abs().sum(dim=2).gt(0).all()  # every row reaches the image


def test_labels_refused() -> None:
    with pytest.raises(ValueError, match="c_dim=2"):
        Generator(c_dim=2, img_resolution=8)
    with pytest.raises(ValueError, match="power of 2"):
        Generator(img_resolution=24)
