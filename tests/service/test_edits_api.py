"""POST /v1/edits and the job routes at the HTTP level (real Redis, no worker)."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from service import schemas
from service.config import Settings
from service.queue import EDIT_TASK
from service.store import LocalStore, StoreKeyError
from tests.service import helpers


def test_accepted_edit_is_enqueued_by_dotted_path_as_json(client: TestClient, redis: Redis) -> None:
    response = client.post("/v1/edits", json={"seed": 7, "primal": "smiling", "direction": "decrease"})
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == body["url"] == f"/v1/jobs/{body['id']}"
    job = Job.fetch(body["id"], connection=redis, serializer=JSONSerializer)
    assert job.func_name == EDIT_TASK and job.retries_left == 1
    raw = redis.hget(f"rq:job:{body['id']}", "data")
    assert raw is not None
    func_name, _, args, _ = json.loads(zlib.decompress(raw))  # rq compresses; the payload is plain JSON
    assert func_name == EDIT_TASK and args == [job.args[0]]
    accepted = job.args[0]
    assert accepted["step"] == -0.1 and accepted["steps"] == 20  # the pack's defaults, signed
    assert accepted["lambda1"] == 0.75 and accepted["lambda2"] == 0.0 and accepted["truncation_psi"] == 0.5
    public = client.get(body["url"]).json()
    assert public["status"] == "queued" and public["request"] == accepted


def test_photo_and_latent_uploads_are_stored_by_content(client: TestClient, settings: Settings) -> None:
    photo = helpers.noise_png(32)
    for _ in range(2):
        response = client.post(
            "/v1/edits", files={"image": ("p.png", photo, "image/png")}, data={"primal": "smiling"}
        )
        assert response.status_code == 202
    store = LocalStore(settings.store_path)
    assert len(store.list("uploads")) == 1
    source = client.get(response.json()["url"]).json()["request"]["source"]
    assert source["kind"] == "image" and store.exists(source["key"])
    assert client.get(response.json()["url"]).json()["request"]["effort"] == settings.inversion_effort


def test_multi_picture_jpeg_is_a_jpeg(client: TestClient, settings: Settings) -> None:
    """Cameras and phones write JPEGs with a multi-picture segment, which PIL names MPO: accepted and
    stored as a JPEG, and the worker reads its first picture."""
    import io

    from PIL import Image

    from models.align import load_image

    rng = np.random.default_rng(0)
    first = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    first.save(buffer, format="MPO", save_all=True, append_images=[first.rotate(90)], quality=95)
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "MPO" and getattr(im, "n_frames", 1) == 2
    response = client.post(
        "/v1/edits", files={"image": ("p.jpg", data, "image/jpeg")}, data={"primal": "smiling"}
    )
    assert response.status_code == 202, response.json()
    source = client.get(response.json()["url"]).json()["request"]["source"]
    assert source["kind"] == "image" and source["key"].endswith(".jpg")
    with LocalStore(settings.store_path).open(source["key"]) as f:
        picture = load_image(f.read(), max_pixels=10**6)
    assert picture.shape == (48, 40, 3)
    plain = io.BytesIO()
    first.save(plain, format="JPEG", quality=95)
    assert np.abs(picture.astype(int) - load_image(plain.getvalue(), max_pixels=10**6).astype(int)).max() <= 2


def test_conditions_as_repeated_or_comma_separated_form_fields(client: TestClient) -> None:
    for conditions in (["young"], ["young,"]):
        response = client.post(
            "/v1/edits",
            data={"seed": "3", "primal": "smiling", "conditions": conditions},
            files={"latent": ("w.npy", helpers.npy(np.zeros(32)), "application/octet-stream")},
        )
        assert response.json()["code"] == "ambiguous_source"
    response = client.post(
        "/v1/edits",
        files={"latent": ("w.npy", helpers.npy(np.zeros(32)), "application/octet-stream")},
        data={"primal": "smiling", "conditions": ["young"]},
    )
    assert response.status_code == 202
    assert client.get(response.json()["url"]).json()["request"]["conditions"] == ["young"]


def test_streamed_body_over_the_limit_is_413(client: TestClient, settings: Settings) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(settings.max_upload_bytes // 2**16 + 2):
            yield b" " * 2**16

    response = client.post("/v1/edits", content=chunks(), headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")


def test_openapi_documents_both_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/edits"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert spec["components"]["schemas"]["EditCreate"]["examples"]
    assert "/v1/jobs/{job_id}/artifacts/{name}" in spec["paths"] and "/readyz" in spec["paths"]


def test_names_agree_with_the_models() -> None:
    from models.inversion import EFFORTS
    from models.pack import DIRECTION_KINDS

    assert set(schemas.EFFORTS) == set(EFFORTS)
    assert set(schemas.DIRECTION_KINDS) == set(DIRECTION_KINDS)


def test_store_keys_and_expiry(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for bad in ("../etc/passwd", "/abs", "jobs/../x", "Upper", "a//b", ""):
        with pytest.raises(StoreKeyError):
            store.put(bad, b"x")
    store.put("jobs/abc/frames/frame_0000.png", b"png")
    store.put("uploads/x.npy", b"npy")
    assert store.list("jobs/abc") == ["jobs/abc/frames/frame_0000.png"]
    assert store.expire(3600) == 0
    assert store.expire(3600, now=time.time() + 7200) == 2
    assert not store.exists("uploads/x.npy") and store.list("jobs") == []


def test_unreachable_redis_is_503(settings: Settings, tmp_path: Path) -> None:
    from service.main import create_app

    gone = settings.model_copy(update={"redis_url": f"unix://{tmp_path}/no.sock"})
    client = TestClient(create_app(gone))
    response = client.post("/v1/edits", json={"seed": 1, "primal": "smiling"})
    assert (response.status_code, response.json()["code"]) == (503, "redis_unavailable")
    assert client.get(f"/v1/jobs/{'0' * 32}").json()["code"] == "redis_unavailable"
    assert client.get("/readyz").json()["code"] == "redis_unavailable"
