"""`ials convert` end to end on small checkpoints in the real formats."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from models.pack import load_pack
from tests.convert_fixtures import (
    nvidia_snapshot,
    rosinality_state_dict,
    write_ials_pretrain,
    write_nvidia_pkl,
    write_rosinality,
)
from tests.packs import tiny_generator


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ials_pretrain(tmp_path_factory.mktemp("ials") / "pretrain")


def test_ials_pretrain(pretrain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pack"
    assert (
        main(["convert", "ials-pretrain", str(pretrain), "--out", str(out), "--classifier-resolution", "16"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "stylegan1 generator, 16 px, num_ws 6, w_dim 32" in printed
    assert (
        "attribute smiling: Smiling (expression); directions ['averaged', 'ganspace', 'interfacegan']"
        in printed
    )
    assert "real_latent_code: 2 codes [6, 32]" in printed and "imagenet_vgg16.pth" in printed
    assert "verified:" in printed and "renders seed 0 to [1, 3, 16, 16]" in printed
    pack = load_pack(out, "cpu")
    assert pack.generator_kind == "stylegan1" and sorted(pack.attributes) == ["male", "smiling", "young"]
    assert pack.defaults["direction_kind"] == "interfacegan"
    # Existing output: refused without --overwrite.
    assert main(["convert", "ials-pretrain", str(pretrain), "--out", str(out)]) == 2
    assert "exists; give --overwrite" in capsys.readouterr().err


def test_nvidia_pkl_with_ials_classifiers(
    pretrain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_nvidia_pkl(tmp_path / "net.pkl", nvidia_snapshot(tiny_generator()))
    out = tmp_path / "pack"
    argv = ["convert", "nvidia-pkl", str(src), "--out", str(out), "--classifiers", str(pretrain),
            "--classifier-resolution", "16", "--samples", "32",
            "--directions", "averaged", "ganspace"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "stylegan2 generator, 16 px, num_ws 6" in printed and '"num_fp16_res": 0' in printed
    assert "attribute male: Male (gender); directions ['averaged', 'ganspace']" in printed
    # The fixture's smiling classifier puts every face in class 0: no averaged direction (the official
    # script averages over class-1 faces), said in a note; the default kind is one all attributes have.
    assert "note: smiling: no averaged direction: None of the 32 faces is of class 1" in printed
    assert "attribute smiling: Smiling (expression); directions ['ganspace']" in printed
    assert "verified:" in printed
    pack = load_pack(out, "cpu")
    assert pack.defaults["direction_kind"] == "ganspace" and pack.generator_kind == "stylegan2"


def test_rosinality_with_pack_classifiers(
    pretrain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    classifiers = tmp_path / "ials-pack"
    assert main(["convert", "ials-pretrain", str(pretrain), "--out", str(classifiers),
                 "--classifier-resolution", "16"]) == 0  # fmt: skip
    state = rosinality_state_dict(16, 32, 2, {4: 16, 8: 16, 16: 8})
    src = write_rosinality(tmp_path / "ckpt.pt", state, latent_avg=torch.zeros(32))
    out = tmp_path / "pack"
    argv = [
        "convert",
        "rosinality",
        str(src),
        "--out",
        str(out),
        "--classifiers",
        str(classifiers),
        "--samples",
        "32",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "verified:" in printed
    # Averaged directions only (the default): smiling, with no face of class 1, is left out, said so.
    assert "note: smiling: no averaged direction: None of the 32 faces is of class 1" in printed
    assert sorted(load_pack(out, "cpu").attributes) == ["male", "young"]


def test_errors_are_one_line(pretrain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"hello")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    protocol4 = tmp_path / "p4.pt"
    protocol4.write_bytes(pickle.dumps({"g_ema": {"style.1.weight": [1.0]}}, protocol=4))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    nvidia = write_nvidia_pkl(tmp_path / "nv.pkl", nvidia_snapshot(tiny_generator()))
    torch_zip = write_rosinality(tmp_path / "ros.pt", {"style.1.weight": torch.zeros(2, 2)}, latent_avg=None)
    out = str(tmp_path / "pack")
    ros = "not a rosinality stylegan2-pytorch checkpoint (.pt)"
    cases = [
        (["nvidia-pkl", str(junk)], "not an NVIDIA StyleGAN2-ADA network pickle (.pkl)"),
        (["rosinality", str(junk)], ros),
        (["rosinality", str(noise)], f"{ros}: not readable with torch.load(weights_only=True) (Unpickling"),
        (["rosinality", str(protocol4)], f"{ros}: not readable with torch.load(weights_only=True)"),
        (["rosinality", str(nvidia)], f"{ros}: this is an NVIDIA pickle"),
        (["rosinality", str(empty)], f"{ros}: empty file"),
        (["nvidia-pkl", str(noise)], "not an NVIDIA StyleGAN2-ADA network pickle (.pkl)"),
        (["nvidia-pkl", str(empty)], "not an NVIDIA StyleGAN2-ADA network pickle (.pkl): empty file"),
        (["nvidia-pkl", str(torch_zip)], "a torch.save checkpoint (a zip archive); did you mean"),
        (
            ["ials-pretrain", str(junk)],
            "is not a folder; ials-pretrain expects the official IALS pretrain/ folder",
        ),
        (["ials-pretrain", str(tmp_path)], "not an IALS pretrain/ folder for dataset 'ffhq'"),
        (["rosinality", str(tmp_path / "missing.pt")], "no such file or folder"),
    ]
    for args, message in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # torch's "Detected pickle protocol 4" warning is suppressed.
            assert main(["convert", *args, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ials: error: ") and message in err and err.count("\n") == 1, err
        assert "weights_only=False" not in err and "safe_globals" not in err, err
    src = write_nvidia_pkl(tmp_path / "net.pkl", nvidia_snapshot(tiny_generator()))
    assert main(["convert", "nvidia-pkl", str(src), "--out", out]) == 2
    assert "give --classifiers" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [
        ValueError("the averaged direction is zero\nmore"),
        torch.OutOfMemoryError("CUDA out of memory.\nTried"),
    ],
)
def test_direction_fitting_errors_are_one_line(
    error: Exception,
    pretrain: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("models.convert.directions.fit_directions", fail)
    src = write_nvidia_pkl(tmp_path / "net.pkl", nvidia_snapshot(tiny_generator()))
    argv = ["convert", "nvidia-pkl", str(src), "--out", str(tmp_path / "pack"),
            "--classifiers", str(pretrain), "--classifier-resolution", "16"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ials: error: fitting directions on cpu failed: ") and err.count("\n") == 1, err
    assert f"{type(error).__name__}: {str(error).splitlines()[0]}" in err
