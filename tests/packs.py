"""Small model packs built from random weights, in the real pack format."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.networks.classifier import AttributeClassifier
from models.networks.encoder import LatentEncoder
from models.networks.stylegan2 import Generator
from models.pack import PackAttribute, save_pack

TINY_W_DIM = 32


def tiny_generator(seed: int = 0) -> Generator:
    """A 16 px StyleGAN2 with narrow channels; builds in milliseconds."""
    torch.manual_seed(seed)
    generator = Generator(
        z_dim=TINY_W_DIM,
        c_dim=0,
        w_dim=TINY_W_DIM,
        img_resolution=16,
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        synthesis_kwargs={"channel_base": 256, "channel_max": 32},
    )
    return generator.eval().requires_grad_(False)


def tiny_classifier(arch: str, seed: int) -> AttributeClassifier:
    torch.manual_seed(seed)
    return AttributeClassifier(arch=arch, width=8, input_resolution=16).eval().requires_grad_(False)


def tiny_encoder(seed: int = 4) -> LatentEncoder:
    """A random-weight encoder for the tiny generator: 16 px images -> [N, num_ws, TINY_W_DIM]."""
    torch.manual_seed(seed)
    generator = tiny_generator()
    encoder = LatentEncoder(
        img_resolution=16, num_ws=generator.num_ws, w_dim=TINY_W_DIM, width=8, max_channels=16, hidden=32
    )
    encoder.w_avg.copy_(generator.mapping.w_avg)
    return encoder.eval().requires_grad_(False)


def build_tiny_pack(path: Path) -> Path:
    """Save a pack with attributes `smiling` (with an evaluator) and `young`, all directions random,
    and an encoder."""
    gen = torch.Generator().manual_seed(1)

    def directions(*kinds: str) -> dict[str, torch.Tensor]:
        return {
            kind: nn.functional.normalize(torch.randn(TINY_W_DIM, generator=gen), dim=0) for kind in kinds
        }

    attributes = {
        "smiling": PackAttribute(
            name="smiling",
            description="Smiling",
            steering=tiny_classifier("resnet18", 1),
            evaluator=tiny_classifier("resnet50", 2),
            directions=directions("interfacegan", "averaged"),
        ),
        "young": PackAttribute(
            name="young",
            description="Young",
            steering=tiny_classifier("resnet18", 3),
            evaluator=None,
            directions=directions("interfacegan", "ganspace"),
        ),
    }
    return save_pack(
        path,
        name="tiny",
        description="A 16 px random-weight test pack",
        generator=tiny_generator(),
        generator_kind="stylegan2",
        attributes=attributes,
        encoder=tiny_encoder(),
    )
