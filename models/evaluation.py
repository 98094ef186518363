"""Measure a model pack: classifier accuracy, attribute statistics, edit flip rates and the DT metric.

The measurements read the labels of edited frames from two sources: the pack's evaluator
classifiers (independent of the steering ones, as in the paper) and, where the generator knows them,
the ground truth (`G.attribute_labels(ws)`, as the procedural demo world does). Everything here is
deterministic given its `torch.Generator`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.dt import dt_auc, dt_curve, matched_range_scores
from models.ials import EditAttribute, edit
from models.networks.classifier import AttributeClassifier
from models.sampling import sample_ws

__all__ = [
    "METHODS",
    "EditMethod",
    "attribute_statistics",
    "classify_frames",
    "classify_images",
    "dt_comparison",
    "flip_rates",
    "merge_dt",
    "sample_source_faces",
]


@dataclass(frozen=True)
class EditMethod:
    """An editing method as IALS hyperparameters: `(lambda1, lambda2)` on attribute-level directions."""

    name: str
    lambda1: float
    lambda2: float
    direction_kind: str


# The methods of the paper's Table 1, as IALS settings (lambda1 = lambda2 = 1 is the conditional
# attribute-level baseline of that kind of direction).
METHODS: tuple[EditMethod, ...] = (
    EditMethod("IALS (0.75, 0)", 0.75, 0.0, "interfacegan"),
    EditMethod("InterfaceGAN (1, 1)", 1.0, 1.0, "interfacegan"),
    EditMethod("GANSpace (1, 1)", 1.0, 1.0, "ganspace"),
    EditMethod("instance-aware primal only (0.75, 1)", 0.75, 1.0, "interfacegan"),
    EditMethod("instance-aware condition only (1, 0)", 1.0, 0.0, "interfacegan"),
)


def _ground_truth_labels(G: Any, ws: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """`[N, F]` bool labels per attribute for frames `ws` `[N, F, num_ws, w_dim]`."""
    n, f = ws.shape[:2]
    flat = ws.reshape(n * f, *ws.shape[2:])
    labels = G.attribute_labels(flat)
    return {name: labels[name].reshape(n, f).cpu() for name in names}


def classify_frames(
    G: Any,
    ws: torch.Tensor,
    classifiers: Mapping[str, AttributeClassifier],
    *,
    batch_size: int = 256,
    synthesis_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Render frames and label them with classifiers.

    Args:
        G: Generator with `synthesis`.
        ws: Frames `[N, F, num_ws, w_dim]`.
        classifiers: Attribute name -> classifier (class 1 = present), on G's device, eval mode.
        batch_size: Images per render.
        synthesis_kwargs: Extra arguments of `G.synthesis` (`noise_mode` defaults to 'const').

    Returns:
        Attribute name -> `[N, F]` bool labels (on CPU).
    """
    kwargs = {"noise_mode": "const", **dict(synthesis_kwargs or {})}
    return _label_frames(ws, classifiers, batch_size, lambda chunk: G.synthesis(chunk, **kwargs))


