"""Training datasets over HTTP: upload an archive of colour photographs, list, describe, delete.

Every route needs the API key when one is configured (like /jobs). A job names an uploaded
dataset by its name (``POST /jobs {"dataset": "<name>"}``).
"""

from __future__ import annotations

import logging
import shutil
from functools import partial
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import BaseModel, Field

from common.jobs import JobStore
from common.settings import Settings
from models.config import DATASET_NAME_PATTERN
from service.datasets import DatasetLimits, DatasetStore, check_name, dataset_exists
from service.deps import JobStoreDep, SettingsDep, require_api_key
from service.errors import field_error
from service.schemas import ErrorResponse, ValidationErrorResponse, upload_body_doc
from service.uploads import receive_archive

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/datasets",
    tags=["datasets"],
    dependencies=[Depends(require_api_key)],
    responses={401: {"model": ErrorResponse, "description": "Missing or wrong API key."}},
)

ACTIVE_STATES = ("queued", "running")

_UNKNOWN = {404: {"model": ErrorResponse, "description": "No such dataset."}}

_REQUEST_BODY_DOC = upload_body_doc(
    "A zip or tar (.tar, .tar.gz, .tar.bz2, .tar.xz) of colour photographs (JPEG, PNG, WebP; subfolders "
    "kept): multipart field `archive` with a field `name`, or the raw archive with `?name=`. The type is "
    "found from the content.",
    "archive",
    ("application/zip", "application/x-tar", "application/gzip"),
    {"name": {"type": "string", "pattern": DATASET_NAME_PATTERN}},
)


class DatasetInfo(BaseModel):
    """A dataset: what its upload found (or, for a folder placed by hand, a scan of its file names)."""

    name: str
    images: int = Field(description="Photographs a training job will use.")
    skipped: int = Field(description="Archive members (or files) that are not usable photographs.")
    skipped_reasons: dict[str, int] = Field(
        default_factory=dict,
        description="Skipped members by reason: not an image file type, unsafe path, link, not a "
        "regular file, hidden or system file, nested archive, duplicate name, unreadable entry, "
        "unreadable image, too many pixels, too small.",
    )
    pixels: int | None = Field(None, description="Total pixels of the photographs (unknown for hand-placed).")
    bytes: int = Field(description="Total size of the photographs on disk.")
    created_at: float | None = None
    source: Literal["upload", "folder"] = Field(description="Uploaded, or a folder placed by hand.")
    jobs: list[str] = Field(default_factory=list, description="Queued or running jobs using it.")


def _limits(settings: Settings) -> DatasetLimits:
    return DatasetLimits(
        max_entries=settings.max_archive_entries,
        max_unpacked_bytes=settings.max_unpacked_bytes,
        max_image_pixels=settings.max_image_pixels,
        min_image_side=settings.min_image_side,
    )


def jobs_by_dataset(jobs: JobStore) -> dict[str, list[str]]:
    """Ids of the queued or running jobs, by the dataset their config names."""
    using: dict[str, list[str]] = {}
    for record in jobs.list():
        dataset = (record.get("config") or {}).get("dataset")
        if record.get("state") in ACTIVE_STATES and isinstance(dataset, str):
            using.setdefault(dataset, []).append(record["id"])
    return using


def active_jobs(jobs: JobStore, name: str) -> list[str]:
    """Ids of the queued or running jobs whose config names dataset ``name``."""
    return jobs_by_dataset(jobs).get(name, [])


def _info(description: dict[str, Any], jobs: list[str]) -> DatasetInfo:
    return DatasetInfo.model_validate({**description, "jobs": jobs})


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetInfo,
    openapi_extra=_REQUEST_BODY_DOC,
    responses={
        400: {"model": ErrorResponse, "description": "Damaged archive or interrupted upload."},
        409: {"model": ErrorResponse, "description": "A dataset of that name exists."},
        413: {"model": ErrorResponse, "description": "Upload, entry count or unpacked size over a limit."},
        415: {"model": ErrorResponse, "description": "Not a zip or tar archive."},
        422: {"model": ValidationErrorResponse, "description": "Bad or missing name, or no usable image."},
        507: {"model": ErrorResponse, "description": "The server's disk is full."},
    },
)
async def upload_dataset(
    request: Request,
    response: Response,
    settings: SettingsDep,
    name: Annotated[
        str | None, Query(description="The dataset's name (or send it as the multipart field `name`).")
    ] = None,
) -> DatasetInfo:
    """Upload an archive of colour photographs as a new dataset; answers 201 with what it holds.

    Each image is checked (header size, then a real decode); everything else is skipped and counted
    by reason. The dataset appears only once complete: a failure leaves nothing behind.
    """
    store = DatasetStore(settings.datasets_dir)
    if name is not None:
        check_name(name, "query")
        if store.exists(name):  # before the upload is read: no point receiving it
            raise dataset_exists(name)
    staging = await anyio.to_thread.run_sync(store.new_staging)
    try:
        received = await receive_archive(
            request,
            staging / "upload",
            settings.max_dataset_bytes,
            setting="COLORIZER_MAX_DATASET_BYTES",
            file_field="archive",
            text_fields=("name",),
        )
        form_name = received.fields.get("name") or None
        if name is not None and form_name is not None and form_name != name:
            raise field_error(
                "body", "name", f"name {form_name!r} differs from ?name={name}: send one", form_name
            )
        if name is None:
            if form_name is None:
                raise field_error(
                    "query",
                    "name",
                    "name the dataset: multipart field 'name' (curl -F name=flowers) or ?name=flowers",
                )
            name = check_name(form_name, "body")
        source = {"filename": received.filename, "bytes": received.size}
        description = await anyio.to_thread.run_sync(
            partial(store.import_archive, received.path, staging, name, _limits(settings), source)
        )
    finally:
        await anyio.to_thread.run_sync(partial(shutil.rmtree, staging, ignore_errors=True))
    response.headers["Location"] = f"/datasets/{name}"
    return _info(description, [])


@router.get("", response_model=list[DatasetInfo])
def list_datasets(settings: SettingsDep, jobs: JobStoreDep) -> list[DatasetInfo]:
    """Every dataset, by name: uploaded ones and folders placed by hand in the datasets directory."""
    store = DatasetStore(settings.datasets_dir)
    using = jobs_by_dataset(jobs)
    return [_info(store.describe(name), using.get(name, [])) for name in store.names()]


@router.get("/{name}", response_model=DatasetInfo, responses=_UNKNOWN)
def get_dataset(name: str, settings: SettingsDep, jobs: JobStoreDep) -> DatasetInfo:
    """One dataset: images, skipped members by reason, pixels, bytes, and the jobs using it."""
    description = DatasetStore(settings.datasets_dir).describe(name)
    return _info(description, active_jobs(jobs, name))


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**_UNKNOWN, 409: {"model": ErrorResponse, "description": "A queued or running job uses it."}},
)
def delete_dataset(name: str, settings: SettingsDep, jobs: JobStoreDep) -> Response:
    """Delete a dataset and its photographs; refused (409) while a queued or running job names it."""
    DatasetStore(settings.datasets_dir).delete(name, partial(active_jobs, jobs))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
