"""The one configuration object of the service, read from the environment (prefix `IALS_`)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACK_PATH = PROJECT_ROOT / "packs" / "demo"


def default_store_path() -> Path:
    """`$XDG_CACHE_HOME/ials-service/store`, else `~/.cache/ials-service/store`."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ials-service" / "store"


class Settings(BaseSettings):
    """Typed settings with CPU-safe defaults; every field can be set as `IALS_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="IALS_", env_file=".env", extra="ignore")

    # Model.
    pack_path: Path = DEFAULT_PACK_PATH  # Model pack the workers load (see models/pack.py).
    device: str = "cpu"  # Torch device of the workers: cpu, cuda, cuda:1, ...
    torch_threads: int | None = Field(default=None, ge=1, le=256)  # Intra-op threads of a worker.

    # Queue and store.
    redis_url: str | None = None  # redis://host:6379/0 or unix:///path/redis.sock; None: embedded.
    queue_name: str = Field(default="ials", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    store_path: Path = Field(default_factory=default_store_path)  # Artifacts, uploads, caches.

    # Limits.
    max_upload_bytes: int = Field(default=16 * 2**20, ge=1024)  # Bodies above are refused (413).
    max_image_pixels: int = Field(default=40_000_000, ge=64 * 64)  # Decoded photo size limit.
    max_steps: int = Field(default=200, ge=1, le=10_000)  # Most edit steps per job.
    max_queued_jobs: int = Field(default=50, ge=1)  # POST answers 429 above this queue length.
    retry_after_s: int = Field(default=10, ge=1)  # Retry-After of a 429.

    # Jobs.
    job_timeout_s: int = Field(default=900, ge=10)  # A job running longer is failed (`timeout`).
    job_retries: int = Field(default=2, ge=0, le=10)  # Retries of a job whose worker died.
    result_ttl_s: int = Field(default=24 * 3600, ge=60)  # Jobs, results and artifacts expire after.
    inversion_effort: Literal["encoder", "fast", "balanced", "best"] = "balanced"  # Photos by default.
    maintenance_interval_s: int = Field(default=60, ge=1)  # Worker: registries and store expiry.
    # Worker liveness: a worker heartbeats at least this often, idle or running a job. One that stops
    # (killed, say) leaves /readyz within heartbeat + 75 s, and its job is retried by the next
    # maintenance after heartbeat + 60 s.
    worker_heartbeat_s: int = Field(default=10, ge=1, le=300)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        kind, _, index = value.partition(":")
        if kind not in {"cpu", "cuda", "mps"} or (index and not index.isdigit()):
            raise ValueError(f"device must be cpu, cuda, cuda:N or mps, got {value!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must start with redis://, rediss:// or unix://, got {value!r}")
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, built once from the environment."""
    return Settings()
