"""How the recipe serves a model it ships, chosen on the calibration photographs: the render
size, flip averaging, the chroma scale (``calibrated``), and the one rule every choice uses
(``lowest_ciede``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from models.evaluate import summary
from models.store import LoadedModel
from recipe.splits import SELECT_SIDE, Photos, evaluate_on

log = logging.getLogger(__name__)


def lowest_ciede(
    items: list[dict[str, Any]], metrics: Callable[[dict[str, Any]], dict[str, float]]
) -> dict[str, Any]:
    """The item of lowest mean CIEDE2000 among those at least half as colourful as the ground truth
    (among all of them, if none is): the recipe's one rule for candidates and snapshots."""
    colourful = [i for i in items if metrics(i)["colourfulness"] >= 0.5 * metrics(i)["colourfulness_gt"]]
    return min(colourful or items, key=lambda i: metrics(i)["ciede2000"])


# Serving multiplies the predicted chroma by a factor chosen on the calibration photographs among
# these: the lowest CIEDE2000 that keeps at least CALIBRATED_COLOURFULNESS of the truth's
# colourfulness. A muted right colour beats a saturated wrong one; a model that plays safe with
# brownish output (L1 regression predicts a median) may instead need its chroma raised.
CHROMA_SCALES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 1.15, 1.3, 1.5)
# The floor is on the calibration photographs, which come from the same sources as the training
# ones and are read more colourfully than other photographs: in the first run of this recipe, 55%
# there (scale 0.8) was 36% on the validation photographs. 80% there keeps other photographs
# above half their true colourfulness, where a user still sees a colour photograph.
CALIBRATED_COLOURFULNESS = 0.8
# Faint colours muted (``chroma_knee``, in Lab units; ``models.colorize.mute_faint``) at each of
# these, tried at the scales in KNEE_SCALES, by the same rule as the scale alone: on the shipped
# weights (2026-12-04) a knee of 20 at scale 1.15 kept 84% of the truth's colourfulness with 9.15
# and 29 of 39 photographs won, against 9.37, 27 and 87% for the scale alone.
CHROMA_KNEES = (10.0, 20.0, 30.0, 40.0)
KNEE_SCALES = (1.0, 1.15, 1.3, 1.5)


# Serving may run the generator at a larger side than it was trained at: the chroma then has finer
# detail (a face's edge, a collar), and the encoder sees objects larger, as ImageNet showed them.
# The side is chosen on the calibration photographs among these (the multiples of the model's
# size_step among them), by lowest_ciede; CPU time grows as its square.
RENDER_SIZES = (128, 160, 192, 224, 256)


def _try_each(
    model: LoadedModel, photos: Photos, key: str, values: Iterable[Any], **fixed: Any
) -> list[dict[str, Any]]:
    """The calibration summary of ``model`` with metadata ``key`` set to each of ``values`` (and
    ``fixed`` set too): ``[{key: value, ciede2000, colourfulness, ...}, ...]``."""
    tried = []
    for value in values:
        trial = replace(model, metadata={**model.metadata, **fixed, key: value})
        tried.append(
            {**fixed, key: value, **summary(evaluate_on(trial, photos.calibration, SELECT_SIDE), "full")}
        )
        log.info("%s %s: %s", key, value, tried[-1])
    return tried


def calibrate_render_size(model: LoadedModel, photos: Photos) -> tuple[int, list[dict[str, Any]]]:
    """(the chosen render size, the calibration summary at each size tried), at chroma scale 1."""
    sizes = [s for s in RENDER_SIZES if s % model.size_step == 0] or [model.image_size]
    tried = _try_each(model, photos, "render_size", sizes, chroma_scale=1.0)
    return lowest_ciede(tried, lambda t: t)["render_size"], tried


def calibrate_flip(model: LoadedModel, photos: Photos) -> tuple[bool, list[dict[str, Any]]]:
    """(whether to average each photograph's colours with its mirror image's, the calibration
    summary without and with), at chroma scale 1: on by lowest_ciede (twice the model's work)."""
    tried = _try_each(model, photos, "flip_average", (False, True), chroma_scale=1.0)
    return lowest_ciede(tried, lambda t: t)["flip_average"], tried


def calibrate_chroma(model: LoadedModel, photos: Photos) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the chosen ``{"chroma_scale", "chroma_knee"}``, the calibration summary of each pair tried:
    every scale without a knee, then each knee at KNEE_SCALES)."""
    tried = _try_each(model, photos, "chroma_scale", CHROMA_SCALES, chroma_knee=0.0)
    for knee in CHROMA_KNEES:
        tried += _try_each(model, photos, "chroma_scale", KNEE_SCALES, chroma_knee=knee)
    keep = [t for t in tried if t["colourfulness"] >= CALIBRATED_COLOURFULNESS * t["colourfulness_gt"]]
    best = min(keep or tried[:1], key=lambda t: t["ciede2000"])
    return {"chroma_scale": best["chroma_scale"], "chroma_knee": best["chroma_knee"]}, tried


def calibrated(model: LoadedModel, photos: Photos) -> tuple[LoadedModel, dict[str, Any]]:
    """The render size, then flip averaging at that size, then the chroma scale, chosen on the
    calibration photographs: (the model with all three in its metadata, ``{"calibration": its
    summary there, ...}``)."""
    render_size, sizes_tried = calibrate_render_size(replace(model, metadata=_uncalibrated(model)), photos)
    model = replace(model, metadata={**model.metadata, "render_size": render_size})
    flip_average, flips_tried = calibrate_flip(model, photos)
    model = replace(model, metadata={**model.metadata, "flip_average": flip_average})
    chroma, tried = calibrate_chroma(model, photos)
    return replace(model, metadata={**model.metadata, **chroma}), {
        "calibration": next(t for t in tried if all(t[k] == v for k, v in chroma.items())),
        "render_size": render_size,
        "render_sizes_tried": sizes_tried,
        "flip_average": flip_average,
        "flip_averages_tried": flips_tried,
        **chroma,
        "chroma_scales_tried": tried,
    }


def _uncalibrated(model: LoadedModel) -> dict[str, Any]:
    """The model's metadata without what ``calibrated`` chooses (flip averaging and the knee off)."""
    return {**model.metadata, "flip_average": False, "chroma_knee": 0.0}
