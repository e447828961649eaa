"""A training job's memory ceiling: a job whose training step needs more memory than the machine
has is stopped and failed with the reason, before the kernel's out-of-memory killer picks a process
to kill (perhaps the API's, or the machine's other work).

TensorFlow cannot be interrupted inside a step, and the step is what grows (a configuration within
``TrainConfig``'s limits, such as 1024 px crops at width 256 in batches of 256, asks for far more
than a machine has; nothing about it is wrong until it runs). So a thread watches the process's
resident memory while the job trains and, past the budget, records the failure and kills the
process it runs in: the prefork pool child of a Celery worker, which the worker replaces; the
message is delivered again and finds the job failed. Measured while choosing this (2026-12-06):
``RLIMIT_DATA`` instead made TensorFlow raise an unreadable ``AbortedError`` at one limit and
abort the process (a thread it could not start) at a slightly lower one.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# Of the memory available when a job starts, the share it may take on top of what its process holds.
AVAILABLE_SHARE = 0.9
POLL_SECONDS = 0.2  # a step grows by at most a few GB a second here: caught within the margin


def resident_bytes() -> int:
    """This process's resident memory (Linux; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit, None without one."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()[0]
        folder = Path("/sys/fs/cgroup") / line.split("::", 1)[1].lstrip("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((folder / "memory.current").read_text())
    except (OSError, IndexError, ValueError):
        return None


def available_bytes() -> int | None:
    """Memory the machine could still give this process: MemAvailable, or the room left under a
    cgroup limit (a container's) when that is less; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    if (room := _cgroup_room()) is not None:
        found.append(room)
    return min(found) if found else None


def memory_budget(max_memory_mb: int) -> int | None:
    """The resident bytes a job's process may reach: ``max_memory_mb`` when set, else what it holds
    now plus ``AVAILABLE_SHARE`` of what is available; None where that cannot be read (no guard)."""
    if max_memory_mb:
        return max_memory_mb * 2**20
    available = available_bytes()
    if available is None:
        return None
    return resident_bytes() + int(AVAILABLE_SHARE * available)


def size_text(count: int) -> str:
    """Bytes for a person: "3.2 GB", "600 MB"."""
    return f"{count / 2**30:.1f} GB" if count >= 2**30 else f"{count >> 20} MB"


def _kill_this_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class MemoryGuard:
    """While entered, a daemon thread reads this process's resident memory every ``interval`` s;
    past ``budget`` bytes it calls ``on_exceeded(resident)`` once (which records the failure), then
    ``kill()`` (by default SIGKILL to this very process). ``budget`` None: no guard."""

    def __init__(
        self,
        budget: int | None,
        on_exceeded: Callable[[int], None],
        interval: float = POLL_SECONDS,
        kill: Callable[[], None] = _kill_this_process,
    ):
        self.budget = budget
        self.on_exceeded = on_exceeded
        self.interval = interval
        self.kill = kill
        self.tripped = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryGuard:
        if self.budget is not None:
            self._thread = threading.Thread(target=self._watch, name="memory-guard", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        assert self.budget is not None
        while not self._stop.wait(self.interval):
            resident = resident_bytes()
            if resident <= self.budget:
                continue
            self.tripped = True
            log.error(
                "training took %d MB, past its budget of %d MB: stopping it",
                resident >> 20,
                self.budget >> 20,
            )
            try:
                self.on_exceeded(resident)
            finally:
                self.kill()
            return
