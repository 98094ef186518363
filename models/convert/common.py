"""What the converters share: their error type and the explicit key table that maps source tensors."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["ConvertError", "KeyRule", "load_converted", "map_tensors"]


class ConvertError(ValueError):
    """A checkpoint that cannot be converted; the message names the format expected and the key at fault."""


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
        value = rule.transform(tensor) if rule.transform is not None else tensor
        if rule.target is None:
            continue
        target = match.expand(rule.target)
        if target not in expected:
            raise ConvertError(
                f"{what}: {key!r} maps to {target!r}, which the converted network does not have"
            )
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
