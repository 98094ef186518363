"""Build the embedded demo pack from nothing: the procedural face world, its classifiers, directions and
encoder, with a measured report and a picture sheet.

`build_demo_pack(out, config)` runs these stages, each deterministic from `config.seed`:

1. generator    the procedural world (`models.networks.procedural.ProceduralGenerator`), no training;
2. steering     one ResNet-18 per attribute, trained together on shared fresh renders, on graded
                ground-truth targets `sigmoid(s * true logit)` (see `train_classifiers`);
3. evaluators   one ResNet-34 per attribute: another architecture, initialisation, psi range and image
                stream, hard ground-truth labels;
4. directions   InterfaceGAN (linear SVM on `w` labelled by the steering classifiers), averaged
                instance-specific (section 3.2), GANSpace (PCA of `w`, components matched to the
                steering scores);
5. encoder      image -> `w+` start code for inversions (`models.inversion.train_encoder`);
6. step         the default step size: the smallest of `config.step_grid` at which a 20-step IALS edit
                flips the ground-truth label of every attribute, by every direction kind, both ways, on
                >= `step_target` of faces;
7. save         `models.pack.save_pack`, then the pack is reloaded through `load_pack` (hashes checked);
8. measure      classifier accuracy, attribute statistics against the bias table (2,000 faces, and
                the population of 400,000 labels), flip rates of every direction kind, the DT
                comparison of the paper's Table 1 (ground truth and evaluators), the encoder's PSNR;
9. report       `report.json` and `sheet.png` (sampled faces and one edit strip per attribute) in `out`.

Stages 2-6 and the flip rates and DT comparison run as jobs on worker processes (`jobs`, one torch
thread each): the encoder; the steering classifiers, then directions and step; each evaluator; each
attribute's flip rates; each (primal, condition) pair of the DT comparison. Every job seeds its own
randomness, so the pack and the report do not depend on how many processes run them.

Progress is reported through `on_progress(stage, done, total)` only.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.evaluation import METHODS, attribute_statistics, dt_comparison, flip_rates, merge_dt
from models.ials import EditAttribute, edit, instance_specific_direction
from models.networks.classifier import AttributeClassifier
from models.networks.encoder import LatentEncoder
from models.networks.procedural import ATTRIBUTES, BIAS_TABLE, ProceduralGenerator
from models.pack import (
    DIRECTION_KINDS,
    WEIGHTS_DTYPES,
    ModelPack,
    PackAttribute,
    load_pack,
    round_to_dtype,
    save_pack,
)
from models.training import (
    AveragedFaces,
    averaged_direction,
    classifier_accuracy,
    ganspace_directions,
    interfacegan_direction,
    sample_training_ws,
    train_classifiers,
)

__all__ = ["DemoPackConfig", "build_demo_pack", "measure_demo_pack", "render_sheet"]

ProgressFn = Callable[[str, int, int], None]

DESCRIPTIONS = {
    "smiling": "Smiling: mouth curvature and opening",
    "young": "Young: no grey hair, wrinkles or sagging",
    "male": "Male: short hair, square jaw, heavy brows, beard",
    "eyeglasses": "Eyeglasses: frames over the eyes",
    "pose": "Pose: head turned towards the image's right (yaw > 0)",
}


@dataclass(frozen=True)
class DemoPackConfig:
    """Everything that decides the demo pack; the defaults build the committed one."""

    seed: int = 0
    img_resolution: int = 64
    # Standard deviations of W along the attribute axes (`ProceduralGenerator(attribute_scales=...)`):
    # None keeps W isotropic, where principal components carry no attribute (GANSpace finds nothing);
    # stretched, the top components are the attribute axes, as GANSpace assumes of a real W.
    world_attribute_scales: tuple[float, ...] | None = (1.8, 1.65, 1.5, 1.35, 1.2)
    # Classifiers (trained on fresh renders; psi drawn per face from the range).
    batch_size: int = 64
    lr: float = 2e-3
    steering_width: int = 16
    # Optimiser steps: one count for every attribute, or one per attribute in the order of ATTRIBUTES.
    steering_steps: int | tuple[int, ...] = (3500, 2500, 2500, 2500, 2500)
    steering_psi: tuple[float, float] = (0.7, 1.4)
    # Graded targets sigmoid(s * true logit): the margin keeps growing with the attribute, so the
    # latent gradient that IALS steers by points where the attribute grows (None = hard labels).
    steering_label_sharpness: float | None = 3.0
    evaluator_arch: str = "resnet34"
    evaluator_width: int = 12
    evaluator_steps: int | tuple[int, ...] = (2500, 2500, 1500, 1500, 1500)
    evaluator_psi: tuple[float, float] = (0.6, 1.5)
    evaluator_label_sharpness: float | None = None
    # Attribute-level directions.
    svm_samples: int = 10_000
    svm_c: float = 0.01
    averaged_samples: int = 512
    # The faces the averaged direction is the mean over: 'positive', those the steering classifier puts
    # in class 1, as the official `train_attr_level_direction.py`; or 'all'.
    averaged_faces: AveragedFaces = "positive"
    ganspace_samples: int = 10_000
    ganspace_components: int = 20
    # Encoder.
    encoder_width: int = 16  # Channels of its first block (`LatentEncoder(width=...)`).
    encoder_steps: int = 3000
    encoder_batch_size: int = 32
    encoder_lr: float = 1e-3
    encoder_psi: tuple[float, float] = (0.5, 1.2)
    # Editing defaults.
    truncation_psi: float = 0.7  # Of sampled faces (service seeds, the measurements below).
    steps: int = 20
    lambda1: float = 0.75
    lambda2: float = 0.0
    step_grid: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25, 0.3)
    step_faces: int = 100
    step_target: float = 0.9
    # Measurements (not recorded in the manifest: they do not change the pack).
    eval_faces: int = 2000
    flip_faces: int = 200
    # The DT comparison (40 primal, condition and sign triples, 5 methods) and the flip rates took
    # 2,361 s on 2 cores at 200 faces (the renderer's backward pass dominates).
    dt_faces: int = 200
    encoder_faces: int = 50
    sheet_faces: int = 32
    # Storage of the classifiers' and the encoder's weights; each job rounds its trained weights to
    # it, so directions, step and every measurement see exactly what the pack holds.
    weights_dtype: str = "float16"

    def __post_init__(self) -> None:
        _weights_dtype(self)  # A bad dtype fails here, not after the training.
        for field_name in ("steering_steps", "evaluator_steps"):
            _steps_per_attribute(self, field_name)


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - start, 1)
        return result


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _classifiers(arch: str, width: int, resolution: int, seed: int) -> dict[str, AttributeClassifier]:
    """Fresh classifiers; their initialisation reads the global RNG, so it is forked and seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {
            name: AttributeClassifier(arch, width=width, input_resolution=resolution) for name in ATTRIBUTES
        }


