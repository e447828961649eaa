"""models.parallel: a photograph's parts on the caller's thread and the shared spare-core pool."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from models import parallel


def test_parts_run_at_once_and_come_back_in_order():
    both_running = threading.Barrier(2, timeout=30)  # each part waits for the other: at once, or a timeout

    def part(value: int) -> tuple[int, str]:
        both_running.wait()
        return value, threading.current_thread().name

    (first, caller), (second, helper) = parallel.run_parts([lambda: part(1), lambda: part(2)])
    assert (first, second) == (1, 2)
    assert caller == threading.current_thread().name and helper.startswith("spare-core")


def test_a_failing_part_raises_and_the_parts_not_started_never_run():
    pool = parallel.spare_pool()
    release = threading.Event()
    blockers = [pool.submit(release.wait, 30) for _ in range(pool._max_workers)]  # every worker busy
    ran: list[str] = []

    def fail() -> None:
        raise ValueError("a damaged part")

    try:
        with pytest.raises(ValueError, match="damaged"):
            parallel.run_parts([fail, lambda: ran.append("second")])
    finally:
        release.set()
        for blocker in blockers:
            blocker.result()
    pool.submit(lambda: None).result()  # the queue has been served past the cancelled part
    assert ran == []


def test_a_forked_child_starts_its_own_pool():
    parallel.spare_pool()
    pid = os.fork()
    if pid == 0:  # the child: the parent's pool has no threads here
        os._exit(0 if parallel._pool is None else 1)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:  # a child stuck after the fork fails the test instead of hanging it
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child did not exit")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert parallel._pool is not None  # the parent keeps its own
