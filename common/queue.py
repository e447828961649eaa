"""The queue contract: the training task's name and queue, and the Celery app factory, configured
from the one ``Settings`` object the API reads too.

The API sends ``TRAIN_TASK`` by name through an app from ``create_celery``; the worker runs
``worker.celery_app.app`` (``colorizer worker`` or ``celery -A worker.celery_app worker``). No
TensorFlow here: this module is imported by the API and by the worker's parent process, which
forks the pool child that trains (see ``worker.tasks``).

Reliability choices (one training job at a time, each one hours long):

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a job's message is acknowledged only when
  the task returns, so a worker that dies mid-job leaves it to be delivered again; the training
  loop's checkpoint in the job folder makes the redelivered run resume.
* One trainer per job, whatever the broker does: the task takes the job's lease (a ``flock`` in the
  job folder that the kernel drops when the process dies); a second delivery of a job that is
  still training steps aside (see ``worker.tasks``).
* Recovery (``worker.recovery``): at start-up and every ``COLORIZER_RECOVERY_INTERVAL`` seconds a
  worker re-queues started jobs that nobody is training (worker killed, job interrupted), so they
  resume without waiting for a broker redelivery that may never come.
* ``worker_prefetch_multiplier=1`` with concurrency 1: a busy worker holds no queued job hostage.
* ``worker_max_tasks_per_child=1`` with the prefork pool: every job runs in a fresh child forked
  from a parent that never imported TensorFlow, and the child exits afterwards (freeing all GPU
  and host memory the job took).
* Shutdown: a warm shutdown (SIGTERM) waits for running tasks, hours for a job, and a cold one
  (SIGQUIT) terminates them. Either way the worker's main process (``worker_shutting_down``) or
  Celery sends the training child SIGTERM, on which the task stops at its next step with a
  checkpoint of that step, puts the record back to ``queued`` and returns: no training is lost
  and the shutdown takes seconds. (Seen with Celery 5.7 / billiard 4.3: pool children get
  ``PR_SET_PDEATHSIG=SIGKILL`` tied to the thread that forked them, and the replacement children
  are forked by billiard's supervisor thread, which ends at a warm shutdown; the task changes
  its death signal to SIGTERM so that it checkpoints then too.)
* ``worker_cancel_long_running_tasks_on_connection_loss``: if the broker connection drops, the
  running job is stopped (SIGTERM: it checkpoints) rather than left running while its message is
  handed out again; recovery re-queues it once the broker is back, and it resumes.
* Fail fast when the broker is down: the API sends with ``ignore_result`` (it reads job state
  from the records, never from Celery results), so no result-backend subscription retries for
  20 s first, and ``task_publish_retry_policy`` gives up after about a second: POST /jobs answers
  503 at once. The Redis result backend's own retries are cut to a few seconds as well, so a
  worker that loses Redis mid-job does not block on them.
* Redis: ``visibility_timeout`` (``COLORIZER_VISIBILITY_TIMEOUT``, default 24 h): Redis hands an
  unacknowledged message out again after it. A job still training then is not trained twice
  (the second delivery steps aside), but its message stays unacknowledged and keeps coming
  back once per timeout, so keep it longer than most jobs.

The embedded default (no ``COLORIZER_BROKER_URL``): kombu's SQLAlchemy transport on a SQLite file
in the data directory (``sqla+sqlite:///<data_dir>/broker.sqlite``) and Celery's database result
backend on another (``db+sqlite:///<data_dir>/results.sqlite``). Why: ``make run`` must work on a
laptop with nothing but Python installed, SQLAlchemy is already a dependency, and unlike the
in-memory or filesystem transports it is shared by two processes (API and worker) and survives
restarts, so queued jobs are not lost when the service stops. Its limits, checked against
Celery 5.7 / kombu 5.7:

* No visibility timeout: the transport marks a message invisible when a worker takes it and
  never makes it visible again by itself. Unacknowledged jobs are put back (as a new row) only
  when the worker shuts down through Celery (Ctrl-C, SIGTERM, SIGQUIT: "Restoring 1
  unacknowledged message(s)"); after a worker killed with SIGKILL, or a machine losing power,
  the message stays invisible for good (checked: a new worker does not pick it up). Recovery
  (``worker.recovery``) re-queues such a job when a worker starts again.
* No fanout exchange: Celery disables remote control, so ``celery inspect`` / ``control`` and
  ``revoke`` do not work (cancellation here goes through the job record's cancel marker file).
* Polling (once a second) and one SQLite writer at a time: fine for one API and one worker on
  one machine, not for several workers or machines (SQLite over NFS is unsafe). A busy timeout
  of 30 s on both files keeps the two processes from failing with "database is locked".
* Consumed messages stay in the table (flagged invisible); the file grows by one row per job.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery

from common.settings import Settings

log = logging.getLogger(__name__)

TRAIN_TASK = "colorizer.train"
TRAIN_QUEUE = "training"
# Photographs of big batches, one per task, for the colorize workers (common.fanout, worker.colorize).
COLORIZE_TASK = "colorizer.colorize"
COLORIZE_QUEUE = "colorize"

# SQLite waits this long for the other process's write lock instead of failing at once.
SQLITE_BUSY_TIMEOUT_S = 30


class ColorizerCelery(Celery):
    """A Celery app that keeps the settings it was configured from (tasks read the data dir)."""

    def __init__(self, settings: Settings, **kwargs: Any):
        self.settings = settings
        super().__init__(**kwargs)


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``[sqla+|db+]sqlite:///path`` URL, or None for other URLs.

    ``sqlite://`` (in memory) gives None as well: there is no file to prepare.
    """
    for prefix in ("sqla+", "sqlalchemy+", "db+"):
        if url.startswith(prefix):
            url = url[len(prefix) :]
            break
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


