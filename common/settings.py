"""One settings object for the API, the worker and the CLI (env prefix ``COLORIZER_``).

This module must stay importable without FastAPI, Celery or TensorFlow: the worker and the CLI
read it too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.labels import Policy, parse_policy
from common.objectstore import parse_url

_BROKER_SCHEMES = ("redis://", "rediss://", "sqla+", "amqp://", "pyamqp://", "memory://")
_BACKEND_SCHEMES = ("redis://", "rediss://", "db+", "rpc://", "cache+")
# The password of a URL's userinfo: redis://:PASSWORD@host, db+postgresql://user:PASSWORD@host.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@]*:)(?P<password>[^@/]*)@")


def redact_url(url: str | None) -> str | None:
    """``url`` with its password, if any, replaced by ``***`` (for logs and error messages)."""
    if url is None:
        return None
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}***@" if m["password"] else m[0], url)


class Settings(BaseSettings):
    """Every knob of the service. Invalid values stop the process at start-up with the field name."""

    # hide_input_in_errors: a rejected value (a URL with a password, say) never reaches a traceback.
    model_config = SettingsConfigDict(env_prefix="COLORIZER_", extra="ignore", hide_input_in_errors=True)

    data_dir: Path = Field(Path("./var"), description="Holds models/, datasets/ and jobs/.")
    default_model_dir: Path | None = Field(
        None,
        description="The folder of the model served as version 'default' while the store has none. "
        "Unset: the default model packaged with the code (models/default).",
    )
    broker_url: str | None = Field(
        None, description="Celery broker. Unset: an embedded SQLite broker in the data directory."
    )
    result_backend: str | None = Field(
        None, description="Celery result backend. Unset: Redis if the broker is Redis, else SQLite."
    )
    api_key: SecretStr | None = Field(
        None, description="When set, /jobs and every state-changing endpoint require X-API-Key."
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest upload body.")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest decoded image (width x height) accepted."
    )
    min_image_side: int = Field(
        8, ge=1, le=4096, description="Shortest image side accepted (a 1-pixel strip is not a photograph)."
    )
    max_render_size: int = Field(1024, ge=16, description="Largest render_size a request may ask.")
    max_dataset_bytes: int = Field(
        1024**3, ge=1024, description="Largest dataset archive upload (POST /datasets), streamed to disk."
    )
    max_batch_bytes: int = Field(
        200 * 1024**2,
        ge=1024,
        description="Largest archive upload to POST /colorize/batch, streamed to disk.",
    )
    max_archive_entries: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="Most entries (files, folders, links) an uploaded archive may hold.",
    )
    max_unpacked_bytes: int = Field(
        4 * 1024**3,
        ge=1024,
        description="Most bytes an uploaded archive may unpack to, counted while reading (zip-bomb guard).",
    )
    max_batch_files: int = Field(
        100, ge=1, le=100_000, description="Most files one POST /colorize/batch archive may hold."
    )
    reload_interval: float = Field(
        2.0, gt=0, description="Seconds between looks at the model store for a new version."
    )
    serve: str = Field(
        "latest",
        description="What /colorize serves when a request names no model: 'latest' (the newest "
        "loadable version), a version number (pinned), 'default' (the packaged model), or a label's "
        "name (the version it points at; PUT /models/labels/<name> moves it).",
    )
    keep_versions: int = Field(
        0,
        ge=0,
        le=1_000_000,
        description="Retention: after each publish, delete all versions but the newest N and the "
        "labelled and pinned ones. 0 keeps every version.",
    )
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="Where the API runs the model: auto picks the GPU when one is visible."
    )
    inference_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Arithmetic of the served model: auto picks bfloat16 where the CPU (AVX512_BF16, "
        "AMX) or GPU (compute capability 8.0+) has it, float32 elsewhere.",
    )
    inference_runtime: Literal["auto", "tensorflow", "openvino"] = Field(
        "auto",
        description="What runs the model on a CPU: auto measures TensorFlow and OpenVINO on each model "
        "version as it loads and serves with the faster (docs/operations.md); GPUs always run TensorFlow.",
    )
    max_batch_size: int = Field(8, ge=1, le=64, description="Most photographs run in one model call.")
    batch_timeout_ms: float = Field(
        5.0, ge=0, le=10_000, description="Longest wait for more photographs after the first one queued."
    )
    max_queue: int = Field(
        64, ge=1, le=10_000, description="Photographs waiting for the model before /colorize answers 503."
    )
    batches_in_flight: int = Field(
        1,
        ge=1,
        le=4,
        description="Model calls that may run at once: past the first, each starts only on a full batch "
        "(more throughput under heavy load with TensorFlow; OpenVINO runs one call at a time anyway; "
        "docs/performance.md).",
    )
    visibility_timeout: int = Field(
        86_400,
        ge=60,
        description="Seconds before Redis redelivers an unacknowledged job; longer than any job.",
    )
    recovery_interval: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="Seconds between a worker's looks for started jobs nobody is training (to re-queue).",
    )
    train_max_memory_mb: int = Field(
        0,
        ge=0,
        description="Resident memory (MB) a training job's process may reach before the job is stopped "
        "and failed with the reason (worker.memory); 0: what it holds when training starts plus 90% of "
        "the memory then available (the machine's, or its container's).",
    )
    unseen_job_seconds: float = Field(
        600.0,
        ge=1,
        le=86_400,
        description="How long a worker without a job's record (its data directory is not the API's) "
        "keeps handing the job back to the queue for another worker before the job is failed.",
    )
    model_store_url: str | None = Field(
        None,
        description="An S3-compatible bucket the model store follows, s3://bucket/prefix "
        "(common.objectstore): versions are published there and pulled into each machine's models folder; "
        "credentials and "
        "endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL. Unset: the folder only.",
    )
    batch_fanout: Literal["auto", "off"] = Field(
        "auto",
        description="Who colorizes POST /colorize/batch: auto sends each photograph to the colorize "
        "workers (colorizer worker --colorize) when a broker is set and one of them answers, so the API "
        "stays responsive; off (and the embedded broker) colorizes in the API itself.",
    )
    colorize_worker_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="How much a colorize worker lowers its CPU priority (nice): a batch is throughput work, "
        "and on a machine it shares with an API, that API's single /colorize requests go first. 0: none.",
    )
    fanout_stall_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A photograph that a colorize worker started this long ago is sent again if that worker "
        "no longer answers Celery's ping (it died), twice at most; then the API colorizes it itself.",
    )
    fanout_queue_seconds: float = Field(
        120.0,
        gt=0,
        le=86_400,
        description="A photograph that no colorize worker has started in this long is sent again (twice at "
        "most), or colorized by the API when no colorize worker answers.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # api_key is a SecretStr already; URLs may carry a password too.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in ("broker_url", "result_backend") else value

    @field_validator("broker_url", "result_backend")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: object) -> object:
        # docker-compose passes ${COLORIZER_API_KEY:-} as an empty string when the key is unset;
        # an empty key must mean "no key", not "every request fails authentication".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("model_store_url")
    @classmethod
    def _bucket_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_url(value)  # ValueError names the problem
        return value.strip()

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(_BROKER_SCHEMES):
            raise ValueError(
                f"unsupported broker URL {redact_url(value)!r}: use redis://host:port/db, or leave it unset "
                "for the embedded SQLite broker"
            )
        return value

    @field_validator("result_backend")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(_BACKEND_SCHEMES):
            raise ValueError(
                f"unsupported result backend URL {redact_url(value)!r}: use redis://host:port/db or "
                "db+<sqlalchemy URL>, or leave it unset"
            )
        return value

    @field_validator("serve")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        return str(parse_policy(value))  # raises ValueError naming what it may be

    @property
    def policy(self) -> Policy:
        return parse_policy(self.serve)

    @field_validator("data_dir")
    @classmethod
    def _data_dir_usable(cls, value: Path) -> Path:
        # A field validator, so the error is reported against data_dir (COLORIZER_DATA_DIR).
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a directory")
        return value

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def runtime_cache_dir(self) -> Path:
        """Model versions converted for another runtime (OpenVINO), kept so a restart does not
        convert them again."""
        return self.data_dir / "cache"

    @property
    def effective_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @property
    def effective_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.effective_broker_url.startswith(("redis://", "rediss://")):
            return self.effective_broker_url
        return f"db+sqlite:///{(self.data_dir / 'results.sqlite').resolve()}"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url is None

    def ensure_dirs(self) -> None:
        """Create the data directory layout (idempotent)."""
        for path in (self.models_dir, self.datasets_dir, self.jobs_dir):
            path.mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
