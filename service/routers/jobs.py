"""Training jobs: submit (queued on Celery), list, inspect, cancel, and the latest sample plot.

Every route here needs the API key when one is configured. Routes are plain ``def``: they touch the
disk and the broker, so FastAPI runs them in its thread pool.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from celery import Celery
from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError

from common.datasets import DatasetError, resolve_dataset
from common.jobs import FINAL_STATES, JobStore
from common.settings import redact_url
from common.store import DEFAULT_VERSION, BrokenVersion, UnknownVersion, VersionStore, read_metadata
from models.config import TrainConfig
from models.presets import REPORT_DECODER, REPORT_ENCODER
from service.deps import CeleryDep, JobStoreDep, SettingsDep, StoreDep, require_api_key
from service.errors import ApiError, field_error
from service.schemas import ErrorResponse, JobQueueError, JobStatus, ValidationErrorResponse

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/jobs",
    tags=["jobs"],
    dependencies=[Depends(require_api_key)],
    responses={401: {"model": ErrorResponse, "description": "Missing or wrong API key."}},
)

# A job no worker started this soon may be one a worker could not see (its data directory differs).
NOT_VISIBLE_CHECK_AFTER_S = 15.0

_UNKNOWN_JOB = {404: {"model": ErrorResponse, "description": "No such job."}}


def dataset_folder(datasets_dir: Path, name: str) -> Path:
    """The dataset's folder, resolved; raises a 422 naming ``dataset`` if missing or outside datasets_dir."""
    try:
        return resolve_dataset(datasets_dir, name)
    except DatasetError as exc:
        raise field_error("body", "dataset", str(exc), name) from None


def _init_from_metadata(store: VersionStore, init_from: int | str) -> tuple[str, dict[str, Any]]:
    """(how to name it, its metadata) for ``init_from``; raises a 422 naming init_from if unusable."""
    if init_from == DEFAULT_VERSION:
        if not store.has_default():
            raise field_error(
                "body",
                "init_from",
                "no default model is installed on this server: start from a version number "
                "(GET /models lists them) or leave init_from out",
                init_from,
            )
        try:
            return "the default model", read_metadata(store.default_dir)
        except BrokenVersion:
            raise field_error(
                "body", "init_from", "the default model's metadata cannot be read", init_from
            ) from None
    try:
        return f"model version {init_from}", store.get(int(init_from)).metadata
    except UnknownVersion:
        raise field_error(
            "body",
            "init_from",
            f"model version {init_from} does not exist (GET /models lists them)",
            init_from,
        ) from None
    except BrokenVersion as exc:
        raise field_error(
            "body", "init_from", f"model version {init_from} cannot be read: {exc}", init_from
        ) from None


def _check_init_from(store: VersionStore, config: TrainConfig) -> None:
    """422 naming init_from unless it exists and has the job's preset, image_size, width, decoder and
    encoder.

    A field missing from the version's metadata is not checked (the worker still refuses weights
    of the wrong shape).
    """
    if config.init_from is None:
        return
    name, metadata = _init_from_metadata(store, config.init_from)
    wanted = {"preset": config.preset, "image_size": config.image_size, "width": config.width}
    known = dict(metadata)
    if config.decoder is not None:  # left out, the job takes the model's decoder
        wanted["decoder"] = config.decoder
        known["decoder"] = known.get("decoder") or REPORT_DECODER  # versions from before the option
    if config.encoder is not None:  # likewise the encoder
        wanted["encoder"] = config.encoder
        known["encoder"] = known.get("encoder") or REPORT_ENCODER
    differ = [key for key, value in wanted.items() if key in known and str(known[key]) != str(value)]
    if differ:
        has = ", ".join(f"{key} {known[key]!r}" for key in differ)
        asks = ", ".join(f"{key} {wanted[key]!r}" for key in differ)
        raise field_error(
            "body",
            "init_from",
            f"{name} has {has} but this job asks for {asks}: init_from needs a model with the job's "
            "preset, image_size, width, decoder and encoder (change them to match, or leave init_from out)",
            config.init_from,
        )


