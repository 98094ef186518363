"""rosinality stylegan2-pytorch checkpoints: names, and the math against a re-statement of its forward."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.convert.common import ConvertError
from models.convert.rosinality import load_rosinality
from models.networks.stylegan2 import Generator
from tests.convert_fixtures import rosinality_state_dict, write_rosinality

STYLE_DIM = 32
N_MLP = 3
CHANNELS = {4: 16, 8: 16, 16: 8, 32: 4}


def channels_for(size: int) -> dict[int, int]:
    return {res: ch for res, ch in CHANNELS.items() if res <= size}


# ----------------------------------------------------------------------------
# rosinality's forward, re-stated from model.py and op/upfirdn2d.py (native path), fused modconv.


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
):
    """Zero-insertion upsampling, padding (pad0, pad1) on both axes, true convolution, decimation."""
    n, c, h, w = x.shape
    if up > 1:
        y = x.new_zeros([n, c, h * up, w * up])
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    k = kernel.flip([0, 1])[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, k, groups=c)[:, :, ::down, ::down]


def equal_linear(x, weight, bias, lr_mul=1.0, activate=False):
    out = F.linear(x, weight * (lr_mul / math.sqrt(weight.shape[1])))
    if activate:
        return F.leaky_relu(out + bias * lr_mul, 0.2) * math.sqrt(2)
    return out + bias * lr_mul


def modulated_conv(x, style, sd, name, *, demodulate=True, upsample=False):
    batch, in_ch, h, w = x.shape
    weight = sd[f"{name}.conv.weight"]  # [1, O, I, k, k]
    out_ch, k = weight.shape[1], weight.shape[-1]
    s = equal_linear(style, sd[f"{name}.conv.modulation.weight"], sd[f"{name}.conv.modulation.bias"])
    weight = weight / math.sqrt(in_ch * k * k) * s.view(batch, 1, in_ch, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(batch, out_ch, 1, 1, 1)
    x = x.reshape(1, batch * in_ch, h, w)
    if upsample:
        weight = weight.transpose(1, 2).reshape(batch * in_ch, out_ch, k, k)
        out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
        out = out.view(batch, out_ch, *out.shape[2:])
        return upfirdn2d(out, sd[f"{name}.conv.blur.kernel"], pad=(1, 1))
    out = F.conv2d(x, weight.reshape(batch * out_ch, in_ch, k, k), padding=k // 2, groups=batch)
    return out.view(batch, out_ch, *out.shape[2:])


def styled_conv(x, style, noise, sd, name, upsample=False):
    out = modulated_conv(x, style, sd, name, upsample=upsample)
    out = out + sd[f"{name}.noise.weight"] * noise
    return F.leaky_relu(out + sd[f"{name}.activate.bias"].view(1, -1, 1, 1), 0.2) * math.sqrt(2)


def to_rgb(x, style, skip, sd, name):
    out = modulated_conv(x, style, sd, name, demodulate=False) + sd[f"{name}.bias"]
    if skip is not None:
        out = out + upfirdn2d(skip, sd[f"{name}.upsample.kernel"], up=2, pad=(2, 1))
    return out


def rosinality_mapping(z, sd, n_mlp=N_MLP):
    x = z * torch.rsqrt(torch.mean(z**2, dim=1, keepdim=True) + 1e-8)
    for i in range(1, n_mlp + 1):
        x = equal_linear(x, sd[f"style.{i}.weight"], sd[f"style.{i}.bias"], lr_mul=0.01, activate=True)
    return x


def rosinality_synthesis(latent, sd):
    """`Generator.forward(latent, input_is_latent=True, randomize_noise=False)`, latent [N, n_latent, D]."""
    num_layers = sum(1 for key in sd if key.startswith("noises."))
    noise = [sd[f"noises.noise_{i}"] for i in range(num_layers)]
    out = sd["input.input"].repeat(latent.shape[0], 1, 1, 1)
    out = styled_conv(out, latent[:, 0], noise[0], sd, "conv1")
    skip = to_rgb(out, latent[:, 1], None, sd, "to_rgb1")
    i = 1
    for j in range((num_layers - 1) // 2):
        out = styled_conv(out, latent[:, i], noise[2 * j + 1], sd, f"convs.{2 * j}", upsample=True)
        out = styled_conv(out, latent[:, i + 1], noise[2 * j + 2], sd, f"convs.{2 * j + 1}")
        skip = to_rgb(out, latent[:, i + 2], skip, sd, f"to_rgbs.{j}")
        i += 2
    return skip


# ----------------------------------------------------------------------------


def convert(path: Path) -> Generator:
    with open(path, "rb") as f:
        return load_rosinality(f, w_avg_samples=256).generator


@pytest.fixture(scope="module")
def converted(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, Generator]:
    state = rosinality_state_dict(32, STYLE_DIM, N_MLP, channels_for(32), seed=1)
    latent_avg = torch.randn(STYLE_DIM)
    path = write_rosinality(tmp_path_factory.mktemp("ros") / "ckpt.pt", state, latent_avg=latent_avg)
    return state, latent_avg, convert(path)


def expected_landing(sd: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """Where each rosinality tensor belongs in NVIDIA's names."""
    out = {
        f"mapping.fc{i - 1}.{p}": sd[f"style.{i}.{p}"]
        for i in range(1, N_MLP + 1)
        for p in ("weight", "bias")
    }
    out["synthesis.b4.const"] = sd["input.input"][0]

    def layer(ours: str, theirs: str) -> None:
        out[f"{ours}.weight"] = sd[f"{theirs}.conv.weight"][0]
        out[f"{ours}.affine.weight"] = sd[f"{theirs}.conv.modulation.weight"]
        out[f"{ours}.affine.bias"] = sd[f"{theirs}.conv.modulation.bias"]
        if not ours.endswith("torgb"):
            out[f"{ours}.noise_strength"] = sd[f"{theirs}.noise.weight"][0]
            out[f"{ours}.bias"] = sd[f"{theirs}.activate.bias"]
        else:
            out[f"{ours}.bias"] = sd[f"{theirs}.bias"].flatten()

    layer("synthesis.b4.conv1", "conv1")
    layer("synthesis.b4.torgb", "to_rgb1")
    out["synthesis.b4.conv1.noise_const"] = sd["noises.noise_0"][0, 0]
    for j, res in enumerate(2**i for i in range(3, int(math.log2(size)) + 1)):
        layer(f"synthesis.b{res}.conv0", f"convs.{2 * j}")
        layer(f"synthesis.b{res}.conv1", f"convs.{2 * j + 1}")
        layer(f"synthesis.b{res}.torgb", f"to_rgbs.{j}")
        out[f"synthesis.b{res}.conv0.noise_const"] = sd[f"noises.noise_{2 * j + 1}"][0, 0]
        out[f"synthesis.b{res}.conv1.noise_const"] = sd[f"noises.noise_{2 * j + 2}"][0, 0]
    return out


