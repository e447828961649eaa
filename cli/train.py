"""``colorizer train``: a training job in the foreground, options derived from ``TrainConfig``."""

from __future__ import annotations

import logging
import re
import signal
import sys
import time
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import click
from pydantic import ValidationError

from cli.main import load_settings, main, setup_logging
from common.settings import Settings

log = logging.getLogger("colorizer.cli")


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
    from common.jobs import JobStore
    from models.config import TrainConfig
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
