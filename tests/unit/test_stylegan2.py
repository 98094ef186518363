"""Properties of the StyleGAN2-ADA generator and its ops, on tiny random networks on CPU.

Exactness against NVIDIA's own code is measured separately (outside the repository); these tests pin the
structure (shapes, state_dict names, num_ws), the latent-space behaviour (truncation, w_avg, noise) and
the ops against hand computations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from models.networks.ops import (
    bias_act,
    modulated_conv2d,
    setup_filter,
    upfirdn2d,
    upsample2d,
)
from models.networks.stylegan2 import Generator, MappingNetwork, SynthesisBlock

ARCHITECTURES = ["orig", "skip", "resnet"]


def make_generator(
    img_resolution: int = 16,
    architecture: str = "skip",
    c_dim: int = 0,
    seed: int = 0,
    **synthesis_kwargs: Any,
) -> Generator:
    """A narrow generator in eval mode, with non-zero noise strengths, biases and w_avg."""
    torch.manual_seed(seed)
    G = Generator(
        z_dim=32,
        c_dim=c_dim,
        w_dim=32,
        img_resolution=img_resolution,
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        synthesis_kwargs={
            "channel_base": 256,
            "channel_max": 32,
            "architecture": architecture,
            **synthesis_kwargs,
        },
    ).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith("noise_strength") or name.endswith(".bias"):
                param.add_(0.5 * torch.randn(param.shape, generator=gen))
        G.mapping.w_avg.copy_(torch.randn(G.mapping.w_avg.shape, generator=gen))
    return G


def random_z(G: Generator, batch_size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn([batch_size, G.z_dim], generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """Run this module's tiny networks on one intra-op thread: faster, and robust to busy CPUs."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)


@pytest.fixture(scope="module")
def G16() -> Generator:
    return make_generator(16)


# ----------------------------------------------------------------------------
# Structure.


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("img_resolution", [8, 16, 32])
def test_output_shape_and_num_ws(img_resolution: int, architecture: str) -> None:
    G = make_generator(img_resolution, architecture)
    log2 = int(math.log2(img_resolution))
    assert G.num_ws == G.synthesis.num_ws == G.mapping.num_ws == 2 * log2 - 2
    assert (G.z_dim, G.c_dim, G.w_dim, G.img_resolution, G.img_channels) == (32, 0, 32, img_resolution, 3)
    z = random_z(G, 2)
    ws = G.mapping(z, None)
    assert ws.shape == (2, G.num_ws, G.w_dim)
    img = G.synthesis(ws, noise_mode="const")
    assert img.shape == (2, 3, img_resolution, img_resolution)
    assert img.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert torch.equal(G(z, None, noise_mode="const"), img)


# NVIDIA's state_dict for Generator(z_dim=5, c_dim=3, w_dim=6, img_resolution=8, img_channels=3,
# mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=32, channel_max=8,
# architecture='resnet')), in NVIDIA's order: 8 channels at 4 px, 4 channels at 8 px.
NVIDIA_KEYS_8PX_RESNET = [
    ("synthesis.b4.const", (8, 4, 4)),
    ("synthesis.b4.resample_filter", (4, 4)),
    ("synthesis.b4.conv1.weight", (8, 8, 3, 3)),
    ("synthesis.b4.conv1.noise_strength", ()),
    ("synthesis.b4.conv1.bias", (8,)),
    ("synthesis.b4.conv1.resample_filter", (4, 4)),
    ("synthesis.b4.conv1.noise_const", (4, 4)),
    ("synthesis.b4.conv1.affine.weight", (8, 6)),
    ("synthesis.b4.conv1.affine.bias", (8,)),
    ("synthesis.b8.resample_filter", (4, 4)),
    ("synthesis.b8.conv0.weight", (4, 8, 3, 3)),
    ("synthesis.b8.conv0.noise_strength", ()),
    ("synthesis.b8.conv0.bias", (4,)),
    ("synthesis.b8.conv0.resample_filter", (4, 4)),
    ("synthesis.b8.conv0.noise_const", (8, 8)),
    ("synthesis.b8.conv0.affine.weight", (8, 6)),
    ("synthesis.b8.conv0.affine.bias", (8,)),
    ("synthesis.b8.conv1.weight", (4, 4, 3, 3)),
    ("synthesis.b8.conv1.noise_strength", ()),
    ("synthesis.b8.conv1.bias", (4,)),
    ("synthesis.b8.conv1.resample_filter", (4, 4)),
    ("synthesis.b8.conv1.noise_const", (8, 8)),
    ("synthesis.b8.conv1.affine.weight", (4, 6)),
    ("synthesis.b8.conv1.affine.bias", (4,)),
    ("synthesis.b8.torgb.weight", (3, 4, 1, 1)),
    ("synthesis.b8.torgb.bias", (3,)),
    ("synthesis.b8.torgb.affine.weight", (4, 6)),
    ("synthesis.b8.torgb.affine.bias", (4,)),
    ("synthesis.b8.skip.weight", (4, 8, 1, 1)),
    ("synthesis.b8.skip.resample_filter", (4, 4)),
    ("mapping.w_avg", (6,)),
    ("mapping.embed.weight", (6, 3)),
    ("mapping.embed.bias", (6,)),
    ("mapping.fc0.weight", (6, 11)),
    ("mapping.fc0.bias", (6,)),
    ("mapping.fc1.weight", (6, 6)),
    ("mapping.fc1.bias", (6,)),
]


