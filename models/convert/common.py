"""What the converters share: their error type and the explicit key table that maps source tensors."""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any, NamedTuple

import torch
from torch import nn

__all__ = [
    "ConvertError",
    "KeyRule",
    "error_line",
    "load_converted",
    "map_tensors",
    "read_head",
    "torch_load",
    "torch_load_detail",
]

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format since torch 1.6 is a zip archive.
# NVIDIA's network pickles name these modules near their start (training_set_kwargs, G).
NVIDIA_MARKERS = (b"torch_utils.persistence", b"dnnlib")
HEAD_BYTES = 1 << 16


class ConvertError(ValueError):
    """A checkpoint that cannot be converted; the message names the format expected and the key at fault."""


def error_line(err: BaseException, limit: int = 200) -> str:
    """`ErrType: first line` of an exception, shortened: for one-line messages that wrap a library error."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def read_head(f: IO[bytes], size: int = HEAD_BYTES) -> bytes:
    """The first `size` bytes of a seekable file, which is left where it was (b"" if not seekable)."""
    if not f.seekable():
        return b""
    start = f.tell()
    try:
        return f.read(size)
    finally:
        f.seek(start)


def torch_load_detail(err: BaseException) -> str:
    """`ErrType: reason` of a `torch.load` failure, one line, without torch's advice to load unsafely."""
    text = str(err)
    if "WeightsUnpickler error:" in text:  # torch's preamble suggests weights_only=False; drop it.
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    for advice in (
        " Please use",
        " Re-running",
        " Check the documentation",
        " This is an internal",
        " If you",
    ):
        first = first.split(advice, 1)[0]
    if "weights_only" in first or "safe_globals" in first:
        first = ""
    first = first.strip()
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def torch_load(f: IO[bytes], what: str, *, allowed: Iterable[Any] = ()) -> Any:
    """`torch.load(f, map_location="cpu", weights_only=True)`, its failures as one-line `ConvertError`s.

    torch's own messages span lines and advise `weights_only=False` or `add_safe_globals`, the unsafe
    step this refuses; they are replaced by one line that keeps torch's reason. Common mistakes are
    named: an empty file, and an NVIDIA network pickle (for `ials convert nvidia-pkl`).

    Args:
        f: An open binary file.
        what: The format expected, for messages ("a rosinality ... checkpoint (.pt)").
        allowed: Classes allowed beyond weights (`torch.serialization.safe_globals`).

    Returns:
        What the file holds.

    Raises:
        ConvertError: If torch cannot read the file weights-only.
    """
    head = read_head(f)
    if f.seekable() and not head:
        raise ConvertError(f"not {what}: empty file")
    allowed = list(allowed)
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    allow = safe_globals(allowed) if allowed and safe_globals is not None else contextlib.nullcontext()
    try:
        with warnings.catch_warnings(), allow:
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4", TypedStorage, ...
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on foreign files.
        text = str(err)
        if not head.startswith(ZIP_MAGIC) and (
            any(marker in head for marker in NVIDIA_MARKERS)
            or "torch_utils.persistence" in text
            or "dnnlib" in text
        ):
            raise ConvertError(
                f"not {what}: this is an NVIDIA pickle (torch_utils.persistence, dnnlib): use "
                "`ials convert nvidia-pkl`"
            ) from err
        plain = (
            f"; a plain pickle (protocol {head[1]}), not a torch.save file"
            if head[:1] == b"\x80" and head[1:2] in (b"\x03", b"\x04", b"\x05")
            else ""
        )
        detail = torch_load_detail(err)
        raise ConvertError(
            f"not {what}: not readable with torch.load(weights_only=True) ({detail}){plain}"
        ) from err