def classify_images(
    images: torch.Tensor, classifiers: Mapping[str, AttributeClassifier], *, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """`classify_frames` of frames already rendered: images `[N, F, C, H, W]` -> name -> `[N, F]` bool
    labels (on CPU)."""
    return _label_frames(images, classifiers, batch_size, lambda chunk: chunk)


def _label_frames(
    frames: torch.Tensor,
    classifiers: Mapping[str, AttributeClassifier],
    batch_size: int,
    to_images: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Labels `[N, F]` of frames `[N, F, ...]`, `batch_size` flattened frames at a time turned into
    images by `to_images`."""
    n, f = frames.shape[:2]
    flat = frames.reshape(n * f, *frames.shape[2:])
    out: dict[str, list[torch.Tensor]] = {name: [] for name in classifiers}
    with torch.no_grad():
        for start in range(0, flat.shape[0], batch_size):
            images = to_images(flat[start : start + batch_size])
            for name, classifier in classifiers.items():
                out[name].append((classifier.logits(images).argmax(dim=1) == 1).cpu())
    return {name: torch.cat(parts).reshape(n, f) for name, parts in out.items()}


def attribute_statistics(labels: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Frequencies and phi coefficients (Pearson correlation of binary labels) of labelled faces.

    Args:
        labels: Attribute name -> `[N]` bool labels.

    Returns:
        `{"frequency": {name: p}, "phi": {a: {b: phi}}}`.
    """
    names = list(labels)
    x = torch.stack([labels[name].double() for name in names], dim=1).numpy()  # [N, A]
    freq = x.mean(axis=0)
    std = x.std(axis=0)
    centered = x - freq
    cov = centered.T @ centered / x.shape[0]
    phi = cov / np.maximum(np.outer(std, std), 1e-12)
    return {
        "frequency": {a: float(freq[i]) for i, a in enumerate(names)},
        "phi": {a: {b: float(phi[i, j]) for j, b in enumerate(names) if b != a} for i, a in enumerate(names)},
    }


def sample_source_faces(
    G: Any,
    *,
    label_fn: Callable[[torch.Tensor], torch.Tensor],
    want: bool,
    num: int,
    truncation_psi: float,
    generator: torch.Generator,
    device: torch.device | str,
    batch_size: int = 512,
    max_draws: int = 200_000,
) -> torch.Tensor:
    """Draw `num` faces whose label (by `label_fn`) equals `want`.

    Args:
        G: Generator with `mapping`.
        label_fn: `[B, num_ws, w_dim]` -> `[B]` bool labels.
        want: The label the faces must start with.
        num: How many faces.
        truncation_psi: Truncation of the drawn faces.
        generator: Source of the latents.
        device: Where the latents go.
        batch_size: Latents drawn per round.
        max_draws: Give up after this many latents.

    Returns:
        `[num, num_ws, w_dim]` latents.

    Raises:
        RuntimeError: If too few faces with the label are found in `max_draws`.
    """
    found: list[torch.Tensor] = []
    count = drawn = 0
    while count < num:
        if drawn >= max_draws:
            raise RuntimeError(f"Found only {count} of {num} faces with label {want} in {drawn} draws")
        ws = sample_ws(G, n=batch_size, generator=generator, truncation_psi=truncation_psi, device=device)
        drawn += batch_size
        keep = ws[label_fn(ws).to(ws.device) == want]
        found.append(keep)
        count += keep.shape[0]
    return torch.cat(found)[:num]


def _edit_frames(
    pack: Any,
    ws: torch.Tensor,
    *,
    primal: str,
    conditions: Sequence[str],
    sign: int,
    steps: int,
    step: float,
    method: EditMethod,
    batch_size: int,
    label_with: Mapping[str, AttributeClassifier] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Frames `[N, steps + 1, num_ws, w_dim]` of an edit with the pack's steering classifiers, and with
    `label_with` the labels `[N, steps + 1]` of every frame by those classifiers (`classify_images` of
    the edit's own images, one chunk of `batch_size` faces at a time; else None). The steering
    classifiers run only where a gradient needs them (`edit(scores=False)`)."""

    def attribute(name: str) -> EditAttribute:
        attr = pack.attributes[name]
        return EditAttribute(name, attr.steering, attr.directions[method.direction_kind])

    chunks: list[torch.Tensor] = []
    label_chunks: dict[str, list[torch.Tensor]] = {name: [] for name in label_with or {}}
    for start in range(0, ws.shape[0], batch_size):
        result = edit(
            pack.generator,
            ws[start : start + batch_size],
            primal=attribute(primal),
            conditions=[attribute(c) for c in conditions],
            steps=steps,
            step=sign * step,
            lambda1=method.lambda1,
            lambda2=method.lambda2,
            return_images=label_with is not None,
            scores=False,
            synthesis_kwargs=pack.edit_synthesis_kwargs,
            device=pack.device,
        )
        chunks.append(result.ws)
        if label_with is not None:
            assert result.images is not None
            for name, labels in classify_images(result.images, label_with).items():
                label_chunks[name].append(labels)
    frames = torch.cat(chunks)
    if label_with is None:
        return frames, None
    return frames, {name: torch.cat(parts) for name, parts in label_chunks.items()}


def flip_rates(
    pack: Any,
    *,
    num: int,
    steps: int,
    step: float,
    lambda1: float,
    lambda2: float,
    truncation_psi: float,
    seed: int,
    direction_kinds: Sequence[str] | None = None,
    attributes: Sequence[str] | None = None,
    batch_size: int = 200,
    on_done: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Fraction of faces whose label flips in a one-attribute edit (no condition).

    Labels are the ground truth where the generator has it, else the evaluator's (`_labeller`).

    For each attribute, direction kind and sign, `num` faces whose ground-truth label starts on the
    other side are edited for `steps` steps; the flip rate is the fraction whose last frame has
    the other label. The same faces serve every direction kind.

    Args:
        pack: A `ModelPack` whose generator has ground truth (`attribute_labels`).
        num: Faces per (attribute, sign).
        steps: Edit steps.
        step: Step size (> 0; the sign is the edit's direction).
        lambda1: IALS lambda1.
        lambda2: IALS lambda2 (unused without conditions, recorded for completeness).
        truncation_psi: Truncation of the faces.
        seed: Seed of the faces.
        direction_kinds: Kinds to measure (default: every kind of each attribute).
        attributes: Attributes to measure (default: all).
        batch_size: Faces per edit call.
        on_done: Called with a label after each (attribute, sign, kind).

    Returns:
        `{attribute: {kind: {"+": rate, "-": rate}}}`.
    """
    G = pack.generator
    names = list(attributes or pack.attributes)
    rates: dict[str, dict[str, dict[str, float]]] = {}
    for name in names:
        a_index = list(pack.attributes).index(name)  # The pack's order: a subset measures the same faces.
        kinds = list(direction_kinds or pack.attributes[name].directions)
        rates[name] = {kind: {} for kind in kinds}
        label_fn = _labeller(pack, name)
        for sign in (1, -1):
            gen = torch.Generator(device="cpu").manual_seed(seed * 1000 + a_index * 2 + (sign < 0))
            ws0 = sample_source_faces(
                G,
                label_fn=label_fn,
                want=sign < 0,
                num=num,
                truncation_psi=truncation_psi,
                generator=gen,
                device=pack.device,
            )
            for kind in kinds:
                method = EditMethod(kind, lambda1, lambda2, kind)
                frames, _ = _edit_frames(
                    pack, ws0, primal=name, conditions=(), sign=sign, steps=steps, step=step,
                    method=method, batch_size=batch_size,
                )
                flipped = (label_fn(frames[:, -1]) != label_fn(frames[:, 0])).double().mean()
                rates[name][kind]["+" if sign > 0 else "-"] = float(flipped)
                if on_done is not None:
                    on_done(f"{name}{'+' if sign > 0 else '-'} {kind}")
    return rates


def dt_comparison(
    pack: Any,
    *,
    methods: Sequence[EditMethod] = METHODS,
    num: int,
    steps: int,
    step: float,
    truncation_psi: float,
    seed: int,
    attributes: Sequence[str] | None = None,
    primals: Sequence[str] | None = None,
    conditions: Sequence[str] | None = None,
    batch_size: int = 200,
    on_done: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The disentanglement-transformation (DT) comparison of the paper's Table 1, per method.

    `primals` and `conditions` restrict the primal and condition attributes (of `attributes`), so
    that the comparison can run in parts (in parallel processes) joined by `merge_dt`; a face set
    depends only on the primal, its sign and `seed`, so the parts equal the whole.

    For every ordered pair (primal A, condition B) and both directions, `num` faces whose primal
    label starts on the other side are edited with B as condition, by every method, from the same
    faces. The frames are labelled by the ground truth (where the generator has it) and by the
    evaluators (where the pack has them for A and B). Per pair and labeller: the DT curve's AUC, the
    primal flip rate `p_steps`, the condition kept `q_steps`; and, for each method against the first
    (`methods[0]`, IALS), the matched-range score: the mean fraction of the condition kept over the
    range of primal change both reach (`models.dt.matched_range_scores`).

    Returns:
        `{"settings": ..., "methods": {name: {labeller: {"dt_auc", "p", "q", "matched_range",
        "pairs"}}}}` with means over all ordered pairs and both directions.
    """
    G = pack.generator
    names = list(attributes or pack.attributes)
    for what, chosen in (("primals", primals), ("conditions", conditions)):
        unknown = sorted(set(chosen or ()) - set(names))
        if unknown:
            raise ValueError(f"Unknown {what} {unknown}; the attributes are {names}")
    has_truth = hasattr(G, "attribute_labels")
    evaluators = {
        n: pack.attributes[n].evaluator for n in names if pack.attributes[n].evaluator is not None
    }
    labellers = (["ground_truth"] if has_truth else []) + (["evaluators"] if evaluators else [])
    per: dict[str, dict[str, list[dict[str, Any]]]] = {
        m.name: {lb: [] for lb in labellers} for m in methods
    }
    for a_index, (primal, sign) in enumerate(itertools.product(names, (1, -1))):
        if primals is not None and primal not in primals:
            continue
        gen = torch.Generator(device="cpu").manual_seed(seed * 1000 + a_index)
        ws0 = sample_source_faces(
            G, label_fn=_labeller(pack, primal), want=sign < 0, num=num, truncation_psi=truncation_psi,
            generator=gen, device=pack.device,
        )
        for condition in names:
            if condition == primal or (conditions is not None and condition not in conditions):
                continue
            curves: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
            for method in methods:
                kind = method.direction_kind
                if any(kind not in pack.attributes[x].directions for x in (primal, condition)):
                    continue
                evaluated = primal in evaluators and condition in evaluators
                frames, evaluator_labels = _edit_frames(
                    pack, ws0, primal=primal, conditions=[condition], sign=sign, steps=steps, step=step,
                    method=method, batch_size=batch_size,
                    label_with={x: evaluators[x] for x in (primal, condition)} if evaluated else None,
                )
                label_sets: dict[str, dict[str, torch.Tensor]] = {}
                if has_truth:
                    label_sets["ground_truth"] = _ground_truth_labels(G, frames, [primal, condition])
                if evaluator_labels is not None:
                    label_sets["evaluators"] = evaluator_labels
                curves[method.name] = {}
                for labeller, labels in label_sets.items():
                    p, q = dt_curve(labels[primal], labels[condition])
                    curves[method.name][labeller] = (p, q)
                    per[method.name][labeller].append({
                        "primal": primal, "condition": condition, "sign": sign,
                        "dt_auc": dt_auc(p, q), "p": float(p[-1]), "q": float(q[-1]),
                    })
            # Matched range of every method against the first (IALS), on this pair's curves.
            reference = methods[0].name
            for method in methods[1:]:
                for labeller in labellers:
                    ours, theirs = curves.get(reference, {}), curves.get(method.name, {})
                    if labeller not in ours or labeller not in theirs:
                        continue
                    matched = matched_range_scores(*ours[labeller], *theirs[labeller])
                    per[reference][labeller][-1][f"matched_vs_{method.name}"] = matched.score_a
                    per[method.name][labeller][-1]["matched_range"] = matched.score_b
            if on_done is not None:
                on_done(f"{primal}{'+' if sign > 0 else '-'} | {condition}")
    settings = {"faces": num, "steps": steps, "step": step, "truncation_psi": truncation_psi, "seed": seed}
    return _summarize_dt(per, methods, settings)


def merge_dt(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Join `dt_comparison` results of disjoint parts (`primals`, `conditions`) with equal settings."""
    if not parts:
        raise ValueError("Nothing to merge")
    settings = parts[0]["settings"]
    if any(part["settings"] != settings for part in parts):
        raise ValueError("The parts were measured with different settings")
    methods = [
        EditMethod(name, entry["lambda1"], entry["lambda2"], entry["direction_kind"])
        for name, entry in parts[0]["methods"].items()
    ]
    per: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for part in parts:
        for method_name, labellers in part["pairs"].items():
            for labeller, rows in labellers.items():
                per.setdefault(method_name, {}).setdefault(labeller, []).extend(rows)
    # The order of one `dt_comparison` run (primal, sign, condition, in the parts' attribute order), so
    # that the means are summed in the same order whatever the parts.
    order: dict[str, int] = {}
    for part in parts:
        for labellers in part["pairs"].values():
            for rows in labellers.values():
                for row in rows:
                    for name in (row["primal"], row["condition"]):
                        order.setdefault(name, len(order))
    for labellers in per.values():
        for rows in labellers.values():
            rows.sort(key=lambda r: (order[r["primal"]], -r["sign"], order[r["condition"]]))
    return _summarize_dt(per, methods, settings)


def _summarize_dt(
    per: Mapping[str, Mapping[str, list[dict[str, Any]]]],
    methods: Sequence[EditMethod],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for method in methods:
        summary[method.name] = {
            "lambda1": method.lambda1, "lambda2": method.lambda2, "direction_kind": method.direction_kind,
        }
        for labeller, rows in per.get(method.name, {}).items():
            if not rows:
                continue
            entry: dict[str, Any] = {
                "dt_auc": _mean(rows, "dt_auc"), "p": _mean(rows, "p"), "q": _mean(rows, "q"),
                "worst_p": min(r["p"] for r in rows), "pairs": len(rows),
            }
            if method.name != methods[0].name:
                entry["matched_range"] = _mean(rows, "matched_range")
                reference_rows = per.get(methods[0].name, {}).get(labeller, [])
                entry["ials_matched_range"] = _mean(reference_rows, f"matched_vs_{method.name}")
            summary[method.name][labeller] = entry
    return {"settings": dict(settings), "methods": summary, "pairs": per}


def _labeller(pack: Any, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Labels of `name` for latents `[B, num_ws, w_dim]`: the ground truth where the generator has it,
    else the evaluator's (or, without one, the steering classifier's) decision on the rendered image."""
    G = pack.generator
    if hasattr(G, "attribute_labels"):
        return lambda ws: G.attribute_labels(ws)[name]
    attr = pack.attributes[name]
    classifier = attr.evaluator if attr.evaluator is not None else attr.steering
    return lambda ws: classify_frames(G, ws.unsqueeze(1), {name: classifier})[name][:, 0]


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in rows if key in r and not math.isnan(float(r[key]))]
    return float(np.mean(values)) if values else float("nan")