def test_state_dict_keys_match_nvidia() -> None:
    G = Generator(
        z_dim=5,
        c_dim=3,
        w_dim=6,
        img_resolution=8,
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        synthesis_kwargs={"channel_base": 32, "channel_max": 8, "architecture": "resnet"},
    )
    got = [(key, tuple(value.shape)) for key, value in G.state_dict().items()]
    assert got == NVIDIA_KEYS_8PX_RESNET
    assert G.num_ws == 4


def test_skip_architecture_has_torgb_per_block_and_no_skip_layer() -> None:
    keys = set(make_generator(16, "skip").state_dict())
    assert {"synthesis.b4.torgb.weight", "synthesis.b8.torgb.weight", "synthesis.b16.torgb.weight"} <= keys
    assert not any(".skip." in key for key in keys)
    orig_keys = set(make_generator(16, "orig").state_dict())
    assert "synthesis.b8.torgb.weight" not in orig_keys and "synthesis.b16.torgb.weight" in orig_keys


def test_rebuild_from_init_kwargs_reproduces_output(G16: Generator) -> None:
    kwargs = json.loads(json.dumps(G16.init_kwargs))
    G2 = Generator(**kwargs).eval()
    G2.load_state_dict(G16.state_dict(), strict=True)
    z = random_z(G16, 3)
    cases: list[dict[str, Any]] = [{"noise_mode": "const"}, {"noise_mode": "none", "truncation_psi": 0.5}]
    for kw in cases:
        assert torch.equal(G2(z, None, **kw), G16(z, None, **kw))
    assert G2.init_kwargs == kwargs


def test_init_kwargs_of_submodules_rebuild_them(G16: Generator) -> None:
    block = G16.synthesis.get_submodule("b8")
    assert isinstance(block, SynthesisBlock)
    for module in [G16.mapping, G16.synthesis, block, block.conv0]:
        rebuilt = type(module)(**json.loads(json.dumps(module.init_kwargs)))
        assert list(rebuilt.state_dict()) == list(module.state_dict())


def test_w_avg_property_is_read_only(G16: Generator) -> None:
    assert G16.w_avg is G16.mapping.w_avg
    with pytest.raises(AttributeError):
        G16.w_avg = torch.zeros(G16.w_dim)  # type: ignore[misc]


# ----------------------------------------------------------------------------
# Mapping: truncation, w_avg, conditioning.


def test_truncation(G16: Generator) -> None:
    z = random_z(G16, 4)
    ws = G16.mapping(z, None)
    assert torch.equal(G16.mapping(z, None, truncation_psi=1), ws)
    # Identity, checked against the truncation formula itself: psi = 0.5 is the midpoint of w_avg and w.
    torch.testing.assert_close(G16.mapping(z, None, truncation_psi=0.5) * 2 - G16.w_avg, ws)
    assert torch.equal(G16.mapping(z, None, truncation_psi=1, truncation_cutoff=2), ws)

    ws0 = G16.mapping(z, None, truncation_psi=0)
    assert torch.allclose(ws0, G16.w_avg.expand_as(ws0))

    psi, cutoff = 0.7, 2
    ws_all = G16.mapping(z, None, truncation_psi=psi)
    torch.testing.assert_close(ws_all, G16.w_avg + psi * (ws - G16.w_avg))
    ws_cut = G16.mapping(z, None, truncation_psi=psi, truncation_cutoff=cutoff)
    assert torch.equal(ws_cut[:, :cutoff], ws_all[:, :cutoff])
    assert torch.equal(ws_cut[:, cutoff:], ws[:, cutoff:])


