"""StyleGAN2-ADA generator (NVlabs/stylegan2-ada-pytorch `training/networks.py`) in plain PyTorch.

Constructor arguments, defaults, parameter and buffer names are NVIDIA's, so a state dict taken from an
NVIDIA generator of the same configuration loads with `strict=True` and renders the same images (see
`models/networks/ops.py` for the ops). Every network class records its constructor arguments in
`init_kwargs` (`models.misc.record_init_kwargs`), so `type(net)(**net.init_kwargs)` rebuilds it.

Differences from the reference:
- Mixed precision: a block with `use_fp16` runs in float16 only when its inputs are on CUDA and
  `force_fp32` is False. On CPU every block runs in float32 (float16 convolutions there are slow and
  poorly supported), which equals the reference called with `force_fp32=True`.
- No in-place updates on activations (`add_`, slice assignment), so `torch.autograd.grad(score, ws)`
  works with frozen weights. Truncation with a cutoff builds a new tensor instead of assigning a slice.
- `mapping_kwargs`/`synthesis_kwargs` default to `None` (= no extra arguments) and resample filters to a
  tuple, instead of the reference's shared mutable `{}` and `[1,3,3,1]` defaults.
- No discriminator, no `persistence` pickling and no profiler scopes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from models.misc import assert_shape, record_init_kwargs
from models.networks.ops import (
    activation_funcs,
    bias_act,
    conv2d_resample,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upsample2d,
)

__all__ = [
    "Conv2dLayer",
    "FullyConnectedLayer",
    "Generator",
    "MappingNetwork",
    "SynthesisBlock",
    "SynthesisLayer",
    "SynthesisNetwork",
    "ToRGBLayer",
]

NOISE_MODES = ("random", "const", "none")

# ----------------------------------------------------------------------------


@record_init_kwargs
class FullyConnectedLayer(torch.nn.Module):
    """Dense layer with equalized learning rate: `act(x @ (weight * weight_gain).T + bias * bias_gain)`."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.
    bias: torch.nn.Parameter | None

    def __init__(
        self,
        in_features: int,  # Number of input features.
        out_features: int,  # Number of output features.
        bias: bool = True,  # Apply additive bias before the activation function?
        activation: str = "linear",  # Activation function: 'relu', 'lrelu', etc.
        lr_multiplier: float = 1,  # Learning rate multiplier.
        bias_init: float = 0,  # Initial value for the additive bias.
    ) -> None:
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = (
            torch.nn.Parameter(torch.full([out_features], float(bias_init), dtype=torch.float32))
            if bias
            else None
        )
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer.

        Args:
            x: `[N, in_features]`.

        Returns:
            `[N, out_features]`, the dtype of `x`.
        """
        w = self.weight.to(x.dtype) * self.weight_gain
        b: torch.Tensor | None = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain

        if self.activation == "linear" and b is not None:
            x = torch.addmm(b.unsqueeze(0), x, w.t())
        else:
            x = x.matmul(w.t())
            x = bias_act(x, b, act=self.activation)
        return x


# ----------------------------------------------------------------------------


@record_init_kwargs
class Conv2dLayer(torch.nn.Module):
    """Convolution with equalized learning rate, optional FIR up/downsampling, bias and activation."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.
    weight: torch.Tensor
    bias: torch.Tensor | None
    resample_filter: torch.Tensor

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        out_channels: int,  # Number of output channels.
        kernel_size: int,  # Width and height of the convolution kernel.
        bias: bool = True,  # Apply additive bias before the activation function?
        activation: str = "linear",  # Activation function: 'relu', 'lrelu', etc.
        up: int = 1,  # Integer upsampling factor.
        down: int = 1,  # Integer downsampling factor.
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # Low-pass filter to apply when resampling.
        conv_clamp: float | None = None,  # Clamp the output to +-X, None = disable clamping.
        channels_last: bool = False,  # Expect the input to have memory_format=channels_last?
        trainable: bool = True,  # Update the weights of this layer during training?
    ) -> None:
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * (kernel_size**2))
        self.act_gain = activation_funcs[activation].def_gain

        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(
            memory_format=memory_format
        )
        bias_init = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias_init) if bias_init is not None else None
        else:
            self.register_buffer("weight", weight)
            if bias_init is not None:
                self.register_buffer("bias", bias_init)
            else:
                self.bias = None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        """Convolve (with resampling), add the bias, apply the activation.

        Args:
            x: `[N, in_channels, H, W]`.
            gain: Extra output gain; also scales `conv_clamp`.

        Returns:
            `[N, out_channels, H * up // down, W * up // down]`, the dtype of `x`.
        """
        w = self.weight * self.weight_gain
        b = self.bias.to(x.dtype) if self.bias is not None else None
        flip_weight = self.up == 1  # slightly faster
        x = conv2d_resample(
            x,
            w.to(x.dtype),
            f=self.resample_filter,
            up=self.up,
            down=self.down,
            padding=self.padding,
            flip_weight=flip_weight,
        )

        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=act_gain, clamp=act_clamp)


