"""Conversions between generator output and 8-bit pictures (no files here: callers save them)."""

from __future__ import annotations

import numpy as np
import torch

from models.misc import assert_shape

__all__ = ["to_uint8", "from_uint8"]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1] to 8-bit pictures, exactly as NVIDIA's `generate.py` does it.

    `(x * 127.5 + 128).clamp(0, 255)` then truncation to `uint8`.

    Args:
        images: `[N, C, H, W]` float tensor, nominally in [-1, 1]; C is 1 or 3.

    Returns:
        `[N, H, W, C]` `uint8` array on the CPU.
    """
    assert_shape(images, [None, None, None, None])
    pixels = (images.detach().permute(0, 2, 3, 1).float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return pixels.cpu().numpy()


def from_uint8(pixels: np.ndarray, *, device: torch.device | str) -> torch.Tensor:
    """8-bit pictures to the generator's range: `x / 127.5 - 1`.

    Args:
        pixels: `[N, H, W, C]` or `[H, W, C]` `uint8` array.
        device: Where the returned tensor lives.

    Returns:
        `[N, C, H, W]` float32 tensor in [-1, 1].
    """
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    if pixels.ndim == 3:
        pixels = pixels[None]
    if pixels.ndim != 4:
        raise ValueError(f"expected [N, H, W, C] pixels, got {tuple(pixels.shape)}")
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).to(device=device, dtype=torch.float32)
    return tensor.permute(0, 3, 1, 2) / 127.5 - 1
