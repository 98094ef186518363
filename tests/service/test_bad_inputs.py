"""Bad input, table-driven: every case is a 4xx with its machine-readable code, never a 500, nothing is
enqueued, and the worker serves a good job afterwards."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from redis import Redis

from service.config import Settings
from service.queue import edit_queue
from tests.service import helpers

W_DIM, NUM_WS = 32, 6  # the tiny pack's
OK = {"primal": "smiling", "steps": 2}


@dataclass
class Case:
    name: str
    status: int
    code: str
    json: Any = None
    raw: bytes | None = None
    content_type: str | None = None
    data: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    method: str = "POST"
    url: str = "/v1/edits"
    extra: dict[str, Any] = field(default_factory=dict)


def seed(**fields: Any) -> dict[str, Any]:
    return {"seed": 1, **OK, **fields}


def image(data: bytes, name: str = "photo.png", **fields: Any) -> dict[str, Any]:
    return {"files": {"image": (name, data, "application/octet-stream")}, "data": {**OK, **fields}}


def latent_file(data: bytes) -> dict[str, Any]:
    return {"files": {"latent": ("w.npy", data, "application/octet-stream")}, "data": dict(OK)}


TRUNCATED_PNG = helpers.noise_png(64)[:300]
MISSING = "0" * 32

CASES = [
    # Attributes and the edit.
    Case("unknown primal", 422, "unknown_attribute", json=seed(primal="bald")),
    Case("unknown condition", 422, "unknown_attribute", json=seed(conditions=["bald"])),
    Case("primal among conditions", 422, "primal_in_conditions", json=seed(conditions=["smiling"])),
    Case(
        "duplicate conditions",
        422,
        "duplicate_condition",
        json=seed(primal="smiling", conditions=["young", "young"]),
    ),
    Case("direction kind missing", 422, "direction_unavailable", json=seed(directions="ganspace")),
    Case("malformed attribute name", 422, "invalid_attribute", json=seed(primal="Smiling!")),
    Case("primal missing", 422, "missing_field", json={"seed": 1}),
    Case("steps = 0", 422, "invalid_steps", json=seed(steps=0)),
    Case("steps negative", 422, "invalid_steps", json=seed(steps=-3)),
    Case("steps not a number", 422, "invalid_steps", json=seed(steps="many")),
    Case("too many steps", 422, "too_many_steps", json=seed(steps=51)),
    Case("far too many steps", 422, "too_many_steps", json=seed(steps=10**12)),
    Case("step = 0", 422, "invalid_step", json=seed(step=0)),
    Case("step NaN", 422, "invalid_step", raw=b'{"seed": 1, "primal": "smiling", "step": NaN}'),
    Case("step infinite", 422, "invalid_step", raw=b'{"seed": 1, "primal": "smiling", "step": Infinity}'),
    Case("lambda1 above 1", 422, "invalid_lambda", json=seed(lambda1=1.5)),
    Case("lambda2 negative", 422, "invalid_lambda", json=seed(lambda2=-0.1)),
    Case("direction unknown", 422, "invalid_direction", json=seed(direction="sideways")),
    Case("directions unknown", 422, "invalid_direction_kind", json=seed(directions="pca")),
    Case("target score above 1", 422, "invalid_target_score", json=seed(target_score=2)),
    Case("psi out of range", 422, "invalid_truncation_psi", json=seed(truncation_psi=5)),
    Case("effort unknown", 422, "invalid_effort", json=seed(effort="extreme")),
    Case("unknown field", 422, "invalid_request", json=seed(primall="smiling")),
    # Sources.
    Case("no source", 422, "missing_source", json=dict(OK)),
    Case("seed and latent", 422, "ambiguous_source", json=seed(latent=[0.0] * W_DIM)),
    Case("seed negative", 422, "invalid_seed", json=seed(seed=-1)),
    Case("seed too large", 422, "invalid_seed", json=seed(seed=2**32)),
    Case("seed a boolean", 422, "invalid_seed", json=seed(seed=True)),
    Case("steps a boolean", 422, "invalid_steps", json=seed(steps=True)),
    Case("latent wrong shape", 422, "invalid_latent_shape", json={**OK, "latent": [0.0] * (W_DIM + 1)}),
    Case("latent wrong rows", 422, "invalid_latent_shape", json={**OK, "latent": [[0.0] * W_DIM] * 5}),
    Case("latent ragged", 422, "invalid_latent_shape", json={**OK, "latent": [[0.0] * W_DIM, [0.0]]}),
    Case(
        "latent NaN",
        422,
        "invalid_latent_values",
        raw=json.dumps({**OK, "latent": [float("nan")] * W_DIM}).encode(),
    ),
    Case("latent huge values", 422, "invalid_latent_values", json={**OK, "latent": [3e38] * W_DIM}),
    Case(
        "latent deeply nested",
        400,
        "invalid_json",
        raw=b'{"latent": ' + b"[" * 200000 + b"]" * 200000 + b"}",
    ),
    Case("latent not numbers", 422, "invalid_latent", json={**OK, "latent": "zeros"}),
    Case("latent of strings", 422, "invalid_latent", json={**OK, "latent": ["a"] * W_DIM}),
    Case("latent of booleans", 422, "invalid_latent", json={**OK, "latent": [True] * W_DIM}),
    Case("latent of objects", 422, "invalid_latent", json={**OK, "latent": [[{"x": 1}] * W_DIM]}),
    Case("latent nested 4 deep", 422, "invalid_latent", json={**OK, "latent": [[[[0.0] * W_DIM]]]}),
    Case("latent huge integer", 422, "invalid_latent", json={**OK, "latent": [10**400] + [0] * (W_DIM - 1)}),
    Case("latent of integers, wrong shape", 422, "invalid_latent_shape", json={**OK, "latent": [0] * 3}),
    Case("latent too many numbers", 422, "invalid_latent", json={**OK, "latent": [[0] * 1024] * 1025}),
    Case("source job unknown", 404, "source_job_not_found", json={**OK, "source_job": MISSING}),
    Case("source job malformed", 422, "invalid_source_job", json={**OK, "source_job": "../../etc"}),
    # Bodies and content types.
    Case("invalid JSON", 400, "invalid_json", raw=b'{"seed": 1,'),
    Case("JSON array", 422, "invalid_request", raw=b"[1, 2]"),
    Case("JSON nested too deeply", 400, "invalid_json", raw=b"[" * 100000),
    Case("text/plain body", 415, "unsupported_media_type", raw=b"seed=1", content_type="text/plain"),
    Case("no content type", 415, "unsupported_media_type", raw=b"{}", content_type=""),
    Case(
        "form-urlencoded",
        415,
        "unsupported_media_type",
        raw=b"seed=1",
        content_type="application/x-www-form-urlencoded",
    ),
    Case(
        "malformed multipart",
        400,
        "invalid_multipart",
        raw=b"--x\r\nbroken",
        content_type="multipart/form-data",
    ),
    Case("body too large", 413, "payload_too_large", raw=b"{" + b" " * (5 * 2**20) + b"}"),
    Case(
        "duplicate form field",
        422,
        "duplicate_field",
        files={"image": ("a.png", helpers.noise_png(), "image/png")},
        data={"primal": ["smiling", "young"]},
    ),
    # Photos.
    Case("truncated PNG", 422, "image_undecodable", **image(TRUNCATED_PNG)),
    Case("zero-byte image", 422, "empty_file", **image(b"")),
    Case("20000x20000 PNG bomb", 422, "image_too_large", **image(helpers.png_bomb())),
    Case("not an image", 422, "image_undecodable", **image(b"hello, world" * 10)),
    Case(
        "GIF image",
        415,
        "unsupported_image_format",
        **image(helpers.encode(np.zeros((32, 32, 3), np.uint8), "GIF"), "a.gif"),
    ),
    Case(
        "image too small", 422, "image_too_small", **image(helpers.png_bytes(np.zeros((4, 4, 3), np.uint8)))
    ),
    Case(
        "image as a plain field",
        422,
        "invalid_image_file",
        content_type="multipart/form-data; boundary=b",
        raw=b'--b\r\nContent-Disposition: form-data; name="primal"\r\n\r\nsmiling\r\n'
        b'--b\r\nContent-Disposition: form-data; name="image"\r\n\r\nphoto.png\r\n--b--\r\n',
    ),
    Case("image and seed", 422, "ambiguous_source", **image(helpers.noise_png(), seed="3")),
    # Latent files.
    Case(".npy holding a pickle", 422, "invalid_latent_file", **latent_file(helpers.pickled_npy())),
    Case("raw pickle as .npy", 422, "invalid_latent_file", **latent_file(helpers.raw_pickle())),
    Case(
        ".npy wrong shape",
        422,
        "invalid_latent_shape",
        **latent_file(helpers.npy(np.zeros((3, 7), np.float32))),
    ),
    Case(
        ".npy NaN",
        422,
        "invalid_latent_values",
        **latent_file(helpers.npy(np.full((NUM_WS, W_DIM), np.nan, np.float32))),
    ),
    Case(".npy zero bytes", 422, "empty_file", **latent_file(b"")),
    Case(
        ".npy truncated",
        422,
        "invalid_latent_file",
        **latent_file(helpers.npy(np.zeros((NUM_WS, W_DIM), np.float32))[:-40]),
    ),
    Case(".npy of strings", 422, "invalid_latent_file", **latent_file(helpers.npy(np.array(["a", "b"])))),
    Case(
        ".npy huge header",
        422,
        "invalid_latent_file",
        **latent_file(helpers.npy(np.zeros((2,), np.float32)).replace(b"(2,)", b"(99999999,)")),
    ),
    # Jobs and routes.
    Case("job id unknown", 404, "job_not_found", method="GET", url=f"/v1/jobs/{MISSING}"),
    Case("job id malformed", 404, "job_not_found", method="GET", url="/v1/jobs/not-a-job"),
    Case("cancel unknown job", 404, "job_not_found", method="DELETE", url=f"/v1/jobs/{MISSING}"),
    # A regex `$` matches before a final newline: the id must be 32 hex digits and nothing else.
    Case("job id with a newline", 404, "job_not_found", method="GET", url=f"/v1/jobs/{MISSING}%0A"),
    Case("cancel job id with a newline", 404, "job_not_found", method="DELETE", url=f"/v1/jobs/{MISSING}%0A"),
    Case(
        "artifact of a job id with a newline",
        404,
        "job_not_found",
        method="GET",
        url=f"/v1/jobs/{MISSING}%0A/artifacts/edit.gif",
    ),
    Case(
        "artifact of unknown job",
        404,
        "job_not_found",
        method="GET",
        url=f"/v1/jobs/{MISSING}/artifacts/edit.gif",
    ),
    Case("unknown route", 404, "not_found", method="GET", url="/v1/nowhere"),
    Case("wrong method", 405, "method_not_allowed", method="PUT", url="/v1/edits"),
]


def test_a_large_bad_latent_is_one_short_error(client: TestClient) -> None:
    """A body of a million bad entries gives one error, not one (or three) per entry."""
    body = b'{"primal": "smiling", "latent": [' + b",".join([b'"a"'] * 1_000_000) + b"]}"
    response = client.post("/v1/edits", content=body, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()["code"]) == (422, "invalid_latent")
    assert len(response.content) < 2000 and len(response.json()["detail"]) == 1


def test_the_422_detail_is_capped(client: TestClient) -> None:
    body = {"primal": "#", "conditions": ["#"] * 4, "steps": "x", "step": "x", "lambda1": "x", "lambda2": "x",
            "seed": "x", "direction": "x", "directions": "x", "effort": "x", "target_score": "x",
            "truncation_psi": "x", "source_job": 1, "latent": "x", "foo": 1, "bar": 2, "baz": 3, "qux": 4,
            "quux": 5, "corge": 6, "grault": 7}  # fmt: skip
    response = client.post("/v1/edits", json=body)
    payload = response.json()
    assert response.status_code == 422 and len(payload["detail"]) == 20
    assert "errors; detail lists the first 20" in payload["message"]


def send(client: TestClient, case: Case) -> Any:
    if case.method != "POST":
        return client.request(case.method, case.url)
    if case.files is not None or case.data is not None:
        return client.post(case.url, files=case.files, data=case.data)
    headers = {}
    body = case.raw if case.raw is not None else json.dumps(case.json).encode()
    headers["content-type"] = "application/json" if case.content_type is None else case.content_type
    return client.post(case.url, content=body, headers=headers)


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_a_4xx_with_its_code(
    client: TestClient, redis: Redis, settings: Settings, case: Case
) -> None:
    response = send(client, case)
    body = response.json()
    assert (response.status_code, body.get("code")) == (case.status, case.code), body
    assert isinstance(body["message"], str) and body["message"]
    assert " at 0x" not in json.dumps(body)  # No Python object reprs (memory addresses) for clients.
    assert edit_queue(redis, settings).count == 0  # nothing half-accepted was enqueued