# ----------------------------------------------------------------------------


@record_init_kwargs
class MappingNetwork(torch.nn.Module):
    """Z (+ embedded label C) -> W: normalise, then `num_layers` dense layers; broadcast to `num_ws`."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.
    w_avg: torch.Tensor

    def __init__(
        self,
        z_dim: int,  # Input latent (Z) dimensionality, 0 = no latent.
        c_dim: int,  # Conditioning label (C) dimensionality, 0 = no label.
        w_dim: int,  # Intermediate latent (W) dimensionality.
        num_ws: int | None,  # Number of intermediate latents to output, None = do not broadcast.
        num_layers: int = 8,  # Number of mapping layers.
        embed_features: int | None = None,  # Label embedding dimensionality, None = same as w_dim.
        layer_features: int | None = None,  # Number of intermediate features, None = same as w_dim.
        activation: str = "lrelu",  # Activation function: 'relu', 'lrelu', etc.
        lr_multiplier: float = 0.01,  # Learning rate multiplier for the mapping layers.
        w_avg_beta: float | None = 0.995,  # Decay of the moving average of W in training, None = no tracking.
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features_list = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]

        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features_list[idx], features_list[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)

        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        skip_w_avg_update: bool = False,
    ) -> torch.Tensor:
        """Map latents to W, track `w_avg` in training mode, and truncate towards `w_avg`.

        Truncation is `w_avg + psi * (w - w_avg)` (`w_avg.lerp(w, psi)`), applied to all `num_ws` rows,
        or only to the first `truncation_cutoff` rows.

        Args:
            z: Latents `[N, z_dim]` (ignored when `z_dim == 0`).
            c: Labels `[N, c_dim]` (ignored when `c_dim == 0`).
            truncation_psi: 1 = no truncation, 0 = every row becomes `w_avg`.
            truncation_cutoff: Truncate only rows `[:truncation_cutoff]`, None = all rows.
            skip_w_avg_update: Do not update `w_avg` even in training mode.

        Returns:
            `ws` of shape `[N, num_ws, w_dim]`, or `[N, w_dim]` when `num_ws` is None.
        """
        # Embed, normalize, and concat inputs.
        x = None
        if self.z_dim > 0:
            assert z is not None
            assert_shape(z, [None, self.z_dim])
            x = normalize_2nd_moment(z.to(torch.float32))  # [N, z_dim]
        if self.c_dim > 0:
            assert c is not None
            assert_shape(c, [None, self.c_dim])
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))  # [N, embed_features]
            x = torch.cat([x, y], dim=1) if x is not None else y
        assert x is not None

        # Main layers.
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)  # [N, w_dim]

        # Update moving average of W.
        if self.w_avg_beta is not None and self.training and not skip_w_avg_update:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        # Broadcast.
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # [N, num_ws, w_dim]

        # Apply truncation.
        if truncation_psi != 1:
            assert self.w_avg_beta is not None
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x


# ----------------------------------------------------------------------------


@record_init_kwargs
class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 convolution (optionally 2x upsampling), per-pixel noise, bias and activation."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.
    resample_filter: torch.Tensor
    noise_const: torch.Tensor

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        out_channels: int,  # Number of output channels.
        w_dim: int,  # Intermediate latent (W) dimensionality.
        resolution: int,  # Resolution of this layer.
        kernel_size: int = 3,  # Convolution kernel size.
        up: int = 1,  # Integer upsampling factor.
        use_noise: bool = True,  # Enable noise input?
        activation: str = "lrelu",  # Activation function: 'relu', 'lrelu', etc.
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # Low-pass filter to apply when resampling.
        conv_clamp: float | None = None,  # Clamp the output of convolution layers to +-X, None = disable.
        channels_last: bool = False,  # Use channels_last format for the weights?
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = activation_funcs[activation].def_gain

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        )
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool = True,
        gain: float = 1,
    ) -> torch.Tensor:
        """Modulate by `w`, convolve (2x upsampling if `up == 2`), add noise and bias, activate.

        Args:
            x: `[N, in_channels, resolution // up, resolution // up]`.
            w: `[N, w_dim]`.
            noise_mode: 'random' (fresh noise from the global RNG), 'const' (`noise_const`), 'none'.
            fused_modconv: Use the grouped-convolution path of `modulated_conv2d`.
            gain: Extra output gain; also scales `conv_clamp`.

        Returns:
            `[N, out_channels, resolution, resolution]`, the dtype of `x`.
        """
        assert noise_mode in NOISE_MODES
        in_resolution = self.resolution // self.up
        assert_shape(x, [None, self.weight.shape[1], in_resolution, in_resolution])
        styles = self.affine(w)  # [N, in_channels]

        noise = None
        if self.use_noise and noise_mode == "random":
            noise = (
                torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
                * self.noise_strength
            )
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength

        flip_weight = self.up == 1  # slightly faster
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            flip_weight=flip_weight,
            fused_modconv=fused_modconv,
        )

        act_gain = self.act_gain * gain
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=act_gain, clamp=act_clamp)


# ----------------------------------------------------------------------------


@record_init_kwargs
class ToRGBLayer(torch.nn.Module):
    """Modulated 1x1 convolution without demodulation, from features to image channels."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.

    def __init__(
        self,
        in_channels: int,  # Number of input channels.
        out_channels: int,  # Number of output (color) channels.
        w_dim: int,  # Intermediate latent (W) dimensionality.
        kernel_size: int = 1,  # Convolution kernel size.
        conv_clamp: float | None = None,  # Clamp the output to +-X, None = disable clamping.
        channels_last: bool = False,  # Use channels_last format for the weights?
    ) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        )
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * (kernel_size**2))

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        """Modulated 1x1 convolution (no demodulation), bias and clamp.

        Args:
            x: `[N, in_channels, H, W]`.
            w: `[N, w_dim]`.
            fused_modconv: Use the grouped-convolution path of `modulated_conv2d`.

        Returns:
            `[N, out_channels, H, W]`, the dtype of `x`.
        """
        styles = self.affine(w) * self.weight_gain  # [N, in_channels]
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


