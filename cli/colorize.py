"""``colorizer colorize``: photographs and folders colorized into files, decoding, the model and
encoding overlapped."""

from __future__ import annotations

import json
import logging
import os
import queue
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cli.main import load_settings, main, setup_logging

log = logging.getLogger("colorizer.cli")

# What ``colorize`` picks up from a folder (files named on the command line are always tried).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
OUTPUT_FORMATS = ("jpeg", "png", "webp")  # names of inference.images.FORMATS


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


def read_hints_file(path: Path, sources: list[Path]) -> dict[Path, Any]:
    """The colour hints of ``--hints``, by photograph: a JSON list is the one photograph's (refused
    for several), an object maps each photograph's path as given, or its file name, to its list.
    Raises click.BadParameter for a file that is not such JSON or names no photograph given."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"{path}: not readable JSON: {exc}", param_hint="--hints") from None
    if isinstance(data, list):
        if len(sources) != 1:
            raise click.BadParameter(
                f"a list of hints is for one photograph, and {len(sources)} are given: use an object from "
                "each photograph's path to its list",
                param_hint="--hints",
            )
        return {sources[0]: data}
    if not isinstance(data, dict):
        raise click.BadParameter("not a JSON list of points nor an object of lists", param_hint="--hints")
    by_path = {}
    for source in sources:
        found = data.get(str(source), data.get(source.name))
        if found is not None:
            by_path[source] = found
    unknown = set(data) - {str(s) for s in sources} - {s.name for s in sources}
    if unknown:
        names = ", ".join(sorted(unknown))
        raise click.BadParameter(f"hints for photographs not given: {names}", param_hint="--hints")
    return by_path


def describe_failure(exc: BaseException) -> str:
    """A one-line reason for a photograph that could not be colorized."""
    from inference.errors import BadHints, BadRenderSize, EngineBusy, ImageRejected

    if isinstance(exc, ImageRejected | BadRenderSize | BadHints | EngineBusy):  # a sentence already
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
    return f"{type(exc).__name__}: {exc}"


def run_windowed(
    tasks: list[ColorizeTask],
    window: int,
    start: Callable[[ColorizeTask], None],
    done: queue.SimpleQueue,
    on_done: Callable[[ColorizeTask, str | None], None],
) -> None:
    """``start`` each task (it puts ``(task, error or None)`` on ``done`` once finished), at most
    ``window`` in flight; ``on_done`` for each as it finishes, in this thread."""
    pending = list(reversed(tasks))
    in_flight = 0
    while pending or in_flight:
        while pending and in_flight < window:
            start(pending.pop())
            in_flight += 1
        task, error = done.get()
        in_flight -= 1
        on_done(task, error)


class FolderRun:
    """Colorize many photographs with the API's serving path, in a pipeline of three stages.

    The stages are ``inference.pipeline.Pipeline``'s, as the API runs them. A pool of ``jobs``
    threads reads, decodes (upright, sRGB, alpha kept aside) and prepares each photograph; the
    engine's inference thread runs the model on batches of up to ``max_batch_size`` prepared
    photographs (padded to its bucket sizes, in its precision); another pool of ``jobs`` threads
    finishes, encodes and writes each result atomically. At most ``window`` photographs are
    between reading and writing at any time, so memory stays bounded whatever the folder's size.
    Heavy work releases the GIL (Pillow, TensorFlow, XLA), so the stages overlap on several cores.
    """

    def __init__(
        self,
        pipeline: Any,
        model: Any,
        *,
        fmt: str,
        render_size: int | None,
        jobs: int,
        window: int,
        hints: dict[Path, Any] | None = None,
    ):
        self.pipeline = pipeline
        self.hints = hints or {}  # a photograph's colour hints, by its path
        self.model = model
        self.fmt = fmt
        self.render_size = render_size
        self.jobs = jobs
        self.window = window

    def _decode(self, task: ColorizeTask) -> Any:
        return self.pipeline.decode_and_prepare(
            task.source.read_bytes(), self.model, self.render_size, hints=self.hints.get(task.source)
        )

    def _finish(self, task: ColorizeTask, prepared: Any, prediction: Any) -> None:
        write_atomically(task.target, self.pipeline.finish_and_encode(prepared, prediction, self.fmt))

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
                prepared = future.result()
                try:
                    prediction = self.pipeline.submit(prepared)
                except Exception as exc:  # the engine stopped, or refused it
                    failed(task, exc)
                else:
                    prediction.add_done_callback(lambda f: predicted(task, f, prepared))

        def predicted(task: ColorizeTask, future: Future, prepared: Any) -> None:
            # in the inference thread: hand the work over at once, never do it here
            if future.exception() is not None:
                failed(task, future.exception())
                return
            try:
                finished = encoders.submit(self._finish, task, prepared, future.result())
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

        def start(task: ColorizeTask) -> None:
            decoders.submit(self._decode, task).add_done_callback(lambda f: decoded(task, f))

        try:
            run_windowed(tasks, self.window, start, done, on_done)
        finally:
            decoders.shutdown(wait=True, cancel_futures=True)
            encoders.shutdown(wait=True, cancel_futures=True)


def resolve_colorize_model(engine: Any, store: Any, value: str) -> Any:
    """The LoadedModel for --model: a version number, 'latest' (the newest published version, else
    the packaged default) or 'default'. Raises click errors."""
    from common.store import BrokenVersion, UnknownVersion

    text = resolve_version(store, value)
    try:
        return engine.model(text)
    except (UnknownVersion, BrokenVersion) as exc:
        raise click.ClickException(str(exc)) from None


def resolve_version(store: Any, value: str) -> str:
    """The version --model names, as a version number's text or 'default' ('latest': the newest
    published version, else the packaged default). Raises click errors."""
    from common.store import DEFAULT_VERSION, parse_version

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
    return text


class RemoteRun:
    """Colorize many photographs on the colorize workers (``common.fanout``): each file's bytes go
    to the ``colorize`` queue, the encoded answer is written atomically here; at most ``window``
    photographs are in flight. Same ``run`` as FolderRun."""

    def __init__(
        self, remote: Any, version: str, *, fmt: str, render_size: int | None, window: int, hints=None
    ):
        self.remote, self.version, self.fmt = remote, version, fmt
        self.render_size, self.window, self.hints = render_size, window, hints or {}

    def _answer(self, task: ColorizeTask, future: Future) -> str | None:
        from common.fanout import decode_photo

        try:
            answer = future.result()
        except Exception as exc:  # RemoteFailed: no worker brought it back
            return str(exc)
        if "error" in answer:
            return str(answer["error"])
        write_atomically(task.target, decode_photo(answer["data"]))
        return None

    def run(self, tasks: list[ColorizeTask], on_done: Callable[[ColorizeTask, str | None], None]) -> None:
        done: queue.SimpleQueue[tuple[ColorizeTask, str | None]] = queue.SimpleQueue()
        writers = ThreadPoolExecutor(2, thread_name_prefix="write")

        def answered(task: ColorizeTask, future: Future) -> None:  # in the sender's watching thread
            writers.submit(lambda: done.put((task, self._answer(task, future))))

        def start(task: ColorizeTask) -> None:
            try:
                future = self.remote.submit(
                    task.source.read_bytes(),
                    version=self.version,
                    image_format=self.fmt,
                    render_size=self.render_size,
                    hints=self.hints.get(task.source),
                )
            except OSError as exc:
                done.put((task, describe_failure(exc)))
            else:
                future.add_done_callback(lambda f: answered(task, f))

        try:
            run_windowed(tasks, self.window, start, done, on_done)
        finally:
            writers.shutdown(wait=True, cancel_futures=True)


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
@click.option(
    "--hints",
    "hints_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='Colour hints (JSON) for a model that takes them: a list of points such as [{"x": 120, "y": 80, '
    '"color": "#aa3311", "radius": 3}] for one photograph, or an object from each photograph\'s path '
    "(as given, or its file name) to its list.",
)
@click.option(
    "--remote",
    is_flag=True,
    help="Send the photographs to the colorize workers (colorizer worker --colorize) through "
    "COLORIZER_BROKER_URL instead of running the model here.",
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
    hints_file: Path | None = None,
    remote: bool = False,
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
    hints = read_hints_file(hints_file, [t.source for t in tasks]) if hints_file is not None else {}
    if not todo:  # a finished run run again: answer without loading TensorFlow and a model
        click.echo(f"nothing to do: the {skipped} output(s) exist in {out_dir} (--overwrite redoes them)")
        return
    if remote:
        colorize_remotely(
            settings, todo, len(tasks), skipped, out_dir, model_version, render_size, fmt, hints
        )
        return

    from PIL import Image

    from inference.engine import engine_from_settings
    from inference.pipeline import Pipeline
    from models.store import ModelStore, packaged_default

    jobs = jobs or min(4, os.cpu_count() or 1)
    window = max(2 * settings.max_batch_size, 2 * jobs)
    engine = engine_from_settings(
        ModelStore(settings.models_dir, packaged_default(settings.default_model_dir)),
        settings,
        cache_size=1,
        max_queue=window + 1,  # the window bounds what is queued: never "busy"
    )
    try:
        model = resolve_colorize_model(engine, engine.store, model_version)
        try:
            engine.check_render_size(model, render_size)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--render-size") from None
        if hints and not model.hints:
            from models.hints import NoHintInputs

            raise click.BadParameter(str(NoHintInputs(model.version)), param_hint="--hints")
        click.echo(
            f"colorizing {len(todo)} of {len(tasks)} file(s) with model version {model.version} "
            f"({model.serving.runtime_name} on {engine.device}, "
            f"batches of up to {settings.max_batch_size})",
            err=True,
        )
        previous_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, settings.max_image_pixels
        run = FolderRun(
            Pipeline(engine, settings.max_image_pixels, settings.min_image_side),
            model,
            fmt=fmt,
            render_size=render_size,
            jobs=jobs,
            window=window,
            hints=hints,
        )
        try:
            written, failures = run_with_progress(run, todo)
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit
    finally:
        engine.stop()
    report(written, failures, len(tasks), skipped, out_dir, model.version)


def run_with_progress(run: FolderRun | RemoteRun, todo: list[ColorizeTask]) -> tuple[int, list[str]]:
    """``run`` over ``todo`` with a progress bar: (files written, failure lines). Ctrl-C exits 130."""
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
    return written, failures


def report(written: int, failures: list[str], total: int, skipped: int, out_dir: Path, version: Any) -> None:
    """The run's last lines; exit code 1 when a file failed."""
    for message in failures:
        click.echo(message, err=True)
    summary = f"colorized {written} of {total} file(s) into {out_dir} with model version {version}"
    if skipped:
        summary += f"; skipped {skipped} whose output already exists (--overwrite redoes them)"
    if failures:
        summary += f"; {len(failures)} failed"
    click.echo(summary)
    if failures:
        sys.exit(1)


