"""The training task: one job record in, a trained and published generator out.

A job's outcome is its record (``<data_dir>/jobs/<id>/job.json``), not the task's exception: every
expected failure (bad config, missing dataset, unknown ``init_from`` version, disk trouble, even an
unexpected error) ends as a ``failed`` record with a readable ``error`` and the task returns
normally, so Celery acknowledges the message and the worker takes the next job. Only a worker
that dies mid-job (killed, out of memory) leaves the message unacknowledged; it is then delivered
again and the training run resumes from its ``BackupAndRestore`` checkpoint. ``MAX_ATTEMPTS``
stops a job that keeps killing its worker from being retried forever.

TensorFlow never reaches the worker's parent process: ``models.training`` (and with it TensorFlow)
is imported inside the task body, which runs in a prefork pool child; with
``worker_max_tasks_per_child=1`` that child exits after its one job and the next job gets a fresh
fork of a parent that has not imported TensorFlow (forking a process that has started
TensorFlow's threads can deadlock the child). ``run_job`` is the same work without Celery; the
CLI's ``colorizer train`` calls it in the foreground.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import shared_task
from pydantic import ValidationError

from models.config import TrainConfig
from models.jobs import FINAL_STATES, JobStore, UnknownJob
from models.store import BrokenVersion, ModelStore, UnknownVersion
from service.settings import Settings
from worker.celery_app import TRAIN_QUEUE, TRAIN_TASK

log = logging.getLogger(__name__)

# Seconds between progress writes to the job record (a publish is always written at once).
PROGRESS_WRITE_INTERVAL = 0.5
# Deliveries of one job before it is failed: each one beyond the first means a worker died with it.
MAX_ATTEMPTS = 3


def describe_validation_error(exc: ValidationError) -> str:
    """``field: message; field: message`` for a config that failed validation."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "config"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def record_fields(progress: dict[str, Any]) -> dict[str, Any]:
    """Job record fields from one ``on_progress`` report of ``run_training``."""
    return {
        "progress": {
            "step": int(progress.get("step") or 0),
            "total": progress.get("total"),
            "epoch": int(progress.get("epoch") or 0),
        },
        "losses": progress.get("losses") or {},
        "eta_seconds": progress.get("eta_seconds"),
        "published_versions": list(progress.get("published_versions") or []),
    }


class ProgressWriter:
    """``on_progress`` for ``run_training``: copies progress into the job record, throttled.

    Writes at most every ``interval`` seconds, plus whenever a new version was published and at
    the last step, so the record never misses a publish or the final numbers.
    """

    def __init__(self, jobs: JobStore, job_id: str, interval: float = PROGRESS_WRITE_INTERVAL):
        self.jobs, self.job_id, self.interval = jobs, job_id, interval
        self._last_write = float("-inf")
        self._versions: list[int] = []
        self.last: dict[str, Any] | None = None  # the latest report, written or not

    def __call__(self, progress: dict[str, Any]) -> None:
        self.last = progress
        now = time.monotonic()
        versions = list(progress.get("published_versions") or [])
        last_step = progress.get("total") is not None and progress.get("step") == progress.get("total")
        if now - self._last_write < self.interval and versions == self._versions and not last_step:
            return
        try:
            self.jobs.update(self.job_id, **record_fields(progress))
        except OSError as exc:  # a full disk must not kill a run that is otherwise fine
            log.warning("job %s: cannot write progress: %s", self.job_id, exc)
            return
        self._last_write, self._versions = now, versions


def _configure_device() -> None:
    """Memory growth on every GPU (when ``models.device`` exists), before TensorFlow touches one."""
    if importlib.util.find_spec("models.device") is None:
        return
    from models.device import configure_tensorflow

    log.info("training on %s", configure_tensorflow("auto"))


def _finish(jobs: JobStore, job_id: str, state: str, **fields: Any) -> dict[str, Any]:
    fields["eta_seconds"] = None
    record = jobs.update(job_id, state=state, finished_at=time.time(), **fields)
    return {
        "job_id": job_id,
        "state": state,
        "error": record.get("error"),
        "published_versions": record.get("published_versions", []),
    }


