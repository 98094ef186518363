"""GET and DELETE /v1/jobs/{id}, and the job's artifacts."""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from rq.job import Job

from service.deps import SettingsDep
from service.errors import ApiError
from service.queue import cancel_job, fetch_job, job_status, redis_client
from service.schemas import ErrorPublic, JobError, JobProgress, JobPublic, finite_json
from service.store import open_store

router = APIRouter(tags=["jobs"])

ARTIFACT_NAME = re.compile(r"^(frames/frame_\d{4,5}\.png|[a-z][a-z0-9_]*\.(png|gif|webp|npy|json|zip))$")
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorPublic, "description": "No such job."}}
_MEDIA_TYPES = {".npy": "application/octet-stream", ".webp": "image/webp"}


def job_public(job: Job) -> JobPublic:
    """The public view of an RQ job."""
    meta = finite_json(job.meta)  # Responses are strict JSON: no NaN or Infinity, whoever wrote them.
    status = job_status(job)
    progress = meta.get("progress")
    error = meta.get("error")
    if status == "failed" and not isinstance(error, dict):
        error = {"code": "job_failed", "message": "the job failed without a recorded error"}
    artifacts = result = None
    if status == "finished":
        value = finite_json(job.return_value() or {})
        names = value.get("artifacts", [])
        artifacts = {name: f"/v1/jobs/{job.id}/artifacts/{name}" for name in names}
        result = {k: v for k, v in value.items() if k not in ("artifacts", "timings")}
    args = job.args
    timings = meta.get("timings") or {}
    if isinstance(timings, dict):
        timings = {name: seconds for name, seconds in timings.items() if seconds is not None}
    try:
        return JobPublic(
            id=job.id,
            status=status,  # type: ignore[arg-type]
            stage=meta.get("stage"),
            progress=JobProgress.model_validate(progress) if isinstance(progress, dict) else None,
            timings=timings,
            request=finite_json(args[0]) if args and isinstance(args[0], dict) else None,
            created_at=_iso(job.created_at),
            started_at=_iso(job.started_at),
            ended_at=_iso(job.ended_at),
            artifacts=artifacts,
            result=result,
            error=JobError.model_validate(error) if isinstance(error, dict) else None,
        )
    except ValidationError:  # meta not written by our workers
        raise ApiError(502, "job_unreadable", f"job {job.id} holds data this API cannot read") from None


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


@router.get("/jobs/{job_id}", response_model=JobPublic, responses=_NOT_FOUND, summary="A job's state")
def get_job(job_id: str, settings: SettingsDep) -> JobPublic:
    return job_public(fetch_job(redis_client(settings), job_id))


@router.delete(
    "/jobs/{job_id}",
    status_code=202,
    responses={**_NOT_FOUND, 409: {"model": ErrorPublic, "description": "Already over."}},
    summary="Cancel a queued or running job",
)
def delete_job(job_id: str, settings: SettingsDep) -> dict[str, str]:
    connection = redis_client(settings)
    status = cancel_job(connection, fetch_job(connection, job_id))
    return {"id": job_id, "status": status}


@router.get(
    "/jobs/{job_id}/artifacts/{name:path}",
    responses={200: {"content": {"image/png": {}, "image/gif": {}, "application/zip": {}}}, **_NOT_FOUND},
    response_class=Response,
    summary="One artifact of a finished job",
)
def get_artifact(job_id: str, name: str, settings: SettingsDep) -> StreamingResponse:
    fetch_job(redis_client(settings), job_id)  # 404 for unknown or expired jobs
    store = open_store(settings.store_path)
    key = f"jobs/{job_id}/{name}"
    if not ARTIFACT_NAME.fullmatch(name) or not store.exists(key):
        raise ApiError(404, "artifact_not_found", f"job {job_id} has no artifact {name[:128]!r}")
    suffix = "." + name.rsplit(".", 1)[-1]
    media_type = _MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    f = store.open(key)

    def chunks() -> Iterator[bytes]:
        with f:
            while chunk := f.read(1 << 16):
                yield chunk

    headers = {"Content-Length": str(store.size(key)), "Cache-Control": "private, max-age=3600"}
    return StreamingResponse(chunks(), media_type=media_type, headers=headers)
