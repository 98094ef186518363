"""Redis and the RQ queue as the API sees them: enqueue by dotted path, read jobs back, cancel.

Jobs are serialized with RQ's `JSONSerializer` (never pickle), so whoever can write to Redis cannot
make a worker run code: a job names `worker.tasks.run_edit` and carries one plain JSON object.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import Worker

from service.config import Settings
from service.errors import ApiError

EDIT_TASK = "worker.tasks.run_edit"
JOB_ID = re.compile(r"[0-9a-f]{32}")  # Used with fullmatch: `$` would also match before a final newline.
CANCEL_KEY = "ials:cancel:{0}"  # Set by DELETE; the worker checks it at every stage and step.
WORKER_PACK_KEY = "ials:worker-pack:{0}"  # Worker name -> pack it loaded (expires with the worker).

# RQ status -> ours.
STATUSES = {
    "queued": "queued",
    "deferred": "queued",
    "scheduled": "queued",
    "started": "started",
    "finished": "finished",
    "failed": "failed",
    "stopped": "canceled",
    "canceled": "canceled",
}


@lru_cache(maxsize=8)
def _client(url: str) -> Redis:
    return Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)


def redis_client(settings: Settings) -> Redis:
    """The Redis connection of `settings.redis_url` (one pool per URL and process).

    Raises:
        ApiError: 503 `redis_unconfigured` when no URL is set.
    """
    if settings.redis_url is None:
        raise ApiError(
            503, "redis_unconfigured", "no Redis is configured (IALS_REDIS_URL); `ials serve` starts one"
        )
    return _client(settings.redis_url)


def edit_queue(connection: Redis, settings: Settings) -> Queue:
    """The queue of edit jobs, with the JSON serializer."""
    return Queue(settings.queue_name, connection=connection, serializer=JSONSerializer)


def enqueue_edit(queue: Queue, job_id: str, payload: dict[str, Any], settings: Settings) -> Job:
    """Enqueue one edit job by dotted path with its timeout, retries and expiry."""
    return queue.enqueue_call(
        EDIT_TASK,
        args=(payload,),
        job_id=job_id,
        timeout=settings.job_timeout_s,
        result_ttl=settings.result_ttl_s,
        failure_ttl=settings.result_ttl_s,
        ttl=settings.result_ttl_s,
        retry=Retry(max=settings.job_retries) if settings.job_retries else None,
        meta={"stage": "queued"},
        description=f"edit {payload['primal']} ({payload['source']['kind']})",
    )


def fetch_job(connection: Redis, job_id: str) -> Job:
    """The job `job_id`.

    Raises:
        ApiError: 404 `job_not_found` for a malformed, unknown or expired id.
    """
    if not JOB_ID.fullmatch(job_id):
        raise ApiError(404, "job_not_found", f"no job {job_id[:64]!r}: job ids are 32 hex digits")
    try:
        return Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        raise ApiError(404, "job_not_found", f"no job {job_id} (unknown, or expired)") from None


def job_status(job: Job) -> str:
    """Our status of an RQ job; a job failed because it was canceled reads `canceled`."""
    raw = job.get_status(refresh=False)
    status = STATUSES.get(str(raw.value if raw is not None else "queued"), "queued")
    error = job.meta.get("error")
    if status == "failed" and isinstance(error, dict) and error.get("code") == "canceled":
        return "canceled"
    return status


def cancel_job(connection: Redis, job: Job) -> str:
    """Cancel a queued job now, or ask the worker running it to stop at its next step.

    Returns:
        The status after the request: `canceled`, or `started` while the worker winds down.

    Raises:
        ApiError: 409 `job_not_cancelable` for a job already finished, failed or canceled.
    """
    status = job_status(job)
    if status == "queued":
        # A worker may take the job off the queue between the status read and the cancel; the flag,
        # set first, stops it at its first stage check, so the job never runs to its end.
        connection.set(CANCEL_KEY.format(job.id), b"1", ex=24 * 3600)
        try:
            job.cancel()
        except InvalidJobOperation as exc:
            raise ApiError(409, "job_not_cancelable", str(exc)) from None
        return "canceled"
    if status == "started":
        connection.set(CANCEL_KEY.format(job.id), b"1", ex=24 * 3600)
        return "started"
    raise ApiError(409, "job_not_cancelable", f"job {job.id} is already {status}")


def worker_packs(connection: Redis, queue: Queue) -> dict[str, str]:
    """Live workers on `queue` that have loaded a pack -> the sha256 of that pack's manifest."""
    names = [worker.name for worker in Worker.all(queue=queue)]
    if not names:
        return {}
    packs = connection.mget([WORKER_PACK_KEY.format(name) for name in names])
    return {name: pack.decode() for name, pack in zip(names, packs, strict=True) if isinstance(pack, bytes)}
