"""The one configuration object of the service, read from the environment (prefix `IALS_`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACK_PATH = PROJECT_ROOT / "packs" / "demo"


class Settings(BaseSettings):
    """Typed settings with CPU-safe defaults; every field can be set as `IALS_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="IALS_", env_file=".env", extra="ignore")

    pack_path: Path = DEFAULT_PACK_PATH  # Model pack the workers load (see models/pack.py).
    device: str = "cpu"  # Torch device of the workers: cpu, cuda, cuda:1, ...

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        kind, _, index = value.partition(":")
        if kind not in {"cpu", "cuda", "mps"} or (index and not index.isdigit()):
            raise ValueError(f"device must be cpu, cuda, cuda:N or mps, got {value!r}")
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, built once from the environment."""
    return Settings()
