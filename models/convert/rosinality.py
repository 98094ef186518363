"""rosinality/stylegan2-pytorch checkpoints (`.pt`) to our StyleGAN2 (NVIDIA's names and math).

A checkpoint is a `torch.save` dict: `convert_weight.py` writes `{"g_ema": state_dict, "latent_avg":
[style_dim]}` (plus `g` and `d` on request), `train.py` writes `{"g", "d", "g_ema", "g_optim",
"d_optim", "args", "ada_aug_p"}` without `latent_avg`. It is read with `torch.load(weights_only=True)`
(`argparse.Namespace`, the `args` entry, is the one class allowed beyond weights).

Sizes come from the tensors: `size` (from the `to_rgbs`), `style_dim`, `n_mlp` (the `style.N` layers)
and the channel widths, expressed as NVIDIA's `channel_base` and `channel_max` (rosinality's
`channel_multiplier` m gives `channel_base = 16384 * m`, `channel_max = 512`). The names map by the
explicit table `_rules` (`style.N` -> `mapping.fc{N-1}`, `conv1`/`to_rgb1`/`input.input` -> block 4,
`convs.2k`/`convs.2k+1`/`to_rgbs.k` -> block 8 * 2**k, `noises.noise_N` -> the layers' `noise_const`).
Kernels are copied as they are: rosinality's upsampling conv (a transposed conv, then the blur) and
NVIDIA's compute the same with the same kernel, as both converters from TensorFlow flip `Conv0_up` alike
(`convert_weight.py`, NVIDIA's `legacy.py`). The blur kernels (`[1, 3, 3, 1]`, times 4 after an
upsampling) are checked, not copied, since our filters are constructor constants.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from typing import IO, Any, NamedTuple

import torch

from models.convert.common import ConvertError, KeyRule, load_converted, map_tensors, torch_load
from models.networks.stylegan2 import Generator

__all__ = ["FORMAT_NAME", "RosinalityCheckpoint", "load_rosinality"]

FORMAT_NAME = "a rosinality stylegan2-pytorch checkpoint (.pt)"
LR_MLP = 0.01  # rosinality's Generator(lr_mlp=0.01), the only value its scripts use.
_BLUR = (1.0, 3.0, 3.0, 1.0)


class RosinalityCheckpoint(NamedTuple):
    """A converted checkpoint: the generator and what the converter inferred."""

    generator: Generator
    # rosinality's channel_multiplier, channel_base / 16384; None when every layer has the widest
    # width (sizes up to 32), which any multiplier >= size / 32 gives.
    channel_multiplier: float | None
    latent_avg_found: bool  # False: `mapping.w_avg` was estimated (see `load_rosinality`).


def _blur_check(gain: float) -> Any:
    f = torch.tensor(_BLUR, dtype=torch.float64)
    expected = torch.outer(f, f) / f.sum() ** 2 * gain

    def check(kernel: torch.Tensor) -> torch.Tensor:
        if tuple(kernel.shape) != (4, 4) or not torch.allclose(kernel.double(), expected, atol=1e-6):
            raise ConvertError(
                f"{FORMAT_NAME}: only the blur kernel [1, 3, 3, 1] is supported, got {kernel.tolist()}"
            )
        return kernel

    return check


def _rules(num_layers: int, n_mlp: int) -> list[KeyRule]:
    """The name table, for `n_mlp` mapping layers and `num_layers` conv layers (noise_0 .. noise_{n-1})."""

    def layer(i: int) -> str:  # conv layer i = 0 (conv1), 1 (convs.0), 2 (convs.1), ...
        return "b4.conv1" if i == 0 else f"b{2 ** ((i + 1) // 2 + 2)}.conv{1 - i % 2}"

    # rosinality's `style.0` is the PixelNorm; its dense layers are style.1 .. style.{n_mlp}.
    rules = [KeyRule(rf"style\.{n + 1}\.(weight|bias)", rf"mapping.fc{n}.\1") for n in range(n_mlp)]
    rules += [
        KeyRule(r"input\.input", "synthesis.b4.const", lambda t: t.squeeze(0)),
        KeyRule(r"conv1\.conv\.weight", "synthesis.b4.conv1.weight", lambda t: t.squeeze(0)),
        KeyRule(r"conv1\.conv\.modulation\.(weight|bias)", r"synthesis.b4.conv1.affine.\1"),
        KeyRule(r"conv1\.noise\.weight", "synthesis.b4.conv1.noise_strength", lambda t: t.reshape([])),
        KeyRule(r"conv1\.activate\.bias", "synthesis.b4.conv1.bias"),
        KeyRule(r"to_rgb1\.conv\.weight", "synthesis.b4.torgb.weight", lambda t: t.squeeze(0)),
        KeyRule(r"to_rgb1\.conv\.modulation\.(weight|bias)", r"synthesis.b4.torgb.affine.\1"),
        KeyRule(r"to_rgb1\.bias", "synthesis.b4.torgb.bias", lambda t: t.flatten()),
    ]
    for i in range(1, num_layers):
        k = i - 1  # index in `convs`
        res, conv = 2 ** ((i + 1) // 2 + 2), f"conv{1 - i % 2}"
        ours = f"synthesis.b{res}.{conv}"
        up = conv == "conv0"
        rules += [
            KeyRule(rf"convs\.{k}\.conv\.weight", f"{ours}.weight", lambda t: t.squeeze(0)),
            KeyRule(rf"convs\.{k}\.conv\.modulation\.(weight|bias)", rf"{ours}.affine.\1"),
            KeyRule(rf"convs\.{k}\.noise\.weight", f"{ours}.noise_strength", lambda t: t.reshape([])),
            KeyRule(rf"convs\.{k}\.activate\.bias", f"{ours}.bias"),
        ]
        if up:
            rules.append(KeyRule(rf"convs\.{k}\.conv\.blur\.kernel", None, _blur_check(4.0)))
            j = (i - 1) // 2  # index in `to_rgbs`
            rules += [
                KeyRule(
                    rf"to_rgbs\.{j}\.conv\.weight", f"synthesis.b{res}.torgb.weight", lambda t: t.squeeze(0)
                ),
                KeyRule(
                    rf"to_rgbs\.{j}\.conv\.modulation\.(weight|bias)", rf"synthesis.b{res}.torgb.affine.\1"
                ),
                KeyRule(rf"to_rgbs\.{j}\.bias", f"synthesis.b{res}.torgb.bias", lambda t: t.flatten()),
                KeyRule(rf"to_rgbs\.{j}\.upsample\.kernel", None, _blur_check(4.0)),
            ]
    rules += [
        KeyRule(rf"noises\.noise_{i}", f"synthesis.{layer(i)}.noise_const", lambda t: t.reshape(t.shape[-2:]))
        for i in range(num_layers)
    ]
    return rules


def _channel_config(channels: dict[int, int], size: int) -> tuple[int, int]:
    """NVIDIA's (channel_base, channel_max) that give these widths: min(base // res, max)."""
    channel_max = max(channels.values())
    narrower = [res for res in sorted(channels) if channels[res] < channel_max]
    channel_base = channels[narrower[0]] * narrower[0] if narrower else channel_max * size
    if any(min(channel_base // res, channel_max) != ch for res, ch in channels.items()):
        raise ConvertError(
            f"{FORMAT_NAME}: the channel widths {channels} are not min(base // resolution, max) for any base"
        )
    return channel_base, channel_max


def _state_dict(ckpt: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("g_ema"), Mapping):
        found = sorted(map(str, ckpt)) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise ConvertError(f"not {FORMAT_NAME}: expected a dict with a 'g_ema' state dict, found {found}")
    state = dict(ckpt["g_ema"])
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise ConvertError(f"{FORMAT_NAME}: latent_avg is a {type(latent_avg).__name__}, expected a tensor")
    return state, latent_avg


def load_rosinality(
    f: IO[bytes],
    *,
    w_avg_samples: int = 4096,
    w_avg_seed: int = 0,
) -> RosinalityCheckpoint:
    """Read the `g_ema` generator of a rosinality checkpoint into our StyleGAN2 generator.

    `mapping.w_avg` is the checkpoint's `latent_avg`. A training checkpoint has none; then it is the
    mean of `w_avg_samples` mapped latents drawn from `torch.Generator().manual_seed(w_avg_seed)`, as
    rosinality's `mean_latent(4096)` estimates it.

    Args:
        f: The checkpoint, an open binary file.
        w_avg_samples: Latents to average when the checkpoint has no `latent_avg`.
        w_avg_seed: Seed of those latents.

    Returns:
        The generator (eval mode, no gradients), the channel multiplier (None when no layer is narrower
        than the widest, which any large enough multiplier gives), and whether latent_avg was found.

    Raises:
        ConvertError: If the file is not such a checkpoint, or a tensor is left over, missing or misshapen.
    """
    # `args` of train.py checkpoints is an argparse.Namespace; torch < 2.5 cannot allow it.
    ckpt = torch_load(f, FORMAT_NAME, allowed=[argparse.Namespace])
    state, latent_avg = _state_dict(ckpt)

    # Sizes, from the tensors.
    what = f"{FORMAT_NAME}: g_ema"
    try:
        style_dim = int(state["style.1.weight"].shape[0])
        num_rgbs = 1 + len({m.group(1) for key in state if (m := re.match(r"to_rgbs\.(\d+)\.", key))})
        n_mlp = len({m.group(1) for key in state if (m := re.fullmatch(r"style\.(\d+)\.weight", key))})
        size = 2 ** (num_rgbs + 1)
        channels = {4: int(state["input.input"].shape[1])}
        for j in range(num_rgbs - 1):
            channels[2 ** (j + 3)] = int(state[f"to_rgbs.{j}.conv.weight"].shape[2])
    except (KeyError, IndexError, AttributeError) as err:
        raise ConvertError(f"{what}: not a rosinality generator state dict, {err!r} is missing") from err
    channel_base, channel_max = _channel_config(channels, size)

    G = Generator(
        z_dim=style_dim,
        c_dim=0,
        w_dim=style_dim,
        img_resolution=size,
        img_channels=3,
        mapping_kwargs={"num_layers": n_mlp, "lr_multiplier": LR_MLP},
        synthesis_kwargs={"channel_base": channel_base, "channel_max": channel_max, "architecture": "skip"},
    )
    own = G.state_dict()
    derived = {key: t for key, t in own.items() if key.endswith("resample_filter")}
    if latent_avg is not None:
        derived["mapping.w_avg"] = latent_avg.reshape(-1) if latent_avg.numel() == style_dim else latent_avg
    else:
        derived["mapping.w_avg"] = torch.zeros([style_dim])
    num_layers = 2 * int(math.log2(size)) - 3
    rules = _rules(num_layers, n_mlp)
    tensors = map_tensors(state, rules, own, derived=derived, what=what)
    tensors = {key: t.to(torch.float32) for key, t in tensors.items()}
    load_converted(G, tensors, what=what)
    G.eval().requires_grad_(False)
    if latent_avg is None:
        gen = torch.Generator().manual_seed(w_avg_seed)
        with torch.no_grad():
            z = torch.randn([w_avg_samples, style_dim], generator=gen)
            G.mapping.w_avg.copy_(G.mapping(z, None)[:, 0].mean(dim=0))
    multiplier = channel_base / 16384 if len(set(channels.values())) > 1 else None
    return RosinalityCheckpoint(G, multiplier, latent_avg is not None)
