"""The training task: one job record in, a trained and published generator out.

A job's outcome is its record (``<data_dir>/jobs/<id>/job.json``), not the task's exception: every
expected failure (bad config, missing dataset, unknown ``init_from`` version, disk trouble, even an
unexpected error) ends as a ``failed`` record with a readable ``error`` and the task returns
normally, so Celery acknowledges the message and the worker takes the next job. Only a worker
that dies mid-job (killed, out of memory) leaves the message unacknowledged; it is then delivered
again (or re-queued by ``worker.recovery``) and the training run resumes from its last checkpoint.
``MAX_ATTEMPTS`` stops a job that keeps killing its worker from being retried forever.

One trainer at a time: a delivery first takes the job's lease (``JobStore.claim``, a ``flock`` the
kernel drops when the process dies). A delivery that finds the lease held, because the broker
handed out the message again while the job still trains, or recovery re-queued it, steps aside
and is acknowledged. A SIGTERM to the training process (a warm or cold worker shutdown, Celery
cancelling the job after losing the broker) stops training at the next step with a checkpoint of
that step; the record goes back to ``queued`` and the job resumes from that step at its next
delivery. Such clean interruptions do not count towards ``MAX_ATTEMPTS``.

TensorFlow never reaches the worker's parent process: ``models.training`` (and with it TensorFlow)
is imported inside the task body, which runs in a prefork pool child; with
``worker_max_tasks_per_child=1`` that child exits after its one job and the next job gets a fresh
fork of a parent that has not imported TensorFlow (forking a process that has started
TensorFlow's threads can deadlock the child). ``run_job`` is the same work without Celery; the
CLI's ``colorizer train`` calls it in the foreground.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init, worker_shutting_down
from pydantic import ValidationError

from common.datasets import DatasetError
from common.jobs import FINAL_STATES, JobStore, UnknownJob
from common.labels import prune_versions
from common.objectstore import follow
from common.queue import NOT_VISIBLE_DELAY_S, NOT_VISIBLE_MAX_DELAY_S, TRAIN_QUEUE, TRAIN_TASK
from common.settings import Settings
from common.store import BrokenVersion, UnknownVersion, VersionStore
from models.config import TrainConfig
from models.data import find_dataset
from models.store import ModelStore, packaged_default
from worker.memory import MemoryGuard, memory_budget, size_text

log = logging.getLogger(__name__)

# Seconds between progress writes to the job record (a publish is always written at once).
PROGRESS_WRITE_INTERVAL = 0.5
# Starts of one job whose worker died with it (not counting clean interruptions) before it is failed.
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
        "resumed_from_step": progress.get("resumed_from_step"),
        "heartbeat_at": time.time(),
    }


class ProgressWriter:
    """``on_progress`` for ``run_training``: copies progress into the job record, throttled.

    Writes at most every ``interval`` seconds, plus whenever a new version was published and at
    the last step, so the record never misses a publish or the final numbers. Each write stamps
    ``heartbeat_at`` (when the trainer last reported).
    """

    def __init__(
        self,
        jobs: JobStore,
        job_id: str,
        interval: float = PROGRESS_WRITE_INTERVAL,
        on_publish: Callable[[], Any] | None = None,
    ):
        self.jobs, self.job_id, self.interval = jobs, job_id, interval
        self.on_publish = on_publish  # after each new version: retention
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
        published = versions != self._versions
        self._last_write, self._versions = now, versions
        if published and self.on_publish is not None:
            self.on_publish()


def apply_retention(store: VersionStore, settings: Settings) -> list[int]:
    """``COLORIZER_KEEP_VERSIONS``: delete all versions but the newest N, the labelled ones and the
    one ``COLORIZER_SERVE`` pins; never fails the job (a store it cannot prune is logged)."""
    if settings.keep_versions < 1:
        return []
    try:
        return prune_versions(store, settings.keep_versions, settings.policy.pinned)
    except Exception as exc:  # retention must never fail the job that published
        log.warning("retention skipped: %s", exc)
        return []


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


def _summary(record: dict[str, Any], state: str | None = None) -> dict[str, Any]:
    return {
        "job_id": record["id"],
        "state": state or record["state"],
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
    should_interrupt: Callable[[], bool] | None = None,
    dataset_path: Path | None = None,
) -> dict[str, Any]:
    """Run training job ``job_id`` to a final record state; returns a JSON summary of the outcome.

    Never raises for a failed job: the failure is written to the record. A record that is already
    final (e.g. cancelled while queued) is left alone, and so is a job another process is training
    (summary state ``duplicate``). ``should_stop`` is polled with the record's cancel marker (the
    CLI uses it for Ctrl-C); ``should_interrupt`` true stops at the next step with a checkpoint and
    puts the record back to ``queued`` to resume later (summary state ``interrupted``);
    ``dataset_path`` trains on a folder outside the datasets directory (CLI only).
    """
    jobs = JobStore(settings.jobs_dir)
    try:
        record = jobs.get(job_id)
    except UnknownJob:
        log.error("job %s has no record under %s", job_id, jobs.root)
        return {"job_id": job_id, "state": "missing", "error": "no job record"}
    if record["state"] in FINAL_STATES:
        log.info("job %s is already %s; nothing to do", job_id, record["state"])
        return _summary(record)
    lease = jobs.claim(job_id)
    if lease is None:
        log.warning("job %s is being trained by another process; this delivery steps aside", job_id)
        return _summary(record, "duplicate")
    with lease:
        record = jobs.get(job_id)  # the previous holder may have finished it meanwhile
        if record["state"] in FINAL_STATES:
            log.info("job %s is already %s; nothing to do", job_id, record["state"])
            return _summary(record)
        return _run_claimed(
            settings, jobs, record, config, verbose, should_stop, should_interrupt, dataset_path
        )


def _run_claimed(
    settings: Settings,
    jobs: JobStore,
    record: dict[str, Any],
    config: dict[str, Any],
    verbose: int,
    should_stop: Callable[[], bool] | None,
    should_interrupt: Callable[[], bool] | None,
    dataset_path: Path | None,
) -> dict[str, Any]:
    job_id = record["id"]
    if jobs.cancel_requested(job_id):
        return _finish(jobs, job_id, "cancelled")

    try:
        train_config = TrainConfig.model_validate(config)
    except ValidationError as exc:
        reason = f"invalid training config: {describe_validation_error(exc)}"
        log.warning("job %s: %s", job_id, reason)
        return _finish(jobs, job_id, "failed", error=reason)

    attempts = int(record.get("attempts") or 0) + 1
    interruptions = int(record.get("interruptions") or 0)
    if attempts - interruptions > MAX_ATTEMPTS:
        reason = (
            f"the job was started {attempts - 1 - interruptions} times and its worker died each time "
            "(killed or out of memory?); not trying again"
        )
        log.error("job %s: %s", job_id, reason)
        return _finish(jobs, job_id, "failed", error=reason)
    if attempts > 1:
        log.warning("job %s: attempt %d, resuming from its last checkpoint", job_id, attempts)
    now = time.time()
    jobs.update(
        job_id,
        state="running",
        started_at=record.get("started_at") or now,
        claimed_at=now,
        heartbeat_at=now,
        attempts=attempts,
        error=None,
    )

    def should_cancel() -> bool:
        return jobs.cancel_requested(job_id) or (should_stop is not None and should_stop())

    try:  # before TensorFlow is imported (seconds): a missing or unusable dataset fails at once
        scan = find_dataset(settings.data_dir, train_config.dataset, train_config.image_size, dataset_path)
    except (DatasetError, OSError) as exc:
        error = str(exc) if isinstance(exc, DatasetError) else f"cannot read the dataset: {exc}"
        log.warning("job %s failed: %s", job_id, error)
        return _finish(jobs, job_id, "failed", error=error)
    try:
        _configure_device()
        from models.backbones import PretrainedWeightsError
        from models.callbacks import PublishError
        from models.device import DeviceError
        from models.training import run_training
    except Exception as exc:
        log.exception("job %s: cannot load the training code", job_id)
        return _finish(jobs, job_id, "failed", error=f"{type(exc).__name__}: {exc}")

    follow(settings.model_store_url, settings.models_dir)  # the model store in a bucket, if set
    store = ModelStore(settings.models_dir, packaged_default(settings.default_model_dir))
    writer = ProgressWriter(jobs, job_id, on_publish=lambda: apply_retention(store, settings))
    budget = memory_budget(settings.train_max_memory_mb)

    def out_of_memory(resident: int) -> None:
        _finish(
            jobs,
            job_id,
            "failed",
            error=f"the job took {size_text(resident)} of memory, more than the {size_text(budget or 0)} "
            "this worker allows (COLORIZER_TRAIN_MAX_MEMORY_MB; by default 90% of the memory available when "
            "the job started), and was stopped: lower batch_size, image_size or width",
        )

    try:
        with MemoryGuard(budget, out_of_memory):
            result = run_training(
                train_config,
                data_dir=settings.data_dir,
                job_dir=jobs.job_dir(job_id),
                store=store,
                job_id=job_id,
                on_progress=writer,
                should_cancel=should_cancel,
                should_interrupt=should_interrupt,
                verbose=verbose,
                scan=scan,
            )
    except (DatasetError, PretrainedWeightsError, DeviceError) as exc:
        error = str(exc)
    except UnknownVersion as exc:
        error = f"unknown model version for init_from={train_config.init_from}: {exc}"
    except BrokenVersion as exc:
        error = f"model version for init_from={train_config.init_from} cannot be used: {exc}"
    except PublishError as exc:
        log.error("job %s: %s", job_id, exc)
        error = str(exc)
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
        if result.state == "interrupted":
            # Back in the queue's hands: its next delivery (or worker.recovery) resumes it.
            final["eta_seconds"] = None
            record = jobs.update(job_id, state="queued", interruptions=interruptions + 1, **final)
            return _summary(record, "interrupted")
        return _finish(jobs, job_id, result.state, **final)
    log.warning("job %s failed: %s", job_id, error)
    return _finish(jobs, job_id, "failed", error=error)


@worker_process_init.connect
def _term_on_parent_death(**_kwargs: Any) -> None:
    """In each pool child: when the thread that forked it ends, send SIGTERM, not billiard's
    SIGKILL, so that a job in training stops with a checkpoint (an idle child just exits)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


