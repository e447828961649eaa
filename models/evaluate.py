"""Colorization quality: PSNR, SSIM, CIEDE2000 and colourfulness against the ground truth.

Each photograph is reduced to its own grayscale version, colorized, and compared with the
original, at the model's own size and at full resolution. The grayscale input itself is scored
the same way as a baseline: a colorizer that does not beat "no colour" on CIEDE2000 is not
colouring. Implementations: tf.image.psnr / tf.image.ssim and skimage's deltaE_ciede2000.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps
from skimage.color import deltaE_ciede2000, rgb2lab

from common.photos import PHOTO_FORMATS
from models import color
from models.colorize import colorize_array
from models.hints import Hint
from models.store import LoadedModel

log = logging.getLogger(__name__)

METRICS = ("psnr", "ssim", "ciede2000", "colourfulness", "colourfulness_gt", "colourfulness_diff")


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk (2003) colourfulness of an RGB image with 0-255 values."""
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = r - g
    yb = (r + g) / 2.0 - b
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def grayscale_of(rgb: np.ndarray) -> np.ndarray:
    """The photograph with its chroma removed (Lab L kept, a = b = 0), as RGB uint8."""
    lum = color.rgb_to_lab(np.asarray(rgb, np.float32) / 255.0)[..., :1]
    gray = color.lab_to_rgb(tf.concat([lum, tf.zeros_like(lum), tf.zeros_like(lum)], axis=-1))
    return np.asarray(tf.round(gray * 255.0), dtype=np.uint8)


