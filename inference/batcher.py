"""Dynamic batching (TensorFlow Serving / Triton style): a thread (or a few), a bounded queue, futures.

Callers ``submit(key, payload)`` and get a ``concurrent.futures.Future``. One thread takes the
oldest request and every queued request with the same key, up to ``max_batch_size``; if fewer
are there it waits for more until ``timeout`` seconds after the oldest one was queued, then runs
``run(key, payloads)`` once for the whole batch and hands each caller its result. Requests with
other keys keep their place in the queue. Past ``max_queue`` waiting requests, ``submit`` raises
QueueFull at once instead of building a backlog.

With ``in_flight`` above 1, more threads run batches beside the first, each taking only a full
batch (``max_batch_size`` requests of one key): under load a second model call fills the gaps the
first leaves on the cores, while one client still gets its batch of one from the first thread.

This module knows nothing of TensorFlow or HTTP; the engine supplies ``run``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

RunFn = Callable[[Any, Sequence[Any]], Sequence[Any]]
BatchObserver = Callable[[int, float, float], None]  # (batch size, run seconds, oldest wait seconds)


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Batch sizes a batch is padded to: powers of two below ``max_batch_size``, and it."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1")
    sizes = {max_batch_size}
    size = 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def bucket_for(count: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket holding ``count`` items (``count`` itself past the largest)."""
    for size in buckets:
        if size >= count:
            return size
    return count


class QueueFull(RuntimeError):
    """The batcher's queue holds ``max_queue`` requests already."""


class BatcherStopped(RuntimeError):
    """The batcher was stopped before the request ran."""


@dataclass
class _Request:
    key: Hashable
    payload: Any
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Groups requests with the same key into batches run by one thread (``in_flight`` threads)."""

    def __init__(
        self,
        run: RunFn,
        *,
        max_batch_size: int = 8,
        timeout: float = 0.005,
        max_queue: int = 64,
        name: str = "inference",
        on_batch: BatchObserver | None = None,
        in_flight: int = 1,
    ):
        if max_batch_size < 1 or max_queue < 1 or in_flight < 1 or timeout < 0:
            raise ValueError(
                "max_batch_size, max_queue and in_flight must be positive and timeout not negative"
            )
        self._run = run
        self.max_batch_size = max_batch_size
        self.timeout = timeout
        self.max_queue = max_queue
        self.name = name
        self._on_batch = on_batch
        self.in_flight = in_flight
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []  # the first takes any batch, the others full ones
        self._stopping = False
        self._generation = 0  # a thread started before the latest start() ends at its next look
        self.batches_run = 0  # how many times ``run`` was called
        self.last_batch_seconds = 0.0

    def depth(self) -> int:
        """Requests waiting (not counting the batch running)."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        return bool(self._threads) and self._threads[0].is_alive()

    def start(self) -> None:
        """Start the threads (idempotent)."""
        with self._cond:
            if self.running:
                return
            self._stopping = False
            self._generation += 1
            self._threads = [
                threading.Thread(
                    target=self._loop,
                    args=(self._generation, i > 0),
                    name=self.name if i == 0 else f"{self.name}-{i}",
                    daemon=True,
                )
                for i in range(self.in_flight)
            ]
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the running batches finish, fail the requests still queued, and stop the threads."""
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        for request in pending:
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(BatcherStopped("the inference engine stopped"))
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def full(self) -> bool:
        return len(self._queue) >= self.max_queue

    def submit(self, key: Hashable, payload: Any) -> Future:
        """Queue ``payload``; the future resolves to its item of ``run(key, payloads)``.

        Raises QueueFull when ``max_queue`` requests wait.
        """
        request = _Request(key, payload)
        with self._cond:
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting for the model")
            self._queue.append(request)
            if not self.running:
                self.start()
            self._cond.notify_all()
        return request.future

    # -- the inference thread --------------------------------------------------------------------

    def _ended(self, generation: int) -> bool:
        """Whether a thread of ``generation`` is to end: stopped, or started again since (lock held)."""
        return self._stopping or generation != self._generation

    def _take_batch(self, generation: int) -> list[_Request] | None:
        with self._cond:
            while not self._queue and not self._ended(generation):
                self._cond.wait()
            if self._ended(generation):
                return None
            head = self._queue[0]
            deadline = head.queued_at + self.timeout
            while not self._ended(generation):
                same = sum(1 for r in self._queue if r.key == head.key)
                remaining = deadline - time.monotonic()
                if same >= self.max_batch_size or remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._ended(generation):
                return None
            return self._remove(head.key)

    def _take_full_batch(self, generation: int) -> list[_Request] | None:
        """A batch of ``max_batch_size`` requests of one key: the key whose ``max_batch_size``-th queued
        request comes first in the queue."""
        with self._cond:
            while not self._ended(generation):
                counts: dict[Hashable, int] = {}
                for request in self._queue:
                    counts[request.key] = counts.get(request.key, 0) + 1
                    if counts[request.key] >= self.max_batch_size:
                        return self._remove(request.key)
                self._cond.wait()
            return None

    def _remove(self, key: Hashable) -> list[_Request]:
        """The oldest ``max_batch_size`` queued requests of ``key``, taken off the queue (lock held)."""
        batch = [r for r in self._queue if r.key == key][: self.max_batch_size]
        taken = set(map(id, batch))
        self._queue = deque(r for r in self._queue if id(r) not in taken)
        return batch

    def _loop(self, generation: int, full_only: bool = False) -> None:
        while True:
            batch = self._take_full_batch(generation) if full_only else self._take_batch(generation)
            if batch is None:
                return
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            started = time.monotonic()
            try:
                results = self._run(batch[0].key, [r.payload for r in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the batch of {len(batch)} gave {len(results)} results")
            except BaseException as exc:  # every caller must hear about it, whatever it is
                log.exception("a batch of %d failed", len(batch))
                for request in batch:
                    request.future.set_exception(exc)
                continue
            finally:
                seconds = time.monotonic() - started
                with self._cond:
                    self.batches_run += 1
                    self.last_batch_seconds = seconds
            for request, result in zip(batch, results, strict=True):
                request.future.set_result(result)
            if self._on_batch is not None:
                try:
                    self._on_batch(len(batch), seconds, started - batch[0].queued_at)
                except Exception:  # metrics must never stop inference
                    log.exception("the batch observer failed")
