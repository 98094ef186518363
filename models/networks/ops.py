"""StyleGAN2-ADA's low-level ops in plain PyTorch: FIR resampling, bias + activation, modulated conv.

The math follows the reference (`impl='ref'`) paths of NVlabs/stylegan2-ada-pytorch
`torch_utils/ops/{upfirdn2d,bias_act,conv2d_resample,fma}.py` and `training/networks.py`
operation for operation, so that checkpoints trained there reproduce their outputs here. There are no
custom kernels and nothing is compiled: every op runs on CPU and CUDA and supports autograd of any order.

Differences from the reference, none of which changes a result:
- no `impl` argument (there is only the reference implementation), no profiler scopes;
- no in-place updates (`add_`, `/=`), so tensors that require grad can flow through every op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.misc import assert_shape

__all__ = [
    "ActivationSpec",
    "activation_funcs",
    "bias_act",
    "conv2d_resample",
    "downsample2d",
    "filter2d",
    "modulated_conv2d",
    "normalize_2nd_moment",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]

FilterLike = torch.Tensor | np.ndarray | Sequence[Any] | float | None
Padding = int | Sequence[int]
Scaling = int | Sequence[int]

# ----------------------------------------------------------------------------
# Bias and activation.


@dataclass(frozen=True)
class ActivationSpec:
    """One entry of the activation table: the function and its default shape parameter and gain."""

    func: Callable[[torch.Tensor, float], torch.Tensor]  # (x, alpha) -> y
    def_alpha: float  # Default shape parameter (the lrelu slope).
    def_gain: float  # Default output gain; sqrt(2) keeps the variance of ReLU-like units.


activation_funcs: dict[str, ActivationSpec] = {
    "linear": ActivationSpec(lambda x, alpha: x, 0.0, 1.0),
    "relu": ActivationSpec(lambda x, alpha: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": ActivationSpec(lambda x, alpha: F.leaky_relu(x, alpha), 0.2, math.sqrt(2)),
    "tanh": ActivationSpec(lambda x, alpha: torch.tanh(x), 0.0, 1.0),
    "sigmoid": ActivationSpec(lambda x, alpha: torch.sigmoid(x), 0.0, 1.0),
    "elu": ActivationSpec(lambda x, alpha: F.elu(x), 0.0, 1.0),
    "selu": ActivationSpec(lambda x, alpha: F.selu(x), 0.0, 1.0),
    "softplus": ActivationSpec(lambda x, alpha: F.softplus(x), 0.0, 1.0),
    "swish": ActivationSpec(lambda x, alpha: torch.sigmoid(x) * x, 0.0, math.sqrt(2)),
}


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add a bias, apply an activation, scale by a gain and clamp: `clamp(act(x + b, alpha) * gain)`.

    Args:
        x: Activations of any shape.
        b: Bias vector of shape `[x.shape[dim]]` and the dtype of `x`, or `None` for no bias.
        dim: The dimension of `x` that `b` runs along.
        act: A key of `activation_funcs` ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu",
            "selu", "softplus", "swish").
        alpha: Shape parameter of the activation, `None` = the activation's `def_alpha`.
        gain: Output scale, `None` = the activation's `def_gain` (sqrt(2) for relu, lrelu, swish).
        clamp: Clamp the output to `[-clamp, +clamp]`, `None` = no clamping.

    Returns:
        A tensor with the shape and dtype of `x`.
    """
    assert clamp is None or clamp >= 0
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)

    # Add bias.
    if b is not None:
        assert b.ndim == 1 and 0 <= dim < x.ndim and b.shape[0] == x.shape[dim]
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])

    # Activation, gain, clamp.
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# ----------------------------------------------------------------------------
# FIR filtering and resampling.


def _parse_scaling(scaling: Scaling) -> tuple[int, int]:
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    sx, sy = scaling
    assert isinstance(sx, int) and isinstance(sy, int) and sx >= 1 and sy >= 1
    return sx, sy


def _parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        padding = [padding, padding]
    assert all(isinstance(p, int) for p in padding)
    if len(padding) == 2:
        padx, pady = padding
        padding = [padx, padx, pady, pady]
    padx0, padx1, pady0, pady1 = padding
    return padx0, padx1, pady0, pady1


def _get_filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """Return `(filter_width, filter_height)`; a separable filter is as tall as it is wide."""
    if f is None:
        return 1, 1
    assert f.ndim in (1, 2)
    fw = int(f.shape[-1])
    fh = int(f.shape[0])
    assert fw >= 1 and fh >= 1
    return fw, fh


