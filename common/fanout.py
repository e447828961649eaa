"""Photographs colorized by the colorize workers: the client side of the ``colorize`` queue.

A big batch (``POST /colorize/batch``, ``colorizer colorize --remote``) need not run on the machine
that received it: each photograph goes as one Celery task (``COLORIZE_TASK``, queue
``COLORIZE_QUEUE``, the file's bytes in the message) to the colorize workers (``colorizer worker
--colorize``: the served model loaded once per process, a thread per photograph so that its engine
batches them), and comes back, encoded, through the result backend. The sender names the model
version, so a whole batch uses one version whichever workers run it.

``RemoteColorizer.submit`` gives a ``concurrent.futures.Future`` per photograph; one thread per
process watches every photograph in flight (a look at each one's task state every ``poll``
seconds) and settles their futures:

* done: the worker's answer (``{"data": <base64>, "model_version": ..., "worker": ...}`` or
  ``{"error": <sentence>, "kind": <the inference error's class>}``), and the result is deleted
  from the backend;
* started more than ``stall_seconds`` ago by a worker that no longer answers Celery's ping
  (``PING_MISSES`` pings in a row: it died; a busy worker answers, however long its photographs
  take, though a starved one may miss one ping): sent again, up to ``resends`` times, then
  ``RemoteFailed``;
* not started after ``queue_seconds``: sent again while colorize workers answer (a worker that
  died may have taken it without starting it; a duplicate of one merely queued costs one more
  run), ``RemoteFailed`` when none answers.

A photograph sent again is still watched under its earlier sends: whichever answer comes first
settles it (a worker believed dead may only have been slow), and the sends still out are revoked.

The sender decides what a ``RemoteFailed`` photograph becomes (the API colorizes it itself). A
task also carries an expiry: a message that a dead worker's broker hands out again a day later is
dropped, not run.

No TensorFlow and no inference code here: the API and the CLI import this, the worker runs
``worker.colorize``.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from common.queue import COLORIZE_QUEUE, COLORIZE_TASK

log = logging.getLogger(__name__)

# How long a look for colorize workers waits for their answers, and how long it is believed.
INSPECT_TIMEOUT_S = 1.0
WORKERS_TTL_S = 15.0
# ... and for one worker's answer to a ping, believed this long.
PING_TIMEOUT_S = 1.0
PING_TTL_S = 3.0
# A worker is believed dead once it has missed this many pings in a row.
PING_MISSES = 2


class RemoteFailed(RuntimeError):
    """No colorize worker brought the photograph back; the sentence says why."""


@dataclass
class _InFlight:
    future: Future
    message: dict[str, Any]
    task_id: str
    sent_at: float
    started_at: float | None = None
    worker: str | None = None  # the node that started it
    resends: int = 0
    earlier: list[str] = field(default_factory=list)  # the task ids of its earlier sends


def encode_photo(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_photo(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class RemoteColorizer:
    """Sends photographs to the ``colorize`` queue of ``app`` and watches them come back."""

    def __init__(
        self,
        app: Celery,
        stall_seconds: float = 30.0,
        queue_seconds: float = 120.0,
        poll: float = 0.05,
        resends: int = 2,
    ):
        self.app = app
        self.stall_seconds = stall_seconds
        self.queue_seconds = queue_seconds
        self.poll = poll
        self.resends = resends
        self._pending: dict[str, _InFlight] = {}  # task id -> the photograph it carries
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._workers: tuple[float, list[str]] = (0.0, [])
        self._pings: dict[str, tuple[float, int]] = {}  # node -> (when asked, pings missed in a row)

    # -- who is there --------------------------------------------------------------------------

    def workers(self, fresh: bool = False) -> list[str]:
        """The names of the workers consuming the colorize queue (Celery's remote control: each
        worker answers for itself), remembered for ``WORKERS_TTL_S``; [] when none answers or the
        broker cannot be asked."""
        seen_at, names = self._workers
        if not fresh and time.monotonic() - seen_at < WORKERS_TTL_S:
            return names
        try:
            queues = self.app.control.inspect(timeout=INSPECT_TIMEOUT_S).active_queues() or {}
        except Exception as exc:  # a broker that cannot be reached right now: nobody, for now
            log.warning("cannot ask which workers colorize (%s)", exc)
            queues = {}
        names = sorted(
            name for name, qs in queues.items() if any(q.get("name") == COLORIZE_QUEUE for q in qs)
        )
        self._workers = (time.monotonic(), names)
        return names

    def alive(self, worker: str) -> bool:
        """Whether the worker ``worker`` answers Celery's ping: False once it missed ``PING_MISSES``
        in a row (each answer remembered a few seconds)."""
        asked, missed = self._pings.get(worker, (0.0, 0))
        if time.monotonic() - asked < PING_TTL_S:
            return missed < PING_MISSES
        try:
            replies = self.app.control.ping(destination=[worker], timeout=PING_TIMEOUT_S, limit=1) or []
        except Exception as exc:  # the broker cannot be asked now: assume it lives, ask again later
            log.warning("cannot ping worker %s (%s)", worker, exc)
            return True
        missed = 0 if any(worker in reply for reply in replies) else missed + 1
        self._pings[worker] = (time.monotonic(), missed)
        return missed < PING_MISSES

    # -- sending -------------------------------------------------------------------------------

    def submit(
        self,
        data: bytes,
        *,
        version: int | str,
        image_format: str,
        render_size: int | None = None,
        hints: Any = None,
    ) -> Future:
        """Queue one photograph (a file's bytes) for ``version``; the future gives the worker's
        answer (see the module's description) or raises RemoteFailed."""
        message = {
            "photo": encode_photo(data),
            "version": version,
            "image_format": image_format,
            "render_size": render_size,
            "hints": hints,
        }
        future: Future = Future()
        if self._closed:
            raise RemoteFailed("the sender is closed")
        task_id = self._send(message)
        with self._lock:
            self._pending[task_id] = _InFlight(future, message, task_id, time.monotonic())
            self._start()
        self._wake.set()
        return future

    def _send(self, message: dict[str, Any]) -> str:
        task_id = uuid.uuid4().hex
        expires = self.queue_seconds + (self.resends + 1) * self.stall_seconds
        self.app.send_task(
            COLORIZE_TASK, kwargs=message, queue=COLORIZE_QUEUE, task_id=task_id, expires=expires
        )
        return task_id

    def close(self) -> None:
        """Stop watching; photographs still in flight fail with RemoteFailed."""
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, {}
        self._wake.set()
        for item in pending.values():
            item.future.set_exception(RemoteFailed("the service is stopping"))

    # -- watching ------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._watch, name="colorize-results", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while True:
            with self._lock:
                if self._closed or not self._pending:
                    self._thread = None
                    return
                items = list(self._pending.values())
            for item in items:
                try:
                    self._look(item)
                except Exception as exc:  # a backend hiccup: look again next round
                    log.warning("cannot read the state of colorize task %s (%s)", item.task_id, exc)
            self._wake.wait(self.poll)
            self._wake.clear()

    def _look(self, item: _InFlight) -> None:
        for task_id in item.earlier:  # a worker given up on may still answer first
            earlier = AsyncResult(task_id, app=self.app)
            if earlier.state == "SUCCESS":
                answer = earlier.result
                earlier.forget()
                self._settle(item, answer=answer)
                return
        result = AsyncResult(item.task_id, app=self.app)
        state = result.state
        now = time.monotonic()
        if state == "SUCCESS":
            answer = result.result
            result.forget()
            self._settle(item, answer=answer)
        elif state in ("FAILURE", "REVOKED"):
            reason = f"the colorize task failed: {result.result!r}"
            result.forget()
            self._settle(item, error=RemoteFailed(reason))
        elif state == "STARTED":
            if item.started_at is None:
                item.started_at = now
                info = result.info
                item.worker = info.get("hostname") if isinstance(info, dict) else None
            elif now - item.started_at > self.stall_seconds and item.worker and not self.alive(item.worker):
                self._resend(item, f"its worker {item.worker} stopped answering")
        elif now - item.sent_at > self.queue_seconds:
            # PENDING: queued behind others, or taken by a worker that died before it started it
            if self.workers(fresh=True):
                self._resend(item, f"no worker started it in {self.queue_seconds:g} s")
            else:
                self._settle(
                    item,
                    error=RemoteFailed(f"no colorize worker took the photograph in {self.queue_seconds:g} s"),
                )

    def _resend(self, item: _InFlight, why: str) -> None:
        if item.resends >= self.resends:
            self._settle(item, error=RemoteFailed(f"sent {item.resends + 1} times and {why} each time"))
            return
        task_id = self._send(item.message)
        log.warning("colorize task %s: %s; sent again as %s", item.task_id, why, task_id)
        with self._lock:
            self._pending.pop(item.task_id, None)
            item.earlier.append(item.task_id)
            item.task_id, item.sent_at, item.started_at, item.worker = task_id, time.monotonic(), None, None
            item.resends += 1
            self._pending[task_id] = item

    def _settle(self, item: _InFlight, answer: Any = None, error: Exception | None = None) -> None:
        with self._lock:
            if self._pending.pop(item.task_id, None) is None:
                return
        if item.earlier:  # the sends still out: a worker that has not started one drops it
            try:
                self.app.control.revoke(item.earlier + [item.task_id])
            except Exception as exc:  # the duplicate then runs once more, harmlessly
                log.warning("cannot revoke the other sends of colorize task %s (%s)", item.task_id, exc)
        if error is not None:
            item.future.set_exception(error)
        elif not isinstance(answer, dict):
            item.future.set_exception(RemoteFailed(f"the colorize worker answered {answer!r}"))
        else:
            item.future.set_result(answer)
