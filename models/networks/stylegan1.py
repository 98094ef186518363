"""StyleGAN (v1) generator, as the lernapparat PyTorch port that the official IALS code runs.

The official IALS weights (`pretrain/stylegan/{ffhq,celebahq}/weight.pkl`) are a state dict of
lernapparat's `nn.Sequential(g_mapping=G_mapping(), g_synthesis=G_synthesis())`. This module
reproduces that port's math and module names, so its keys map one to one: `g_mapping.X` is our
`mapping.X` and `g_synthesis.X` our `synthesis.X`
(`models.convert.ials_pretrain` holds the table). On top of them it has two buffers the port lacks:
`mapping.w_avg` (the port keeps `avg_code.npy` outside the network) and a `noise_const` per noise
layer, so that `noise_mode='const'` renders frames that differ only by their latents.

The math, layer by layer (all weights with equalized learning rate: `weight * gain / sqrt(fan_in) * lr`):
- mapping: pixel norm of z, then `num_layers` dense layers (lr multiplier 0.01, gain sqrt(2)), each
  followed by a leaky ReLU (slope 0.2, no gain), broadcast to `num_ws` rows; truncation
  `w_avg + psi * (w - w_avg)` on all rows, as the official IALS scripts apply it.
- synthesis, at 4x4: a learned constant plus a bias, then two layer epilogues around a 3x3 conv.
- synthesis, above: `conv0_up` (2x upsampling conv, then the [1, 2, 1] blur, then the bias), epilogue,
  3x3 conv, epilogue. Below `fused_upscale_min_res` (128, as the port) the upsampling is nearest
  neighbour followed by the conv; from that resolution on it is StyleGAN's fused upscale: a transposed
  conv (stride 2) with the 3x3 kernel padded and summed over its four 2x2 shifts into 4x4.
- epilogue: per-pixel noise with a per-channel weight, leaky ReLU (0.2), instance norm (eps 1e-5,
  no affine), then AdaIN style modulation `x * (s0 + 1) + s1` with `(s0, s1) = affine(w)`.
- `torgb`: 1x1 conv with gain 1 at the last resolution only; the output is not clamped.
The row of `ws` used by each epilogue is the port's: block i reads rows 2i and 2i+1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.misc import assert_shape, record_init_kwargs

__all__ = [
    "Blur",
    "EqualizedConv2d",
    "EqualizedLinear",
    "Generator",
    "InputBlock",
    "LayerEpilogue",
    "MappingNetwork",
    "SynthesisBlock",
    "SynthesisNetwork",
]

NOISE_MODES = ("random", "const", "none")
LRELU_SLOPE = 0.2
INSTANCE_NORM_EPS = 1e-5  # nn.InstanceNorm2d's default, which the port uses.


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


# ----------------------------------------------------------------------------
# Layers.


class EqualizedLinear(nn.Module):
    """Dense layer with equalized learning rate: `x @ (weight * gain / sqrt(in) * lr).T + bias * lr`."""

    bias: nn.Parameter | None

    def __init__(
        self,
        in_features: int,  # Input features.
        out_features: int,  # Output features.
        gain: float = math.sqrt(2),  # He-init gain folded into the runtime weight scale.
        lr_multiplier: float = 1.0,  # Learning rate multiplier of weight and bias.
        bias: bool = True,  # Add a bias?
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.zeros([out_features])) if bias else None
        self.weight_gain = gain / math.sqrt(in_features) * lr_multiplier
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.bias_gain if self.bias is not None else None
        return F.linear(x, self.weight * self.weight_gain, bias)


class Blur(nn.Module):
    """Depthwise blur with a normalised separable kernel, same-size output (the port's `BlurLayer`)."""

    kernel: torch.Tensor

    def __init__(self, blur_filter: Sequence[float] = (1, 2, 1)) -> None:
        super().__init__()
        f = torch.tensor(blur_filter, dtype=torch.float32)
        kernel = f[:, None] * f[None, :]
        self.register_buffer("kernel", (kernel / kernel.sum())[None, None])  # [1, 1, k, k]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel.expand(x.shape[1], -1, -1, -1)  # [C, 1, k, k]
        return F.conv2d(x, kernel, padding=(self.kernel.shape[2] - 1) // 2, groups=x.shape[1])


class EqualizedConv2d(nn.Module):
    """Convolution with equalized learning rate, optional 2x upsampling before it and blur after it."""

    intermediate: Blur | None

    def __init__(
        self,
        in_channels: int,  # Input channels.
        out_channels: int,  # Output channels.
        kernel_size: int,  # Side of the square kernel.
        gain: float = math.sqrt(2),  # He-init gain folded into the runtime weight scale.
        up: bool = False,  # Upsample 2x before the convolution?
        blur_filter: Sequence[float] | None = None,  # Blur after the convolution, None = none.
        fused_upscale_min_res: int = 128,  # Output resolution from which `up` is the fused upscale.
    ) -> None:
        super().__init__()
        self.up = up
        self.fused_upscale_min_res = fused_upscale_min_res
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = gain / math.sqrt(in_channels * kernel_size**2)
        self.intermediate = Blur(blur_filter) if blur_filter is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight * self.weight_gain  # [O, I, k, k]
        if self.up and 2 * min(x.shape[2:]) >= self.fused_upscale_min_res:
            # Fused upscale: transposed conv with the kernel summed over its four 2x2 shifts.
            w = F.pad(w.permute(1, 0, 2, 3), (1, 1, 1, 1))  # [I, O, k + 2, k + 2]
            w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]  # [I, O, k+1, k+1]
            x = F.conv_transpose2d(x, w, stride=2, padding=(w.shape[-1] - 1) // 2)
        else:
            if self.up:
                x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest neighbour
            x = F.conv2d(x, w, padding=self.padding)
        if self.intermediate is not None:
            x = self.intermediate(x)
        return x + self.bias.view(1, -1, 1, 1)


class NoiseLayer(nn.Module):
    """Per-pixel noise (shared by the channels) with a per-channel weight."""

    noise_const: torch.Tensor

    def __init__(self, channels: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.weight = nn.Parameter(torch.zeros([channels]))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))

    def forward(self, x: torch.Tensor, noise_mode: str) -> torch.Tensor:
        if noise_mode == "none":
            return x
        if noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, x.shape[2], x.shape[3]], device=x.device, dtype=x.dtype)
        else:
            noise = self.noise_const.to(x.dtype)[None, None]  # [1, 1, H, W]
        return x + self.weight.view(1, -1, 1, 1) * noise


