"""Build the embedded demo pack from nothing: the procedural face world, its classifiers, directions and
encoder, with a measured report and a picture sheet.

`build_demo_pack(out, config)` runs these stages, each deterministic from `config.seed`:

1. generator    the procedural world (`models.networks.procedural.ProceduralGenerator`), no training;
2. steering     one ResNet-18 per attribute, trained together on shared fresh renders (ground-truth labels);
3. evaluators   one ResNet-50 per attribute: another architecture, seed, psi range and image stream;
4. directions   InterfaceGAN (linear SVM on `w` labelled by the steering classifiers), averaged
                instance-specific (section 3.2), GANSpace (PCA of `w`, components matched to the
                steering scores);
5. encoder      image -> `w+` start code for inversions (`models.inversion.train_encoder`);
6. step         the default step size: the smallest of `config.step_grid` at which a 20-step IALS edit
                flips the ground-truth label of every attribute, both ways, on >= `step_target` of faces;
7. save         `models.pack.save_pack`, then the pack is reloaded through `load_pack` (hashes checked);
8. measure      classifier accuracy, attribute statistics against the bias table, flip rates of every
                direction kind, the DT comparison of the paper's Table 1 (ground truth and evaluators),
                the encoder's reconstruction PSNR;
9. report       `report.json` and `sheet.png` (sampled faces and one edit strip per attribute) in `out`.

Progress is reported through `on_progress(stage, done, total)` only.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.evaluation import METHODS, attribute_statistics, dt_comparison, flip_rates
from models.ials import EditAttribute, edit
from models.networks.classifier import AttributeClassifier
from models.networks.encoder import LatentEncoder
from models.networks.procedural import ATTRIBUTES, BIAS_TABLE, ProceduralGenerator
from models.pack import ModelPack, PackAttribute, load_pack, save_pack
from models.training import (
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
    # Classifiers (trained on fresh renders; psi drawn per face from the range).
    batch_size: int = 64
    lr: float = 2e-3
    steering_width: int = 16
    steering_steps: int = 1500
    steering_psi: tuple[float, float] = (0.7, 1.4)
    evaluator_arch: str = "resnet50"
    evaluator_width: int = 8
    evaluator_steps: int = 1500
    evaluator_psi: tuple[float, float] = (0.6, 1.5)
    # Attribute-level directions.
    svm_samples: int = 10_000
    svm_c: float = 0.01
    averaged_samples: int = 512
    ganspace_samples: int = 10_000
    ganspace_components: int = 20
    # Encoder.
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
    # The DT comparison costs about 95 s of one CPU core per (primal, condition, sign) at 100 faces
    # (the renderer's backward pass dominates): 40 of them take about an hour on 2 cores.
    dt_faces: int = 100
    encoder_faces: int = 50
    sheet_faces: int = 32


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
    stage: str,
    on_progress: ProgressFn,
) -> dict[str, list[float]]:
    result = train_classifiers(
        classifiers, G, steps=steps, batch_size=config.batch_size, lr=config.lr, truncation_psi=psi,
        generator=_seeded(seed), device="cpu", on_step=lambda i, n: on_progress(stage, i, n),
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
        directions[name]["averaged"] = averaged_direction(G, steering[name], avg_ws, device="cpu")
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


def _ground_truth_direction(G: ProceduralGenerator, ws: torch.Tensor) -> dict[str, torch.Tensor]:
    """Unit mean of the per-face unit ground-truth logit gradients (w.r.t. one offset of all rows)."""
    offset = torch.zeros([ws.shape[0], G.w_dim], requires_grad=True)
    with torch.enable_grad():
        logits = G.attribute_logits(ws + offset.unsqueeze(1))
        result = {}
        for name in ATTRIBUTES:
            (grad,) = torch.autograd.grad(logits[name].sum(), offset, retain_graph=True)
            mean = torch.nn.functional.normalize(grad, dim=1).mean(0)
            result[name] = mean / mean.norm()
    return result


def _train_encoder(G: ProceduralGenerator, config: DemoPackConfig, on_progress: ProgressFn) -> LatentEncoder:
    from models.inversion import train_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 40)
        encoder = LatentEncoder(img_resolution=G.img_resolution, num_ws=G.num_ws, w_dim=G.w_dim)
    encoder.w_avg.copy_(G.w_avg)
    train_encoder(
        encoder, G, steps=config.encoder_steps, batch_size=config.encoder_batch_size, lr=config.encoder_lr,
        truncation_psi=config.encoder_psi, generator=_seeded(config.seed + 41), device="cpu",
        on_step=lambda i, n: on_progress("encoder", i, n),
    )
    return encoder.eval().requires_grad_(False)


def _choose_step(
    pack: ModelPack, config: DemoPackConfig, on_progress: ProgressFn
) -> tuple[float, dict[str, Any]]:
    """The smallest step of the grid whose worst flip rate (interfacegan, no condition) meets the target."""
    measured: dict[str, Any] = {}
    chosen = config.step_grid[-1]
    for i, step in enumerate(config.step_grid):
        rates = flip_rates(
            pack, num=config.step_faces, steps=config.steps, step=step, lambda1=config.lambda1,
            lambda2=config.lambda2, truncation_psi=config.truncation_psi, seed=config.seed + 50,
            direction_kinds=["interfacegan"],
        )
        worst = min(r for kinds in rates.values() for signs in kinds.values() for r in signs.values())
        measured[str(step)] = {"worst": worst, "rates": rates}
        on_progress("step size", i + 1, len(config.step_grid))
        if worst >= config.step_target:
            chosen = step
            break
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
    return {
        "faces": config.eval_faces,
        "truncation_psi": 1.0,
        "frequency": {
            a: {"target": BIAS_TABLE["frequencies"][a], "measured": stats["frequency"][a]} for a in ATTRIBUTES
        },
        "phi": phi_rows,
        "max_abs_deviation": max(deviations),
        "beard_given_male": float(beard[truth["male"]].double().mean()),
        "beard_given_female": float(beard[~truth["male"]].double().mean()),
        "steering_agreement": {
            name: float((steering[name] == truth[name]).double().mean()) for name in ATTRIBUTES
        },
        "steering_statistics": attribute_statistics(steering),
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


def build_demo_pack(
    out: str | Path,
    config: DemoPackConfig | None = None,
    *,
    overwrite: bool = False,
    on_progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Build the demo pack into `out` (the pack, `report.json`, `sheet.png`) and return the report.

    Args:
        out: The pack folder to create.
        config: What to build (default: `DemoPackConfig()`, the committed pack).
        overwrite: Replace an existing pack at `out`.
        on_progress: Called as `on_progress(stage, done, total)`.

    Returns:
        The report written to `out/report.json`.
    """
    config = config or DemoPackConfig()
    progress: ProgressFn = on_progress or (lambda stage, done, total: None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    timer = _Timer()
    started = time.perf_counter()

    G = ProceduralGenerator(img_resolution=config.img_resolution, seed=config.seed)
    G.eval().requires_grad_(False)
    steering = _classifiers("resnet18", config.steering_width, config.img_resolution, config.seed + 10)
    steering_losses = timer.run("steering", lambda: _train(
        steering, G, config, steps=config.steering_steps, psi=config.steering_psi, seed=config.seed + 11,
        stage="steering classifiers", on_progress=progress,
    ))
    evaluators = _classifiers(config.evaluator_arch, config.evaluator_width, config.img_resolution,
                              config.seed + 20)
    evaluator_losses = timer.run("evaluators", lambda: _train(
        evaluators, G, config, steps=config.evaluator_steps, psi=config.evaluator_psi, seed=config.seed + 21,
        stage="evaluator classifiers", on_progress=progress,
    ))
    directions, direction_info = timer.run("directions", lambda: _directions(G, steering, config, progress))
    encoder = timer.run("encoder", lambda: _train_encoder(G, config, progress))

    attributes = {
        name: PackAttribute(
            name=name, description=DESCRIPTIONS[name], steering=steering[name], evaluator=evaluators[name],
            directions=directions[name],
        )
        for name in ATTRIBUTES
    }
    extra = {
        "world": G.describe_world(),
        "build": {"command": "ials build-demo-pack", "config": _build_fields(config)},
    }

    def save(step: float) -> ModelPack:
        defaults = {
            "step": step, "steps": config.steps, "lambda1": config.lambda1, "lambda2": config.lambda2,
            "truncation_psi": config.truncation_psi, "direction_kind": "interfacegan",
        }
        save_pack(
            out, name="demo", generator=G, generator_kind="procedural", attributes=attributes,
            defaults=defaults, extra=extra, encoder=encoder, overwrite=True,
            description=(
                "The embedded demo pack: a differentiable procedural face world (64 px) with known, biased "
                "attributes, built by `ials build-demo-pack`. Not a GAN trained on photos: use "
                "`ials convert` for real checkpoints."
            ),
        )
        return load_pack(out, "cpu")

    # Choose the step on a provisional pack (same networks), then save the final one.
    provisional = save(config.step_grid[0])
    step, step_measurements = timer.run("step", lambda: _choose_step(provisional, config, progress))
    save(step)

    build = {
        "config": asdict(config),
        "environment": {
            "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
        "seconds": {**timer.seconds, "total": round(time.perf_counter() - started, 1)},
        "classifier_final_loss": {
            name: {"steering": float(np.mean(steering_losses[name][-50:])),
                   "evaluator": float(np.mean(evaluator_losses[name][-50:]))}
            for name in ATTRIBUTES
        },
        "directions": direction_info,
        "step_selection": {"chosen": step, "target": config.step_target, "measured": step_measurements},
    }
    return measure_demo_pack(out, config, build=build, on_progress=on_progress)


def measure_demo_pack(
    out: str | Path,
    config: DemoPackConfig | None = None,
    *,
    build: Mapping[str, Any] | None = None,
    dt_primals: Sequence[str] | None = None,
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
    progress("measure", 1, 4)
    flip_done = [0]
    flip_total = 2 * sum(len(pack.attributes[name].directions) for name in ATTRIBUTES)

    def flip_tick(label: str) -> None:
        flip_done[0] += 1
        progress("flip rates", flip_done[0], flip_total)

    flips = timer.run("flips", lambda: flip_rates(
        pack, num=config.flip_faces, steps=config.steps, step=step, lambda1=config.lambda1,
        lambda2=config.lambda2, truncation_psi=config.truncation_psi, seed=config.seed + 110,
        on_done=flip_tick,
    )) if config.flip_faces > 0 else None
    progress("measure", 2, 4)
    dt_done = [0]
    dt_total = 2 * len(dt_primals or ATTRIBUTES) * (len(ATTRIBUTES) - 1)

    def dt_tick(label: str) -> None:
        dt_done[0] += 1
        progress("DT comparison", dt_done[0], dt_total)

    dt = timer.run("dt", lambda: dt_comparison(
        pack, methods=METHODS, num=config.dt_faces, steps=config.steps, step=step,
        truncation_psi=config.truncation_psi, seed=config.seed + 120, primals=dt_primals, on_done=dt_tick,
    )) if config.dt_faces > 0 else None
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
    report = {
        "pack": out.name,
        "defaults": pack.defaults,
        "build": dict(build) if build is not None else None,
        "measure_seconds": {**previous.get("measure_seconds", {}), **timer.seconds},
        "measure_config": {key: getattr(config, key) for key in MEASUREMENT_FIELDS},
        "classifier_accuracy": accuracy,
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
