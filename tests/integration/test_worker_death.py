"""A job whose worker process dies is retried (rq.Retry) by rq's abandoned-job cleanup, and finishes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

from fastapi.testclient import TestClient
from redis import Redis
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from service.config import Settings
from service.queue import edit_queue
from tests.integration.conftest import RunWorker
from worker.main import make_worker


def work(settings: Settings) -> None:
    """A worker process's life: its own Redis connection, the pack loaded, jobs until killed."""
    make_worker(settings, Redis.from_url(str(settings.redis_url))).work(logging_level="WARNING")


def test_job_of_a_killed_worker_is_retried(
    client: TestClient, settings: Settings, redis: Redis, run_worker: RunWorker
) -> None:
    response = client.post("/v1/edits", json={"seed": 2, "primal": "smiling", "steps": 40})
    job_id = response.json()["id"]
    # A worker process of its own (forked: torch is already imported here), killed mid-job.
    worker = multiprocessing.get_context("fork").Process(target=work, args=(settings,), daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{job_id}").json()["status"] != "started":
            assert time.monotonic() < deadline and worker.is_alive()
            time.sleep(0.01)
        os.kill(worker.pid or 0, signal.SIGKILL)
    finally:
        worker.join(10)
        if worker.is_alive():
            worker.kill()
            worker.join()
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "started"

    # What a live worker's maintenance does once the dead one's lease has run out.
    queue = edit_queue(redis, settings)
    StartedJobRegistry(queue=queue).cleanup(timestamp=time.time() + settings.job_timeout_s + 3600)
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    assert job.get_status().value == "queued" and job.retries_left == 0
    run_worker(settings)
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["status"] == "finished", body["error"]
    assert "frames/frame_0040.png" in body["artifacts"]
