"""Request dependencies as ``Annotated`` aliases, so routes read like sentences.

Everything hangs off ``app.state`` (set by ``create_app``); unit tests swap a dependency with
``app.dependency_overrides[get_celery] = ...``. FastAPI calls a plain-def dependency in its thread
pool, so the ones that only read ``app.state`` are ``async``: on the event loop, no thread hop (two
of them cost about 0.5 ms of CPU per photograph on /colorize); only those that may block
(``get_celery``, ``get_fanout``) are plain functions.
"""

from __future__ import annotations

import secrets
import threading
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Request

from common.fanout import RemoteColorizer
from common.jobs import JobStore
from common.settings import Settings
from inference.engine import Engine
from inference.pipeline import Pipeline
from models.store import ModelStore
from service.errors import ApiError

_celery_lock = threading.Lock()


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


async def get_engine(request: Request) -> Engine:
    """The inference engine."""
    return request.app.state.engine


async def get_pipeline(request: Request) -> Pipeline:
    """The colorize pipeline on the engine, with the upload limits of the settings."""
    return request.app.state.pipeline


async def get_model_store(request: Request) -> ModelStore:
    """The model store under ``settings.models_dir``."""
    return request.app.state.model_store


async def get_job_store(request: Request) -> JobStore:
    """The job records under ``settings.jobs_dir``."""
    return request.app.state.job_store


def get_celery(request: Request) -> Celery:
    """The Celery app used to queue training jobs, created on first use from the app's settings.

    Raises ApiError 503 when the worker package cannot be imported.
    """
    state = request.app.state
    with _celery_lock:
        if state.celery is None:
            try:
                from common.queue import create_celery
            except ImportError as exc:
                raise ApiError(503, f"the job queue is not available on this server: {exc}") from exc
            state.celery = create_celery(state.settings)
    return state.celery


# The most photographs of one batch in flight to the colorize workers at once.
MAX_FANOUT_WINDOW = 64


def get_fanout(request: Request) -> tuple[RemoteColorizer | None, int]:
    """How this request's batch is colorized: (the colorize workers' sender, how many photographs to
    keep in flight with them), or (None, 0) when this server colorizes it itself: fan-out off, the
    embedded broker, or no colorize worker answering (``RemoteColorizer.workers``, remembered a few
    seconds). Blocking (it may ask the workers): call it from a thread."""
    state = request.app.state
    settings: Settings = state.settings
    if settings.batch_fanout == "off" or settings.uses_embedded_broker:
        return None, 0
    try:
        app = get_celery(request)
    except ApiError:
        return None, 0
    with _celery_lock:
        if getattr(state, "fanout", None) is None:
            state.fanout = RemoteColorizer(
                app, stall_seconds=settings.fanout_stall_seconds, queue_seconds=settings.fanout_queue_seconds
            )
    workers = state.fanout.workers()
    if not workers:
        return None, 0
    # each worker has twice a model batch of threads (colorizer worker --colorize): keep them all busy
    return state.fanout, min(MAX_FANOUT_WINDOW, 2 * settings.max_batch_size * len(workers))


async def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Header(description="The API key, when the server has one.")] = None,
    authorization: Annotated[str | None, Header(description="Alternatively: Bearer <key>.")] = None,
) -> None:
    """Check ``X-API-Key`` or ``Authorization: Bearer`` against ``settings.api_key`` (when set).

    Raises ApiError 401 when the key is missing or wrong.
    """
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    given = x_api_key
    if given is None and authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer":
            given = token.strip()
    headers = {"WWW-Authenticate": "Bearer"}
    if not given:
        raise ApiError(
            401,
            "this endpoint needs the API key: send it as header X-API-Key (or Authorization: Bearer <key>)",
            headers=headers,
        )
    if not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise ApiError(
            401, "the API key is wrong: check X-API-Key against COLORIZER_API_KEY", headers=headers
        )


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
StoreDep = Annotated[ModelStore, Depends(get_model_store)]
JobStoreDep = Annotated[JobStore, Depends(get_job_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
ApiKeyDep = Annotated[None, Depends(require_api_key)]
