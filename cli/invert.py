"""`ials invert`: align the largest face of a photo, invert it into the pack's `w+` with a progress bar."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cli.common import CliError, load_pack_for_cli, pick_device, progress_bar

EFFORT_NAMES = ("encoder", "fast", "balanced", "best")  # models.inversion.EFFORTS, without importing torch.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("photo", metavar="PHOTO", help="photo with a face (PNG, JPEG, ...)")
    parser.add_argument("--pack", help="model pack folder (default: the configured default pack)")
    parser.add_argument(
        "--effort",
        choices=EFFORT_NAMES,
        default="balanced",
        help="encoder only, or encoder plus a short (fast), medium (balanced) or long (best) optimisation",
    )
    parser.add_argument(
        "--vgg16",
        metavar="PTH",
        help="perceptual loss from a torchvision VGG16 state dict (default: the pack's classifiers)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device: cpu, cuda, cuda:1, ... (default: IALS_DEVICE, else cpu)"
    )
    parser.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from models.align import (
        ImageDecodeError,
        NoFaceFound,
        align_largest_face,
        face_recognition_models_predictor_path,
        load_dlib_models,
        load_image,
    )
    from models.images import from_uint8, to_uint8
    from models.inversion import EFFORTS, PerceptualNetwork, invert_with_pack, load_vgg16_perceptual
    from service.config import get_settings

    assert set(EFFORTS) == set(EFFORT_NAMES)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    device = pick_device(args.device)
    pack = load_pack_for_cli(args.pack, str(device))
    perceptual: PerceptualNetwork | None = None
    if args.vgg16 is not None:
        try:
            perceptual = load_vgg16_perceptual(args.vgg16).to(device)
        except ValueError as exc:
            raise CliError(f"cannot use --vgg16 {args.vgg16}: {exc}") from exc
    timings["load_pack"] = time.perf_counter() - started

    # Decode and align.
    tic = time.perf_counter()
    with open(args.photo, "rb") as photo_file:
        data = photo_file.read()
    try:
        photo = load_image(data, max_pixels=get_settings().max_image_pixels)
    except ImageDecodeError as exc:
        raise CliError(f"cannot read {args.photo}: {exc}") from exc
    try:
        detector, predictor = load_dlib_models(face_recognition_models_predictor_path())
    except FileNotFoundError as exc:
        raise CliError(f"no face landmark model: {exc} (pip install face-recognition-models)") from exc
    try:
        aligned, faces_found = align_largest_face(
            photo, detector=detector, predictor=predictor, output_size=pack.img_resolution
        )
    except NoFaceFound as exc:
        raise CliError(
            f"no_face_found: {exc} ({args.photo}); use a photo with a roughly frontal face of 80 px or more"
        ) from exc
    timings["align"] = time.perf_counter() - tic

    # Invert.
    tic = time.perf_counter()
    with progress_bar("invert") as on_step:
        result = invert_with_pack(
            pack,
            from_uint8(aligned.image, device=device),
            effort=args.effort,
            perceptual=perceptual,
            on_step=on_step,
        )
    timings["invert"] = time.perf_counter() - tic

    # Write.
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(aligned.image).save(out / "aligned.png")
    Image.fromarray(to_uint8(result.reconstruction)[0]).save(out / "reconstruction.png")
    with open(out / "latent.npy", "wb") as f:
        np.save(f, result.ws.cpu().numpy().astype(np.float32))  # [1, num_ws, w_dim]
    timings["total"] = time.perf_counter() - started
    summary = {
        "photo": str(args.photo),
        "pack": str(pack.path),
        "effort": args.effort,
        "encoder": pack.encoder is not None,
        "perceptual": "vgg16" if perceptual is not None else "classifiers",
        "faces_found": faces_found,
        "psnr": round(float(result.psnr[0]), 3),
        "perceptual_distance": float(result.perceptual_distance[0]),
        "steps_run": result.steps_run,
        "final_losses": {name: values[-1] for name, values in result.losses.items() if values},
        "timings_s": {name: round(value, 3) for name, value in timings.items()},
    }
    (out / "inversion.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    print(
        f"wrote aligned.png, reconstruction.png, latent.npy, inversion.json to {out}: "
        f"{faces_found} face(s) found, PSNR {summary['psnr']:.2f} dB after {result.steps_run} steps"
    )
    return 0
