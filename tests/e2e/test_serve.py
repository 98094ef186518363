"""`ials serve` as the README runs it: real processes (redis-server, a worker, uvicorn), driven over HTTP."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service import helpers

# The README's command, `.venv/bin/ials`: the console script next to this interpreter.
_SCRIPT = Path(sys.executable).parent / "ials"
IALS = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Served:
    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.http = httpx.Client(base_url=url, timeout=30)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stdout.read() if self.process.stdout else ""
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("ials serve did not become ready")

    def finish(self, job_url: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body: dict[str, Any] = self.http.get(job_url).json()
            if body["status"] in ("finished", "failed", "canceled"):
                return body
            time.sleep(0.1)
        raise AssertionError(f"{job_url} did not finish")


@pytest.fixture
def served(tiny_pack_path: Path, tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    env = {
        **os.environ,
        "IALS_STORE_PATH": str(tmp_path / "store"),
        "IALS_TORCH_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("IALS_REDIS_URL", None)  # the embedded default
    process = subprocess.Popen(
        [*IALS, "serve", "--port", str(port), "--workers", "1",
         "--pack", str(tiny_pack_path), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    served = Served(process, f"http://127.0.0.1:{port}")
    try:
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_runs_edits_and_stops_everything_on_sigterm(served: Served) -> None:
    served.wait_ready(timeout_s=60)
    children = children_of(served.process.pid)
    assert len(children) == 3  # redis-server, one worker, uvicorn

    # A seed edit: POST, poll, fetch the GIF.
    response = served.http.post("/v1/edits", json={"seed": 7, "primal": "smiling", "steps": 3})
    assert response.status_code == 202
    body = served.finish(response.headers["location"])
    assert body["status"] == "finished", body
    gif = served.http.get(body["artifacts"]["edit.gif"])
    assert gif.status_code == 200 and gif.content[:6] == b"GIF89a"

    # The photo path over real processes runs on the demo pack below (slow); tests/integration runs
    # it on the tiny pack.
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=30) == 0
    assert not [pid for pid in children if alive(pid)]


# The default pack of `ials serve`; IALS_TEST_DEMO_PACK points this test at another build of it.
DEMO_PACK = Path(
    os.environ.get("IALS_TEST_DEMO_PACK") or Path(__file__).resolve().parents[2] / "packs" / "demo"
)


@pytest.mark.slow
@pytest.mark.skipif(not (DEMO_PACK / "manifest.json").is_file(), reason="the demo pack is not built")
def test_demo_pack_seed_and_photo_edits_move_the_scores(tmp_path: Path) -> None:
    """The README's walk-through on the demo pack: a seed edit and the astronaut photo, with the pack's
    trained classifiers; the steering and the independent evaluator scores move the requested way."""
    port = free_port()
    env = {**os.environ, "IALS_STORE_PATH": str(tmp_path / "store"), "PYTHONUNBUFFERED": "1"}
    env.pop("IALS_REDIS_URL", None)
    process = subprocess.Popen(
        [*IALS, "serve", "--port", str(port), "--log-level", "warning",
         "--pack", str(DEMO_PACK)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    served = Served(process, f"http://127.0.0.1:{port}")
    try:
        served.wait_ready(timeout_s=120)
        # Younger from an old face, then older again from the last frame (as a latent).
        start: dict[str, Any] = {"seed": 11}
        for direction, sign in (("increase", 1), ("decrease", -1)):
            request = {**start, "primal": "young", "conditions": ["eyeglasses"], "direction": direction}
            response = served.http.post("/v1/edits", json=request)
            body = served.finish(response.headers["location"], timeout_s=300)
            assert body["status"] == "finished", body
            scores = body["result"]["scores"]["young"]
            assert sign * (scores["last"] - scores["first"]) > 0.2, scores
            if "young" in body["result"]["evaluator"]:
                judged = body["result"]["evaluator"]["young"]
                assert sign * (judged["last"] - judged["first"]) > 0, judged
            latents = np.load(io.BytesIO(served.http.get(body["artifacts"]["latents.npy"]).content))
            start = {"latent": latents[-1].tolist()}

        from skimage import data

        response = served.http.post(
            "/v1/edits",
            files={"image": ("astronaut.png", helpers.png_bytes(data.astronaut()), "image/png")},
            data={"primal": "smiling", "steps": "20", "effort": "fast"},
        )
        body = served.finish(response.headers["location"], timeout_s=300)
        assert body["status"] == "finished", body
        assert body["result"]["scores"]["smiling"]["last"] > body["result"]["scores"]["smiling"]["first"]
        assert served.http.get(body["artifacts"]["pasted.png"]).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
