"""``colorizer serve``, ``worker`` and ``up``: the processes of the service, alone or supervised together.

The CLI composes the processes, so it is the one room that imports both the API and the worker."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from typing import Any

import click

from cli.main import load_settings, main, setup_logging
from common.settings import redact_url

log = logging.getLogger("colorizer.cli")

# Seconds ``up`` waits for a child to stop after each signal before escalating.
DEFAULT_GRACE = 10.0


@main.command()
@click.option("--host", default=None, help="Interface to listen on [default: COLORIZER_HOST].")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="Port [default: COLORIZER_PORT].")
def serve(host: str | None, port: int | None) -> None:
    """Run the HTTP API (uvicorn, one process)."""
    settings = load_settings()
    setup_logging(settings)  # the app's own lines ("now serving model version 3", ...) beside uvicorn's
    settings.ensure_dirs()
    import uvicorn

    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level,
    )


def colorize_worker_argv(loglevel: str, threads: int, hostname: str | None = None) -> list[str]:
    """``celery worker`` arguments for a colorize worker: the colorize queue, one process (its engine
    keeps the model loaded) with ``threads`` photographs in flight, which its engine batches."""
    from common.queue import COLORIZE_QUEUE

    return [
        "worker",
        "--queues",
        COLORIZE_QUEUE,
        "--pool",
        "threads",
        "--concurrency",
        str(threads),
        "--prefetch-multiplier",
        "1",
        "--loglevel",
        loglevel.upper(),
        "--hostname",
        hostname or f"colorize-{os.getpid()}@%h",  # several on one machine: each its own name
    ]


def worker_argv(loglevel: str, hostname: str | None = None) -> list[str]:
    """``celery worker`` arguments: the training queue, one prefork child, a fresh child per job."""
    from common.queue import TRAIN_QUEUE

    argv = [
        "worker",
        "--queues",
        TRAIN_QUEUE,
        "--pool",
        "prefork",
        "--concurrency",
        "1",
        "--max-tasks-per-child",
        "1",
        "--prefetch-multiplier",
        "1",
        "--loglevel",
        loglevel.upper(),
    ]
    if hostname:
        argv += ["--hostname", hostname]
    return argv


@main.command("worker")
@click.option("--hostname", "-n", default=None, help="Worker node name (default: celery@<host>).")
@click.option(
    "--colorize",
    is_flag=True,
    help="Colorize photographs of big batches (queue 'colorize'; needs COLORIZER_BROKER_URL) instead of "
    "training: the model stays loaded, twice COLORIZER_MAX_BATCH_SIZE photographs in flight.",
)
def worker_command(hostname: str | None, colorize: bool) -> None:
    """Run a Celery worker: training (queue 'training', one job at a time) or, with --colorize,
    colorization of big batches (queue 'colorize')."""
    settings = load_settings()
    settings.ensure_dirs()
    if colorize and settings.uses_embedded_broker:
        raise click.UsageError(
            "a colorize worker takes photographs from a shared broker: set COLORIZER_BROKER_URL "
            "(redis://...); with the embedded broker the API colorizes batches itself"
        )
    from worker.celery_app import app

    # Celery warns at length when it runs as root, as a developer's machine or CI often does; the
    # Docker image runs it as an unprivileged user.
    warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges")
    if colorize:
        if settings.colorize_worker_nice:
            os.nice(settings.colorize_worker_nice)  # an API beside it answers single photographs first
        app.worker_main(colorize_worker_argv(settings.log_level, 2 * settings.max_batch_size, hostname))
    else:
        app.worker_main(worker_argv(settings.log_level, hostname))


def _die_with_parent(signum: int) -> Any:
    """A preexec_fn asking Linux to send ``signum`` to the child when ``colorizer up`` dies."""

    def set_pdeathsig() -> None:
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # not Linux/glibc: the signal handlers still stop both
            pass

    return set_pdeathsig if sys.platform.startswith("linux") else None


def _wait_all(procs: dict[str, subprocess.Popen], timeout: float, stop_requests: list[int]) -> bool:
    """Wait until every process has exited, ``timeout`` passes, or a further stop is requested."""
    requests = len(stop_requests)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(stop_requests) == requests:
        if all(p.poll() is not None for p in procs.values()):
            return True
        time.sleep(0.1)
    return all(p.poll() is not None for p in procs.values())


def stop_processes(procs: dict[str, subprocess.Popen], grace: float, stop_requests: list[int]) -> None:
    """SIGTERM (graceful); then SIGQUIT to the worker (Celery's cold shutdown puts its running job
    back in the queue); then SIGKILL to every process group. Another Ctrl-C skips the waiting."""
    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGKILL):
        for name, proc in procs.items():
            if proc.poll() is not None:
                continue
            try:
                if sig == signal.SIGKILL:
                    click.echo(f"colorizer up: killing {name}", err=True)
                    os.killpg(proc.pid, signal.SIGKILL)  # its own group: pool children too
                elif sig == signal.SIGTERM or name == "worker":
                    proc.send_signal(sig)
            except ProcessLookupError:
                continue
        if _wait_all(procs, grace, stop_requests):
            return


@main.command()
@click.option("--host", default=None, help="API interface [default: COLORIZER_HOST].")
@click.option(
    "--port", default=None, type=click.IntRange(1, 65535), help="API port [default: COLORIZER_PORT]."
)
@click.option(
    "--grace",
    default=DEFAULT_GRACE,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds to wait at each stopping step before the next, harder one.",
)
def up(host: str | None, port: int | None, grace: float) -> None:
    """Run the API and the worker together in the foreground.

    Ctrl-C (or SIGTERM) stops both: the API at once, the worker gracefully within --grace
    seconds; a job still training is then interrupted and put back in the queue, and resumes
    from its last checkpoint at the next start. If either process exits, the other is stopped
    and this command exits non-zero.
    """
    settings = load_settings()
    settings.ensure_dirs()
    serve_cmd = [sys.executable, "-m", "cli", "serve"]
    if host:
        serve_cmd += ["--host", host]
    if port:
        serve_cmd += ["--port", str(port)]
    worker_cmd = [sys.executable, "-m", "cli", "worker"]

    stop_requests: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stop_requests.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    broker = "embedded SQLite broker" if settings.uses_embedded_broker else "broker"
    click.echo(
        f"colorizer up: API on http://{host or settings.host}:{port or settings.port}, worker on the "
        f"{broker} {redact_url(settings.effective_broker_url)}; data in {settings.data_dir.resolve()}. "
        "Ctrl-C stops both.",
        err=True,
    )
    procs: dict[str, subprocess.Popen] = {}
    exit_code = 0
    try:
        # Own process groups: the terminal's Ctrl-C reaches only this process, which then stops
        # the children in order; PDEATHSIG stops them if this process is killed outright.
        procs["api"] = subprocess.Popen(
            serve_cmd, process_group=0, preexec_fn=_die_with_parent(signal.SIGTERM)
        )
        procs["worker"] = subprocess.Popen(
            worker_cmd, process_group=0, preexec_fn=_die_with_parent(signal.SIGQUIT)
        )
        while not stop_requests:
            exited = [(name, p.returncode) for name, p in procs.items() if p.poll() is not None]
            if exited:
                name, code = exited[0]
                click.echo(f"colorizer up: {name} exited with code {code}; stopping the rest", err=True)
                exit_code = code if code and code > 0 else 1  # killed by a signal: 1
                break
            time.sleep(0.2)
        else:
            click.echo("colorizer up: stopping", err=True)
    finally:
        stop_processes(procs, grace, stop_requests)
    sys.exit(exit_code)
