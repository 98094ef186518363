"""NVIDIA StyleGAN2-ADA network pickles (`network-snapshot-*.pkl`, `ffhq.pkl`, ...) to our StyleGAN2.

The file is a pickle of `dict(G=..., D=..., G_ema=..., training_set_kwargs=..., augment_pipe=...)`
whose networks are `torch_utils.persistence` objects. It is read by `safe_unpickle.restricted_load`,
which never runs the module source stored in it. `G_ema` is then rebuilt as our
`models.networks.stylegan2.Generator` from its recorded constructor arguments (`_init_args`,
`_init_kwargs`, as NVIDIA's `legacy.py` rebuilds with `type(old)(**old.init_kwargs)`), unknown
arguments refused, and filled with its parameters and buffers under NVIDIA's own names, which are ours.
"""

from __future__ import annotations

import inspect
from typing import IO, Any

import numpy as np
import torch

from models.convert.common import ZIP_MAGIC, ConvertError, error_line, load_converted, read_head
from models.convert.safe_unpickle import PersistentObject, UnsafePickleError, restricted_load
from models.networks.stylegan2 import (
    Generator,
    MappingNetwork,
    SynthesisBlock,
    SynthesisLayer,
    SynthesisNetwork,
)

__all__ = ["FORMAT_NAME", "load_nvidia_pkl"]

FORMAT_NAME = "an NVIDIA StyleGAN2-ADA network pickle (.pkl)"
PERSISTENCE_VERSION = 6  # torch_utils/persistence.py `_version` of stylegan2-ada-pytorch.
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # The first record of a torch.save file in the legacy format.


def _params(cls: type, *exclude: str) -> set[str]:
    return {
        name
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind is not inspect.Parameter.VAR_KEYWORD and name not in exclude
    }


_GENERATOR_ARGS = list(inspect.signature(Generator).parameters)
_MAPPING_KWARGS = _params(MappingNetwork, "z_dim", "c_dim", "w_dim", "num_ws")
_SYNTHESIS_KWARGS = (
    _params(SynthesisNetwork, "w_dim", "img_resolution", "img_channels")
    | _params(SynthesisBlock, "in_channels", "out_channels", "w_dim", "resolution", "img_channels", "is_last",
              "use_fp16")
    | _params(SynthesisLayer, "in_channels", "out_channels", "w_dim", "resolution", "kernel_size", "up",
              "resample_filter", "conv_clamp", "channels_last")
)  # fmt: skip


def _plain(value: Any, where: str) -> Any:
    """A constructor argument as plain JSON-able Python: EasyDicts to dicts, NumPy scalars to numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ConvertError(f"{FORMAT_NAME}: constructor argument {where} is a {type(value).__name__}")


def _tensors(obj: PersistentObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a recorded module and its submodules, by state-dict name."""
    state = obj.state
    tensors: dict[str, torch.Tensor] = {}
    skip = state.get("_non_persistent_buffers_set") or set()
    for table in ("_parameters", "_buffers"):
        for name, tensor in (state.get(table) or {}).items():
            if tensor is None or (table == "_buffers" and name in skip):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise ConvertError(
                    f"{FORMAT_NAME}: {prefix}{name} is a {type(tensor).__name__}, not a tensor"
                )
            tensors[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentObject):
            raise ConvertError(
                f"{FORMAT_NAME}: submodule {prefix}{name} is a {type(child).__name__}, not a network record"
            )
        tensors.update(_tensors(child, f"{prefix}{name}."))
    return tensors


def _classes(obj: PersistentObject) -> set[str]:
    names = {obj.class_name}
    for child in (obj.state.get("_modules") or {}).values():
        if isinstance(child, PersistentObject):
            names |= _classes(child)
    return names


