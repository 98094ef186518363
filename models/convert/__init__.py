"""Converters of published checkpoints into our networks (then into model packs, by `cli/convert.py`).

- `nvidia_pkl`: NVIDIA StyleGAN2-ADA network pickles, through the restricted unpickler of
  `safe_unpickle` (nothing in the file is executed).
- `rosinality`: rosinality/stylegan2-pytorch `.pt` checkpoints, by an explicit name table.
- `ials_pretrain`: the official IALS `pretrain/` folder (StyleGAN v1 generator, ResNet-18 classifiers,
  attribute-level directions).

Every converter raises `ConvertError` (a `ValueError`) naming the format it expected.
"""

from models.convert.common import ConvertError

__all__ = ["ConvertError"]