def test_w_avg_updates_only_in_train_mode() -> None:
    G = make_generator(8)
    z = random_z(G, 5)
    before = G.w_avg.clone()
    G.mapping(z, None)
    assert torch.equal(G.w_avg, before)

    G.train()
    G.mapping(z, None, skip_w_avg_update=True)
    assert torch.equal(G.w_avg, before)
    ws = G.mapping(z, None)
    beta = G.mapping.w_avg_beta
    assert beta is not None
    torch.testing.assert_close(G.w_avg, beta * before + (1 - beta) * ws[:, 0].mean(dim=0))


def test_mapping_without_broadcast_and_without_tracking() -> None:
    mapping = MappingNetwork(z_dim=8, c_dim=0, w_dim=6, num_ws=None, num_layers=2, w_avg_beta=None)
    assert "w_avg" not in mapping.state_dict()
    assert mapping(torch.randn(3, 8), None).shape == (3, 6)


def test_label_conditioning_changes_ws() -> None:
    G = make_generator(8, c_dim=4)
    assert "mapping.embed.weight" in G.state_dict()
    z = random_z(G, 2)
    c0 = torch.nn.functional.one_hot(torch.tensor([0, 1]), 4).float()
    c1 = torch.nn.functional.one_hot(torch.tensor([2, 3]), 4).float()
    assert not torch.allclose(G.mapping(z, c0), G.mapping(z, c1))
    assert G(z, c0, noise_mode="const").shape == (2, 3, 8, 8)


# ----------------------------------------------------------------------------
# Synthesis: noise, precision, gradients.


def test_noise_modes(G16: Generator) -> None:
    ws = G16.mapping(random_z(G16, 2), None)
    const_a = G16.synthesis(ws, noise_mode="const")
    const_b = G16.synthesis(ws, noise_mode="const")
    assert torch.equal(const_a, const_b)
    assert not torch.allclose(G16.synthesis(ws, noise_mode="random"), G16.synthesis(ws, noise_mode="random"))
    none_a = G16.synthesis(ws, noise_mode="none")
    assert torch.equal(none_a, G16.synthesis(ws, noise_mode="none"))
    assert not torch.allclose(none_a, const_a)


def test_noise_has_no_effect_with_zero_strength() -> None:
    G = make_generator(8)
    with torch.no_grad():
        for name, param in G.named_parameters():
            if name.endswith("noise_strength"):
                param.zero_()
    ws = G.mapping(random_z(G, 2), None)
    assert torch.equal(G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="none"))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_fused_and_non_fused_modconv_agree(architecture: str) -> None:
    G = make_generator(16, architecture)
    ws = G.mapping(random_z(G, 3), None)
    fused = G.synthesis(ws, noise_mode="const", fused_modconv=True)
    torch.testing.assert_close(G.synthesis(ws, noise_mode="const", fused_modconv=False), fused)


def test_fp16_blocks_run_in_float32_on_cpu() -> None:
    G = make_generator(16, num_fp16_res=2, conv_clamp=256)
    blocks = [G.synthesis.get_submodule(f"b{res}") for res in G.synthesis.block_resolutions]
    assert [block.use_fp16 for block in blocks if isinstance(block, SynthesisBlock)] == [False, True, True]
    ws = G.mapping(random_z(G, 2), None)
    img = G.synthesis(ws, noise_mode="const")
    assert img.dtype == torch.float32
    assert torch.equal(img, G.synthesis(ws, noise_mode="const", force_fp32=True))


@pytest.mark.parametrize("fused_modconv", [True, False])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_gradients_flow_to_ws_with_frozen_weights(architecture: str, fused_modconv: bool) -> None:
    G = make_generator(16, architecture, conv_clamp=256).requires_grad_(False)
    ws = (
        G.mapping(random_z(G, 2), None, truncation_psi=0.7, truncation_cutoff=3).detach().requires_grad_(True)
    )
    img = G.synthesis(ws, noise_mode="const", fused_modconv=fused_modconv)
    (grad,) = torch.autograd.grad(img.square().mean(), ws)
    assert grad.shape == ws.shape
    assert torch.isfinite(grad).all()
    assert (grad.abs().sum(dim=(0, 2)) > 0).all()  # every layer's w matters
    assert all(param.grad is None for param in G.parameters())


