"""The official IALS `pretrain/` folder (yxuhan/IALS) to our networks and pack attributes.

Layout, as the official scripts read it (`{dataset}` is `ffhq` or `celebahq`):

    stylegan/{dataset}/weight.pkl           torch.save state dict of the lernapparat StyleGAN (v1) port,
                                            `g_mapping.*` and `g_synthesis.*`
    stylegan/{dataset}/avg_code.npy         the mean latent, [512] (truncation: 0.5 * w + 0.5 * avg_code)
    classifier/{attr}/weight.pkl            ResNet-18 `ClassifyModel`: `backbone.N.*` (torchvision's
                                            children but fc, as an nn.Sequential) and `extra_layer.*`
    attr_level_direction/{interfacegan,ganspace,ours}/{dataset}/{attr}.npy    [1, 512] or [512]
    vgg/imagenet_vgg16.pth                  VGG-16 of the inversion's perceptual loss (not used here)
    real_latent_code/*.npy                  [18, 512] codes of real faces (usable as they are with --latent)

Every file is read with `torch.load(weights_only=True)` or `np.load(allow_pickle=False)`.

Direction folders map to our kinds: `interfacegan` and `ganspace` to themselves, and `ours` to
`averaged`: the official `train_attr_level_direction.py` sums, over generated faces the classifier
gives class 1, the normalised instance-specific direction (the gradient step towards class 0), then
negates and normalises it, which is IALS's averaged attribute-level direction (section 3.2) pointing
towards the attribute, the same as `models.training.averaged_direction`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from models.convert.common import (
    ConvertError,
    KeyRule,
    error_line,
    load_converted,
    map_tensors,
    torch_load,
)
from models.networks.classifier import AttributeClassifier
from models.networks.stylegan1 import Generator

__all__ = [
    "ATTRIBUTES",
    "DIRECTION_FOLDERS",
    "IalsPretrain",
    "load_ials_classifier",
    "load_ials_direction",
    "load_ials_generator",
    "load_ials_pretrain",
]

GENERATOR_FORMAT = "an IALS StyleGAN (v1) generator state dict"  # stylegan/<dataset>/weight.pkl
CLASSIFIER_FORMAT = "an IALS attribute classifier state dict"  # classifier/<attr>/weight.pkl
NPY_FORMAT = "a NumPy .npy array"

# The official attribute folders and what they mean.
ATTRIBUTES: dict[str, str] = {
    "smiling": "Smiling (expression)",
    "male": "Male (gender)",
    "young": "Young (age)",
    "pose": "Pose (head yaw)",
    "eyeglasses": "Eyeglasses",
}
# attr_level_direction/<folder> -> our direction kind.
DIRECTION_FOLDERS: dict[str, str] = {
    "interfacegan": "interfacegan",
    "ganspace": "ganspace",
    "ours": "averaged",
}
MAPPING_LR_MULTIPLIER = 0.01  # The port's G_mapping: lrmul=0.01 on every dense layer.
NOISE_SEED = 0


def _described(kind: str, f: IO[bytes], name: str | None) -> str:
    """`kind (file)`: `name` (a path relative to pretrain/) if given, else the file's own name."""
    file_name = name if name is not None else getattr(f, "name", None)
    return f"{kind} ({file_name})" if isinstance(file_name, str) else kind


def _load_state(f: IO[bytes], what: str) -> dict[str, torch.Tensor]:
    state = torch_load(f, what)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConvertError(f"not {what}: expected a state dict of tensors, got {type(state).__name__}")
    return dict(state)


def _read_npy(f: IO[bytes], what: str) -> np.ndarray[Any, Any]:
    try:
        array = np.load(f, allow_pickle=False)
    except Exception as err:  # ValueError, EOFError, MemoryError (a header declaring a huge shape), ...
        raise ConvertError(f"{what}: not {NPY_FORMAT}: {error_line(err)}") from err
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise ConvertError(f"{what}: expected a numeric array, got {getattr(array, 'dtype', type(array))}")
    if not np.isfinite(array).all():
        raise ConvertError(f"{what}: has NaN or infinite values")
    return array