class EpilogueTop(nn.Module):
    """Noise, activation and instance norm: the port's `top_epi` (only its noise has weights)."""

    def __init__(self, channels: int, resolution: int) -> None:
        super().__init__()
        self.noise = NoiseLayer(channels, resolution)

    def forward(self, x: torch.Tensor, noise_mode: str) -> torch.Tensor:
        x = _lrelu(self.noise(x, noise_mode))
        return F.instance_norm(x, eps=INSTANCE_NORM_EPS)


class StyleMod(nn.Module):
    """AdaIN style modulation: `x * (s0 + 1) + s1` with `[s0, s1] = lin(w)`."""

    def __init__(self, w_dim: int, channels: int) -> None:
        super().__init__()
        self.lin = EqualizedLinear(w_dim, 2 * channels, gain=1.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.lin(w).view(-1, 2, x.shape[1], 1, 1)  # [N, 2, C, 1, 1]
        out: torch.Tensor = x * (style[:, 0] + 1) + style[:, 1]
        return out


class LayerEpilogue(nn.Module):
    """What follows every convolution: noise, activation, instance norm, style modulation."""

    def __init__(self, channels: int, w_dim: int, resolution: int) -> None:
        super().__init__()
        self.top_epi = EpilogueTop(channels, resolution)
        self.style_mod = StyleMod(w_dim, channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
        out: torch.Tensor = self.style_mod(self.top_epi(x, noise_mode), w)
        return out


# ----------------------------------------------------------------------------
# Blocks.


class InputBlock(nn.Module):
    """4x4: learned constant plus bias, epilogue, 3x3 conv, epilogue; reads 2 rows of `ws`."""

    def __init__(self, channels: int, w_dim: int) -> None:
        super().__init__()
        self.const = nn.Parameter(torch.ones([1, channels, 4, 4]))
        self.bias = nn.Parameter(torch.ones([channels]))
        self.epi1 = LayerEpilogue(channels, w_dim, 4)
        self.conv = EqualizedConv2d(channels, channels, 3)
        self.epi2 = LayerEpilogue(channels, w_dim, 4)

    def forward(self, ws: torch.Tensor, noise_mode: str) -> torch.Tensor:
        x = self.const.expand(ws.shape[0], -1, -1, -1) + self.bias.view(1, -1, 1, 1)  # [N, C, 4, 4]
        x = self.epi1(x, ws[:, 0], noise_mode)
        x = self.conv(x)
        out: torch.Tensor = self.epi2(x, ws[:, 1], noise_mode)
        return out


class SynthesisBlock(nn.Module):
    """One resolution above 4x4: upsampling conv (with blur), epilogue, 3x3 conv, epilogue."""

    def __init__(
        self,
        in_channels: int,  # Input channels.
        out_channels: int,  # Output channels.
        w_dim: int,  # Latent width.
        resolution: int,  # Output resolution of the block.
        blur_filter: Sequence[float] | None,  # Blur after the upsampling conv, None = none.
        fused_upscale_min_res: int,  # Resolution from which the upsampling conv is fused.
    ) -> None:
        super().__init__()
        self.conv0_up = EqualizedConv2d(
            in_channels,
            out_channels,
            3,
            up=True,
            blur_filter=blur_filter,
            fused_upscale_min_res=fused_upscale_min_res,
        )
        self.epi1 = LayerEpilogue(out_channels, w_dim, resolution)
        self.conv1 = EqualizedConv2d(out_channels, out_channels, 3)
        self.epi2 = LayerEpilogue(out_channels, w_dim, resolution)

    def forward(self, x: torch.Tensor, ws: torch.Tensor, noise_mode: str) -> torch.Tensor:
        x = self.epi1(self.conv0_up(x), ws[:, 0], noise_mode)
        out: torch.Tensor = self.epi2(self.conv1(x), ws[:, 1], noise_mode)
        return out


# ----------------------------------------------------------------------------
# Networks.


@record_init_kwargs
class MappingNetwork(nn.Module):
    """z -> w: pixel norm, `num_layers` dense layers with leaky ReLU, broadcast, truncation."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.
    w_avg: torch.Tensor

    def __init__(
        self,
        z_dim: int,  # Input latent (Z) dimensionality.
        w_dim: int,  # Intermediate latent (W) dimensionality.
        num_ws: int,  # Rows of the broadcast output.
        num_layers: int = 8,  # Dense layers.
        layer_features: int | None = None,  # Hidden features, None = w_dim.
        lr_multiplier: float = 0.01,  # Learning rate multiplier of the dense layers.
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        features = [z_dim] + [layer_features or w_dim] * (num_layers - 1) + [w_dim]
        for idx in range(num_layers):
            layer = EqualizedLinear(features[idx], features[idx + 1], lr_multiplier=lr_multiplier)
            setattr(self, f"dense{idx}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        """Map latents to `ws` and truncate towards `w_avg`.

        Args:
            z: `[N, z_dim]`.
            c: Ignored (no labels); None or `[N, 0]`.
            truncation_psi: `w_avg + psi * (w - w_avg)`, 1 = none.
            truncation_cutoff: Truncate only rows `[:truncation_cutoff]`, None = all rows (the IALS
                scripts' setting).

        Returns:
            `[N, num_ws, w_dim]`.
        """
        assert_shape(z, [None, self.z_dim])
        assert c is None or c.numel() == 0
        x = z.to(torch.float32)
        x = x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)  # pixel norm, [N, z_dim]
        for idx in range(self.num_layers):
            x = _lrelu(getattr(self, f"dense{idx}")(x))  # [N, w_dim]
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # [N, num_ws, w_dim]
        if truncation_psi != 1:
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x


@record_init_kwargs
class SynthesisNetwork(nn.Module):
    """ws -> image: `blocks['4x4']`, `blocks['8x8']`, ..., then `torgb`."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.

    def __init__(
        self,
        w_dim: int,  # Intermediate latent (W) dimensionality.
        img_resolution: int,  # Output resolution, a power of 2 >= 4.
        img_channels: int,  # Output channels.
        fmap_base: int = 8192,  # Channels at resolution r: min(fmap_base / (r / 2) ** decay, max).
        fmap_decay: float = 1.0,  # log2 channel reduction when doubling the resolution.
        fmap_max: int = 512,  # Maximum channels.
        blur_filter: Sequence[float] | None = (1, 2, 1),  # Blur after upsampling, None = none.
        fused_upscale_min_res: int = 128,  # Resolution from which upsampling is the fused upscale.
    ) -> None:
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"img_resolution must be a power of 2 >= 4, got {img_resolution}")
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        resolution_log2 = int(math.log2(img_resolution))
        self.num_ws = 2 * resolution_log2 - 2

        def nf(stage: int) -> int:
            return min(int(fmap_base / (2.0 ** (stage * fmap_decay))), fmap_max)

        blocks: dict[str, nn.Module] = {"4x4": InputBlock(nf(1), w_dim)}
        for res_log2 in range(3, resolution_log2 + 1):
            res = 2**res_log2
            blocks[f"{res}x{res}"] = SynthesisBlock(
                nf(res_log2 - 2),
                nf(res_log2 - 1),
                w_dim,
                res,
                blur_filter=blur_filter,
                fused_upscale_min_res=fused_upscale_min_res,
            )
        self.blocks = nn.ModuleDict(blocks)
        self.torgb = EqualizedConv2d(nf(resolution_log2 - 1), img_channels, 1, gain=1.0)

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", **_ignored: Any) -> torch.Tensor:
        """Render images.

        Args:
            ws: `[N, num_ws, w_dim]`; block i reads rows 2i and 2i+1.
            noise_mode: 'random' (fresh noise from the global RNG, as the port), 'const' (the
                `noise_const` buffers), 'none'.
            **_ignored: Keyword arguments of other generators' synthesis (`fused_modconv`,
                `force_fp32`), which do not apply here.

        Returns:
            Float32 images `[N, img_channels, img_resolution, img_resolution]`, roughly in [-1, 1].
        """
        assert noise_mode in NOISE_MODES
        assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(torch.float32)
        x = torch.empty(0)
        for idx, block in enumerate(self.blocks.values()):
            block_ws = ws[:, 2 * idx : 2 * idx + 2]  # [N, 2, w_dim]
            x = block(block_ws, noise_mode) if idx == 0 else block(x, block_ws, noise_mode)
        img: torch.Tensor = self.torgb(x)
        return img


@record_init_kwargs
class Generator(nn.Module):
    """StyleGAN (v1) generator: `mapping` z -> ws, then `synthesis` ws -> image."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.

    def __init__(
        self,
        z_dim: int = 512,  # Input latent (Z) dimensionality.
        c_dim: int = 0,  # Conditioning label dimensionality; must be 0.
        w_dim: int = 512,  # Intermediate latent (W) dimensionality.
        img_resolution: int = 1024,  # Output resolution.
        img_channels: int = 3,  # Output channels.
        mapping_kwargs: dict[str, Any] | None = None,  # Arguments for MappingNetwork, None = {}.
        synthesis_kwargs: dict[str, Any] | None = None,  # Arguments for SynthesisNetwork, None = {}.
    ) -> None:
        if c_dim != 0:
            raise ValueError(f"StyleGAN (v1) generators take no labels, got c_dim={c_dim}")
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **(synthesis_kwargs or {})
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, w_dim=w_dim, num_ws=self.num_ws, **(mapping_kwargs or {}))

    @property
    def w_avg(self) -> torch.Tensor:
        """The mean latent, `[w_dim]` (the mapping network's `w_avg` buffer)."""
        return self.mapping.w_avg

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        **synthesis_kwargs: Any,
    ) -> torch.Tensor:
        """Sample images: `synthesis(mapping(z, c, truncation_psi, truncation_cutoff), **kwargs)`."""
        ws: torch.Tensor = self.mapping(
            z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff
        )
        img: torch.Tensor = self.synthesis(ws, **synthesis_kwargs)
        return img
