"""`ials convert`: NVIDIA StyleGAN2-ADA pickles, rosinality checkpoints or the IALS pretrain/ folder to packs.

    ials convert nvidia-pkl ffhq.pkl --classifiers pretrain/ --out packs/ffhq-sg2
    ials convert rosinality 550000.pt --classifiers pretrain/ --out packs/ffhq-ros
    ials convert ials-pretrain pretrain/ --out packs/ials-ffhq

A pack needs attributes (a steering classifier and at least one direction each). The IALS folder has
them; a generator-only checkpoint takes its classifiers from `--classifiers` (an IALS pretrain/ folder
or an existing pack) and gets directions fitted on its own samples (`--directions`, `--samples`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.common import CliError, int_range_arg, pick_device

if TYPE_CHECKING:
    import torch

    from models.networks.classifier import AttributeClassifier
    from models.pack import PackAttribute

FORMATS = {
    "nvidia-pkl": "NVIDIA StyleGAN2-ADA network pickle (.pkl; StyleGAN3 not yet)",
    "rosinality": "rosinality stylegan2-pytorch checkpoint (.pt)",
    "ials-pretrain": "the official IALS pretrain/ folder (StyleGAN v1, classifiers, directions)",
}
GENERATOR_KINDS = {"nvidia-pkl": "stylegan2", "rosinality": "stylegan2", "ials-pretrain": "stylegan1"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "format", choices=sorted(FORMATS), help="; ".join(f"{k}: {v}" for k, v in FORMATS.items())
    )
    parser.add_argument("src", help="the checkpoint file, or the pretrain/ folder for ials-pretrain")
    parser.add_argument("--out", required=True, help="the pack folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing pack at --out")
    parser.add_argument("--name", default=None, help="pack name (default: from the source)")
    parser.add_argument(
        "--dataset", default="ffhq", help="ials-pretrain: stylegan/<dataset> to convert (ffhq, celebahq)"
    )
    parser.add_argument(
        "--classifiers",
        default=None,
        help="nvidia-pkl, rosinality: steering classifiers from an IALS pretrain/ folder or an existing pack",
    )
    parser.add_argument(
        "--directions",
        nargs="+",
        default=["averaged"],
        choices=["averaged", "interfacegan", "ganspace"],
        help="nvidia-pkl, rosinality: direction kinds to fit (default: averaged, which needs no SVM)",
    )
    parser.add_argument(
        "--samples",
        type=int_range_arg(2, 100_000, "samples"),
        default=500,
        help="nvidia-pkl, rosinality: faces sampled to fit the directions (the official script: 500)",
    )
    parser.add_argument(
        "--seed", type=int_range_arg(0, 2**31 - 1, "seeds"), default=0, help="seed of those faces"
    )
    parser.add_argument(
        "--classifier-resolution",
        type=int_range_arg(8, 4096, "classifier resolutions"),
        default=256,
        help="input side of IALS classifiers (256, as the official scripts feed them)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device: cpu, cuda, cuda:1, ... (default: IALS_DEVICE, else cpu)"
    )


def _say(line: str) -> None:
    print(line, flush=True)


def _attributes_ials(
    args: argparse.Namespace, src: Path
) -> tuple[Any, dict[str, PackAttribute], dict[str, Any]]:
    from models.convert.ials_pretrain import load_ials_pretrain
    from models.pack import PackAttribute

    result = load_ials_pretrain(src, dataset=args.dataset, classifier_resolution=args.classifier_resolution)
    attributes = {
        name: PackAttribute(name, a.description, a.classifier, None, a.directions)
        for name, a in result.attributes.items()
    }
    for note in result.notes:
        _say(f"note: {note}")
    if result.latent_codes:
        example = result.latent_codes[0]
        _say(
            f"real_latent_code: {len(result.latent_codes)} codes "
            f"[{result.generator.num_ws}, {result.generator.w_dim}]"
            f", usable as they are: ials edit --pack {args.out} --latent {example} ..."
        )
    extra = {"dataset": args.dataset, "direction_folders": {"ours": "averaged"}}
    return result.generator, attributes, extra


def _load_generator(args: argparse.Namespace, src: Path) -> tuple[Any, dict[str, Any]]:
    from models.convert.nvidia_pkl import load_nvidia_pkl
    from models.convert.rosinality import load_rosinality

    if not src.is_file():
        raise CliError(f"{src} is not a file; {args.format} expects a {FORMATS[args.format]}")
    with open(src, "rb") as f:
        if args.format == "nvidia-pkl":
            return load_nvidia_pkl(f), {}
        result = load_rosinality(f)
    if not result.latent_avg_found:
        _say("note: the checkpoint has no latent_avg; w_avg is the mean of 4096 mapped latents (seed 0)")
    return result.generator, {"channel_multiplier": result.channel_multiplier}


def _classifiers(
    path: Path, resolution: int, device: torch.device
) -> dict[str, tuple[str, AttributeClassifier]]:
    """Steering classifiers (with descriptions) from an IALS pretrain/ folder or a pack."""
    from models.convert.ials_pretrain import ATTRIBUTES, load_ials_classifier
    from models.pack import PackError, load_pack

    if (path / "manifest.json").is_file():
        try:
            pack = load_pack(path, device)
        except PackError as exc:
            raise CliError(f"cannot load pack {path}: {exc}") from exc
        return {name: (a.description, a.steering) for name, a in pack.attributes.items()}
    found = sorted((path / "classifier").glob("*/weight.pkl"))
    if not found:
        raise CliError(
            f"--classifiers {path}: neither a pack (manifest.json) nor an IALS pretrain/ folder (classifier/)"
        )
    result = {}
    for weights in found:
        with open(weights, "rb") as f:
            classifier = load_ials_classifier(f, input_resolution=resolution, name=str(weights))
        name = weights.parent.name
        result[name] = (ATTRIBUTES.get(name, name), classifier.to(device))
    return result


def _fit_attributes(args: argparse.Namespace, G: Any, device: torch.device) -> dict[str, PackAttribute]:
    import torch

    from models.convert.directions import fit_directions
    from models.pack import PackAttribute

    if args.classifiers is None:
        raise CliError(
            f"{args.format} checkpoints hold a generator only; give --classifiers (an IALS pretrain/ folder "
            "or a pack) so that the pack has attributes"
        )
    classifiers = _classifiers(Path(args.classifiers), args.classifier_resolution, device)
    _say(
        f"fitting {' '.join(args.directions)} directions for {sorted(classifiers)} on {args.samples} samples"
    )
    try:
        directions, problems = fit_directions(
            G.to(device),
            {name: clf for name, (_, clf) in classifiers.items()},
            kinds=args.directions,
            num_samples=args.samples,
            generator=torch.Generator(device=device).manual_seed(args.seed),
            on_progress=lambda line: _say(f"  {line}"),
            device=device,
        )
    except (ValueError, RuntimeError) as exc:  # A zero averaged direction, CUDA out of memory, ...
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        raise CliError(f"fitting directions on {device} failed: {reason}") from exc
    for problem in problems:
        _say(f"note: {problem}")
    return {
        name: PackAttribute(name, description, classifier.cpu(), None, directions[name])
        for name, (description, classifier) in classifiers.items()
        if directions[name]
    }


def _default_kind(attributes: dict[str, PackAttribute]) -> str:
    from models.pack import DIRECTION_KINDS

    for kind in DIRECTION_KINDS:
        if all(kind in a.directions for a in attributes.values()):
            return kind
    raise CliError("no direction kind is shared by all attributes; the pack needs one as its default")


def run(args: argparse.Namespace) -> int:
    import torch

    from models.convert.common import ConvertError
    from models.ials import render_frames
    from models.pack import PackError, load_pack, save_pack
    from models.sampling import sample_ws

    src, out = Path(args.src), Path(args.out)
    if not src.exists():
        raise CliError(f"no such file or folder: {src}")
    if out.exists() and not args.overwrite and (not out.is_dir() or any(out.iterdir())):
        raise CliError(f"{out} exists; give --overwrite to replace it")
    device = pick_device(args.device)
    try:
        if args.format == "ials-pretrain":
            if not src.is_dir():
                raise CliError(f"{src} is not a folder; ials-pretrain expects {FORMATS['ials-pretrain']}")
            G, attributes, extra = _attributes_ials(args, src)
        else:
            G, extra = _load_generator(args, src)
        kind = GENERATOR_KINDS[args.format]
        _say(
            f"found: {FORMATS[args.format]} -> {kind} generator, {G.img_resolution} px, num_ws {G.num_ws}, "
            f"w_dim {G.w_dim}, z_dim {G.z_dim}, c_dim {G.c_dim}"
        )
        _say(f"  kwargs: {json.dumps(G.init_kwargs)}")
        if args.format != "ials-pretrain":
            attributes = _fit_attributes(args, G, device)
        if not attributes:
            raise CliError("no attribute got a direction; nothing to pack")
        for name, attr in attributes.items():
            _say(f"  attribute {name}: {attr.description}; directions {sorted(attr.directions)}")
        path = save_pack(
            out,
            name=args.name or (src.stem if args.format != "ials-pretrain" else f"ials-{args.dataset}"),
            description=f"Converted by `ials convert {args.format}` from {src.name}: {FORMATS[args.format]}",
            generator=G.cpu(),
            generator_kind=kind,
            attributes=attributes,
            defaults={"direction_kind": _default_kind(attributes)},
            extra={"source": {"format": args.format, "name": src.name, **extra}},
            overwrite=args.overwrite,
        )
        _say(f"wrote {path}")

        # Verification: the pack reloads with every check, and renders.
        pack = load_pack(path, device)
        ws = sample_ws(pack.generator, [0], truncation_psi=pack.defaults["truncation_psi"], device=device)
        image = render_frames(pack.generator, ws, device=device)
        if not torch.isfinite(image).all():
            raise CliError(f"{path}: the converted generator renders non-finite values")
        _say(
            f"verified: {path} reloads (load_pack, sha256 and tensors checked) and renders seed 0 to "
            f"{list(image.shape)}, values in [{float(image.min()):.2f}, {float(image.max()):.2f}]"
        )
    except (ConvertError, PackError) as exc:
        raise CliError(str(exc)) from exc
    except FileExistsError as exc:
        raise CliError(f"{exc}; give --overwrite to replace it") from exc
    return 0