def _vector(array: np.ndarray[Any, Any], w_dim: int, what: str) -> torch.Tensor:
    if array.shape not in ((w_dim,), (1, w_dim)):
        raise ConvertError(f"{what}: expected shape [{w_dim}] or [1, {w_dim}], got {list(array.shape)}")
    return torch.from_numpy(array.astype(np.float32).reshape(w_dim))


# ----------------------------------------------------------------------------
# Generator.


def _blur_check(kernel: torch.Tensor) -> torch.Tensor:
    f = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    expected = (torch.outer(f, f) / 16)[None, None]
    if tuple(kernel.shape) != (1, 1, 3, 3) or not torch.allclose(kernel.double(), expected, atol=1e-6):
        raise ConvertError(f"only the blur kernel [1, 2, 1] is supported, got {kernel.tolist()}")
    return kernel


GENERATOR_RULES = [
    KeyRule(r"g_mapping\.dense(\d+)\.(weight|bias)", r"mapping.dense\1.\2"),
    KeyRule(r"g_synthesis\.blocks\.4x4\.(const|bias)", r"synthesis.blocks.4x4.\1"),
    KeyRule(
        r"g_synthesis\.blocks\.(\d+x\d+)\.(conv|conv0_up|conv1)\.(weight|bias)", r"synthesis.blocks.\1.\2.\3"
    ),
    KeyRule(
        r"g_synthesis\.blocks\.(\d+x\d+)\.conv0_up\.intermediate\.kernel",
        r"synthesis.blocks.\1.conv0_up.intermediate.kernel",
        _blur_check,
    ),
    KeyRule(
        r"g_synthesis\.blocks\.(\d+x\d+)\.(epi[12])\.top_epi\.noise\.weight",
        r"synthesis.blocks.\1.\2.top_epi.noise.weight",
    ),
    KeyRule(
        r"g_synthesis\.blocks\.(\d+x\d+)\.(epi[12])\.style_mod\.lin\.(weight|bias)",
        r"synthesis.blocks.\1.\2.style_mod.lin.\3",
    ),
    KeyRule(r"g_synthesis\.torgb\.(weight|bias)", r"synthesis.torgb.\1"),
]


def _fmap_config(channels: dict[int, int], what: str) -> tuple[int, int]:
    """The port's (fmap_base, fmap_max), fmap_decay 1: channels at resolution r = min(2 * base // r, max)."""
    fmap_max = max(channels.values())
    narrower = [res for res in sorted(channels) if channels[res] < fmap_max]
    top = max(channels)
    fmap_base = channels[narrower[0]] * narrower[0] // 2 if narrower else fmap_max * top // 2
    if any(min(int(fmap_base / (res / 2)), fmap_max) != ch for res, ch in channels.items()):
        raise ConvertError(f"{what}: channel widths {channels} do not follow the port's fmap rule")
    return fmap_base, fmap_max


