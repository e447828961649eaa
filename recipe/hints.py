"""The recipe's last stage: the default model gains colour hints (issue 17, Zhang et al. 2017).

The chosen automatic model gets the hint branch (``models.hint_net``) and only the branch trains,
on hints simulated from the training photographs' true colours; the automatic colours (no hints)
stay exactly the calibrated model's, so nothing chosen before this stage changes. The snapshot
with the lowest calibration CIEDE2000 at ``CHOOSE_AT`` hints ships, and the curve over
``HINT_CURVE`` hints per photograph is recorded on the calibration and validation photographs.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from models.config import TrainConfig
from models.evaluate import summary
from models.store import LoadedModel, ModelStore, weights_digest
from recipe.splits import SELECT_SIDE, Photos, evaluate_on

log = logging.getLogger(__name__)

HINT_STEPS = 2000
HINT_SNAPSHOTS = 2
# A few parameters to learn from scratch (the rest is frozen): a larger step than the report's.
HINT_LEARNING_RATE = 1e-3
HINT_CURVE = (0, 1, 2, 5, 10, 20)
CHOOSE_AT = 10
# What of each point of a hint curve a version's metadata keeps.
HINT_SUMMARY = ("hints", "ciede2000", "grayscale_ciede2000", "psnr", "colourfulness", "colourfulness_gt")
# Serving's metadata that the hint model keeps from the automatic one it grew from.
SERVING_KEYS = ("render_size", "flip_average", "chroma_scale", "chroma_knee", "scale_steps")


def base_version(store: ModelStore, model: LoadedModel) -> int:
    """``model`` published in the recipe's store (once: found again by its weights' digest)."""
    digest = weights_digest(model.generator.get_weights())  # which automatic model it grew from
    for info in store.list():
        if info.metadata.get("weights_sha256") == digest:
            return int(info.version)
    return store.publish(model.generator, {**model.metadata, "version": None, "weights_sha256": digest})


def hint_config(candidate: dict[str, Any], steps: int, init_from: int) -> TrainConfig:
    from recipe.default_model import _config

    every = max(1, steps // HINT_SNAPSHOTS)
    hinted = {**candidate, "hints": True, "g_learning_rate": HINT_LEARNING_RATE}
    return _config(hinted, steps, init_from, publish_every=every)


def hint_curve(
    model: LoadedModel,
    files: list[Path],
    counts=HINT_CURVE,
    max_side: int | None = None,
    automatic: dict[str, Any] | None = None,
) -> list:
    """``[{hints, ciede2000, ...}]``: ``model`` scored with each count of hints per photograph, taken
    from the truth at random points (the same points for every model: seed 0). ``automatic``: the
    report without hints on these files, when it was made already."""
    curve = []
    for count in counts:
        report = (
            automatic if count == 0 and automatic is not None else evaluate_on(model, files, max_side, count)
        )
        curve.append({"hints": count, **summary(report, "full")})
        log.info("%d hints: CIEDE2000 %.3f", count, curve[-1]["ciede2000"])
    return curve


# What of a model's own training configuration the hint run repeats (its architecture, its data).
CANDIDATE_KEYS = ("preset", "image_size", "width", "batch_size", "decoder", "encoder", "l1_weight", "degrade")


def candidate_of(model: LoadedModel) -> dict[str, Any] | None:
    """The training configuration the hint run of ``model`` uses: the model's own (from its
    metadata), or None when its encoder cannot take hints."""
    config = model.metadata.get("config")
    if not isinstance(config, dict) or config.get("encoder") != "mobilenet_v2":
        return None
    return {k: config[k] for k in CANDIDATE_KEYS if k in config}


def with_hints(
    workdir: Path,
    model: LoadedModel,
    photos: Photos,
    candidate: dict[str, Any] | None,
    steps: int = HINT_STEPS,
) -> tuple[LoadedModel, dict[str, Any]]:
    """``model`` with a trained hint branch, serving as ``model`` does, and the record of how it was
    chosen (``{"run", "snapshots", "calibration_curve"}``). A model that takes hints already is
    returned as it is."""
    from recipe.default_model import scored_run

    if model.hints:
        return model, {}
    if candidate is None:
        return model, {"skipped": "its encoder cannot take hints (only mobilenet_v2 can)"}
    store = ModelStore(Path(workdir) / "models")
    run = scored_run(workdir, "hints", hint_config(candidate, steps, base_version(store, model)), photos)
    serving = {k: model.metadata[k] for k in SERVING_KEYS if k in model.metadata}
    snapshots = []
    for snapshot in run["snapshots"]:
        loaded = store.load(snapshot["version"])
        loaded = replace(loaded, metadata={**loaded.metadata, **serving})
        scored = summary(evaluate_on(loaded, photos.calibration, SELECT_SIDE, hints=CHOOSE_AT), "full")
        snapshots.append(
            {"step": snapshot["step"], "version": snapshot["version"], "model": loaded, **scored}
        )
        log.info("hint snapshot at step %d: CIEDE2000 %.3f", snapshot["step"], scored["ciede2000"])
    best = min(snapshots, key=lambda s: s["ciede2000"])
    chosen: LoadedModel = best["model"]
    metadata = {k: v for k, v in chosen.metadata.items() if k not in ("job_id", "step", "weights_sha256")}
    chosen = replace(chosen, metadata={**model.metadata, **metadata, **serving, "hints": True})
    record = {
        "run": {k: run[k] for k in ("name", "config", "steps", "seconds")},
        "snapshots": [{k: v for k, v in s.items() if k != "model"} for s in snapshots],
        "chosen_step": best["step"],
        "calibration_curve": hint_curve(chosen, photos.calibration, max_side=SELECT_SIDE),
    }
    return chosen, record