def run_job(
    settings: Settings,
    job_id: str,
    config: dict[str, Any],
    *,
    verbose: int = 0,
    should_stop: Callable[[], bool] | None = None,
    dataset_path: Path | None = None,
) -> dict[str, Any]:
    """Run training job ``job_id`` to a final record state; returns a JSON summary of the outcome.

    Never raises for a failed job: the failure is written to the record. A record that is already
    final (e.g. cancelled while queued) is left alone. ``should_stop`` is polled with the record's
    cancel marker (the CLI uses it for Ctrl-C); ``dataset_path`` trains on a folder outside the
    datasets directory (CLI only).
    """
    jobs = JobStore(settings.jobs_dir)
    try:
        record = jobs.get(job_id)
    except UnknownJob:
        log.error("job %s has no record under %s; dropping it", job_id, jobs.root)
        return {"job_id": job_id, "state": "missing", "error": "no job record"}
    if record["state"] in FINAL_STATES:
        log.info("job %s is already %s; nothing to do", job_id, record["state"])
        return {
            "job_id": job_id,
            "state": record["state"],
            "error": record.get("error"),
            "published_versions": record.get("published_versions", []),
        }
    if jobs.cancel_requested(job_id):
        return _finish(jobs, job_id, "cancelled")

    try:
        train_config = TrainConfig.model_validate(config)
    except ValidationError as exc:
        reason = f"invalid training config: {describe_validation_error(exc)}"
        log.warning("job %s: %s", job_id, reason)
        return _finish(jobs, job_id, "failed", error=reason)

    attempts = int(record.get("attempts") or 0) + 1
    if attempts > MAX_ATTEMPTS:
        reason = (
            f"the job was started {attempts - 1} times and its worker never finished it "
            "(killed or out of memory?); not trying again"
        )
        log.error("job %s: %s", job_id, reason)
        return _finish(jobs, job_id, "failed", error=reason)
    if attempts > 1:
        log.warning("job %s: attempt %d, resuming from its last checkpoint", job_id, attempts)
    jobs.update(
        job_id,
        state="running",
        started_at=record.get("started_at") or time.time(),
        attempts=attempts,
        error=None,
    )

    def should_cancel() -> bool:
        return jobs.cancel_requested(job_id) or (should_stop is not None and should_stop())

    try:
        _configure_device()
        from models.data import DatasetError  # lazy: the data pipeline brings TensorFlow
        from models.training import run_training
    except Exception as exc:
        log.exception("job %s: cannot load the training code", job_id)
        return _finish(jobs, job_id, "failed", error=f"{type(exc).__name__}: {exc}")

    writer = ProgressWriter(jobs, job_id)
    try:
        result = run_training(
            train_config,
            data_dir=settings.data_dir,
            job_dir=jobs.job_dir(job_id),
            store=ModelStore(settings.models_dir),
            job_id=job_id,
            on_progress=writer,
            should_cancel=should_cancel,
            verbose=verbose,
            dataset_path=dataset_path,
        )
    except DatasetError as exc:
        error = str(exc)
    except UnknownVersion as exc:
        error = f"unknown model version for init_from={train_config.init_from}: {exc}"
    except BrokenVersion as exc:
        error = f"model version for init_from={train_config.init_from} cannot be used: {exc}"
    except OSError as exc:
        log.exception("job %s: disk trouble", job_id)
        error = f"cannot read or write the job's files or the model store: {exc}"
    except Exception as exc:
        log.exception("job %s failed", job_id)
        error = f"{type(exc).__name__}: {exc}"
    else:
        log.info(
            "job %s %s after %d steps, published %s",
            job_id,
            result.state,
            result.steps,
            result.published_versions,
        )
        final = record_fields(writer.last) if writer.last else {}
        final["published_versions"] = list(result.published_versions)
        return _finish(jobs, job_id, result.state, **final)
    log.warning("job %s failed: %s", job_id, error)
    return _finish(jobs, job_id, "failed", error=error)


@shared_task(name=TRAIN_TASK, bind=True, queue=TRAIN_QUEUE, acks_late=True)
def train(self, job_id: str, config: dict[str, Any]) -> dict[str, Any]:
    """Train job ``job_id`` with ``config`` (TrainConfig as plain JSON); see ``run_job``."""
    log.info(
        "job %s: delivery %s (redelivered=%s)",
        job_id,
        self.request.id,
        bool((self.request.delivery_info or {}).get("redelivered")),
    )
    return run_job(self.app.settings, job_id, config)
