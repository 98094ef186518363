"""The committed demo pack (packs/demo): integrity, rendering, a short edit that does what it says, and the
measurement functions that wrote its report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from models.evaluation import (
    METHODS,
    EditMethod,
    attribute_statistics,
    classify_frames,
    classify_images,
    dt_comparison,
    flip_rates,
)
from models.ials import EditAttribute, edit
from models.networks.procedural import ATTRIBUTES, ProceduralGenerator
from models.pack import ModelPack, load_pack, verify_pack
from models.sampling import sample_ws
from models.training import classifier_accuracy
from service.config import DEFAULT_PACK_PATH

DEMO = DEFAULT_PACK_PATH


@pytest.fixture(scope="module")
def pack() -> ModelPack:
    return load_pack(DEMO, "cpu")


def test_committed_pack_is_intact_and_small() -> None:
    assert verify_pack(DEMO) == []
    manifest = json.loads((DEMO / "manifest.json").read_text())
    weights = sum((DEMO / rel).stat().st_size for rel in manifest["files"])
    assert weights < 25e6  # Classifiers and encoder in float16.
    assert manifest["extra"]["build"]["config"]["weights_dtype"] == "float16"
    assert (DEMO / "report.json").is_file() and (DEMO / "sheet.png").is_file()


def test_the_default_config_is_the_committed_packs(pack: ModelPack) -> None:
    """`DemoPackConfig()` rebuilds the committed pack: it has every setting the build recorded."""
    from models.demo_pack import DemoPackConfig, _build_fields

    recorded = pack.manifest["extra"]["build"]["config"]
    defaults = _build_fields(DemoPackConfig())
    assert set(defaults) == set(recorded)
    for key, value in recorded.items():
        assert defaults[key] == (tuple(value) if isinstance(value, list) else value), key
    assert pack.encoder is not None
    assert defaults["encoder_width"] == pack.encoder.init_kwargs["width"]


def test_contents(pack: ModelPack) -> None:
    assert isinstance(pack.generator, ProceduralGenerator)
    assert set(pack.attributes) == set(ATTRIBUTES)
    for attr in pack.attributes.values():
        assert set(attr.directions) == {"interfacegan", "averaged", "ganspace"}
        assert attr.evaluator is not None
        assert attr.evaluator.arch != attr.steering.arch
    assert pack.encoder is not None
    assert pack.defaults["lambda1"] == 0.75 and pack.defaults["lambda2"] == 0.0
    world = pack.manifest["extra"]["world"]
    assert world["frequencies"]["eyeglasses"] < world["frequencies"]["young"]


def test_render_a_seed(pack: ModelPack) -> None:
    ws = sample_ws(pack.generator, seeds=[0, 1], truncation_psi=pack.defaults["truncation_psi"], device="cpu")
    with torch.no_grad():
        images = pack.generator.synthesis(ws, noise_mode="const")
    assert images.shape == (2, 3, 64, 64)
    assert images.min() >= -1 and images.max() <= 1
    assert not torch.equal(images[0], images[1])
    # A seed's latent is the same bit for bit whichever seeds come with it.
    psi = pack.defaults["truncation_psi"]
    for seed in (0, 1):
        again = sample_ws(pack.generator, seeds=[seed], truncation_psi=psi, device="cpu")
        assert torch.equal(again[0], ws[seed])


@pytest.mark.parametrize("primal, condition, sign", [("smiling", "male", 1), ("young", "eyeglasses", -1)])
def test_five_step_edit_moves_the_primal_and_keeps_the_condition(
    pack: ModelPack, primal: str, condition: str, sign: int
) -> None:
    G = pack.generator
    ws = sample_ws(G, seeds=range(8), truncation_psi=pack.defaults["truncation_psi"], device="cpu")
    kind = pack.defaults["direction_kind"]

    def attribute(name: str) -> EditAttribute:
        return EditAttribute(name, pack.attributes[name].steering, pack.attributes[name].directions[kind])

    result = edit(
        G, ws, primal=attribute(primal), conditions=[attribute(condition)], steps=5,
        step=sign * pack.defaults["step"], lambda1=pack.defaults["lambda1"], lambda2=pack.defaults["lambda2"],
        device="cpu",
    )
    start, end = G.attribute_logits(result.ws[:, 0]), G.attribute_logits(result.ws[:, -1])
    moved = sign * (end[primal] - start[primal])
    assert (moved > 0).all(), moved
    assert ((end[condition] > 0) == (start[condition] > 0)).all()
    # The steering classifier agrees on the direction of travel.
    assert (sign * (result.scores[primal][:, -1] - result.scores[primal][:, 0]) > 0).float().mean() >= 0.75


def test_flip_rates_and_dt_comparison_on_few_faces(pack: ModelPack) -> None:
    rates = flip_rates(
        pack, num=6, steps=8, step=pack.defaults["step"], lambda1=0.75, lambda2=0.0, truncation_psi=0.7,
        seed=1, attributes=["smiling"], direction_kinds=["interfacegan"],
    )
    assert set(rates) == {"smiling"} and set(rates["smiling"]["interfacegan"]) == {"+", "-"}
    assert all(0.0 <= r <= 1.0 for r in rates["smiling"]["interfacegan"].values())

    methods = [METHODS[0], METHODS[1], EditMethod("GANSpace", 1.0, 1.0, "ganspace")]
    report = dt_comparison(
        pack, methods=methods, num=4, steps=3, step=pack.defaults["step"], truncation_psi=0.7, seed=2,
        attributes=["smiling", "male"],
    )
    for method in methods:
        for labeller in ("ground_truth", "evaluators"):
            entry = report["methods"][method.name][labeller]
            assert entry["pairs"] == 4  # 2 ordered pairs x 2 directions
            assert 0 <= entry["p"] <= 1 and 0 <= entry["q"] <= 1
    assert "matched_range" in report["methods"][methods[1].name]["ground_truth"]
    json.dumps(report)


def test_classify_images_equals_classify_frames(pack: ModelPack) -> None:
    """Labelling frames already rendered (as the DT comparison does with an edit's images) gives what
    rendering them again gives."""
    G = pack.generator
    ws = sample_ws(G, n=6, generator=torch.Generator().manual_seed(3), truncation_psi=1.0, device="cpu")
    frames = torch.stack([ws, ws + 0.3 * torch.randn_like(ws), ws - 0.3], dim=1)  # [6, 3, L, D]
    classifiers = {name: pack.attributes[name].evaluator for name in ("smiling", "eyeglasses")}
    assert all(c is not None for c in classifiers.values())
    with torch.no_grad():
        images = G.synthesis(frames.flatten(0, 1), noise_mode="const").unflatten(0, (6, 3))
    rendered = classify_frames(G, frames, classifiers, batch_size=5)  # type: ignore[arg-type]
    given = classify_images(images, classifiers, batch_size=4)  # type: ignore[arg-type]
    assert given.keys() == rendered.keys()
    for name in classifiers:
        assert given[name].shape == (6, 3) and torch.equal(given[name], rendered[name])


def test_dt_labels_of_an_edit_equal_labels_of_its_frames_rendered_again(pack: ModelPack) -> None:
    """The DT comparison labels an edit's own images, chunk by chunk; for every method (with and
    without gradients) that equals rendering the frames again and labelling them."""
    from models.evaluation import _edit_frames

    G = pack.generator
    ws = sample_ws(G, n=5, generator=torch.Generator().manual_seed(8), truncation_psi=0.7, device="cpu")
    evaluators = {name: pack.attributes[name].evaluator for name in ("smiling", "young")}
    assert all(c is not None for c in evaluators.values())
    for method in METHODS:
        frames, labels = _edit_frames(
            pack, ws, primal="smiling", conditions=["young"], sign=1, steps=3, step=pack.defaults["step"],
            method=method, batch_size=2, label_with=evaluators,  # type: ignore[arg-type]
        )
        plain, none = _edit_frames(
            pack, ws, primal="smiling", conditions=["young"], sign=1, steps=3, step=pack.defaults["step"],
            method=method, batch_size=2,
        )
        assert none is None and torch.equal(plain, frames) and frames.shape[:2] == (5, 4)
        assert labels is not None
        again = classify_frames(G, frames, evaluators)  # type: ignore[arg-type]
        for name in evaluators:
            assert torch.equal(labels[name], again[name]), (method.name, name)


def test_attribute_statistics() -> None:
    labels = {
        "a": torch.tensor([True, True, False, False]),
        "b": torch.tensor([True, True, False, False]),
        "c": torch.tensor([False, False, True, True]),
    }
    stats = attribute_statistics(labels)
    assert stats["frequency"] == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert stats["phi"]["a"]["b"] == pytest.approx(1.0)
    assert stats["phi"]["a"]["c"] == pytest.approx(-1.0)


def _report() -> dict[str, Any]:
    report: dict[str, Any] = json.loads((DEMO / "report.json").read_text())
    return report


@pytest.mark.parametrize("role", ["steering", "evaluator"])
@pytest.mark.parametrize("name", ATTRIBUTES)
def test_report_classifier_accuracy(name: str, role: str) -> None:
    """Every steering and evaluator classifier is >= 97 % accurate on 2,000 fresh faces (psi = 1)."""
    assert _report()["classifier_accuracy"][name][role] >= 0.97


def test_report_meets_the_bars() -> None:
    """The committed report: the steering classifiers agree with the ground truth on >= 97 % of faces,
    attribute frequencies of the 2,000 faces are within 3 points of the bias table, the steering
    gradients point where the attribute grows (IALS's instance-specific directions)."""
    report = _report()
    assert min(report["statistics"]["steering_agreement"].values()) >= 0.97
    for name, row in report["statistics"]["frequency"].items():
        assert abs(row["measured"] - row["target"]) <= 0.03, name
    for name in ATTRIBUTES:
        assert report["gradient_alignment"][name]["steering"]["mean_cos"] > 0.25, name
    assert report["dt"]["settings"]["faces"] >= 200


@pytest.mark.parametrize("kind", ["interfacegan", "averaged", "ganspace"])
@pytest.mark.parametrize("name", ATTRIBUTES)
def test_report_flip_rates(name: str, kind: str) -> None:
    """A 20-step IALS edit (default step, lambda1 0.75, lambda2 0) with each direction flips the
    ground-truth label of >= 80 % of 200 faces, both ways."""
    flips = _report()["flip_rates"]
    assert flips["faces"] >= 200 and flips["steps"] == 20 and flips["lambda1"] == 0.75
    assert flips["step"] == _report()["defaults"]["step"] == _report()["dt"]["settings"]["step"]
    rates = flips["rates"][name][kind]
    assert min(rates["+"], rates["-"]) >= 0.8, rates


def test_report_world_calibration_within_three_points() -> None:
    """The world's frequencies and phi coefficients (400,000 ground-truth labels) are within 3 points of
    the bias table."""
    population = json.loads((DEMO / "report.json").read_text())["statistics"]["population"]
    assert population["faces"] >= 400_000
    for row in [*population["frequency"].values(), *population["phi"].values()]:
        assert abs(row["measured"] - row["target"]) <= 0.03, row
    assert population["max_abs_deviation"] <= 0.03


@pytest.mark.xfail(strict=True, reason="phi(young, eyeglasses) of the 2,000 faces is -0.352 against -0.30: "
                   "sampling noise (the standard deviation of phi at 2,000 faces is 0.024; the population "
                   "of 400,000 is within 0.003 of the table)")
def test_report_correlations_of_2000_faces_within_three_points() -> None:
    report = json.loads((DEMO / "report.json").read_text())
    assert report["statistics"]["max_abs_deviation"] <= 0.03


def test_report_evaluators_meet_the_bar() -> None:
    report = json.loads((DEMO / "report.json").read_text())
    for name, roles in report["classifier_accuracy"].items():
        assert roles["evaluator"] >= 0.97, name


@pytest.mark.slow
@pytest.mark.parametrize("role", ["steering", "evaluator"])
@pytest.mark.parametrize("name", ATTRIBUTES)
def test_classifier_accuracy_remeasured(pack: ModelPack, name: str, role: str) -> None:
    """Every classifier is >= 97 % accurate on 2,000 fresh faces (psi = 1), other faces than the report's."""
    _check_accuracy(pack, name, role)


def _check_accuracy(pack: ModelPack, name: str, role: str) -> None:
    classifier = getattr(pack.attributes[name], role)
    accuracy = classifier_accuracy(
        classifier, pack.generator, name, n=2000, truncation_psi=1.0,
        generator=torch.Generator().manual_seed(1234 + ATTRIBUTES.index(name)), device="cpu",
    )
    assert accuracy >= 0.97, (name, role, accuracy)


def test_demo_path_is_the_default() -> None:
    assert Path(DEMO).name == "demo"


@pytest.mark.slow  # About 12 s on 2 loaded cores; tests/unit/test_inversion.py covers the same world fast.
def test_batch_inversion_on_the_demo_pack_improves_on_the_encoder(pack: ModelPack) -> None:
    from models.inversion import invert_with_pack

    psi = pack.defaults["truncation_psi"]
    ws = sample_ws(pack.generator, seeds=[11, 12], truncation_psi=psi, device="cpu")
    with torch.no_grad():
        images = pack.generator.synthesis(ws, noise_mode="const")
    start = invert_with_pack(pack, images, effort="encoder")
    result = invert_with_pack(pack, images, effort="balanced")
    assert result.ws.shape == ws.shape
    assert (start.psnr > 28).all()  # The encoder alone lands close.
    assert (result.psnr > start.psnr + 1).all()  # The optimisation improves every image of the batch.
    assert min(result.losses["total"]) < 0.5 * result.losses["total"][0]
