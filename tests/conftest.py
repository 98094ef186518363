"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.packs import build_tiny_pack

# The suite runs many tiny ops; on a small shared machine intra-op threads only add contention.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pack_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 px random-weight StyleGAN2 pack with two attributes, saved once per session."""
    return build_tiny_pack(tmp_path_factory.mktemp("packs") / "tiny")