def _train(
    classifiers: dict[str, AttributeClassifier],
    G: ProceduralGenerator,
    config: DemoPackConfig,
    *,
    steps: int,
    psi: tuple[float, float],
    seed: int,
    label_sharpness: float | None,
    progress: Callable[[int, int], None],
) -> dict[str, list[float]]:
    result = train_classifiers(
        classifiers, G, steps=steps, batch_size=config.batch_size, lr=config.lr, truncation_psi=psi,
        generator=_seeded(seed), device="cpu", label_sharpness=label_sharpness, on_step=progress,
    )
    for classifier in classifiers.values():
        classifier.requires_grad_(False)
    return {name: training.losses for name, training in result.items()}


def _directions(
    G: ProceduralGenerator,
    steering: Mapping[str, AttributeClassifier],
    config: DemoPackConfig,
    on_progress: ProgressFn,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Attribute-level directions of every kind, and how they were matched (GANSpace)."""
    directions: dict[str, dict[str, torch.Tensor]] = {name: {} for name in ATTRIBUTES}
    # Latents labelled/scored by the steering classifiers at psi = 1 (the whole of W).
    gen = _seeded(config.seed + 30)
    n = max(config.svm_samples, config.ganspace_samples)
    ws = sample_training_ws(G, n=n, truncation_psi=1.0, generator=gen, device="cpu")  # [n, L, D]
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in ATTRIBUTES}
    chunk = 500
    with torch.no_grad():
        for i, start in enumerate(range(0, n, chunk)):
            images = G.synthesis(ws[start : start + chunk], noise_mode="const")
            for name, classifier in steering.items():
                scores[name].append(classifier.logits(images).diff(dim=1).squeeze(1))  # logit margin
            on_progress("directions: label", i + 1, math.ceil(n / chunk))
    margin = {name: torch.cat(parts) for name, parts in scores.items()}
    for i, name in enumerate(ATTRIBUTES):
        labels = margin[name][: config.svm_samples] > 0
        directions[name]["interfacegan"] = interfacegan_direction(
            ws[: config.svm_samples], labels, svm_c=config.svm_c, seed=config.seed
        )
        on_progress("directions: interfacegan", i + 1, len(ATTRIBUTES))
    avg_ws = ws[: config.averaged_samples]
    for i, name in enumerate(ATTRIBUTES):
        directions[name]["averaged"] = averaged_direction(
            G, steering[name], avg_ws, faces=config.averaged_faces, device="cpu"
        )
        on_progress("directions: averaged", i + 1, len(ATTRIBUTES))
    ganspace = ganspace_directions(
        ws[: config.ganspace_samples],
        {name: m[: config.ganspace_samples] for name, m in margin.items()},
        num_components=config.ganspace_components,
    )
    for name in ATTRIBUTES:
        directions[name]["ganspace"] = ganspace[name]
    # How the kinds relate to each other and to the ground-truth gradient (mean over faces).
    truth = _ground_truth_direction(G, ws[:512])
    info: dict[str, Any] = {}
    for name in ATTRIBUTES:
        d = directions[name]
        info[name] = {
            "cos_interfacegan_averaged": float(d["interfacegan"] @ d["averaged"]),
            "cos_interfacegan_ganspace": float(d["interfacegan"] @ d["ganspace"]),
            **{f"cos_{kind}_ground_truth": float(d[kind] @ truth[name]) for kind in d},
        }
    return directions, info


def _ground_truth_gradients(G: ProceduralGenerator, ws: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-face unit gradients `[N, w_dim]` of the true logits (w.r.t. one offset of all rows)."""
    offset = torch.zeros([ws.shape[0], G.w_dim], requires_grad=True)
    with torch.enable_grad():
        logits = G.attribute_logits(ws + offset.unsqueeze(1))
        result = {}
        for name in ATTRIBUTES:
            (grad,) = torch.autograd.grad(logits[name].sum(), offset, retain_graph=True)
            result[name] = torch.nn.functional.normalize(grad, dim=1)
    return result


def _ground_truth_direction(G: ProceduralGenerator, ws: torch.Tensor) -> dict[str, torch.Tensor]:
    """Unit mean of the per-face unit ground-truth logit gradients (w.r.t. one offset of all rows)."""
    result = {}
    for name, grads in _ground_truth_gradients(G, ws).items():
        mean = grads.mean(0)
        result[name] = mean / mean.norm()
    return result


def _gradient_alignment(pack: ModelPack, config: DemoPackConfig) -> dict[str, Any]:
    """How well each classifier's instance-specific direction `d_X(w)` (what IALS steers by) points
    where the attribute truly grows: its cosine with the true logit's gradient, per face, at the
    editing psi. Mean and median over `ALIGNMENT_FACES` faces."""
    G = pack.generator
    ws = sample_training_ws(G, n=ALIGNMENT_FACES, truncation_psi=config.truncation_psi,
                            generator=_seeded(config.seed + 75), device="cpu")
    truth = _ground_truth_gradients(G, ws)
    result: dict[str, Any] = {"faces": ALIGNMENT_FACES, "truncation_psi": config.truncation_psi}
    for name in ATTRIBUTES:
        result[name] = {}
        attr = pack.attributes[name]
        for role, classifier in (("steering", attr.steering), ("evaluator", attr.evaluator)):
            if classifier is None:
                continue
            cos = (instance_specific_direction(G, classifier, ws, target=1) * truth[name]).sum(1)
            result[name][role] = {"mean_cos": float(cos.mean()), "median_cos": float(cos.median())}
    return result


def _new_encoder(G: ProceduralGenerator, config: DemoPackConfig) -> LatentEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 40)
        encoder = LatentEncoder(
            img_resolution=G.img_resolution, num_ws=G.num_ws, w_dim=G.w_dim, width=config.encoder_width
        )
    encoder.w_avg.copy_(G.w_avg)
    return encoder