def _status(record: dict[str, Any]) -> JobStatus:
    return JobStatus.model_validate(record)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobStatus,
    responses={
        422: {"model": ValidationErrorResponse, "description": "Bad config, missing dataset or init_from."},
        503: {"model": JobQueueError, "description": "The broker is unreachable; the job is marked failed."},
    },
)
def submit_job(
    request: Request,
    config: TrainConfig,
    settings: SettingsDep,
    store: StoreDep,
    jobs: JobStoreDep,
    celery_app: CeleryDep,
) -> JobStatus | JSONResponse:
    """Queue a training job; answers 202 with its record (state ``queued``)."""
    dataset_folder(settings.datasets_dir, config.dataset)
    _check_init_from(store, config)
    config_dict = config.model_dump(mode="json")
    record = jobs.create(config_dict)
    try:
        from common.queue import send_train

        send_train(celery_app, record["id"], config_dict)
    except Exception as exc:  # kombu OperationalError, ConnectionError, a missing worker package, ...
        log.warning("job %s could not be queued: %s", record["id"], redact_url(repr(exc)))
        # Celery's Redis result backend gives up for good after its reconnect retries ("must be
        # restarted"): build a fresh Celery app for the next submission.
        request.app.state.celery = None
        reason = redact_url(" ".join(str(exc).split())) or type(exc).__name__
        record = jobs.update(
            record["id"],
            state="failed",
            error=f"could not queue the job, the broker is unreachable: {reason}",
            finished_at=time.time(),
        )
        body = JobQueueError(
            detail="the job queue (broker) is unreachable, so the job was not queued and is marked "
            f"failed ({reason}). Check COLORIZER_BROKER_URL and that the broker runs, then submit again",
            job=_status(record),
        )
        return JSONResponse(body.model_dump(mode="json"), status_code=503, headers={"Retry-After": "30"})
    log.info("queued training job %s on dataset %s", record["id"], config.dataset)
    return _status(record)


def _reconciled(record: dict[str, Any], jobs: JobStore, celery_app: Celery) -> dict[str, Any]:
    """``record``, failed with the reason when no worker could see the job (a queued job whose last
    worker stored a failure in the result backend: its data directory is not the API's)."""
    # Only a job no worker ever started, queued longer than a hand-back takes: one read of the
    # result backend (which may be down: see common.queue) per such job and request, no more.
    if record.get("state") != "queued" or record.get("attempts") or record.get("claimed_at"):
        return record
    if time.time() - float(record.get("created_at") or 0) < NOT_VISIBLE_CHECK_AFTER_S:
        return record
    from common.queue import not_visible_reason

    reason = not_visible_reason(celery_app, record["id"])
    if reason is None:
        return record

    def fail(current: dict[str, Any]) -> dict[str, Any] | None:
        if current.get("state") != "queued":
            return None
        return {"state": "failed", "error": reason, "finished_at": time.time()}

    log.error("job %s: %s", record["id"], reason)
    return jobs.modify(record["id"], fail) or jobs.get(record["id"])


@router.get("", response_model=list[JobStatus])
def list_jobs(jobs: JobStoreDep, celery_app: CeleryDep) -> list[JobStatus]:
    """Every job, newest first (a record that does not parse is logged and left out)."""
    statuses = []
    for record in jobs.list():
        try:
            statuses.append(_status(_reconciled(record, jobs, celery_app)))
        except ValidationError as exc:
            log.warning("job record %s is damaged and not listed: %s", record.get("id"), exc)
    return statuses


@router.get("/{job_id}", response_model=JobStatus, responses=_UNKNOWN_JOB)
def get_job(job_id: str, jobs: JobStoreDep, celery_app: CeleryDep) -> JobStatus:
    """One job's record: state, progress, losses, ETA, published versions, error."""
    return _status(_reconciled(jobs.get(job_id), jobs, celery_app))


@router.post(
    "/{job_id}/cancel",
    response_model=JobStatus,
    responses={
        **_UNKNOWN_JOB,
        202: {"model": JobStatus, "description": "Running: it stops at its next step."},
    },
)
def cancel_job(job_id: str, jobs: JobStoreDep, response: Response) -> JobStatus:
    """Cancel a job: a queued one at once (200), a running one at its next step (202)."""
    record = jobs.request_cancel(job_id)
    if record["state"] not in ("succeeded", "failed", "cancelled"):
        response.status_code = status.HTTP_202_ACCEPTED
    return _status(record)


@router.get(
    "/{job_id}/samples/latest",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}, "description": "The newest sample plot."}, **_UNKNOWN_JOB},
)
def latest_sample(job_id: str, jobs: JobStoreDep) -> FileResponse:
    """The newest sample plot of the job (PNG); 404 until the first one is written."""
    record = jobs.get(job_id)
    path = jobs.latest_sample(job_id)
    if path is None:
        if record.get("state") in FINAL_STATES:
            step = (record.get("progress") or {}).get("step") or 0
            state = record.get("state")
            raise ApiError(
                404, f"job {job_id} has no sample: it ended ({state}) at step {step}, before its first"
            )
        every = record.get("config", {}).get("sample_every")
        when = f" after {every} steps" if every else ""
        raise ApiError(404, f"job {job_id} has no sample yet: the first one appears{when}; try again later")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"})
