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


def redis_servers_of(pid: int) -> list[int]:
    """The children of `pid` that run `redis-server` (its command line is rewritten, its name is not)."""
    found = []
    for child in children_of(pid):
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == "redis-server" and alive(child):
                found.append(child)
        except OSError:
            continue
    return found


def embedded_redis_folder(process: subprocess.Popen[str]) -> Path:
    """The folder of the embedded Redis, from the first line `ials serve` prints."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("redis: embedded redis-server on unix://"), line
    return Path(line.split("unix://", 1)[1].strip()).parent


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


def test_serve_restarts_its_killed_redis_and_removes_its_folder(served: Served) -> None:
    """A killed embedded redis-server is reaped and restarted on the same socket, the worker with it:
    `/readyz` comes back and edits run again (the new Redis is empty). Stopping removes its folder."""
    folder = embedded_redis_folder(served.process)
    assert (folder / "redis.sock").exists()
    served.wait_ready(timeout_s=60)
    [old] = redis_servers_of(served.process.pid)
    os.kill(old, signal.SIGKILL)

    deadline = time.monotonic() + 30
    while not (new := [pid for pid in redis_servers_of(served.process.pid) if pid != old]):
        assert time.monotonic() < deadline, "the embedded redis-server was not restarted"
        assert served.process.poll() is None
        time.sleep(0.1)
    assert not Path(f"/proc/{old}").exists()  # Reaped, not a zombie.
    assert os.readlink(f"/proc/{new[0]}/cwd") == str(folder)  # Its `--dir`: the same folder and socket.
    served.wait_ready(timeout_s=60)
    response = served.http.post("/v1/edits", json={"seed": 3, "primal": "smiling", "steps": 2})
    assert response.status_code == 202
    body = served.finish(response.headers["location"])
    assert body["status"] == "finished", body

    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=30) == 0
    assert not folder.exists()
    log = served.process.stdout.read() if served.process.stdout else ""
    assert f"error: the embedded redis-server (pid {old}) exited with -9; restarting it" in log, log
    assert "the queued and running jobs are lost" in log, log


def test_serve_stops_when_its_redis_keeps_dying(tmp_path: Path) -> None:
    """An embedded Redis killed as soon as it is back, five times in a row, stops `ials serve` with
    status 1 and says why; its folder is removed. The restart delay is cut to 0.1 s, no worker runs."""
    env = {**os.environ, "IALS_STORE_PATH": str(tmp_path / "store"), "PYTHONUNBUFFERED": "1"}
    env.pop("IALS_REDIS_URL", None)
    patched = "import sys, cli.main, cli.serve; cli.serve.RESTART_DELAY_S = 0.1; sys.exit(cli.main.main())"
    process = subprocess.Popen(
        [sys.executable, "-c", patched, "serve", "--port", str(free_port()),
         "--pack", str(tmp_path / "no-pack"), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        folder = embedded_redis_folder(process)
        killed: set[int] = set()
        deadline = time.monotonic() + 60
        while process.poll() is None:
            assert time.monotonic() < deadline, f"still running after killing {len(killed)} redis-servers"
            for pid in set(redis_servers_of(process.pid)) - killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.05)
        log = process.stdout.read() if process.stdout else ""
        assert process.returncode == 1, log
        assert len(killed) == 5, log
        assert "5 times in a row within 30 s of its start; stopping" in log, log
        assert not folder.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


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
