"""The ``colorizer`` command: serve the API, run the worker, both at once, train, colorize files,
evaluate models.

Heavy imports (TensorFlow, uvicorn, Celery) happen inside the commands that need them, so
``colorizer --help`` answers at once. Every command reads the same ``COLORIZER_*`` settings as
the API and the worker.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import time
import types
import typing
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import ValidationError

from service.settings import Settings, get_settings, redact_url

log = logging.getLogger("colorizer.cli")

# What ``colorize`` picks up from a folder (files named on the command line are always tried).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
OUTPUT_FORMATS = ("jpeg", "png", "webp")  # names of service.images.FORMATS
# Seconds ``up`` waits for a child to stop after each signal before escalating.
DEFAULT_GRACE = 10.0


def load_settings() -> Settings:
    """The settings from the environment; a readable error naming each bad variable otherwise."""
    try:
        return get_settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(p) for p in error.get("loc", ()))
            name = f"COLORIZER_{field.upper()}" if field else "settings"
            lines.append(f"  {name}: {error.get('msg', 'invalid')}")
        raise click.ClickException("invalid settings:\n" + "\n".join(lines)) from None


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="colorizer")
def main() -> None:
    """Colorize grayscale photographs with a pix2pix GAN, and train new models.

    Settings come from COLORIZER_* environment variables (see the README); with none set,
    everything lives in ./var and the job queue is an embedded SQLite broker.
    """
    # TensorFlow's C++ INFO and WARNING lines (XLA start-up, oneDNN, ...) are not for the person
    # reading the service's log; its errors still show. Set the variable to 0 to see them all.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


def worker_argv(loglevel: str, hostname: str | None = None) -> list[str]:
    """``celery worker`` arguments: the training queue, one prefork child, a fresh child per job."""
    from worker.celery_app import TRAIN_QUEUE

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
def worker_command(hostname: str | None) -> None:
    """Run the Celery training worker (queue 'training', one job at a time)."""
    settings = load_settings()
    settings.ensure_dirs()
    from worker.celery_app import app

    # Celery warns at length when it runs as root, as a developer's machine or CI often does; the
    # Docker image runs it as an unprivileged user.
    warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges")
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
    serve_cmd = [sys.executable, "-m", "service.cli", "serve"]
    if host:
        serve_cmd += ["--host", host]
    if port:
        serve_cmd += ["--port", str(port)]
    worker_cmd = [sys.executable, "-m", "service.cli", "worker"]

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


def _dataset_option(value: str, settings: Settings) -> tuple[str, Path | None]:
    """(dataset name for the config, folder path or None) for --dataset NAME_OR_DIR."""
    if (settings.datasets_dir / value).is_dir() and "/" not in value:
        return value, None
    folder = Path(value).expanduser()
    if folder.is_dir():
        name = re.sub(r"[^A-Za-z0-9._-]", "_", folder.resolve().name).lstrip("._-")[:64] or "dataset"
        return name, folder.resolve()
    raise click.BadParameter(
        f"{value!r} is neither a folder nor a dataset under {settings.datasets_dir}", param_hint="--dataset"
    )


def _click_type(annotation: Any) -> Any:
    """The click type of a TrainConfig field: a Choice for literals, int, float, else text that
    TrainConfig itself parses (``init_from``: a number or "default")."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] if union else [annotation]
    literals = [v for a in kinds if typing.get_origin(a) is Literal for v in typing.get_args(a)]
    plain = [a for a in kinds if a in (int, float, str)]
    if literals and not plain:
        return click.Choice([str(v) for v in literals])
    if not literals and plain in ([int], [float]):
        return plain[0]
    return str


