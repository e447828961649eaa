"""Training job records on the shared data volume: ``<jobs_dir>/<id>/job.json`` plus the job's files.

The API creates a record when a job is submitted; the worker updates it as training runs. Each
write replaces the whole file atomically, so readers never see a torn record. Cancellation is a
marker file (``cancel``) the API drops and the worker's training callback looks for at each step.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = ("succeeded", "failed", "cancelled")
_ID = re.compile(r"^[0-9a-f]{32}$")
RECORD_FILE = "job.json"
CANCEL_FILE = "cancel"
SAMPLES_DIR = "samples"


class UnknownJob(LookupError):
    """No job with that id."""


class JobStore:
    """Job records under ``root`` (``<data_dir>/jobs``)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def job_dir(self, job_id: str) -> Path:
        """The job's folder; raises UnknownJob for an id that is not one of ours (no path tricks)."""
        if not _ID.match(job_id):
            raise UnknownJob(f"job {job_id!r} does not exist")
        return self.root / job_id

    def create(self, config: dict[str, Any]) -> dict[str, Any]:
        """A new queued job for ``config`` (plain JSON); returns its record."""
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
        }
        _atomic_write(folder / RECORD_FILE, record)
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
                if _ID.match(child.name):
                    try:
                        records.append(json.loads((child / RECORD_FILE).read_text()))
                    except (OSError, ValueError):
                        continue
        return sorted(records, key=lambda r: r.get("created_at") or 0, reverse=True)

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the record and write it back atomically; returns the new record."""
        record = self.get(job_id)
        record.update(fields)
        _atomic_write(self.job_dir(job_id) / RECORD_FILE, record)
        return record

    def request_cancel(self, job_id: str) -> dict[str, Any]:
        """Ask the job to stop. A queued job is cancelled at once; a running one at its next step."""
        record = self.get(job_id)
        if record["state"] in FINAL_STATES:
            return record
        (self.job_dir(job_id) / CANCEL_FILE).touch()
        if record["state"] == "queued":
            record = self.update(job_id, state="cancelled", finished_at=time.time())
        return record

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


def _atomic_write(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
