"""`ials worker`: load the model pack once, then run edit jobs from Redis (an rq SimpleWorker)."""

from __future__ import annotations

import argparse
import os

from cli.common import CliError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pack", help="model pack folder (default: IALS_PACK_PATH, else packs/demo)")
    parser.add_argument("--device", help="torch device: cpu, cuda, cuda:1, ... (default: IALS_DEVICE or cpu)")
    parser.add_argument("--redis-url", help="Redis URL (default: IALS_REDIS_URL)")
    parser.add_argument("--name", help="worker name (default: random)")
    parser.add_argument("--burst", action="store_true", help="quit once the queue is empty")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )


def run(args: argparse.Namespace) -> int:
    import logging

    from pydantic import ValidationError

    from models.pack import PackError
    from service.config import Settings
    from worker.main import run_worker

    overrides = {
        "IALS_PACK_PATH": os.path.abspath(args.pack) if args.pack else None,
        "IALS_DEVICE": args.device,
        "IALS_REDIS_URL": args.redis_url,
    }
    for key, value in overrides.items():
        if value is not None:
            os.environ[key] = value
    try:
        settings = Settings()
    except ValidationError as exc:
        raise CliError(f"bad configuration: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from exc
    if settings.redis_url is None:
        raise CliError("no Redis configured: set IALS_REDIS_URL or --redis-url (`ials serve` starts one)")
    if not (settings.pack_path / "manifest.json").is_file():
        raise CliError(f"no model pack at {settings.pack_path} (IALS_PACK_PATH or --pack)")
    level = args.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run_worker(settings, burst=args.burst, name=args.name, logging_level=level)
    except PackError as exc:
        raise CliError(f"cannot load pack {settings.pack_path}: {exc}") from exc
    return 0
