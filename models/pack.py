"""The model pack: a generator, its attribute classifiers and directions, in one checked folder.

A pack is a folder with a `manifest.json` and weights in safetensors files, never pickle:

    manifest.json                          format, networks (class kind + constructor kwargs), sha256s
    generator.safetensors                  generator state dict (w_avg is its buffer `mapping.w_avg`)
    classifiers/<attr>.steering.safetensors    AttributeClassifier state dict that steers the edits
    classifiers/<attr>.evaluator.safetensors   optional independent classifier that scores them
    directions.safetensors                 unit attribute-level directions `<attr>.<kind>`, [w_dim]
    encoder.safetensors                    optional LatentEncoder state dict (image -> w+ start code)

`save_pack` writes one atomically; `load_pack` validates everything (format, sha256 of every listed
file, kinds, constructor kwargs, tensor names, shapes and values) and raises `PackError` naming the
file and key at fault. Networks are rebuilt from our own classes with their recorded kwargs
(`record_init_kwargs`); nothing in a pack is executed.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

import safetensors.torch
import torch
from torch import nn

from models.networks.classifier import AttributeClassifier
from models.networks.encoder import LatentEncoder

__all__ = [
    "DEFAULTS",
    "DIRECTION_KINDS",
    "FORMAT",
    "FORMAT_VERSION",
    "GENERATOR_KINDS",
    "GeneratorKind",
    "ModelPack",
    "PackAttribute",
    "PackError",
    "WEIGHTS_DTYPES",
    "generator_class",
    "load_pack",
    "round_to_dtype",
    "save_pack",
    "verify_pack",
]

FORMAT = "ials-pack"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
GENERATOR_WEIGHTS = "generator.safetensors"
DIRECTIONS_WEIGHTS = "directions.safetensors"
ENCODER_WEIGHTS = "encoder.safetensors"

DIRECTION_KINDS = ("interfacegan", "averaged", "ganspace")
# Storage dtypes of the classifiers' and the encoder's weights (`save_pack(weights_dtype=...)`).
WEIGHTS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Editing defaults of the paper (section 3.3 and Table 1).
DEFAULTS: dict[str, Any] = {
    "step": 0.1,
    "steps": 20,
    "lambda1": 0.75,
    "lambda2": 0.0,
    "truncation_psi": 0.5,
    "direction_kind": "interfacegan",
}

_ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNIT_NORM_TOLERANCE = 1e-4

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class PackError(ValueError):
    """A model pack that cannot be used: its message names the file and key at fault."""


class GeneratorKind(NamedTuple):
    """Where a generator kind's class lives, imported only when a pack of that kind is used."""

    target: str  # "package.module:Class"
    w_avg: str  # State-dict name of the mean latent [w_dim].
    # Keyword arguments of `synthesis` for the editing's gradient passes (`models.ials.edit`).
    edit_synthesis_kwargs: Mapping[str, Any] = MappingProxyType({})


GENERATOR_KINDS: dict[str, GeneratorKind] = {
    # The non-fused modulated convolution takes the latent's gradient without the per-sample weight
    # gradients of the fused (grouped) path: measured on 2 CPU cores at 256 px, a forward with two
    # backward passes costs 0.96 s instead of 1.27 s. Both paths compute the same images.
    "stylegan2": GeneratorKind(
        "models.networks.stylegan2:Generator",
        w_avg="mapping.w_avg",
        edit_synthesis_kwargs=MappingProxyType({"fused_modconv": False}),
    ),
    "procedural": GeneratorKind("models.networks.procedural:ProceduralGenerator", w_avg="mapping.w_avg"),
    # StyleGAN (v1), the lernapparat port that the official IALS code runs (`ials convert ials-pretrain`).
    "stylegan1": GeneratorKind("models.networks.stylegan1:Generator", w_avg="mapping.w_avg"),
}

MAX_DEFAULT_STEPS = 1000

# Sizes of the generator written into the manifest, so that readers without torch (the API process)
# know them; checked against the built generator on load.
GENERATOR_INFO = ("z_dim", "c_dim", "w_dim", "num_ws", "img_resolution", "img_channels")