def check_landing(G: Generator, sd: dict[str, torch.Tensor], size: int) -> None:
    own = G.state_dict()
    for key, value in expected_landing(sd, size).items():
        assert torch.equal(own[key], value), key


def test_every_tensor_lands_where_it_belongs(converted) -> None:
    state, latent_avg, G = converted
    check_landing(G, state, 32)
    assert torch.equal(G.mapping.w_avg, latent_avg)
    assert G.init_kwargs["synthesis_kwargs"] == {
        "channel_base": 128,
        "channel_max": 16,
        "architecture": "skip",
    }
    assert (G.img_resolution, G.num_ws, G.w_dim) == (32, 8, STYLE_DIM)


def test_swapped_tensors_are_caught(converted, tmp_path: Path) -> None:
    state, latent_avg, _ = converted
    swapped = dict(state)
    swapped["style.1.weight"], swapped["style.2.weight"] = state["style.2.weight"], state["style.1.weight"]
    G = convert(write_rosinality(tmp_path / "swapped.pt", swapped, latent_avg=latent_avg))
    with pytest.raises(AssertionError, match="mapping.fc0.weight"):
        check_landing(G, state, 32)
    # Two names of different shapes swapped: the converter itself refuses.
    swapped = dict(state)
    swapped["convs.2.conv.weight"], swapped["convs.3.conv.weight"] = (
        state["convs.3.conv.weight"],
        state["convs.2.conv.weight"],
    )
    with pytest.raises(ConvertError, match="convs.2.conv.weight"):
        convert(write_rosinality(tmp_path / "swapped2.pt", swapped, latent_avg=latent_avg))


