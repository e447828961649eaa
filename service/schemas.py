"""Response bodies of the API. The request body of POST /jobs is ``models.config.TrainConfig``."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


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

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"detail": "model version 7 does not exist (GET /models lists them)"}]
        }
    )

    detail: str = Field(description="What went wrong and what to do about it, in a sentence.")


class ValidationErrorResponse(ErrorResponse):
    """A 422: the summary sentence plus FastAPI's per-field errors (``loc``, ``msg``, ``type``)."""

    errors: list[dict[str, Any]] = Field(default_factory=list)


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    """Whether a model is loaded, which one, and the TensorFlow device it runs on."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ready": True,
                    "model_version": 3,
                    "device": "CPU:0",
                    "runtime": "openvino float32",
                    "detail": None,
                }
            ]
        }
    )

    ready: bool = Field(description="Whether /colorize can answer now.")
    model_version: int | str | None = Field(None, description='A version number, or "default".')
    policy: str = Field("latest", description="What it serves by default (COLORIZER_SERVE).")
    device: str | None = Field(None, description="The TensorFlow device the model runs on.")
    runtime: str | None = Field(
        None,
        description="What runs the served model at its render size: tensorflow or openvino "
        "(COLORIZER_INFERENCE_RUNTIME), with its precision and why it was chosen in runtime_reason.",
    )
    runtime_reason: str | None = Field(None, description="Why that runtime serves the model.")
    detail: str | None = Field(None, description="Why it is not ready (loading, no model), if it is not.")


class ModelInfo(BaseModel):
    """One version in the model store, or the packaged default model (version ``"default"``)."""

    version: int | str = Field(description='A version number, or "default" for the packaged model.')
    preset: str | None = Field(None, description="The preset it was trained with (lab, seed, ...).")
    image_size: int | None = Field(None, description="The side of the square the generator was trained at.")
    render_size: int | None = Field(
        None, description="The side /colorize runs it at unless ?render_size= asks another."
    )
    hints: bool = Field(
        False, description="Takes colour hints (POST /colorize with hints); others refuse hints."
    )
    created_at: float | None = Field(None, description="When it was published (Unix time).")
    served: bool = Field(False, description="The version /colorize uses when no ?model= is given.")
    labels: list[str] = Field(default_factory=list, description="The labels pointing at it.")
    loaded: bool = Field(False, description="Held in memory (served or cached).")
    runtime: str | None = Field(
        None, description='What runs it at its render size when loaded, e.g. "openvino float32".'
    )
    error: str | None = Field(None, description="Why this version cannot be served, if it cannot.")
    metrics: dict[str, Any] | None = Field(
        None,
        description="Training losses (train) and mean metrics on held-out photographs (validation): "
        "psnr, ssim, ciede2000, colourfulness, and the same for the grayscale input (grayscale_*).",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Everything recorded with it: training config, job, step, ..."
    )

    @field_validator("metrics", "metadata", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        return finite_or_none(value)


class ModelsResponse(BaseModel):
    """The packaged default model and every published version, and which one is served."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "served": 2,
                    "device": "CPU:0",
                    "versions": [
                        {"version": "default", "preset": "lab", "image_size": 128, "served": False},
                        {"version": 2, "preset": "lab", "image_size": 128, "served": True, "loaded": True},
                    ],
                }
            ]
        }
    )

    served: int | str | None = Field(None, description="The version /colorize uses when no ?model= is given.")
    policy: str = Field(
        "latest", description="COLORIZER_SERVE: latest, a pinned version, default, or a label's name."
    )
    labels: dict[str, int | str] = Field(default_factory=dict, description="Every label and its version.")
    replicas: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Every API replica on this store heard from in the last 5 minutes: what it serves "
        "and loads, its policy, and when it last looked at the store (Unix time).",
    )
    device: str | None = Field(None, description="The TensorFlow device models run on.")
    versions: list[ModelInfo] = Field(description="Oldest first: the default model, then version 1, 2, ...")


class JobProgress(BaseModel):
    """How far training has got."""

    step: int = Field(0, description="Training steps (batches) done so far.")
    total: int | None = Field(
        None, description="Steps the job will run in all (from steps or epochs); null until known."
    )
    epoch: int = Field(0, description="Passes over the dataset started so far.")


_JOB_EXAMPLE = {
    "id": "3f2b9c1e8a7d4c0b9e6f5a4d3c2b1a09",
    "state": "running",
    "config": {"dataset": "family-photos", "preset": "lab", "image_size": 128, "steps": 2000},
    "created_at": 1796203000.0,
    "started_at": 1796203004.5,
    "finished_at": None,
    "progress": {"step": 600, "total": 2000, "epoch": 4},
    "losses": {"g": 12.3, "d": 0.62, "l1": 0.116},
    "eta_seconds": 410.0,
    "published_versions": [2],
    "error": None,
    "attempts": 1,
    "resumed_from_step": None,
    "heartbeat_at": 1796203180.2,
}


class JobStatus(BaseModel):
    """A training job's record, as the worker last wrote it."""

    model_config = ConfigDict(json_schema_extra={"examples": [_JOB_EXAMPLE]})

    id: str = Field(description="The job's id (the Location of POST /jobs ends with it).")
    state: JobState = Field(
        description="queued: waiting for a worker; running: a worker trains it; succeeded: done; "
        "failed: stopped by an error (see error); cancelled: stopped by POST /jobs/{id}/cancel."
    )
    config: dict[str, Any] = Field(description="The training configuration, defaults filled in.")
    created_at: float | None = Field(None, description="When it was submitted (Unix time, seconds).")
    started_at: float | None = Field(None, description="When a worker first started it (Unix time).")
    finished_at: float | None = Field(
        None, description="When it succeeded, failed or was cancelled (Unix time)."
    )
    progress: JobProgress = Field(default_factory=JobProgress, description="Steps and epochs so far.")
    losses: dict[str, float | None] = Field(
        default_factory=dict,
        description="The latest training losses: g (the generator's, adversarial plus weighted L1), "
        "d (the discriminator's) and l1 (mean absolute error of the output); null where not finite.",
    )
    eta_seconds: float | None = Field(
        None, description="Estimated seconds until the last step; null when not running or not known yet."
    )
    published_versions: list[int] = Field(
        default_factory=list, description="Model versions this job has published so far (GET /models)."
    )
    error: str | None = Field(None, description="Why it failed, in a sentence; null otherwise.")
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


class LabelsResponse(BaseModel):
    """Every label and the version it points at, and the serving policy."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"policy": "stable", "labels": {"stable": 3, "canary": 5}}]}
    )

    policy: str = Field(description="COLORIZER_SERVE: latest, a pinned version, default, or a label's name.")
    labels: dict[str, int | str] = Field(description='Label -> version (a number, or "default").')


class LabelTarget(BaseModel):
    """Where to point a label."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 3}]})

    version: int | str = Field(description='A version number from GET /models, or "default".')

    @field_validator("version", mode="before")
    @classmethod
    def _not_a_truth_value(cls, value: Any) -> Any:
        # pydantic takes true for 1: {"version": true} moved the label to version 1
        if isinstance(value, bool):
            raise ValueError(f'version takes a version number or "default", not {str(value).lower()}')
        return value


class LabelMoved(BaseModel):
    """A label after PUT: the version it points at, and the one it pointed at before (if any)."""

    label: str
    version: int | str
    previous: int | str | None = None
