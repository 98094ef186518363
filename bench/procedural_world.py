"""Measure the procedural face world: speed, biases, visual response, ground-truth DT (IALS vs InterfaceGAN).

What it prints:

1. Render time of `synthesis` per batch of 32 and of 1 (CPU threads as set), and of a forward plus
   backward to `ws` per batch of 32.
2. Ground-truth attribute frequencies and the phi coefficients (Pearson correlation of the binary
   labels) of `--num-faces` faces at psi = 1, next to the targets of `BIAS_TABLE`, with the
   population values of 200,000 latents (labels only, no rendering) and the beard conditionals.
3. Visual response: for faces at psi = 1, how much the picture changes (RMS per pixel, in [-1, 1]
   units) per unit step along each attribute's ground-truth gradient; the minimum shows whether any
   face saturates.
4. Flip rates of single-attribute IALS edits (lambda1 = 0.75, no condition, 20 steps) on faces that
   start on the other side, for each attribute and direction.
5. Ground-truth DT: IALS (lambda1 = 0.75, lambda2 = 0) against conditional InterfaceGAN (1, 1) for
   every ordered pair of attributes and both edit directions. The "classifier" is the generator's
   differentiable ground-truth logit, a function of `ws` (no images, no training): the instance-
   specific direction is the normalised gradient of the logit w.r.t. one offset added to every row.
   Attribute-level directions are the unit normals of linear SVMs (scikit-learn `LinearSVC`) fitted
   on sampled `w` labelled by ground truth. Labels for the DT curve are ground truth too.

Optionally writes a picture sheet (`--sheet PATH`): 32 sampled faces, then per attribute four faces
walked along the ground-truth gradient in both directions.

Usage: python bench/procedural_world.py [--num-faces 2000] [--dt-faces 200] [--psi 0.5] [--sheet PATH]
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.svm import LinearSVC

from models.dt import dt_auc, dt_curve
from models.ials import condition_directions, conditional_direction, instance_aware_direction
from models.networks.procedural import ATTRIBUTES, BIAS_TABLE, ProceduralGenerator


def _broadcast(G: ProceduralGenerator, w: torch.Tensor) -> torch.Tensor:
    return w.unsqueeze(1).expand(-1, G.num_ws, -1)  # [N, L, C]


def gt_logits(G: ProceduralGenerator, w: torch.Tensor) -> torch.Tensor:
    """Ground-truth logits `[N, A]` of plain latents `[N, w_dim]`."""
    logits = G.attribute_logits(_broadcast(G, w))
    return torch.stack([logits[a] for a in ATTRIBUTES], dim=1)


def gt_directions(G: ProceduralGenerator, w: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Unit instance-specific directions `[N, w_dim]` (towards the attribute) from ground-truth gradients."""
    with torch.enable_grad():
        offset = torch.zeros_like(w, requires_grad=True)
        logits = G.attribute_logits(_broadcast(G, w.detach() + offset))
        result = {}
        for i, name in enumerate(names):
            (grad,) = torch.autograd.grad(logits[name].sum(), offset, retain_graph=i < len(names) - 1)
            result[name] = grad / (grad.norm(dim=1, keepdim=True) + 1e-8)
    return result


