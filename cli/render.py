"""`ials render`: latents or seeds to pictures (PNG) or to the raw generator output (.npy)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cli.common import (
    CliError,
    load_latent_file,
    load_pack_for_cli,
    pick_device,
    psi_arg,
    seed_arg,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack", help="model pack folder (default: the configured default pack)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--latent", help=".npy latent: [w_dim], [N, w_dim], [num_ws, w_dim] or [N, num_ws, w_dim]"
    )
    source.add_argument("--seed", type=seed_arg, nargs="+", help="one or more seeds of generated faces")
    parser.add_argument(
        "--out",
        required=True,
        help="output .png (one file per image when several) or .npy (the raw float32 generator output "
        "[N, C, H, W], nominally in [-1, 1], not clamped)",
    )
    parser.add_argument("--noise", choices=["const", "none", "random"], default="const", help="noise mode")
    parser.add_argument(
        "--psi",
        type=psi_arg,
        default=None,
        help="truncation psi, w_avg + psi * (w - w_avg) (default: the pack's for seeds, none for --latent)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device: cpu, cuda, cuda:1, ... (default: IALS_DEVICE, else cpu)"
    )


def output_paths(out: Path, count: int) -> list[Path]:
    """`face.png` for one image; `face-0000.png`, `face-0001.png`, ... for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{idx:04d}{out.suffix}") for idx in range(count)]


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in {".png", ".npy"}:
        raise CliError(f"--out must end in .png or .npy, got {out.name!r}")

    import torch
    from PIL import Image

    from models.ials import render_frames
    from models.images import to_uint8
    from models.sampling import sample_ws, truncate

    device = pick_device(args.device)
    pack = load_pack_for_cli(args.pack, str(device))
    G = pack.generator
    if args.seed is not None:
        psi = pack.defaults["truncation_psi"] if args.psi is None else args.psi
        ws = sample_ws(G, args.seed, truncation_psi=psi, device=device)
    else:
        ws = torch.from_numpy(load_latent_file(args.latent, w_dim=G.w_dim, num_ws=G.num_ws)).to(device)
        if args.psi is not None:
            ws = truncate(ws, pack.w_avg, truncation_psi=args.psi)
    images = render_frames(G, ws, noise_mode=args.noise, device=device)  # [N, C, H, W]

    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        with open(out, "wb") as f:  # np.save on a path would append ".npy" to "x.NPY"
            np.save(f, images.cpu().numpy().astype(np.float32))
        print(f"wrote {out} {list(images.shape)}")
        return 0
    pixels = to_uint8(images)
    for path, picture in zip(output_paths(out, len(pixels)), pixels, strict=True):
        Image.fromarray(picture.squeeze(-1) if picture.shape[-1] == 1 else picture).save(path)
        print(f"wrote {path}")
    return 0
