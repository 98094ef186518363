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
    progress_bar,
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

    from models.editing import check_edit_attributes, edit_with_pack, start_ws
    from models.images import to_uint8

    device = pick_device(args.device)
    pack = load_pack_for_cli(args.pack, str(device))
    defaults = pack.defaults
    G = pack.generator

    kind = args.directions or defaults["direction_kind"]
    try:
        check_edit_attributes(pack, args.primal, args.conditions, kind)
    except ValueError as exc:
        raise CliError(str(exc)) from exc

    if args.seed is not None:
        psi = defaults["truncation_psi"] if args.psi is None else args.psi
        ws = start_ws(pack, seed=args.seed, truncation_psi=psi)
    else:
        psi = args.psi
        latent = torch.from_numpy(load_latent_file(args.latent, w_dim=G.w_dim, num_ws=G.num_ws))
        if latent.shape[0] != 1:
            raise CliError(f"--latent must hold one face, got {latent.shape[0]}")
        ws = start_ws(pack, latent=latent, truncation_psi=psi)

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
    try:
        with progress_bar("edit") as on_step:
            result = edit_with_pack(
                pack,
                ws,
                primal=args.primal,
                conditions=args.conditions,
                direction_kind=kind,
                steps=params["steps"],
                step=params["step"],
                lambda1=params["lambda1"],
                lambda2=params["lambda2"],
                target_score=args.target_score,
                on_step=on_step,
            )
    except ValueError as exc:
        raise CliError(str(exc)) from exc

    params["stopped_at"] = result.stopped_at
    params["stop_reason"] = result.stop_reason
    write_edit(
        Path(args.out),
        pixels=to_uint8(result.images),
        latents=result.ws.cpu().numpy(),
        steering=result.steering,
        evaluated=result.evaluated,
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
    from models.editing import scores_table

    frames_dir = out / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    pictures = [p.squeeze(-1) if p.shape[-1] == 1 else p for p in pixels]
    for idx, picture in enumerate(pictures):
        image_module.fromarray(picture).save(frames_dir / f"frame_{idx:04d}.png")
    image_module.fromarray(np.concatenate(pictures, axis=1)).save(out / "strip.png")
    with open(out / "latents.npy", "wb") as f:
        np.save(f, latents.astype(np.float32))
    scores = scores_table(steering, evaluated, params["stopped_at"], params["stop_reason"])
    frames = scores["frames"]
    (out / "scores.json").write_text(json.dumps(scores, indent=2, allow_nan=False))
    (out / "edit.json").write_text(json.dumps(params, indent=2, allow_nan=False))
    print(f"wrote {len(pictures)} frames, strip.png, latents.npy, scores.json to {out}")
    first, last = frames[0]["steering"], frames[-1]["steering"]
    for name in steering:
        print(f"  {name}: {first[name]:.3f} -> {last[name]:.3f}")
    stopped_at = params["stopped_at"]
    if params["stop_reason"] == "degenerate":
        print(
            f"  at frame {stopped_at} the primal direction fell into the span of the conditions "
            "(nothing left to move along); later frames repeat it"
        )
    elif stopped_at < len(pictures) - 1:
        print(f"  the primal reached --target-score at frame {stopped_at}; later frames repeat it")
