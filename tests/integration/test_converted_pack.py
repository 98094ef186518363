"""The service and the worker, unchanged, on a pack that `ials convert ials-pretrain` wrote (issue 7)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cli.main import main
from service.config import Settings
from service.main import create_app
from tests.convert_fixtures import IALS_TEST_ATTRIBUTES, write_ials_pretrain
from tests.integration.conftest import RunWorker
from tests.integration.test_pipeline import artifact, job, post
from tests.service import helpers

RESOLUTION, W_DIM = 16, 32  # write_ials_pretrain's defaults
NUM_WS = 2 * 4 - 2  # StyleGAN v1: two ws per block, 4 to 16 px


@pytest.fixture(scope="module")
def pretrain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small official-format IALS pretrain/ folder: StyleGAN v1, classifiers, directions, real codes."""
    return write_ials_pretrain(
        tmp_path_factory.mktemp("ials") / "pretrain", resolution=RESOLUTION, w_dim=W_DIM
    )


@pytest.fixture(scope="module")
def converted_pack_path(pretrain: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pack, written by the `ials convert ials-pretrain` command itself."""
    out = tmp_path_factory.mktemp("packs") / "ials-ffhq"
    argv = ["convert", "ials-pretrain", str(pretrain), "--out", str(out),
            "--classifier-resolution", str(RESOLUTION)]  # fmt: skip
    assert main(argv) == 0
    return out


def test_service_and_worker_run_a_converted_ials_pack(
    settings: Settings, converted_pack_path: Path, pretrain: Path, run_worker: RunWorker
) -> None:
    settings = settings.model_copy(update={"pack_path": converted_pack_path})
    client = TestClient(create_app(settings))

    # The model as the service describes it.
    model = client.get("/v1/model").json()
    assert model["generator_kind"] == "stylegan1"
    assert (model["img_resolution"], model["num_ws"], model["w_dim"]) == (RESOLUTION, NUM_WS, W_DIM)
    attributes = {a["name"]: a for a in model["attributes"]}
    assert sorted(attributes) == sorted(IALS_TEST_ATTRIBUTES)
    assert attributes["smiling"]["description"] == "Smiling (expression)"
    for a in attributes.values():
        assert set(a["directions"]) == {"interfacegan", "averaged", "ganspace"} and not a["has_evaluator"]
    assert model["defaults"]["direction_kind"] == "interfacegan"

    # A seed edit with a condition and a latent edit of one of the folder's real latent codes.
    seed_steps, latent_steps = 3, 2
    seed_job = post(
        client, json={"seed": 7, "primal": "smiling", "conditions": ["young"], "steps": seed_steps}
    )
    code = np.load(pretrain / "real_latent_code" / "real1.npy")  # [num_ws, w_dim], as IALS saves them
    latent_job = post(
        client,
        files={"latent": ("real1.npy", helpers.npy(code), "application/octet-stream")},
        data={"primal": "male", "conditions": "smiling", "steps": str(latent_steps), "direction": "decrease"},
    )
    run_worker(settings)

    for job_id, steps, conditions in ((seed_job, seed_steps, "young"), (latent_job, latent_steps, "smiling")):
        body = job(client, job_id)
        assert body["status"] == "finished", body["error"]
        frames = steps + 1
        assert {f"frames/frame_{i:04d}.png" for i in range(frames)} <= set(body["artifacts"])
        with zipfile.ZipFile(io.BytesIO(artifact(client, body, "frames.zip"))) as zf:
            assert len(zf.namelist()) == frames
        last = Image.open(io.BytesIO(artifact(client, body, f"frames/frame_{steps:04d}.png")))
        assert last.size == (RESOLUTION, RESOLUTION)
        latents = np.load(io.BytesIO(artifact(client, body, "latents.npy")), allow_pickle=False)
        assert latents.shape == (frames, NUM_WS, W_DIM) and np.isfinite(latents).all()
        assert not np.allclose(latents[-1], latents[0])
        scores = json.loads(artifact(client, body, "scores.json"))
        assert len(scores["frames"]) == frames
        primal = body["request"]["primal"]
        for frame in scores["frames"]:
            assert {primal, conditions} <= set(frame["steering"])
            assert all(np.isfinite(frame["steering"][name]) for name in (primal, conditions))
        if job_id == latent_job:
            np.testing.assert_allclose(latents[0], code)  # frame 0 is the real code, untouched
