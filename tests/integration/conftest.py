"""Real redis-server, real rq workers (`SimpleWorker(...).work(burst=True)`), real packs: no fakes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from redis import Redis
from torch import nn

from models.networks.classifier import AttributeClassifier
from models.networks.procedural import ProceduralGenerator
from models.pack import ModelPack, PackAttribute, load_pack, save_pack
from service.config import Settings
from service.main import create_app
from service.store import open_store
from tests.service.conftest import redis, redis_url, settings  # noqa: F401  (shared fixtures)
from worker.context import WorkerContext
from worker.main import make_worker

RunWorker = Callable[..., bool]


def build_tiny_procedural_pack(path: Path) -> Path:
    """A 16 px procedural-generator pack with random classifiers and directions (the demo pack's kind)."""
    torch.manual_seed(0)
    generator = ProceduralGenerator(z_dim=64, w_dim=64, img_resolution=16).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(5)

    def classifier(seed: int) -> AttributeClassifier:
        torch.manual_seed(seed)
        return AttributeClassifier(arch="resnet18", width=8, input_resolution=16).eval().requires_grad_(False)

    attributes = {
        name: PackAttribute(
            name=name,
            description=name.title(),
            steering=classifier(10 + i),
            evaluator=None,
            directions={"interfacegan": nn.functional.normalize(torch.randn(64, generator=gen), dim=0)},
        )
        for i, name in enumerate(("smiling", "eyeglasses"))
    }
    return save_pack(
        path,
        name="tiny-procedural",
        description="A 16 px procedural test pack",
        generator=generator,
        generator_kind="procedural",
        attributes=attributes,
    )


@pytest.fixture(scope="session")
def procedural_pack_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_procedural_pack(tmp_path_factory.mktemp("packs") / "procedural")


@pytest.fixture(scope="session")
def loaded_packs() -> dict[Path, ModelPack]:
    return {}


@pytest.fixture
def run_worker(redis: Redis, loaded_packs: dict[Path, ModelPack]) -> RunWorker:  # noqa: F811
    """Run a burst `PackWorker` (an rq SimpleWorker) on `settings` until the queue is empty."""

    def run(settings: Settings) -> bool:  # noqa: F811
        pack = loaded_packs.get(settings.pack_path)
        if pack is None:
            pack = loaded_packs[settings.pack_path] = load_pack(settings.pack_path, "cpu")
        pack_id = hashlib.sha256((settings.pack_path / "manifest.json").read_bytes()).hexdigest()
        context = WorkerContext(
            settings=settings, pack=pack, pack_id=pack_id, store=open_store(settings.store_path)
        )
        worker = make_worker(settings, redis, context=context)
        return bool(worker.work(burst=True, logging_level="WARNING"))

    return run


@pytest.fixture
def client(settings: Settings) -> TestClient:  # noqa: F811
    return TestClient(create_app(settings))