def load_ials_generator(
    f: IO[bytes],
    *,
    avg_code: np.ndarray[Any, Any],
    noise_seed: int = NOISE_SEED,
    fused_upscale_min_res: int = 128,
    name: str | None = None,
) -> Generator:
    """Read the IALS StyleGAN (v1) state dict into our `models.networks.stylegan1.Generator`.

    Sizes come from the tensors. `mapping.w_avg` is `avg_code`. The port keeps no constant noise (it
    draws fresh noise at every call); our `noise_const` buffers are drawn from
    `torch.Generator().manual_seed(noise_seed)`, layer by layer from 4x4 up.

    Args:
        f: `weight.pkl`, an open binary file.
        avg_code: `avg_code.npy`, `[w_dim]` or `[1, w_dim]`.
        noise_seed: Seed of the constant noise.
        fused_upscale_min_res: Resolution from which upsampling is fused (128 in the port; tests lower it).
        name: The file's name in messages (`stylegan/ffhq/weight.pkl`); default: `f.name`.

    Returns:
        The generator, in eval mode without gradients.

    Raises:
        ConvertError: If the file is not such a state dict or a tensor is left over, missing or misshapen.
    """
    what = _described(GENERATOR_FORMAT, f, name)
    state = _load_state(f, what)
    try:
        dense = sorted(
            int(m.group(1)) for k in state if (m := re.fullmatch(r"g_mapping\.dense(\d+)\.weight", k))
        )
        z_dim = int(state["g_mapping.dense0.weight"].shape[1])
        w_dim = int(state[f"g_mapping.dense{dense[-1]}.weight"].shape[0])
        layer_features = int(state["g_mapping.dense0.weight"].shape[0])
        noise = re.compile(r"g_synthesis\.blocks\.(\d+)x\1\.epi1\.top_epi\.noise\.weight")
        resolutions = sorted(int(m.group(1)) for k in state if (m := noise.fullmatch(k)))
        channels = {
            res: int(state[f"g_synthesis.blocks.{res}x{res}.epi1.top_epi.noise.weight"].shape[0])
            for res in resolutions
        }
        img_channels = int(state["g_synthesis.torgb.weight"].shape[0])
    except (KeyError, IndexError) as err:
        raise ConvertError(f"not {what}: {err!r} is missing") from err
    if dense != list(range(len(dense))) or resolutions != [2**i for i in range(2, 2 + len(resolutions))]:
        raise ConvertError(f"not {what}: mapping layers {dense}, synthesis resolutions {resolutions}")
    fmap_base, fmap_max = _fmap_config(channels, what)
    has_blur = any(k.endswith("conv0_up.intermediate.kernel") for k in state)
    G = Generator(
        z_dim=z_dim,
        c_dim=0,
        w_dim=w_dim,
        img_resolution=resolutions[-1],
        img_channels=img_channels,
        mapping_kwargs={
            "num_layers": len(dense),
            "layer_features": layer_features,
            "lr_multiplier": MAPPING_LR_MULTIPLIER,
        },
        synthesis_kwargs={
            "fmap_base": fmap_base,
            "fmap_decay": 1.0,
            "fmap_max": fmap_max,
            "blur_filter": [1, 2, 1] if has_blur else None,
            "fused_upscale_min_res": fused_upscale_min_res,
        },
    )
    own = G.state_dict()
    gen = torch.Generator().manual_seed(noise_seed)
    derived = {
        key: torch.randn(tensor.shape, generator=gen)
        for key, tensor in own.items()
        if key.endswith("noise_const")
    }
    derived["mapping.w_avg"] = _vector(avg_code, w_dim, "avg_code.npy")
    tensors = map_tensors(state, GENERATOR_RULES, own, derived=derived, what=what)
    load_converted(G, {k: t.to(torch.float32) for k, t in tensors.items()}, what=what)
    return G.eval().requires_grad_(False)


# ----------------------------------------------------------------------------
# Classifiers.

# torchvision's ResNet children, as `nn.Sequential(*list(net.children())[:-1])` numbers them.
CLASSIFIER_RULES = [
    KeyRule(r"backbone\.0\.weight", "net.conv1.weight"),
    KeyRule(r"backbone\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)", r"net.bn1.\1"),
    KeyRule(r"backbone\.4\.(\d+\..+)", r"net.layer1.\1"),
    KeyRule(r"backbone\.5\.(\d+\..+)", r"net.layer2.\1"),
    KeyRule(r"backbone\.6\.(\d+\..+)", r"net.layer3.\1"),
    KeyRule(r"backbone\.7\.(\d+\..+)", r"net.layer4.\1"),
    KeyRule(r"extra_layer\.(weight|bias)", r"net.fc.\1"),
]


