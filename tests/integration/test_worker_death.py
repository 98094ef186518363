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
from service.queue import WORKER_PACK_KEY, edit_queue
from tests.integration.conftest import RunWorker
from worker.main import make_worker


def work(settings: Settings) -> None:
    """A worker process's life: its own Redis connection, the pack loaded, jobs until killed."""
    make_worker(settings, Redis.from_url(str(settings.redis_url))).work(logging_level="WARNING")


def lease_of(redis: Redis, registry: StartedJobRegistry, job_id: str) -> float:
    """When the running job's lease in the started registry runs out (a Unix time)."""
    scores = [score for member, score in redis.zrange(registry.key, 0, -1, withscores=True)
              if member.decode().split(":")[0] == job_id]  # fmt: skip
    assert len(scores) == 1, scores
    return float(scores[0])


def test_job_of_a_killed_worker_is_retried(
    client: TestClient, settings: Settings, redis: Redis, run_worker: RunWorker
) -> None:
    settings = settings.model_copy(update={"worker_heartbeat_s": 1})
    response = client.post("/v1/edits", json={"seed": 2, "primal": "smiling", "steps": 50})
    job_id = response.json()["id"]
    queue = edit_queue(redis, settings)
    registry = StartedJobRegistry(queue=queue)
    # A worker process of its own (forked: torch is already imported here), killed mid-job.
    worker = multiprocessing.get_context("fork").Process(target=work, args=(settings,), daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{job_id}").json()["status"] != "started":
            assert time.monotonic() < deadline and worker.is_alive()
            time.sleep(0.01)
        # The lease is one heartbeat plus a minute, not the job timeout (900 s) plus a minute, and the
        # worker renews it while the job runs.
        first = lease_of(redis, registry, job_id)
        assert first <= time.time() + 1 + 60 + 1
        deadline = time.monotonic() + 30
        while lease_of(redis, registry, job_id) <= first:
            assert time.monotonic() < deadline and worker.is_alive(), "no heartbeat while the job runs"
            time.sleep(0.05)
        os.kill(worker.pid or 0, signal.SIGKILL)
    finally:
        worker.join(10)
        if worker.is_alive():
            worker.kill()
            worker.join()
    killed_at = time.time()
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "started"

    # What a live worker's maintenance does once the dead one's lease has run out: a minute and a
    # heartbeat after its last beat (the lease is not out before it).
    registry.cleanup(timestamp=killed_at + 60 - 2)
    assert Job.fetch(job_id, connection=redis, serializer=JSONSerializer).get_status().value == "started"
    registry.cleanup(timestamp=killed_at + 1 + 60 + 1)
    job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    assert job.get_status().value == "queued" and job.retries_left == 0
    run_worker(settings)
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["status"] == "finished", body["error"]
    assert "frames/frame_0050.png" in body["artifacts"]


def test_a_dead_worker_leaves_readyz_within_a_heartbeat_and_75_s(
    client: TestClient, settings: Settings, redis: Redis
) -> None:
    """The worker's record and its pack key expire together, a heartbeat and 75 s after its last beat,
    and an idle worker waits on the queue for a heartbeat at most (so it beats, and its maintenance
    runs, that often)."""
    settings = settings.model_copy(update={"worker_heartbeat_s": 3})
    worker = make_worker(settings, redis)
    worker.register_birth()
    try:
        worker.heartbeat()
        assert client.get("/readyz").json()["workers"] == [worker.name]
        pack_key = WORKER_PACK_KEY.format(worker.name)
        for key in (worker.key, pack_key):
            assert 3 + 75 - 2 <= redis.ttl(key) <= 3 + 75
        assert worker.dequeue_timeout == 3
    finally:
        worker.register_death()
    assert client.get("/readyz").status_code == 503
