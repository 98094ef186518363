"""`ials edit`: one IALS edit run locally, with a progress bar; writes frames, latents and scores."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from cli.common import (
    CliError,
    finite_float_arg,
    load_latent_file,
    load_pack_for_cli,
    pick_device,
    psi_arg,
    seed_arg,
    step_arg,
    steps_arg,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack", help="model pack folder (default: the configured default pack)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--seed", type=seed_arg, help="seed of a generated face")
    source.add_argument("--latent", help=".npy latent of one face: [w_dim], [1, w_dim] or [num_ws, w_dim]")
    parser.add_argument("--primal", required=True, help="attribute to change")
    parser.add_argument("--conditions", nargs="*", default=[], help="attributes to keep")
    parser.add_argument("--steps", type=steps_arg, default=None, help="number of steps (default: the pack's)")
    parser.add_argument(
        "--step",
        type=step_arg,
        default=None,
        help="step size k; its sign chooses increase (+) or decrease (-) (default: the pack's, increasing)",
    )
    parser.add_argument(
        "--lambda1",
        type=finite_float_arg,
        default=None,
        help="weight of the primal's attribute-level direction",
    )
    parser.add_argument(
        "--lambda2",
        type=finite_float_arg,
        default=None,
        help="weight of the conditions' attribute-level directions",
    )
    parser.add_argument(
        "--directions", default=None, help="attribute-level directions: interfacegan, averaged, ganspace"
    )
    parser.add_argument(
        "--target-score",
        type=finite_float_arg,
        default=None,
        help="stop once the primal probability crosses it",
    )
    parser.add_argument(
        "--psi",
        type=psi_arg,
        default=None,
        help="truncation psi (default: the pack's for --seed, none for --latent)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device: cpu, cuda, cuda:1, ... (default: IALS_DEVICE, else cpu)"
    )
    parser.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from tqdm import tqdm

    from models.ials import EditAttribute, edit
    from models.images import to_uint8
    from models.sampling import sample_ws, truncate

    device = pick_device(args.device)
    pack = load_pack_for_cli(args.pack, str(device))
    defaults = pack.defaults
    G = pack.generator

    names = [args.primal, *args.conditions]
    for name in names:
        if name not in pack.attributes:
            raise CliError(f"unknown attribute {name!r}; this pack has: {', '.join(sorted(pack.attributes))}")
    if args.primal in args.conditions:
        raise CliError(f"the primal attribute {args.primal!r} cannot also be a condition")
    if len(set(args.conditions)) != len(args.conditions):
        raise CliError("a condition is named twice")
    kind = args.directions or defaults["direction_kind"]
    for name in names:
        if kind not in pack.attributes[name].directions:
            available = ", ".join(sorted(pack.attributes[name].directions))
            raise CliError(f"attribute {name!r} has no {kind!r} direction in this pack (it has: {available})")

    if args.seed is not None:
        psi = defaults["truncation_psi"] if args.psi is None else args.psi
        ws = sample_ws(G, [args.seed], truncation_psi=psi, device=device)
    else:
        psi = args.psi
        ws = torch.from_numpy(load_latent_file(args.latent, w_dim=G.w_dim, num_ws=G.num_ws)).to(device)
        if ws.shape[0] != 1:
            raise CliError(f"--latent must hold one face, got {ws.shape[0]}")
        if psi is not None:
            ws = truncate(ws, pack.w_avg, truncation_psi=psi)

    def steer(name: str) -> EditAttribute:
        attribute = pack.attributes[name]
        return EditAttribute(name=name, classifier=attribute.steering, direction=attribute.directions[kind])

    params: dict[str, Any] = {
        "pack": str(pack.path),
        "seed": args.seed,
        "latent": args.latent,
        "truncation_psi": psi,
        "noise_mode": "const",
        "primal": args.primal,
        "conditions": list(args.conditions),
        "steps": defaults["steps"] if args.steps is None else args.steps,
        "step": defaults["step"] if args.step is None else args.step,
        "lambda1": defaults["lambda1"] if args.lambda1 is None else args.lambda1,
        "lambda2": defaults["lambda2"] if args.lambda2 is None else args.lambda2,
        "directions": kind,
        "target_score": args.target_score,
    }
    bar: tqdm[Any] | None = None

    def on_step(i: int, n: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=n, desc="edit", unit="step")
        bar.update(i - bar.n)

    try:
        result = edit(
            G,
            ws,
            primal=steer(args.primal),
            conditions=[steer(name) for name in args.conditions],
            steps=params["steps"],
            step=params["step"],
            lambda1=params["lambda1"],
            lambda2=params["lambda2"],
            target_score=args.target_score,
            return_images=True,
            synthesis_kwargs=pack.edit_synthesis_kwargs,
            on_step=on_step,
            device=device,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    finally:
        if bar is not None:
            bar.close()

    assert result.images is not None
    scores_finite = all(bool(torch.isfinite(scores).all()) for scores in result.scores.values())
    if not (bool(torch.isfinite(result.ws).all()) and scores_finite):
        raise CliError(
            "the edit left the finite range (latents or scores are NaN or infinite); use a smaller --step"
        )
    images = result.images[0]  # [F, C, H, W]
    params["stopped_at"] = int(result.stopped_at[0])
    evaluators = {name: pack.attributes[name].evaluator for name in names}
    with torch.no_grad():
        evaluated = {
            name: model.probability(images).cpu().tolist()
            for name, model in evaluators.items()
            if model is not None
        }
    write_edit(
        Path(args.out),
        pixels=to_uint8(images),
        latents=result.ws[0].cpu().numpy(),
        steering={name: scores[0].cpu().tolist() for name, scores in result.scores.items()},
        evaluated=evaluated,
        params=params,
        image_module=Image,
    )
    return 0


def write_edit(
    out: Path,
    *,
    pixels: np.ndarray,
    latents: np.ndarray,
    steering: dict[str, list[float]],
    evaluated: dict[str, list[float]],
    params: dict[str, Any],
    image_module: Any,
) -> None:
    """Write `frames/frame_NNNN.png`, `strip.png`, `latents.npy`, `scores.json` and `edit.json`."""
    frames_dir = out / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    pictures = [p.squeeze(-1) if p.shape[-1] == 1 else p for p in pixels]
    for idx, picture in enumerate(pictures):
        image_module.fromarray(picture).save(frames_dir / f"frame_{idx:04d}.png")
    image_module.fromarray(np.concatenate(pictures, axis=1)).save(out / "strip.png")
    with open(out / "latents.npy", "wb") as f:
        np.save(f, latents.astype(np.float32))
    frames: list[dict[str, Any]] = [
        {
            "frame": idx,
            "steering": {name: values[idx] for name, values in steering.items()},
            "evaluator": {name: values[idx] for name, values in evaluated.items()},
        }
        for idx in range(len(pictures))
    ]
    scores = {"stopped_at": params["stopped_at"], "frames": frames}
    (out / "scores.json").write_text(json.dumps(scores, indent=2, allow_nan=False))
    (out / "edit.json").write_text(json.dumps(params, indent=2, allow_nan=False))
    print(f"wrote {len(pictures)} frames, strip.png, latents.npy, scores.json to {out}")
    first, last = frames[0]["steering"], frames[-1]["steering"]
    for name in steering:
        print(f"  {name}: {first[name]:.3f} -> {last[name]:.3f}")
    if params["stopped_at"] < len(pictures) - 1:
        print(f"  the primal reached --target-score at frame {params['stopped_at']}; later frames repeat it")
