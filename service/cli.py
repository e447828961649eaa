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
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from service.settings import Settings, get_settings, redact_url

log = logging.getLogger("colorizer.cli")

# What ``colorize`` picks up from a folder (files named on the command line are always tried).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
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


@main.command()
@click.option("--host", default=None, help="Interface to listen on [default: COLORIZER_HOST].")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="Port [default: COLORIZER_PORT].")
def serve(host: str | None, port: int | None) -> None:
    """Run the HTTP API (uvicorn, one process)."""
    settings = load_settings()
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


@main.command()
@click.option(
    "--dataset",
    required=True,
    help="A folder of colour photographs, or the name of one under <data_dir>/datasets/.",
)
@click.option("--preset", default=None, help="Model preset (seed or lab) [default: lab].")
@click.option("--steps", type=int, default=None, help="Training steps (batches).")
@click.option("--epochs", type=int, default=None, help="Passes over the dataset (instead of --steps).")
@click.option("--image-size", type=int, default=None, help="Training crop side, a power of two.")
@click.option("--batch-size", type=int, default=None)
@click.option("--width", type=int, default=None, help="Base filter count (64 is the report's).")
@click.option("--l1-weight", type=float, default=None)
@click.option("--sample-every", type=int, default=None, help="Steps between sample plots.")
@click.option("--publish-every", type=int, default=None, help="Steps between published versions.")
@click.option("--checkpoint-every", type=int, default=None, help="Steps between resumable checkpoints.")
@click.option("--init-from", default=None, help="Start from this published model version.")
@click.option("--seed", type=int, default=None, help="Random seed for a repeatable run.")
def train(dataset: str, init_from: str | None, **options: Any) -> None:
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
    if init_from is not None:
        config["init_from"] = init_from if init_from == "default" else _int_option(init_from, "--init-from")
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
        outcome = run_job(
            settings, job_id, config, verbose=1, should_stop=lambda: bool(interrupted), dataset_path=folder
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


def _int_option(value: str, hint: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a version number", param_hint=hint) from None


def collect_inputs(inputs: tuple[Path, ...]) -> list[Path]:
    """Files named on the command line, plus the image files directly inside named folders."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
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
    "--model", "model_version", default="latest", show_default=True, help="Model version number, or 'latest'."
)
@click.option(
    "--render-size",
    type=int,
    default=None,
    help="Side the model runs at (a multiple of 2**levels) [default: its training size].",
)
@click.option("--format", "fmt", type=click.Choice(sorted(OUTPUT_FORMATS)), default="png", show_default=True)
def colorize(
    inputs: tuple[Path, ...], out_dir: Path, model_version: str, render_size: int | None, fmt: str
) -> None:
    """Colorize image files, or the images in folders, into the --out folder.

    Unreadable files are skipped with a message; the exit code is 1 if any was skipped.
    """
    settings = load_settings()
    setup_logging(settings)
    files = collect_inputs(inputs)
    if not files:
        raise click.UsageError("no image files in the given inputs")

    from PIL import Image, ImageOps, UnidentifiedImageError

    from models.store import BrokenVersion, ModelStore, UnknownVersion

    store = ModelStore(settings.models_dir)
    if model_version == "latest":
        latest = store.latest()
        if latest is None:
            raise click.ClickException(
                f"no model in {store.root}: train one first (colorizer train, or POST /jobs)"
            )
        version = int(latest.version)
    else:
        version = _int_option(model_version, "--model")
    click.echo(f"loading model version {version}", err=True)
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    try:
        from models.colorize import check_render_size, colorize_array

        model = store.load(version)
    except (UnknownVersion, BrokenVersion) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        check_render_size(model, render_size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--render-size") from None

    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[Path] = set()
    skipped: list[str] = []
    written = 0
    with click.progressbar(files, label="Colorizing", item_show_func=lambda p: p.name if p else "") as bar:
        for path in bar:
            try:
                with Image.open(path) as img:
                    rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
            except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as exc:
                skipped.append(f"skipped {path}: not a readable image ({exc})")
                continue
            target = output_path(path, out_dir, fmt, taken)
            try:
                result = Image.fromarray(colorize_array(model, rgb, render_size))
                result.save(target, format=OUTPUT_FORMATS[fmt], **({"quality": 95} if fmt != "png" else {}))
            except OSError as exc:
                skipped.append(f"skipped {path}: cannot write {target} ({exc})")
                continue
            written += 1
    for message in skipped:
        click.echo(message, err=True)
    click.echo(f"colorized {written} of {len(files)} file(s) into {out_dir} with model version {version}")
    if skipped:
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
    from models.store import DEFAULT_VERSION, BrokenVersion, ModelStore, UnknownVersion

    text = value.strip()
    try:
        if text.lower() == DEFAULT_VERSION:
            return DEFAULT_VERSION, store.load(DEFAULT_VERSION)
        if text.lower() == "latest":
            latest = store.latest()
            if latest is None:
                raise click.ClickException(f"no model in {store.root}: train one first, or name a version")
            text = str(latest.version)
        if text.isdigit():
            return f"version {int(text)}", store.load(int(text))
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
@click.option("--candidate-minutes", type=float, default=7.0, show_default=True)
@click.option("--final-minutes", type=float, default=32.0, show_default=True)
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
def default_model(
    workdir: Path, candidate_minutes: float, final_minutes: float, out: Path | None, docs: Path
) -> None:
    """Build the shipped default model: fetch photographs, compare candidates, train, evaluate."""
    settings = load_settings()
    setup_logging(settings)
    from models.recipe import build_default_model
    from models.store import DEFAULT_MODEL_DIR

    comparison = build_default_model(
        workdir, candidate_minutes, final_minutes, out_dir=out or DEFAULT_MODEL_DIR, docs_dir=docs
    )
    click.echo(f"winner {comparison['winner']}; model written to {out or DEFAULT_MODEL_DIR}; see {docs}")


if __name__ == "__main__":
    main()
