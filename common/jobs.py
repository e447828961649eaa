"""Training job records on the shared data volume: ``<jobs_dir>/<id>/job.json`` plus the job's files.

The API creates a record when a job is submitted; the worker updates it as training runs. Each
write replaces the whole file atomically, so readers never see a torn record, and read-modify-write
updates hold an exclusive ``flock`` on ``.record.lock`` so two writers (the worker's progress, the
API's cancel, a worker's recovery pass) never undo each other's fields. Cancellation is a marker
file (``cancel``) the API drops and the worker's training callback looks for at each step.

The lease (``lease``): the process that trains a job holds an exclusive ``flock`` on this file for
as long as it trains. The kernel drops the lock when that process exits in any way, SIGKILL and
out-of-memory kills included, so "is anyone training this job?" has an exact answer with no
heartbeat timeout to tune: a second delivery of the same job (a broker redelivery, a recovery
re-queue) finds the lease held and steps aside, and a worker that finds a started job's lease free
knows its trainer is gone. ``flock`` is reliable on a local disk or a Docker volume shared by
containers of one host; on NFS it depends on the server's lock support.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common.store import replace_json

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = ("succeeded", "failed", "cancelled")
_ID = re.compile(r"^[0-9a-f]{32}$")
RECORD_FILE = "job.json"
CANCEL_FILE = "cancel"
SAMPLES_DIR = "samples"
LEASE_FILE = "lease"
RECORD_LOCK_FILE = ".record.lock"
# How long a new trainer waits for a lease that is only being probed (see JobStore.is_claimed).
CLAIM_WAIT_S = 2.0

# Held while this process holds a short-lived flock (a lease being probed, a record being
# written), and by os.fork: a child forked meanwhile never inherits the locked file, which would
# keep the lock held for as long as the child lives. (The Celery worker forks its pool children
# from billiard's supervisor thread while its recovery thread probes leases and marks records:
# a replacement child forked while recovery marked a job would hold that job's record lock, and
# block on it at its first update of the record, for good.)
_fork_guard = threading.RLock()
os.register_at_fork(
    before=_fork_guard.acquire, after_in_parent=_fork_guard.release, after_in_child=_fork_guard.release
)


class UnknownJob(LookupError):
    """No job with that id."""


class JobLease:
    """The exclusive claim on one job, held by the process that trains it (see the module doc)."""

    def __init__(self, fd: int, job_id: str):
        self._fd: int | None = fd
        self.job_id = job_id

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the job up (closing the file drops the lock); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JobLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class JobStore:
    """Job records under ``root`` (``<data_dir>/jobs``)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def job_dir(self, job_id: str) -> Path:
        """The job's folder; raises UnknownJob for an id that is not one of ours (no path tricks)."""
        if not _ID.fullmatch(job_id):
            raise UnknownJob(f"job {job_id!r} does not exist")
        return self.root / job_id

    def create(self, config: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """A new queued job for ``config`` (plain JSON), with extra record ``fields``; returns its record."""
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir(parents=True)
        record = {
            "id": job_id,
            "state": "queued",
            "config": config,
            "created_at": time.time(),
            "started_at": None,
            "finished_at": None,
            "progress": {"step": 0, "total": None, "epoch": 0},
            "losses": {},
            "eta_seconds": None,
            "published_versions": [],
            "error": None,
            **fields,
        }
        replace_json(folder / RECORD_FILE, record)
        return record

    def get(self, job_id: str) -> dict[str, Any]:
        """The job's record; raises UnknownJob."""
        path = self.job_dir(job_id) / RECORD_FILE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise UnknownJob(f"job {job_id!r} does not exist") from None

    def list(self) -> list[dict[str, Any]]:
        """Every job, newest first."""
        records = []
        if self.root.is_dir():
            for child in self.root.iterdir():
                if _ID.fullmatch(child.name):
                    try:
                        records.append(json.loads((child / RECORD_FILE).read_text()))
                    except (OSError, ValueError):
                        continue
        return sorted(records, key=lambda r: r.get("created_at") or 0, reverse=True)

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the record and write it back atomically; returns the new record."""
        record = self.modify(job_id, lambda _record: fields)
        assert record is not None
        return record

    def modify(
        self, job_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Read the record, merge ``change(record)`` into it and write it back, all under the record
        lock; ``change`` returning None leaves the record alone (and None is returned)."""
        with self._record_lock(job_id):
            record = self.get(job_id)
            fields = change(record)
            if fields is None:
                return None
            record.update(fields)
            replace_json(self.job_dir(job_id) / RECORD_FILE, record)
            return record

    @contextlib.contextmanager
    def _record_lock(self, job_id: str) -> Iterator[None]:
        folder = self.job_dir(job_id)
        if not folder.is_dir():
            raise UnknownJob(f"job {job_id!r} does not exist")
        with _fork_guard:
            fd = os.open(folder / RECORD_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def claim(self, job_id: str, wait: float = CLAIM_WAIT_S) -> JobLease | None:
        """Take the job's lease for this process, or None if another live process holds it.

        Waits up to ``wait`` seconds for a lease that another process only probes. The holder's
        host and pid are written into the lease file for people reading it.
        """
        fd = os.open(self.job_dir(job_id) / LEASE_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return None
                time.sleep(0.05)
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        return JobLease(fd, job_id)

    def is_claimed(self, job_id: str) -> bool:
        """Whether a live process holds the job's lease (i.e. is training it right now)."""
        with _fork_guard:
            try:
                fd = os.open(self.job_dir(job_id) / LEASE_FILE, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            finally:
                os.close(fd)
            return False

    def request_cancel(self, job_id: str) -> dict[str, Any]:
        """Ask the job to stop. A queued job is cancelled at once; a running one at its next step."""
        record = self.get(job_id)
        if record["state"] in FINAL_STATES:
            return record
        (self.job_dir(job_id) / CANCEL_FILE).touch()

        def cancel_if_queued(current: dict[str, Any]) -> dict[str, Any] | None:
            # Under the record lock: a worker may have started the job since the read above.
            if current["state"] != "queued" or self.is_claimed(job_id):
                return None
            return {"state": "cancelled", "finished_at": time.time()}

        return self.modify(job_id, cancel_if_queued) or self.get(job_id)

    def cancel_requested(self, job_id: str) -> bool:
        return (self.job_dir(job_id) / CANCEL_FILE).exists()

    def samples_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / SAMPLES_DIR

    def latest_sample(self, job_id: str) -> Path | None:
        """The newest sample plot PNG of the job, or None before the first one."""
        folder = self.samples_dir(job_id)
        if not folder.is_dir():
            return None
        plots = sorted(folder.glob("plot_*.png"))
        return plots[-1] if plots else None
