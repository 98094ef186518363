"""`ials edit`: one IALS edit run locally, with a progress bar; writes frames, latents and scores."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from cli.common import CliError, load_latent_file, load_pack_for_cli, pick_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack", help="model pack folder (default: the configured default pack)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--seed", type=int, help="seed of a generated face")
    source.add_argument("--latent", help=".npy latent of one face: [w_dim], [1, w_dim] or [num_ws, w_dim]")
    parser.add_argument("--primal", required=True, help="attribute to change")
    parser.add_argument("--conditions", nargs="*", default=[], help="attributes to keep")
    parser.add_argument("--steps", type=int, default=None, help="number of steps (default: the pack's)")
    parser.add_argument(
        "--step",
        type=float,
        default=None,
        help="step size k; its sign chooses increase (+) or decrease (-) (default: the pack's, increasing)",
    )
    parser.add_argument(
        "--lambda1", type=float, default=None, help="weight of the primal's attribute-level direction"
    )
    parser.add_argument(
        "--lambda2", type=float, default=None, help="weight of the conditions' attribute-level directions"
    )
    parser.add_argument(
        "--directions", default=None, help="attribute-level directions: interfacegan, averaged, ganspace"
    )
    parser.add_argument(
        "--target-score", type=float, default=None, help="stop once the primal probability crosses it"
    )
    parser.add_argument(
        "--psi", type=float, default=None, help="truncation psi for --seed (default: the pack's)"
    )
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image
    from tqdm import tqdm

    from models.ials import EditAttribute, edit
    from models.images import to_uint8
    from models.sampling import sample_ws

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
        ws = torch.from_numpy(load_latent_file(args.latent, w_dim=G.w_dim, num_ws=G.num_ws)).to(device)
        if ws.shape[0] != 1:
            raise CliError(f"--latent must hold one face, got {ws.shape[0]}")

    def steer(name: str) -> EditAttribute:
        attribute = pack.attributes[name]
        return EditAttribute(name=name, classifier=attribute.steering, direction=attribute.directions[kind])

    steps = defaults["steps"] if args.steps is None else args.steps
    params: dict[str, Any] = {
        "primal": args.primal,
        "conditions": list(args.conditions),
        "steps": steps,
        "step": defaults["step"] if args.step is None else args.step,
        "lambda1": defaults["lambda1"] if args.lambda1 is None else args.lambda1,
        "lambda2": defaults["lambda2"] if args.lambda2 is None else args.lambda2,
        "directions": kind,
        "target_score": args.target_score,
    }
    with tqdm(total=steps, desc="edit", unit="step") as bar:
        try:
            result = edit(
                G,
                ws,
                primal=steer(args.primal),
                conditions=[steer(name) for name in args.conditions],
                steps=steps,
                step=params["step"],
                lambda1=params["lambda1"],
                lambda2=params["lambda2"],
                target_score=args.target_score,
                return_images=True,
                on_step=lambda i, n: bar.update(1),
                device=device,
            )
        except ValueError as exc:
            raise CliError(str(exc)) from exc

    assert result.images is not None
    images = result.images[0]  # [F, C, H, W]
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
        params={**params, "pack": str(pack.path), "seed": args.seed, "latent": args.latent},
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
    np.save(out / "latents.npy", latents.astype(np.float32))
    frames: list[dict[str, Any]] = [
        {
            "frame": idx,
            "steering": {name: values[idx] for name, values in steering.items()},
            "evaluator": {name: values[idx] for name, values in evaluated.items()},
        }
        for idx in range(len(pictures))
    ]
    (out / "scores.json").write_text(json.dumps({"frames": frames}, indent=2))
    (out / "edit.json").write_text(json.dumps(params, indent=2))
    print(f"wrote {len(pictures)} frames, strip.png, latents.npy, scores.json to {out}")
    first, last = frames[0]["steering"], frames[-1]["steering"]
    for name in steering:
        print(f"  {name}: {first[name]:.3f} -> {last[name]:.3f}")