def test_gradients_flow_to_z_through_truncation_cutoff(G16: Generator) -> None:
    z = random_z(G16, 2).requires_grad_(True)
    ws = G16.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
    (grad,) = torch.autograd.grad(ws.sum(), z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ----------------------------------------------------------------------------
# Ops against hand computations.


def upfirdn_numpy(
    x: np.ndarray, f: np.ndarray, up: int, down: int, pad: tuple[int, int, int, int]
) -> np.ndarray:
    """Direct loop: insert zeros, pad (x0, x1, y0, y1), convolve ('valid', flipped filter), subsample."""
    height, width = x.shape
    u = np.zeros((height * up, width * up))
    u[::up, ::up] = x
    u = np.pad(u, ((pad[2], pad[3]), (pad[0], pad[1])))
    fh, fw = f.shape
    out = np.zeros((u.shape[0] - fh + 1, u.shape[1] - fw + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for a in range(fh):
                for b in range(fw):
                    out[i, j] += u[i + a, j + b] * f[fh - 1 - a, fw - 1 - b]
    return out[::down, ::down]


def test_upsample2d_matches_numpy_loop() -> None:
    x = np.random.RandomState(0).randn(2, 3, 3, 4)
    taps = np.array([1.0, 3.0, 3.0, 1.0])
    f = np.outer(taps, taps) / 64 * 4  # normalised, times the up**2 gain of upsampling
    got = upsample2d(torch.tensor(x), setup_filter([1, 3, 3, 1]))
    assert got.shape == (2, 3, 6, 8)
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(
                got[n, c].numpy(), upfirdn_numpy(x[n, c], f, 2, 1, (2, 1, 2, 1)), atol=1e-12
            )


@pytest.mark.parametrize("flip_filter", [False, True])
def test_upfirdn2d_asymmetric_filter_matches_numpy_loop(flip_filter: bool) -> None:
    x = np.random.RandomState(1).randn(1, 1, 5, 4)
    f = np.array([[1.0, 2.0, 0.0], [3.0, 4.0, -1.0]])
    pad = (1, 2, 2, 0)
    f_eff = (f[::-1, ::-1] if flip_filter else f) * 1.5  # correlation = convolution with the flipped filter
    got = upfirdn2d(
        torch.tensor(x),
        setup_filter(f, normalize=False),
        up=2,
        down=3,
        padding=list(pad),
        flip_filter=flip_filter,
        gain=1.5,
    )
    np.testing.assert_allclose(got[0, 0].numpy(), upfirdn_numpy(x[0, 0], f_eff, 2, 3, pad), atol=1e-12)


def test_upfirdn2d_negative_padding_crops() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    got = upfirdn2d(x, None, padding=[-1, 0, 0, -2])
    assert torch.equal(got, x[:, :, :2, 1:])


def test_setup_filter() -> None:
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = setup_filter(taps)
    assert torch.equal(taps, torch.tensor([1.0, 3.0, 3.0, 1.0]))  # the input is not modified
    torch.testing.assert_close(f, torch.outer(taps, taps) / 64)
    assert setup_filter([1.0] * 8).shape == (8,)  # long 1D filters stay separable
    torch.testing.assert_close(
        setup_filter([1, 2], gain=4, normalize=False), torch.tensor([[4.0, 8], [8, 16]])
    )


def test_bias_act_gain_and_clamp() -> None:
    x = torch.tensor([[-2.0, -0.5, 0.5, 2.0]]).T.reshape(1, 4, 1)  # [N, C, L]
    b = torch.tensor([0.0, 0.0, 0.0, 1.0])
    expected = torch.tensor([-0.4, -0.1, 0.5, 3.0]).reshape(1, 4, 1) * math.sqrt(2)  # lrelu(0.2) * sqrt(2)
    torch.testing.assert_close(bias_act(x, b, act="lrelu"), expected)
    torch.testing.assert_close(bias_act(x, b, act="lrelu", gain=1), expected / math.sqrt(2))
    torch.testing.assert_close(bias_act(x, b, act="lrelu", clamp=0.5), expected.clamp(-0.5, 0.5))
    torch.testing.assert_close(
        bias_act(x, b, act="relu", alpha=0.3, gain=2.0), 2 * torch.relu(x + b[:, None])
    )
    torch.testing.assert_close(bias_act(x, act="linear", clamp=1.0), x.clamp(-1, 1))
    torch.testing.assert_close(bias_act(x, act="swish"), torch.sigmoid(x) * x * math.sqrt(2))


def test_modulated_conv2d_equals_per_sample_conv() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([2, 3, 5, 5], generator=gen, dtype=torch.float64)
    weight = torch.randn([4, 3, 3, 3], generator=gen, dtype=torch.float64)
    styles = torch.randn([2, 3], generator=gen, dtype=torch.float64)
    for demodulate in [True, False]:
        expected = []
        for n in range(2):
            w = weight * styles[n].reshape(1, 3, 1, 1)
            if demodulate:
                w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
            expected.append(torch.nn.functional.conv2d(x[n : n + 1], w, padding=1))
        for fused in [True, False]:
            got = modulated_conv2d(x, weight, styles, padding=1, demodulate=demodulate, fused_modconv=fused)
            torch.testing.assert_close(got, torch.cat(expected))
