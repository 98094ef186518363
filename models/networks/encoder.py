"""An image-to-`w+` encoder: the start code of a GAN inversion.

A small convolutional network (strided residual blocks down to 4x4, then two linear layers) that
predicts the offsets of every `w+` row from the mean latent `w_avg`. It is trained on `(G(w), w)`
pairs of the generator it inverts (`models.inversion.train_encoder`) and ships in a model pack.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.misc import assert_shape, conv_layout, record_init_kwargs

__all__ = ["LatentEncoder"]


class _DownBlock(nn.Module):
    """Two 3x3 convolutions and a 2x average-pool, with a 1x1 pooled shortcut."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv0(x), 0.2)
        y = F.leaky_relu(self.conv1(y), 0.2)
        y = F.avg_pool2d(y, 2)
        skip = F.avg_pool2d(self.skip(x), 2)
        return (y + skip) * math.sqrt(0.5)


@record_init_kwargs
class LatentEncoder(nn.Module):
    """Images in [-1, 1] `[N, C, H, W]` -> `w+` codes `[N, num_ws, w_dim]` (= `w_avg` + offsets).

    Inputs of any size are resized to `input_resolution` first (area averaging when shrinking,
    bilinear when enlarging), as the classifiers do.
    """

    init_kwargs: dict[str, Any]  # Constructor arguments, recorded by record_init_kwargs.
    w_avg: torch.Tensor

    def __init__(
        self,
        img_resolution: int,  # Side of the generator's images.
        num_ws: int,  # Rows of the generator's w+.
        w_dim: int,  # Latent width.
        img_channels: int = 3,  # Channels of the images.
        width: int = 16,  # Channels of the first block; doubled per block up to max_channels.
        max_channels: int = 128,  # Most channels of any block.
        hidden: int = 256,  # Width of the bottleneck between the 4x4 features and the code.
        input_resolution: int | None = None,  # Input side, a power of two >= 4; None = img_resolution.
    ) -> None:
        super().__init__()
        res = img_resolution if input_resolution is None else input_resolution
        if res < 4 or res & (res - 1):
            raise ValueError(f"input_resolution must be a power of two >= 4, got {res}")
        if min(img_resolution, num_ws, w_dim, img_channels, width, max_channels, hidden) < 1:
            raise ValueError("Encoder sizes must be positive")
        self.img_resolution = img_resolution
        self.num_ws = num_ws
        self.w_dim = w_dim
        self.img_channels = img_channels
        self.input_resolution = res
        self.register_buffer("w_avg", torch.zeros([w_dim]))

        self.from_rgb = nn.Conv2d(img_channels, width, 1)
        blocks = []
        channels = width
        while res > 4:
            out_channels = min(channels * 2, max_channels)
            blocks.append(_DownBlock(channels, out_channels))
            channels = out_channels
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels * 4 * 4, hidden)
        self.out = nn.Linear(hidden, num_ws * w_dim)
        # Start at w_avg: small initial offsets.
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images `[N, img_channels, H, W]` in [-1, 1] to `w+` `[N, num_ws, w_dim]`."""
        assert_shape(images, [None, self.img_channels, None, None])
        x = images.to(torch.float32)
        if x.shape[2] != self.input_resolution or x.shape[3] != self.input_resolution:
            shrink = x.shape[2] > self.input_resolution or x.shape[3] > self.input_resolution
            size = (self.input_resolution, self.input_resolution)
            x = F.interpolate(x, size=size, mode="area") if shrink else F.interpolate(
                x, size=size, mode="bilinear", align_corners=False
            )
        x = F.leaky_relu(self.from_rgb(conv_layout(x)), 0.2)
        x = self.blocks(x)
        x = F.leaky_relu(self.fc(x.flatten(1)), 0.2)
        offsets: torch.Tensor = self.out(x).reshape(-1, self.num_ws, self.w_dim)
        return self.w_avg.reshape(1, 1, -1) + offsets
