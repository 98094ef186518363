"""`ials invert` on the astronaut photo with the tiny pack, and its no-face error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main
from models.pack import load_pack


@pytest.fixture(scope="module")
def astronaut_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def test_invert_writes_aligned_reconstruction_latent_and_report(
    tiny_pack_path: Path, astronaut_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    pack_args = ["--pack", str(tiny_pack_path)]
    assert main(["invert", str(astronaut_path), *pack_args, "--out", str(out), "--effort", "fast"]) == 0
    pack = load_pack(tiny_pack_path, "cpu")
    size = pack.img_resolution
    assert np.asarray(Image.open(out / "aligned.png")).shape == (size, size, 3)
    assert np.asarray(Image.open(out / "reconstruction.png")).shape == (size, size, 3)
    latent = np.load(out / "latent.npy", allow_pickle=False)
    assert latent.shape == (1, pack.num_ws, pack.w_dim) and latent.dtype == np.float32
    assert np.isfinite(latent).all()
    report = json.loads((out / "inversion.json").read_text())
    assert report["faces_found"] == 1 and report["effort"] == "fast"
    assert 1 <= report["steps_run"] <= 50 and report["psnr"] > 5 and report["perceptual_distance"] >= 0
    assert {"align", "invert", "total"} <= set(report["timings_s"])
    captured = capsys.readouterr()
    assert "invert" in captured.err  # The progress bar.
    assert "1 face(s) found" in captured.out

    # The written latent renders the written reconstruction.
    assert main(["render", "--pack", str(tiny_pack_path), "--latent", str(out / "latent.npy"),
                 "--out", str(tmp_path / "render.png")]) == 0  # fmt: skip
    rendered = np.asarray(Image.open(tmp_path / "render.png")).astype(int)
    assert np.abs(rendered - np.asarray(Image.open(out / "reconstruction.png")).astype(int)).max() <= 1


def test_invert_noise_photo_is_a_clean_no_face_error(
    tiny_pack_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 240, 3), dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    assert main(["invert", str(photo), "--pack", str(tiny_pack_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ials: error: no_face_found")
    assert not out.exists()


def test_invert_unreadable_photo(
    tiny_pack_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "not-an-image.png"
    photo.write_bytes(b"hello")
    assert main(["invert", str(photo), "--pack", str(tiny_pack_path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("ials: error: cannot read")


def test_invert_bad_vgg16_file(
    tiny_pack_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = tmp_path / "vgg16.pth"
    weights.write_bytes(b"not a state dict")
    args = ["invert", "photo.png", "--pack", str(tiny_pack_path), "--vgg16", str(weights), "--out", "o"]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"ials: error: cannot use --vgg16 {weights}")
