"""The worker process: load the model pack once, then run jobs in-process on an `rq.SimpleWorker`.

A CUDA context does not survive a fork, so jobs are not run in forked work horses; each job still has
its `job_timeout` (rq's death penalty, a SIGALRM in this process). Worker, queue and job settings live
here together: JSON serialization everywhere, never pickle.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus

from service.config import Settings
from service.queue import EDIT_TASK, WORKER_PACK_KEY, edit_queue
from worker.context import WorkerContext, build_context, set_context

log = logging.getLogger(__name__)


def job_refusal(job: Job) -> str | None:
    """Why the worker must not run `job`, or None for a well-formed edit job.

    rq imports whatever dotted path a job names (`job.func`) and its callbacks, and anyone who can
    write to Redis can enqueue such a job. Only the raw, JSON-decoded fields are read here, so nothing
    is imported: a job must be `EDIT_TASK(request: dict)` with no instance, kwargs, callbacks,
    dependencies or webhooks.
    """
    try:
        func_name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except Exception as exc:  # DeserializationError, or data that is not a 4-tuple.
        return f"undecodable job data ({type(exc).__name__})"
    if func_name != EDIT_TASK:
        return f"job function {str(func_name)[:200]!r} is not {EDIT_TASK}"
    if instance is not None or kwargs or not isinstance(args, list | tuple) or len(args) != 1:
        return f"{EDIT_TASK} takes exactly one positional argument and nothing else"
    if not isinstance(args[0], dict):
        return f"the argument of {EDIT_TASK} must be a JSON object"
    callbacks = (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name)
    if any(name is not None for name in callbacks):
        return "jobs with callbacks are not run"
    if job._dependency_ids:
        return "jobs with dependencies are not run"
    if getattr(job, "webhooks", None):
        return "jobs with webhooks are not run"
    return None


class PackWorker(SimpleWorker):
    """A `SimpleWorker` that holds a loaded model pack, says so in Redis (`/readyz` reads it), and
    expires old artifacts during its maintenance.

    It heartbeats every `worker_heartbeat_s` (h), idle or busy, where rq's `SimpleWorker` would not
    while it runs a job: idle, it waits on the queue at most h seconds at a time (`worker_ttl` = h + 15);
    busy, a thread renews the worker's and the job's leases every h seconds for h + 60 seconds. So a
    worker that dies (killed, out of memory) drops out of `/readyz` within h + 75 s, and its job's lease
    runs out h + 60 s after its last beat, for the next maintenance of any worker to retry it, instead
    of the job timeout plus a minute.
    """

    def __init__(self, queues: list[Queue], *, context: WorkerContext, **kwargs: Any) -> None:
        beat = context.settings.worker_heartbeat_s
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs.setdefault("maintenance_interval", context.settings.maintenance_interval_s)
        kwargs.setdefault("worker_ttl", beat + 15)  # rq blocks on the queue for worker_ttl - 15 s.
        kwargs.setdefault("job_monitoring_interval", beat)
        super().__init__(queues, **kwargs)
        self.context = context

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # A lease of one heartbeat plus a minute (rq's rule for workers that beat while a job runs);
        # SimpleWorker's is the job's whole timeout plus a minute.
        ttl: int = BaseWorker.get_heartbeat_ttl(self, job, working_time)
        return max(ttl, 1)  # rq's rule reaches -1 (no expiry) once the job is past its timeout.

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
        self._announce(timeout or self.worker_ttl + 60)  # Expires with the worker's own record.

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        started = time.perf_counter()
        removed = self.context.store.expire(self.context.settings.result_ttl_s)
        if removed:
            log.info("expired %d stored artifacts in %.2f s", removed, time.perf_counter() - started)

    def execute_job(self, job: Job, queue: Queue) -> None:
        refusal = job_refusal(job)
        if refusal is not None:
            self._refuse_job(job, queue, refusal)
            return
        set_context(self.context)
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beats = threading.Thread(
            target=self._beat, args=(job, execution, stop), name=f"heartbeat-{job.id}", daemon=True
        )
        beats.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beats.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job: Job, execution: Execution, stop: threading.Event) -> None:
        """Renew the worker's and the running job's leases every `job_monitoring_interval` seconds.

        It stops beating once the job has run past its timeout by a minute: rq's death penalty (a
        SIGALRM) cannot interrupt a main thread stuck outside Python, and such a worker must drop out
        of `/readyz` and lose its job's lease as a silent one would. A beat just after the job's end
        renews no registry entry (rq renews those only while they exist) and leaves at most an
        execution record that expires with its lease.
        """
        started = time.monotonic()
        while not stop.wait(self.job_monitoring_interval):
            if job.timeout is not None and job.timeout > 0 and time.monotonic() - started > job.timeout + 60:
                log.error("job %s is more than a minute past its timeout; no more heartbeats", job.id)
                return
            try:
                self.maintain_heartbeats(job, execution)
            except Exception as exc:  # Redis away for a moment, say: the next beat tries again (a dead
                # thread would let the lease run out under a running job).
                log.warning("heartbeat of job %s failed: %s: %s", job.id, type(exc).__name__, exc)

    def _refuse_job(self, job: Job, queue: Queue, reason: str) -> None:
        """Mark `job` failed with code `forbidden_job`, without running or importing anything it names."""
        log.warning("refused job %s: %s", job.id, reason)
        job.webhooks = []  # Sent on failure otherwise.
        job.retries_left = 0
        job.meta["error"] = {"code": "forbidden_job", "message": reason}
        job.save_meta()  # type: ignore[no-untyped-call]
        execution = self.prepare_execution(job)
        self.prepare_job_execution(job, remove_from_intermediate_queue=len(self.queues) == 1)
        job.started_at = job.ended_at = now()
        job._status = JobStatus.FAILED
        self.handle_job_failure(
            job,
            queue,
            started_job_registry=queue.started_job_registry,
            exc_string=f"forbidden_job: {reason}",
            execution=execution,
        )
        self.set_state(WorkerStatus.IDLE)


def make_worker(
    settings: Settings, connection: Redis, *, context: WorkerContext | None = None, name: str | None = None
) -> PackWorker:
    """A worker on the edit queue; loads the pack unless a `context` is given."""
    importlib.import_module(EDIT_TASK.rpartition(".")[0])  # A broken task module fails here, not per job.
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
