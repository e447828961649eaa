"""The inference engine: which generator is served, hot reload from the model store, and inference.

This is the only module of the API's process that uses TensorFlow, and it imports it (with ``models.colorize``
and ``models.device``) lazily, when the engine first needs it, so ``import service.app`` stays cheap.

Serving model: ``engine.current`` is swapped atomically (one reference assignment) after the new
version has loaded and colorized a dummy image; a request keeps the ``LoadedModel`` it took to
the end. Which version is served is the policy's (``inference.versions``: latest, pinned, or a
label); other versions asked for live in a small LRU cache; a version that fails to load is
refused, here and through the store by every replica, until its files change
(``inference.failures``).

Inference (TensorFlow Serving style dynamic batching, docs/operations.md "How /colorize runs"):
callers ``prepare`` in their thread, ``submit`` the model input to the inference thread
(``inference.batcher``; with ``batches_in_flight`` above 1, more threads for full batches), which
runs queued inputs of one version and size as one compiled call padded to a bucket (1, 2, 4, 8),
and ``finish`` in their thread. A full queue answers EngineBusy.
A version is warmed up (every bucket traced and run) before it is swapped in, in float32 or
bfloat16 as ``precision`` says (auto: bfloat16 where the hardware has it).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from common.labels import LATEST, Policy
from common.settings import Settings
from common.store import (
    BrokenVersion,
    UnknownVersion,
    Version,
)
from inference.batcher import DynamicBatcher, QueueFull, batch_buckets, bucket_for
from inference.errors import BadRenderSize, EngineBusy, NoModelLoaded
from inference.failures import FailedVersions, about_the_files, one_line
from inference.versions import ServingReporter, VersionChooser
from models.runtimes import LoadCancelled
from models.store import LoadedModel, ModelStore

log = logging.getLogger(__name__)

WARMUP_SIDE = 16  # the dummy photograph colorized before a version is swapped in


class EngineObserver(Protocol):
    """What the engine reports (service.metrics.ServiceMetrics implements it)."""

    def model_swapped(self, model: LoadedModel, precision: str, device: str | None, runtime: str) -> None: ...

    def load_failed(self, version: Version) -> None: ...

    def runtime_fallback(self, version: Version, runtime: str) -> None: ...

    def model_loaded(self, version: Version, runtime: str, precision: str) -> None: ...

    def model_dropped(self, version: Version) -> None: ...

    def batch_done(self, size: int, seconds: float, waited: float) -> None: ...


class Engine:
    """Serves generators from a ModelStore; thread-safe.

    ``start()`` runs a daemon thread that configures TensorFlow, loads the version the policy names
    and then looks at the store every ``reload_interval`` seconds for a change.
    """

    def __init__(
        self,
        store: ModelStore,
        *,
        device_preference: str = "auto",
        reload_interval: float = 2.0,
        max_render_size: int = 1024,
        cache_size: int = 2,
        precision: str = "auto",
        max_batch_size: int = 8,
        batch_timeout: float = 0.005,
        max_queue: int = 64,
        batches_in_flight: int = 1,
        observer: EngineObserver | None = None,
        policy: Policy | str = LATEST,
        runtime: str = "auto",
        runtime_cache: Path | str | None = None,
    ):
        self.store = store
        self.chooser = VersionChooser(store, policy)
        self.reporter = ServingReporter(store)
        self.device_preference = device_preference
        self.reload_interval = reload_interval
        self.max_render_size = max_render_size
        self.cache_size = cache_size
        self.precision_preference = precision
        self.runtime_preference = runtime
        self.runtime_cache = runtime_cache
        self.buckets = batch_buckets(max_batch_size)
        self.observer = observer
        self._batcher = DynamicBatcher(
            self._run_batch,
            max_batch_size=max_batch_size,
            timeout=batch_timeout,
            max_queue=max_queue,
            in_flight=batches_in_flight,
            name="inference",
            on_batch=observer.batch_done if observer is not None else None,
        )
        self._current: LoadedModel | None = None
        self._device: str | None = None
        self._precision: str | None = None
        self._cache: OrderedDict[Version, LoadedModel] = OrderedDict()
        self._failures = FailedVersions(store)
        self._state_lock = threading.Lock()  # guards _current and _cache
        self._load_lock = threading.Lock()  # one load at a time: no duplicate loads, bounded memory
        self._setup_lock = threading.Lock()
        self._serving_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.setup_error: str | None = None
        self.loading: Version | None = None  # the version being loaded and warmed up, if any
        self._looked = threading.Event()  # the watcher's first look at the store is over

    # -- state ---------------------------------------------------------------------------------

    @property
    def current(self) -> LoadedModel | None:
        """The model served by default, or None before the first one has loaded."""
        return self._current

    @property
    def device(self) -> str | None:
        """The device name ("GPU:0" or "CPU:0") once TensorFlow is configured, else None."""
        return self._device

    @property
    def precision(self) -> str | None:
        """The inference precision, "float32" or "bfloat16", once TensorFlow is configured, else None."""
        return self._precision

    @property
    def batcher(self) -> DynamicBatcher:
        """The queue and the inference thread."""
        return self._batcher

    @property
    def ready(self) -> bool:
        """True when a model is loaded and requests can be served."""
        return self._current is not None

    def cached_versions(self) -> list[Version]:
        """Versions held in memory besides the served one, least recently used first."""
        with self._state_lock:
            return list(self._cache)

    def loaded_runtimes(self) -> dict[Version, str]:
        """What runs each version held in memory at its render size, e.g. "openvino float32"."""
        with self._state_lock:
            models = [*self._cache.values(), *([self._current] if self._current is not None else [])]
        return {m.version: m.serving.runtime_name for m in models if m.serving}

    def failed_versions(self) -> dict[Version, str]:
        """Versions that failed to load, with the reason."""
        return self._failures.reasons()

    # -- lifecycle ---------------------------------------------------------------------------

    def setup(self) -> str:
        """Import TensorFlow, pick the device and the precision (idempotent); returns the device name."""
        with self._setup_lock:
            if self._device is None:
                from models.device import configure_tensorflow, inference_precision

                device = configure_tensorflow(self.device_preference)
                self._precision = inference_precision(self.precision_preference, device)
                self._device = device
                log.info(
                    "inference in %s on %s, batches of up to %d", self._precision, device, self.buckets[-1]
                )
            return self._device

    def start(self) -> None:
        """Start the watcher thread (it sets up TensorFlow and loads the policy's version first)."""
        if self._thread is not None and self._thread.is_alive():
            return
        # a fresh event: a watcher that outlived ``stop`` (stuck in a store read past its timeout)
        # keeps its own, set, and ends when it returns, rather than running beside the new one
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, args=(self._stop,), name="model-watcher", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the watcher thread and wait for it, then the inference thread (the batch running
        finishes; queued requests fail). A load in progress is given up at its next step (between
        two warm-up calls, before converting or before a call of ``auto``'s measurement; reading
        the weights finishes first): nothing of it is served or remembered as broken."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the model watcher did not stop within %.0f s", timeout)
            self._thread = None
        self._batcher.stop(timeout)

    def _watch(self, stop: threading.Event) -> None:
        try:
            self.setup()
        except Exception as exc:
            self.setup_error = f"TensorFlow could not be set up: {exc}"
            log.exception("TensorFlow could not be set up; no model will be served")
            return
        while not stop.is_set():
            try:
                self.refresh()
            except Exception:  # the watcher must outlive any surprise in one look at the store
                log.exception("looking for a new model version failed; trying again later")
            if stop.is_set():
                break  # stopped during that look: what it found is the next watcher's to report
            self._looked.set()  # also after a look that failed
            self._report()
            stop.wait(self.reload_interval)
        if stop is self._stop:  # not started again meanwhile: nobody else reports for this replica
            self.reporter.withdraw()

    def waiting_reason(self) -> str:
        """Why no model is served (yet), in a sentence for /readyz and a 503."""
        if self.setup_error:
            return self.setup_error
        if self._device is None:
            return "starting: TensorFlow is being set up, then the model is loaded"
        loading = self.loading
        if loading is not None:
            return f"starting: loading model version {loading}"
        if not self._looked.is_set():
            return "starting: looking for the model version to serve"
        unserved = self.chooser.unserved_reason(self.failed_versions())
        if unserved is not None:
            return unserved
        failed = self.failed_versions()
        if failed:
            reasons = "; ".join(f"version {v}: {reason}" for v, reason in list(failed.items())[:3])
            return f"no model is loaded: no version in the store can be loaded ({reasons})"
        return (
            "no model is loaded: the model store has no version yet and no default model is installed "
            "(train one with POST /jobs)"
        )

    # -- loading -----------------------------------------------------------------------------

    def _load_and_warm(self, version: Version) -> LoadedModel:
        """Load ``version`` and colorize a dummy image with it; raises UnknownVersion or BrokenVersion.

        A failure other than a missing version is remembered, so it is not retried until the
        version's files change.
        """
        reason = self._failures.known(version)
        if reason is not None:
            raise BrokenVersion(reason)
        signature = self._failures.signature(version)
        try:
            model = self.store.load(version)
            self._warm_up(model)
        except (UnknownVersion, LoadCancelled):
            raise
        except Exception as exc:  # BrokenVersion, or anything a bad generator does on first use
            if isinstance(exc, BrokenVersion):
                # the store names the folder; clients need the version, not the server's paths
                reason = one_line(self.store.public_reason(exc))
            else:
                reason = (
                    f"version {version} fails on a test image: {type(exc).__name__}: "
                    f"{one_line(self.store.public_reason(exc))}"
                )
            log.debug("model version %s failed to load or warm up", version, exc_info=exc)
            self._failures.record(version, signature, reason, share=about_the_files(exc))
            if self.observer is not None:
                self.observer.load_failed(version)
            log.warning("model version %s cannot be served and is skipped: %s", version, reason)
            raise BrokenVersion(reason) from exc
        self._failures.forget(version)
        return model

    def _candidates(self, current: LoadedModel | None) -> list[Version]:
        return self.chooser.candidates(current.version if current is not None else None)

    def refresh(self) -> Version | None:
        """One look at the store: swap in the version the policy names (``inference.versions``;
        under ``latest``, the newest loadable version above the served one).

        Under ``latest``, with nothing served and no loadable version, the packaged default is
        swapped in (when installed); a published version replaces it at a later look. Returns the
        version swapped in, or None when nothing changed. Broken versions are skipped (a lower,
        newer-than-served version may then be chosen) and the served model stays.
        """
        self.setup()
        try:
            current = self._current
            if current is not None and self._failures.refused_elsewhere(current.version) is not None:
                return self._replace_refused(current)
            return self._look(current, current)
        finally:
            self._looked.set()

    def _replace_refused(self, current: LoadedModel) -> Version | None:
        """Another replica refused the served version: serve what this one would serve without it,
        or nothing (replicas must not disagree about a broken version)."""
        log.warning("model version %s was refused by another replica; not serving it", current.version)
        version = self._look(current, None)
        if version is None:
            with self._load_lock, self._state_lock:
                if self._current is current:
                    self._current = None
        with self._state_lock:
            self._cache.pop(current.version, None)
        return version

    def _look(self, current: LoadedModel | None, served: LoadedModel | None) -> Version | None:
        """Swap in the best candidate instead of ``served`` (what the policy compares against),
        unless the model served is no longer ``current``."""
        for version in self._candidates(served):
            if self._failures.known(version) is not None:
                continue
            with self._load_lock:
                if self._current is not current:  # another caller of refresh() swapped meanwhile
                    return None
                with self._state_lock:
                    model = self._cache.get(version)  # already loaded on demand by a request
                if model is None:
                    self.loading = version
                    self._report()  # retention must not delete what is being loaded
                    try:
                        model = self._load_and_warm(version)
                    except (UnknownVersion, BrokenVersion):
                        continue
                    except LoadCancelled:
                        log.info("the load of model version %s was given up: the engine is stopping", version)
                        return None
                    finally:
                        self.loading = None
                self._swap_in(model)
            return version
        return None

    def _report(self) -> None:
        current = self._current
        self.reporter.report(current.version if current else None, self.loading, self.chooser.policy)

    def _swap_in(self, model: LoadedModel) -> None:
        with self._state_lock:
            old = self._current
            self._current = model  # the atomic swap: requests in flight keep their reference
            self._cache.pop(model.version, None)
            if old is not None:
                self._remember(old)
        serving = self._serving(model)
        if self.observer is not None:
            self.observer.model_swapped(model, serving.runtime_precision, self._device, serving.runtime)
        log.info(
            "now serving model version %s (preset %s, %d px) on %s with %s",
            model.version,
            model.preset,
            model.render_size,
            self._device,
            serving.runtime_name,
        )

    def _remember(self, model: LoadedModel) -> None:
        # caller holds _state_lock
        self._cache[model.version] = model
        self._cache.move_to_end(model.version)
        while len(self._cache) > self.cache_size:
            evicted, _ = self._cache.popitem(last=False)
            log.info("model version %s dropped from the cache", evicted)
            if self.observer is not None:
                self.observer.model_dropped(evicted)

    def model(self, version: int | str | None = None) -> LoadedModel:
        """The served model (``version`` None) or that version (a number or ``"default"``), loaded
        on demand and cached.

        Raises NoModelLoaded, UnknownVersion or BrokenVersion.
        """
        current = self._current
        if version is None:
            if current is None:
                raise NoModelLoaded(self.waiting_reason())
            return current
        version = self.chooser.resolve(version)
        if current is not None and current.version == version:
            return current
        with self._state_lock:
            cached = self._cache.get(version)
            if cached is not None:
                self._cache.move_to_end(version)
                return cached
        self.setup()
        with self._load_lock:
            with self._state_lock:  # another request, or the watcher, may have loaded it meanwhile
                cached = self._cache.get(version)
                current = self._current
            if cached is not None:
                return cached
            if current is not None and current.version == version:
                return current
            self.loading = version
            self._report()  # retention must not delete what is being loaded
            try:
                model = self._load_and_warm(version)
            except LoadCancelled:
                raise NoModelLoaded(
                    f"model version {version} was not loaded: the service is stopping"
                ) from None
            finally:
                self.loading = None
            with self._state_lock:
                self._remember(model)
        return model

    # -- inference ---------------------------------------------------------------------------

    def check_render_size(self, model: LoadedModel, render_size: int | None) -> int:
        """The side ``model`` will run at; raises BadRenderSize (a ValueError) when it is not usable."""
        from models.colorize import check_render_size

        if render_size is not None and render_size > self.max_render_size:
            raise BadRenderSize(
                f"render_size must be at most {self.max_render_size} (COLORIZER_MAX_RENDER_SIZE)", render_size
            )
        try:
            return check_render_size(model, render_size)
        except ValueError as exc:
            raise BadRenderSize(str(exc), render_size) from None

    def _serving(self, model: LoadedModel) -> Any:
        """The model's InferenceModel (compiled calls in the engine's precision), made on first use."""
        serving = model.serving
        if serving is None:
            from models.runtimes import ConversionCache
            from models.serving import InferenceModel

            device = self.setup()
            cache = ConversionCache(self.runtime_cache) if self.runtime_cache is not None else None
            with self._serving_lock:
                serving = model.serving
                if serving is None:
                    precision = self._precision or "float32"
                    serving = InferenceModel(
                        model, precision, device, self.runtime_preference, cache, self._stop.is_set
                    )
                    model.serving = serving
        return serving

    def _warm_up(self, model: LoadedModel) -> None:
        """Trace and run every bucket at the model's own size, then colorize a dummy photograph
        (directly, not through the queue): a generator that fails does so before it is served."""
        from models.colorize import finish, prepare

        serving = self._serving(model)
        serving.warm_up(model.render_size, self.buckets)
        if self.observer is not None:
            if serving.fallback is not None:
                self.observer.runtime_fallback(model.version, "openvino")
            self.observer.model_loaded(model.version, serving.runtime, serving.runtime_precision)
        import tensorflow as tf

        with tf.device(self.setup()):
            inputs, lum, _ = prepare(model, np.full((WARMUP_SIDE, WARMUP_SIDE), 128, np.uint8))
            finish(model, serving.predict(inputs[None])[0], lum)

    def prepare(
        self, model: LoadedModel, image: np.ndarray, render_size: int | None = None, hints: Any = None
    ) -> Any:
        """(model input, lightness, side) for an RGB (H, W, 3) or gray (H, W) uint8 array, with
        ``hints`` (``models.hints.Hint`` points of it, checked: ``inference.pipeline.read_hints``)
        for a model that takes them.

        Blocking: call it from a worker thread. Raises BadRenderSize.
        """
        import tensorflow as tf

        from models.colorize import prepare

        self.check_render_size(model, render_size)
        with tf.device(self._device or self.setup()):
            return prepare(model, image, render_size, hints)

    def finish(self, model: LoadedModel, prediction: np.ndarray, lum: Any) -> np.ndarray:
        """RGB uint8 at the photograph's size from a prediction and the photograph's lightness."""
        import tensorflow as tf

        from models.colorize import finish

        with tf.device(self._device or self.setup()):
            return finish(model, prediction, lum)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about the time to run the queue once, its batches
        ``batches_in_flight`` at a time (the last batch's time was measured beside the others)."""
        batcher = self._batcher
        batches = math.ceil((batcher.depth() + 1) / batcher.max_batch_size)
        rounds = math.ceil(batches / batcher.in_flight)
        return max(1, math.ceil(rounds * batcher.last_batch_seconds))

    def check_capacity(self) -> None:
        """Raises EngineBusy when the inference queue is full (before any work is spent on a request)."""
        if self._batcher.full():
            raise EngineBusy(self._batcher.depth(), self.retry_after())

    def queue_depth(self) -> int:
        """Model inputs waiting for the inference thread."""
        return self._batcher.depth()

    def submit(self, model: LoadedModel, inputs: np.ndarray, size: int) -> Future:
        """Queue a prepared model input (size, size, C); the future gives the prediction (size,
        size, out). Raises EngineBusy when the queue is full.
        """
        serving = self._serving(model)
        try:
            return self._batcher.submit((serving, size), inputs)
        except QueueFull:
            raise EngineBusy(self._batcher.depth(), self.retry_after()) from None

    def _run_batch(self, key: tuple, payloads: list) -> list:
        """In the inference thread: one compiled call for the whole batch."""
        from models.serving import batch_of

        serving = key[0]
        batch = batch_of(payloads, bucket_for(len(payloads), self.buckets))
        return list(serving.predict(batch)[: len(payloads)])

    def describe(self) -> dict[str, Any]:
        """What the engine serves, for health and listing endpoints."""
        current = self._current
        return {
            "ready": current is not None,
            "model_version": current.version if current is not None else None,
            "policy": str(self.chooser.policy),
            "device": self._device,
            "precision": self._precision,
            "runtime": current.serving.runtime_name if current is not None and current.serving else None,
            "cached_versions": self.cached_versions(),
            "failed_versions": self.failed_versions(),
        }


def engine_from_settings(store: ModelStore, settings: Settings, **overrides: Any) -> Engine:
    """An Engine on ``store`` configured by the ``COLORIZER_*`` settings (the API's and the CLI's
    one place for it); ``overrides`` are Engine keyword arguments that win over them."""
    options: dict[str, Any] = {
        "device_preference": settings.device,
        "reload_interval": settings.reload_interval,
        "max_render_size": settings.max_render_size,
        "precision": settings.inference_precision,
        "max_batch_size": settings.max_batch_size,
        "batch_timeout": settings.batch_timeout_ms / 1000.0,
        "max_queue": settings.max_queue,
        "batches_in_flight": settings.batches_in_flight,
        "policy": settings.policy,
        "runtime": settings.inference_runtime,
        "runtime_cache": settings.runtime_cache_dir,
    }
    return Engine(store, **{**options, **overrides})