def load_ials_classifier(
    f: IO[bytes], *, input_resolution: int = 256, name: str | None = None
) -> AttributeClassifier:
    """Read an IALS `ClassifyModel` state dict into our `AttributeClassifier`.

    The classifier is fed the generator's image mapped to [0, 1] and area-downsampled to
    `input_resolution` (the official `F.avg_pool2d(img, 4, 4)` of 1024 px images), without mean/std.

    Args:
        f: `weight.pkl`, an open binary file.
        input_resolution: Side of the network input (256 for the official 1024 px generators).
        name: The file's name in messages (`classifier/smiling/weight.pkl`); default: `f.name`.

    Returns:
        The classifier, in eval mode without gradients.

    Raises:
        ConvertError: If the file is not such a state dict or a tensor is left over, missing or misshapen.
    """
    what = _described(CLASSIFIER_FORMAT, f, name)
    state = _load_state(f, what)
    if "backbone.0.weight" not in state or "extra_layer.weight" not in state:
        raise ConvertError(f"not {what}: no backbone.0.weight and extra_layer.weight")
    # backbone.4 is layer1: 3 blocks in ResNet-34 and -50, 2 in ResNet-18; bottlenecks have a conv3.
    layer1_blocks = {k.split(".")[2] for k in state if k.startswith("backbone.4.")}
    if any(k.endswith("conv3.weight") for k in state):
        arch = "resnet50"
    else:
        arch = "resnet34" if len(layer1_blocks) == 3 else "resnet18"
    num_classes = int(state["extra_layer.weight"].shape[0])
    if num_classes != 2:
        raise ConvertError(f"{what}: expected a 2-class head, got {num_classes} classes")
    classifier = AttributeClassifier(
        arch=arch,
        width=int(state["backbone.0.weight"].shape[0]),
        num_classes=2,
        input_resolution=input_resolution,
        value_range=(0.0, 1.0),
    )
    own = classifier.state_dict()
    # Files saved by torch < 0.4.1 have no BatchNorm step counters; they are not used in eval mode.
    derived = {
        key: torch.zeros_like(t)
        for key, t in own.items()
        if key.endswith("num_batches_tracked") and _source_key(key) not in state
    }
    tensors = map_tensors(state, CLASSIFIER_RULES, own, derived=derived, what=what)
    load_converted(classifier, tensors, what=what)
    return classifier.eval().requires_grad_(False)


def _source_key(key: str) -> str:
    """The IALS name of one of our classifier keys (the inverse of `CLASSIFIER_RULES`)."""
    key = key.removeprefix("net.")
    for idx, name in ((0, "conv1"), (1, "bn1"), (4, "layer1"), (5, "layer2"), (6, "layer3"), (7, "layer4")):
        if key.startswith(name + "."):
            return f"backbone.{idx}.{key[len(name) + 1 :]}"
    return key.replace("fc.", "extra_layer.", 1)


def load_ials_direction(f: IO[bytes], *, w_dim: int, what: str) -> torch.Tensor:
    """An attribute-level direction `.npy`, `[1, w_dim]` or `[w_dim]`, as a unit vector `[w_dim]`.

    Raises:
        ConvertError: On a file that is not a numeric .npy of that shape, or a zero vector.
    """
    vector = _vector(_read_npy(f, what), w_dim, what).double()
    norm = float(vector.norm())
    if not norm > 1e-12:
        raise ConvertError(f"{what}: the direction is zero")
    return (vector / norm).to(torch.float32)


# ----------------------------------------------------------------------------
# The folder.


@dataclass
class IalsAttribute:
    """One attribute found in the folder: its steering classifier and directions by our kind."""

    name: str
    description: str
    classifier: AttributeClassifier
    directions: dict[str, torch.Tensor]


@dataclass
class IalsPretrain:
    """What `load_ials_pretrain` found."""

    generator: Generator
    dataset: str
    attributes: dict[str, IalsAttribute]
    notes: list[str] = field(default_factory=list)  # What was skipped or left as it is, one line each.
    latent_codes: list[Path] = field(default_factory=list)  # real_latent_code/*.npy, checked.


def _open(path: Path, reader: Callable[[IO[bytes]], Any]) -> Any:
    with open(path, "rb") as f:
        return reader(f)