def score(output: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Every metric of ``output`` against ``truth`` (RGB uint8 arrays of one shape)."""
    out_t = tf.convert_to_tensor(output, tf.float32)
    gt_t = tf.convert_to_tensor(truth, tf.float32)
    psnr = float(tf.image.psnr(out_t, gt_t, max_val=255.0))
    ssim = float(tf.image.ssim(out_t, gt_t, max_val=255.0)) if min(output.shape[:2]) >= 11 else float("nan")
    delta = deltaE_ciede2000(rgb2lab(truth), rgb2lab(output))
    cf_out, cf_gt = colourfulness(output), colourfulness(truth)
    return {
        "psnr": min(psnr, 100.0),  # identical images give infinity; cap it so means stay finite
        "ssim": ssim,
        "ciede2000": float(np.mean(delta)),
        "colourfulness": cf_out,
        "colourfulness_gt": cf_gt,
        "colourfulness_diff": cf_out - cf_gt,
    }


def load_rgb(path: Path, max_side: int | None = None) -> np.ndarray:
    """A photograph as upright RGB uint8, shrunk so its long side is at most ``max_side``."""
    with Image.open(path, formats=PHOTO_FORMATS) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
        if max_side is not None and max(img.size) > max_side:
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return np.asarray(img, dtype=np.uint8)


def square(rgb: np.ndarray, side: int) -> np.ndarray:
    """The centred largest square of ``rgb`` at ``side`` x ``side`` (the model's own view)."""
    height, width = rgb.shape[:2]
    short = min(height, width)
    top, left = (height - short) // 2, (width - short) // 2
    crop = Image.fromarray(rgb[top : top + short, left : left + short])
    return np.asarray(crop.resize((side, side), Image.Resampling.LANCZOS), dtype=np.uint8)


def true_hints(truth: np.ndarray, count: int, rng: np.random.Generator, patch: int = 2) -> list[Hint]:
    """``count`` hints at uniformly random points of ``truth`` (RGB uint8), each the mean colour of
    the truth within ``patch`` pixels of it: what a person who knows the photograph would give."""
    height, width = truth.shape[:2]
    hints = []
    for _ in range(count):
        x, y = int(rng.integers(width)), int(rng.integers(height))
        area = truth[max(0, y - patch) : y + patch + 1, max(0, x - patch) : x + patch + 1]
        rgb = np.round(area.reshape(-1, 3).mean(axis=0)).astype(int)
        hints.append(Hint(float(x), float(y), (int(rgb[0]), int(rgb[1]), int(rgb[2]))))
    return hints


def evaluate_images(
    colorize: Callable[..., np.ndarray],
    images: Iterable[tuple[str, np.ndarray]],
    image_size: int,
    full_resolution: bool = True,
    hints: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Score ``colorize`` (RGB uint8 -> RGB uint8) and the grayscale baseline on ``images``.

    With ``hints`` > 0, ``colorize`` is called as ``colorize(gray, hints)`` with that many hints
    taken from the truth at random points (``true_hints``, repeatable by ``seed``).

    Returns ``{"images": [{name, model_size: {model, grayscale}, full: {...}}], "mean": {...}}``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for name, rgb in images:
        row: dict[str, Any] = {"name": name, "width": int(rgb.shape[1]), "height": int(rgb.shape[0])}
        if "/" in name:  # photographs in subfolders: the first folder is the category
            row["category"] = name.split("/", 1)[0]
        scales = {"model_size": square(rgb, image_size)}
        if full_resolution:
            scales["full"] = rgb
        for scale, truth in scales.items():
            gray = grayscale_of(truth)
            output = colorize(gray, true_hints(truth, hints, rng)) if hints else colorize(gray)
            row[scale] = {"model": score(output, truth), "grayscale": score(gray, truth)}
        rows.append(row)
    return {"images": rows, "mean": mean_scores(rows)}


def mean_scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over images, per scale and per contender (model, grayscale)."""
    means: dict[str, Any] = {}
    for scale in ("model_size", "full"):
        per = [row[scale] for row in rows if scale in row]
        if not per:
            continue
        means[scale] = {
            who: {m: float(np.nanmean([p[who][m] for p in per])) for m in METRICS}
            for who in ("model", "grayscale")
        }
    return means


def by_category(report: dict[str, Any], scale: str = "full") -> dict[str, dict[str, float]]:
    """Per category (``"all"`` last) of a report's photographs: how many, mean CIEDE2000 and PSNR
    of the model and of the grayscale input, the share of photographs where the model's CIEDE2000
    beats the gray input's (``won``), and mean colourfulness of the output and of the truth."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in report["images"]:
        if scale in row:
            groups.setdefault(row.get("category", "uncategorised"), []).append(row)
    groups = dict(sorted(groups.items()))
    groups["all"] = [row for rows in groups.values() for row in rows]
    table = {}
    for name, rows in groups.items():
        model = [row[scale]["model"] for row in rows]
        gray = [row[scale]["grayscale"] for row in rows]
        table[name] = {
            "images": len(rows),
            "ciede2000": float(np.mean([m["ciede2000"] for m in model])),
            "grayscale_ciede2000": float(np.mean([g["ciede2000"] for g in gray])),
            "psnr": float(np.mean([m["psnr"] for m in model])),
            "grayscale_psnr": float(np.mean([g["psnr"] for g in gray])),
            "won": float(
                np.mean([m["ciede2000"] < g["ciede2000"] for m, g in zip(model, gray, strict=True)])
            ),
            "colourfulness": float(np.mean([m["colourfulness"] for m in model])),
            "colourfulness_gt": float(np.mean([m["colourfulness_gt"] for m in model])),
        }
    return table


def category_table(report: dict[str, Any], scale: str = "full") -> str:
    """``by_category`` as a Markdown table."""
    lines = [
        "| category | photographs | CIEDE2000 model / gray | PSNR model / gray (dB) | beats gray "
        "| colourfulness model / truth |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in by_category(report, scale).items():
        label = f"**{name}**" if name == "all" else name
        lines.append(
            f"| {label} | {c['images']} | {c['ciede2000']:.2f} / {c['grayscale_ciede2000']:.2f} "
            f"| {c['psnr']:.2f} / {c['grayscale_psnr']:.2f} | {c['won']:.0%} "
            f"| {c['colourfulness']:.1f} / {c['colourfulness_gt']:.1f} |"
        )
    return "\n".join(lines)


def evaluate_model(
    model: LoadedModel,
    paths: list[Path],
    full_resolution: bool = True,
    max_side: int | None = None,
    root: Path | None = None,
    hints: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate a loaded model on photographs at ``paths`` (see evaluate_images; ``hints`` per
    photograph taken from the truth, for a model that takes them); with ``root``, each is named by
    its path under it, so a subfolder is its category."""
    images = ((p.relative_to(root).as_posix() if root else p.name, load_rgb(p, max_side)) for p in paths)
    report = evaluate_images(
        lambda gray, given=None: colorize_array(model, gray, hints=given),
        images,
        model.image_size,
        full_resolution,
        hints,
        seed,
    )
    report["model"] = {"version": model.version, "preset": model.preset, "image_size": model.image_size}
    if hints:
        report["hints"] = {"per_photograph": hints, "seed": seed}
    return report


def summary(report: dict[str, Any], scale: str = "model_size") -> dict[str, float]:
    """The headline numbers of a report, for a version's metadata."""
    mean = report["mean"][scale]
    return {
        "images": len(report["images"]),
        **{f"{m}": round(v, 4) for m, v in mean["model"].items()},
        **{f"grayscale_{m}": round(v, 4) for m, v in mean["grayscale"].items()},
    }


def markdown_table(reports: dict[str, dict[str, Any]], scale: str = "full") -> str:
    """A Markdown table of mean metrics: one row per model, plus the grayscale baseline."""
    head = "| model | PSNR (dB) | SSIM | CIEDE2000 | colourfulness | ground truth CF | CF diff |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    baseline = None
    for name, report in reports.items():
        mean = report["mean"].get(scale) or report["mean"]["model_size"]
        lines.append(_row(name, mean["model"]))
        baseline = baseline or mean["grayscale"]
    if baseline is not None:
        lines.append(_row("grayscale input (baseline)", baseline))
    return "\n".join(lines)


def _row(name: str, m: dict[str, float]) -> str:
    return (
        f"| {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['ciede2000']:.2f} | {m['colourfulness']:.1f} "
        f"| {m['colourfulness_gt']:.1f} | {m['colourfulness_diff']:+.1f} |"
    )


def before_after_sheet(
    colorize: Callable[[np.ndarray], np.ndarray],
    paths: list[Path],
    tile: int = 320,
    label: Callable[[Path], str] = lambda path: path.stem,
) -> Image.Image:
    """One row per photograph (named by ``label``): grayscale input, colorized output, original;
    labelled columns."""
    from PIL import ImageDraw

    rows = []
    for path in paths:
        rgb = load_rgb(path, max_side=1600)
        gray = grayscale_of(rgb)
        rows.append((label(path), [gray, colorize(gray), rgb]))
    height = max(1, round(tile * min(r[1][0].shape[0] / r[1][0].shape[1] for r in rows))) if rows else tile
    header, label_w, gap = 24, 120, 6
    sheet = Image.new("RGB", (label_w + 3 * (tile + gap), header + len(rows) * (height + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(("grayscale input", "colorized", "original")):
        draw.text((label_w + c * (tile + gap) + 4, 6), title, fill="black")
    for r, (name, images) in enumerate(rows):
        top = header + r * (height + gap)
        draw.text((4, top + height // 2 - 6), name, fill="black")
        for c, image in enumerate(images):
            cell = Image.fromarray(image)
            cell = cell.resize((tile, height), Image.Resampling.LANCZOS)
            sheet.paste(cell, (label_w + c * (tile + gap), top))
    return sheet
