"""A training job's memory ceiling: a job whose training step needs more memory than the machine
has is stopped and failed with the reason, before the kernel's out-of-memory killer picks a process
to kill (perhaps the API's, or the machine's other work).

TensorFlow cannot be interrupted inside a step, and the step is what grows (a configuration within
``TrainConfig``'s limits, such as 1024 px crops at width 256 in batches of 256, asks for far more
than a machine has; nothing about it is wrong until it runs). So a thread watches the process's
resident memory while the job trains and, past the budget, records the failure and ends the
process it runs in: the prefork pool child of a Celery worker, which the worker replaces; the
message is delivered again and finds the job failed. Measured while choosing this (2026-12-06):
``RLIMIT_DATA`` instead made TensorFlow raise an unreadable ``AbortedError`` at one limit and
abort the process (a thread it could not start) at a slightly lower one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# Of the memory available when a job starts, the share it may take on top of what its process holds.
AVAILABLE_SHARE = 0.9
POLL_SECONDS = 0.2  # a step grows by at most a few GB a second here: caught within the margin
EXIT_CODE = 137  # what a shell shows for a process the out-of-memory killer ended (128 + SIGKILL)


def resident_bytes() -> int:
    """This process's resident memory (Linux; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _stat_value(path: Path, key: str) -> int:
    """One counter of a cgroup's ``memory.stat`` (0 when missing)."""
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _cgroup_room(root: Path = Path("/sys/fs/cgroup"), membership: str | None = None) -> int | None:
    """Bytes left under this process's cgroup memory limit, None without one: cgroup v2 (the
    ``0::`` line of /proc/self/cgroup) or v1 (its ``memory`` controller's line). The page cache
    the kernel can drop (inactive files) counts as room, as ``docker stats`` counts it."""
    try:
        lines = (membership if membership is not None else Path("/proc/self/cgroup").read_text()).splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            _, controllers, path = line.split(":", 2)
            if controllers == "":  # v2
                folder = root / path.lstrip("/")
                limit = (folder / "memory.max").read_text().strip()
                if limit == "max":
                    return None
                used = int((folder / "memory.current").read_text())
                return int(limit) - used + _stat_value(folder / "memory.stat", "inactive_file")
            if "memory" in controllers.split(","):  # v1
                folder = root / "memory" / path.lstrip("/")
                limit = int((folder / "memory.limit_in_bytes").read_text())
                if limit >= 2**62:  # v1's "no limit" is a page-rounded 2**63 - 1
                    return None
                used = int((folder / "memory.usage_in_bytes").read_text())
                return limit - used + _stat_value(folder / "memory.stat", "total_inactive_file")
        except (OSError, ValueError):
            continue
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


def _end_this_process() -> None:
    """Exit at once, every thread with it (``_exit``: no cleanup to wait for inside a step). Not a
    SIGKILL to itself: a container's PID 1 ignores that and would train on."""
    os._exit(EXIT_CODE)


class MemoryGuard:
    """While entered, a daemon thread reads this process's resident memory every ``interval`` s;
    past ``budget`` bytes it calls ``on_exceeded(resident)`` once (which records the failure), then
    ``kill()`` (by default: this very process exits at once). ``budget`` None: no guard."""

    def __init__(
        self,
        budget: int | None,
        on_exceeded: Callable[[int], None],
        interval: float = POLL_SECONDS,
        kill: Callable[[], None] = _end_this_process,
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
            except Exception:  # the record could not be written: stopping matters more
                log.exception("could not record why the job is stopped")
            finally:
                self.kill()
            return