@pytest.mark.parametrize("size", [16, 32])
def test_images_equal_rosinality_forward(size: int, tmp_path: Path) -> None:
    state = rosinality_state_dict(size, STYLE_DIM, N_MLP, channels_for(size), seed=size)
    G = convert(write_rosinality(tmp_path / "ckpt.pt", state, latent_avg=torch.zeros(STYLE_DIM)))
    gen = torch.Generator().manual_seed(3)
    z = torch.randn([2, STYLE_DIM], generator=gen)
    with torch.no_grad():
        assert (G.mapping(z, None)[:, 0] - rosinality_mapping(z, state)).abs().max() < 1e-4
        ws = torch.randn([2, G.num_ws, STYLE_DIM], generator=gen)  # a different w per layer
        ours = G.synthesis(ws, noise_mode="const")
        theirs = rosinality_synthesis(ws, state)
    diff = float((ours - theirs).abs().max())
    print(
        f"rosinality {size} px: max |ours - rosinality| = {diff:.2e} "
        f"(image scale {float(theirs.abs().max()):.2f})"
    )
    assert diff < 1e-4


def test_training_checkpoint_without_latent_avg(tmp_path: Path) -> None:
    state = rosinality_state_dict(16, STYLE_DIM, N_MLP, channels_for(16))
    with open(write_rosinality(tmp_path / "000100.pt", state, latent_avg=None, training=True), "rb") as f:
        result = load_rosinality(f, w_avg_samples=64, w_avg_seed=5)
    assert not result.latent_avg_found
    z = torch.randn([64, STYLE_DIM], generator=torch.Generator().manual_seed(5))
    expected = rosinality_mapping(z, state).mean(0)
    assert (result.generator.mapping.w_avg - expected).abs().max() < 1e-4


def test_channel_multiplier_is_known_only_from_narrower_layers(tmp_path: Path) -> None:
    """rosinality's widths are min(512, 16384 * m / res) (here scaled down): the multiplier shows only
    where a layer is narrower than the widest; with every layer equally wide it is unknown."""
    cases = [({4: 16, 8: 16, 16: 8}, 128 / 16384), ({4: 16, 8: 16, 16: 16}, None)]
    for idx, (channels, expected) in enumerate(cases):
        state = rosinality_state_dict(16, STYLE_DIM, N_MLP, channels)
        path = write_rosinality(tmp_path / f"{idx}.pt", state, latent_avg=torch.zeros(STYLE_DIM))
        with open(path, "rb") as f:
            assert load_rosinality(f).channel_multiplier == expected


def test_leftover_and_missing_tensors_fail(converted, tmp_path: Path) -> None:
    state, latent_avg, _ = converted
    extra = {**state, "convs.0.conv.extra": torch.zeros(1)}
    with pytest.raises(ConvertError, match=r"match no rule.*convs\.0\.conv\.extra"):
        convert(write_rosinality(tmp_path / "extra.pt", extra, latent_avg=latent_avg))
    missing = {k: v for k, v in state.items() if k != "convs.1.noise.weight"}
    with pytest.raises(ConvertError, match=r"does not fill.*b8\.conv1\.noise_strength"):
        convert(write_rosinality(tmp_path / "missing.pt", missing, latent_avg=latent_avg))
    blur = {**state, "convs.0.conv.blur.kernel": torch.ones(4, 4) / 4}
    with pytest.raises(ConvertError, match=r"blur kernel \[1, 3, 3, 1\]"):
        convert(write_rosinality(tmp_path / "blur.pt", blur, latent_avg=latent_avg))

    # A stride-0 view claiming 2**60 values is refused by its size before any reshape copies it.
    huge = {**state, "to_rgb1.bias": torch.zeros(1, dtype=torch.float64).expand(1, 2**30, 2**30, 1)}
    with pytest.raises(ConvertError, match=r"'to_rgb1\.bias' has shape \(1, 1073741824, 1073741824, 1\)"):
        convert(write_rosinality(tmp_path / "huge.pt", huge, latent_avg=latent_avg))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_not_a_checkpoint_or_unsafe(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConvertError, match="not a rosinality stylegan2-pytorch checkpoint"):
        convert(junk)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "x": _Evil(marker)}, evil, pickle_module=pickle)
    with pytest.raises(ConvertError, match="weights_only"):
        convert(evil)
    assert not marker.exists()
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ConvertError, match="expected a dict with a 'g_ema' state dict"):
        convert(other)
