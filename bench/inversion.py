"""Measure GAN inversion on a pack: reconstruction, speed, and whether inverted faces edit like true ones.

On `--num` generated faces whose true latent is known (seeds `--seed`.., the pack's truncation psi):

1. quality   mean PSNR (and perceptual distance) of the encoder alone and of the encoder plus the
             `--effort` optimisation (`models.inversion.invert_with_pack`, in batches of `--batch-size`);
             with `--from-avg` also the optimisation started from `w_avg`;
2. speed     side by side in one run: the encoder per image (batch 1), and the optimisation per image at
             batch 1 and at batch 8 (the first 8 faces, `--timing-steps` fixed steps, no early stop),
             with the ratio;
3. edits     for every attribute with an evaluator (else its steering classifier, said so), a
             `--edit-steps`-step IALS edit with the pack's defaults (step, lambda1, no condition) of
             the true latent and of the inverted one, towards the other label of the true face; the
             rate at which the evaluator's label of the last frame differs from frame 0's, for both,
             and how often the two edits agree.

Usage: python bench/inversion.py [--pack packs/demo] [--num 50] [--effort balanced] [--threads 2]
       [--timing-steps 50] [--from-avg]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from models.ials import EditAttribute, edit
from models.inversion import EFFORTS, InversionResult, classifier_perceptual, invert, invert_with_pack
from models.pack import ModelPack, load_pack
from models.sampling import sample_ws


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[Any, float]:
    """`(result of the last call, seconds per call)`."""
    start = time.perf_counter()
    result = None
    for _ in range(repeat):
        result = fn()
    return result, (time.perf_counter() - start) / repeat


def invert_all(pack: ModelPack, images: torch.Tensor, effort: str, batch_size: int) -> dict[str, Any]:
    """`invert_with_pack` on every image, in batches: codes, PSNR, perceptual distance, steps, time."""
    results: list[InversionResult] = []
    start = time.perf_counter()
    for first in range(0, images.shape[0], batch_size):
        results.append(invert_with_pack(pack, images[first : first + batch_size], effort=effort))
    seconds = time.perf_counter() - start
    return {
        "ws": torch.cat([r.ws for r in results]),
        "psnr": torch.cat([r.psnr for r in results]),
        "perceptual": torch.cat([r.perceptual_distance for r in results]),
        "steps": [r.steps_run for r in results],
        "seconds_per_image": seconds / images.shape[0],
    }


def optimisation_seconds(
    pack: ModelPack, images: torch.Tensor, start: torch.Tensor | None, *, effort: str, steps: int
) -> float:
    """Seconds of `steps` optimisation steps (no early stop) on `images` as one batch."""
    preset = EFFORTS[effort]
    perceptual = classifier_perceptual(pack)
    _, seconds = timed(
        lambda: invert(
            pack.generator, images, start_ws=start, perceptual=perceptual, steps=steps, lr=preset.lr,
            pixel_weight=preset.pixel_weight, perceptual_weight=preset.perceptual_weight,
            synthesis_kwargs=pack.edit_synthesis_kwargs, device=pack.device,
        )
    )  # fmt: skip
    return seconds


def edit_flip_rates(
    pack: ModelPack, true_ws: torch.Tensor, inverted_ws: torch.Tensor, *, steps: int
) -> dict[str, dict[str, Any]]:
    """Per attribute: how often an IALS edit flips the evaluator's label, for true and inverted codes."""
    defaults = pack.defaults
    kind = defaults["direction_kind"]
    out: dict[str, dict[str, Any]] = {}
    for name, attribute in pack.attributes.items():
        judge = attribute.evaluator if attribute.evaluator is not None else attribute.steering
        steer = EditAttribute(name=name, classifier=attribute.steering, direction=attribute.directions[kind])

        def labels(ws: torch.Tensor, judge: Any = judge) -> torch.Tensor:
            with torch.no_grad():
                images = pack.generator.synthesis(ws, noise_mode="const")
                decided: torch.Tensor = judge.probability(images) > 0.5  # [N]
                return decided

        start_labels = labels(true_ws)
        flips: dict[str, torch.Tensor] = {}
        for which, ws0 in (("true", true_ws), ("inverted", inverted_ws)):
            flipped = torch.zeros(ws0.shape[0], dtype=torch.bool)
            for positive in (True, False):  # Raise the attribute of faces without it, lower it otherwise.
                mask = start_labels != positive
                if not mask.any():
                    continue
                result = edit(
                    pack.generator, ws0[mask], primal=steer, steps=steps,
                    step=abs(defaults["step"]) * (1 if positive else -1), lambda1=defaults["lambda1"],
                    lambda2=defaults["lambda2"], synthesis_kwargs=pack.edit_synthesis_kwargs,
                    device=pack.device,
                )  # fmt: skip
                last, first = result.ws[:, -1], result.ws[:, 0]
                flipped[mask] = (labels(last) != labels(first)).cpu()
            flips[which] = flipped
        out[name] = {
            "judge": "evaluator" if attribute.evaluator is not None else "steering",
            "true": float(flips["true"].double().mean()),
            "inverted": float(flips["inverted"].double().mean()),
            "agree": float((flips["true"] == flips["inverted"]).double().mean()),
        }
    return out


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    pack = load_pack(args.pack, args.device)
    G = pack.generator
    psi = pack.defaults["truncation_psi"]
    seeds = list(range(args.seed, args.seed + args.num))
    true_ws = sample_ws(G, seeds, truncation_psi=psi, device=pack.device)
    with torch.no_grad():
        images = G.synthesis(true_ws, noise_mode="const")  # [N, C, H, W]
    print(
        f"pack {args.pack}: {G.img_resolution} px, {G.num_ws} x {G.w_dim} w+, "
        f"encoder: {pack.encoder is not None}; {args.num} faces (seeds {args.seed}.., psi {psi}); "
        f"{args.threads} thread(s); effort {args.effort!r} = {EFFORTS[args.effort]}"
    )

    # Quality (after a warm-up of every code path).
    invert_with_pack(pack, images[:2], effort="encoder")
    optimisation_seconds(pack, images[:2], None, effort=args.effort, steps=3)
    encoder_only = invert_all(pack, images, "encoder", args.batch_size)
    optimised = invert_all(pack, images, args.effort, args.batch_size)
    rows = [("encoder only" if pack.encoder is not None else "w_avg only", encoder_only),
            (f"encoder + {args.effort}" if pack.encoder is not None else args.effort, optimised)]  # fmt: skip
    if args.from_avg and pack.encoder is not None:
        encoder, pack.encoder = pack.encoder, None
        try:
            rows.append((f"w_avg + {args.effort}", invert_all(pack, images, args.effort, args.batch_size)))
        finally:
            pack.encoder = encoder
    print(f"\nreconstruction of {args.num} faces (batches of {args.batch_size}):")
    header = f"{'PSNR mean':>9} {'min':>6} {'max':>6} {'percept.':>9} {'steps':>11} {'s/image':>8}"
    print(f"  {'method':<24} {header}")
    for label, row in rows:
        p = row["psnr"]
        steps = f"{min(row['steps'])}-{max(row['steps'])}"
        print(
            f"  {label:<24} {p.mean():9.2f} {p.min():6.2f} {p.max():6.2f} {row['perceptual'].mean():9.5f} "
            f"{steps:>11} {row['seconds_per_image']:8.3f}"
        )
    latent_error = {label: float((row["ws"] - true_ws).square().mean()) for label, row in rows}
    print("  latent MSE to the true w+ (much of w+ may not change the picture): "
          + ", ".join(f"{k} {v:.4f}" for k, v in latent_error.items()))  # fmt: skip

    # Speed.
    batch = images[:8]
    start = None
    encoder_per_image = 0.0
    if pack.encoder is not None:
        net = pack.encoder
        with torch.no_grad():
            start = net(batch)
            _, encoder_seconds = timed(lambda: [net(batch[i : i + 1]) for i in range(8)], repeat=3)
        encoder_per_image = encoder_seconds / 8
    one = sum(
        optimisation_seconds(pack, batch[i : i + 1], None if start is None else start[i : i + 1],
                             effort=args.effort, steps=args.timing_steps)
        for i in range(8)
    ) / 8  # fmt: skip
    eight = optimisation_seconds(pack, batch, start, effort=args.effort, steps=args.timing_steps) / 8
    print(f"\nspeed ({args.threads} thread(s), {args.timing_steps} optimisation steps, per image):")
    if pack.encoder is not None:
        print(f"  encoder, batch 1:         {encoder_per_image * 1000:8.1f} ms")
    print(f"  optimisation, batch 1:    {one:8.3f} s  ({one / args.timing_steps * 1000:.1f} ms/step)")
    print(f"  optimisation, batch 8:    {eight:8.3f} s  ({eight / args.timing_steps * 1000:.1f} ms/step)")
    print(f"  batch 1 / batch 8:        {one / eight:8.2f}x")

    # Edits.
    steps = args.edit_steps or pack.defaults["steps"]
    d = pack.defaults
    print(
        f"\nedits ({steps} steps, step {d['step']}, lambda1 {d['lambda1']}, {d['direction_kind']}, "
        f"no condition): fraction of faces whose label flips, true latent vs {rows[1][0]} latent"
    )
    rates = edit_flip_rates(pack, true_ws, optimised["ws"], steps=steps)
    print(f"  {'attribute':<12} {'judge':<10} {'true':>6} {'inverted':>9} {'agree':>6}")
    for name, r in rates.items():
        print(f"  {name:<12} {r['judge']:<10} {r['true']:6.2f} {r['inverted']:9.2f} {r['agree']:6.2f}")
    mean = {key: sum(r[key] for r in rates.values()) / len(rates) for key in ("true", "inverted", "agree")}
    print(f"  {'mean':<12} {'':<10} {mean['true']:6.2f} {mean['inverted']:9.2f} {mean['agree']:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", default="packs/demo", help="model pack folder (default packs/demo)")
    parser.add_argument("--num", type=int, default=50, help="generated faces")
    parser.add_argument("--seed", type=int, default=1000, help="first seed of the faces")
    parser.add_argument("--effort", default="balanced", choices=[e for e in EFFORTS if EFFORTS[e].steps > 0])
    parser.add_argument("--batch-size", type=int, default=8, help="faces per inversion batch")
    parser.add_argument("--timing-steps", type=int, default=50, help="optimisation steps of the timing runs")
    parser.add_argument("--edit-steps", type=int, default=None, help="edit steps (default: the pack's)")
    parser.add_argument("--from-avg", action="store_true", help="also optimise from w_avg, without encoder")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