# Publishing a task: a couple of quick retries, then the error (the API answers 503).
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
# The Redis result backend retries 20 times a second apart by default.
RESULT_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 1, "interval_max": 1}
# Seconds to wait for a TCP connection to Redis (an unreachable host, not a refused port).
REDIS_CONNECT_TIMEOUT_S = 5


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Transport options for the effective broker.

    They must match the transport: kombu's SQLAlchemy transport hands every option to
    ``sqlalchemy.create_engine``, which rejects unknown keywords such as ``visibility_timeout``.
    """
    url = settings.effective_broker_url
    if is_redis_url(url):
        return {
            "visibility_timeout": settings.visibility_timeout,
            "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
        }
    if sqlite_path(url) is not None:
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {}


def create_celery(settings: Settings, include: tuple[str, ...] = ()) -> ColorizerCelery:
    """A Celery app for ``settings``: JSON only, late acks, one job at a time on ``training``;
    ``include`` names the task modules a worker imports (the API sends by name and needs none).

    Creates the parent folder of an SQLite broker or result database (the data directory by
    default) so the first connection does not fail with "unable to open database file".
    """
    broker = settings.effective_broker_url
    backend = settings.effective_result_backend
    for url in (broker, backend):
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    app = ColorizerCelery(
        settings,
        main="colorizer",
        broker=broker,
        backend=backend,
        include=list(include),
    )
    conf: dict[str, Any] = {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_track_started": True,
        "result_extended": True,
        "task_default_queue": TRAIN_QUEUE,
        "task_routes": {TRAIN_TASK: {"queue": TRAIN_QUEUE}, COLORIZE_TASK: {"queue": COLORIZE_QUEUE}},
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_pool": "prefork",
        "worker_max_tasks_per_child": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": broker_transport_options(settings),
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
    }
    if sqlite_path(broker) is None:
        # task events for Celery's monitoring (Flower, `celery events`); the embedded SQLite broker
        # has no fan-out exchange to carry them
        conf["worker_send_task_events"] = True
        conf["task_send_sent_event"] = True
    if sqlite_path(backend) is not None:
        conf["database_engine_options"] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if is_redis_url(backend):
        conf["result_backend_transport_options"] = {"retry_policy": RESULT_RETRY_POLICY}
        conf["redis_socket_connect_timeout"] = REDIS_CONNECT_TIMEOUT_S
    app.conf.update(conf)
    return app


# A worker that finds no record of a job it was given (its COLORIZER_DATA_DIR is not the API's)
# hands the job back to the queue for a worker that shares the API's data directory: 1 s later,
# then twice as late each time up to this, for COLORIZER_UNSEEN_JOB_SECONDS; then it leaves the
# reason in the result backend, where the API finds it (``not_visible_reason``) and fails the job.
NOT_VISIBLE_DELAY_S = 1.0
NOT_VISIBLE_MAX_DELAY_S = 30.0


def send_train(app: Celery, job_id: str, config: dict[str, Any]) -> None:
    """Queue the training task for ``job_id``; its task id is the job id (``not_visible_reason``).

    ``ignore_result``: job state lives in the record; without it the Redis result backend would
    first retry its subscription for ~20 s when Redis is down.
    """
    app.send_task(TRAIN_TASK, args=[job_id, config], queue=TRAIN_QUEUE, task_id=job_id, ignore_result=True)


def not_visible_reason(app: Celery, job_id: str) -> str | None:
    """Why no worker could run ``job_id`` (a failure a worker stored under the job's task id), or
    None: nothing stored, or the backend cannot be read right now."""
    try:
        meta = app.backend.get_task_meta(job_id)
    except Exception as exc:  # an unreachable backend must not break reading the job
        log.debug("result backend unreadable for job %s: %s", job_id, exc)
        return None
    if meta.get("status") != "FAILURE":
        return None
    return str(meta.get("result") or "no worker could run the job")
