"""The recipe that builds the default model shipped in ``models/default/``.

1. Fetch openly licensed photographs from Debian packages (``recipe.photo_sources``: animals,
   buildings, streets, rooms, objects, landscapes, musicians, people cut out and pasted onto
   scenes); keep a validation set by category out of training, and a calibration share too.
2. Train each candidate (preset, L1 weight, degraded inputs, decoder, a U-Net from scratch or on
   MobileNetV2's ImageNet features: ``models.backbones``) for the same number of steps
   and score it on the calibration photographs (to choose) and on the validation photographs (to
   report), whole and at full resolution.
3. Pick the candidate with the lowest mean CIEDE2000 on calibration among those at least half as
   colourful as the ground truth (within noise, the larger L1 weight), train it on, publishing
   snapshots as it goes, keep the best snapshot by the same rule; ship whichever of the two
   scores better, with the chroma scale that calibration chooses, float16 weights, its metrics
   and the whole comparison.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.config import TrainConfig
from models.evaluate import by_category, summary
from models.store import DEFAULT_MODEL_DIR, LoadedModel, ModelStore, export_float16
from models.training import run_training
from recipe.calibrate import calibrated, lowest_ciede
from recipe.hints import HINT_SUMMARY, candidate_of, hint_curve, with_hints
from recipe.reports import (
    json_default,
    write_comparison,
    write_hints_sheet,
    write_manifest,
    write_old_photographs_sheet,
    write_sheets,
    write_validation_sheet,
)
from recipe.splits import SELECT_SIDE, Photos, evaluate_on, fetch_photos

log = logging.getLogger(__name__)


# Every candidate trains on crops of random aspect ratio up to this, squeezed to a square, as
# serving squeezes a whole photograph (see models.data.random_view).
MAX_ASPECT = 1.8
# Old photographs' scans are grainy, soft, faded: this share of training inputs looks like them.
DEGRADE = 0.5
_LAB = {"preset": "lab", "image_size": 128, "width": 32, "batch_size": 4, "decoder": "resize"}
CANDIDATES: dict[str, dict[str, Any]] = {
    # The report's recipe (RGB in and out, L1 x 100, ConvTranspose decoder) at the same size.
    "seed-128-w32": {
        "preset": "seed",
        "image_size": 128,
        "width": 32,
        "batch_size": 4,
        "decoder": "transpose",
    },
    # The first default model's recipe: L1 x 10, clean inputs.
    "lab-128-w32-l1w10-clean": {**_LAB, "l1_weight": 10.0},
    # The same with inputs degraded like old photographs.
    "lab-128-w32-l1w10": {**_LAB, "l1_weight": 10.0, "degrade": DEGRADE},
    # The report's L1 weight: closer to the mean colour, less adversarial colour.
    "lab-128-w32-l1w100": {**_LAB, "l1_weight": 100.0, "degrade": DEGRADE},
    # L1 alone in effect (the adversarial term a ten-thousandth of it): the median colour of what
    # the lightness allows, muted where the lightness does not tell.
    "lab-128-w32-l1only": {**_LAB, "l1_weight": 10_000.0, "degrade": DEGRADE},
    # The same decoder on MobileNetV2's ImageNet features (frozen; models.backbones): an encoder
    # that already tells a face from a shirt and a sky from a wall.
    "lab-128-w32-mnv2-l1only": {**_LAB, "l1_weight": 10_000.0, "degrade": DEGRADE, "encoder": "mobilenet_v2"},
    # ... with the report's L1 weight: more adversarial colour.
    "lab-128-w32-mnv2-l1w100": {**_LAB, "l1_weight": 100.0, "degrade": DEGRADE, "encoder": "mobilenet_v2"},
}
# Equal compute: every candidate trains this many steps (same size, width and batch).
CANDIDATE_STEPS = 1500
# The hint sheet shows this many of the validation photographs of people.
HINT_SHEET_PHOTOS = 8
# The winner trains on for this many steps, publishing this many snapshots; the best ships.
FINAL_STEPS = 8000
FINAL_SNAPSHOTS = 8
# ... and the average of its last this many snapshots is one more to choose from (average_snapshots).
FINAL_AVERAGED = 5


def _config(
    candidate: dict[str, Any], steps: int, init_from: int | None = None, publish_every: int = 10_000_000
) -> TrainConfig:
    return TrainConfig(
        dataset="default-train",
        steps=steps,
        sample_every=1000,
        publish_every=publish_every,  # by default once, at the end
        checkpoint_every=1000,
        validation_split=0,  # the validation photographs are a separate folder
        seed=0,
        init_from=init_from,
        max_aspect=MAX_ASPECT,
        **candidate,
    )


def train_and_score(
    workdir: Path, name: str, config: TrainConfig, photos: Photos, average_last: int = 0
) -> dict[str, Any]:
    """One training run, then its best published version chosen and scored (``score_snapshots``)."""
    store = ModelStore(workdir / "models")
    start = time.monotonic()
    result = run_training(
        config,
        data_dir=workdir,
        job_id=name,
        job_dir=workdir / "jobs" / name,
        store=store,
        validation_files=photos.calibration,
    )
    seconds = time.monotonic() - start
    snapshots = []
    for v in result.published_versions:
        meta = store.get(v).metadata
        snapshots.append({"version": v, "step": meta["step"], **meta["metrics"]["validation"]})
    run = {
        "name": name,
        "config": config.model_dump(mode="json"),
        "steps": result.steps,
        "seconds": round(seconds, 1),
        "snapshots": snapshots,
    }
    score_snapshots(store, run, photos, average_last)
    log.info("%s: %d steps in %.0f s", name, result.steps, seconds)
    return run


def score_snapshots(store: ModelStore, run: dict[str, Any], photos: Photos, average_last: int = 0) -> None:
    """Pick the run's version to keep and score it (sets version, step, calibration, report).

    With ``average_last``, the average of the run's last that many snapshots (``average_snapshots``)
    is one more snapshot to choose from.

    Each snapshot is scored as served, on the whole calibration photographs (squeezed to the
    model's square; long side shrunk to SELECT_SIDE to save time), and the best of those
    (``best_snapshot``) is kept. (The metrics each version carries from training are on the
    centre square only, and a GAN snapshot can colour a centre square well and the whole
    photograph badly: seen, colourfulness 39 against 12 on the same meadow.) The kept one is then
    scored on the validation photographs at full resolution (``report``), which only reports.
    """
    trained = [s for s in run["snapshots"] if "averaged_steps" not in s]
    if average_last > 1 and len(trained) >= average_last and len(trained) == len(run["snapshots"]):
        run["snapshots"].append(average_snapshots(store, trained[-average_last:], run["name"]))
    for snapshot in run["snapshots"]:
        if "whole" not in snapshot:
            report = evaluate_on(store.load(snapshot["version"]), photos.calibration, max_side=SELECT_SIDE)
            snapshot["whole"] = summary(report, "full")
            log.info("%s step %d: %s", run["name"], snapshot["step"], snapshot["whole"])
    chosen = best_snapshot(run["snapshots"])
    if run.get("version") != chosen["version"] or "report" not in run:
        run["report"] = evaluate_on(store.load(chosen["version"]), photos.validation)
    run["version"], run["step"], run["calibration"] = chosen["version"], chosen["step"], chosen["whole"]
    log.info("%s: keeps version %s: %s", run["name"], chosen["version"], summary(run["report"], "full"))


def average_snapshots(store: ModelStore, snapshots: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Publish the mean of the snapshots' generators (every weight, BatchNorm's moving statistics
    included) as a new version: its snapshot record (``averaged_steps``, and the last one's step).

    Averaging the weights of a run's last snapshots (Izmailov et al. 2018, stochastic weight
    averaging) lands between the minima the snapshots sit in, where the model is less sure of
    colours no photograph settles: at 128 px, an average of this recipe's final snapshots kept the
    best snapshot's mean on the validation photographs (12.43 against 12.44) and beat gray on 59%
    of people against 45% (an experiment of 2026-12-02).
    """
    loaded = [store.load(s["version"]) for s in snapshots]
    weights = [np.mean(ws, axis=0) for ws in zip(*(m.generator.get_weights() for m in loaded), strict=True)]
    generator = loaded[-1].generator
    generator.set_weights(weights)
    steps = [s["step"] for s in snapshots]
    metadata = {**loaded[-1].metadata, "averaged_steps": steps}
    for key in ("metrics", "created_at"):
        metadata.pop(key, None)
    version = store.publish(generator, metadata)
    log.info("%s: averaged steps %s as version %s", name, steps, version)
    return {"version": version, "step": steps[-1], "averaged_steps": steps}


def best_snapshot(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """``lowest_ciede`` on the whole photographs where scored (``whole``), else on the training's
    own metrics."""
    return lowest_ciede(snapshots, lambda s: s.get("whole", s))


def shippable(name: str) -> bool:
    """Whether a candidate may ship: only resize-convolution decoders. ConvTranspose ones (the
    report's) leave a checkerboard and stripes in flat areas, magnified when the chroma is
    upsampled to full size, that CIEDE2000 barely sees (docs/default-model/sheet-*.jpg); they are
    trained and scored for the comparison only."""
    return CANDIDATES[name].get("decoder") == "resize"


# Calibration differences smaller than this (mean CIEDE2000 over 39 photographs) are noise.
CALIBRATION_NOISE = 0.25


def choose(results: list[dict[str, Any]]) -> dict[str, Any]:
    """``lowest_ciede`` on the calibration photographs among the shippable candidates; a candidate
    within CALIBRATION_NOISE of it with a larger L1 weight (less adversarial) is preferred.

    Longer training drifts a GAN-weighted candidate towards more and wronger colour (the first run
    of this rule's predecessor chose L1 x 100 on MobileNetV2 by 0.15, and 3,000 steps later it
    was 0.40 worse on calibration and lost to gray on 53% of the validation photographs).
    """
    shippable_ones = [r for r in results if shippable(r["name"])]
    best = lowest_ciede(shippable_ones, lambda r: r["calibration"])
    close = [
        r
        for r in shippable_ones
        if r["calibration"]["ciede2000"] <= best["calibration"]["ciede2000"] + CALIBRATION_NOISE
        and r["calibration"]["colourfulness"] >= 0.5 * r["calibration"]["colourfulness_gt"]
    ]
    return max(close or [best], key=lambda r: (r["config"]["l1_weight"], -r["calibration"]["ciede2000"]))


# What the comparison calls the default that was in out_dir before this run (export_default).
PREVIOUS_DEFAULT = "previous default"


def scored_run(
    workdir: Path, name: str, config: TrainConfig, photos: Photos, average_last: int = 0
) -> dict[str, Any]:
    """train_and_score, or its saved result (``workdir/results/<name>.json``) from an earlier
    run of the recipe with the same configuration: a recipe cut short resumes after its last
    scored run instead of training it again."""
    saved = workdir / "results" / f"{name}.json"
    if saved.is_file():
        result = json.loads(saved.read_text())
        if (
            result.get("config") == config.model_dump(mode="json")
            and result.get("photos") == photos.fingerprint()
        ):
            log.info("%s: reusing the trained run in %s", name, saved)
            score_snapshots(ModelStore(workdir / "models"), result, photos, average_last)
            saved.write_text(json.dumps(result, indent=2, default=json_default))
            return result
    result = {**train_and_score(workdir, name, config, photos, average_last), "photos": photos.fingerprint()}
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(result, indent=2, default=json_default))
    return result


def candidates_named(names: list[str] | None) -> dict[str, dict[str, Any]]:
    """The CANDIDATES called ``names`` (all of them for None), in CANDIDATES' order.

    Raises ValueError naming the recipe's candidates for a name not among them.
    """
    if unknown := sorted(set(names or []) - set(CANDIDATES)):
        raise ValueError(f"no candidate {', '.join(unknown)}: the recipe's are {', '.join(CANDIDATES)}")
    return {name: c for name, c in CANDIDATES.items() if names is None or name in names}


def build_default_model(
    workdir: Path,
    candidate_steps: int = CANDIDATE_STEPS,
    final_steps: int = FINAL_STEPS,
    out_dir: Path = DEFAULT_MODEL_DIR,
    docs_dir: Path | None = None,
    candidates: list[str] | None = None,
) -> dict[str, Any]:
    """Run the whole recipe; writes ``out_dir`` (the shipped model) and the comparison to ``docs_dir``.

    ``candidates`` (names in CANDIDATES) narrows the comparison to those, in CANDIDATES' order: a
    rebuild on new photographs that need not settle the design again (the whole comparison takes
    about an hour of the recipe's two on 2 cores). Raises ValueError for a name not there.
    """
    compared = candidates_named(candidates)
    workdir = Path(workdir)
    manifest = fetch_photos(workdir)
    photos = Photos.of(workdir)
    results = [
        scored_run(workdir, name, _config(candidate, candidate_steps), photos)
        for name, candidate in compared.items()
    ]
    winner = choose(results)
    candidate = CANDIDATES[winner["name"]]
    final = scored_run(
        workdir,
        f"{winner['name']}-final",
        _config(
            candidate, final_steps, winner["version"], publish_every=max(1, final_steps // FINAL_SNAPSHOTS)
        ),
        photos,
        average_last=FINAL_AVERAGED,
    )
    comparison = {
        "budget": {"candidate_steps": candidate_steps, "final_steps": final_steps},
        **({"narrowed_to": list(compared)} if candidates is not None else {}),
        "candidates": results,
        "winner": winner["name"],
        "final": final,
        "photos": manifest,
    }
    if docs_dir is not None:
        write_sheets(workdir, docs_dir, [*results, final], photos.validation)
    return export_default(workdir, comparison, out_dir, docs_dir)


def incumbent(out_dir: Path, manifest: list[dict[str, Any]]) -> LoadedModel | None:
    """The default model shipped in ``out_dir`` when it is a fair rival for this run: none of
    today's calibration or validation photographs was in its training set (by content), so
    photographs added to the sources since it was made keep it in the contest; else None."""
    from models.store import BrokenVersion

    try:
        model = ModelStore.load_dir(out_dir, "default")
    except (BrokenVersion, OSError) as exc:
        log.info("no previous default to compare with: %s", exc)
        return None
    photos = model.metadata.get("photos")
    if not isinstance(photos, list):
        log.info("the previous default records no photographs: not compared")
        return None
    trained_on = {p.get("sha256") for p in photos if p.get("split") == "train"}
    scored_on = {p["sha256"] for p in manifest if p["split"] in ("calibration", "validation")}
    if seen := trained_on & scored_on:
        log.info(
            "the previous default was trained on %d of today's scoring photographs: not compared", len(seen)
        )
        return None
    return model


def kept_photos(previous: LoadedModel, manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The photographs of a previous default kept over this run: the training photographs its own
    record names (its weights saw those, not today's), then today's calibration, validation and
    held-out photographs, which it was calibrated and scored on again."""
    trained = [p for p in previous.metadata["photos"] if p.get("split") == "train"]  # a list: ``incumbent``
    return [*trained, *(p for p in manifest if p["split"] != "train")]


def made_from(model: LoadedModel, manifest: list[dict[str, Any]]) -> bool:
    """Whether ``model`` was trained, chosen and validated on exactly these photographs and splits
    (its metadata's manifest is then this one, and recalibrating it keeps that record true)."""
    photos = model.metadata.get("photos") or []
    return {(p.get("sha256"), p.get("split")) for p in photos} == {
        (p["sha256"], p["split"]) for p in manifest
    }


def export_default(
    workdir: Path, comparison: dict[str, Any], out_dir: Path = DEFAULT_MODEL_DIR, docs_dir: Path | None = None
) -> dict[str, Any]:
    """Ship the better of the winning candidate and its longer run (lower calibration CIEDE2000),
    at the render size, flip averaging and chroma scale chosen on the calibration photographs
    (``calibrated``); but keep the default already in ``out_dir`` when it was made from the same
    photographs and, calibrated the same way, scores better there (``incumbent``): training is not
    bit-for-bit repeatable across CPUs, and a rebuild must not ship a worse model than the one it
    replaces.

    Longer GAN training is not always better on held-out photographs (the adversarial loss can
    drift into colour blotches), so the longer run must earn its place. The chosen generator is
    written with float16 weights and scored again on the validation photographs, since that is
    what users get.
    """
    workdir = Path(workdir)
    photos = Photos.of(workdir)
    winner = next(r for r in comparison["candidates"] if r["name"] == comparison["winner"])
    final = comparison["final"]
    shipped = final if final["calibration"]["ciede2000"] <= winner["calibration"]["ciede2000"] else winner
    store = ModelStore(workdir / "models")
    fresh_model, fresh = calibrated(store.load(shipped["version"]), photos)
    previous = incumbent(out_dir, comparison["photos"])
    rival_model, rival = calibrated(previous, photos) if previous is not None else (None, None)
    keep = rival is not None and rival["calibration"]["ciede2000"] < fresh["calibration"]["ciede2000"]
    log.info(
        "calibration CIEDE2000: this run %.3f, the previous default %s: ships %s",
        fresh["calibration"]["ciede2000"],
        f"{rival['calibration']['ciede2000']:.3f}" if rival else "not comparable",
        "the previous default" if keep else shipped["name"],
    )
    manifest = comparison["photos"]  # this run's; the comparison keeps it
    if keep:
        recipe = {**previous.metadata["recipe"], "kept_over": shipped["name"]}
        manifest = kept_photos(previous, manifest)
    else:
        recipe = {
            "winner": comparison["winner"],
            "shipped_run": shipped["name"],
            "steps": shipped["step"] + (winner["step"] if shipped is final else 0),
            **comparison["budget"],
        }
    comparison = {
        **comparison,
        "shipped": PREVIOUS_DEFAULT if keep else shipped["name"],
        "calibrated": {shipped["name"]: fresh, **({PREVIOUS_DEFAULT: rival} if rival else {})},
    }
    return _ship(
        workdir,
        rival_model if keep else fresh_model,
        rival if keep else fresh,
        recipe,
        comparison,
        out_dir,
        docs_dir,
        manifest,
    )


def recalibrate_default(
    workdir: Path, out_dir: Path = DEFAULT_MODEL_DIR, docs_dir: Path | None = None
) -> dict[str, Any]:
    """Calibrate the shipped default again (render size, flip averaging, chroma scale) on the
    photographs it was made from, without training: for when the recipe's serving choices change
    and its weights do not. Reads the comparison in ``docs_dir`` (``comparison.json``) and writes
    it back with the new calibration; the photographs are fetched into ``workdir`` if needed.

    Raises RuntimeError when the default in ``out_dir`` was not made from these photographs.
    """
    workdir = Path(workdir)
    manifest = fetch_photos(workdir)
    previous = incumbent(out_dir, manifest)
    if previous is None or not made_from(previous, manifest):
        raise RuntimeError(f"the default in {out_dir} was not made from the recipe's photographs: rebuild it")
    comparison = json.loads((docs_dir / "comparison.json").read_text()) if docs_dir is not None else {}
    model, record = calibrated(previous, Photos.of(workdir))
    log.info("recalibrated: %s", {k: v for k, v in record.items() if not k.endswith("_tried")})
    comparison = {
        **comparison,
        "photos": manifest,
        "recalibrated": time.strftime("%Y-%m-%d"),
        "calibrated": {
            **comparison.get("calibrated", {}),
            comparison.get("shipped", PREVIOUS_DEFAULT): record,
        },
    }
    return _ship(workdir, model, record, dict(previous.metadata["recipe"]), comparison, out_dir, docs_dir)


def _ship(
    workdir: Path,
    model: LoadedModel,
    calibration: dict[str, Any],
    recipe: dict[str, Any],
    comparison: dict[str, Any],
    out_dir: Path,
    docs_dir: Path | None,
    manifest: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write the calibrated ``model`` to ``out_dir`` with float16 weights, scored again on the
    validation photographs, its ``recipe``, the calibration and ``manifest`` (the photographs it
    was made from; default the comparison's) in its metadata; the comparison, manifest and sheets
    to ``docs_dir``. Returns the comparison with ``calibration`` and the float16 model's report
    (``float16``) in it."""
    manifest = comparison["photos"] if manifest is None else manifest
    photos = Photos.of(workdir)
    # last: colour hints, learnt on top of the calibrated model (its automatic colours unchanged)
    model, hinted = with_hints(workdir, model, photos, candidate_of(model))
    hinted = hinted or dict(comparison.get("hints", {}))  # a model with hints already: how it got them
    staging = workdir / "default-export"
    shutil.rmtree(staging, ignore_errors=True)
    export_float16(model, staging)
    exported_model = ModelStore.load_dir(staging, "default")
    exported = evaluate_on(exported_model, photos.validation)
    comparison = {**comparison, **calibration, "float16": exported}
    if exported_model.hints:
        curve = hint_curve(exported_model, photos.validation, automatic=exported)
        hinted = {**hinted, "validation_curve": curve}
    if hinted:
        comparison["hints"] = hinted
    meta_path = staging / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    metadata.update(
        {
            "version": "default",
            "recipe": {
                **recipe,
                "render_size": calibration["render_size"],
                "flip_average": calibration["flip_average"],
                "chroma_scale": calibration["chroma_scale"],
                "chroma_knee": calibration["chroma_knee"],
            },
            # "validation" at the model's size, like every trained version; full resolution too.
            "metrics": {
                "validation": summary(exported, "model_size"),
                "validation_full": summary(exported, "full"),
                "validation_categories": by_category(exported),
                **(
                    {
                        "validation_hints": [
                            {k: c[k] for k in HINT_SUMMARY} for c in hinted["validation_curve"]
                        ]
                    }
                    if "validation_curve" in hinted
                    else {}
                ),
            },
            "photos": manifest,
        }
    )
    meta_path.write_text(json.dumps(metadata, indent=2, default=str))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(staging, out_dir)
    if docs_dir is not None:
        write_comparison(docs_dir, comparison)
        skipped_file = workdir / "skipped.json"
        skipped = json.loads(skipped_file.read_text()) if skipped_file.is_file() else {}
        write_manifest(docs_dir, manifest, skipped)
        write_old_photographs_sheet(workdir, exported_model, docs_dir / "old-photographs-sheet.jpg")
        write_validation_sheet(exported_model, photos.validation, docs_dir / "validation-sheet.jpg")
        if exported_model.hints:
            people = [p for p in photos.validation if p.parent.name == "people"][:HINT_SHEET_PHOTOS]
            write_hints_sheet(exported_model, people, docs_dir / "hints-sheet.jpg")
    return comparison
