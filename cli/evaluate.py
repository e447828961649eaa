"""``colorizer evaluate``: a model (or two) scored against the gray input on a folder of photographs."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import click

from cli.main import load_settings, main, setup_logging

log = logging.getLogger("colorizer.cli")

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
    from common.store import DEFAULT_VERSION, BrokenVersion, UnknownVersion, parse_version
    from models.store import ModelStore

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
    hints: int = 0,
) -> dict[str, Any]:
    """``models.evaluate`` report of ``model`` on ``paths`` (named relative to ``folder``), with
    ``hints`` per photograph taken from the truth at random points (repeatable: seed 0).

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
        lambda gray, given=None: colorize_array(model, gray, hints=given),
        photographs(),
        model.image_size,
        full_resolution,
        hints,
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
@click.option(
    "--hints",
    type=click.IntRange(min=0, max=200),
    default=0,
    show_default=True,
    help="Give each photograph this many colour hints taken from the original at random points (the "
    "same points every run), for models that take hints.",
)
def evaluate(
    model_ref: str | None,
    compare: tuple[str, str] | None,
    images_dir: Path,
    json_out: Path | None,
    markdown_out: Path | None,
    sheet: Path | None,
    max_side: int | None,
    no_full: bool,
    hints: int = 0,
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

    from models.store import ModelStore, packaged_default

    store = ModelStore(settings.models_dir, packaged_default(settings.default_model_dir))
    models: dict[str, Any] = {}
    for ref in refs:
        label, loaded = resolve_model(store, ref, hint)
        if label in models:
            raise click.UsageError(f"--compare needs two different models; {ref!r} is given twice")
        models[label] = loaded
        if hints and not loaded.hints:
            raise click.BadParameter(f"model {label} takes no colour hints", param_hint="--hints")
    click.echo(f"scoring {', '.join(models)} on {len(paths)} photograph(s) in {images_dir}", err=True)

    skipped: dict[str, str] = {}
    reports = {
        label: evaluate_folder(label, loaded, images_dir, paths, not no_full, max_side, skipped, hints)
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
            "hints": hints,
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
