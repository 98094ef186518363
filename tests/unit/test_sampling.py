"""Seed -> z as NVIDIA's generate.py, and ws sampling through a mapping network (models/sampling.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from models.sampling import sample_ws, z_from_seeds


class ToyMapping(torch.nn.Module):
    """NVIDIA's mapping interface: (z, c) -> [N, num_ws, w_dim], with truncation towards w_avg."""

    def __init__(self, z_dim: int = 5, w_dim: int = 4, num_ws: int = 3) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, 0, w_dim, num_ws
        self.weight = torch.nn.Parameter(torch.linspace(-1, 1, z_dim * w_dim).reshape(z_dim, w_dim))
        self.w_avg = torch.full((w_dim,), 0.5)
        self.calls: list[dict[str, Any]] = []

    def mapping(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
    ) -> torch.Tensor:
        assert c.shape == (z.shape[0], 0) and z.dtype == torch.float32
        self.calls.append(
            {"psi": truncation_psi, "cutoff": truncation_cutoff, "grad": torch.is_grad_enabled()}
        )
        w = (z @ self.weight).unsqueeze(1).repeat(1, self.num_ws, 1)  # [N, L, D]
        cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
        w[:, :cutoff] = self.w_avg.lerp(w[:, :cutoff], truncation_psi)
        return w


def test_z_from_seeds_matches_generate_py() -> None:
    z = z_from_seeds([0, 85, 2**32 - 1], 512)
    assert z.shape == (3, 512) and z.dtype == torch.float32
    for row, seed in zip(z, [0, 85, 2**32 - 1], strict=True):
        expected = np.random.RandomState(seed).randn(1, 512)[0]
        np.testing.assert_array_equal(row.numpy(), expected.astype(np.float32))
    assert torch.equal(z_from_seeds([85], 512)[0], z[1])  # independent of the other seeds


@pytest.mark.parametrize("seeds", [[], [-1], [2**32], [1.5], [True]])
def test_z_from_seeds_rejects(seeds: list[Any]) -> None:
    with pytest.raises(ValueError):
        z_from_seeds(seeds, 8)


def test_sample_ws_from_seeds() -> None:
    G = ToyMapping()
    ws = sample_ws(G, [1, 2], truncation_psi=0.5, device="cpu")
    assert ws.shape == (2, G.num_ws, G.w_dim)
    # One mapping call per seed (a seed's latent does not depend on the others), one for random samples.
    assert G.calls == [{"psi": 0.5, "cutoff": None, "grad": False}] * 2
    sample_ws(G, n=3, generator=torch.Generator().manual_seed(0), device="cpu")
    assert len(G.calls) == 3
    expected = G.w_avg + 0.5 * (z_from_seeds([1, 2], G.z_dim) @ G.weight.detach() - G.w_avg)
    torch.testing.assert_close(ws, expected.unsqueeze(1).expand(-1, G.num_ws, -1))
    assert torch.equal(sample_ws(G, [2], truncation_psi=0.5, device="cpu")[0], ws[1])
    cut = sample_ws(G, [1, 2], truncation_psi=0.5, truncation_cutoff=1, device="cpu")
    torch.testing.assert_close(cut[:, 0], ws[:, 0])
    assert not torch.allclose(cut[:, 1], ws[:, 1])


def test_sample_ws_random_needs_a_generator() -> None:
    G = ToyMapping()
    first = sample_ws(G, n=4, generator=torch.Generator().manual_seed(3), device="cpu")
    second = sample_ws(G, n=4, generator=torch.Generator().manual_seed(3), device="cpu")
    assert first.shape == (4, G.num_ws, G.w_dim) and torch.equal(first, second)
    with pytest.raises(ValueError, match="explicit torch.Generator"):
        sample_ws(G, n=4, device="cpu")
    with pytest.raises(ValueError, match="exactly one"):
        sample_ws(G, [1], n=1, generator=torch.Generator(), device="cpu")
    with pytest.raises(ValueError, match="exactly one"):
        sample_ws(G, device="cpu")
    with pytest.raises(ValueError, match="n must be >= 1"):
        sample_ws(G, n=0, generator=torch.Generator(), device="cpu")