def training_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One ``--option`` per TrainConfig field (``dataset`` aside), typed, described and defaulted
    by the config model itself, so the CLI takes whatever POST /jobs takes."""
    from pydantic_core import PydanticUndefined

    from models.config import TrainConfig

    for name, field in reversed(list(TrainConfig.model_fields.items())):
        if name == "dataset":
            continue
        help_text = field.description or ""
        if field.default not in (None, PydanticUndefined):
            help_text += f" [default: {field.default}]"
        option = click.option(
            f"--{name.replace('_', '-')}",
            name,
            type=_click_type(field.annotation),
            default=None,
            help=help_text,
        )
        command = option(command)
    return command


@main.command()
@click.option(
    "--dataset",
    required=True,
    help="A folder of colour photographs, or the name of one under <data_dir>/datasets/.",
)
@training_options
def train(dataset: str, **options: Any) -> None:
    """Train in the foreground (no broker needed) and publish into the model store.

    The run is an ordinary job record under <data_dir>/jobs/ (config, samples, checkpoint).
    Ctrl-C stops after the current step, as a cancel would; a second Ctrl-C aborts.
    """
    settings = load_settings()
    setup_logging(settings)
    settings.ensure_dirs()
    from models.config import TrainConfig
    from models.jobs import JobStore
    from worker.tasks import describe_validation_error, run_job

    name, folder = _dataset_option(dataset, settings)
    config: dict[str, Any] = {"dataset": name, **{k: v for k, v in options.items() if v is not None}}
    try:
        config = TrainConfig.model_validate(config).model_dump(exclude_none=True)
    except ValidationError as exc:
        raise click.UsageError(f"invalid training options: {describe_validation_error(exc)}") from None

    jobs = JobStore(settings.jobs_dir)
    job_id = jobs.create(config, origin="cli")["id"]  # never re-queued to a worker
    click.echo(f"job {job_id}: training on {folder or settings.datasets_dir / name}", err=True)

    interrupted: list[int] = []

    def on_interrupt(signum: int, _frame: Any) -> None:
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(signum)
        click.echo("\nstopping after this step (Ctrl-C again to abort)", err=True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        # Keras's live progress bar on a terminal; into a pipe or a file, a plain line per pass
        # (the bar's cursor and colour codes would be noise there)
        verbose = 1 if sys.stdout.isatty() else 2
        outcome = run_job(
            settings,
            job_id,
            config,
            verbose=verbose,
            should_stop=lambda: bool(interrupted),
            dataset_path=folder,
        )
    except KeyboardInterrupt:
        jobs.update(job_id, state="cancelled", finished_at=time.time(), error="aborted with Ctrl-C")
        click.echo(f"job {job_id}: aborted", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)

    versions = outcome.get("published_versions") or []
    click.echo(
        f"job {job_id}: {outcome['state']}; published versions: {versions or 'none'}; "
        f"samples in {jobs.samples_dir(job_id)}"
    )
    if outcome["state"] == "failed":
        raise click.ClickException(outcome.get("error") or "training failed")


@dataclass(frozen=True)
class ColorizeTask:
    """One photograph to colorize and where its result goes."""

    source: Path
    target: Path


def collect_inputs(
    inputs: tuple[Path, ...], recursive: bool = False, exclude: Path | None = None
) -> list[Path]:
    """Files named on the command line, plus the image files inside named folders (and their
    subfolders with ``recursive``), in a stable order; nothing under ``exclude`` (the output
    folder, when it lies inside an input folder)."""
    excluded = exclude.resolve() if exclude is not None else None

    def wanted(path: Path) -> bool:
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            return False
        return excluded is None or not path.resolve().is_relative_to(excluded)

    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = item.rglob("*") if recursive else item.iterdir()
            files += sorted((p for p in found if wanted(p)), key=lambda p: p.relative_to(item).parts)
        else:
            files.append(item)
    return files


def output_path(source: Path, out_dir: Path, fmt: str, taken: set[Path]) -> Path:
    """``<out>/<stem>.<fmt>``, with ``-1``, ``-2``... when two inputs share a stem."""
    suffix = ".jpg" if fmt == "jpeg" else f".{fmt}"
    target = out_dir / f"{source.stem}{suffix}"
    n = 0
    while target in taken:
        n += 1
        target = out_dir / f"{source.stem}-{n}{suffix}"
    taken.add(target)
    return target


def plan_outputs(
    inputs: tuple[Path, ...], out_dir: Path, fmt: str, recursive: bool = False
) -> list[ColorizeTask]:
    """Every photograph to colorize with its output path; ``recursive`` mirrors the subfolders of
    each input folder under ``out_dir``. The same inputs always give the same outputs (so a
    second run can tell what is done)."""
    taken: set[Path] = set()
    tasks = []
    for item in inputs:
        for source in collect_inputs((item,), recursive, exclude=out_dir):
            folder = out_dir / source.parent.relative_to(item) if item.is_dir() else out_dir
            tasks.append(ColorizeTask(source, output_path(source, folder, fmt, taken)))
    return tasks


def partial_path(target: Path) -> Path:
    """Where ``target`` is written before it is renamed into place: hidden, and not an image suffix,
    so a run killed mid-write leaves nothing a later run would take for a finished output."""
    return target.with_name(f".{target.name}.part")


def write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through a temporary file and a rename; raises OSError."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = partial_path(target)
    try:
        with open(temporary, "wb") as fh:
            fh.write(data)
        os.replace(temporary, target)  # atomic: readers see the old state or the whole file
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def describe_failure(exc: BaseException) -> str:
    """A one-line reason for a photograph that could not be colorized."""
    detail = getattr(exc, "detail", None)  # service.errors.ApiError: a sentence already
    if isinstance(detail, str):
        return detail
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
    return f"{type(exc).__name__}: {exc}"


class FolderRun:
    """Colorize many photographs with the API's serving path, in a pipeline of three stages.

    A pool of ``jobs`` threads reads, decodes (``service.images.decode_image``: upright, sRGB,
    alpha kept aside) and prepares each photograph; the engine's inference thread runs the model
    on batches of up to ``max_batch_size`` prepared photographs (padded to its bucket sizes, in
    its precision); another pool of ``jobs`` threads finishes, encodes and writes each result
    atomically. At most ``window`` photographs are between reading and writing at any time, so
    memory stays bounded whatever the folder's size. Heavy work releases the GIL (Pillow,
    TensorFlow, XLA), so the stages overlap on several cores.
    """

    def __init__(
        self,
        engine: Any,
        model: Any,
        *,
        fmt: str,
        render_size: int | None,
        max_pixels: int,
        min_side: int,
        jobs: int,
        window: int,
    ):
        self.engine = engine
        self.model = model
        self.fmt = fmt
        self.render_size = render_size
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.jobs = jobs
        self.window = window

    def _decode(self, task: ColorizeTask) -> tuple[Any, Any, Any, int]:
        from service.images import decode_image

        photo = decode_image(task.source.read_bytes(), self.max_pixels, self.min_side)
        inputs, lum, size = self.engine.prepare(self.model, photo.pixels, self.render_size)
        return photo.alpha, inputs, lum, size

    def _finish(self, task: ColorizeTask, prediction: Any, lum: Any, alpha: Any) -> None:
        from service.images import encode_image

        rgb = self.engine.finish(self.model, prediction, lum)
        write_atomically(task.target, encode_image(rgb, self.fmt, alpha))

    def run(self, tasks: list[ColorizeTask], on_done: Callable[[ColorizeTask, str | None], None]) -> None:
        """Colorize ``tasks``; ``on_done(task, None or the reason it failed)`` is called once per
        task, in this thread, as each finishes (in any order). KeyboardInterrupt stops the run:
        queued work is dropped, work in flight finishes or leaves only a hidden partial file."""
        done: queue.SimpleQueue[tuple[ColorizeTask, str | None]] = queue.SimpleQueue()
        decoders = ThreadPoolExecutor(self.jobs, thread_name_prefix="decode")
        encoders = ThreadPoolExecutor(self.jobs, thread_name_prefix="encode")

        def failed(task: ColorizeTask, exc: BaseException) -> None:
            log.debug("colorizing %s failed", task.source, exc_info=exc)
            done.put((task, describe_failure(exc)))

        def decoded(task: ColorizeTask, future: Future) -> None:
            # in a decoder thread: queue the model input for the inference thread
            if future.cancelled():
                done.put((task, "cancelled"))
            elif future.exception() is not None:
                failed(task, future.exception())
            else:
                alpha, inputs, lum, size = future.result()
                try:
                    prediction = self.engine.submit(self.model, inputs, size)
                except Exception as exc:  # the engine stopped, or refused it
                    failed(task, exc)
                else:
                    prediction.add_done_callback(lambda f: predicted(task, f, lum, alpha))

        def predicted(task: ColorizeTask, future: Future, lum: Any, alpha: Any) -> None:
            # in the inference thread: hand the work over at once, never do it here
            if future.exception() is not None:
                failed(task, future.exception())
                return
            try:
                finished = encoders.submit(self._finish, task, future.result(), lum, alpha)
            except RuntimeError as exc:  # the pool is shut down: the run was interrupted
                failed(task, exc)
            else:
                finished.add_done_callback(lambda f: written(task, f))

        def written(task: ColorizeTask, future: Future) -> None:
            if future.cancelled():
                done.put((task, "cancelled"))
            elif future.exception() is not None:
                failed(task, future.exception())
            else:
                done.put((task, None))

        pending = list(reversed(tasks))
        in_flight = 0
        try:
            while pending or in_flight:
                while pending and in_flight < self.window:
                    task = pending.pop()
                    decoders.submit(self._decode, task).add_done_callback(lambda f, t=task: decoded(t, f))
                    in_flight += 1
                task, error = done.get()
                in_flight -= 1
                on_done(task, error)
        finally:
            decoders.shutdown(wait=True, cancel_futures=True)
            encoders.shutdown(wait=True, cancel_futures=True)


def resolve_colorize_model(engine: Any, store: Any, value: str) -> Any:
    """The LoadedModel for --model: a version number, 'latest' (the newest published version, else
    the packaged default) or 'default'. Raises click errors."""
    from models.store import DEFAULT_VERSION, BrokenVersion, UnknownVersion, parse_version

    text = value.strip().lower()
    if text == "latest":
        latest = store.latest()
        if latest is not None:
            text = str(latest.version)
        elif store.has_default():
            click.echo(f"no model in {store.root}: using the packaged default model", err=True)
            text = DEFAULT_VERSION
        else:
            raise click.ClickException(
                f"no model in {store.root}: train one first (colorizer train, or POST /jobs)"
            )
    if text != DEFAULT_VERSION and parse_version(text) is None:
        raise click.BadParameter(
            f"{value!r} is not a version number, 'latest' or 'default'", param_hint="--model"
        )
    try:
        return engine.model(text)
    except (UnknownVersion, BrokenVersion) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "-o",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the colorized images (created if missing).",
)
@click.option(
    "--model",
    "model_version",
    default="latest",
    show_default=True,
    help="Model version number, 'latest' (the newest published, else the packaged default) or 'default'.",
)
@click.option(
    "--render-size",
    type=int,
    default=None,
    help="Side the model runs at (a multiple of 2**levels) [default: its training size].",
)
@click.option("--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default="png", show_default=True)
@click.option(
    "--recursive", "-r", is_flag=True, help="Take images from subfolders too, mirroring them under --out."
)
@click.option("--overwrite", is_flag=True, help="Colorize again photographs whose output already exists.")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(1, 64),
    default=None,
    help="Threads decoding, and threads encoding [default: the number of CPUs, at most 4].",
)
def colorize(
    inputs: tuple[Path, ...],
    out_dir: Path,
    model_version: str,
    render_size: int | None,
    fmt: str,
    recursive: bool,
    overwrite: bool,
    jobs: int | None,
) -> None:
    """Colorize image files, or the images in folders, into the --out folder.

    Photographs are decoded and encoded in parallel around the batched model (the API's serving
    path, in COLORIZER_INFERENCE_PRECISION, batches of up to COLORIZER_MAX_BATCH_SIZE); EXIF
    orientation is applied, ICC profiles are converted to sRGB, transparency is kept in png and
    webp outputs. Outputs that already exist are skipped (--overwrite redoes them), and each is
    written under a temporary name first, so an interrupted run can simply be run again. Files
    that cannot be colorized are reported; the exit code is then 1.
    """
    settings = load_settings()
    setup_logging(settings)
    tasks = plan_outputs(inputs, out_dir, fmt, recursive)
    if not tasks:
        raise click.UsageError("no image files in the given inputs")
    todo = tasks if overwrite else [t for t in tasks if not t.target.exists()]
    skipped = len(tasks) - len(todo)
    if not todo:  # a finished run run again: answer without loading TensorFlow and a model
        click.echo(f"nothing to do: the {skipped} output(s) exist in {out_dir} (--overwrite redoes them)")
        return

    from PIL import Image

    from models.store import ModelStore
    from service.engine import Engine

    jobs = jobs or min(4, os.cpu_count() or 1)
    window = max(2 * settings.max_batch_size, 2 * jobs)
    engine = Engine(
        ModelStore(settings.models_dir),
        device_preference=settings.device,
        max_render_size=settings.max_render_size,
        cache_size=1,
        precision=settings.inference_precision,
        max_batch_size=settings.max_batch_size,
        batch_timeout=settings.batch_timeout_ms / 1000.0,
        max_queue=window + 1,  # the window bounds what is queued: never "busy"
    )
    try:
        model = resolve_colorize_model(engine, engine.store, model_version)
        try:
            engine.check_render_size(model, render_size)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--render-size") from None
        click.echo(
            f"colorizing {len(todo)} of {len(tasks)} file(s) with model version {model.version} "
            f"({model.serving.precision} on {engine.device}, batches of up to {settings.max_batch_size})",
            err=True,
        )
        previous_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, settings.max_image_pixels
        run = FolderRun(
            engine,
            model,
            fmt=fmt,
            render_size=render_size,
            max_pixels=settings.max_image_pixels,
            min_side=settings.min_image_side,
            jobs=jobs,
            window=window,
        )
        failures: list[str] = []
        written = 0
        try:
            with click.progressbar(length=len(todo), label="Colorizing", file=sys.stderr) as bar:

                def on_done(task: ColorizeTask, error: str | None) -> None:
                    nonlocal written
                    if error is None:
                        written += 1
                    else:
                        failures.append(f"failed {task.source}: {error}")
                    bar.update(1)

                run.run(todo, on_done)
        except KeyboardInterrupt:
            # photographs already being written were finished: outputs are whole or absent
            click.echo(
                "\ninterrupted: the outputs written so far are kept; run the same command again for the rest",
                err=True,
            )
            sys.exit(130)
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit
    finally:
        engine.stop()
    for message in failures:
        click.echo(message, err=True)
    summary = f"colorized {written} of {len(tasks)} file(s) into {out_dir} with model version {model.version}"
    if skipped:
        summary += f"; skipped {skipped} whose output already exists (--overwrite redoes them)"
    if failures:
        summary += f"; {len(failures)} failed"
    click.echo(summary)
    if failures:
        sys.exit(1)


# What ``evaluate`` scores in a folder (recursively): the photograph formats datasets use.
EVALUATE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
_SCALE_TITLES = {"full": "full resolution", "model_size": "the model's own size (centre square)"}


def find_images(folder: Path) -> list[Path]:
    """The jpg/png/webp files under ``folder`` and its subfolders, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EVALUATE_SUFFIXES)