def _choose_step(
    pack: ModelPack, config: DemoPackConfig, on_progress: ProgressFn
) -> tuple[float, dict[str, Any]]:
    """The smallest step of the grid at which every attribute, direction kind and sign flips at least
    `step_target` of the faces (no condition).

    A step stops being measured at its first attribute and kind with a rate under the target
    (GANSpace, the weakest kind, is measured first): `measured[step]["rates"]` holds every rate of the
    chosen step, and of each smaller step the rates measured up to that miss, and `"worst"` is the
    lowest of the rates measured (the miss, below the target, for the smaller steps). When no step of
    the grid reaches the target, the largest is chosen, with a warning."""
    measured: dict[str, Any] = {}
    chosen = config.step_grid[-1]
    kinds = list(reversed(DIRECTION_KINDS))  # ganspace, averaged, interfacegan
    for i, step in enumerate(config.step_grid):
        rates: dict[str, dict[str, dict[str, float]]] = {}
        worst = 1.0
        for kind in kinds:
            for name in pack.attributes:
                if kind not in pack.attributes[name].directions:
                    continue
                got = flip_rates(
                    pack, num=config.step_faces, steps=config.steps, step=step, lambda1=config.lambda1,
                    lambda2=config.lambda2, truncation_psi=config.truncation_psi, seed=config.seed + 50,
                    direction_kinds=[kind], attributes=[name],
                )
                rates.setdefault(name, {})[kind] = got[name][kind]
                worst = min(worst, *got[name][kind].values())
                if worst < config.step_target:
                    break
            if worst < config.step_target:
                break
        measured[str(step)] = {"worst": worst, "rates": rates}
        on_progress("step size", i + 1, len(config.step_grid))
        if worst >= config.step_target:
            chosen = step
            break
    else:
        warnings.warn(
            f"no step of {list(config.step_grid)} flips every attribute, direction kind and sign on "
            f">= {config.step_target:.0%} of faces; the default step is the largest, {chosen}",
            stacklevel=2,
        )
    return chosen, measured


def _statistics(pack: ModelPack, config: DemoPackConfig) -> dict[str, Any]:
    """Ground-truth frequencies and phi at psi = 1 against the bias table; steering agreement."""
    G = pack.generator
    ws = sample_training_ws(G, n=config.eval_faces, truncation_psi=1.0, generator=_seeded(config.seed + 60),
                            device="cpu")
    truth = G.attribute_labels(ws)
    predicted: dict[str, list[torch.Tensor]] = {name: [] for name in ATTRIBUTES}
    with torch.no_grad():
        for start in range(0, ws.shape[0], 500):
            images = G.synthesis(ws[start : start + 500], noise_mode="const")
            for name in ATTRIBUTES:
                predicted[name].append(pack.attributes[name].steering.logits(images).argmax(1) == 1)
    steering = {name: torch.cat(parts) for name, parts in predicted.items()}
    stats = attribute_statistics(truth)
    deviations = [abs(stats["frequency"][a] - f) for a, f in BIAS_TABLE["frequencies"].items()]
    phi_rows = {}
    for pair, target in BIAS_TABLE["phi"].items():
        a, b = pair.split("|")
        phi_rows[pair] = {"target": target, "measured": stats["phi"][a][b]}
        deviations.append(abs(stats["phi"][a][b] - target))
    params = G.face_parameters(ws)
    beard = params["beard"] > 0.5
    population = _population_statistics(G, config)
    return {
        "faces": config.eval_faces,
        "truncation_psi": 1.0,
        "frequency": {
            a: {"target": BIAS_TABLE["frequencies"][a], "measured": stats["frequency"][a]} for a in ATTRIBUTES
        },
        "phi": phi_rows,
        "max_abs_deviation": max(deviations),
        "population": population,
        "beard_given_male": float(beard[truth["male"]].double().mean()),
        "beard_given_female": float(beard[~truth["male"]].double().mean()),
        "steering_agreement": {
            name: float((steering[name] == truth[name]).double().mean()) for name in ATTRIBUTES
        },
        "steering_statistics": attribute_statistics(steering),
    }


