"""Response bodies of the API. The request body of POST /jobs is ``models.config.TrainConfig``."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinity (a diverged loss, say) replaced by None: JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def upload_body_doc(
    description: str,
    field: str,
    media_types: tuple[str, ...],
    form_fields: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """OpenAPI ``requestBody`` of a route that reads its upload itself (streamed, size-limited):
    a multipart file ``field`` (plus ``form_fields``), or the raw file with one of ``media_types``."""
    binary = {"type": "string", "format": "binary"}
    extra = form_fields or {}
    multipart = {
        "type": "object",
        "required": [field, *extra],
        "properties": {field: binary, **extra},
    }
    content = {"multipart/form-data": {"schema": multipart}} | {t: {"schema": binary} for t in media_types}
    return {"requestBody": {"required": True, "description": description, "content": content}}


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ErrorResponse(BaseModel):
    """Every error: a sentence saying what went wrong and what to do about it."""

    detail: str


class ValidationErrorResponse(ErrorResponse):
    """A 422: the summary sentence plus FastAPI's per-field errors (``loc``, ``msg``, ``type``)."""

    errors: list[dict[str, Any]] = Field(default_factory=list)


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    """Whether a model is loaded, which one, and the TensorFlow device it runs on."""

    ready: bool
    model_version: int | str | None = Field(None, description='A version number, or "default".')
    device: str | None = None
    detail: str | None = None


class ModelInfo(BaseModel):
    """One version in the model store, or the packaged default model (version ``"default"``)."""

    version: int | str = Field(description='A version number, or "default" for the packaged model.')
    preset: str | None = None
    image_size: int | None = None
    created_at: float | None = None
    served: bool = Field(False, description="The version /colorize uses when no ?model= is given.")
    loaded: bool = Field(False, description="Held in memory (served or cached).")
    error: str | None = Field(None, description="Why this version cannot be served, if it cannot.")
    metrics: dict[str, Any] | None = Field(
        None,
        description="Training losses (train) and mean metrics on held-out photographs (validation): "
        "psnr, ssim, ciede2000, colourfulness, and the same for the grayscale input (grayscale_*).",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metrics", "metadata", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        return finite_or_none(value)


class ModelsResponse(BaseModel):
    served: int | str | None = Field(None, description="The version /colorize uses when no ?model= is given.")
    device: str | None = None
    versions: list[ModelInfo]


class JobProgress(BaseModel):
    step: int = 0
    total: int | None = None
    epoch: int = 0


class JobStatus(BaseModel):
    """A training job's record, as the worker last wrote it."""

    id: str
    state: JobState
    config: dict[str, Any]
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    progress: JobProgress = Field(default_factory=JobProgress)
    losses: dict[str, float | None] = Field(default_factory=dict)
    eta_seconds: float | None = None
    published_versions: list[int] = Field(default_factory=list)
    error: str | None = None
    attempts: int = Field(0, description="Times a worker started it (a resumed job counts each start).")
    resumed_from_step: int | None = Field(
        None, description="The checkpoint step its latest start resumed from (none: from the beginning)."
    )
    heartbeat_at: float | None = Field(None, description="When its worker last reported progress.")

    @field_validator("losses", "eta_seconds", "config", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        return finite_or_none(value)


class JobQueueError(ErrorResponse):
    """A 503 from POST /jobs: the job was recorded but could not be queued, and is marked failed."""

    job: JobStatus