def load_ials_pretrain(
    root: Path,
    *,
    dataset: str = "ffhq",
    classifier_resolution: int = 256,
    noise_seed: int = NOISE_SEED,
    fused_upscale_min_res: int = 128,
) -> IalsPretrain:
    """Read an official IALS `pretrain/` folder: generator, classifiers, directions, latent codes.

    An attribute is kept when it has a classifier and at least one direction for `dataset`; anything
    skipped is said in `notes`.

    Args:
        root: The `pretrain/` folder.
        dataset: `ffhq` or `celebahq` (any `stylegan/<name>` subfolder).
        classifier_resolution: Input side of the classifiers (256, as the official scripts).
        noise_seed: Seed of the generator's constant noise (see `load_ials_generator`).
        fused_upscale_min_res: See `load_ials_generator`.

    Returns:
        The converted networks and directions.

    Raises:
        ConvertError: If the folder lacks the generator or no attribute is complete, or a file is bad.
    """
    gan_dir = root / "stylegan" / dataset
    if not (gan_dir / "weight.pkl").is_file() or not (gan_dir / "avg_code.npy").is_file():
        found = sorted(p.name for p in (root / "stylegan").iterdir()) if (root / "stylegan").is_dir() else []
        raise ConvertError(
            f"not an IALS pretrain/ folder for dataset {dataset!r}: {gan_dir}/weight.pkl and avg_code.npy "
            "are "
            f"needed (datasets found: {found})"
        )
    avg_code = _open(gan_dir / "avg_code.npy", lambda f: _read_npy(f, f"stylegan/{dataset}/avg_code.npy"))
    G = _open(
        gan_dir / "weight.pkl",
        lambda f: load_ials_generator(
            f,
            avg_code=avg_code,
            noise_seed=noise_seed,
            fused_upscale_min_res=fused_upscale_min_res,
            name=f"stylegan/{dataset}/weight.pkl",
        ),
    )
    result = IalsPretrain(generator=G, dataset=dataset, attributes={})

    # Attributes: a classifier plus at least one direction.
    names = [p.parent.name for p in (root / "classifier").glob("*/weight.pkl")]
    for folder in DIRECTION_FOLDERS:
        names += [p.stem for p in (root / "attr_level_direction" / folder / dataset).glob("*.npy")]
    for name in sorted(set(names)):
        if name not in ATTRIBUTES and not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            result.notes.append(f"skipped attribute {name!r}: not a valid attribute name")
            continue
        directions = {}
        for folder, kind in DIRECTION_FOLDERS.items():
            path = root / "attr_level_direction" / folder / dataset / f"{name}.npy"
            if path.is_file():
                rel = str(path.relative_to(root))
                directions[kind] = _open(
                    path, functools.partial(load_ials_direction, w_dim=G.w_dim, what=rel)
                )
        classifier_path = root / "classifier" / name / "weight.pkl"
        if not classifier_path.is_file():
            result.notes.append(f"skipped attribute {name!r}: no classifier/{name}/weight.pkl")
            continue
        if not directions:
            result.notes.append(f"skipped attribute {name!r}: no attr_level_direction/*/{dataset}/{name}.npy")
            continue
        classifier = _open(
            classifier_path,
            functools.partial(
                load_ials_classifier,
                input_resolution=classifier_resolution,
                name=str(classifier_path.relative_to(root)),
            ),
        )
        result.attributes[name] = IalsAttribute(name, ATTRIBUTES.get(name, name), classifier, directions)
    if not result.attributes:
        raise ConvertError(
            f"IALS pretrain/ folder {root}: no attribute has both a classifier and a direction"
        )

    # Real latent codes and the VGG: checked and reported, not packed.
    for path in sorted((root / "real_latent_code").glob("*.npy")):
        rel = str(path.relative_to(root))
        try:
            code = _open(path, functools.partial(_read_npy, what=rel))
        except ConvertError as err:  # One bad code is skipped, not the whole folder.
            result.notes.append(f"skipped {err}")
            continue
        if code.shape not in ((G.num_ws, G.w_dim), (1, G.num_ws, G.w_dim)):
            result.notes.append(f"skipped {rel}: shape {list(code.shape)} is not [{G.num_ws}, {G.w_dim}]")
            continue
        result.latent_codes.append(path)
    if (root / "vgg" / "imagenet_vgg16.pth").is_file():
        result.notes.append(
            "vgg/imagenet_vgg16.pth (the official inversion's perceptual network) is not packed: packs have "
            "no slot for it; a torchvision-style VGG16 state dict is read as it is by "
            "models.inversion.load_vgg16_perceptual"
        )
    return result
