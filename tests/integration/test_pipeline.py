"""From POST to artifacts through Redis and a real rq worker: seeds, latents, photos, both generator kinds."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis
from rq import Callback, Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from service.config import Settings
from service.main import create_app
from service.queue import CANCEL_KEY, edit_queue
from tests.integration.conftest import RunWorker
from tests.service import helpers

W_DIM, NUM_WS = 32, 6  # the tiny pack's
# The tiny packs' directions are random, unrelated to their random classifiers: edits that must move a
# score follow the classifier's own gradient (lambda1 = 0, the instance-specific direction alone).
GRAD = {"lambda1": 0, "step": 0.3}


def post(client: TestClient, **kwargs: Any) -> str:
    response = client.post("/v1/edits", **kwargs)
    assert response.status_code == 202, response.json()
    assert response.headers["location"] == response.json()["url"]
    return str(response.json()["id"])


def job(client: TestClient, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def artifact(client: TestClient, body: dict[str, Any], name: str) -> bytes:
    response = client.get(body["artifacts"][name])
    assert response.status_code == 200, name
    return response.content


def primal_scores(client: TestClient, body: dict[str, Any], primal: str) -> list[float]:
    scores = json.loads(artifact(client, body, "scores.json"))
    return [frame["steering"][primal] for frame in scores["frames"]]


def test_seed_edits_move_the_primal_both_ways(
    client: TestClient, settings: Settings, run_worker: RunWorker
) -> None:
    up = post(client, json={"seed": 3, "primal": "smiling", "conditions": ["young"], "steps": 6, **GRAD})
    down = post(client, json={"seed": 3, "primal": "smiling", "direction": "decrease", "steps": 6, **GRAD})
    baseline = post(
        client,
        json={"seed": 4, "primal": "young", "steps": 3, "lambda1": 1, "lambda2": 1, "directions": "ganspace"},
    )
    assert job(client, up)["status"] == "queued"
    run_worker(settings)

    body = job(client, up)
    assert body["status"] == "finished", body["error"]
    assert body["stage"] == "done" and body["timings"]["edit"] > 0
    assert body["request"]["step"] == 0.3 and body["request"]["lambda2"] == 0.0  # the pack's default
    assert (body["result"]["stopped_at"], body["result"]["stop_reason"]) == (6, None)
    rising = primal_scores(client, body, "smiling")
    assert len(rising) == 7 and rising[-1] > rising[0]
    falling = primal_scores(client, job(client, down), "smiling")
    assert falling[-1] < falling[0]
    assert job(client, baseline)["status"] == "finished"

    # Every artifact is there and well formed.
    names = set(body["artifacts"])
    assert {
        "frames.zip",
        "edit.gif",
        "edit.webp",
        "strip.png",
        "latents.npy",
        "scores.json",
        "edit.json",
    } <= names
    assert {f"frames/frame_{i:04d}.png" for i in range(7)} <= names
    latents = np.load(io.BytesIO(artifact(client, body, "latents.npy")), allow_pickle=False)
    assert latents.shape == (7, NUM_WS, W_DIM)
    with zipfile.ZipFile(io.BytesIO(artifact(client, body, "frames.zip"))) as zf:
        assert len(zf.namelist()) == 7
    gif = Image.open(io.BytesIO(artifact(client, body, "edit.gif")))
    assert gif.n_frames == 7
    webp = Image.open(io.BytesIO(artifact(client, body, "edit.webp")))
    assert webp.n_frames == 7
    frame = Image.open(io.BytesIO(artifact(client, body, "frames/frame_0003.png")))
    assert frame.size == (16, 16)
    missing = client.get(f"/v1/jobs/{up}/artifacts/aligned.png")
    assert (missing.status_code, missing.json()["code"]) == (404, "artifact_not_found")
    sneaky = client.get(f"/v1/jobs/{up}/artifacts/../../uploads")
    assert sneaky.status_code == 404


def test_latent_edits_from_files_and_json(
    client: TestClient, settings: Settings, run_worker: RunWorker
) -> None:
    w = np.random.default_rng(0).standard_normal((NUM_WS, W_DIM)).astype(np.float32) * 0.3
    from_file = post(
        client,
        files={"latent": ("w.npy", helpers.npy(w), "application/octet-stream")},
        data={"primal": "young", "conditions": "smiling", "steps": "4", "step": "0.3", "lambda1": "0"},
    )
    from_json = post(
        client, json={"latent": w[0].tolist(), "primal": "young", "steps": 4, **GRAD, "direction": "decrease"}
    )
    run_worker(settings)

    body = job(client, from_file)
    assert body["status"] == "finished", body["error"]
    latents = np.load(io.BytesIO(artifact(client, body, "latents.npy")), allow_pickle=False)
    np.testing.assert_allclose(latents[0], w)  # frame 0 is the input, untruncated
    scores = primal_scores(client, body, "young")
    assert scores[-1] > scores[0]
    body = job(client, from_json)
    assert body["status"] == "finished", body["error"]
    latents = np.load(io.BytesIO(artifact(client, body, "latents.npy")), allow_pickle=False)
    assert latents.shape == (5, W_DIM)
    scores = primal_scores(client, body, "young")
    assert scores[-1] < scores[0]


def test_edit_again_from_a_finished_job(
    client: TestClient, settings: Settings, run_worker: RunWorker
) -> None:
    first = post(client, json={"seed": 9, "primal": "smiling", "steps": 2})
    assert client.post("/v1/edits", json={"source_job": first, "primal": "young"}).json()["code"] == (
        "source_job_not_finished"
    )
    run_worker(settings)
    again = post(client, json={"source_job": first, "primal": "young", "steps": 2})
    run_worker(settings)
    a, b = job(client, first), job(client, again)
    assert b["status"] == "finished", b["error"]
    first_frames = np.load(io.BytesIO(artifact(client, a, "latents.npy")), allow_pickle=False)
    again_frames = np.load(io.BytesIO(artifact(client, b, "latents.npy")), allow_pickle=False)
    np.testing.assert_array_equal(again_frames[0], first_frames[0])


def test_photo_edit_aligns_inverts_edits_and_pastes_back(
    client: TestClient, settings: Settings, run_worker: RunWorker, astronaut_png: bytes
) -> None:
    photo = post(
        client,
        files={"image": ("astronaut.png", astronaut_png, "image/png")},
        data={"primal": "smiling", "steps": "3", "step": "0.3", "lambda1": "0", "effort": "encoder"},
    )
    no_face = post(
        client,
        files={"image": ("noise.png", helpers.noise_png(96), "image/png")},
        data={"primal": "smiling", "steps": "3"},
    )
    after = post(client, json={"seed": 1, "primal": "smiling", "steps": 2})
    run_worker(settings)

    body = job(client, photo)
    assert body["status"] == "finished", body["error"]
    assert body["timings"]["cached"] is False and body["timings"]["align"] > 0
    assert body["result"]["inversion"]["faces_found"] == 1
    assert {"aligned.png", "inversion.png", "pasted.png"} <= set(body["artifacts"])
    pasted = Image.open(io.BytesIO(artifact(client, body, "pasted.png")))
    assert pasted.size == (512, 512)
    assert Image.open(io.BytesIO(artifact(client, body, "aligned.png"))).size == (16, 16)
    scores = primal_scores(client, body, "smiling")
    assert scores[-1] > scores[0]

    failed = job(client, no_face)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "no_face_found"
    assert job(client, after)["status"] == "finished"  # the worker kept serving

    # A second edit of the same photo skips alignment and inversion.
    again = post(client, json={"source_job": photo, "primal": "young", "steps": 2})
    run_worker(settings)
    body = job(client, again)
    assert body["status"] == "finished", body["error"]
    assert body["timings"]["cached"] is True and body["timings"]["invert"] == 0
    assert "pasted.png" in body["artifacts"]


def test_procedural_pack_goes_through_the_pipeline(
    settings: Settings, procedural_pack_path: Path, run_worker: RunWorker
) -> None:
    settings = settings.model_copy(update={"pack_path": procedural_pack_path})
    client = TestClient(create_app(settings))
    assert client.get("/v1/model").json()["generator_kind"] == "procedural"
    job_id = post(
        client, json={"seed": 2, "primal": "eyeglasses", "conditions": ["smiling"], "steps": 4, **GRAD}
    )
    run_worker(settings)
    body = job(client, job_id)
    assert body["status"] == "finished", body["error"]
    # Random classifiers on procedural faces are nearly flat: this checks the plumbing of the second
    # generator kind; the direction of the scores is checked on StyleGAN2 here and on the demo pack's
    # trained classifiers in tests/e2e (slow).
    latents = np.load(io.BytesIO(artifact(client, body, "latents.npy")), allow_pickle=False)
    assert latents.shape == (5, 6, 64) and not np.allclose(latents[-1], latents[0])
    assert len(primal_scores(client, body, "eyeglasses")) == 5


def test_cancel_queued_and_running_jobs(
    client: TestClient, settings: Settings, redis: Redis, run_worker: RunWorker
) -> None:
    queued = post(client, json={"seed": 1, "primal": "smiling", "steps": 2})
    response = client.delete(f"/v1/jobs/{queued}")
    assert response.status_code == 202 and response.json()["status"] == "canceled"
    assert job(client, queued)["status"] == "canceled"
    again = client.delete(f"/v1/jobs/{queued}")
    assert (again.status_code, again.json()["code"]) == (409, "job_not_cancelable")

    # A worker that took the job off the queue just before the cancel (the race of reading the status
    # first): the flag DELETE set with the cancel stops it at its first stage; it never finishes.
    raced = post(client, json={"seed": 1, "primal": "smiling", "steps": 2})
    raced_job = Job.fetch(raced, connection=redis, serializer=JSONSerializer)
    assert client.delete(f"/v1/jobs/{raced}").json()["status"] == "canceled"
    edit_queue(redis, settings).enqueue_job(raced_job)  # Back on the queue, as if dequeued in time.
    run_worker(settings)
    body = job(client, raced)
    assert body["status"] == "canceled" and body["error"]["code"] == "canceled"
    assert not body["artifacts"]

    # A running job sees the flag DELETE sets at its next step.
    running = post(client, json={"seed": 1, "primal": "smiling", "steps": 2})
    redis.set(CANCEL_KEY.format(running), b"1")
    run_worker(settings)
    body = job(client, running)
    assert body["status"] == "canceled" and body["error"]["code"] == "canceled"


def test_queue_full_is_429_with_retry_after(client: TestClient, settings: Settings, redis: Redis) -> None:
    # A queue holding exactly N jobs still accepts one; one holding more than N refuses.
    for _ in range(settings.max_queued_jobs + 1):
        post(client, json={"seed": 1, "primal": "smiling", "steps": 2})
    assert edit_queue(redis, settings).count == settings.max_queued_jobs + 1
    response = client.post("/v1/edits", json={"seed": 1, "primal": "smiling", "steps": 2})
    assert (response.status_code, response.json()["code"]) == (429, "queue_full")
    assert response.headers["retry-after"] == str(settings.retry_after_s)


def test_readyz_needs_a_worker_with_the_pack(
    client: TestClient, settings: Settings, redis: Redis, run_worker: RunWorker
) -> None:
    response = client.get("/readyz")
    assert (response.status_code, response.json()["code"]) == (503, "no_worker")
    # A registered worker that has its pack counts; it stops counting once it is gone.
    import hashlib

    from models.pack import load_pack
    from service.queue import edit_queue
    from service.store import open_store
    from worker.context import WorkerContext
    from worker.main import PackWorker

    pack_id = hashlib.sha256((settings.pack_path / "manifest.json").read_bytes()).hexdigest()
    context = WorkerContext(
        settings, load_pack(settings.pack_path, "cpu"), pack_id, open_store(settings.store_path)
    )
    worker = PackWorker([edit_queue(redis, settings)], context=context, connection=redis)
    worker.register_birth()
    try:
        body = client.get("/readyz").json()
        assert body["status"] == "ready" and body["workers"] == [worker.name]
    finally:
        worker.register_death()
    assert client.get("/readyz").status_code == 503

    # A worker holding another pack does not make the API ready.
    context.pack_id = "0" * 64
    other = PackWorker([edit_queue(redis, settings)], context=context, connection=redis)
    other.register_birth()
    try:
        response = client.get("/readyz")
        assert (response.status_code, response.json()["code"]) == (503, "worker_pack_mismatch")
    finally:
        other.register_death()


def test_no_redis_configured_is_503(settings: Settings) -> None:
    client = TestClient(create_app(settings.model_copy(update={"redis_url": None})))
    response = client.post("/v1/edits", json={"seed": 1, "primal": "smiling"})
    assert (response.status_code, response.json()["code"]) == (503, "redis_unconfigured")


@pytest.fixture(scope="session")
def astronaut_png() -> bytes:
    from skimage import data

    return helpers.png_bytes(data.astronaut())


def test_worker_keeps_serving_after_every_bad_input(
    client: TestClient, settings: Settings, redis: Redis, run_worker: RunWorker
) -> None:
    from tests.service.test_bad_inputs import CASES, send

    for case in CASES:
        assert send(client, case).status_code == case.status, case.name
    good = post(client, json={"seed": 5, "primal": "smiling", "steps": 2})
    run_worker(settings)
    assert job(client, good)["status"] == "finished"


@pytest.mark.parametrize(
    "enqueue",
    [
        pytest.param(
            lambda q, target: q.enqueue_call("os.makedirs", args=[str(target)]), id="other-function"
        ),
        pytest.param(
            lambda q, target: q.enqueue_call("worker.tasks.run_edit", args=[{}], kwargs={"exist_ok": True}),
            id="kwargs",
        ),
        pytest.param(
            lambda q, target: q.enqueue_call(
                "worker.tasks.run_edit", args=[{}], on_failure=Callback("os.makedirs")
            ),
            id="callback",
        ),
    ],
)
def test_worker_refuses_jobs_that_are_not_edits(
    client: TestClient,
    settings: Settings,
    redis: Redis,
    run_worker: RunWorker,
    tmp_path: Path,
    enqueue: Callable[[Queue, Path], Job],
) -> None:
    target = tmp_path / "pwned"
    refused = enqueue(edit_queue(redis, settings), target)
    good = post(client, json={"seed": 5, "primal": "smiling", "steps": 2})
    run_worker(settings)

    assert not target.exists()
    refused = Job.fetch(refused.id, connection=redis, serializer=JSONSerializer)
    assert refused.get_status() == JobStatus.FAILED
    assert refused.meta["error"]["code"] == "forbidden_job"
    assert job(client, good)["status"] == "finished"


def test_non_finite_result_values_read_as_null(client: TestClient, settings: Settings, redis: Redis) -> None:
    from rq.results import Result

    from service.schemas import finite_json

    assert finite_json({"a": [1.0, float("inf")], "b": (float("nan"),), "c": "x"}) == {
        "a": [1.0, None],
        "b": [None],
        "c": "x",
    }
    # A finished job whose stored result and meta hold Infinity and NaN (as `json.dumps` writes them).
    job_id = post(client, json={"seed": 5, "primal": "smiling", "steps": 2})
    stored = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    stored.meta["timings"] = {"edit": 0.5, "render": float("nan")}
    stored.save_meta()
    result = {"artifacts": [], "inversion": {"psnr": float("inf")}, "stopped_at": 2}
    Result.create(stored, Result.Type.SUCCESSFUL, ttl=60, return_value=result)
    stored.set_status(JobStatus.FINISHED)

    body = job(client, job_id)
    assert body["status"] == "finished"
    assert body["result"]["inversion"] == {"psnr": None} and body["timings"] == {"edit": 0.5}