def resolve_model(store: Any, value: str, hint: str) -> tuple[str, Any]:
    """(label, LoadedModel) for a version number, 'latest', 'default' or a version folder's path.

    Raises click errors for an unknown, broken or unrecognised model.
    """
    from models.store import DEFAULT_VERSION, BrokenVersion, ModelStore, UnknownVersion, parse_version

    text = value.strip()
    try:
        if text.lower() == DEFAULT_VERSION:
            return DEFAULT_VERSION, store.load(DEFAULT_VERSION)
        if text.lower() == "latest":  # the newest published version, else the packaged default
            latest = store.latest()
            if latest is None and store.has_default():
                return DEFAULT_VERSION, store.load(DEFAULT_VERSION)
            if latest is None:
                raise click.ClickException(f"no model in {store.root}: train one first, or name a version")
            text = str(latest.version)
        number = parse_version(text)
        if number is not None:
            return f"version {number}", store.load(number)
        folder = Path(text).expanduser()
        if folder.is_dir():
            return str(folder), ModelStore.load_dir(folder, str(folder))
    except (UnknownVersion, BrokenVersion) as exc:
        raise click.ClickException(f"{hint} {value}: {exc}") from None
    raise click.BadParameter(
        f"{value!r} is not a version number, 'latest', 'default' or a model version folder", param_hint=hint
    )


