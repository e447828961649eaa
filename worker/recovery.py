"""Recovery of jobs whose trainer is gone: re-queue them so they resume from their checkpoint.

A job that has started (``attempts`` >= 1) and is not final, but whose lease nobody holds
(``JobStore.is_claimed``), has no process training it: its worker was killed (SIGKILL, out of
memory, power cut), or it stopped cleanly for a shutdown or a lost broker connection and went back
to ``queued``. Its broker message may never come back: the embedded SQLite broker never redelivers
a message taken by a worker that was killed, and Redis only after the visibility timeout (24 h by
default). So every worker runs a recovery pass when it is ready (Celery's ``worker_ready``) and
then every ``COLORIZER_RECOVERY_INTERVAL`` seconds in a thread of its main process, and sends such
jobs to the queue again.

Duplicates are harmless by construction: the delivery that takes the lease trains, any other
delivery of the same job (the broker's own redelivery, another worker's re-queue) finds the lease
held or the job final and is acknowledged without doing anything. To keep the queue from filling
with copies, a pass marks the record with ``requeued_at`` and skips jobs re-queued since their
last start, unless that was longer ago than the visibility timeout (the re-queued message was
lost, e.g. a Redis without persistence restarted). Jobs run in the foreground by ``colorizer
train`` (``origin`` ``cli``) are never re-queued: they may train on a folder outside the data
directory.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutting_down

from common.jobs import JobStore
from common.queue import send_train

log = logging.getLogger(__name__)

RESUMABLE_STATES = ("queued", "running")


def orphaned(jobs: JobStore, record: dict[str, Any], now: float, requeue_after: float) -> bool:
    """Whether job ``record`` started, is not finished, nobody trains it and no re-queue is pending."""
    if record.get("state") not in RESUMABLE_STATES or not record.get("attempts"):
        return False  # final, or never started (its first message is still in the queue)
    if record.get("origin") == "cli":
        return False
    requeued_at = record.get("requeued_at")
    if requeued_at and requeued_at > (record.get("claimed_at") or 0) and now - requeued_at < requeue_after:
        return False
    return not jobs.is_claimed(record["id"])


def requeue_orphans(app: Celery, jobs: JobStore, requeue_after: float) -> list[str]:
    """Send every orphaned job to the training queue again; returns their ids.

    A job whose message cannot be sent (broker down) is left for the next pass.
    """
    requeued = []
    for record in jobs.list():
        job_id = record.get("id")
        if not isinstance(job_id, str) or not orphaned(jobs, record, time.time(), requeue_after):
            continue

        def mark(current: dict[str, Any]) -> dict[str, Any] | None:
            # Checked again under the record lock: another worker's pass may have just done it.
            if not orphaned(jobs, current, time.time(), requeue_after):
                return None
            return {"requeued_at": time.time()}

        marked = jobs.modify(job_id, mark)
        if marked is None:
            continue
        try:
            send_train(app, job_id, marked["config"])
        except Exception as exc:  # kombu OperationalError, ConnectionError, ...
            log.warning(
                "job %s needs re-queueing but the broker is unreachable (%s); retrying later", job_id, exc
            )
            jobs.update(job_id, requeued_at=None)
            continue
        log.warning(
            "job %s was left %s (step %s) with no worker training it; queued again to resume",
            job_id,
            marked["state"],
            (marked.get("progress") or {}).get("step"),
        )
        requeued.append(job_id)
    return requeued


class RecoveryLoop(threading.Thread):
    """A recovery pass at once, then one every ``interval`` seconds until ``stop()``."""

    def __init__(self, app: Celery, jobs: JobStore, interval: float, requeue_after: float):
        super().__init__(name="colorizer-recovery", daemon=True)
        self.app, self.jobs = app, jobs
        self.interval, self.requeue_after = interval, requeue_after
        self._stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                requeue_orphans(self.app, self.jobs, self.requeue_after)
            except Exception:  # never let the thread die: the next pass may succeed
                log.exception("recovery pass failed")
            if self._stopped.wait(self.interval):
                return

    def stop(self) -> None:
        self._stopped.set()


_loop: RecoveryLoop | None = None


@worker_ready.connect
def _start_recovery(sender: Any = None, **_kwargs: Any) -> None:
    global _loop
    app = getattr(sender, "app", None)
    settings = getattr(app, "settings", None)
    if app is None or settings is None or _loop is not None:
        return
    _loop = RecoveryLoop(
        app, JobStore(settings.jobs_dir), settings.recovery_interval, float(settings.visibility_timeout)
    )
    _loop.start()


@worker_shutting_down.connect
def _stop_recovery(**_kwargs: Any) -> None:
    if _loop is not None:
        _loop.stop()
