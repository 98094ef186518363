"""GET /healthz, /v1/model and /v1/attributes on a real pack's manifest."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.config import Settings
from service.main import create_app


def client_for(pack_path: Path) -> TestClient:
    return TestClient(create_app(Settings(pack_path=pack_path)))


def test_healthz(tmp_path: Path) -> None:
    response = client_for(tmp_path).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_model_describes_the_pack(tiny_pack_path: Path) -> None:
    body = client_for(tiny_pack_path).get("/v1/model").json()
    assert body["name"] == "tiny"
    assert body["generator_kind"] == "stylegan2"
    assert (body["img_resolution"], body["w_dim"], body["num_ws"]) == (16, 32, 6)
    assert body["defaults"]["lambda1"] == 0.75 and body["defaults"]["lambda2"] == 0.0
    by_name = {a["name"]: a for a in body["attributes"]}
    assert by_name["smiling"]["directions"] == ["averaged", "interfacegan"]
    assert by_name["smiling"]["has_evaluator"] is True
    assert by_name["young"]["has_evaluator"] is False


def test_attributes_lists_the_pack_attributes(tiny_pack_path: Path) -> None:
    body = client_for(tiny_pack_path).get("/v1/attributes").json()
    assert [a["name"] for a in body] == ["smiling", "young"]


def test_missing_pack_is_503_with_a_code(tmp_path: Path) -> None:
    response = client_for(tmp_path / "nowhere").get("/v1/model")
    assert response.status_code == 503
    assert response.json()["code"] == "pack_unavailable"


def test_unreadable_manifest_is_503_with_a_code(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    response = client_for(tmp_path).get("/v1/attributes")
    assert response.status_code == 503
    assert response.json()["code"] == "pack_unavailable"