def evaluate_folder(
    label: str,
    model: Any,
    folder: Path,
    paths: list[Path],
    full_resolution: bool,
    max_side: int | None,
    skipped: dict[str, str],
) -> dict[str, Any]:
    """``models.evaluate`` report of ``model`` on ``paths`` (named relative to ``folder``).

    Unreadable photographs are left out and recorded in ``skipped``; progress goes to stderr.
    """
    from PIL import Image

    from models.colorize import colorize_array
    from models.evaluate import evaluate_images, load_rgb

    def photographs():
        for i, path in enumerate(paths, 1):
            name = path.relative_to(folder).as_posix()
            click.echo(f"{label}: [{i}/{len(paths)}] {name}", err=True)
            try:
                rgb = load_rgb(path, max_side)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                skipped[name] = f"not a readable image ({exc})"
                continue
            yield name, rgb

    report = evaluate_images(
        lambda gray: colorize_array(model, gray), photographs(), model.image_size, full_resolution
    )
    report["model"] = {
        "label": label,
        "version": model.version,
        "preset": model.preset,
        "image_size": model.image_size,
    }
    return report


def _metric_cells(m: dict[str, float]) -> str:
    return (
        f"{m['psnr']:.2f} | {m['ssim']:.4f} | {m['ciede2000']:.2f} | {m['colourfulness']:.1f} "
        f"| {m['colourfulness_gt']:.1f}"
    )


