"""The recipe that builds the default model shipped in ``models/default/``.

1. Fetch 22 openly licensed photographs from two Debian wallpaper packages (``apt-get download``,
   ``dpkg -x``; Debian or Ubuntu only) and keep 4 of them out of training for validation.
2. Train each candidate (preset, size, width, L1 weight) for the same wall-clock time and score it on the
   validation photographs at full resolution.
3. Pick the candidate with the lowest mean CIEDE2000 among those at least half as colourful as the
   ground truth, train it on for the rest of the budget and score it again; ship whichever of the
   two scores better, with float16 weights, its metrics and the whole comparison.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.config import TrainConfig
from models.evaluate import evaluate_model, markdown_table, summary
from models.store import DEFAULT_MODEL_DIR, ModelStore, export_float16
from models.training import run_training

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Photo:
    name: str
    package: str
    path: str  # inside the package


_MATE = "usr/share/backgrounds/mate/nature/{}.jpg"
_PLASMA = "usr/share/wallpapers/{}/contents/images/2560x1600.jpg"
PHOTOS = [
    *(
        Photo(n, "mate-backgrounds", _MATE.format(n))
        for n in (
            "Aqua Blinds Dune FreshFlower Garden GreenMeadow LadyBird RainDrops Storm TwoWings Wood "
            "YellowFlower"
        ).split()
    ),
    *(
        Photo(n, "plasma-workspace-wallpapers", _PLASMA.format(n))
        for n in "BytheWater ColdRipple DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut Path "
        "summer_1am".split()
    ),
]
# Sky, grass, a flower and a forest path: what users will most often colorize, kept out of training.
VALIDATION = ("Kite", "GreenMeadow", "FreshFlower", "Path")

CANDIDATES: dict[str, dict[str, Any]] = {
    "seed-128-w32": {"preset": "seed", "image_size": 128, "width": 32, "batch_size": 4},
    "lab-128-w32": {"preset": "lab", "image_size": 128, "width": 32, "batch_size": 4},
    "lab-256-w16": {"preset": "lab", "image_size": 256, "width": 16, "batch_size": 2},
    # The report's L1 weight of 100 tends to wash colours out; a lighter one lets the GAN loss speak.
    "lab-128-w32-l1w10": {
        "preset": "lab",
        "image_size": 128,
        "width": 32,
        "batch_size": 4,
        "l1_weight": 10.0,
    },
}


def fetch_photos(workdir: Path) -> list[dict[str, Any]]:
    """Download the packages, unpack them and copy the photographs into ``workdir``.

    Training photographs go to ``workdir/datasets/default-train/``, validation ones to
    ``workdir/validation/``, each package's copyright file to ``workdir/licenses/``. Returns the
    manifest (name, package, version, path, sha256, split). Raises RuntimeError without apt.
    """
    debs = workdir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    packages = sorted({p.package for p in PHOTOS})
    if not all(any(debs.glob(f"{pkg}_*.deb")) for pkg in packages):
        if shutil.which("apt-get") is None:
            raise RuntimeError("the recipe fetches photographs with apt-get: run it on Debian or Ubuntu")
        subprocess.run(["apt-get", "download", *packages], cwd=debs, check=True)
    unpacked = workdir / "unpacked"
    versions = {}
    for pkg in packages:
        deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
        versions[pkg] = deb.name.split("_")[1].replace("%3a", ":")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        licenses = workdir / "licenses"
        licenses.mkdir(exist_ok=True)
        shutil.copy(unpacked / f"usr/share/doc/{pkg}/copyright", licenses / f"{pkg}.copyright")
    manifest = []
    for photo in PHOTOS:
        split = "validation" if photo.name in VALIDATION else "train"
        target_dir = workdir / ("validation" if split == "validation" else "datasets/default-train")
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{photo.name}.jpg"
        shutil.copy(unpacked / photo.path, target)
        manifest.append(
            {
                "name": photo.name,
                "package": photo.package,
                "version": versions[photo.package],
                "path": "/" + photo.path,
                "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
                "split": split,
            }
        )
    return manifest


def _config(candidate: dict[str, Any], seconds: float, init_from: int | None = None) -> TrainConfig:
    return TrainConfig(
        dataset="default-train",
        steps=10_000_000,  # the time budget ends the run
        max_seconds=seconds,
        sample_every=1000,
        publish_every=10_000_000,  # publish once, at the end
        checkpoint_every=1000,
        validation_split=0,  # the validation photographs are a separate folder
        seed=0,
        init_from=init_from,
        **candidate,
    )


def train_and_score(workdir: Path, name: str, config: TrainConfig, validation: list[Path]) -> dict[str, Any]:
    """One training run under the time budget, then its full-resolution validation report."""
    store = ModelStore(workdir / "models")
    start = time.monotonic()
    result = run_training(
        config,
        data_dir=workdir,
        job_dir=workdir / "jobs" / name,
        store=store,
        job_id=name,
        validation_files=validation,
    )
    seconds = time.monotonic() - start
    version = result.published_versions[-1]
    report = evaluate_model(store.load(version), validation)
    log.info("%s: %d steps in %.0f s; %s", name, result.steps, seconds, summary(report, "full"))
    return {
        "name": name,
        "config": config.model_dump(),
        "steps": result.steps,
        "seconds": round(seconds, 1),
        "version": version,
        "report": report,
    }


def choose(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Lowest mean CIEDE2000 among candidates at least half as colourful as the ground truth."""

    def full(r: dict[str, Any]) -> dict[str, float]:
        return r["report"]["mean"]["full"]["model"]

    colourful = [r for r in results if full(r)["colourfulness"] >= 0.5 * full(r)["colourfulness_gt"]]
    return min(colourful or results, key=lambda r: full(r)["ciede2000"])


