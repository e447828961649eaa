"""A photograph's work split over this process's cores: the calling thread does the first part,
one shared pool of threads (one per other core) the rest. JPEG encoding in bands
(``inference.jpeg``), the shrinking of a large photograph and the copy of its lightness beside
the chroma upsampling (``models.pixels``) use it.

Only work that releases the GIL gains from it: OpenCV's calls, Pillow's resampling and numpy's
copies do. The pool is shared by every request thread, so a part it has not started by the time
the caller has finished its own is done by the caller instead of waited for: a busy pool costs a
request no more than doing it all alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
_pool: ThreadPoolExecutor | None = None


def cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def band_rows(height: int, width: int, band_pixels: int, workers: int | None = None) -> int:
    """Pixel rows per horizontal band of an image worked on in bands at once: the whole height
    unless the image holds two bands of at least ``band_pixels`` pixels, then split over
    ``workers`` (all cores by default)."""
    workers = cores() if workers is None else workers
    bands = min(workers, height * width // band_pixels, height)
    return height if bands < 2 else -(-height // bands)


def spare_pool() -> ThreadPoolExecutor:
    """The shared pool: one thread per core beyond the caller's (at least one)."""
    global _pool
    if _pool is None:  # a race here makes a spare pool, never a wrong result
        _pool = ThreadPoolExecutor(max(1, cores() - 1), thread_name_prefix="spare-core")
    return _pool


def _forget_pool() -> None:
    """In a forked child: the parent's pool has no threads there, and each part queued to it (then
    done by the caller) would stay in its queue with the photograph it holds."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_pool)


def run_parts(parts: Sequence[Callable[[], T]]) -> list[T]:
    """``[part() for part in parts]`` (at least one), the first in this thread and the others at
    the same time in the pool (each one the pool has not started yet when this thread gets to it,
    here). Raises what a part raised; the parts not started by then are not run."""
    later = [spare_pool().submit(part) for part in parts[1:]]
    try:
        results = [parts[0]()]
        for part, future in zip(parts[1:], later, strict=True):
            results.append(part() if future.cancel() else future.result())
    finally:
        for future in later:
            future.cancel()  # only those not started: a no-op for the rest
    return results
