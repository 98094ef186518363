"""Liveness and readiness."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter
from redis.exceptions import RedisError

from service.deps import SettingsDep
from service.errors import ApiError
from service.queue import edit_queue, redis_client, worker_packs
from service.schemas import ErrorPublic

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The API process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Redis is reachable and a worker with the API's model pack loaded is alive",
    responses={503: {"model": ErrorPublic, "description": "Not ready: no pack, no Redis or no worker."}},
)
def readyz(settings: SettingsDep) -> dict[str, Any]:
    try:
        manifest = (settings.pack_path / "manifest.json").read_bytes()
    except OSError:
        raise ApiError(503, "pack_unavailable", f"no model pack at {settings.pack_path}") from None
    pack_id = hashlib.sha256(manifest).hexdigest()
    connection = redis_client(settings)
    try:
        connection.ping()
        workers = worker_packs(connection, edit_queue(connection, settings))
    except RedisError as exc:
        raise ApiError(503, "redis_unavailable", f"Redis is not reachable: {exc}") from None
    ready = sorted(name for name, pack in workers.items() if pack == pack_id)
    if not ready:
        if workers:
            raise ApiError(
                503,
                "worker_pack_mismatch",
                "the live workers hold another model pack than the API's",
                detail={"workers": sorted(workers)},
            )
        raise ApiError(503, "no_worker", "no worker with the model pack loaded is alive")
    return {"status": "ready", "workers": ready}