# ----------------------------------------------------------------------------


@record_init_kwargs
class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network: [const or conv0 (2x up)], conv1, [torgb], [skip]."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.
    resample_filter: torch.Tensor
    conv0: SynthesisLayer
    torgb: ToRGBLayer
    skip: Conv2dLayer

    def __init__(
        self,
        in_channels: int,  # Number of input channels, 0 = first block.
        out_channels: int,  # Number of output channels.
        w_dim: int,  # Intermediate latent (W) dimensionality.
        resolution: int,  # Resolution of this block.
        img_channels: int,  # Number of output color channels.
        is_last: bool,  # Is this the last block?
        architecture: str = "skip",  # Architecture: 'orig', 'skip', 'resnet'.
        resample_filter: Sequence[float] = (1, 3, 3, 1),  # Low-pass filter to apply when resampling.
        conv_clamp: float | None = None,  # Clamp the output of convolution layers to +-X, None = disable.
        use_fp16: bool = False,  # Use FP16 for this block (on CUDA only)?
        fp16_channels_last: bool = False,  # Use channels-last memory format with FP16?
        **layer_kwargs: Any,  # Arguments for SynthesisLayer.
    ) -> None:
        assert architecture in ("orig", "skip", "resnet")
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0

        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))

        if in_channels != 0:
            self.conv0 = SynthesisLayer(
                in_channels,
                out_channels,
                w_dim=w_dim,
                resolution=resolution,
                up=2,
                resample_filter=resample_filter,
                conv_clamp=conv_clamp,
                channels_last=self.channels_last,
                **layer_kwargs,
            )
            self.num_conv += 1

        self.conv1 = SynthesisLayer(
            out_channels,
            out_channels,
            w_dim=w_dim,
            resolution=resolution,
            conv_clamp=conv_clamp,
            channels_last=self.channels_last,
            **layer_kwargs,
        )
        self.num_conv += 1

        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(
                out_channels,
                img_channels,
                w_dim=w_dim,
                conv_clamp=conv_clamp,
                channels_last=self.channels_last,
            )
            self.num_torgb += 1

        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(
                in_channels,
                out_channels,
                kernel_size=1,
                bias=False,
                up=2,
                resample_filter=resample_filter,
                channels_last=self.channels_last,
            )

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        force_fp32: bool = False,
        fused_modconv: bool | None = None,
        **layer_kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the block's layers and add its RGB output to the upsampled image so far.

        Args:
            x: Features `[N, in_channels, resolution / 2, resolution / 2]`, None for the first block.
            img: Image so far `[N, img_channels, resolution / 2, resolution / 2]`, or None.
            ws: `[N, num_conv + num_torgb, w_dim]`.
            force_fp32: Run in float32 even if `use_fp16`.
            fused_modconv: None = fused in eval mode when running in float32 or with batch size 1.
            **layer_kwargs: For `SynthesisLayer.forward`, e.g. `noise_mode`.

        Returns:
            `(x, img)`: features `[N, out_channels, resolution, resolution]` (float16 when the block runs
            in FP16) and the float32 image `[N, img_channels, resolution, resolution]` (None for a
            non-last block of the 'orig' and 'resnet' architectures).
        """
        assert_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim])
        w_iter = iter(ws.unbind(dim=1))
        use_fp16 = self.use_fp16 and not force_fp32 and ws.device.type == "cuda"
        dtype = torch.float16 if use_fp16 else torch.float32
        memory_format = torch.channels_last if self.channels_last and use_fp16 else torch.contiguous_format
        if fused_modconv is None:
            fused_modconv = (not self.training) and (dtype == torch.float32 or int(ws.shape[0]) == 1)

        # Input.
        if self.in_channels == 0:
            x = self.const.to(dtype=dtype, memory_format=memory_format)
            x = x.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])  # [N, C, 4, 4]
        else:
            assert x is not None
            assert_shape(x, [None, self.in_channels, self.resolution // 2, self.resolution // 2])
            x = x.to(dtype=dtype, memory_format=memory_format)

        # Main layers.
        if self.in_channels == 0:
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, gain=math.sqrt(0.5), **layer_kwargs)
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)

        # ToRGB.
        if img is not None:
            assert_shape(img, [None, self.img_channels, self.resolution // 2, self.resolution // 2])
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img + y if img is not None else y

        assert x.dtype == dtype
        assert img is None or img.dtype == torch.float32
        return x, img


# ----------------------------------------------------------------------------


@record_init_kwargs
class SynthesisNetwork(torch.nn.Module):
    """W+ -> image: a `SynthesisBlock` per resolution 4, 8, ..., `img_resolution`."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.

    def __init__(
        self,
        w_dim: int,  # Intermediate latent (W) dimensionality.
        img_resolution: int,  # Output image resolution.
        img_channels: int,  # Number of color channels.
        channel_base: int = 32768,  # Overall multiplier for the number of channels.
        channel_max: int = 512,  # Maximum number of channels in any layer.
        num_fp16_res: int = 0,  # Use FP16 for the N highest resolutions (on CUDA only).
        **block_kwargs: Any,  # Arguments for SynthesisBlock.
    ) -> None:
        assert img_resolution >= 4 and img_resolution & (img_resolution - 1) == 0
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2**i for i in range(2, self.img_resolution_log2 + 1)]
        channels_dict = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels_dict[res // 2] if res > 4 else 0
            out_channels = channels_dict[res]
            use_fp16 = res >= fp16_resolution
            is_last = res == self.img_resolution
            block = SynthesisBlock(
                in_channels,
                out_channels,
                w_dim=w_dim,
                resolution=res,
                img_channels=img_channels,
                is_last=is_last,
                use_fp16=use_fp16,
                **block_kwargs,
            )
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, **block_kwargs: Any) -> torch.Tensor:
        """Render images from per-layer latents.

        Args:
            ws: `[N, num_ws, w_dim]`. Block `b{res}` reads its `num_conv + num_torgb` rows starting after
                the `num_conv` rows of all lower resolutions (its torgb row is the next block's first).
            **block_kwargs: `noise_mode` ('random' (default), 'const', 'none'), `force_fp32`,
                `fused_modconv`; see `SynthesisBlock.forward` and `SynthesisLayer.forward`.

        Returns:
            Float32 images `[N, img_channels, img_resolution, img_resolution]`, roughly in [-1, 1].
        """
        assert_shape(ws, [None, self.num_ws, self.w_dim])
        ws = ws.to(torch.float32)
        block_ws = []
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws.append(ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
            w_idx += block.num_conv

        x: torch.Tensor | None = None
        img: torch.Tensor | None = None
        for res, cur_ws in zip(self.block_resolutions, block_ws, strict=True):
            block = getattr(self, f"b{res}")
            x, img = block(x, img, cur_ws, **block_kwargs)
        assert img is not None
        return img


# ----------------------------------------------------------------------------


@record_init_kwargs
class Generator(torch.nn.Module):
    """StyleGAN2-ADA generator: `mapping` (z, c) -> ws, then `synthesis` ws -> image."""

    init_kwargs: dict[str, Any]  # Set by @record_init_kwargs.

    def __init__(
        self,
        z_dim: int,  # Input latent (Z) dimensionality.
        c_dim: int,  # Conditioning label (C) dimensionality.
        w_dim: int,  # Intermediate latent (W) dimensionality.
        img_resolution: int,  # Output resolution.
        img_channels: int,  # Number of output color channels.
        mapping_kwargs: dict[str, Any] | None = None,  # Arguments for MappingNetwork, None = {}.
        synthesis_kwargs: dict[str, Any] | None = None,  # Arguments for SynthesisNetwork, None = {}.
    ) -> None:
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
        self.mapping = MappingNetwork(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **(mapping_kwargs or {})
        )

    @property
    def w_avg(self) -> torch.Tensor:
        """The tracked average of W, `[w_dim]` (the mapping network's `w_avg` buffer, read-only here)."""
        return self.mapping.w_avg

    def forward(
        self,
        z: torch.Tensor | None,
        c: torch.Tensor | None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        **synthesis_kwargs: Any,
    ) -> torch.Tensor:
        """Sample images: `synthesis(mapping(z, c, truncation_psi, truncation_cutoff), **synthesis_kwargs)`.

        Args:
            z: Latents `[N, z_dim]`.
            c: Labels `[N, c_dim]`; ignored (may be None or `[N, 0]`) when `c_dim == 0`.
            truncation_psi: Truncation towards `w_avg`, 1 = none.
            truncation_cutoff: Truncate only the first this many rows of ws, None = all.
            **synthesis_kwargs: For `SynthesisNetwork.forward`, e.g. `noise_mode='const'`.

        Returns:
            Float32 images `[N, img_channels, img_resolution, img_resolution]`.
        """
        ws: torch.Tensor = self.mapping(
            z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff
        )
        img: torch.Tensor = self.synthesis(ws, **synthesis_kwargs)
        return img