def _generator_kwargs(obj: PersistentObject) -> dict[str, Any]:
    """G_ema's constructor arguments, checked against ours."""
    args = obj.state.get("_init_args", ())
    kwargs = obj.state.get("_init_kwargs", {})
    if not isinstance(args, tuple | list) or not isinstance(kwargs, dict):
        raise ConvertError(
            f"{FORMAT_NAME}: G_ema has no recorded constructor arguments (_init_args, _init_kwargs)"
        )
    if len(args) > len(_GENERATOR_ARGS):
        raise ConvertError(f"{FORMAT_NAME}: G_ema has {len(args)} positional arguments, ours takes at most 7")
    given = {**dict(zip(_GENERATOR_ARGS, args, strict=False)), **kwargs}
    merged: dict[str, Any] = _plain(given, "G_ema")
    unknown = sorted(set(merged) - set(_GENERATOR_ARGS))
    unknown += [
        f"mapping_kwargs.{k}" for k in sorted(set(merged.get("mapping_kwargs") or {}) - _MAPPING_KWARGS)
    ]
    unknown += [
        f"synthesis_kwargs.{k}" for k in sorted(set(merged.get("synthesis_kwargs") or {}) - _SYNTHESIS_KWARGS)
    ]
    if unknown:
        raise ConvertError(
            f"{FORMAT_NAME}: G_ema has constructor arguments this converter does not know: {unknown}"
        )
    missing = [
        name for name in ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels") if name not in merged
    ]
    if missing:
        raise ConvertError(f"{FORMAT_NAME}: G_ema lacks the constructor arguments {missing}")
    return merged


def load_nvidia_pkl(f: IO[bytes]) -> Generator:
    """Read `G_ema` of an NVIDIA StyleGAN2-ADA pickle into our StyleGAN2 generator.

    Args:
        f: The pickle, an open binary file.

    Returns:
        Our `Generator` in eval mode without gradients, with NVIDIA's kwargs (`init_kwargs`),
        weights, `noise_const` buffers and `mapping.w_avg`.

    Raises:
        ConvertError: If the file is not such a pickle (not a pickle, a refused name, a TensorFlow or
            StyleGAN3 pickle, no `G_ema`), or G_ema's kwargs or tensors do not fit our generator. Any
            other failure while reading or rebuilding (a corrupt file) is one too; only
            `KeyboardInterrupt` and `SystemExit` pass through.
    """
    head = read_head(f, 4)
    if f.seekable() and not head:
        raise ConvertError(f"not {FORMAT_NAME}: empty file")
    if head.startswith(ZIP_MAGIC):
        raise ConvertError(
            f"not {FORMAT_NAME}: a torch.save checkpoint (a zip archive); did you mean "
            "`ials convert rosinality`?"
        )
    try:
        data = restricted_load(f)
    except UnsafePickleError as err:
        raise ConvertError(f"not {FORMAT_NAME}, or an unsafe one: {err}") from err
    except Exception as err:  # Corrupt files: UnpicklingError, EOFError, MemoryError, RecursionError, ...
        raise ConvertError(f"not {FORMAT_NAME}: {error_line(err)}") from err
    if isinstance(data, int) and data == TORCH_LEGACY_MAGIC:
        raise ConvertError(
            f"not {FORMAT_NAME}: a torch.save checkpoint (legacy format); did you mean "
            "`ials convert rosinality`?"
        )
    try:
        return _rebuild(data)
    except ConvertError:
        raise
    except Exception as err:  # Records of unexpected types deep inside: TypeError, RecursionError, ...
        raise ConvertError(f"{FORMAT_NAME}: cannot rebuild G_ema: {error_line(err)}") from err


def _rebuild(data: Any) -> Generator:
    """Our generator from the unpickled data."""
    if not isinstance(data, dict) or not isinstance(data.get("G_ema"), PersistentObject):
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ConvertError(f"not {FORMAT_NAME}: expected a dict with a G_ema network, found {found}")
    obj: PersistentObject = data["G_ema"]
    if obj.type != "class" or obj.version != PERSISTENCE_VERSION:
        raise ConvertError(
            f"{FORMAT_NAME}: G_ema is a persistence record of type {obj.type!r} version {obj.version!r}; "
            f"this converter reads type 'class' version {PERSISTENCE_VERSION}"
        )
    if "class SynthesisInput" in obj.module_src or "SynthesisInput" in _classes(obj):
        raise ConvertError("StyleGAN3 pickles are not supported yet; convert a StyleGAN2-ADA pickle")
    if obj.class_name != "Generator":
        raise ConvertError(f"{FORMAT_NAME}: G_ema is a {obj.class_name!r}, expected a 'Generator'")

    kwargs = _generator_kwargs(obj)
    try:
        G = Generator(**kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as err:
        raise ConvertError(
            f"{FORMAT_NAME}: cannot build a generator from G_ema's kwargs {kwargs}: {error_line(err)}"
        ) from err
    # Names and shapes are checked before any copy or cast (a stride-0 view may claim terabytes).
    load_converted(G, _tensors(obj), what=f"{FORMAT_NAME}: G_ema")
    return G.eval().requires_grad_(False)