def setup_filter(
    f: FilterLike,
    device: torch.device | str = "cpu",
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
) -> torch.Tensor:
    """Prepare a 2D FIR filter for `upfirdn2d()`.

    Args:
        f: Filter taps: `[fh, fw]` (non-separable), `[taps]` (separable), `[]` (impulse) or `None`
            (identity). A tensor, numpy array, nested list or number.
        device: Device of the result.
        normalize: Scale the taps to sum to 1, so a constant signal keeps its magnitude.
        flip_filter: Flip the filter (convolution <-> correlation).
        gain: Overall scaling factor for the signal magnitude.
        separable: Return a separable 1D filter; `None` = only for 1D input with 8 taps or more.

    Returns:
        A float32 tensor of shape `[fh, fw]` (non-separable) or `[taps]` (separable). A 1D input
        that is not kept separable becomes its outer product with itself.
    """
    taps: torch.Tensor = torch.as_tensor(1 if f is None else f, dtype=torch.float32)
    assert taps.ndim in (0, 1, 2) and taps.numel() > 0
    if taps.ndim == 0:
        taps = taps[np.newaxis]

    # Separable?
    if separable is None:
        separable = taps.ndim == 1 and taps.numel() >= 8
    if taps.ndim == 1 and not separable:
        taps = torch.outer(taps, taps)
    assert taps.ndim == (1 if separable else 2)

    # Normalize, flip, gain, device.
    if normalize:
        taps = taps / taps.sum()
    if flip_filter:
        taps = taps.flip(list(range(taps.ndim)))
    taps = taps * (gain ** (taps.ndim / 2))
    return taps.to(device=device)


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: Scaling = 1,
    down: Scaling = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
) -> torch.Tensor:
    """Upsample, pad, FIR-filter and downsample a batch of images, channel by channel.

    1. Upsample by inserting `up - 1` zeros after each pixel.
    2. Pad with zeros on each side (`padding`; negative values crop).
    3. Convolve with the FIR filter `f`, keeping only outputs whose footprint lies inside the image.
    4. Downsample by keeping every `down`-th pixel.

    The output size is `(in * up + pad0 + pad1 - (taps - 1) + down - 1) // down` per axis, as in
    `scipy.signal.upfirdn`.

    Args:
        x: Images of shape `[N, C, H, W]` (float16/32/64).
        f: Float32 filter `[fh, fw]` or separable `[taps]` from `setup_filter()`, or `None` (identity).
        up: Upsampling factor, an int or `[x, y]`.
        down: Downsampling factor, an int or `[x, y]`.
        padding: Padding of the upsampled image: an int, `[x, y]` or `[x0, x1, y0, y1]`.
        flip_filter: False = convolution, True = correlation.
        gain: Overall scaling factor for the signal magnitude.

    Returns:
        A tensor of shape `[N, C, out_height, out_width]` and the dtype of `x`.
    """
    assert x.ndim == 4
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    assert f.ndim in (1, 2) and f.dtype == torch.float32 and not f.requires_grad
    batch_size, num_channels, in_height, in_width = x.shape
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)

    # Upsample by inserting zeros.
    x = x.reshape([batch_size, num_channels, in_height, 1, in_width, 1])
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape([batch_size, num_channels, in_height * upy, in_width * upx])

    # Pad or crop.
    x = F.pad(x, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
    x = x[:, :, max(-pady0, 0) : x.shape[2] - max(-pady1, 0), max(-padx0, 0) : x.shape[3] - max(-padx1, 0)]

    # Setup filter.
    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))

    # Convolve with the filter, as a depthwise convolution.
    f = f[np.newaxis, np.newaxis].repeat([num_channels, 1] + [1] * f.ndim)
    if f.ndim == 4:
        x = F.conv2d(x, f, groups=num_channels)
    else:
        x = F.conv2d(x, f.unsqueeze(2), groups=num_channels)
        x = F.conv2d(x, f.unsqueeze(3), groups=num_channels)

    # Downsample by throwing away pixels.
    return x[:, :, ::downy, ::downx]


def filter2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
) -> torch.Tensor:
    """Filter a batch of images with a FIR filter, padded so the output has the input's size.

    Args:
        x: Images of shape `[N, C, H, W]`.
        f: Filter from `setup_filter()`, or `None` (identity).
        padding: Extra padding of the output, added on top of the default; negative values crop.
        flip_filter: False = convolution, True = correlation.
        gain: Overall scaling factor for the signal magnitude.

    Returns:
        A tensor of shape `[N, C, H + pad_y, W + pad_x]`.
    """
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain)


def upsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: Scaling = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
) -> torch.Tensor:
    """Upsample a batch of images with a FIR filter; the output is `up` times the input's size.

    Args:
        x: Images of shape `[N, C, H, W]`.
        f: Filter from `setup_filter()`, or `None` (identity, i.e. zero insertion).
        up: Upsampling factor, an int or `[x, y]`.
        padding: Extra padding of the output, added on top of the default; negative values crop.
        flip_filter: False = convolution, True = correlation.
        gain: Overall scaling factor for the signal magnitude.

    Returns:
        A tensor of shape `[N, C, H * up_y, W * up_x]` (plus any extra padding).
    """
    upx, upy = _parse_scaling(up)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [
        padx0 + (fw + upx - 1) // 2,
        padx1 + (fw - upx) // 2,
        pady0 + (fh + upy - 1) // 2,
        pady1 + (fh - upy) // 2,
    ]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    down: Scaling = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
) -> torch.Tensor:
    """Downsample a batch of images with a FIR filter; the output is the input's size over `down`.

    Args:
        x: Images of shape `[N, C, H, W]`.
        f: Filter from `setup_filter()`, or `None` (identity, i.e. plain subsampling).
        down: Downsampling factor, an int or `[x, y]`.
        padding: Extra padding of the input, added on top of the default; negative values crop.
        flip_filter: False = convolution, True = correlation.
        gain: Overall scaling factor for the signal magnitude.

    Returns:
        A tensor of shape `[N, C, H // down_y, W // down_x]` (plus any extra padding).
    """
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [
        padx0 + (fw - downx + 1) // 2,
        padx1 + (fw - downx) // 2,
        pady0 + (fh - downy + 1) // 2,
        pady1 + (fh - downy) // 2,
    ]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain)


# ----------------------------------------------------------------------------
# Convolution with resampling.


