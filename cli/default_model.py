"""``colorizer default-model``: the shipped default model's recipe (``recipe``), or its recalibration."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from cli.main import load_settings, main, setup_logging

log = logging.getLogger("colorizer.cli")


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
    "--candidate",
    "candidates",
    multiple=True,
    help="Compare only this candidate (repeatable) instead of all the recipe's: for a rebuild on new "
    "photographs that need not settle the design again. [default: all]",
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
    candidates: tuple[str, ...],
    recalibrate: bool,
) -> None:
    """Build the shipped default model: fetch photographs, compare candidates, train, evaluate."""
    settings = load_settings()
    setup_logging(settings)
    from models.store import DEFAULT_MODEL_DIR
    from recipe.default_model import (
        CANDIDATE_STEPS,
        FINAL_STEPS,
        build_default_model,
        candidates_named,
        recalibrate_default,
    )

    if recalibrate:
        try:
            recalibrate_default(workdir, out or DEFAULT_MODEL_DIR, docs)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"recalibrated {out or DEFAULT_MODEL_DIR}; see {docs}")
        return
    try:
        candidates_named(list(candidates) or None)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    comparison = build_default_model(
        workdir,
        candidate_steps or CANDIDATE_STEPS,
        final_steps or FINAL_STEPS,
        out_dir=out or DEFAULT_MODEL_DIR,
        docs_dir=docs,
        candidates=list(candidates) or None,
    )
    click.echo(f"winner {comparison['winner']}; model written to {out or DEFAULT_MODEL_DIR}; see {docs}")