@worker_shutting_down.connect
def _interrupt_running_jobs(**_kwargs: Any) -> None:
    """At a worker shutdown (warm or cold, in the main process), SIGTERM the pool children that
    run a job.

    Each then stops at its next step with a checkpoint, and the shutdown goes on as soon as the
    task returns. Otherwise a warm shutdown would wait for the whole job (hours), and whatever
    stops the worker in the end (a SIGKILL after a grace period) would lose the steps since the
    last checkpoint.
    """
    from celery.worker.state import active_requests

    for request in list(active_requests):
        if request.worker_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(request.worker_pid, signal.SIGTERM)


# max_retries=None: the hand-backs of a job this worker cannot see are bounded by time, not count.
@shared_task(
    name=TRAIN_TASK, bind=True, queue=TRAIN_QUEUE, acks_late=True, ignore_result=True, max_retries=None
)
def train(
    self, job_id: str, config: dict[str, Any], handed_back_since: float | None = None
) -> dict[str, Any]:
    """Train job ``job_id`` with ``config`` (TrainConfig as plain JSON); see ``run_job``.

    A worker without the job's record (its data directory is not the API's) hands it back to the
    queue, twice as late each time up to NOT_VISIBLE_MAX_DELAY_S, for ``COLORIZER_UNSEEN_JOB_SECONDS``
    since it first did (``handed_back_since``), then stores why in the result backend, where the
    API finds it and fails the job.

    In the pool child, SIGTERM (sent by a worker shutdown, or by Celery cancelling the job when
    the broker connection drops) stops training at the next step with a checkpoint, and the job
    goes back to the queue (see ``_term_on_parent_death`` for the child's death signal).
    """
    log.info(
        "job %s: delivery %s (redelivered=%s)",
        job_id,
        self.request.id,
        bool((self.request.delivery_info or {}).get("redelivered")),
    )
    interrupt = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: interrupt.set())
    try:
        outcome = run_job(self.app.settings, job_id, config, should_interrupt=interrupt.is_set)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if outcome["state"] == "interrupted":
        log.warning("job %s: stopped by SIGTERM with a checkpoint; it resumes at its next start", job_id)
    if outcome["state"] == "missing":
        since = handed_back_since or time.time()
        window = self.app.settings.unseen_job_seconds
        if time.time() - since < window:
            delay = min(NOT_VISIBLE_DELAY_S * 2**self.request.retries, NOT_VISIBLE_MAX_DELAY_S)
            log.error(
                "job %s: this worker's data directory has no record of it (the API and every worker must "
                "share COLORIZER_DATA_DIR); handing it back to the queue for another worker (again in "
                "%.0f s, for up to %.0f s)",
                job_id,
                delay,
                window,
            )
            raise self.retry(kwargs={"handed_back_since": since}, countdown=delay)
        reason = (
            f"no worker could run this job: for {window:.0f} s, the workers that took it had no record "
            "of it in their data directory. The API and every worker must share one "
            "COLORIZER_DATA_DIR (models/, datasets/, jobs/), e.g. one volume or network share"
        )
        log.error("job %s: %s", job_id, reason)
        self.backend.mark_as_failure(self.request.id, RuntimeError(reason))
    return outcome