def colorize_remotely(
    settings: Any,
    todo: list[ColorizeTask],
    total: int,
    skipped: int,
    out_dir: Path,
    model_version: str,
    render_size: int | None,
    fmt: str,
    hints: dict[Path, Any],
) -> None:
    """``colorizer colorize --remote``: the photographs colorized by the colorize workers."""
    from common.fanout import RemoteColorizer
    from common.queue import create_celery
    from models.store import ModelStore, packaged_default

    if settings.uses_embedded_broker:
        raise click.UsageError("--remote sends photographs through a shared broker: set COLORIZER_BROKER_URL")
    version = resolve_version(
        ModelStore(settings.models_dir, packaged_default(settings.default_model_dir)), model_version
    )
    remote = RemoteColorizer(
        create_celery(settings),
        stall_seconds=settings.fanout_stall_seconds,
        queue_seconds=settings.fanout_queue_seconds,
    )
    workers = remote.workers()
    if not workers:
        raise click.ClickException(
            "no colorize worker answers on the broker: start one (colorizer worker --colorize), "
            "or leave out --remote to colorize here"
        )
    click.echo(
        f"colorizing {len(todo)} of {total} file(s) with model version {version} on {len(workers)} "
        f"colorize worker(s): {', '.join(workers)}",
        err=True,
    )
    window = min(128, 2 * settings.max_batch_size * len(workers))
    run = RemoteRun(remote, version, fmt=fmt, render_size=render_size, window=window, hints=hints)
    try:
        written, failures = run_with_progress(run, todo)
    finally:
        remote.close()
    report(written, failures, total, skipped, out_dir, version)
