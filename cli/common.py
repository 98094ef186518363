"""Helpers shared by the `ials` subcommands: pack resolution, latent files, devices."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from models.pack import ModelPack


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def resolve_pack_path(pack: str | None) -> Path:
    """The pack named on the command line, or the configured default (`IALS_PACK_PATH`)."""
    from service.config import get_settings

    path = Path(pack) if pack else get_settings().pack_path
    if not (path / "manifest.json").is_file():
        where = "given with --pack" if pack else "configured as the default (IALS_PACK_PATH)"
        raise CliError(f"no model pack at {path} ({where}): a pack is a folder with a manifest.json")
    return path


def load_pack_for_cli(pack: str | None, device: str) -> ModelPack:
    """Load a pack with its hashes checked, turning format errors into a CLI error."""
    from models.pack import PackError, load_pack

    path = resolve_pack_path(pack)
    try:
        return load_pack(path, device)
    except PackError as exc:
        raise CliError(f"cannot load pack {path}: {exc}") from exc


def load_latent_file(path: str, *, w_dim: int, num_ws: int) -> np.ndarray:
    """Read a `.npy` latent safely (`allow_pickle=False`) as `[N, w_dim]` or `[N, num_ws, w_dim]`.

    Accepted shapes: `[w_dim]` and `[1, w_dim]` (one `w`), `[num_ws, w_dim]` (one `w+`),
    `[N, w_dim]` (N codes `w`, N != num_ws), `[N, num_ws, w_dim]`.
    """
    try:
        # Memory-mapped first: a header that declares more data than the file holds fails here,
        # before anything is allocated.
        array = np.load(path, allow_pickle=False, mmap_mode="r")
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
            raise CliError(
                f"latent {path} must hold a numeric array, got dtype {getattr(array, 'dtype', None)}"
            )
        if array.size > MAX_LATENT_VALUES:
            raise CliError(f"latent {path} holds {array.size} values, more than {MAX_LATENT_VALUES}")
        array = np.array(array, dtype=np.float32)  # an in-memory, writable copy
    except (OSError, ValueError, EOFError) as exc:
        raise CliError(f"cannot read latent {path}: {exc}") from exc
    return normalize_latent(array, w_dim=w_dim, num_ws=num_ws, name=path)


def normalize_latent(array: np.ndarray, *, w_dim: int, num_ws: int, name: str = "latent") -> np.ndarray:
    """Shape rules of `load_latent_file`, on an array already in memory."""
    shape = tuple(array.shape)
    if array.size == 0:
        raise CliError(f"{name} is empty, shape {list(shape)}")
    if not np.isfinite(array).all():
        raise CliError(f"{name} holds NaN or infinite values")
    if shape == (w_dim,):
        return array[None]
    if array.ndim == 2 and shape[1] == w_dim:
        return array[None] if shape[0] == num_ws and num_ws != 1 else array
    if array.ndim == 3 and shape[1:] == (num_ws, w_dim):
        return array
    raise CliError(
        f"{name} must have shape [{w_dim}], [N, {w_dim}] or [N, {num_ws}, {w_dim}], got {list(shape)}"
    )


MAX_LATENT_VALUES = 64 * 2**20  # 256 MB of float32: thousands of w+ codes.
MAX_SEED = 2**32 - 1  # What np.random.RandomState accepts, as NVIDIA's generate.py seeds it.
MAX_STEPS = 1000


def int_range_arg(low: int, high: int, what: str) -> Callable[[str], int]:
    """argparse type: an integer in [low, high], named `what` in the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} lie in [{low}, {high}], got {value}")
        return value

    return parse


seed_arg = int_range_arg(0, MAX_SEED, "seeds")
steps_arg = int_range_arg(1, MAX_STEPS, "steps")


def finite_float_arg(text: str) -> float:
    """argparse type: a finite float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def float_range_arg(low: float, high: float, what: str) -> Callable[[str], float]:
    """argparse type: a float in [low, high], named `what` in the error."""

    def parse(text: str) -> float:
        value = finite_float_arg(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} lies in [{low:g}, {high:g}], got {text}")
        return value

    return parse


psi_arg = float_range_arg(-2.0, 2.0, "truncation psi")
step_arg = float_range_arg(-100.0, 100.0, "the step size")
DEVICE_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def pick_device(name: str | None) -> torch.device:
    """A torch device from its name (None: the configured `IALS_DEVICE`), with clear errors."""
    import torch

    from service.config import get_settings

    if name is None:
        name = get_settings().device

    if not DEVICE_PATTERN.match(name):
        raise CliError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"device {name!r} asked for, but CUDA is not available on this machine")
    return device


def fail(message: str) -> int:
    """Print a one-line error to stderr and return the exit status of a usage error."""
    sys.stderr.write(f"ials: error: {message}\n")
    return 2


@contextmanager
def progress_bar(desc: str, unit: str = "step") -> Iterator[Callable[[int, int], None]]:
    """An `on_step(i, n)` callback that drives a tqdm bar on stderr, created at the first call (when `n`
    is known) and closed when the block ends."""
    from tqdm import tqdm

    bar: tqdm[None] | None = None

    def on_step(i: int, n: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=n, desc=desc, unit=unit)
        bar.update(i - bar.n)

    try:
        yield on_step
    finally:
        if bar is not None:
            bar.close()
