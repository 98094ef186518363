"""Small helpers shared by the networks and the algorithms: shape checks and constructor records."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

__all__ = ["assert_shape", "conv_layout", "record_init_kwargs"]


def assert_shape(tensor: torch.Tensor, ref_shape: Sequence[int | None]) -> None:
    """Assert that `tensor` has the shape `ref_shape`, where `None` matches any size.

    Args:
        tensor: The tensor to check.
        ref_shape: Expected sizes, one per dimension; `None` is a wildcard.

    Raises:
        AssertionError: On a wrong number of dimensions or a wrong size. These are programmer
            errors; user input is validated before it reaches models/.
    """
    if tensor.ndim != len(ref_shape):
        raise AssertionError(
            f"Wrong number of dimensions: got {tensor.ndim} {tuple(tensor.shape)}, expected {len(ref_shape)}"
        )
    for idx, (size, ref_size) in enumerate(zip(tensor.shape, ref_shape, strict=True)):
        if ref_size is not None and size != ref_size:
            raise AssertionError(
                f"Wrong size for dimension {idx}: got {size} in {tuple(tensor.shape)}, expected {ref_size}"
            )


def conv_layout(x: torch.Tensor) -> torch.Tensor:
    """`x` `[N, C, H, W]` in the memory layout its device's convolutions run fastest in.

    On the CPU that is channels-last (NHWC): oneDNN convolves in it without reordering every
    activation; a training step takes 0.8 to 0.93 times the time of the default layout, a
    classifier's gradient to the images on 200 faces 0.8 to 0.87 (`bench/cpu_speedups.py`).
    Elsewhere `x` is returned as it is. Values are unchanged; the sums may be ordered differently, so
    results can differ in the last bits.
    """
    if x.device.type == "cpu" and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


ModuleT = TypeVar("ModuleT", bound=type)


def record_init_kwargs(cls: ModuleT) -> ModuleT:
    """Class decorator: store every constructor argument, defaults included, in `self.init_kwargs`.

    The record is what a model pack's manifest writes for a network, so that `cls(**init_kwargs)`
    rebuilds the same architecture. Variadic keyword arguments are flattened into the dict.
    Positional-only or variadic positional parameters are not supported.
    """
    init: Callable[..., None] = cls.__init__  # type: ignore[misc]
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        record: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                record.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                raise TypeError(f"{cls.__name__}: variadic positional arguments cannot be recorded")
            else:
                record[name] = value
        init(self, *args, **kwargs)
        # Set after __init__ (nn.Module.__init__ must run first); a decorated subclass overwrites
        # the record of its decorated base, because its wrapper returns last.
        object.__setattr__(self, "init_kwargs", record)

    cls.__init__ = wrapped  # type: ignore[misc]
    return cls
