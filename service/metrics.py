"""Prometheus metrics for the API, exposed at ``GET /metrics``.

Each app has its own registry (tests start many apps in one process), holding:

- ``colorizer_http_requests_total`` and ``colorizer_http_request_duration_seconds`` by method,
  route template (``/jobs/{job_id}``, never the raw path) and status, from an ASGI middleware;
- the inference engine: queue depth, batch size and model-call time histograms, time spent in
  the queue, the served model (``colorizer_model_info``), reloads and reload failures;
- the process: ``process_resident_memory_bytes``, CPU seconds, open files (Linux), and Python's
  GC and platform collectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED_ROUTE = "unmatched"  # requests no route answers share one label, whatever their path
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MODEL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """The API's metrics in their own registry; the engine reports to it (an EngineObserver)."""

    def __init__(self, max_batch_size: int = 8):
        self.registry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = Counter(
            "colorizer_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "colorizer_http_request_duration_seconds",
            "Time from request to the end of the response, by method, route template and status.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "colorizer_inference_queue_depth", "Photographs waiting for the model.", registry=registry
        )
        self.batch_size = Histogram(
            "colorizer_inference_batch_size",
            "Photographs per model call.",
            buckets=tuple(range(1, max_batch_size + 1)),
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "colorizer_inference_seconds",
            "Time of one model call (a whole batch).",
            buckets=_MODEL_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "colorizer_inference_queue_wait_seconds",
            "Time the oldest photograph of a batch waited in the queue.",
            buckets=_MODEL_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "colorizer_model_info",
            "The model version /colorize serves (value 1), with its preset, precision, device and runtime.",
            ["version", "preset", "precision", "device", "runtime"],
            registry=registry,
        )
        self.runtime_info = Gauge(
            "colorizer_model_runtime_info",
            "Every model version loaded (value 1), with the runtime and precision that run it.",
            ["version", "runtime", "precision"],
            registry=registry,
        )
        self.runtime_fallbacks = Counter(
            "colorizer_runtime_fallbacks",
            "Model versions served by TensorFlow because the runtime meant to serve them (OpenVINO) "
            "could not convert them or did not reproduce TensorFlow's output.",
            ["runtime"],
            registry=registry,
        )
        self.reloads = Counter(
            "colorizer_model_reloads", "Model versions swapped in to be served.", registry=registry
        )
        self.reload_failures = Counter(
            "colorizer_model_reload_failures",
            "Model versions that failed to load or to colorize a test image.",
            registry=registry,
        )

    # -- EngineObserver ----------------------------------------------------------------------------

    def model_swapped(self, model: Any, precision: str, device: str | None, runtime: str) -> None:
        self.model_info.clear()
        self.model_info.labels(str(model.version), str(model.preset), precision, str(device), runtime).set(1)
        self.reloads.inc()

    def model_loaded(self, version: Any, runtime: str, precision: str) -> None:
        self.model_dropped(version)  # a version reloaded may run on another runtime now
        self.runtime_info.labels(str(version), runtime, precision).set(1)

    def model_dropped(self, version: Any) -> None:
        for labels in [s.labels for m in self.runtime_info.collect() for s in m.samples]:
            if labels["version"] == str(version):
                self.runtime_info.remove(labels["version"], labels["runtime"], labels["precision"])

    def runtime_fallback(self, version: Any, runtime: str) -> None:
        self.runtime_fallbacks.labels(runtime).inc()

    def load_failed(self, version: Any) -> None:
        self.reload_failures.inc()

    def batch_done(self, size: int, seconds: float, waited: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)
        self.queue_wait.observe(max(0.0, waited))

    # -- wiring ------------------------------------------------------------------------------------

    def watch_queue(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from ``depth()`` at each scrape."""
        self.queue_depth.set_function(depth)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route template.

    The router records the matched route in the scope, so the label is ``/jobs/{job_id}`` rather
    than each job's path; requests no route matches are labelled "unmatched".
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees when the app raises before answering

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            self.metrics.observe_request(scope["method"], route, status, time.perf_counter() - started)
