"""The worker process: load the model pack once, then run jobs in-process on an `rq.SimpleWorker`.

A CUDA context does not survive a fork, so jobs are not run in forked work horses; each job still has
its `job_timeout` (rq's death penalty, a SIGALRM in this process). Worker, queue and job settings live
here together: JSON serialization everywhere, never pickle.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from service.config import Settings
from service.queue import WORKER_PACK_KEY, edit_queue
from worker.context import WorkerContext, build_context, set_context

log = logging.getLogger(__name__)


class PackWorker(SimpleWorker):
    """A `SimpleWorker` that holds a loaded model pack, says so in Redis (`/readyz` reads it), and
    expires old artifacts during its maintenance."""

    def __init__(self, queues: list[Queue], *, context: WorkerContext, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs.setdefault("maintenance_interval", context.settings.maintenance_interval_s)
        super().__init__(queues, **kwargs)
        self.context = context

    def _announce(self, ttl: int) -> None:
        self.connection.set(WORKER_PACK_KEY.format(self.name), self.context.pack_id, ex=max(ttl, 1))

    def register_birth(self) -> None:
        super().register_birth()  # type: ignore[no-untyped-call]
        self._announce(self.worker_ttl + 60)

    def register_death(self) -> None:
        self.connection.delete(WORKER_PACK_KEY.format(self.name))
        super().register_death()  # type: ignore[no-untyped-call]

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        super().heartbeat(timeout, pipeline)
        self._announce((timeout or self.worker_ttl) + 60)

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        started = time.perf_counter()
        removed = self.context.store.expire(self.context.settings.result_ttl_s)
        if removed:
            log.info("expired %d stored artifacts in %.2f s", removed, time.perf_counter() - started)

    def execute_job(self, job: Any, queue: Queue) -> None:
        set_context(self.context)
        super().execute_job(job, queue)


def make_worker(
    settings: Settings, connection: Redis, *, context: WorkerContext | None = None, name: str | None = None
) -> PackWorker:
    """A worker on the edit queue; loads the pack unless a `context` is given."""
    context = context or build_context(settings)
    set_context(context)
    queue = edit_queue(connection, settings)
    return PackWorker([queue], context=context, connection=connection, name=name)


def run_worker(
    settings: Settings, *, burst: bool = False, name: str | None = None, logging_level: str = "INFO"
) -> bool:
    """Load the pack, then process jobs until stopped (or, with `burst`, until the queue is empty)."""
    if settings.redis_url is None:
        raise ValueError("no Redis configured: set IALS_REDIS_URL (or use `ials serve`)")
    connection = Redis.from_url(settings.redis_url)
    worker = make_worker(settings, connection, name=name)
    log.info("worker %s: pack %s on %s", worker.name, settings.pack_path, settings.device)
    return bool(worker.work(burst=burst, logging_level=logging_level))
