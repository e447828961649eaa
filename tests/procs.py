"""Real processes for integration tests: the API under uvicorn and a Celery worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

# The tests' own Redis database (test_e2e, test_compose), emptied around each use: 13, and one
# more per pytest-xdist worker after the first (gw0 -> 13, gw1 -> 14, ...), so that parallel
# workers never empty each other's queue.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
if _WORKER > 2:
    raise RuntimeError("at most 3 pytest-xdist workers: Redis has databases 13-15 for them")
REDIS_TEST_URL = f"redis://127.0.0.1:6379/{13 + _WORKER}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def colorizer_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a service process: this one's, minus other COLORIZER_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLORIZER_")}
    env.update(
        COLORIZER_DATA_DIR=str(data_dir),
        COLORIZER_RELOAD_INTERVAL="0.3",
        # TensorFlow serves: converting the packaged default to OpenVINO, checking it and auto's
        # measurement cost each process about 12 s of both cores before it is ready (20.6 against
        # 8.1 s on 2 cores). test_e2e asks for auto, the default, and checks its choice.
        COLORIZER_INFERENCE_RUNTIME="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="-1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Proc:
    """A child process in its own process group, logging to a file, killed on exit."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            args, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
                self.popen.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(10)
        self._log.close()
        return self.popen.returncode


def colorizer(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, procs: tuple[Proc, ...] = ()):
    """Poll ``predicate`` until it returns something truthy; fail with the process logs if not."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.popen.poll() is not None:
                raise AssertionError(
                    f"{proc.log_path.name} exited while waiting for {what}:\n{proc.log()[-4000:]}"
                )
        try:
            value = predicate()
            if value:
                return value
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        time.sleep(0.2)
    logs = "\n".join(f"--- {p.log_path.name}\n{p.log()[-4000:]}" for p in procs)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})\n{logs}")
