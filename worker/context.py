"""What a worker process holds for all its jobs: settings, the loaded pack, the store, dlib's models."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch

from models.pack import ModelPack, load_pack
from service.config import Settings, get_settings
from service.store import LocalStore, open_store


@dataclasses.dataclass
class WorkerContext:
    """Loaded once per worker process (rq's "Performance Notes": load the model, then start the loop)."""

    settings: Settings
    pack: ModelPack
    pack_id: str  # sha256 of the pack's manifest.json, which lists every file's sha256.
    store: LocalStore
    _dlib: tuple[Any, Any] | None = None

    def dlib_models(self) -> tuple[Any, Any]:
        """dlib's face detector and 68-point predictor, loaded on first use."""
        if self._dlib is None:
            from models.align import face_recognition_models_predictor_path, load_dlib_models

            self._dlib = load_dlib_models(face_recognition_models_predictor_path())
        return self._dlib


def build_context(settings: Settings) -> WorkerContext:
    """Load the configured pack on the configured device (hashes checked) and open the store."""
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    pack = load_pack(settings.pack_path, settings.device)
    pack_id = hashlib.sha256((settings.pack_path / "manifest.json").read_bytes()).hexdigest()
    return WorkerContext(settings=settings, pack=pack, pack_id=pack_id, store=open_store(settings.store_path))


_current: WorkerContext | None = None


def set_context(context: WorkerContext | None) -> None:
    """Make `context` the one the job functions use in this process."""
    global _current
    _current = context


def get_context() -> WorkerContext:
    """The process's context; built from the environment on first use if no worker set one."""
    global _current
    if _current is None:
        _current = build_context(get_settings())
    return _current
