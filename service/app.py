"""The FastAPI application factory.

Run it with ``uvicorn --factory service.app:create_app``. Importing this module does not import
TensorFlow: the engine does, in its own thread, when the app starts.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from fastapi_offline import FastAPIOffline
from PIL import Image

from common.jobs import JobStore
from common.objectstore import follow
from common.settings import Settings, get_settings
from inference.engine import Engine, engine_from_settings
from inference.pipeline import Pipeline
from models.store import ModelStore, packaged_default
from service.errors import install_error_handlers
from service.metrics import RequestMetricsMiddleware, ServiceMetrics
from service.routers import batch, colorize, datasets, health, jobs, metrics, models, web

log = logging.getLogger(__name__)

# Photographs decoded, prepared or finished at once (the model itself runs in the engine's one
# inference thread): TensorFlow already spreads each over the cores, and more would only multiply
# peak memory (each holds a decoded photograph and its Lab copies).
MAX_CONCURRENT_INFERENCES = max(1, min(4, os.cpu_count() or 1))


# glibc's malloc gives threads that contend for it arenas of their own (up to 8 a core) and hands
# little of their free memory back. With 2 MP photographs in flight in several threads, the API's
# RSS climbed from about 1.75 GB after 100 requests to 2.0-2.05 GB within 1,500; with two arenas
# it stayed between 1.70 and 1.84 GB (bench/memory.py --megapixels 2: three runs without the cap,
# two with it set here and two with MALLOC_ARENA_MAX=2).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h


def limit_malloc_arenas(count: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``count``, unless MALLOC_ARENA_MAX is set in the environment
    (glibc applied that at start). Call it before the process starts threads: glibc fixes its
    limit once it has more than 8 arenas, and existing arenas stay. ``create_app`` runs before
    uvicorn's and the engine's threads; the Docker image sets MALLOC_ARENA_MAX as well. Returns
    whether glibc took the setting; False where the C library has no ``mallopt`` (not glibc)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError, TypeError):  # TypeError: Windows has no CDLL(None)
        return False
    return mallopt(_M_ARENA_MAX, count) == 1


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine: Engine = app.state.engine
    settings.ensure_dirs()
    app.state.inference_limiter = anyio.CapacityLimiter(MAX_CONCURRENT_INFERENCES)
    # Pillow's own bomb guard (process-wide), behind the explicit size check in /colorize.
    previous_pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    engine.start()
    log.info("colorizer API up: models in %s, device preference %s", settings.models_dir, settings.device)
    try:
        yield
    finally:
        if getattr(app.state, "fanout", None) is not None:
            app.state.fanout.close()
        await anyio.to_thread.run_sync(engine.stop)
        Image.MAX_IMAGE_PIXELS = previous_pillow_limit


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new API instance for ``settings`` (default: from the environment, ``COLORIZER_*``).

    The engine starts with the app's lifespan: it loads the newest model version in the
    background (``/readyz`` answers 503 until then) and watches the store for newer ones.
    """
    settings = settings or get_settings()
    limit_malloc_arenas()  # before the engine's and the request threads start
    follow(settings.model_store_url, settings.models_dir)  # the model store in a bucket, if set
    store = ModelStore(settings.models_dir, packaged_default(settings.default_model_dir))
    # /docs and /redoc load Swagger UI and ReDoc from this server (works offline); no call to
    # Swagger's online validator either
    app = FastAPIOffline(
        title="Colorizer",
        summary="Colorize grayscale photographs with a pix2pix generator; train new ones.",
        version="0.1.0",
        lifespan=_lifespan,
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.settings = settings
    app.state.model_store = store
    app.state.job_store = JobStore(settings.jobs_dir)
    service_metrics = ServiceMetrics(max_batch_size=settings.max_batch_size)
    engine = engine_from_settings(store, settings, observer=service_metrics)
    service_metrics.watch_queue(engine.queue_depth)
    app.state.engine = engine
    app.state.pipeline = Pipeline(engine, settings.max_image_pixels, settings.min_image_side)
    app.state.metrics = service_metrics
    app.add_middleware(RequestMetricsMiddleware, metrics=service_metrics)
    app.state.celery = None  # created on first use by service.deps.get_celery
    app.state.fanout = None  # the colorize workers' sender, created on first use by service.deps.get_fanout
    install_error_handlers(app)
    answer_head(app.router)  # /docs and /redoc
    for module in (health, colorize, batch, models, jobs, datasets, metrics, web):
        answer_head(module.router)
        app.include_router(module.router)
    return app


def answer_head(router: APIRouter) -> None:
    """HEAD on every GET route of ``router``: GET's status and headers, no body (uvicorn sends none
    for a HEAD; a file answer does not read its file), as HTTP asks of a server and Starlette's own
    routes do. FastAPI's routes do not add it (fastapi#1773), so a health or link checker probing
    with HEAD got a 405. Each is a route of its own, with GET's dependencies (the API key where GET
    asks for it), out of the OpenAPI schema: HEAD is implied by GET. Call it before the router is
    included in the app (``app.routes`` holds included routers whole, not their routes)."""
    routes = [route for route in router.routes if isinstance(route, APIRoute)]
    # the routers are module objects: a second app (tests build many) must not add twins again
    answered = {route.path for route in routes if "HEAD" in route.methods}
    for route in routes:
        if "GET" not in route.methods or route.path in answered:
            continue
        router.add_api_route(
            route.path.removeprefix(router.prefix),  # add_api_route puts the prefix back
            route.endpoint,
            methods=["HEAD"],
            name=f"{route.name}_head",
            response_model=route.response_model,
            response_class=route.response_class,
            status_code=route.status_code,
            # the router's own are added again by add_api_route
            dependencies=[d for d in route.dependencies if d not in router.dependencies],
            response_model_include=route.response_model_include,
            response_model_exclude=route.response_model_exclude,
            response_model_by_alias=route.response_model_by_alias,
            response_model_exclude_unset=route.response_model_exclude_unset,
            response_model_exclude_defaults=route.response_model_exclude_defaults,
            response_model_exclude_none=route.response_model_exclude_none,
            include_in_schema=False,
        )