def generator_class(kind: str) -> type[nn.Module]:
    """Import the generator class registered for `kind`.

    Args:
        kind: A key of `GENERATOR_KINDS`.

    Returns:
        The class; its constructor kwargs are recorded by `record_init_kwargs`.

    Raises:
        PackError: If the kind is not registered.
    """
    if kind not in GENERATOR_KINDS:
        raise PackError(f"Unknown generator kind {kind!r}; known kinds: {sorted(GENERATOR_KINDS)}")
    module_name, _, class_name = GENERATOR_KINDS[kind].target.partition(":")
    cls: type[nn.Module] = getattr(importlib.import_module(module_name), class_name)
    return cls


@dataclass
class PackAttribute:
    """One editable attribute of a pack.

    `directions` maps a kind of `DIRECTION_KINDS` to a unit attribute-level direction `[w_dim]`.
    """

    name: str
    description: str
    steering: AttributeClassifier
    evaluator: AttributeClassifier | None
    directions: dict[str, torch.Tensor]


@dataclass
class ModelPack:
    """A loaded pack: networks in eval mode without gradients on one device, and its manifest."""

    path: Path
    manifest: dict[str, Any]
    # A module of the registered kind: `mapping`, `synthesis`, `num_ws`, `w_dim`, ... (duck-typed;
    # typed Any because nn.Module's attribute access is untyped).
    generator: Any
    generator_kind: str
    attributes: dict[str, PackAttribute]
    defaults: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS))
    encoder: LatentEncoder | None = None  # Image -> w+ start code of inversions, if the pack has one.

    @property
    def w_avg(self) -> torch.Tensor:
        """The generator's mean latent, `[w_dim]`."""
        return _module_tensor(self.generator, self.manifest["w_avg"]["tensor"])

    @property
    def w_dim(self) -> int:
        """Latent width."""
        return _int_attr(self.generator, "w_dim")

    @property
    def num_ws(self) -> int:
        """Rows of a `w+` code."""
        return _int_attr(self.generator, "num_ws")

    @property
    def img_resolution(self) -> int:
        """Side of the generated images."""
        return _int_attr(self.generator, "img_resolution")

    @property
    def device(self) -> torch.device:
        """The device the networks are on."""
        return self.w_avg.device

    @property
    def edit_synthesis_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `generator.synthesis` for the gradient passes of an edit."""
        return dict(GENERATOR_KINDS[self.generator_kind].edit_synthesis_kwargs)


# ----------------------------------------------------------------------------
# Saving.


def save_pack(
    path: str | os.PathLike[str],
    *,
    name: str,
    description: str,
    generator: nn.Module,
    generator_kind: str,
    attributes: Mapping[str, PackAttribute],
    defaults: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    encoder: LatentEncoder | None = None,
    overwrite: bool = False,
    weights_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a model pack folder atomically.

    The pack is written into a temporary folder next to `path`, then renamed. Tensors are stored on
    CPU, contiguous and unshared. Floating tensors are float32, except the classifiers' and the
    encoder's, which are stored as `weights_dtype` (`load_pack` builds float32 modules from them).
    Directions are normalised to unit norm.

    Args:
        path: The pack folder to create.
        name: Short name of the pack.
        description: What the pack holds and where its weights come from.
        generator: A generator of the class registered for `generator_kind`, built by its
            `record_init_kwargs`-decorated constructor.
        generator_kind: A key of `GENERATOR_KINDS`.
        attributes: Attribute name -> `PackAttribute`; names match `[a-z][a-z0-9_]*` and equal
            `PackAttribute.name`. Each needs at least one direction `[w_dim]`.
        defaults: Editing defaults, any subset of `DEFAULTS`; missing keys take the paper's values.
        extra: Free JSON metadata.
        encoder: Optional image -> w+ encoder of this generator (same `num_ws`, `w_dim`).
        overwrite: Replace an existing non-empty folder at `path`.
        weights_dtype: Storage dtype of the classifiers' and the encoder's floating tensors:
            float32 (default), float16 or bfloat16. Half precision halves the pack; round the
            modules to it first (`round_to_dtype`) where later steps must see the stored values.

    Returns:
        The pack folder.

    Raises:
        ValueError: On invalid arguments (`PackError` for the pack's contents).
        FileExistsError: If `path` is a file, or a non-empty folder and `overwrite` is False.
    """
    target = Path(path)
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be one of {list(WEIGHTS_DTYPES)}, got {weights_dtype}")
    cls = generator_class(generator_kind)
    if type(generator) is not cls:
        raise ValueError(
            f"generator_kind {generator_kind!r} needs a {cls.__qualname__}, "
            f"got a {type(generator).__qualname__}"
        )
    where = "save_pack"
    generator_kwargs = _json_copy(_init_kwargs(generator, f"{where}: generator"), f"{where}: generator")
    generator_state = _cpu_state(generator, where=f"{where}: generator")
    w_avg_name = GENERATOR_KINDS[generator_kind].w_avg
    w_dim = _int_attr(generator, "w_dim")
    if w_avg_name not in generator_state:
        raise ValueError(f"{where}: the generator has no tensor {w_avg_name!r} (w_avg)")
    _check_vector(generator_state[w_avg_name], w_dim, f"{where}: generator {w_avg_name}")

    # Attributes.
    direction_tensors: dict[str, torch.Tensor] = {}
    classifier_states: dict[str, dict[str, torch.Tensor]] = {}
    attributes_manifest: dict[str, Any] = {}
    for attr_name, attr in attributes.items():
        at = f"{where}: attribute {attr_name!r}"
        _check_attribute_name(attr_name, where)
        if attr.name != attr_name:
            raise ValueError(f"{at}: PackAttribute.name is {attr.name!r}")
        if not attr.directions:
            raise ValueError(f"{at}: needs at least one direction, of kinds {list(DIRECTION_KINDS)}")
        entry: dict[str, Any] = {"description": str(attr.description), "directions": {}}
        for role, classifier in (("steering", attr.steering), ("evaluator", attr.evaluator)):
            if classifier is None and role == "evaluator":
                entry[role] = None
                continue
            if not isinstance(classifier, AttributeClassifier):
                raise ValueError(f"{at}: {role} must be an AttributeClassifier, got {type(classifier)}")
            weights = f"classifiers/{attr_name}.{role}.safetensors"
            kwargs = _json_copy(_init_kwargs(classifier, f"{at} {role}"), f"{at} {role} kwargs")
            entry[role] = {"kwargs": kwargs, "weights": weights}
            classifier_states[weights] = _cpu_state(classifier, weights_dtype, f"{at} {role}")
        for kind, direction in attr.directions.items():
            if kind not in DIRECTION_KINDS:
                raise ValueError(f"{at}: unknown direction kind {kind!r}; expected one of {DIRECTION_KINDS}")
            vector = direction.detach().to("cpu", torch.float64)
            _check_vector(vector, w_dim, f"{at} direction {kind!r}")
            norm = vector.norm()
            if not norm > 0:
                raise ValueError(f"{at}: direction {kind!r} is zero")
            tensor_name = f"{attr_name}.{kind}"
            direction_tensors[tensor_name] = (vector / norm).to(torch.float32).contiguous()
            entry["directions"][kind] = {"file": DIRECTIONS_WEIGHTS, "tensor": tensor_name}
        attributes_manifest[attr_name] = entry
    if not attributes_manifest:
        raise ValueError(f"{where}: a pack needs at least one attribute")
    encoder_manifest: dict[str, Any] | None = None
    encoder_state: dict[str, dict[str, torch.Tensor]] = {}
    if encoder is not None:
        if not isinstance(encoder, LatentEncoder):
            raise ValueError(f"{where}: encoder must be a LatentEncoder, got {type(encoder).__qualname__}")
        _check_encoder_fits(encoder, generator, f"{where}: encoder", ValueError)
        kwargs = _json_copy(_init_kwargs(encoder, f"{where}: encoder"), f"{where}: encoder kwargs")
        encoder_manifest = {"kwargs": kwargs, "weights": ENCODER_WEIGHTS}
        encoder_state[ENCODER_WEIGHTS] = _cpu_state(encoder, weights_dtype, f"{where}: encoder")
    defaults_manifest = _checked_defaults(dict(defaults or {}), f"{where}: defaults", ValueError)
    _check_default_direction_kind(defaults_manifest, attributes_manifest, f"{where}: defaults", ValueError)

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": str(name),
        "description": str(description),
        "generator": {
            "kind": generator_kind,
            "kwargs": generator_kwargs,
            "info": {key: _int_attr(generator, key) for key in GENERATOR_INFO},
            "weights": GENERATOR_WEIGHTS,
        },
        "w_avg": {"file": GENERATOR_WEIGHTS, "tensor": w_avg_name},
        "attributes": attributes_manifest,
        "defaults": defaults_manifest,
        "encoder": encoder_manifest,
        "extra": _json_copy(dict(extra or {}), f"{where}: extra"),
    }

    # Target folder.
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not an empty folder; pass overwrite=True to replace")
    target.parent.mkdir(parents=True, exist_ok=True)

    # Write, hash, rename.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        hashes: dict[str, str] = {}
        files = {GENERATOR_WEIGHTS: generator_state, DIRECTIONS_WEIGHTS: direction_tensors}
        files.update(classifier_states)
        files.update(encoder_state)
        for rel, tensors in files.items():
            file_path = tmp / rel
            file_path.parent.mkdir(parents=True, exist_ok=True)
            safetensors.torch.save_file(tensors, str(file_path), metadata={"format": "pt"})
            hashes[rel] = _sha256(file_path)
        manifest["files"] = dict(sorted(hashes.items()))
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        (tmp / MANIFEST_NAME).write_text(text, encoding="utf-8")
        _replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _replace_folder(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, replacing an existing `dst` folder."""
    if not dst.exists():
        src.rename(dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    old.rmdir()
    dst.rename(old)
    try:
        src.rename(dst)
    except BaseException:
        old.rename(dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _cpu_state(
    module: nn.Module, dtype: torch.dtype = torch.float32, where: str = ""
) -> dict[str, torch.Tensor]:
    """State dict on CPU, contiguous and unshared (safetensors refuses shared storage), floats as `dtype`.

    Raises:
        ValueError: If a floating tensor is not finite, or overflows `dtype` (`load_pack` would refuse it).
    """
    state: dict[str, torch.Tensor] = {}
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = _cast_finite(tensor, dtype, f"{where}: {key}" if where else key)
        state[key] = tensor.contiguous().clone()
    return state


def _cast_finite(tensor: torch.Tensor, dtype: torch.dtype, what: str) -> torch.Tensor:
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{what}: has non-finite values")
    cast = tensor.to(dtype)
    if not torch.isfinite(cast).all():
        biggest = float(tensor.abs().max())
        hint = "; store the weights as float32" if dtype in (torch.float16, torch.bfloat16) else ""
        raise ValueError(
            f"{what}: values up to {biggest:.4g} overflow {str(dtype).removeprefix('torch.')} "
            f"(largest {torch.finfo(dtype).max:.4g}){hint}"
        )
    return cast


def round_to_dtype(
    state: Mapping[str, torch.Tensor], dtype: torch.dtype, where: str = ""
) -> dict[str, torch.Tensor]:
    """`state` with its floating tensors rounded to `dtype` and back (same dtypes, stored values).

    Raises:
        ValueError: If a floating tensor is not finite or overflows `dtype` (named after `where`).
    """
    return {
        key: _cast_finite(tensor, dtype, f"{where}: {key}" if where else key).to(tensor.dtype)
        if tensor.is_floating_point()
        else tensor
        for key, tensor in state.items()
    }


def _init_kwargs(module: nn.Module, where: str) -> dict[str, Any]:
    kwargs = getattr(module, "init_kwargs", None)
    if not isinstance(kwargs, dict):
        raise ValueError(
            f"{where}: {type(module).__qualname__} has no init_kwargs; decorate it with @record_init_kwargs"
        )
    return kwargs


def _json_copy(value: dict[str, Any], where: str) -> dict[str, Any]:
    """Round-trip through JSON, as the manifest will (tuples become lists); refuse what JSON can't hold."""
    try:
        copy: dict[str, Any] = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: not JSON-serialisable: {err}") from err
    return copy


def _sha256(file_path: Path) -> str:
    digest = hashlib.sha256()
    with open(file_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------
# Loading.


def verify_pack(path: str | os.PathLike[str]) -> list[str]:
    """Check a pack's manifest format and the sha256 of every listed file, without loading tensors.

    Args:
        path: The pack folder.

    Returns:
        The problems found, one message each; empty if the files are intact.
    """
    root = Path(path)
    try:
        manifest = _read_manifest(root)
        files = _files_table(manifest)
    except PackError as err:
        return [str(err)]
    return _hash_problems(root, files)


def load_pack(path: str | os.PathLike[str], device: torch.device | str) -> ModelPack:
    """Load and validate a model pack.

    Args:
        path: The pack folder.
        device: Where to put the networks and directions.

    Returns:
        The pack, with every network in eval mode and `requires_grad_(False)`.

    Raises:
        PackError: If the manifest, a file, a hash, a network's kwargs or any tensor is invalid; the
            message names the file and key.
    """
    root = Path(path)
    device = torch.device(device)
    manifest = _read_manifest(root)
    files = _files_table(manifest)
    problems = _hash_problems(root, files)
    if problems:
        raise PackError(f"Pack {root} failed its integrity check:\n  " + "\n  ".join(problems))
    where = MANIFEST_NAME

    # Generator.
    gen = _get(manifest, "generator", dict, where)
    gen_at = f"{where}: generator"
    _check_keys(gen, {"kind", "kwargs", "info", "weights"}, gen_at)
    kind = _get(gen, "kind", str, gen_at)
    if kind not in GENERATOR_KINDS:
        raise PackError(f"{gen_at}.kind: unknown generator kind {kind!r}; known: {sorted(GENERATOR_KINDS)}")
    generator = _construct(generator_class(kind), _get(gen, "kwargs", dict, gen_at), f"{gen_at}.kwargs")
    gen_weights = _listed(_get(gen, "weights", str, gen_at), files, f"{gen_at}.weights")
    _load_state(generator, _read_tensors(root, gen_weights), gen_weights)
    w_dim = _int_attr(generator, "w_dim")
    info = _get(gen, "info", dict, gen_at)
    built = {key: _int_attr(generator, key) for key in GENERATOR_INFO}
    if info != built:
        raise PackError(
            f"{gen_at}.info: the manifest says {info} but the generator built from its kwargs has {built}"
        )

    # Mean latent.
    w_avg = _get(manifest, "w_avg", dict, where)
    _check_keys(w_avg, {"file", "tensor"}, f"{where}: w_avg")
    if _get(w_avg, "file", str, f"{where}: w_avg") != gen_weights:
        raise PackError(f"{where}: w_avg.file {w_avg['file']!r} must be the generator's {gen_weights!r}")
    w_avg_name = _get(w_avg, "tensor", str, f"{where}: w_avg")
    if w_avg_name != GENERATOR_KINDS[kind].w_avg:
        raise PackError(
            f"{where}: w_avg.tensor is {w_avg_name!r}, but a {kind!r} generator keeps w_avg in "
            f"{GENERATOR_KINDS[kind].w_avg!r}"
        )
    if w_avg_name not in generator.state_dict():
        raise PackError(f"{where}: w_avg.tensor {w_avg_name!r} is not a tensor of {gen_weights}")
    w_avg_at = f"{gen_weights}: w_avg {w_avg_name!r}"
    _check_vector(_module_tensor(generator, w_avg_name), w_dim, w_avg_at, PackError)

    # Attributes.
    attributes_manifest = _get(manifest, "attributes", dict, where)
    if not attributes_manifest:
        raise PackError(f"{where}: attributes: a pack needs at least one attribute")
    attributes: dict[str, PackAttribute] = {}
    direction_refs: dict[str, dict[str, list[tuple[str, str]]]] = {}  # file -> tensor -> [(attr, kind)]
    for attr_name, entry in attributes_manifest.items():
        at = f"{where}: attributes.{attr_name}"
        _check_attribute_name(attr_name, f"{where}: attributes")
        if not isinstance(entry, dict):
            raise PackError(f"{at}: expected an object, got {type(entry).__name__}")
        _check_keys(entry, {"description", "steering", "evaluator", "directions"}, at)
        classifiers: dict[str, AttributeClassifier | None] = {}
        steering_weights = ""
        for role in ("steering", "evaluator"):
            if role == "evaluator" and entry.get(role, {}) is None:
                classifiers[role] = None
                continue
            role_at = f"{at}.{role}"
            spec = _get(entry, role, dict, at)
            _check_keys(spec, {"kwargs", "weights"}, role_at)
            kwargs = _get(spec, "kwargs", dict, role_at)
            classifier = _construct(AttributeClassifier, kwargs, f"{role_at}.kwargs")
            if classifier.num_classes != 2:
                raise PackError(f"{role_at}.kwargs: num_classes must be 2, got {classifier.num_classes}")
            weights = _listed(_get(spec, "weights", str, role_at), files, f"{role_at}.weights")
            if role == "evaluator" and files[weights] == files[steering_weights]:
                raise PackError(
                    f"{role_at}.weights: the evaluator is the steering classifier ({weights} and "
                    f"{steering_weights} have the same sha256); edits must be scored by an independent one"
                )
            steering_weights = weights
            _load_state(classifier, _read_tensors(root, weights), weights)
            classifiers[role] = classifier
        directions = _get(entry, "directions", dict, at)
        if not directions:
            raise PackError(f"{at}.directions: needs at least one of {list(DIRECTION_KINDS)}")
        for kind_name, ref in directions.items():
            ref_at = f"{at}.directions.{kind_name}"
            if kind_name not in DIRECTION_KINDS:
                raise PackError(f"{ref_at}: unknown direction kind {kind_name!r}; known: {DIRECTION_KINDS}")
            if not isinstance(ref, dict):
                raise PackError(f"{ref_at}: expected an object, got {type(ref).__name__}")
            _check_keys(ref, {"file", "tensor"}, ref_at)
            file_name = _listed(_get(ref, "file", str, ref_at), files, f"{ref_at}.file")
            tensor_name = _get(ref, "tensor", str, ref_at)
            users = direction_refs.setdefault(file_name, {}).setdefault(tensor_name, [])
            users.append((attr_name, kind_name))
        steering = classifiers["steering"]
        assert steering is not None
        attributes[attr_name] = PackAttribute(
            name=attr_name,
            description=_get(entry, "description", str, at),
            steering=steering,
            evaluator=classifiers["evaluator"],
            directions={},
        )

    # Directions.
    for file_name, refs in direction_refs.items():
        tensors = _read_tensors(root, file_name)
        _check_names(set(refs), set(tensors), file_name)
        for tensor_name, users in refs.items():
            vector = tensors[tensor_name]
            attr_name, kind_name = users[0]
            what = f"{file_name}: {tensor_name!r} (attributes.{attr_name}.directions.{kind_name})"
            _check_vector(vector, w_dim, what, PackError)
            norm = float(vector.double().norm())
            if abs(norm - 1) > _UNIT_NORM_TOLERANCE:
                raise PackError(f"{what}: direction must have unit norm, got {norm:.6g}")
            for attr_name, kind_name in users:
                attributes[attr_name].directions[kind_name] = vector.to(device, torch.float32)

    # Defaults and metadata.
    defaults = _checked_defaults(_get(manifest, "defaults", dict, where), f"{where}: defaults", PackError)
    _check_default_direction_kind(defaults, attributes_manifest, f"{where}: defaults", PackError)
    _get(manifest, "extra", dict, where)

    # Encoder (optional; packs written before it existed have no key).
    encoder: LatentEncoder | None = None
    encoder_spec = manifest.get("encoder")
    if encoder_spec is not None:
        enc_at = f"{where}: encoder"
        if not isinstance(encoder_spec, dict):
            raise PackError(f"{enc_at}: expected an object or null, got {type(encoder_spec).__name__}")
        _check_keys(encoder_spec, {"kwargs", "weights"}, enc_at)
        encoder = _construct(LatentEncoder, _get(encoder_spec, "kwargs", dict, enc_at), f"{enc_at}.kwargs")
        _check_encoder_fits(encoder, generator, enc_at, PackError)
        enc_weights = _listed(_get(encoder_spec, "weights", str, enc_at), files, f"{enc_at}.weights")
        _load_state(encoder, _read_tensors(root, enc_weights), enc_weights)

    # Device and mode.
    modules: list[nn.Module] = [generator] + ([encoder] if encoder is not None else [])
    for attr in attributes.values():
        modules += [attr.steering] + ([attr.evaluator] if attr.evaluator is not None else [])
    for module in modules:
        module.to(device).eval().requires_grad_(False)
    return ModelPack(
        path=root,
        manifest=manifest,
        generator=generator,
        generator_kind=kind,
        attributes=attributes,
        defaults=defaults,
        encoder=encoder,
    )


def _check_encoder_fits(
    encoder: LatentEncoder, generator: nn.Module, where: str, error: type[ValueError]
) -> None:
    """The encoder must produce the generator's w+ shape from its images."""
    want = {key: _int_attr(generator, key) for key in ("img_resolution", "num_ws", "w_dim", "img_channels")}
    have = {key: _int_attr(encoder, key) for key in want}
    if have != want:
        raise error(f"{where}: the encoder is built for {have}, the generator has {want}")


_MANIFEST_KEYS = {
    "format", "format_version", "name", "description",
    "generator", "w_avg", "attributes", "defaults", "encoder", "extra", "files",
}  # fmt: skip


def _read_manifest(root: Path) -> dict[str, Any]:
    """Read manifest.json and check its format, version and top-level keys."""
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise PackError(f"Not a model pack: {manifest_path} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # Bad JSON or UTF-8, an int over Python's digit limit.
        raise PackError(f"{MANIFEST_NAME}: not valid JSON: {type(err).__name__}: {err}") from err
    if not isinstance(manifest, dict):
        raise PackError(f"{MANIFEST_NAME}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise PackError(f"{MANIFEST_NAME}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PackError(f"{MANIFEST_NAME}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise PackError(
            f"{MANIFEST_NAME}: format_version {version} is newer than this code reads ({FORMAT_VERSION}); "
            "update the service"
        )
    _check_keys(manifest, _MANIFEST_KEYS, MANIFEST_NAME)
    _get(manifest, "name", str, MANIFEST_NAME)
    _get(manifest, "description", str, MANIFEST_NAME)
    return manifest


def _files_table(manifest: dict[str, Any]) -> dict[str, str]:
    """The `files` table, relative path -> sha256, with paths that stay inside the pack."""
    files = _get(manifest, "files", dict, MANIFEST_NAME)
    for rel, digest in files.items():
        parts = PurePosixPath(rel).parts
        if not rel or rel.startswith("/") or "\\" in rel or ".." in parts or rel == MANIFEST_NAME:
            raise PackError(f"{MANIFEST_NAME}: files: bad path {rel!r} (must be relative, inside the pack)")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise PackError(f"{MANIFEST_NAME}: files.{rel}: expected a lowercase sha256 hex, got {digest!r}")
    return files  # type: ignore[no-any-return]


def _hash_problems(root: Path, files: dict[str, str]) -> list[str]:
    problems = []
    for rel, expected in files.items():
        file_path = root / rel
        if not file_path.is_file():
            problems.append(f"{rel}: listed in {MANIFEST_NAME} but missing")
            continue
        actual = _sha256(file_path)
        if actual != expected:
            problems.append(f"{rel}: sha256 mismatch, expected {expected}, got {actual}")
    return problems


def _get(mapping: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """`mapping[key]`, which must exist and be of type `kind`."""
    if key not in mapping:
        raise PackError(f"{where}: missing key {key!r}")
    value = mapping[key]
    if not isinstance(value, kind):
        raise PackError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _check_keys(mapping: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise PackError(f"{where}: unknown keys {unknown}; expected {sorted(allowed)}")


def _listed(rel: str, files: dict[str, str], where: str) -> str:
    """Check that a referenced file is in the `files` table (so it was hashed)."""
    if rel not in files:
        raise PackError(f"{where}: file {rel!r} is not listed in {MANIFEST_NAME} files")
    return rel


def _check_attribute_name(name: str, where: str) -> None:
    if not isinstance(name, str) or not _ATTRIBUTE_NAME.fullmatch(name):
        raise PackError(f"{where}: bad attribute name {name!r}; names match [a-z][a-z0-9_]*")


def _construct(cls: type[ModuleT], kwargs: dict[str, Any], where: str) -> ModuleT:
    """Build `cls(**kwargs)`, naming unknown kwargs and wrapping constructor errors in PackError."""
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise PackError(f"{where}: unknown kwargs {unknown} for {cls.__qualname__}; known {list(params)}")
    try:
        return cls(**kwargs)
    except Exception as err:  # A bad kwarg can fail anywhere in a constructor (asserts, torch errors).
        raise PackError(f"{where}: cannot build {cls.__qualname__}: {type(err).__name__}: {err}") from err


def _read_tensors(root: Path, rel: str) -> dict[str, torch.Tensor]:
    try:
        tensors: dict[str, torch.Tensor] = safetensors.torch.load_file(str(root / rel), device="cpu")
    except Exception as err:  # safetensors raises its own error type for malformed files.
        raise PackError(f"{rel}: cannot read safetensors: {err}") from err
    return tensors


def _check_names(expected: set[str], actual: set[str], file_name: str) -> None:
    missing, unexpected = sorted(expected - actual), sorted(actual - expected)
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if problems:
        raise PackError(f"{file_name}: " + "; ".join(problems))


def _load_state(module: nn.Module, tensors: dict[str, torch.Tensor], file_name: str) -> None:
    """Strict state-dict loading with errors that list the missing, unexpected and misshapen tensors."""
    own = module.state_dict()
    _check_names(set(own), set(tensors), file_name)
    wrong = [
        f"{key}: expected {tuple(own[key].shape)}, got {tuple(tensor.shape)}"
        for key, tensor in tensors.items()
        if tensor.shape != own[key].shape
    ]
    if wrong:
        raise PackError(f"{file_name}: wrong tensor shapes: " + "; ".join(wrong))
    wrong = [
        f"{key}: expected {own[key].dtype}, got {tensor.dtype}"
        for key, tensor in tensors.items()
        if tensor.is_floating_point() != own[key].is_floating_point() or tensor.is_complex()
    ]
    if wrong:
        raise PackError(f"{file_name}: wrong tensor dtypes: " + "; ".join(wrong))
    bad = [key for key, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise PackError(f"{file_name}: non-finite values in {bad}")
    module.load_state_dict(tensors, strict=True)


def _int_attr(module: nn.Module, name: str) -> int:
    value = getattr(module, name)
    return int(value)


def _module_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """A parameter or buffer of `module` by its state-dict name."""
    try:
        return module.get_buffer(name)
    except AttributeError:
        return module.get_parameter(name)


def _check_vector(
    vector: torch.Tensor, w_dim: int, what: str, error: type[ValueError] = ValueError
) -> None:
    if tuple(vector.shape) != (w_dim,):
        raise error(f"{what}: expected shape ({w_dim},), got {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise error(f"{what}: has non-finite values")


def _checked_defaults(given: dict[str, Any], where: str, error: type[ValueError]) -> dict[str, Any]:
    """Fill the editing defaults with the paper's values and check their types and ranges."""
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise error(f"{where}: unknown keys {unknown}; expected {sorted(DEFAULTS)}")
    defaults = {**DEFAULTS, **given}

    def number(key: str) -> float:
        value = defaults[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise error(f"{where}.{key}: expected a finite number, got {value!r}")
        return float(value)

    steps = defaults["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_DEFAULT_STEPS:
        raise error(f"{where}.steps: expected an integer in [1, {MAX_DEFAULT_STEPS}], got {steps!r}")
    if number("step") == 0:
        raise error(f"{where}.step: must be non-zero")
    for key in ("lambda1", "lambda2"):
        if not 0 <= number(key) <= 1:
            raise error(f"{where}.{key}: must be in [0, 1], got {defaults[key]!r}")
    if not 0 <= number("truncation_psi") <= 2:
        raise error(f"{where}.truncation_psi: must be in [0, 2], got {defaults['truncation_psi']!r}")
    if defaults["direction_kind"] not in DIRECTION_KINDS:
        kind = defaults["direction_kind"]
        raise error(f"{where}.direction_kind: expected one of {DIRECTION_KINDS}, got {kind!r}")
    return defaults


def _check_default_direction_kind(
    defaults: dict[str, Any], attributes: dict[str, Any], where: str, error: type[ValueError]
) -> None:
    kind = defaults["direction_kind"]
    lacking = sorted(name for name, entry in attributes.items() if kind not in entry["directions"])
    if lacking:
        raise error(f"{where}.direction_kind: {kind!r} directions are missing for attributes {lacking}")