def _population_statistics(G: ProceduralGenerator, config: DemoPackConfig) -> dict[str, Any]:
    """The world's calibration, free of sampling noise: frequencies and phi of `POPULATION_FACES`
    ground-truth labels (no rendering), and the spread of each at `config.eval_faces` faces (the
    standard deviation over disjoint slices of the population)."""
    gen = _seeded(config.seed + 65)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in ATTRIBUTES}
    with torch.no_grad():
        for _ in range(POPULATION_FACES // 10_000):
            ws = sample_training_ws(G, n=10_000, truncation_psi=1.0, generator=gen, device="cpu")
            for name, chunk in G.attribute_labels(ws).items():
                parts[name].append(chunk)
    everyone = {name: torch.cat(chunks) for name, chunks in parts.items()}
    whole = attribute_statistics(everyone)
    n = config.eval_faces
    slices = [
        attribute_statistics({name: v[i * n : (i + 1) * n] for name, v in everyone.items()})
        for i in range(min(200, POPULATION_FACES // n))
    ]
    deviations = [abs(whole["frequency"][a] - f) for a, f in BIAS_TABLE["frequencies"].items()]
    phi_rows = {}
    for pair, target in BIAS_TABLE["phi"].items():
        a, b = pair.split("|")
        spread = float(np.std([sl["phi"][a][b] for sl in slices]))
        phi_rows[pair] = {"target": target, "measured": whole["phi"][a][b], f"sd_at_{n}_faces": spread}
        deviations.append(abs(whole["phi"][a][b] - target))
    return {
        "faces": POPULATION_FACES,
        "frequency": {
            a: {"target": BIAS_TABLE["frequencies"][a], "measured": whole["frequency"][a],
                f"sd_at_{n}_faces": float(np.std([sl["frequency"][a] for sl in slices]))}
            for a in ATTRIBUTES
        },
        "phi": phi_rows,
        "max_abs_deviation": max(deviations),
    }


def _accuracy(pack: ModelPack, config: DemoPackConfig) -> dict[str, Any]:
    """Accuracy of every classifier on fresh faces at psi = 1 (never trained on)."""
    result: dict[str, Any] = {}
    for i, name in enumerate(ATTRIBUTES):
        attr = pack.attributes[name]
        result[name] = {}
        for role, classifier in (("steering", attr.steering), ("evaluator", attr.evaluator)):
            assert classifier is not None
            result[name][role] = classifier_accuracy(
                classifier, pack.generator, name, n=config.eval_faces, truncation_psi=1.0,
                generator=_seeded(config.seed + 70 + i), device="cpu",
            )
    return result


def _encoder_quality(pack: ModelPack, config: DemoPackConfig) -> dict[str, Any]:
    """Reconstruction PSNR of encoder-only inversion of generated faces (true w known)."""
    from models.inversion import psnr

    G = pack.generator
    assert pack.encoder is not None
    ws = sample_training_ws(
        G, n=config.encoder_faces, truncation_psi=config.truncation_psi, generator=_seeded(config.seed + 80),
        device="cpu",
    )
    with torch.no_grad():
        images = G.synthesis(ws, noise_mode="const")
        recon = G.synthesis(pack.encoder(images), noise_mode="const")
    values = psnr(recon, images)
    return {"faces": config.encoder_faces, "truncation_psi": config.truncation_psi,
            "mean_psnr_db": float(values.mean()), "min_psnr_db": float(values.min())}


def render_sheet(
    pack: ModelPack, path: Path, *, config: DemoPackConfig, conditions: Mapping[str, str]
) -> None:
    """The picture sheet: sampled faces, then per attribute two 10-frame IALS edit strips (one face
    gaining the attribute, one losing it) with the most correlated other attribute kept as condition.

    Images are shown at twice their size with a caption per block.
    """
    from PIL import Image, ImageDraw

    G = pack.generator
    res = G.img_resolution
    scale = 2
    cols = 10
    cell = res * scale
    caption = 14

    def to_pixels(images: torch.Tensor) -> np.ndarray:
        pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return np.asarray(pixels.repeat(scale, axis=1).repeat(scale, axis=2))

    blocks: list[tuple[str, np.ndarray]] = []
    faces_ws = sample_training_ws(
        G, n=config.sheet_faces, truncation_psi=config.truncation_psi, generator=_seeded(config.seed + 90),
        device="cpu",
    )
    with torch.no_grad():
        faces = to_pixels(G.synthesis(faces_ws, noise_mode="const"))
    faces = faces[: max(cols, len(faces) // cols * cols)]  # Whole rows.
    rows = math.ceil(len(faces) / cols)
    grid = np.full((rows * cell, cols * cell, 3), 255, np.uint8)
    for i, face in enumerate(faces):
        grid[(i // cols) * cell : (i // cols + 1) * cell, (i % cols) * cell : (i % cols + 1) * cell] = face
    blocks.append((f"{len(faces)} sampled faces (psi {config.truncation_psi})", grid))

    step = float(pack.defaults["step"])
    frames_shown = np.linspace(0, config.steps, cols).round().astype(int)
    for a_index, name in enumerate(ATTRIBUTES):
        condition = conditions[name]
        strips = []
        for sign in (1, -1):
            gen = _seeded(config.seed + 100 + 2 * a_index + (sign < 0))
            labels_fn = G.attribute_labels
            while True:  # A face on the other side of the primal, with the condition either way.
                ws = sample_training_ws(
                    G, n=64, truncation_psi=config.truncation_psi, generator=gen, device="cpu"
                )
                keep = labels_fn(ws)[name] == (sign < 0)
                if keep.any():
                    start = ws[keep][:1]
                    break
            attr, cond = pack.attributes[name], pack.attributes[condition]
            result = edit(
                G, start,
                primal=EditAttribute(name, attr.steering, attr.directions["interfacegan"]),
                conditions=[EditAttribute(condition, cond.steering, cond.directions["interfacegan"])],
                steps=config.steps, step=sign * step, lambda1=config.lambda1, lambda2=config.lambda2,
                device="cpu",
            )
            with torch.no_grad():
                frames = G.synthesis(result.ws[0, torch.as_tensor(frames_shown)], noise_mode="const")
            strips.append(np.concatenate(list(to_pixels(frames)), axis=1))
        title = (f"{name}: + (top), - (bottom), keeping {condition}; frames 0..{config.steps}, step {step}, "
                 f"lambda1 {config.lambda1}, lambda2 {config.lambda2}")
        blocks.append((title, np.concatenate(strips, axis=0)))

    width = cols * cell
    height = sum(caption + block.shape[0] for _, block in blocks)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for title, block in blocks:
        draw.text((4, y + 1), title, fill=(0, 0, 0))
        sheet.paste(Image.fromarray(block), (0, y + caption))
        y += caption + block.shape[0]
    sheet.save(path, optimize=True)


ALIGNMENT_FACES = 256  # Faces of the gradient alignment measurement.
POPULATION_FACES = 400_000  # Ground-truth labels only: the calibration without sampling noise.
MEASUREMENT_FIELDS = ("eval_faces", "flip_faces", "dt_faces", "encoder_faces", "sheet_faces")


def _build_fields(config: DemoPackConfig) -> dict[str, Any]:
    """The config fields that decide the pack's files (the manifest records these)."""
    return {key: value for key, value in asdict(config).items() if key not in MEASUREMENT_FIELDS}


def _finite(value: Any) -> Any:
    """The report with NaN and infinities (a comparison without a shared range) as null: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _most_correlated(statistics: Mapping[str, Any]) -> dict[str, str]:
    """For each attribute, the other attribute with the largest |phi| (ground truth)."""
    phi: dict[str, dict[str, float]] = {a: {} for a in ATTRIBUTES}
    for pair, row in statistics["phi"].items():
        a, b = pair.split("|")
        phi[a][b] = phi[b][a] = abs(row["measured"])
    return {a: max(phi[a], key=lambda b: phi[a][b]) for a in ATTRIBUTES}


# ----------------------------------------------------------------------------
# Jobs: the independent pieces of a build or a measurement, run in worker processes.


@dataclass(frozen=True)
class _Job:
    """One piece of work: `fn(*args(results), progress=...)`, after the jobs named in `deps`."""

    name: str
    fn: Callable[..., Any]  # Top-level (picklable); takes `progress(done, total)` as keyword.
    args: Callable[[Mapping[str, Any]], tuple[Any, ...]]  # From the results of `deps`, in the parent.
    total: int  # Progress units it reports (for the overall bar).
    deps: tuple[str, ...] = ()


_WORKER_QUEUE: Any = None


def _given(*values: Any) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """Job arguments that do not depend on other jobs' results."""
    return lambda results: values


def _init_worker(queue: Any, threads: int) -> None:
    global _WORKER_QUEUE
    _WORKER_QUEUE = queue
    queue.cancel_join_thread()  # A worker killed mid-job must not hang on unsent progress events.
    torch.set_num_threads(threads)


def _to_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _worker_call(name: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> bytes:
    """Run one job in a worker. The result travels back serialised: tensors sent as they are would each
    hold a file descriptor open in the parent (thousands for a build)."""
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] > 0.5:
            last[0] = now
            _WORKER_QUEUE.put((name, done, total))

    return _to_bytes(fn(*args, progress=progress))


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_jobs(jobs: Sequence[_Job], *, workers: int, stage: str, on_progress: ProgressFn) -> dict[str, Any]:
    """Run `jobs` (in priority order, each after its `deps`) on `workers` processes; results by name,
    in the order of `jobs`.

    Every job runs with one torch thread: in spawned worker processes, or with one worker here, in
    order. Since every job also seeds its own randomness, the results do not depend on `workers` (on
    one machine and torch build). Progress goes to `on_progress(stage, done, total)` summed over all
    jobs. If a job fails, the other workers are stopped and the error is raised.
    """
    if workers < 1:
        raise ValueError(f"Need at least one worker, got {workers}")
    names = [job.name for job in jobs]
    if len(set(names)) != len(names) or any(d not in names for job in jobs for d in job.deps):
        raise ValueError(f"Bad job graph: {names}")
    by_name = {job.name: job for job in jobs}
    done_units = {job.name: 0 for job in jobs}
    grand_total = sum(job.total for job in jobs)
    results: dict[str, Any] = {}

    def report(name: str, done: int, total: int) -> None:
        if name in results:  # A late event of a finished job.
            return
        done_units[name] = min(by_name[name].total, round(done * by_name[name].total / max(total, 1)))
        on_progress(stage, sum(done_units.values()), grand_total)

    def finished(name: str, result: Any) -> None:
        results[name] = result
        done_units[name] = by_name[name].total
        on_progress(stage, sum(done_units.values()), grand_total)

    pending = list(jobs)

    def next_ready(num_running: int) -> _Job | None:
        for job in pending:
            if all(dep in results for dep in job.deps):
                pending.remove(job)
                return job
        if not num_running and pending:
            raise RuntimeError(f"Jobs {[j.name for j in pending]} wait on jobs that never ran")
        return None

    on_progress(stage, 0, grand_total)
    if workers == 1:
        with _torch_threads(1):
            while pending:
                job = next_ready(0)
                assert job is not None
                finished(job.name, job.fn(*job.args(results), progress=functools.partial(report, job.name)))
        return {name: results[name] for name in names}

    import concurrent.futures
    import multiprocessing
    import queue as queue_module

    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(events, 1)
    )

    def drain() -> None:
        while True:
            try:
                report(*events.get_nowait())
            except queue_module.Empty:
                return

    running: dict[concurrent.futures.Future[bytes], str] = {}
    try:
        while pending or running:
            while len(running) < workers:
                job = next_ready(len(running))
                if job is None:
                    break
                running[pool.submit(_worker_call, job.name, job.fn, job.args(results))] = job.name
            done, _ = concurrent.futures.wait(
                running, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED
            )
            drain()
            for future in done:
                name = running.pop(future)
                finished(name, torch.load(io.BytesIO(future.result()), weights_only=True))
        drain()
    except BaseException:
        # Stop the other jobs now rather than wait for them (an encoder job runs for about 30 minutes).
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return {name: results[name] for name in names}


def _steps_per_attribute(config: DemoPackConfig, field_name: str) -> dict[str, int]:
    """Attribute -> optimiser steps, from a step-count field (one int, or one per attribute)."""
    value = getattr(config, field_name)
    counts: list[Any] = []  # Neither a count nor a tuple of counts: an error below.
    if type(value) is int:  # Not a bool.
        counts = [value] * len(ATTRIBUTES)
    elif isinstance(value, tuple):
        counts = list(value)
    if len(counts) != len(ATTRIBUTES) or not all(type(n) is int and n >= 1 for n in counts):
        raise ValueError(
            f"{field_name} must be a step count >= 1 or one per attribute {list(ATTRIBUTES)}, got {value!r}"
        )
    return dict(zip(ATTRIBUTES, counts, strict=True))


def _classifier_jobs(role: str, config: DemoPackConfig) -> list[tuple[int, tuple[str, ...]]]:
    """The training jobs of a role: `(steps, attributes)`, one per step count, so that a job renders
    each batch once for all its classifiers."""
    steps = _steps_per_attribute(config, f"{role}_steps")
    counts = sorted(set(steps.values()), reverse=True)
    return [(n, tuple(a for a in ATTRIBUTES if steps[a] == n)) for n in counts]


def _world(config: DemoPackConfig) -> ProceduralGenerator:
    G = ProceduralGenerator(
        img_resolution=config.img_resolution, seed=config.seed, attribute_scales=config.world_attribute_scales
    )
    return G.eval().requires_grad_(False)


def _role_settings(role: str, config: DemoPackConfig) -> dict[str, Any]:
    """How the classifiers of a role are made and trained (architecture, seeds, psi, targets); the step
    counts per attribute come from `_steps_per_attribute`."""
    if role == "steering":
        return {"arch": "resnet18", "width": config.steering_width, "init_seed": config.seed + 10,
                "seed": config.seed + 11, "psi": config.steering_psi,
                "label_sharpness": config.steering_label_sharpness}
    if role == "evaluator":
        return {"arch": config.evaluator_arch, "width": config.evaluator_width, "init_seed": config.seed + 20,
                "seed": config.seed + 21, "psi": config.evaluator_psi,
                "label_sharpness": config.evaluator_label_sharpness}
    raise ValueError(f"Unknown classifier role {role!r}")


def _role_classifiers(role: str, config: DemoPackConfig) -> dict[str, AttributeClassifier]:
    settings = _role_settings(role, config)
    return _classifiers(settings["arch"], settings["width"], config.img_resolution, settings["init_seed"])


def _job_classifiers(
    role: str, config: DemoPackConfig, names: tuple[str, ...], steps: int, *,
    progress: Callable[[int, int], None],
) -> dict[str, Any]:
    """Train the `role` classifiers of `names` for `steps` steps (their count, `_classifier_jobs`). All
    of a role start from one seeded initialisation and see one stream of faces (the first n batches of
    a longer training are those of a shorter one), so a classifier comes out the same whichever others
    share its job."""
    settings = _role_settings(role, config)
    start = time.perf_counter()
    classifiers = _role_classifiers(role, config)
    chosen = {name: classifiers[name] for name in names}
    losses = _train(
        chosen, _world(config), config, steps=steps, psi=settings["psi"], seed=settings["seed"],
        label_sharpness=settings["label_sharpness"], progress=progress,
    )
    state = {name: _stored(c.state_dict(), config, f"{role} {name!r}") for name, c in chosen.items()}
    return {"state": state, "losses": losses, "seconds": round(time.perf_counter() - start, 1)}


def _merged(results: Mapping[str, Any], job_names: Sequence[str]) -> dict[str, Any]:
    """The results of a role's classifier jobs as one: state and losses by attribute (every attribute
    once), seconds summed (and, per job, under `jobs`)."""
    parts = {key: results[key] for key in job_names}
    trained = [name for part in parts.values() for name in part["state"]]
    if sorted(trained) != sorted(ATTRIBUTES):
        raise RuntimeError(f"Jobs {list(job_names)} trained {trained}, not each of {list(ATTRIBUTES)} once")
    return {
        "state": {name: state for part in parts.values() for name, state in part["state"].items()},
        "losses": {name: losses for part in parts.values() for name, losses in part["losses"].items()},
        "seconds": round(sum(part["seconds"] for part in parts.values()), 1),
        "jobs": {key: part["seconds"] for key, part in parts.items()},
    }


def _split(names: tuple[str, ...], parts: int) -> list[tuple[str, ...]]:
    """`names` in order, as `min(parts, len(names))` runs whose lengths differ by at most one."""
    count = max(1, min(parts, len(names)))
    size, extra = divmod(len(names), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [names[bounds[i] : bounds[i + 1]] for i in range(count)]


def _training_jobs(config: DemoPackConfig, workers: int) -> tuple[list[_Job], dict[str, list[str]]]:
    """The jobs of a build, and the names of each role's classifier jobs.

    Steering: one job per step count (`_classifier_jobs`), the directions after all of them.
    Evaluators: the attributes of a step count split into as many jobs as there are workers (at most
    one per attribute), beside the encoder and the steering chain; a job renders each batch once for
    all its classifiers, so fewer, larger jobs render less."""
    steering = [
        (f"steering {'+'.join(names)}", n, names) for n, names in _classifier_jobs("steering", config)
    ]
    evaluator = [
        (f"evaluators {'+'.join(group)}", n, group)
        for n, names in _classifier_jobs("evaluator", config)
        for group in _split(names, workers)
    ]
    steering_names = [job_name for job_name, _, _ in steering]
    jobs = [
        _Job("encoder", _job_encoder, lambda r: (config,), config.encoder_steps),
        *[
            _Job(job_name, _job_classifiers, _given("steering", config, names, n), n)
            for job_name, n, names in steering
        ],
        _Job("directions", _job_directions, lambda r: (config, _merged(r, steering_names)["state"]),
             _directions_job_units(config), deps=tuple(steering_names)),
        *[
            _Job(job_name, _job_classifiers, _given("evaluator", config, names, n), n)
            for job_name, n, names in evaluator
        ],
    ]
    return jobs, {"steering": steering_names, "evaluator": [job_name for job_name, _, _ in evaluator]}


def _job_encoder(config: DemoPackConfig, *, progress: Callable[[int, int], None]) -> dict[str, Any]:
    from models.inversion import train_encoder

    start = time.perf_counter()
    G = _world(config)
    encoder = _new_encoder(G, config)
    train_encoder(
        encoder, G, steps=config.encoder_steps, batch_size=config.encoder_batch_size, lr=config.encoder_lr,
        truncation_psi=config.encoder_psi, generator=_seeded(config.seed + 41), device="cpu",
        on_step=progress,
    )
    state = _stored(encoder.state_dict(), config, "encoder")
    return {"state": state, "seconds": round(time.perf_counter() - start, 1)}


def _weights_dtype(config: DemoPackConfig) -> torch.dtype:
    names = {str(d).removeprefix("torch."): d for d in WEIGHTS_DTYPES}
    if not isinstance(config.weights_dtype, str) or config.weights_dtype not in names:
        raise ValueError(f"weights_dtype must be one of {list(names)}, got {config.weights_dtype!r}")
    return names[config.weights_dtype]


def _stored(state: Mapping[str, torch.Tensor], config: DemoPackConfig, where: str) -> dict[str, torch.Tensor]:
    """Trained weights rounded to the pack's storage dtype (and kept in their own dtype)."""
    return round_to_dtype(state, _weights_dtype(config), where)


def _directions_job_units(config: DemoPackConfig) -> int:
    n = max(config.svm_samples, config.ganspace_samples)
    return math.ceil(n / 500) + 2 * len(ATTRIBUTES) + len(config.step_grid)


def _job_directions(
    config: DemoPackConfig, steering_state: Mapping[str, Mapping[str, torch.Tensor]], *,
    progress: Callable[[int, int], None],
) -> dict[str, Any]:
    """Attribute-level directions from the steering classifiers, then the default step (on a
    provisional pack in a temporary folder: generator, steering classifiers, directions)."""
    import tempfile

    G = _world(config)
    steering = _role_classifiers("steering", config)
    for name, classifier in steering.items():
        classifier.load_state_dict(steering_state[name])
        classifier.eval().requires_grad_(False)
    total = _directions_job_units(config)
    count = [0]

    def tick(stage: str, done: int, n: int) -> None:
        count[0] += 1
        progress(min(count[0], total), total)

    start = time.perf_counter()
    directions, info = _directions(G, steering, config, tick)
    seconds = {"directions": round(time.perf_counter() - start, 1)}
    start = time.perf_counter()
    attributes = {
        name: PackAttribute(name=name, description=DESCRIPTIONS[name], steering=steering[name],
                            evaluator=None, directions=directions[name])
        for name in ATTRIBUTES
    }
    with tempfile.TemporaryDirectory(prefix="ials-demo-step-") as tmp:
        save_pack(tmp, name="demo", description="provisional: step choice", generator=G,
                  generator_kind="procedural", attributes=attributes,
                  defaults=_defaults(config, config.step_grid[0]), overwrite=True)
        step, measured = _choose_step(load_pack(tmp, "cpu"), config, tick)
    seconds["step"] = round(time.perf_counter() - start, 1)
    return {"directions": directions, "info": info, "step": step, "step_measured": measured,
            "seconds": seconds}


def _defaults(config: DemoPackConfig, step: float) -> dict[str, Any]:
    return {
        "step": step, "steps": config.steps, "lambda1": config.lambda1, "lambda2": config.lambda2,
        "truncation_psi": config.truncation_psi, "direction_kind": "interfacegan",
    }


def default_jobs() -> int:
    """Worker processes of a build or measurement by default: one per usable CPU core, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # Not on Linux.
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def build_demo_pack(
    out: str | Path,
    config: DemoPackConfig | None = None,
    *,
    overwrite: bool = False,
    jobs: int | None = None,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Build the demo pack into `out` (the pack, `report.json`, `sheet.png`) and return the report.

    The training jobs (steering classifiers, then directions and step; each evaluator; the encoder)
    and the measurements run on `jobs` worker processes with one torch thread each. Each job seeds
    its own randomness, so the pack is the same for any `jobs`.

    Args:
        out: The pack folder to create.
        config: What to build (default: `DemoPackConfig()`, the committed pack).
        overwrite: Replace an existing pack at `out`.
        jobs: Worker processes (default: `default_jobs()`); 1 runs everything in this process.
        on_progress: Called as `on_progress(stage, done, total)`.

    Returns:
        The report written to `out/report.json`.
    """
    config = config or DemoPackConfig()  # Its constructor has checked weights_dtype.
    workers = default_jobs() if jobs is None else jobs
    if workers < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    progress: ProgressFn = on_progress or (lambda stage, done, total: None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    started = time.perf_counter()

    job_list, roles = _training_jobs(config, workers)
    results = _run_jobs(
        job_list, workers=workers, stage=f"training ({workers} process{'es' if workers > 1 else ''})",
        on_progress=progress,
    )
    trained_in = round(time.perf_counter() - started, 1)

    G = _world(config)
    steering = _role_classifiers("steering", config)
    evaluators = _role_classifiers("evaluator", config)
    trained = {role: _merged(results, names) for role, names in roles.items()}
    for name in ATTRIBUTES:
        steering[name].load_state_dict(trained["steering"]["state"][name])
        evaluators[name].load_state_dict(trained["evaluator"]["state"][name])
    for classifier in [*steering.values(), *evaluators.values()]:
        classifier.eval().requires_grad_(False)
    encoder = _new_encoder(G, config)
    encoder.load_state_dict(results["encoder"]["state"])
    encoder.eval().requires_grad_(False)
    directions = results["directions"]
    step = directions["step"]

    attributes = {
        name: PackAttribute(
            name=name, description=DESCRIPTIONS[name], steering=steering[name], evaluator=evaluators[name],
            directions=directions["directions"][name],
        )
        for name in ATTRIBUTES
    }
    extra = {
        "world": G.describe_world(),
        "build": {"command": "ials build-demo-pack", "config": _build_fields(config)},
    }
    save_pack(
        out, name="demo", generator=G, generator_kind="procedural", attributes=attributes,
        defaults=_defaults(config, step), extra=extra, encoder=encoder, overwrite=True,
        weights_dtype=_weights_dtype(config),
        description=(
            "The embedded demo pack: a differentiable procedural face world (64 px) with known, biased "
            "attributes, built by `ials build-demo-pack`. Not a GAN trained on photos: use "
            "`ials convert` for real checkpoints."
        ),
    )
    load_pack(out, "cpu")  # Hashes and shapes check out.
    job_seconds = {
        "steering": trained["steering"]["seconds"],
        "evaluators": trained["evaluator"]["seconds"],
        **directions["seconds"],
        "encoder": results["encoder"]["seconds"],
    }
    build = {
        "config": asdict(config),
        "environment": {
            "torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "processes": workers, "threads_per_job": 1,
        },
        # Per job, in its process; `wall` is the whole build (training and saving), all processes at once.
        "seconds": {**job_seconds, "cpu_total": round(sum(job_seconds.values()), 1),
                    "training_wall": trained_in, "wall": round(time.perf_counter() - started, 1)},
        "classifier_job_seconds": {**trained["steering"]["jobs"], **trained["evaluator"]["jobs"]},
        "classifier_final_loss": {
            name: {"steering": float(np.mean(trained["steering"]["losses"][name][-50:])),
                   "evaluator": float(np.mean(trained["evaluator"]["losses"][name][-50:]))}
            for name in ATTRIBUTES
        },
        "directions": directions["info"],
        "step_selection": {
            "chosen": step, "target": config.step_target, "measured": directions["step_measured"],
        },
    }
    return measure_demo_pack(out, config, build=build, jobs=workers, on_progress=on_progress)


def _job_flips(
    out: str, config: DemoPackConfig, step: float, name: str, *, progress: Callable[[int, int], None]
) -> dict[str, dict[str, float]]:
    pack = load_pack(out, "cpu")
    total = 2 * len(pack.attributes[name].directions)
    count = [0]

    def tick(label: str) -> None:
        count[0] += 1
        progress(count[0], total)

    return flip_rates(
        pack, num=config.flip_faces, steps=config.steps, step=step, lambda1=config.lambda1,
        lambda2=config.lambda2, truncation_psi=config.truncation_psi, seed=config.seed + 110,
        attributes=[name], on_done=tick,
    )[name]


def _job_dt(
    out: str, config: DemoPackConfig, step: float, primal: str, condition: str, *,
    progress: Callable[[int, int], None],
) -> dict[str, Any]:
    count = [0]

    def tick(label: str) -> None:
        count[0] += 1
        progress(count[0], 2)

    return dt_comparison(
        load_pack(out, "cpu"), methods=METHODS, num=config.dt_faces, steps=config.steps, step=step,
        truncation_psi=config.truncation_psi, seed=config.seed + 120, primals=[primal],
        conditions=[condition], on_done=tick,
    )


def measure_demo_pack(
    out: str | Path,
    config: DemoPackConfig | None = None,
    *,
    build: Mapping[str, Any] | None = None,
    dt_primals: Sequence[str] | None = None,
    jobs: int | None = None,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Measure a built demo pack and write `report.json` and `sheet.png` next to its files.

    Args:
        out: The pack folder.
        config: The measurement settings (faces, psi, steps...); default: the config recorded in the
            pack's manifest (`extra.build.config`).
        build: What the build recorded (timings, losses, step selection); default: the `build`
            section of the `report.json` found in `out` when this measurement ends, if any.
        dt_primals: Measure the DT comparison for these primal attributes only (a part for
            `models.evaluation.merge_dt`); default all.
        jobs: Worker processes for the flip rates and the DT comparison, one per attribute or
            (primal, condition) pair (default: `default_jobs()`).
        on_progress: Called as `on_progress(stage, done, total)`.

    With `flip_faces = 0` or `dt_faces = 0` that measurement is skipped and the section of an
    existing `report.json` is kept (so the long DT comparison can run on its own).

    Returns:
        The report.
    """
    out = Path(out)
    progress: ProgressFn = on_progress or (lambda stage, done, total: None)
    pack = load_pack(out, "cpu")
    if config is None:
        recorded: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value
            for key, value in pack.manifest["extra"]["build"]["config"].items()
        }
        config = DemoPackConfig(**recorded)
    timer = _Timer()
    step = float(pack.defaults["step"])
    statistics = timer.run("statistics", lambda: _statistics(pack, config))
    accuracy = timer.run("accuracy", lambda: _accuracy(pack, config))
    alignment = timer.run("gradient_alignment", lambda: _gradient_alignment(pack, config))
    progress("measure", 1, 4)
    measure_jobs: list[_Job] = []
    if config.dt_faces > 0:
        measure_jobs += [
            _Job(f"dt {primal}|{condition}", _job_dt, _given(str(out), config, step, primal, condition), 2)
            for primal in (dt_primals or ATTRIBUTES) for condition in ATTRIBUTES if condition != primal
        ]
    if config.flip_faces > 0:
        measure_jobs += [
            _Job(f"flips {name}", _job_flips, _given(str(out), config, step, name),
                 2 * len(pack.attributes[name].directions))
            for name in ATTRIBUTES
        ]
    workers = default_jobs() if jobs is None else jobs
    if workers < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    start = time.perf_counter()
    measured = _run_jobs(
        measure_jobs, workers=workers,
        stage=f"flip rates and DT ({workers} process{'es' if workers > 1 else ''})", on_progress=progress,
    ) if measure_jobs else {}
    flips = {
        name: result for key, result in measured.items() if key.startswith("flips ")
        for name in [key.split(" ", 1)[1]]
    } or None
    dt_parts = [result for key, result in measured.items() if key.startswith("dt ")]
    dt = merge_dt(dt_parts) if dt_parts else None
    if measure_jobs:
        timer.seconds["flips_and_dt_wall"] = round(time.perf_counter() - start, 1)
    progress("measure", 3, 4)
    encoder_quality = timer.run("encoder_quality", lambda: _encoder_quality(pack, config))
    conditions = _most_correlated(statistics)
    timer.run("sheet", lambda: render_sheet(pack, out / "sheet.png", config=config, conditions=conditions))
    progress("measure", 4, 4)

    report_path = out / "report.json"
    previous: dict[str, Any] = {}
    if report_path.is_file():
        previous = json.loads(report_path.read_text(encoding="utf-8"))
    if build is None:
        build = previous.get("build")
    measure_config = {key: getattr(config, key) for key in MEASUREMENT_FIELDS}
    for key, kept in (("flip_faces", flips is None), ("dt_faces", dt is None)):
        if kept:  # The section (if any) comes from the previous report, measured with its settings.
            measure_config[key] = previous.get("measure_config", {}).get(key, 0)
    report = {
        "pack": out.name,
        "defaults": pack.defaults,
        "build": dict(build) if build is not None else None,
        "measure_seconds": {**previous.get("measure_seconds", {}), **timer.seconds},
        "measure_config": measure_config,
        # Worker processes of the flip rates and DT comparison (one torch thread each).
        "measure_processes": workers if measure_jobs else previous.get("measure_processes"),
        "classifier_accuracy": accuracy,
        "gradient_alignment": alignment,
        "statistics": statistics,
        "flip_rates": {
            "faces": config.flip_faces, "truncation_psi": config.truncation_psi, "steps": config.steps,
            "step": step, "lambda1": config.lambda1, "lambda2": config.lambda2, "seed": config.seed + 110,
            "rates": flips,
        } if flips is not None else previous.get("flip_rates"),
        "dt": dt if dt is not None else previous.get("dt"),
        "encoder": encoder_quality,
        "sheet": {"file": "sheet.png", "conditions": conditions},
        "pack_mb": round(sum(p.stat().st_size for p in out.rglob("*.safetensors")) / 1e6, 2),
    }
    text = json.dumps(_finite(report), indent=2, allow_nan=False)
    (out / "report.json").write_text(text + "\n", encoding="utf-8")
    return report
