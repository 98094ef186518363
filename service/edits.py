"""Accepting an edit: check it against the pack, store its upload, resolve defaults, enqueue it.

Everything here is blocking (Redis, the store, decoding a photo); the route runs it in a thread.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

from pydantic import ValidationError
from redis import Redis

from service.config import Settings
from service.errors import ApiError
from service.pack_info import read_model_info
from service.queue import edit_queue, enqueue_edit, fetch_job, job_status, redis_client
from service.schemas import EditCreate, EditJob, JobCreated, ModelPublic, SourceSpec
from service.store import ArtifactStore, open_store
from service.uploads import check_latent, check_photo, npy_bytes, read_npy


@dataclass
class Uploads:
    """The files of a multipart request."""

    image: bytes | None = None
    latent: bytes | None = None


def check_attributes(model: ModelPublic, primal: str, conditions: list[str], kind: str) -> None:
    """Raise a 422 `ApiError` unless the primal and conditions are distinct attributes with `kind`."""
    attributes = {a.name: a for a in model.attributes}
    for name in [primal, *conditions]:
        if name not in attributes:
            raise ApiError(
                422,
                "unknown_attribute",
                f"unknown attribute {name!r}; this pack has: {', '.join(sorted(attributes))}",
                detail={"attribute": name, "available": sorted(attributes)},
            )
    if primal in conditions:
        raise ApiError(
            422, "primal_in_conditions", f"the primal attribute {primal!r} cannot also be a condition"
        )
    if len(set(conditions)) != len(conditions):
        raise ApiError(422, "duplicate_condition", f"a condition is named twice: {conditions}")
    for name in [primal, *conditions]:
        if kind not in attributes[name].directions:
            raise ApiError(
                422,
                "direction_unavailable",
                f"attribute {name!r} has no {kind!r} direction in this pack "
                f"(it has: {', '.join(attributes[name].directions)})",
            )


def accept_edit(settings: Settings, request: EditCreate, uploads: Uploads) -> JobCreated:
    """Validate an edit request completely, then enqueue it.

    Raises:
        ApiError: 4xx with a code for every bad input; 429 `queue_full`; 503 without pack or Redis.
    """
    model = read_model_info(settings.pack_path)
    defaults = model.defaults
    kind = request.directions or defaults.direction_kind
    check_attributes(model, request.primal, request.conditions, kind)
    steps = defaults.steps if request.steps is None else request.steps
    if steps > settings.max_steps:
        raise ApiError(
            422,
            "too_many_steps",
            f"steps must be at most {settings.max_steps}, got {steps}",
            detail={"max_steps": settings.max_steps},
        )
    given = [
        name
        for name, present in (
            ("seed", request.seed is not None),
            ("latent", request.latent is not None or uploads.latent is not None),
            ("image", uploads.image is not None),
            ("source_job", request.source_job is not None),
        )
        if present
    ]
    if not given:
        raise ApiError(422, "missing_source", "give one of seed, latent, image or source_job")
    if len(given) > 1:
        raise ApiError(422, "ambiguous_source", f"give only one of seed, latent, image, source_job: {given}")

    # Uploads are checked completely before anything is stored or enqueued.
    upload: tuple[str, bytes] | None = None  # (store key, bytes)
    if uploads.image is not None:
        ext = check_photo(uploads.image, max_pixels=settings.max_image_pixels)
        upload = (f"uploads/{hashlib.sha256(uploads.image).hexdigest()}.{ext}", uploads.image)
    elif uploads.latent is not None or request.latent is not None:
        values = read_npy(uploads.latent) if uploads.latent is not None else request.latent
        array = check_latent(values, w_dim=_size(model.w_dim, "w_dim"), num_ws=_size(model.num_ws, "num_ws"))
        data = npy_bytes(array)
        upload = (f"uploads/{hashlib.sha256(data).hexdigest()}.npy", data)

    connection = redis_client(settings)
    queue = edit_queue(connection, settings)
    if queue.count > settings.max_queued_jobs:  # Refused only once the queue holds more than N.
        raise ApiError(
            429,
            "queue_full",
            f"{queue.count} jobs are waiting; try again later",
            headers={"Retry-After": str(settings.retry_after_s)},
        )

    store = open_store(settings.store_path)
    effort: str | None = None
    psi = request.truncation_psi
    if request.seed is not None:
        source = SourceSpec(kind="seed", seed=request.seed)
        if psi is None:
            psi = defaults.truncation_psi
    elif request.source_job is not None:
        source, effort, psi = _source_of_job(connection, store, request, settings)
    else:
        assert upload is not None
        key, data = upload
        store.put(key, data)
        digest = key.split("/")[1].split(".")[0]
        if uploads.image is not None:
            source = SourceSpec(kind="image", key=key, sha256=digest)
            effort, psi = request.effort or settings.inversion_effort, None
        else:
            source = SourceSpec(kind="latent", key=key, sha256=digest)

    magnitude = abs(defaults.step if request.step is None else request.step)
    job = EditJob(
        source=source,
        primal=request.primal,
        conditions=list(request.conditions),
        steps=steps,
        step=magnitude if request.direction == "increase" else -magnitude,
        lambda1=defaults.lambda1 if request.lambda1 is None else request.lambda1,
        lambda2=defaults.lambda2 if request.lambda2 is None else request.lambda2,
        directions=kind,
        target_score=request.target_score,
        truncation_psi=psi,
        effort=effort,
        source_job=request.source_job,
    )
    job_id = uuid.uuid4().hex
    enqueue_edit(queue, job_id, job.model_dump(), settings)
    return JobCreated(id=job_id, url=f"/v1/jobs/{job_id}", status="queued")


def _size(value: int | None, name: str) -> int:
    if value is None:
        raise ApiError(503, "pack_unavailable", f"the pack's manifest does not record {name}")
    return value


def _source_of_job(
    connection: Redis, store: ArtifactStore, request: EditCreate, settings: Settings
) -> tuple[SourceSpec, str | None, float | None]:
    """The start of an edit that names `source_job`: that job's photo (its inversion is cached) or its
    input latent."""
    assert request.source_job is not None
    try:
        previous = fetch_job(connection, request.source_job)
    except ApiError:
        raise ApiError(
            404, "source_job_not_found", f"no job {request.source_job} (unknown, or expired)"
        ) from None
    status = job_status(previous)
    if status != "finished":
        raise ApiError(409, "source_job_not_finished", f"job {request.source_job} is {status}, not finished")
    try:
        accepted = EditJob.model_validate(previous.args[0])
        result = previous.return_value() or {}
    except (ValidationError, IndexError, TypeError):
        raise ApiError(
            409, "source_job_unusable", f"job {request.source_job} is not an edit this API can reuse"
        ) from None
    photo = accepted.source.key if accepted.source.kind == "image" else None
    if photo is not None and store.exists(photo):
        store.touch(photo)
        return accepted.source, request.effort or accepted.effort, None
    key = result.get("input_latent")
    if not isinstance(key, str) or not store.exists(key):
        raise ApiError(410, "source_expired", f"the input of job {request.source_job} has expired")
    store.touch(key)
    return SourceSpec(kind="latent", key=key), None, request.truncation_psi
