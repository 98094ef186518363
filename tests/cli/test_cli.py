"""`ials render` and `ials edit` on a tiny real pack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli.main import main
from models.ials import render_frames
from models.pack import load_pack
from models.sampling import sample_ws


def test_render_seed_to_png_and_npy_match(tiny_pack_path: Path, tmp_path: Path) -> None:
    assert (
        main(["render", "--pack", str(tiny_pack_path), "--seed", "3", "--out", str(tmp_path / "a.png")]) == 0
    )
    assert (
        main(["render", "--pack", str(tiny_pack_path), "--seed", "3", "--out", str(tmp_path / "a.npy")]) == 0
    )
    picture = np.asarray(Image.open(tmp_path / "a.png"))
    raw = np.load(tmp_path / "a.npy")
    assert picture.shape == (16, 16, 3) and raw.shape == (1, 3, 16, 16) and raw.dtype == np.float32
    expected = np.clip(raw[0].transpose(1, 2, 0) * 127.5 + 128, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(picture, expected)

    # The same seed through the library, with the pack's default psi.
    pack = load_pack(tiny_pack_path, "cpu")
    ws = sample_ws(pack.generator, [3], truncation_psi=pack.defaults["truncation_psi"], device="cpu")
    np.testing.assert_array_equal(raw, render_frames(pack.generator, ws, device="cpu").numpy())


def test_render_latent_shapes(tiny_pack_path: Path, tmp_path: Path) -> None:
    pack = load_pack(tiny_pack_path, "cpu")
    w = pack.w_avg.numpy()  # [w_dim]
    for name, latent, count in [
        ("w", w, 1),
        ("w1", w[None], 1),
        ("wplus", np.repeat(w[None], pack.num_ws, axis=0), 1),
        ("batch", np.stack([w, w, w]), 3),
    ]:
        np.save(tmp_path / f"{name}.npy", latent)
        out = tmp_path / f"{name}.png"
        assert (
            main(
                [
                    "render",
                    "--pack",
                    str(tiny_pack_path),
                    "--latent",
                    str(tmp_path / f"{name}.npy"),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        written = [out] if count == 1 else [tmp_path / f"{name}-{i:04d}.png" for i in range(count)]
        assert all(path.is_file() for path in written)
    # w broadcast to every row renders the same picture as the explicit w+.
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "w.png")), np.asarray(Image.open(tmp_path / "wplus.png"))
    )


@pytest.mark.parametrize(
    ("latent", "message"),
    [
        (np.zeros((5, 7), np.float32), "must have shape"),
        (np.full((32,), np.nan, np.float32), "NaN"),
        (np.array([{"a": 1}], dtype=object), "cannot read latent"),
        (np.zeros((0, 32), np.float32), "is empty"),
        (np.zeros((), np.float32), "must have shape"),
        (np.zeros((2, 32), np.complex64), "numeric array"),
    ],
)
def test_render_refuses_bad_latents(
    tiny_pack_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], latent: np.ndarray, message: str
) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, latent, allow_pickle=True)
    assert (
        main(
            ["render", "--pack", str(tiny_pack_path), "--latent", str(path), "--out", str(tmp_path / "x.png")]
        )
        == 2
    )
    assert message in capsys.readouterr().err


def test_render_refuses_latent_files_that_lie_about_their_size(
    tiny_pack_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty, huge = tmp_path / "empty.npy", tmp_path / "huge.npy"
    empty.write_bytes(b"")
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = (99_999_999_999,)
    with open(huge, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
    for path in (empty, huge):
        argv = [
            "render",
            "--pack",
            str(tiny_pack_path),
            "--latent",
            str(path),
            "--out",
            str(tmp_path / "x.png"),
        ]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "cannot read latent" in err or "more than" in err


def test_missing_pack_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--pack", str(tmp_path), "--seed", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert "no model pack" in capsys.readouterr().err


def test_edit_writes_frames_latents_and_scores(tiny_pack_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "edit"
    argv = [
        "edit",
        "--pack",
        str(tiny_pack_path),
        "--seed",
        "5",
        "--primal",
        "smiling",
        "--conditions",
        "young",
        "--steps",
        "4",
        "--step",
        "0.5",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    frames = sorted((out / "frames").glob("frame_*.png"))
    assert len(frames) == 5
    latents = np.load(out / "latents.npy")
    assert latents.shape == (5, 6, 32)
    scores = json.loads((out / "scores.json").read_text())["frames"]
    assert [frame["frame"] for frame in scores] == [0, 1, 2, 3, 4]
    assert set(scores[0]["steering"]) == {"smiling", "young"}
    assert set(scores[0]["evaluator"]) == {"smiling"}  # young has no evaluator in this pack
    # Frame 0 is the seed's face, and the saved frames are the renders of the saved latents.
    pack = load_pack(tiny_pack_path, "cpu")
    images = render_frames(pack.generator, torch.from_numpy(latents), device="cpu")
    expected = np.clip(images.numpy().transpose(0, 2, 3, 1) * 127.5 + 128, 0, 255).astype(np.uint8)
    for path, picture in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), picture)
    ws0 = sample_ws(pack.generator, [5], truncation_psi=pack.defaults["truncation_psi"], device="cpu")
    np.testing.assert_array_equal(latents[0], ws0[0].numpy())
    # The scores are the steering classifiers' probabilities of those frames.
    smiling = pack.attributes["smiling"].steering.probability(images)
    np.testing.assert_allclose([f["steering"]["smiling"] for f in scores], smiling.numpy(), atol=1e-5)


def run_cli(argv: list[str]) -> int:
    """`main(argv)`, with argparse's own usage errors (SystemExit) turned into their exit status."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seed", "-1"], "seeds lie in [0, 4294967295]"),
        (["--seed", "5000000000"], "seeds lie in [0, 4294967295]"),
        (["--seed", "1", "--psi", "nan"], "must be finite"),
        (["--seed", "1", "--device", "foo"], "unknown device 'foo'"),
        (["--seed", "1", "--device", "cuda:7"], "CUDA is not available")
        if not torch.cuda.is_available()
        else (["--seed", "1", "--device", "cuda:99"], "cuda"),
        (["--seed", "1", "--out", "/dev/null/x.png"], "/dev/null"),
        (["--seed", "1", "--out", "x.jpg"], "must end in .png or .npy"),
        (["--seed", "1", "--psi=-1e308"], "truncation psi lies in [-2, 2]"),
        (["--seed", "1", "--device", "meta"], "unknown device 'meta'"),
    ],
)
def test_render_usage_errors(
    tiny_pack_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["render", "--pack", str(tiny_pack_path), *extra]
    if "--out" not in extra:
        argv += ["--out", str(tmp_path / "x.png")]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_render_npy_suffix_is_kept_and_psi_applies_to_latents(tiny_pack_path: Path, tmp_path: Path) -> None:
    pack = load_pack(tiny_pack_path, "cpu")
    ws = sample_ws(pack.generator, [4], truncation_psi=1.0, device="cpu")
    np.save(tmp_path / "w.npy", ws[0].numpy())
    out = tmp_path / "raw.NPY"
    assert (
        main(
            [
                "render",
                "--pack",
                str(tiny_pack_path),
                "--latent",
                str(tmp_path / "w.npy"),
                "--psi",
                "0.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.is_file() and not (tmp_path / "raw.NPY.npy").exists()
    truncated = sample_ws(pack.generator, [4], truncation_psi=0.5, device="cpu")
    expected = render_frames(pack.generator, truncated, device="cpu").numpy()
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_edit_records_the_target_score_stop(tiny_pack_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "edit"
    pack = load_pack(tiny_pack_path, "cpu")
    ws = sample_ws(pack.generator, [5], truncation_psi=0.5, device="cpu")
    start = float(
        pack.attributes["smiling"].steering.probability(render_frames(pack.generator, ws, device="cpu"))
    )
    # A target just past the start: the first step that moves the primal the asked way crosses it.
    argv = [
        "edit",
        "--pack",
        str(tiny_pack_path),
        "--seed",
        "5",
        "--primal",
        "smiling",
        "--steps",
        "6",
        "--step",
        "0.1",
        "--lambda1",
        "0",
        "--target-score",
        str(min(start + 1e-4, 1.0)),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    scores = json.loads((out / "scores.json").read_text())
    stopped_at = scores["stopped_at"]
    edit_json = json.loads((out / "edit.json").read_text())
    assert (edit_json["stopped_at"], edit_json["stop_reason"]) == (stopped_at, "target_score")
    assert 1 <= stopped_at < 6 and scores["stop_reason"] == "target_score"
    latents = np.load(out / "latents.npy")
    for frame in range(stopped_at + 1, 7):
        np.testing.assert_array_equal(latents[frame], latents[stopped_at])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--primal", "bald"], "unknown attribute 'bald'"),
        (["--primal", "smiling", "--conditions", "smiling"], "cannot also be a condition"),
        (
            ["--primal", "young", "--conditions", "smiling", "--directions", "ganspace"],
            "no 'ganspace' direction",
        ),
        (["--primal", "smiling", "--steps", "0"], "steps lie in [1, 1000]"),
        (["--primal", "smiling", "--steps", "100000000000"], "steps lie in [1, 1000]"),
        (["--primal", "smiling", "--lambda1", "1.5"], "lambda1"),
        (["--primal", "smiling", "--step", "0"], "step"),
    ],
)
def test_edit_refuses_bad_requests(
    tiny_pack_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["edit", "--pack", str(tiny_pack_path), "--seed", "1", "--out", str(tmp_path / "e"), *extra]
    assert run_cli(argv) == 2
    assert message in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("ials")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    for command in ("serve", "render", "edit"):
        assert command in result.stdout