def build_default_model(
    workdir: Path,
    candidate_minutes: float = 7.0,
    final_minutes: float = 32.0,
    out_dir: Path = DEFAULT_MODEL_DIR,
    docs_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the whole recipe; writes ``out_dir`` (the shipped model) and the comparison to ``docs_dir``."""
    workdir = Path(workdir)
    manifest = fetch_photos(workdir)
    validation = sorted((workdir / "validation").glob("*.jpg"))
    results = [
        train_and_score(workdir, name, _config(candidate, candidate_minutes * 60), validation)
        for name, candidate in CANDIDATES.items()
    ]
    winner = choose(results)
    candidate = CANDIDATES[winner["name"]]
    final = train_and_score(
        workdir,
        f"{winner['name']}-final",
        _config(candidate, final_minutes * 60, winner["version"]),
        validation,
    )
    comparison = {
        "budget": {"candidate_minutes": candidate_minutes, "final_minutes": final_minutes},
        "candidates": results,
        "winner": winner["name"],
        "final": final,
        "photos": manifest,
    }
    return export_default(workdir, comparison, out_dir, docs_dir)


def _ciede(result: dict[str, Any]) -> float:
    return result["report"]["mean"]["full"]["model"]["ciede2000"]


def export_default(
    workdir: Path, comparison: dict[str, Any], out_dir: Path = DEFAULT_MODEL_DIR, docs_dir: Path | None = None
) -> dict[str, Any]:
    """Ship the better of the winning candidate and its longer run (lower validation CIEDE2000).

    Longer GAN training is not always better on held-out photographs (the adversarial loss can
    drift into colour blotches), so the longer run must earn its place. The chosen generator is
    written with float16 weights and scored again, since that is what users get.
    """
    workdir = Path(workdir)
    validation = sorted((workdir / "validation").glob("*.jpg"))
    winner = next(r for r in comparison["candidates"] if r["name"] == comparison["winner"])
    final = comparison["final"]
    shipped = final if _ciede(final) <= _ciede(winner) else winner
    store = ModelStore(workdir / "models")
    staging = workdir / "default-export"
    shutil.rmtree(staging, ignore_errors=True)
    export_float16(store.load(shipped["version"]), staging)
    exported = evaluate_model(ModelStore.load_dir(staging, "default"), validation)
    comparison = {**comparison, "shipped": shipped["name"], "float16": exported}
    meta_path = staging / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    metadata.update(
        {
            "version": "default",
            "recipe": {
                "winner": comparison["winner"],
                "shipped_run": shipped["name"],
                "steps": shipped["steps"] + (winner["steps"] if shipped is final else 0),
                **comparison["budget"],
            },
            # "validation" at the model's size, like every trained version; full resolution too.
            "metrics": {
                "validation": summary(exported, "model_size"),
                "validation_full": summary(exported, "full"),
            },
            "photos": comparison["photos"],
        }
    )
    meta_path.write_text(json.dumps(metadata, indent=2, default=str))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(staging, out_dir)
    if docs_dir is not None:
        write_comparison(docs_dir, comparison)
    return comparison


def write_comparison(docs_dir: Path, comparison: dict[str, Any]) -> None:
    """comparison.json and comparison.md (equal-time candidates, final model, float16 export)."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    (docs_dir / "comparison.json").write_text(json.dumps(comparison, indent=2, default=_json_default))
    lines = [
        "# Default model: the comparison that chose it",
        "",
        f"Each candidate trained for {comparison['budget']['candidate_minutes']} minutes of wall-clock time "
        "on this machine's CPU (2 cores), then scored on the 4 validation photographs at full resolution.",
        "",
        "| candidate | steps | seconds |",
        "|---|---:|---:|",
        *(f"| {r['name']} | {r['steps']} | {r['seconds']} |" for r in comparison["candidates"]),
        "",
        "Full resolution, means over the validation photographs:",
        "",
        markdown_table({r["name"]: r["report"] for r in comparison["candidates"]}, "full"),
        "",
        "At each model's own size (centre square):",
        "",
        markdown_table({r["name"]: r["report"] for r in comparison["candidates"]}, "model_size"),
        "",
        f"Winner: **{comparison['winner']}**, trained on for {comparison['budget']['final_minutes']} minutes "
        f"({comparison['final']['steps']} more steps). The better of the two on validation CIEDE2000, "
        f"**{comparison['shipped']}**, ships, stored with float16 weights:",
        "",
        markdown_table(
            {
                f"{comparison['winner']} after {comparison['budget']['candidate_minutes']} min": next(
                    r["report"] for r in comparison["candidates"] if r["name"] == comparison["winner"]
                ),
                f"{comparison['final']['name']} (+{comparison['budget']['final_minutes']} min)": comparison[
                    "final"
                ]["report"],
                "shipped default (float16 weights)": comparison["float16"],
            },
            "full",
        ),
        "",
    ]
    (docs_dir / "comparison.md").write_text("\n".join(lines))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
