"""Model packs: a tiny pack round-trips, and every kind of damage is refused with a clear PackError."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

from models.misc import record_init_kwargs
from models.networks.classifier import AttributeClassifier
from models.networks.encoder import LatentEncoder
from models.networks.stylegan2 import Generator
from models.pack import (
    DEFAULTS,
    GENERATOR_KINDS,
    GeneratorKind,
    ModelPack,
    PackAttribute,
    PackError,
    load_pack,
    round_to_dtype,
    save_pack,
    verify_pack,
)

W_DIM = 32
ATTRIBUTES = ("smiling", "young")


def randomize_(module: nn.Module, seed: int) -> None:
    """Perturb biases and buffers (BatchNorm statistics, w_avg, constant noise), so every tensor is tested.

    Weight matrices and resampling filters keep their initialisation, so the outputs stay informative.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in module.state_dict().items():
            if key.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif key.endswith("num_batches_tracked"):
                tensor.fill_(seed + 1)
            elif tensor.is_floating_point() and tensor.ndim < 2 and "resample_filter" not in key:
                tensor.add_(torch.randn(tensor.shape, generator=gen) * 0.1)


def tiny_generator() -> Generator:
    generator = Generator(
        z_dim=W_DIM,
        c_dim=0,
        w_dim=W_DIM,
        img_resolution=16,
        img_channels=3,
        mapping_kwargs={"num_layers": 2},
        synthesis_kwargs={"channel_base": 256, "channel_max": 32},
    )
    randomize_(generator, seed=1)
    return generator.eval()


def tiny_classifier(arch: str, seed: int) -> AttributeClassifier:
    classifier = AttributeClassifier(arch=arch, width=8, input_resolution=32)
    randomize_(classifier, seed)
    return classifier.eval()