def _conv2d_wrapper(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: int = 1,
    padding: int | list[int] = 0,
    groups: int = 1,
    transpose: bool = False,
    flip_weight: bool = True,
) -> torch.Tensor:
    """`conv2d` / `conv_transpose2d`; `flip_weight=False` turns the correlation into a convolution."""
    out_channels, in_channels_per_group, kh, kw = (int(s) for s in w.shape)
    if not flip_weight:
        w = w.flip([2, 3])

    # The reference's detour for 1x1 convolutions of channels-last inputs with few channels (a cuDNN 8.0.5
    # slowdown). Kept because it changes float16 rounding: a matmul, or a convolution in contiguous format.
    if kw == 1 and kh == 1 and stride == 1 and padding in (0, [0, 0]) and not transpose:
        if x.stride()[1] == 1 and min(out_channels, in_channels_per_group) < 64:
            if out_channels <= 4 and groups == 1:
                n, _, h, width = x.shape
                x = w.squeeze(3).squeeze(2) @ x.reshape([n, in_channels_per_group, -1])
                x = x.reshape([n, out_channels, h, width])
            else:
                x = x.to(memory_format=torch.contiguous_format)
                w = w.to(memory_format=torch.contiguous_format)
                x = F.conv2d(x, w, groups=groups)
            return x.to(memory_format=torch.channels_last)

    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
) -> torch.Tensor:
    """2D convolution with optional FIR up/downsampling; padding is applied once, at the start.

    Args:
        x: Input of shape `[N, in_channels, H, W]`.
        w: Weight of shape `[out_channels, in_channels // groups, kh, kw]`, the dtype of `x`.
        f: Float32 low-pass filter from `setup_filter()` for the resampling, `None` = identity.
        up: Integer upsampling factor.
        down: Integer downsampling factor.
        padding: Padding of the upsampled image: an int, `[x, y]` or `[x0, x1, y0, y1]`.
        groups: Number of groups of input channels.
        flip_weight: False = convolution, True = correlation (as `torch.nn.functional.conv2d`).
        flip_filter: False = convolution, True = correlation, for `f`.

    Returns:
        A tensor of shape `[N, out_channels, out_height, out_width]`.
    """
    assert x.ndim == 4 and w.ndim == 4 and w.dtype == x.dtype
    assert f is None or (f.ndim in (1, 2) and f.dtype == torch.float32)
    assert isinstance(up, int) and up >= 1
    assert isinstance(down, int) and down >= 1
    assert isinstance(groups, int) and groups >= 1
    out_channels, in_channels_per_group, kh, kw = (int(s) for s in w.shape)
    fw, fh = _get_filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)

    # Adjust padding to account for up/downsampling.
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    # 1x1 kernel, downsampling only: downsample, then convolve.
    if kw == 1 and kh == 1 and (down > 1 and up == 1):
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)

    # 1x1 kernel, upsampling only: convolve, then upsample.
    if kw == 1 and kh == 1 and (up > 1 and down == 1):
        x = _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up**2, flip_filter=flip_filter)

    # Downsampling only: filter, then strided convolution.
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d_wrapper(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling (and maybe downsampling): transposed strided convolution, then filter.
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_channels_per_group, kh, kw)
            w = w.transpose(1, 2)
            w = w.reshape(groups * in_channels_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv2d_wrapper(
            x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight
        )
        x = upfirdn2d(
            x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up**2, flip_filter=flip_filter
        )
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # No resampling, symmetric non-negative padding: plain convolution.
    if up == 1 and down == 1:
        if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
            return _conv2d_wrapper(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # Generic fallback.
    x = upfirdn2d(
        x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up**2, flip_filter=flip_filter
    )
    x = _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x


# ----------------------------------------------------------------------------
# Style modulation.


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale `x` to unit root-mean-square along `dim`: `x / sqrt(mean(x^2) + eps)`.

    Args:
        x: A tensor, e.g. latents `[N, z_dim]`.
        dim: The dimension to normalise along.
        eps: Added to the mean square before the square root.

    Returns:
        A tensor with the shape of `x`.
    """
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """StyleGAN2's modulated (and demodulated) convolution, plus optional additive noise.

    Per sample n: `w'[n,o,i] = weight[o,i] * styles[n,i]`, then with `demodulate`
    `w''[n,o,i] = w'[n,o,i] / sqrt(sum_{i,k,k} w'[n,o,i]^2 + 1e-8)`, then `x = conv(x[n], w'') + noise`.
    The fused path runs one grouped convolution with per-sample weights; the non-fused path scales the
    activations before and after a shared convolution, which gives the same result up to rounding. For
    float16 inputs with `demodulate` the weight and styles are first divided by their max-abs value
    (demodulation cancels that scale) to avoid float16 overflow.

    Args:
        x: Input of shape `[N, in_channels, H, W]`.
        weight: Weight of shape `[out_channels, in_channels, kh, kw]`.
        styles: Modulation coefficients of shape `[N, in_channels]`.
        noise: Noise added to the output, broadcastable to `[N, out_channels, H', W']`, or `None`.
        up: Integer upsampling factor.
        down: Integer downsampling factor.
        padding: Padding of the upsampled image.
        resample_filter: Float32 low-pass filter from `setup_filter()`, used when resampling.
        demodulate: Apply weight demodulation.
        flip_weight: False = convolution, True = correlation (as `torch.nn.functional.conv2d`).
        fused_modconv: Modulate, convolve and demodulate as one grouped convolution.

    Returns:
        A tensor of shape `[N, out_channels, H', W']` and the dtype of `x`.
    """
    batch_size = int(x.shape[0])
    out_channels, in_channels, kh, kw = weight.shape
    assert_shape(weight, [out_channels, in_channels, kh, kw])  # [OIkk]
    assert_shape(x, [batch_size, in_channels, None, None])  # [NIHW]
    assert_shape(styles, [batch_size, in_channels])  # [NI]

    # Pre-normalize inputs to avoid FP16 overflow.
    if x.dtype == torch.float16 and demodulate:
        weight_max = torch.linalg.vector_norm(weight, ord=float("inf"), dim=(1, 2, 3), keepdim=True)
        weight = weight * (1 / np.sqrt(in_channels * kh * kw) / weight_max)  # max_Ikk
        styles = styles / torch.linalg.vector_norm(styles, ord=float("inf"), dim=1, keepdim=True)  # max_I

    # Per-sample weights and demodulation coefficients.
    w = None
    dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, -1, 1, 1)  # [NOIkk]
    if demodulate:
        assert w is not None
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [NO]
    if demodulate and fused_modconv:
        assert w is not None and dcoefs is not None
        w = w * dcoefs.reshape(batch_size, -1, 1, 1, 1)  # [NOIkk]

    # Non-fused: scale the activations before and after the convolution.
    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch_size, -1, 1, 1)
        x = conv2d_resample(
            x,
            weight.to(x.dtype),
            f=resample_filter,
            up=up,
            down=down,
            padding=padding,
            flip_weight=flip_weight,
        )
        if dcoefs is not None and noise is not None:
            x = torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1))
        elif dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(batch_size, -1, 1, 1)
        elif noise is not None:
            x = x + noise.to(x.dtype)
        return x

    # Fused: one grouped convolution, a group per sample.
    assert w is not None
    x = x.reshape(1, -1, *x.shape[2:])  # [1, N*I, H, W]
    w = w.reshape(-1, in_channels, kh, kw)  # [N*O, I, k, k]
    x = conv2d_resample(
        x,
        w.to(x.dtype),
        f=resample_filter,
        up=up,
        down=down,
        padding=padding,
        groups=batch_size,
        flip_weight=flip_weight,
    )
    x = x.reshape(batch_size, -1, *x.shape[2:])  # [N, O, H', W']
    if noise is not None:
        # The reference adds in place, which computes in the promoted dtype and rounds to x's dtype.
        x = (x + noise).to(x.dtype)
    return x
