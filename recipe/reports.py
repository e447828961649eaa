"""What the recipe writes for people to read: the comparison (Markdown and JSON), the manifest of
photographs with their licences, and the before/after sheets (per candidate, the validation
photographs, Gramps' old photographs)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluate import category_table, markdown_table
from models.store import LoadedModel, ModelStore
from recipe.calibrate import CALIBRATED_COLOURFULNESS
from recipe.catalogue import GRAMPS_COLOUR_PORTRAITS
from recipe.splits import CATEGORIES, SELECT_SIDE

log = logging.getLogger(__name__)


def write_sheets(workdir: Path, docs_dir: Path, runs: list[dict[str, Any]], validation: list[Path]) -> None:
    """A before/after sheet of the validation photographs per run: ``sheet-<name>.jpg``."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    store = ModelStore(workdir / "models")
    for run in runs:
        write_validation_sheet(store.load(run["version"]), validation, docs_dir / f"sheet-{run['name']}.jpg")


# Real old photographs (no colour original: only to look at), from Gramps' example family tree;
# its colour portraits are validation photographs (people), not old photographs.
OLD_PHOTOGRAPHS = ("gramps", "usr/share/doc/gramps/example/gramps/*.jpg")


def write_old_photographs_sheet(workdir: Path, model: LoadedModel, out: Path) -> Path:
    """A sheet of the old photographs as given and as the model colours them (two columns)."""
    from PIL import Image, ImageDraw

    from models.colorize import colorize_array
    from models.evaluate import load_rgb
    from recipe.photo_sources import unpack

    package, pattern = OLD_PHOTOGRAPHS
    folder = unpack(workdir, [package])
    paths = sorted(p for p in folder.glob(pattern) if p.name not in GRAMPS_COLOUR_PORTRAITS)
    tile, gap, header = 300, 6, 24
    rows = []
    for path in paths:
        rgb = load_rgb(path, max_side=900)
        out_rgb = np.asarray(colorize_array(model, rgb))
        height = round(tile * rgb.shape[0] / rgb.shape[1])
        rows.append(
            [Image.fromarray(a).resize((tile, height), Image.Resampling.LANCZOS) for a in (rgb, out_rgb)]
        )
    sheet = Image.new("RGB", (2 * tile + 3 * gap, header + sum(r[0].height + gap for r in rows)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((gap + 4, 6), "old photograph (Gramps example)", fill="black")
    draw.text((2 * gap + tile + 4, 6), "colorized by the default model", fill="black")
    top = header
    for left, right in rows:
        sheet.paste(left, (gap, top))
        sheet.paste(right, (2 * gap + tile, top))
        top += left.height + gap
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, "JPEG", quality=85, optimize=True)
    return out


def write_validation_sheet(model: LoadedModel, validation: list[Path], out: Path) -> Path:
    """The before/after sheet of the validation photographs, people first."""
    from models.colorize import colorize_array
    from models.evaluate import before_after_sheet

    order = {c: i for i, c in enumerate(CATEGORIES)}
    paths = sorted(validation, key=lambda p: (order.get(p.parent.name, len(order)), p.name))
    sheet = before_after_sheet(
        lambda gray: colorize_array(model, gray),
        paths,
        tile=200,
        label=lambda p: f"{p.parent.name}:\n{p.stem.rsplit('__', 1)[-1][:16]}",
    )
    sheet.convert("RGB").save(out, "JPEG", quality=85, optimize=True)
    return out


def write_hints_sheet(
    model: LoadedModel, photos: list[Path], out: Path, count: int = 10, tile: int = 220
) -> Path:
    """Rows of: the gray input, the automatic colours, the colours with ``count`` hints taken from
    the original (``models.evaluate.true_hints``, seed 0; each marked by a ring), the original."""
    from PIL import Image, ImageDraw

    from models.colorize import colorize_array
    from models.evaluate import grayscale_of, load_rgb, true_hints

    rng = np.random.default_rng(0)
    rows = []
    for path in photos:
        rgb = load_rgb(path, max_side=1600)
        gray = grayscale_of(rgb)
        hints = true_hints(rgb, count, rng)
        hinted = Image.fromarray(np.asarray(colorize_array(model, gray, hints=hints)))
        draw = ImageDraw.Draw(hinted)
        ring = max(4, min(rgb.shape[:2]) // 60)
        for h in hints:
            draw.ellipse(
                (h.x - ring, h.y - ring, h.x + ring, h.y + ring), outline="white", width=max(1, ring // 3)
            )
        cells = [gray, np.asarray(colorize_array(model, gray)), np.asarray(hinted), rgb]
        rows.append(
            [Image.fromarray(c).resize((tile, round(tile * rgb.shape[0] / rgb.shape[1]))) for c in cells]
        )
    titles = ("gray input", "automatic", f"{count} hints (rings)", "original")
    gap, header = 6, 22
    sheet = Image.new("RGB", (4 * (tile + gap), header + sum(r[0].height + gap for r in rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(titles):
        draw.text((c * (tile + gap) + 4, 5), title, fill="black")
    top = header
    for row in rows:
        for c, cell in enumerate(row):
            sheet.paste(cell, (c * (tile + gap), top))
        top += row[0].height + gap
    sheet.save(out, "JPEG", quality=85, optimize=True)
    return out


def hint_lines(hints: dict[str, Any]) -> list[str]:
    """The comparison's section on colour hints (recipe.hints): how the hint run was chosen and the
    curve of CIEDE2000 against the number of hints per photograph."""
    if "skipped" in hints or "validation_curve" not in hints:
        return [f"No colour hints: {hints.get('skipped', 'the hint stage did not run')}.", ""]
    automatic = hints["validation_curve"][0]["ciede2000"]
    calibration = {c["hints"]: f"{c['ciede2000']:.2f}" for c in hints.get("calibration_curve", [])}
    rows = [
        f"| {c['hints']} | {calibration.get(c['hints'], '–')} | {c['ciede2000']:.2f} "
        f"| {c['ciede2000'] / automatic:.2f} |"
        for c in hints["validation_curve"]
    ]
    return [
        "## Colour hints",
        "",
        f"The hint propagation trained {hints.get('run', {}).get('steps', '?')} steps on top of the shipped "
        "model, its automatic colours frozen; the snapshot with the lowest calibration CIEDE2000 at 10 "
        f"hints ships (step {hints.get('chosen_step', '?')}). Hints are taken from the truth at random "
        "points (the mean colour within 2 px of each), the same points for every model:",
        "",
        "| hints per photograph | calibration CIEDE2000 | validation CIEDE2000 | against no hints |",
        "|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def write_comparison(docs_dir: Path, comparison: dict[str, Any]) -> None:
    """comparison.json and comparison.md (equal-time candidates, final model, float16 export)."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    (docs_dir / "comparison.json").write_text(json.dumps(comparison, indent=2, default=json_default))
    lines = [
        "# Default model: the comparison that chose it",
        "",
        f"Each candidate trained for the same {comparison['budget']['candidate_steps']} steps "
        "(equal compute: same size, width and batch) on this machine's CPU (2 cores), then scored on "
        f"the {len(comparison['float16']['images'])} validation photographs at full resolution "
        "(reported here) and on the calibration photographs (what the recipe chooses by: the lowest "
        "CIEDE2000 among the candidates at least half as colourful as the truth).",
        "",
        "| candidate | steps | seconds |",
        "|---|---:|---:|",
        *(f"| {r['name']} | {r['steps']} | {r['seconds']} |" for r in comparison["candidates"]),
        "",
        "On the calibration photographs (whole, long side at most "
        f"{SELECT_SIDE} px), what the choice was made on:",
        "",
        "| candidate | CIEDE2000 | gray input's | colourfulness | truth's |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {r['name']} | {c['ciede2000']:.2f} | {c['grayscale_ciede2000']:.2f} "
            f"| {c['colourfulness']:.1f} | {c['colourfulness_gt']:.1f} |"
            for r in [*comparison["candidates"], comparison["final"]]
            for c in [r["calibration"]]
        ),
        "",
        "Full resolution, means over the validation photographs:",
        "",
        markdown_table({r["name"]: r["report"] for r in comparison["candidates"]}, "full"),
        "",
        "At each model's own size (centre square):",
        "",
        markdown_table({r["name"]: r["report"] for r in comparison["candidates"]}, "model_size"),
        "",
        f"Winner: **{comparison['winner']}**, trained on for {comparison['final']['steps']} more steps "
        f"({comparison['final']['seconds']:.0f} s; its best snapshot on calibration was step "
        f"{comparison['final']['step']}). The better of the two on calibration CIEDE2000, "
        f"**{comparison['shipped']}**, ships, stored with float16 weights, run at "
        f"**{comparison['render_size']} px** and serving its chroma scaled by "
        f"**{comparison['chroma_scale']}**, flip averaging "
        f"{'on' if comparison.get('flip_average') else 'off'} "
        "(all chosen on calibration, below):",
        "",
        markdown_table(
            {
                f"{comparison['winner']} after {comparison['budget']['candidate_steps']} steps": next(
                    r["report"] for r in comparison["candidates"] if r["name"] == comparison["winner"]
                ),
                f"{comparison['final']['name']} (+{comparison['final']['steps']} steps)": comparison["final"][
                    "report"
                ],
                "shipped default (float16 weights)": comparison["float16"],
            },
            "full",
        ),
        "",
        *(
            [
                f"The shipped model was calibrated again on {comparison['recalibrated']} without "
                "training (`colorizer default-model --recalibrate`); the other rows below are from "
                "the run that trained it, calibrated by the rules of then.",
                "",
            ]
            if comparison.get("recalibrated")
            else []
        ),
        "Calibrated the same way (render size, flip averaging, chroma scale and knee), this run "
        "against the default that was shipped before it, when that one was made from the same "
        "photographs (the better on calibration ships; training is not bit-for-bit repeatable across CPUs):",
        "",
        "| model | render size | flip average | chroma scale | chroma knee | calibration CIEDE2000 "
        "| colourfulness |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {c['render_size']} | {c.get('flip_average', False)} | {c['chroma_scale']} "
            f"| {c.get('chroma_knee', 0.0)} "
            f"| {c['calibration']['ciede2000']:.2f} "
            f"| {c['calibration']['colourfulness']:.1f} |"
            for name, c in comparison.get("calibrated", {}).items()
        ),
        "",
        "The shipped model's render size on the calibration photographs (chroma scale 1; the lowest "
        "CIEDE2000 among the sizes at least half as colourful as the truth):",
        "",
        *_tried_table("render size", "render_size", comparison.get("render_sizes_tried", [])),
        "",
        "Flip averaging at that size (each photograph's colours averaged with its mirror image's; "
        "chroma scale 1; on when it has the lower CIEDE2000):",
        "",
        *_tried_table("flip average", "flip_average", comparison.get("flip_averages_tried", [])),
        "",
        "The chroma scale and knee (faint colours muted under it, 0: off) at that size on the "
        "calibration photographs (the lowest CIEDE2000 keeping at least "
        f"{CALIBRATED_COLOURFULNESS:.0%} of the truth's colourfulness):",
        "",
        *_tried_table(
            "chroma scale, knee",
            ("chroma_scale", "chroma_knee"),
            comparison["chroma_scales_tried"],
        ),
        "",
        "The shipped model by category (validation, full resolution):",
        "",
        category_table(comparison["float16"]),
        "",
        *(
            line
            for r in [c for c in comparison["candidates"] if c["name"] == comparison["winner"]]
            + [comparison["final"]]
            for line in (f"{r['name']} (no chroma scale) by category:", "", category_table(r["report"]), "")
        ),
        *(hint_lines(comparison["hints"]) if "hints" in comparison else []),
    ]
    (docs_dir / "comparison.md").write_text("\n".join(lines))


def _tried_table(title: str, key: str | tuple[str, ...], tried: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: each setting ``key`` (or settings: a tuple of keys, absent ones 0) tried on
    the calibration photographs and its scores."""
    keys = (key,) if isinstance(key, str) else key
    return [
        f"| {title} | CIEDE2000 | gray input's | colourfulness | truth's |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {', '.join(str(t.get(k, 0)) for k in keys)} | {t['ciede2000']:.2f} "
            f"| {t['grayscale_ciede2000']:.2f} "
            f"| {t['colourfulness']:.1f} | {t['colourfulness_gt']:.1f} |"
            for t in tried
        ),
    ]


def write_manifest(docs_dir: Path, photos: list[dict[str, Any]], skipped: dict[str, int]) -> Path:
    """manifest.md: every photograph the recipe kept (split, category, package and path, author,
    licence, SHA-256 of the file as the package ships it) and the counts of those it dropped."""
    lines = [
        "# Default model: the photographs",
        "",
        f"{len(photos)} photographs kept, by split: "
        + ", ".join(f"{n} {split}" for split, n in sorted(Counter(p["split"] for p in photos).items()))
        + ". Dropped by the checks: "
        + (", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "none")
        + ". Cut-outs (Scratch's photographed people, Tux Paint's photographic stamps) are pasted onto "
        "a training scene (`kind`). Authors and licences as each package's `debian/copyright` gives "
        "them for the file; `sha256` is of the file as the package ships it.",
        "",
        "| split | category | package (version) | path | kind | author | licence | sha256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {"validation": 0, "calibration": 1, "train": 2, "held out": 3}
    for p in sorted(photos, key=lambda p: (order.get(p["split"], 9), p.get("category", ""), p["name"])):
        author = p["author"].replace("|", "/")
        lines.append(
            f"| {p['split']} | {p.get('category', '')} | {p['package']} ({p['version']}) | `{p['path']}` "
            f"| {p['kind']} | {author} | {p['license']} | `{p['sha256']}` |"
        )
    out = docs_dir / "manifest.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
