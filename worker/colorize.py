"""The colorize worker's task: one photograph of a big batch (``common.fanout`` sends them).

``colorizer worker --colorize`` runs it on the ``colorize`` queue with Celery's thread pool: one
process, one engine (``inference.engine``) that keeps the served model (and the versions batches ask
for) loaded and watches the store like the API's, and a thread per photograph in flight, whose model
calls the engine batches together. TensorFlow loads with the first photograph, not at import: a
training worker imports this module too (every task is registered everywhere) and never runs it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import shared_task
from celery.signals import worker_shutting_down

from common.fanout import decode_photo, encode_photo
from common.objectstore import follow
from common.queue import COLORIZE_QUEUE, COLORIZE_TASK
from common.settings import get_settings

log = logging.getLogger(__name__)

_lock = threading.Lock()
_pipeline: Any = None


def pipeline() -> Any:
    """This process's colorize pipeline, its engine started on first use."""
    global _pipeline
    with _lock:
        if _pipeline is None:
            from inference.engine import engine_from_settings
            from inference.pipeline import Pipeline
            from models.store import ModelStore, packaged_default

            settings = get_settings()
            settings.ensure_dirs()
            follow(settings.model_store_url, settings.models_dir)  # the model store in a bucket, if set
            store = ModelStore(settings.models_dir, packaged_default(settings.default_model_dir))
            # the photographs in flight are the pool's threads: the queue never needs more room
            engine = engine_from_settings(store, settings, max_queue=max(settings.max_queue, 256))
            engine.start()
            _pipeline = Pipeline(engine, settings.max_image_pixels, settings.min_image_side)
            log.info("colorize worker: engine started on %s", settings.models_dir)
    return _pipeline


@worker_shutting_down.connect
def _stop_engine(**_kwargs: Any) -> None:
    with _lock:
        if _pipeline is not None:
            _pipeline.engine.stop()


@shared_task(bind=True, name=COLORIZE_TASK, queue=COLORIZE_QUEUE, acks_late=True, ignore_result=False)
def colorize(
    self: Any,
    photo: str,
    version: int | str,
    image_format: str,
    render_size: int | None = None,
    hints: Any = None,
) -> dict[str, Any]:
    """One photograph's file (base64) colorized with model ``version`` and encoded as
    ``image_format``: ``{"data", "model_version", "worker"}``, or ``{"error", "kind", "worker"}`` when
    the photograph, its hints or the render size are refused (the inference error's sentence and
    class: the sender turns them into its own answer), or when this worker cannot load ``version``
    (``kind`` then names the store's error, or NoModelLoaded when the worker is stopping, and the
    sender colorizes the photograph itself)."""
    from common.store import BrokenVersion, UnknownVersion
    from inference.errors import BadHints, BadRenderSize, ImageRejected, NoModelLoaded

    worker = self.request.hostname  # the node name: the API's batch manifest says who colorized what
    try:
        data = decode_photo(photo)
    except ValueError as exc:  # a sender's bug, said as such
        return {
            "error": f"the task's photograph is not base64: {exc}",
            "kind": "ValueError",
            "worker": worker,
        }
    try:
        work = pipeline()
        model = work.engine.model(version)
        encoded = work.colorize_bytes(data, image_format, model, render_size, hints)
    except (ImageRejected, BadRenderSize, BadHints, UnknownVersion, BrokenVersion, NoModelLoaded) as exc:
        # NoModelLoaded: a warm shutdown gave up loading the version asked for (Engine.stop)
        return {"error": str(exc), "kind": type(exc).__name__, "worker": worker}
    return {"data": encode_photo(encoded), "model_version": model.version, "worker": worker}