def per_image_table(reports: dict[str, dict[str, Any]], scale: str) -> str:
    """A Markdown table with one row per photograph and model, then its grayscale baseline row."""
    lines = [
        "| image | size | model | PSNR (dB) | SSIM | CIEDE2000 | colourfulness | ground truth CF |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    by_name = {label: {row["name"]: row for row in r["images"]} for label, r in reports.items()}
    first = next(iter(reports.values()))
    for row in first["images"]:
        size = f"{row['width']}x{row['height']}"
        for label in reports:
            scores = by_name[label][row["name"]][scale]
            lines.append(f"| {row['name']} | {size} | {label} | {_metric_cells(scores['model'])} |")
        baseline = _metric_cells(row[scale]["grayscale"])
        lines.append(f"| {row['name']} | {size} | grayscale input (baseline) | {baseline} |")
    return "\n".join(lines)


def evaluation_markdown(reports: dict[str, dict[str, Any]], images_dir: Path) -> str:
    """Per-photograph table and mean tables (each scale), Markdown, with the grayscale baseline."""
    from models.evaluate import markdown_table

    first = next(iter(reports.values()))
    scales = [s for s in ("model_size", "full") if s in first["mean"]]
    sizes = sorted({r["model"]["image_size"] for r in reports.values()})
    count = len(first["images"])
    lines = [
        f"# Colorization quality: {' vs '.join(reports)} on {count} photograph(s) in {images_dir}",
        "",
        "PSNR and SSIM: higher is closer to the original; CIEDE2000: mean colour difference, lower is "
        "better; colourfulness (Hasler-Suesstrunk) of the output beside the ground truth's (CF).",
        "",
        f"## Per photograph, at {_SCALE_TITLES[scales[-1]]}",
        "",
        per_image_table(reports, scales[-1]),
    ]
    from models.evaluate import category_table

    for label, report in reports.items():
        if any("category" in row for row in report["images"]):
            lines += ["", f"## By category: {label}, at {_SCALE_TITLES[scales[-1]]}", ""]
            lines.append(category_table(report, scales[-1]))
    for scale in scales:
        lines += ["", f"## Means at {_SCALE_TITLES[scale]}", ""]
        if scale == "model_size" and len(sizes) > 1:
            listed = ", ".join(map(str, sizes))
            lines += [f"(models of {listed} px: the baseline row is at the first one's size)", ""]
        lines.append(markdown_table(reports, scale))
    return "\n".join(lines) + "\n"


def _sheet_path(sheet: Path, label: str, several: bool) -> Path:
    if not several:
        return sheet
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "model"
    return sheet.with_name(f"{sheet.stem}-{slug}{sheet.suffix or '.png'}")


@main.command()
@click.option(
    "--model",
    "model_ref",
    default=None,
    help="A version number, 'latest', 'default' (the packaged model) or a model version folder.",
)
@click.option(
    "--compare",
    nargs=2,
    default=None,
    metavar="A B",
    help="Two models (as for --model) scored side by side, instead of --model.",
)
@click.option(
    "--images",
    "images_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A folder of colour photographs (jpg, png, webp; subfolders too): the ground truth.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the full report(s), per photograph and mean, as JSON.",
)
@click.option(
    "--markdown",
    "markdown_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the tables printed on stdout to this file as well.",
)
@click.option(
    "--sheet",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a before/after PNG (grayscale, colorized, original); with --compare, one per model "
    "(FILE-<model>.png).",
)
@click.option(
    "--max-side",
    type=click.IntRange(min=1),
    default=None,
    help="Shrink photographs so their long side is at most this many pixels before scoring.",
)
@click.option("--no-full", is_flag=True, help="Score at the model's own size only (skip full resolution).")
def evaluate(
    model_ref: str | None,
    compare: tuple[str, str] | None,
    images_dir: Path,
    json_out: Path | None,
    markdown_out: Path | None,
    sheet: Path | None,
    max_side: int | None,
    no_full: bool,
) -> None:
    """Measure colorization quality on a folder of colour photographs.

    Each photograph is turned gray, colorized and compared with the original (PSNR, SSIM,
    CIEDE2000, colourfulness), at the model's size and at full resolution, beside the grayscale
    input itself as a baseline. Markdown tables go to stdout, progress to stderr.
    """
    if (model_ref is None) == (compare is None):
        raise click.UsageError("give either --model or --compare A B")
    refs = [model_ref] if compare is None else list(compare)
    hint = "--model" if compare is None else "--compare"
    settings = load_settings()
    setup_logging(settings)
    paths = find_images(images_dir)
    if not paths:
        raise click.UsageError(f"no jpg, png or webp photograph under {images_dir}")

    from models.store import ModelStore

    store = ModelStore(settings.models_dir)
    models: dict[str, Any] = {}
    for ref in refs:
        label, loaded = resolve_model(store, ref, hint)
        if label in models:
            raise click.UsageError(f"--compare needs two different models; {ref!r} is given twice")
        models[label] = loaded
    click.echo(f"scoring {', '.join(models)} on {len(paths)} photograph(s) in {images_dir}", err=True)

    skipped: dict[str, str] = {}
    reports = {
        label: evaluate_folder(label, loaded, images_dir, paths, not no_full, max_side, skipped)
        for label, loaded in models.items()
    }
    for name, reason in skipped.items():
        click.echo(f"skipped {name}: {reason}", err=True)
    if not next(iter(reports.values()))["images"]:
        raise click.ClickException(f"no readable photograph under {images_dir}")

    markdown = evaluation_markdown(reports, images_dir)
    click.echo(markdown, nl=False)
    if markdown_out is not None:
        markdown_out.write_text(markdown)
        click.echo(f"wrote {markdown_out}", err=True)
    if json_out is not None:
        import json

        from service.schemas import finite_or_none

        document = {
            "images_dir": str(images_dir),
            "full_resolution": not no_full,
            "max_side": max_side,
            "models": list(reports),
            "reports": reports,
            "skipped": skipped,
        }
        json_out.write_text(json.dumps(finite_or_none(document), indent=2, default=str) + "\n")
        click.echo(f"wrote {json_out}", err=True)
    if sheet is not None:
        from models.colorize import colorize_array
        from models.evaluate import before_after_sheet

        readable = [p for p in paths if p.relative_to(images_dir).as_posix() not in skipped]
        for label, loaded in models.items():
            target = _sheet_path(sheet, label, len(models) > 1)
            before_after_sheet(lambda gray, m=loaded: colorize_array(m, gray), readable).save(target, "PNG")
            click.echo(f"wrote {target}", err=True)


@main.command("default-model")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var/default-model"),
    show_default=True,
    help="Where the photographs, runs and candidate models go (not committed).",
)
@click.option("--candidate-steps", type=click.IntRange(min=1), default=None, help="[default: the recipe's]")
@click.option("--final-steps", type=click.IntRange(min=1), default=None, help="[default: the recipe's]")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write the model [default: the package's models/default/].",
)
@click.option(
    "--docs",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs/default-model"),
    show_default=True,
    help="Where to write the comparison that chose the model.",
)
@click.option(
    "--recalibrate",
    is_flag=True,
    help="Do not train: choose the shipped model's render size, flip averaging and chroma scale "
    "again on the calibration photographs, and score it again.",
)
def default_model(
    workdir: Path,
    candidate_steps: int | None,
    final_steps: int | None,
    out: Path | None,
    docs: Path,
    recalibrate: bool,
) -> None:
    """Build the shipped default model: fetch photographs, compare candidates, train, evaluate."""
    settings = load_settings()
    setup_logging(settings)
    from models.recipe import CANDIDATE_STEPS, FINAL_STEPS, build_default_model, recalibrate_default
    from models.store import DEFAULT_MODEL_DIR

    if recalibrate:
        try:
            recalibrate_default(workdir, out or DEFAULT_MODEL_DIR, docs)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"recalibrated {out or DEFAULT_MODEL_DIR}; see {docs}")
        return
    comparison = build_default_model(
        workdir,
        candidate_steps or CANDIDATE_STEPS,
        final_steps or FINAL_STEPS,
        out_dir=out or DEFAULT_MODEL_DIR,
        docs_dir=docs,
    )
    click.echo(f"winner {comparison['winner']}; model written to {out or DEFAULT_MODEL_DIR}; see {docs}")


if __name__ == "__main__":
    main()
