"""Latency of POST /v1/edits with N requests in flight (p50, p99), measured from the client.

Starts `ials serve --workers 0` (embedded Redis, the API, no worker, a queue limit above the number
of requests) unless --url names a running service, then keeps --concurrency requests in flight until
--requests have been answered. What is timed is the API's own work: parse, validate against the pack,
store the upload, enqueue on Redis, answer 202. Bodies: a seed edit as JSON, and a `[num_ws, w_dim]`
latent uploaded as `.npy` (multipart).

Usage: python bench/api_latency.py [--concurrency 20] [--requests 1000] [--pack PACK] [--url URL]
"""

from __future__ import annotations

import argparse
import io
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
from service_timing import serve  # type: ignore[import-not-found]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def hammer(url: str, body: Callable[[int], dict[str, Any]], *, concurrency: int, requests: int) -> None:
    local = threading.local()
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    def one(i: int) -> None:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=url, timeout=60)
        start = time.perf_counter()
        response = local.http.post("/v1/edits", **body(i))
        latencies.append(time.perf_counter() - start)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    for i in range(concurrency):  # warm-up: connections, first requests
        one(-1 - i)
    latencies.clear()
    statuses.clear()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    ms = [x * 1000 for x in latencies]
    print(
        f"  {requests} requests, {concurrency} in flight: p50 {percentile(ms, 50):.1f} ms, "
        f"p99 {percentile(ms, 99):.1f} ms, max {max(ms):.1f} ms, mean {statistics.mean(ms):.1f} ms, "
        f"{requests / wall:.0f} req/s; statuses {statuses}"
    )


def measure(url: str, *, concurrency: int, requests: int) -> None:
    model = httpx.get(url + "/v1/model").json()
    primal = model["attributes"][0]["name"]
    print(f"pack {model['name']}: POST /v1/edits")
    print("seed edit (JSON):")
    hammer(url, lambda i: {"json": {"seed": i % 1000, "primal": primal, "steps": 20}},
           concurrency=concurrency, requests=requests)  # fmt: skip
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((model["num_ws"], model["w_dim"]), np.float32))
    latent = buffer.getvalue()
    print(f"latent upload ([{model['num_ws']}, {model['w_dim']}] .npy, multipart, {len(latent)} bytes):")
    hammer(
        url,
        lambda i: {"files": {"latent": ("w.npy", latent, "application/octet-stream")},
                   "data": {"primal": primal, "steps": "20"}},
        concurrency=concurrency,
        requests=requests,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running service (default: start `ials serve --workers 0`)")
    parser.add_argument("--pack", help="pack of the started service (default: the configured one)")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    if args.url:
        measure(args.url, concurrency=args.concurrency, requests=args.requests)
        return
    env = {"IALS_MAX_QUEUED_JOBS": str(10 * args.requests + 100)}
    with serve(pack=args.pack, workers=0, threads=None, env=env) as url:
        measure(url, concurrency=args.concurrency, requests=args.requests)


if __name__ == "__main__":
    main()
