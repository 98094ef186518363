"""Latent sampling: NVIDIA's seed -> z convention, and z -> truncated `ws` through a mapping network."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from models.misc import assert_shape

__all__ = ["MappingGenerator", "sample_ws", "truncate", "z_from_seeds"]

_MAX_SEED = 2**32 - 1  # np.random.RandomState accepts seeds in [0, 2**32 - 1]


class MappingGenerator(Protocol):
    """What sampling needs of a generator: NVIDIA's `mapping(z, c, truncation_psi=, truncation_cutoff=)`."""

    @property
    def z_dim(self) -> int: ...

    @property
    def c_dim(self) -> int: ...

    @property
    def w_dim(self) -> int: ...

    @property
    def num_ws(self) -> int: ...

    @property
    def mapping(self) -> Callable[..., torch.Tensor]: ...


def z_from_seeds(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """Latents `z` for integer seeds, drawn as NVIDIA's `generate.py` draws them.

        z_i = np.random.RandomState(seed_i).randn(1, z_dim)

    The float64 draws are returned as float32, the cast NVIDIA's mapping network applies first.

    Args:
        seeds: Seeds in [0, 2**32 - 1].
        z_dim: Dimensionality of z.

    Returns:
        `[len(seeds), z_dim]` float32 on the CPU.

    Raises:
        ValueError: On no seeds, a seed outside [0, 2**32 - 1] or a non-integer seed, or z_dim < 1.
    """
    if z_dim < 1:
        raise ValueError(f"z_dim must be >= 1, got {z_dim}")
    if len(seeds) == 0:
        raise ValueError("At least one seed is needed, got []")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= _MAX_SEED:
            raise ValueError(f"Seeds must be integers in [0, {_MAX_SEED}], got {seed!r}")
    z = np.concatenate([np.random.RandomState(int(seed)).randn(1, z_dim) for seed in seeds])  # [N, z_dim]
    return torch.from_numpy(z).to(torch.float32)


def sample_ws(
    G: MappingGenerator,
    seeds: Sequence[int] | None = None,
    *,
    n: int | None = None,
    generator: torch.Generator | None = None,
    truncation_psi: float = 1.0,
    truncation_cutoff: int | None = None,
    device: torch.device | str,
) -> torch.Tensor:
    """Sample `ws` through the mapping network with truncation, from seeds or from a torch generator.

        z = z_from_seeds(seeds) or randn(n, z_dim, generator=generator),
        ws = G.mapping(z, 0_c, truncation_psi, truncation_cutoff)   (w_avg + psi * (w - w_avg) per row)

    Each seed is mapped on its own, so its latent is the same bit for bit whichever seeds come with it.

    Args:
        G: Generator with `mapping`, `z_dim`, `c_dim`, `w_dim`, `num_ws`, already on `device`.
        seeds: Seeds as NVIDIA's `generate.py --seeds`; exclusive with `n`.
        n: Number of random samples, drawn with `generator`; exclusive with `seeds`.
        generator: The source of randomness for `n` (required then); z is drawn on its device.
        truncation_psi: Truncation psi (1 = none; the official IALS scripts use 0.5).
        truncation_cutoff: Truncate only the first rows (None = all).
        device: Where the mapping runs and `ws` is returned.

    Returns:
        `[N, num_ws, w_dim]` latents, computed under `torch.no_grad()`.

    Raises:
        ValueError: Unless exactly one of `seeds` and `n` is given, if `n` is given without a
            generator or is < 1, or on bad seeds.
    """
    if (seeds is None) == (n is None):
        raise ValueError(f"Give exactly one of seeds and n, got seeds={seeds!r}, n={n!r}")
    if seeds is not None:
        z = z_from_seeds(seeds, G.z_dim)
    else:
        assert n is not None
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if generator is None:
            raise ValueError("Random sampling needs an explicit torch.Generator, got generator=None")
        z = torch.randn((n, G.z_dim), generator=generator, device=generator.device)
    z = z.to(device)  # [N, z_dim]
    c = torch.zeros((z.shape[0], G.c_dim), device=device)  # [N, c_dim]
    # A seed's latent must not depend on the other seeds asked for with it (matrix products round
    # differently with the batch size): seeds are mapped one by one, random samples in one batch.
    chunks = [slice(i, i + 1) for i in range(z.shape[0])] if seeds is not None else [slice(None)]
    with torch.no_grad():
        ws = torch.cat([
            G.mapping(z[part], c[part], truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
            for part in chunks
        ])
    assert_shape(ws, [z.shape[0], G.num_ws, G.w_dim])
    return ws


def truncate(ws: torch.Tensor, w_avg: torch.Tensor, *, truncation_psi: float) -> torch.Tensor:
    """The truncation trick on given latents: `w_avg + psi * (w - w_avg)` on every row.

    Args:
        ws: `[N, w_dim]` or `[N, num_ws, w_dim]` latents.
        w_avg: `[w_dim]` mean latent.
        truncation_psi: psi; 1 returns `ws` unchanged.

    Returns:
        Latents of the same shape as `ws`.
    """
    assert_shape(w_avg, [ws.shape[-1]])
    if truncation_psi == 1:
        return ws
    return w_avg.to(ws.dtype).lerp(ws, truncation_psi)
