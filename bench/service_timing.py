"""Time edits through the whole service: POST -> finished, for a seed edit and for a photo.

Starts `ials serve` (embedded Redis, one worker, the API, an empty store) on a free port unless --url
names a running service, then, one job at a time:

- a seed edit (--steps steps, the pack's defaults otherwise), POST to `finished`, --repeat times;
- the astronaut photo (skimage.data.astronaut(), --effort), POST to `finished`, with the worker's
  stage timings (align, invert, edit, render);
- the same photo edited again from that job (`source_job`): alignment and inversion come from cache.

Usage: python bench/service_timing.py [--pack packs/demo] [--steps 20] [--repeat 3] [--effort balanced]
       [--threads 2] [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(
    *, pack: str | None, workers: int, threads: int | None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run `ials serve` on a free port until the block ends; yield its base URL once it is ready."""
    port = free_port()
    store = tempfile.mkdtemp(prefix="ials-bench-store-")  # empty: no inversion is cached yet
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", "IALS_STORE_PATH": store, **(env or {})}
    child_env.pop("IALS_REDIS_URL", None)
    if threads:
        child_env["IALS_TORCH_THREADS"] = str(threads)
    argv = [sys.executable, "-m", "cli", "serve", "--port", str(port), "--workers", str(workers)]
    argv += ["--log-level", "warning"] + (["--pack", pack] if pack else [])
    process = subprocess.Popen(argv, cwd=ROOT, env=child_env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        ready = "/readyz" if workers else "/healthz"
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ials serve exited with {process.returncode}")
            try:
                if httpx.get(url + ready, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("ials serve did not become ready")
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(store, ignore_errors=True)


def run_job(http: httpx.Client, **request: Any) -> tuple[float, dict[str, Any]]:
    """POST an edit and poll it every 20 ms; return (seconds from POST to finished, the job)."""
    start = time.perf_counter()
    response = http.post("/v1/edits", **request)
    response.raise_for_status()
    url = response.headers["location"]
    while True:
        body: dict[str, Any] = http.get(url).json()
        if body["status"] in ("finished", "failed", "canceled"):
            elapsed = time.perf_counter() - start
            if body["status"] != "finished":
                raise RuntimeError(f"job {body['id']} {body['status']}: {body.get('error')}")
            return elapsed, body
        time.sleep(0.02)


def astronaut_png() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


def measure(url: str, *, steps: int, repeat: int, effort: str, primal: str) -> None:
    http = httpx.Client(base_url=url, timeout=120)
    model = http.get("/v1/model").json()
    print(f"pack {model['name']} ({model['generator_kind']}, {model['img_resolution']} px), {steps} steps")
    # Warm-up: the first job of a worker pays one-off costs (allocator, first graph).
    run_job(http, json={"seed": 0, "primal": primal, "steps": 2})

    seconds = []
    for seed in range(1, repeat + 1):
        elapsed, body = run_job(http, json={"seed": seed, "primal": primal, "steps": steps})
        seconds.append(elapsed)
        print(f"  seed {seed}: POST -> finished {elapsed:.2f} s (worker: {body['timings']})")
    print(f"seed edit, {steps} steps: median {statistics.median(seconds):.2f} s over {repeat}")

    photo = astronaut_png()
    elapsed, body = run_job(
        http,
        files={"image": ("astronaut.png", photo, "image/png")},
        data={"primal": primal, "steps": str(steps), "effort": effort},
    )
    print(f"astronaut photo, effort {effort}, {steps} steps: POST -> finished {elapsed:.2f} s")
    print(f"  stages: {body['timings']}; inversion: {body['result']['inversion']}")
    elapsed, body = run_job(http, json={"source_job": body["id"], "primal": primal, "steps": steps})
    print(f"same photo again (source_job, cached inversion): {elapsed:.2f} s; stages: {body['timings']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running service (default: start `ials serve`)")
    parser.add_argument("--pack", help="pack of the started service (default: the configured one)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--effort", default="balanced")
    parser.add_argument("--primal", default="smiling")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the worker")
    args = parser.parse_args()
    if args.url:
        measure(args.url, steps=args.steps, repeat=args.repeat, effort=args.effort, primal=args.primal)
        return
    with serve(pack=args.pack, workers=1, threads=args.threads) as url:
        measure(url, steps=args.steps, repeat=args.repeat, effort=args.effort, primal=args.primal)


if __name__ == "__main__":
    main()