class KeyRule(NamedTuple):
    """One line of a key table: source keys matching `pattern` (a full match) go to `target`.

    `target` is a `re.Match.expand` template (`\\1` is the first group), or None for a source tensor that
    is consumed without a target of its own (its value is then only checked by `transform`, which must
    raise `ConvertError` on a value it does not expect). `transform` maps the source tensor to ours
    (a squeeze, a flip); None keeps it as is.
    """

    pattern: str
    target: str | None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def map_tensors(
    source: Mapping[str, torch.Tensor],
    rules: Sequence[KeyRule],
    expected: Mapping[str, torch.Tensor],
    *,
    derived: Mapping[str, torch.Tensor] | None = None,
    what: str,
) -> dict[str, torch.Tensor]:
    """Map source tensors onto our state dict with an explicit table, and check that it all fits.

    Every source key must match exactly one rule (the first that matches is used), every one of our
    keys must be filled exactly once, either by a rule or by `derived` (values that the source does
    not hold, such as constant filters), and every shape must equal ours.

    Args:
        source: The checkpoint's tensors by name.
        rules: The key table.
        expected: Our state dict (names and shapes).
        derived: Our tensors that no source key fills, by name.
        what: The format's name, for error messages.

    Returns:
        Our state dict, complete, on CPU.

    Raises:
        ConvertError: On a source key no rule matches, a target that is not ours or is filled twice,
            one of our keys left unfilled, or a shape mismatch.
    """
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    result: dict[str, torch.Tensor] = {key: value.detach().cpu() for key, value in (derived or {}).items()}
    origin: dict[str, str] = {key: "(derived)" for key in result}
    leftover: list[str] = []
    for key, tensor in source.items():
        if not isinstance(tensor, torch.Tensor):
            raise ConvertError(f"{what}: {key!r} is a {type(tensor).__name__}, expected a tensor")
        found = next(((m, rule) for regex, rule in compiled if (m := regex.fullmatch(key)) is not None), None)
        if found is None:
            leftover.append(key)
            continue
        match, rule = found
        target = match.expand(rule.target) if rule.target is not None else None
        if target is not None and target not in expected:
            raise ConvertError(
                f"{what}: {key!r} maps to {target!r}, which the converted network does not have"
            )
        if target is not None and tensor.numel() != expected[target].numel():  # before any copy
            raise ConvertError(
                f"{what}: {key!r} has shape {tuple(tensor.shape)}, but {target!r} needs "
                f"{tuple(expected[target].shape)}"
            )
        value = rule.transform(tensor) if rule.transform is not None else tensor
        if target is None:
            continue
        if target in origin:
            raise ConvertError(f"{what}: {target!r} is filled twice, by {origin[target]!r} and {key!r}")
        if tuple(value.shape) != tuple(expected[target].shape):
            raise ConvertError(
                f"{what}: {key!r} has shape {tuple(tensor.shape)}, but {target!r} needs "
                f"{tuple(expected[target].shape)}"
            )
        result[target] = value.detach().cpu()
        origin[target] = key
    problems = []
    if leftover:
        problems.append(f"source tensors that match no rule: {sorted(leftover)}")
    unfilled = sorted(set(expected) - set(result))
    if unfilled:
        problems.append(f"tensors of ours that the source does not fill: {unfilled}")
    if problems:
        raise ConvertError(f"{what}: " + "; ".join(problems))
    return result


def load_converted(module: nn.Module, tensors: Mapping[str, torch.Tensor], *, what: str) -> None:
    """Load a complete converted state dict (`strict=True`), checking names and shapes first.

    Raises:
        ConvertError: On missing, unexpected or misshapen tensors.
    """
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = [
        f"{key}: expected {tuple(own[key].shape)}, got {tuple(tensors[key].shape)}"
        for key in sorted(set(own) & set(tensors))
        if tuple(own[key].shape) != tuple(tensors[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong))
    if problems:
        raise ConvertError(f"{what}: " + "; ".join(problems))
    bad = [key for key, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ConvertError(f"{what}: non-finite values in {bad}")
    with torch.no_grad():
        module.load_state_dict({key: t.to(own[key].dtype) for key, t in tensors.items()}, strict=True)