def tiny_attributes() -> dict[str, PackAttribute]:
    gen = torch.Generator().manual_seed(2)
    return {
        "smiling": PackAttribute(
            name="smiling",
            description="Smiling (CelebA 'Smiling')",
            steering=tiny_classifier("resnet18", seed=3),
            evaluator=tiny_classifier("resnet50", seed=4),
            directions={kind: torch.randn(W_DIM, generator=gen) * 3 for kind in ("interfacegan", "averaged")},
        ),
        "young": PackAttribute(
            name="young",
            description="Young (CelebA 'Young')",
            steering=tiny_classifier("resnet18", seed=5),
            evaluator=None,
            directions={kind: torch.randn(W_DIM, generator=gen) for kind in ("interfacegan", "ganspace")},
        ),
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(pack_dir: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((pack_dir / "manifest.json").read_text())
    return manifest


def write_manifest(pack_dir: Path, manifest: dict[str, Any]) -> None:
    (pack_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def edit_manifest(pack_dir: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    manifest = read_manifest(pack_dir)
    edit(manifest)
    write_manifest(pack_dir, manifest)


def edit_tensors(pack_dir: Path, rel: str, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Rewrite a weights file and update its hash, so that only the tensor checks can catch the edit."""
    tensors = safetensors.torch.load_file(str(pack_dir / rel))
    edit(tensors)
    safetensors.torch.save_file(tensors, str(pack_dir / rel))
    edit_manifest(pack_dir, lambda m: m["files"].__setitem__(rel, sha256(pack_dir / rel)))


# ----------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def generator() -> Generator:
    return tiny_generator()


@pytest.fixture(scope="module")
def attributes() -> dict[str, PackAttribute]:
    return tiny_attributes()


@pytest.fixture(scope="module")
def saved(
    tmp_path_factory: pytest.TempPathFactory, generator: Generator, attributes: dict[str, PackAttribute]
) -> Path:
    return save_pack(
        tmp_path_factory.mktemp("packs") / "tiny",
        name="tiny",
        description="A 16 px test pack",
        generator=generator,
        generator_kind="stylegan2",
        attributes=attributes,
        defaults={"step": 0.2, "lambda2": 0.25},
        extra={"bias": {"smiling": [0.5, 0.25]}},
    )


@pytest.fixture(scope="module")
def loaded(saved: Path) -> ModelPack:
    return load_pack(saved, "cpu")


@pytest.fixture
def pack_dir(saved: Path, tmp_path: Path) -> Path:
    """A private copy of the saved pack, to damage."""
    return Path(shutil.copytree(saved, tmp_path / "pack"))


# ----------------------------------------------------------------------------
# Round trip.


def test_layout_and_manifest(saved: Path, generator: Generator) -> None:
    manifest = read_manifest(saved)
    assert manifest["format"] == "ials-pack"
    assert manifest["format_version"] == 1
    assert manifest["generator"]["kind"] == "stylegan2"
    assert manifest["generator"]["kwargs"] == json.loads(json.dumps(generator.init_kwargs))
    assert manifest["w_avg"] == {"file": "generator.safetensors", "tensor": "mapping.w_avg"}
    assert manifest["attributes"]["young"]["evaluator"] is None
    assert manifest["attributes"]["smiling"]["evaluator"]["kwargs"]["arch"] == "resnet50"
    assert manifest["attributes"]["smiling"]["directions"]["averaged"] == {
        "file": "directions.safetensors",
        "tensor": "smiling.averaged",
    }
    on_disk = {p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()}
    assert on_disk == set(manifest["files"]) | {"manifest.json"}
    assert set(manifest["files"]) == {
        "generator.safetensors",
        "directions.safetensors",
        "classifiers/smiling.steering.safetensors",
        "classifiers/smiling.evaluator.safetensors",
        "classifiers/young.steering.safetensors",
    }
    assert all(sha256(saved / rel) == digest for rel, digest in manifest["files"].items())
    assert verify_pack(saved) == []
    # No temporary folders left next to the pack.
    assert [p.name for p in saved.parent.iterdir()] == ["tiny"]


def test_round_trip_tensors(
    loaded: ModelPack, generator: Generator, attributes: dict[str, PackAttribute]
) -> None:
    assert loaded.generator_kind == "stylegan2"
    assert isinstance(loaded.generator, Generator)
    for key, tensor in generator.state_dict().items():
        assert torch.equal(loaded.generator.state_dict()[key], tensor), key
    assert set(loaded.attributes) == set(ATTRIBUTES)
    for name, attr in attributes.items():
        got = loaded.attributes[name]
        assert (got.name, got.description) == (name, attr.description)
        pairs = [(got.steering, attr.steering), (got.evaluator, attr.evaluator)]
        for loaded_classifier, classifier in pairs:
            if classifier is None:
                assert loaded_classifier is None
                continue
            assert loaded_classifier is not None
            assert loaded_classifier.init_kwargs == json.loads(json.dumps(classifier.init_kwargs))
            for key, tensor in classifier.state_dict().items():
                loaded_tensor = loaded_classifier.state_dict()[key]
                assert loaded_tensor.dtype == tensor.dtype and torch.equal(loaded_tensor, tensor), key
        assert set(got.directions) == set(attr.directions)
        for kind, direction in attr.directions.items():
            assert got.directions[kind].dtype == torch.float32
            torch.testing.assert_close(got.directions[kind], direction / direction.norm())
            torch.testing.assert_close(got.directions[kind].norm(), torch.tensor(1.0))


def test_round_trip_behaviour(
    loaded: ModelPack, generator: Generator, attributes: dict[str, PackAttribute]
) -> None:
    ws = torch.randn(2, generator.num_ws, W_DIM, generator=torch.Generator().manual_seed(7))
    images = generator.synthesis(ws, noise_mode="const")
    assert torch.equal(loaded.generator.synthesis(ws, noise_mode="const"), images)
    assert not torch.equal(images[0], images[1])
    for name, attr in attributes.items():
        logits = attr.steering.logits(images)
        assert not torch.equal(logits[0], logits[1])
        assert torch.equal(loaded.attributes[name].steering.logits(images), logits)
    evaluator = loaded.attributes["smiling"].evaluator
    assert evaluator is not None and attributes["smiling"].evaluator is not None
    assert torch.equal(evaluator.logits(images), attributes["smiling"].evaluator.logits(images))


def test_pack_properties_defaults_extra(loaded: ModelPack, generator: Generator, saved: Path) -> None:
    assert loaded.path == saved
    assert torch.equal(loaded.w_avg, generator.mapping.w_avg)
    assert (loaded.w_dim, loaded.num_ws, loaded.img_resolution) == (W_DIM, generator.num_ws, 16)
    assert loaded.device == torch.device("cpu")
    assert loaded.defaults == {**DEFAULTS, "step": 0.2, "lambda2": 0.25}
    assert loaded.manifest["extra"] == {"bias": {"smiling": [0.5, 0.25]}}
    assert loaded.manifest["name"] == "tiny"
    modules: list[nn.Module] = [loaded.generator] + [a.steering for a in loaded.attributes.values()]
    for module in modules:
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())


def test_paper_defaults(tmp_path: Path, generator: Generator, attributes: dict[str, PackAttribute]) -> None:
    path = save_pack(
        tmp_path / "p",
        name="p",
        description="",
        generator=generator,
        generator_kind="stylegan2",
        attributes=attributes,
    )
    assert read_manifest(path)["defaults"] == {
        "step": 0.1,
        "steps": 20,
        "lambda1": 0.75,
        "lambda2": 0.0,
        "truncation_psi": 0.5,
        "direction_kind": "interfacegan",
    }
    assert read_manifest(path)["extra"] == {}


# ----------------------------------------------------------------------------
# Saving.


def test_save_refuses_non_empty_folder(
    tmp_path: Path, generator: Generator, attributes: dict[str, PackAttribute]
) -> None:
    target = tmp_path / "pack"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    kwargs: dict[str, Any] = dict(
        name="p", description="", generator=generator, generator_kind="stylegan2", attributes=attributes
    )
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pack(target, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pack"]
    save_pack(target, overwrite=True, **kwargs)
    assert not (target / "keep.txt").exists()
    assert verify_pack(target) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pack"]
    # An empty folder is filled without asking.
    (tmp_path / "empty").mkdir()
    save_pack(tmp_path / "empty", **kwargs)
    assert verify_pack(tmp_path / "empty") == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.__setitem__("Smiling", a.pop("smiling")), "bad attribute name 'Smiling'"),
        (
            lambda a: a["young"].directions.__setitem__("svm", torch.ones(W_DIM)),
            "unknown direction kind 'svm'",
        ),
        (
            lambda a: a["young"].directions.__setitem__("ganspace", torch.ones(W_DIM + 1)),
            r"expected shape \(32,\)",
        ),
        (lambda a: a["young"].directions.__setitem__("ganspace", torch.zeros(W_DIM)), "is zero"),
        (lambda a: a["young"].directions.pop("interfacegan"), "'interfacegan' directions are missing"),
    ],
)
def test_save_refuses_bad_attributes(
    tmp_path: Path, generator: Generator, change: Callable[[dict[str, PackAttribute]], Any], message: str
) -> None:
    attributes = tiny_attributes()
    change(attributes)
    with pytest.raises(ValueError, match=message):
        save_pack(
            tmp_path / "p",
            name="p",
            description="",
            generator=generator,
            generator_kind="stylegan2",
            attributes=attributes,
        )
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_wrong_generator_class(tmp_path: Path, attributes: dict[str, PackAttribute]) -> None:
    with pytest.raises(ValueError, match="needs a Generator"):
        save_pack(
            tmp_path / "p",
            name="p",
            description="",
            generator=nn.Linear(2, 2),
            generator_kind="stylegan2",
            attributes=attributes,
        )
    with pytest.raises(PackError, match="Unknown generator kind 'stylegan9'"):
        save_pack(
            tmp_path / "p",
            name="p",
            description="",
            generator=nn.Linear(2, 2),
            generator_kind="stylegan9",
            attributes=attributes,
        )


@record_init_kwargs
class TiedGenerator(nn.Module):
    """A stand-in generator kind whose state dict has two names for one tensor."""

    def __init__(self, w_dim: int = 4, num_ws: int = 2, img_resolution: int = 4) -> None:
        super().__init__()
        self.w_dim, self.num_ws, self.img_resolution = w_dim, num_ws, img_resolution
        self.z_dim, self.c_dim, self.img_channels = w_dim, 0, 3
        self.mapping = nn.Module()
        self.mapping.register_buffer("w_avg", torch.zeros(w_dim))
        self.first = nn.Linear(w_dim, w_dim)
        self.second = nn.Linear(w_dim, w_dim)
        self.second.weight = self.first.weight


def test_registered_kind_with_shared_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        GENERATOR_KINDS, "tied", GeneratorKind(f"{__name__}:TiedGenerator", w_avg="mapping.w_avg")
    )
    generator = TiedGenerator(w_dim=4)
    generator.mapping.w_avg.fill_(0.5)
    attribute = PackAttribute(
        name="smiling",
        description="",
        steering=tiny_classifier("resnet18", seed=0),
        evaluator=None,
        directions={"interfacegan": torch.ones(4)},
    )
    path = save_pack(
        tmp_path / "p",
        name="p",
        description="",
        generator=generator,
        generator_kind="tied",
        attributes={"smiling": attribute},
    )
    pack = load_pack(path, "cpu")
    assert isinstance(pack.generator, TiedGenerator)
    assert torch.equal(pack.generator.second.weight, generator.first.weight)
    assert torch.equal(pack.w_avg, torch.full([4], 0.5))
    torch.testing.assert_close(pack.attributes["smiling"].directions["interfacegan"], torch.full([4], 0.5))


# ----------------------------------------------------------------------------
# Loading damaged packs.


def test_corrupted_byte_in_any_file_is_refused(pack_dir: Path) -> None:
    files = list(read_manifest(pack_dir)["files"])
    assert len(files) == 5
    for rel in files:
        original = (pack_dir / rel).read_bytes()
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0x01
        (pack_dir / rel).write_bytes(bytes(damaged))
        expected = read_manifest(pack_dir)["files"][rel]
        with pytest.raises(
            PackError, match=rf"{rel}: sha256 mismatch, expected {expected}, got [0-9a-f]{{64}}"
        ):
            load_pack(pack_dir, "cpu")
        assert [problem.split(":")[0] for problem in verify_pack(pack_dir)] == [rel]
        (pack_dir / rel).write_bytes(original)
    load_pack(pack_dir, "cpu")


def test_missing_file(pack_dir: Path) -> None:
    (pack_dir / "classifiers/smiling.evaluator.safetensors").unlink()
    with pytest.raises(
        PackError, match="classifiers/smiling.evaluator.safetensors: listed in manifest.json but missing"
    ):
        load_pack(pack_dir, "cpu")


def test_unlisted_file_on_disk_is_fine(pack_dir: Path) -> None:
    (pack_dir / "README.md").write_text("notes")
    assert load_pack(pack_dir, "cpu").attributes.keys() == set(ATTRIBUTES)


def test_referenced_file_must_be_listed(pack_dir: Path) -> None:
    edit_manifest(pack_dir, lambda m: m["files"].pop("directions.safetensors"))
    with pytest.raises(PackError, match="'directions.safetensors' is not listed in manifest.json files"):
        load_pack(pack_dir, "cpu")


def test_newer_format_version(pack_dir: Path) -> None:
    edit_manifest(pack_dir, lambda m: m.__setitem__("format_version", 2))
    with pytest.raises(PackError, match="format_version 2 is newer than this code reads"):
        load_pack(pack_dir, "cpu")


def test_unknown_format(pack_dir: Path) -> None:
    edit_manifest(pack_dir, lambda m: m.__setitem__("format", "other"))
    with pytest.raises(PackError, match="format is 'other', expected 'ials-pack'"):
        load_pack(pack_dir, "cpu")


def test_not_a_pack(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="manifest.json is missing"):
        load_pack(tmp_path, "cpu")
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(PackError, match="not valid JSON"):
        load_pack(tmp_path, "cpu")


def test_unknown_generator_kind(pack_dir: Path) -> None:
    edit_manifest(pack_dir, lambda m: m["generator"].__setitem__("kind", "stylegan9"))
    with pytest.raises(PackError, match="generator.kind: unknown generator kind 'stylegan9'"):
        load_pack(pack_dir, "cpu")


def test_unknown_classifier_kwarg(pack_dir: Path) -> None:
    edit_manifest(pack_dir, lambda m: m["attributes"]["young"]["steering"]["kwargs"].__setitem__("depth", 3))
    with pytest.raises(PackError, match=r"attributes.young.steering.kwargs: unknown kwargs \['depth'\]"):
        load_pack(pack_dir, "cpu")


def test_unknown_generator_kwarg(pack_dir: Path) -> None:
    edit_manifest(pack_dir, lambda m: m["generator"]["kwargs"].__setitem__("size", 16))
    with pytest.raises(PackError, match=r"generator.kwargs: unknown kwargs \['size'\] for Generator"):
        load_pack(pack_dir, "cpu")
    edit_manifest(pack_dir, lambda m: m["generator"]["kwargs"].pop("size"))
    edit_manifest(pack_dir, lambda m: m["generator"]["kwargs"]["mapping_kwargs"].__setitem__("depth", 3))
    with pytest.raises(PackError, match="generator.kwargs: cannot build Generator: .*'depth'"):
        load_pack(pack_dir, "cpu")


def test_bad_classifier_kwarg_value(pack_dir: Path) -> None:
    edit_manifest(
        pack_dir, lambda m: m["attributes"]["young"]["steering"]["kwargs"].__setitem__("arch", "vgg")
    )
    with pytest.raises(PackError, match="attributes.young.steering.kwargs: cannot build AttributeClassifier"):
        load_pack(pack_dir, "cpu")


def test_missing_tensor(pack_dir: Path) -> None:
    rel = "classifiers/young.steering.safetensors"
    edit_tensors(pack_dir, rel, lambda t: [t.pop("net.fc.bias"), t.pop("net.bn1.running_var")])
    with pytest.raises(PackError, match=rf"{rel}: missing tensors \['net.bn1.running_var', 'net.fc.bias'\]$"):
        load_pack(pack_dir, "cpu")


def test_unexpected_tensor(pack_dir: Path) -> None:
    edit_tensors(pack_dir, "generator.safetensors", lambda t: t.__setitem__("mapping.extra", torch.zeros(1)))
    with pytest.raises(PackError, match=r"generator.safetensors: unexpected tensors \['mapping.extra'\]"):
        load_pack(pack_dir, "cpu")


def test_wrong_tensor_shape(pack_dir: Path) -> None:
    rel = "classifiers/smiling.evaluator.safetensors"
    edit_tensors(pack_dir, rel, lambda t: t.__setitem__("net.fc.weight", torch.zeros(3, 256)))
    with pytest.raises(
        PackError, match=rf"{rel}: wrong tensor shapes: net.fc.weight: expected \(2, 256\), got"
    ):
        load_pack(pack_dir, "cpu")


def test_wrong_tensor_dtype(pack_dir: Path) -> None:
    def to_bool(tensors: dict[str, torch.Tensor]) -> None:
        tensors["mapping.w_avg"] = tensors["mapping.w_avg"] > 0

    edit_tensors(pack_dir, "generator.safetensors", to_bool)
    with pytest.raises(
        PackError, match=r"wrong tensor dtypes: mapping.w_avg: expected torch.float32, got torch.bool"
    ):
        load_pack(pack_dir, "cpu")


def test_non_finite_weights(pack_dir: Path) -> None:
    edit_tensors(pack_dir, "generator.safetensors", lambda t: t["mapping.w_avg"].__setitem__(0, float("nan")))
    with pytest.raises(PackError, match=r"generator.safetensors: non-finite values in \['mapping.w_avg'\]"):
        load_pack(pack_dir, "cpu")


def test_bad_direction_shape(pack_dir: Path) -> None:
    edit_tensors(
        pack_dir, "directions.safetensors", lambda t: t.__setitem__("young.ganspace", torch.ones(W_DIM + 1))
    )
    with pytest.raises(
        PackError, match=r"'young.ganspace' \(attributes.young.directions.ganspace\): expected shape"
    ):
        load_pack(pack_dir, "cpu")


def test_direction_not_unit(pack_dir: Path) -> None:
    edit_tensors(
        pack_dir, "directions.safetensors", lambda t: t.__setitem__("young.ganspace", torch.ones(W_DIM))
    )
    with pytest.raises(PackError, match="direction must have unit norm, got 5.65685"):
        load_pack(pack_dir, "cpu")


def test_missing_and_unexpected_direction_tensors(pack_dir: Path) -> None:
    edit_tensors(pack_dir, "directions.safetensors", lambda t: t.__setitem__("old", t.pop("young.ganspace")))
    with pytest.raises(
        PackError, match=r"missing tensors \['young.ganspace'\]; unexpected tensors \['old'\]"
    ):
        load_pack(pack_dir, "cpu")


def test_unknown_direction_kind(pack_dir: Path) -> None:
    edit_manifest(
        pack_dir,
        lambda m: m["attributes"]["young"]["directions"].__setitem__("svm", {"file": "x", "tensor": "y"}),
    )
    with pytest.raises(PackError, match="attributes.young.directions.svm: unknown direction kind 'svm'"):
        load_pack(pack_dir, "cpu")


def test_bad_attribute_name(pack_dir: Path) -> None:
    edit_manifest(pack_dir, lambda m: m["attributes"].__setitem__("Young", m["attributes"].pop("young")))
    with pytest.raises(PackError, match=r"bad attribute name 'Young'; names match \[a-z\]\[a-z0-9_\]\*"):
        load_pack(pack_dir, "cpu")


def test_path_outside_pack(pack_dir: Path) -> None:
    edit_manifest(pack_dir, lambda m: m["files"].__setitem__("../secret", "0" * 64))
    with pytest.raises(PackError, match="files: bad path '../secret'"):
        load_pack(pack_dir, "cpu")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.__setitem__("colour", 1), r"manifest.json: unknown keys \['colour'\]"),
        (lambda m: m["defaults"].__setitem__("lamda1", 1), r"defaults: unknown keys \['lamda1'\]"),
        (lambda m: m["defaults"].__setitem__("lambda1", 2), r"defaults.lambda1: must be in \[0, 1\]"),
        (
            lambda m: m["defaults"].__setitem__("steps", 2.5),
            "defaults.steps: expected an integer in \\[1, 1000\\]",
        ),
        (
            lambda m: m["defaults"].__setitem__("direction_kind", "averaged"),
            "'averaged' directions are missing",
        ),
        (
            lambda m: m["w_avg"].__setitem__("tensor", "w_avg"),
            "w_avg.tensor is 'w_avg', but a 'stylegan2' generator keeps",
        ),
        (
            lambda m: m["w_avg"].__setitem__("tensor", "mapping.fc1.bias"),
            "w_avg.tensor is 'mapping.fc1.bias'",
        ),
        (lambda m: m["attributes"]["young"].pop("steering"), "attributes.young: missing key 'steering'"),
        (lambda m: m["attributes"]["young"].pop("evaluator"), "attributes.young: missing key 'evaluator'"),
        (lambda m: m["attributes"]["young"].__setitem__("directions", {}), "needs at least one of"),
        (lambda m: m["generator"].__setitem__("kwargs", []), "generator.kwargs: expected dict, got list"),
        (
            lambda m: m["defaults"].__setitem__("steps", 10**15),
            r"defaults.steps: expected an integer in \[1, 1000\]",
        ),
        (
            lambda m: m["defaults"].__setitem__("truncation_psi", 5),
            r"defaults.truncation_psi: must be in \[0, 2\]",
        ),
        (
            lambda m: m["generator"]["kwargs"].__setitem__("img_resolution", 17),
            "generator.kwargs: cannot build Generator: AssertionError",
        ),
        (
            lambda m: m["generator"]["kwargs"].__setitem__("z_dim", -1),
            "generator.kwargs: cannot build Generator: RuntimeError",
        ),
        (lambda m: m["generator"]["info"].__setitem__("num_ws", 99), "generator.info: the manifest says"),
        (
            lambda m: m["attributes"]["smiling"]["steering"]["kwargs"].__setitem__("num_classes", 3),
            "attributes.smiling.steering.kwargs: num_classes must be 2, got 3",
        ),
        (
            lambda m: m["attributes"]["smiling"]["evaluator"].__setitem__(
                "weights", m["attributes"]["smiling"]["steering"]["weights"]
            ),
            "the evaluator is the steering classifier",
        ),
    ],
)
def test_bad_manifest_entries(pack_dir: Path, edit: Callable[[dict[str, Any]], Any], message: str) -> None:
    edit_manifest(pack_dir, edit)
    with pytest.raises(PackError, match=message):
        load_pack(pack_dir, "cpu")


# ----------------------------------------------------------------------------
# The optional encoder.


def tiny_encoder(generator: Generator) -> LatentEncoder:
    torch.manual_seed(5)
    return LatentEncoder(img_resolution=16, num_ws=generator.num_ws, w_dim=W_DIM, width=4, hidden=8).eval()


def test_encoder_round_trip(
    tmp_path: Path, generator: Generator, attributes: dict[str, PackAttribute]
) -> None:
    encoder = tiny_encoder(generator)
    path = save_pack(
        tmp_path / "with-encoder", name="e", description="d", generator=generator,
        generator_kind="stylegan2", attributes=attributes, encoder=encoder,
    )
    manifest = read_manifest(path)
    assert manifest["encoder"]["weights"] == "encoder.safetensors"
    assert "encoder.safetensors" in manifest["files"]
    pack = load_pack(path, "cpu")
    assert isinstance(pack.encoder, LatentEncoder)
    assert not pack.encoder.training and not any(p.requires_grad for p in pack.encoder.parameters())
    images = generator.synthesis(torch.randn(2, generator.num_ws, W_DIM), noise_mode="const")
    codes = pack.encoder(images)
    assert codes.shape == (2, generator.num_ws, W_DIM)
    assert torch.equal(codes, encoder(images))

    # A pack without one, and a manifest written before the key existed, load with encoder None.
    edit_manifest(path, lambda m: m.update(encoder=None))
    assert load_pack(path, "cpu").encoder is None
    edit_manifest(path, lambda m: m.pop("encoder"))
    assert load_pack(path, "cpu").encoder is None


def test_encoder_must_fit_the_generator(
    tmp_path: Path, generator: Generator, attributes: dict[str, PackAttribute]
) -> None:
    wrong = LatentEncoder(img_resolution=16, num_ws=generator.num_ws, w_dim=W_DIM + 1, width=4, hidden=8)
    with pytest.raises(ValueError, match="encoder is built for"):
        save_pack(
            tmp_path / "p", name="e", description="d", generator=generator, generator_kind="stylegan2",
            attributes=attributes, encoder=wrong,
        )
    path = save_pack(
        tmp_path / "q", name="e", description="d", generator=generator, generator_kind="stylegan2",
        attributes=attributes, encoder=tiny_encoder(generator),
    )
    edit_manifest(path, lambda m: m["encoder"]["kwargs"].update(num_ws=generator.num_ws + 1))
    with pytest.raises(PackError, match="encoder is built for"):
        load_pack(path, "cpu")
    edit_manifest(path, lambda m: m["encoder"]["kwargs"].update(num_ws=generator.num_ws, bogus=1))
    with pytest.raises(PackError, match="encoder.kwargs"):
        load_pack(path, "cpu")


# ----------------------------------------------------------------------------
# Half-precision storage of the classifiers and the encoder.


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights(
    tmp_path: Path, generator: Generator, attributes: dict[str, PackAttribute], dtype: torch.dtype
) -> None:
    encoder = tiny_encoder(generator)
    full = save_pack(
        tmp_path / "full", name="e", description="d", generator=generator, generator_kind="stylegan2",
        attributes=attributes, encoder=encoder,
    )
    half = save_pack(
        tmp_path / "half", name="e", description="d", generator=generator, generator_kind="stylegan2",
        attributes=attributes, encoder=encoder, weights_dtype=dtype,
    )
    # Classifiers and encoder are stored in `dtype` (about half the bytes); generator and directions
    # stay float32, and the integer BatchNorm counters stay integers.
    for rel in read_manifest(half)["files"]:
        stored = safetensors.torch.load_file(str(half / rel))
        halved = rel.startswith("classifiers/") or rel == "encoder.safetensors"
        for key, tensor in stored.items():
            if key.endswith("num_batches_tracked"):
                assert tensor.dtype == torch.int64, (rel, key)
            else:
                assert tensor.dtype == (dtype if halved else torch.float32), (rel, key)
        ratio = (half / rel).stat().st_size / (full / rel).stat().st_size
        assert (ratio < 0.55) if halved else (ratio == 1.0), (rel, ratio)

    # They load as float32 modules holding exactly the rounded weights.
    pack = load_pack(half, "cpu")
    for name, attr in attributes.items():
        for role in ("steering", "evaluator"):
            original, got = getattr(attr, role), getattr(pack.attributes[name], role)
            if original is None:
                continue
            expected = round_to_dtype(original.state_dict(), dtype)
            for key, tensor in got.state_dict().items():
                assert tensor.dtype == expected[key].dtype and torch.equal(tensor, expected[key]), key
    assert pack.encoder is not None
    rounded = round_to_dtype(encoder.state_dict(), dtype)
    for key, tensor in pack.encoder.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, rounded[key]), key

    # Rounded first, a module gives the same outputs from memory and from the pack.
    encoder.load_state_dict(round_to_dtype(encoder.state_dict(), dtype))
    images = generator.synthesis(torch.randn(2, generator.num_ws, W_DIM), noise_mode="const")
    assert torch.equal(pack.encoder(images), encoder(images))


def test_weights_dtype_is_checked(
    tmp_path: Path, generator: Generator, attributes: dict[str, PackAttribute]
) -> None:
    with pytest.raises(ValueError, match="weights_dtype must be one of"):
        save_pack(
            tmp_path / "p", name="e", description="d", generator=generator, generator_kind="stylegan2",
            attributes=attributes, weights_dtype=torch.float64,
        )
    assert not (tmp_path / "p").exists()


def test_weights_that_overflow_the_storage_dtype_are_refused(
    tmp_path: Path, generator: Generator, attributes: dict[str, PackAttribute]
) -> None:
    # A BatchNorm variance beyond float16's range would load as inf: refused when saving, with the fix.
    generator, attributes = copy.deepcopy(generator), copy.deepcopy(attributes)  # Module-scoped fixtures.
    steering = attributes["smiling"].steering
    bn = next(m for m in steering.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.no_grad():
        bn.running_var[0] = 1e6
    with pytest.raises(ValueError, match=r"smiling.* steering: .*running_var: values up to 1e\+06 overflow "
                       r"float16 .*store the weights as float32"):
        save_pack(
            tmp_path / "p", name="e", description="d", generator=generator, generator_kind="stylegan2",
            attributes=attributes, weights_dtype=torch.float16,
        )
    assert not (tmp_path / "p").exists()
    with pytest.raises(ValueError, match="overflow float16"):
        round_to_dtype(steering.state_dict(), torch.float16)
    # bfloat16 has float32's range: the same weights are stored, and load as they were rounded.
    saved = save_pack(
        tmp_path / "b", name="e", description="d", generator=generator, generator_kind="stylegan2",
        attributes=attributes, weights_dtype=torch.bfloat16,
    )
    loaded = load_pack(saved, "cpu").attributes["smiling"].steering
    expected = round_to_dtype(steering.state_dict(), torch.bfloat16)
    key = next(f"{name}.running_var" for name, m in steering.named_modules() if m is bn)
    assert torch.equal(loaded.state_dict()[key], expected[key])
    # A NaN anywhere is refused too: in a classifier at float32, in the generator, in round_to_dtype.
    with torch.no_grad():
        bn.running_var[0] = float("nan")
    with pytest.raises(ValueError, match=r"smiling.* steering: .*running_var: has non-finite values"):
        save_pack(
            tmp_path / "c", name="e", description="d", generator=generator, generator_kind="stylegan2",
            attributes=attributes,
        )
    with pytest.raises(ValueError, match=r"^steering: .*running_var: has non-finite values"):
        round_to_dtype(steering.state_dict(), torch.float32, "steering")
    with torch.no_grad():
        bn.running_var[0] = 1.0
        next(generator.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="save_pack: generator: .*non-finite"):
        save_pack(
            tmp_path / "n", name="e", description="d", generator=generator, generator_kind="stylegan2",
            attributes=attributes,
        )
    assert not any((tmp_path / name).exists() for name in ("p", "c", "n"))