def fit_svm_directions(G: ProceduralGenerator, *, num: int, seed: int) -> dict[str, torch.Tensor]:
    """InterfaceGAN's attribute-level directions: unit normals of linear SVMs on ground-truth labels."""
    w = torch.randn([num, G.w_dim], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        labels = gt_logits(G, w) > 0
    directions = {}
    for idx, name in enumerate(ATTRIBUTES):
        svm = LinearSVC(C=0.01, dual=False, max_iter=5000).fit(w.numpy(), labels[:, idx].numpy())
        normal = torch.tensor(svm.coef_[0], dtype=torch.float32)
        directions[name] = normal / normal.norm()
    return directions


def gt_edit(
    G: ProceduralGenerator,
    w0: torch.Tensor,
    *,
    primal: str,
    conditions: Sequence[str],
    levels: dict[str, torch.Tensor],
    steps: int,
    step: float,
    lambda1: float,
    lambda2: float,
) -> torch.Tensor:
    """The IALS incremental update with ground-truth gradients; returns the frames `[N, steps + 1, w_dim]`."""
    w = w0.clone()
    frames = [w]
    for _ in range(steps):
        needed = ([primal] if lambda1 != 1 else []) + (list(conditions) if lambda2 != 1 else [])
        specific = gt_directions(G, w, needed) if needed else {}
        direction = levels[primal].expand_as(w)
        if lambda1 != 1:
            direction = instance_aware_direction(levels[primal], specific[primal], lam=lambda1)
        conds = condition_directions(
            [levels[c] for c in conditions],
            [specific[c] for c in conditions] if lambda2 != 1 else None,
            lambda2=lambda2,
        )
        w = w + step * conditional_direction(direction, conds)
        frames.append(w)
    return torch.stack(frames, dim=1)


def frame_labels(G: ProceduralGenerator, frames: torch.Tensor) -> torch.Tensor:
    """Ground-truth labels `[N, F, A]` of frames `[N, F, w_dim]`."""
    with torch.no_grad():
        return (gt_logits(G, frames.flatten(0, 1)) > 0).reshape(*frames.shape[:2], len(ATTRIBUTES))


def source_faces(
    G: ProceduralGenerator, *, attribute: str, source: bool, num: int, psi: float, seed: int
) -> torch.Tensor:
    """`num` latents `[num, w_dim]` at truncation psi whose ground-truth label of `attribute` is `source`."""
    gen = torch.Generator().manual_seed(seed)
    kept: list[torch.Tensor] = []
    total = 0
    while total < num:
        w = G.w_avg.lerp(torch.randn([20000, G.w_dim], generator=gen), psi)
        with torch.no_grad():
            mask = (gt_logits(G, w)[:, ATTRIBUTES.index(attribute)] > 0) == source
        kept.append(w[mask])
        total += int(mask.sum())
    return torch.cat(kept)[:num]


def phi_matrix(labels: torch.Tensor) -> np.ndarray:
    x = labels.double().numpy()
    phi: np.ndarray = np.corrcoef(x.T)
    return phi


# ----------------------------------------------------------------------------


def bench_speed(G: ProceduralGenerator) -> None:
    print("== Render time")
    for batch in (32, 1):
        ws = G.mapping(torch.randn([batch, G.z_dim], generator=torch.Generator().manual_seed(0)))
        with torch.no_grad():
            for _ in range(3):
                G.synthesis(ws)
            reps = 20
            start = time.perf_counter()
            for _ in range(reps):
                G.synthesis(ws)
        print(f"synthesis, batch {batch:2d}: {(time.perf_counter() - start) / reps * 1000:.1f} ms")
    ws = G.mapping(torch.randn([32, G.z_dim], generator=torch.Generator().manual_seed(0)))
    reps = 5
    start = time.perf_counter()
    for _ in range(reps):
        w = ws.clone().requires_grad_(True)
        torch.autograd.grad(G.synthesis(w).square().mean(), w)
    print(f"forward + backward to ws, batch 32: {(time.perf_counter() - start) / reps * 1000:.1f} ms")


def bench_biases(G: ProceduralGenerator, *, num_faces: int, seed: int) -> None:
    print(f"\n== Ground-truth biases at psi = 1: {num_faces} faces (population: 200,000 latents)")
    ws = G.mapping(torch.randn([num_faces, G.z_dim], generator=torch.Generator().manual_seed(seed)))
    pop_w = torch.randn([200000, G.w_dim], generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        labels = torch.stack([G.attribute_labels(ws)[a] for a in ATTRIBUTES], dim=1)
        pop_labels = gt_logits(G, pop_w) > 0
    freq, pop_freq = labels.double().mean(0), pop_labels.double().mean(0)
    print(f"{'attribute':<12}{'target':>8}{'sample':>8}{'population':>12}")
    for i, name in enumerate(ATTRIBUTES):
        print(f"{name:<12}{BIAS_TABLE['frequencies'][name]:>8.3f}{freq[i]:>8.3f}{pop_freq[i]:>12.3f}")
    phi, pop_phi = phi_matrix(labels), phi_matrix(pop_labels)
    print(f"\n{'pair (phi)':<22}{'target':>8}{'sample':>8}{'population':>12}")
    worst = 0.0
    for a, b in itertools.combinations(ATTRIBUTES, 2):
        target = BIAS_TABLE["phi"].get(f"{a}|{b}", 0.0)
        i, j = ATTRIBUTES.index(a), ATTRIBUTES.index(b)
        worst = max(worst, abs(phi[i, j] - target))
        print(f"{a + '|' + b:<22}{target:>8.3f}{phi[i, j]:>8.3f}{pop_phi[i, j]:>12.3f}")
    print(
        f"largest |sample - target| of phi: {worst:.3f} (standard error of a phi on {num_faces} faces: "
        f"~{1 / np.sqrt(num_faces):.3f})"
    )
    young, male, glasses = (labels[:, ATTRIBUTES.index(a)] for a in ("young", "male", "eyeglasses"))
    smiling = labels[:, ATTRIBUTES.index("smiling")]
    print(
        f"P(eyeglasses | old) = {glasses[~young].double().mean():.3f}, "
        f"P(eyeglasses | young) = {glasses[young].double().mean():.3f}"
    )
    print(
        f"P(smiling | female) = {smiling[~male].double().mean():.3f}, "
        f"P(smiling | male) = {smiling[male].double().mean():.3f}"
    )
    with torch.no_grad():
        beard = G.face_parameters(ws)["beard"] > 0.5
    target = BIAS_TABLE["conditionals"]["beard|male"]
    print(
        f"P(beard | male) = {beard[male].double().mean():.3f} (target {target}), "
        f"P(beard | female) = {beard[~male].double().mean():.3f} (target 0)"
    )


def bench_visual_response(G: ProceduralGenerator, *, num: int, seed: int) -> None:
    print(f"\n== Visual response: RMS pixel change per unit step along the truth gradient, {num} faces")
    w = torch.randn([num, G.w_dim], generator=torch.Generator().manual_seed(seed))
    dirs = gt_directions(G, w, ATTRIBUTES)
    eps = 0.05
    with torch.no_grad():
        base = G.synthesis(_broadcast(G, w))
        for name in ATTRIBUTES:
            moved = G.synthesis(_broadcast(G, w + eps * dirs[name]))
            change = (moved - base).square().mean(dim=(1, 2, 3)).sqrt() / eps  # [N]
            q = torch.quantile(change, torch.tensor([0.0, 0.05, 0.5]))
            print(f"{name:<12} min {q[0]:.4f}  5% {q[1]:.4f}  median {q[2]:.4f}")
    offset = torch.zeros_like(w, requires_grad=True)
    (grad,) = torch.autograd.grad(G.synthesis(_broadcast(G, w) + offset.unsqueeze(1)).mean(), offset)
    print(
        f"gradient of the mean pixel w.r.t. ws: finite {bool(torch.isfinite(grad).all())}, "
        f"min norm over faces {grad.norm(dim=1).min():.2e}"
    )


def bench_flips(
    G: ProceduralGenerator,
    levels: dict[str, torch.Tensor],
    *,
    num: int,
    psis: Sequence[float],
    steps: int,
    step: float,
    seed: int,
) -> None:
    print(f"\n== Flip rate of one-attribute IALS edits (lambda1 0.75, {steps} steps of {step}), {num} faces")
    for psi in psis:
        row = []
        for name in ATTRIBUTES:
            for sign in (1, -1):
                w0 = source_faces(G, attribute=name, source=sign < 0, num=num, psi=psi, seed=seed)
                frames = gt_edit(
                    G,
                    w0,
                    primal=name,
                    conditions=(),
                    levels=levels,
                    steps=steps,
                    step=sign * step,
                    lambda1=0.75,
                    lambda2=0.0,
                )
                labels = frame_labels(G, frames)[:, :, ATTRIBUTES.index(name)]
                flipped = (labels[:, -1] != labels[:, 0]).double().mean()
                row.append(f"{name}{'+' if sign > 0 else '-'} {flipped:.2f}")
        print(f"psi {psi}: " + ", ".join(row))


def bench_dt(
    G: ProceduralGenerator,
    levels: dict[str, torch.Tensor],
    *,
    num: int,
    psi: float,
    steps: int,
    step: float,
    seed: int,
) -> None:
    methods = {"IALS (0.75, 0)": (0.75, 0.0), "InterfaceGAN (1, 1)": (1.0, 1.0)}
    print(f"\n== Ground-truth DT, {num} faces per direction at psi = {psi}, {steps} steps of {step}")
    print(f"{'primal':<11}{'condition':<11}{'dir':>4}" + "".join(f"{m:>28}" for m in methods))
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in methods}
    for primal, sign in itertools.product(ATTRIBUTES, (1, -1)):
        w0 = source_faces(G, attribute=primal, source=sign < 0, num=num, psi=psi, seed=seed)
        for condition in ATTRIBUTES:
            if condition == primal:
                continue
            cells = []
            for method, (lambda1, lambda2) in methods.items():
                frames = gt_edit(
                    G,
                    w0,
                    primal=primal,
                    conditions=[condition],
                    levels=levels,
                    steps=steps,
                    step=sign * step,
                    lambda1=lambda1,
                    lambda2=lambda2,
                )
                labels = frame_labels(G, frames)
                p, q = dt_curve(
                    labels[:, :, ATTRIBUTES.index(primal)], labels[:, :, ATTRIBUTES.index(condition)]
                )
                auc = dt_auc(p, q)
                results[method].append((auc, float(p[-1]), float(q[-1])))
                cells.append(f"AUC {auc:.3f} p {p[-1]:.2f} q {q[-1]:.2f}")
            head = f"{primal:<11}{condition:<11}{'+' if sign > 0 else '-':>4}"
            print(head + "".join(f"{c:>28}" for c in cells))
    print()
    for method, rows in results.items():
        arr = np.array(rows)
        print(
            f"{method:<20} mean DT-AUC {arr[:, 0].mean():.4f}   mean p_{steps} {arr[:, 1].mean():.3f}   "
            f"condition kept at step {steps} (mean q_{steps}) {arr[:, 2].mean():.3f}   "
            f"worst p_{steps} {arr[:, 1].min():.2f}"
        )


def write_sheet(G: ProceduralGenerator, path: str, *, seed: int) -> None:
    """32 faces at psi = 1, then per attribute 4 faces walked along the ground-truth gradient (-2 .. 2)."""
    from PIL import Image

    res = G.img_resolution
    w = torch.randn([32, G.w_dim], generator=torch.Generator().manual_seed(seed))

    def grid(images: torch.Tensor, cols: int) -> np.ndarray:
        pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        rows = pixels.shape[0] // cols
        pixels = pixels.reshape(rows, cols, res, res, 3).transpose(0, 2, 1, 3, 4)
        sheet: np.ndarray = pixels.reshape(rows * res, cols * res, 3)
        return sheet

    with torch.no_grad():
        parts = [grid(G.synthesis(_broadcast(G, w)), 8)]
    offsets = np.linspace(-2.0, 2.0, 8)
    for name in ATTRIBUTES:
        frames = []
        for total in offsets:
            n = int(round(abs(total) / 0.1))
            cur = w[:4].clone()
            for _ in range(n):
                cur = cur + float(np.sign(total)) * 0.1 * gt_directions(G, cur, [name])[name]
            with torch.no_grad():
                frames.append(G.synthesis(_broadcast(G, cur)))
        strip = torch.stack(frames, dim=1).flatten(0, 1)  # [4 * 8, 3, H, W]
        parts += [np.full((3, 8 * res, 3), 255, np.uint8), grid(strip, 8)]
    Image.fromarray(np.concatenate(parts)).save(path)
    print(f"\nsheet: {path} (32 faces; then {', '.join(ATTRIBUTES)}: 4 faces each, gradient walk -2 .. 2)")


def run(
    *,
    num_faces: int,
    dt_faces: int,
    psi: float,
    steps: int,
    step: float,
    svm_samples: int,
    resolution: int,
    seed: int,
    sheet: str | None,
    skip_dt: bool,
) -> None:
    G = ProceduralGenerator(img_resolution=resolution).eval().requires_grad_(False)
    print(f"ProceduralGenerator {G.init_kwargs}: num_ws {G.num_ws}, threads {torch.get_num_threads()}")
    bench_speed(G)
    bench_biases(G, num_faces=num_faces, seed=seed)
    bench_visual_response(G, num=256, seed=seed + 2)
    if sheet:
        write_sheet(G, sheet, seed=seed)
    if skip_dt:
        return
    start = time.perf_counter()
    levels = fit_svm_directions(G, num=svm_samples, seed=seed + 3)
    truth = {a: gt_directions(G, torch.zeros([1, G.w_dim]), [a])[a][0] for a in ATTRIBUTES}
    cosines = ", ".join(f"{a} {float(levels[a] @ truth[a]):.3f}" for a in ATTRIBUTES)
    print(
        f"\nSVM directions ({svm_samples} samples, {time.perf_counter() - start:.1f} s); cosine to the "
        f"ground-truth gradient at w_avg: {cosines}"
    )
    bench_flips(
        G,
        levels,
        num=dt_faces,
        psis=(psi, 1.0) if psi != 1.0 else (1.0,),
        steps=steps,
        step=step,
        seed=seed + 4,
    )
    bench_dt(G, levels, num=dt_faces, psi=psi, steps=steps, step=step, seed=seed + 5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-faces", type=int, default=2000, help="faces for the bias table")
    parser.add_argument("--dt-faces", type=int, default=200, help="faces per edit direction")
    parser.add_argument("--psi", type=float, default=0.5, help="truncation of the edited faces")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step", type=float, default=0.1)
    parser.add_argument("--svm-samples", type=int, default=10000)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sheet", default=None, help="write a picture sheet (PNG) here")
    parser.add_argument("--skip-dt", action="store_true", help="only speed, biases and the sheet")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(
        num_faces=args.num_faces,
        dt_faces=args.dt_faces,
        psi=args.psi,
        steps=args.steps,
        step=args.step,
        svm_samples=args.svm_samples,
        resolution=args.resolution,
        seed=args.seed,
        sheet=args.sheet,
        skip_dt=args.skip_dt,
    )


if __name__ == "__main__":
    main()
