"""Colorize one photograph at any size with a loaded generator.

The model runs at its own size (or a requested ``render_size``); its chroma is upsampled to the
photograph's size and joined with the photograph's own full-resolution luminance, so the output
keeps every detail of the input and its L channel is the input's.

The work is split so a server can batch the model call: ``prepare`` (luminance, model input),
``predict`` (the generator), ``finish`` (chroma upsampled and joined with the luminance).
``colorize_array`` is the three in a row. The compiled loops of ``prepare`` and ``finish`` work on
flattened pixels padded to a bucket size: a photograph of a new size does not trace them again.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import tensorflow as tf

from models import color
from models.hints import Hint, NoHintInputs, rasterize
from models.pixels import (
    gray_luminance,
    gray_rgb_input,
    join_chroma,
    luminance,
    neutral_levels,
    rgb_output_chroma,
    shrink,
    shrink_gray,
)
from models.presets import get_preset
from models.store import LoadedModel


def check_render_size(model: LoadedModel, render_size: int | None) -> int:
    """The side the model runs at (its own ``render_size`` when None); raises ValueError unless a
    positive multiple of the model's size_step."""
    if render_size is None:
        return model.render_size
    step = model.size_step
    if render_size < step or render_size % step:
        raise ValueError(f"render_size must be a multiple of {step} for this model")
    return render_size


def model_input(lum_small: np.ndarray | tf.Tensor, preset_name: str) -> np.ndarray | tf.Tensor:
    """Model input from luminance L in [0, 100] of shape (..., s, s, 1), per the preset."""
    preset = get_preset(preset_name)
    if preset.space == "lab":
        return color.normalize_l(lum_small)
    return gray_rgb_input(lum_small)


def output_chroma(prediction: np.ndarray | tf.Tensor, preset_name: str) -> np.ndarray | tf.Tensor:
    """ab (Lab units) from the generator's output, per the preset."""
    if get_preset(preset_name).space == "lab":
        return color.denormalize_ab(prediction)
    return rgb_output_chroma(prediction)


def _views(network: Any, batch: tf.Tensor, flip_average: bool) -> tf.Tensor:
    """The generator at inference (moving BatchNorm statistics, no dropout) on ``batch``; with
    ``flip_average``, the mean of its output on each image and (mirrored back) on the image's
    mirror: one call on a batch twice as large."""
    if not flip_average:
        return network(batch, training=False)
    count = tf.shape(batch)[0]
    both = network(tf.concat([batch, tf.reverse(batch, axis=[2])], axis=0), training=False)
    return (both[:count] + tf.reverse(both[count:], axis=[2])) * 0.5


def generator_output(
    network: Any, batch: tf.Tensor, flip_average: bool = False, scale_sizes: tuple[int, ...] = ()
) -> tf.Tensor:
    """The generator's output for ``batch`` (n, s, s, C) as served: averaged over its mirror image
    (``flip_average``) and over the same inputs resized to each side in ``scale_sizes`` (the outputs
    resized back to s). Each view errs differently where the lightness does not tell the colour,
    so their mean is closer to the truth, at the arithmetic of every view (figures:
    docs/inference.md, MODEL_CARD.md). ``batch``'s side must be static."""
    out = _views(network, batch, flip_average)
    if not scale_sizes:
        return out
    side = int(batch.shape[1])
    total = tf.cast(out, tf.float32)
    for other in scale_sizes:
        # area averages when shrinking, as the photograph itself is shrunk; bilinear when enlarging
        method = "area" if other < side else "bilinear"
        view = _views(network, tf.image.resize(batch, (other, other), method=method), flip_average)
        total += tf.image.resize(tf.cast(view, tf.float32), (side, side), method="bilinear")
    return tf.cast(total / (1 + len(scale_sizes)), out.dtype)


def predict(model: LoadedModel, batch: tf.Tensor) -> tf.Tensor:
    """``generator_output`` of the model on ``batch``, as its metadata says to serve it."""
    fn = getattr(model, "_predict_fn", None)
    if fn is None:
        # one trace per input shape (a render size): a retrace with unknown sides would hand the
        # resize decoder's upsampling a shape it cannot take. A partial, not a lambda: TensorFlow
        # keys its tracing statistics by a function's code, and took one lambda's functions, each
        # traced for a model of its own (``colorizer evaluate`` on every version), as one function
        # retraced in a loop, with a warning (models.serving.served_function).
        fn = tf.function(functools.partial(_served_output, model))
        model._predict_fn = fn  # type: ignore[attr-defined]
    return fn(batch)


def _served_output(model: LoadedModel, batch: tf.Tensor) -> tf.Tensor:
    return generator_output(model.generator, batch, model.flip_average, model.scale_sizes(batch.shape[1]))


def gray_model_input(levels: np.ndarray, preset_name: str) -> np.ndarray:
    """``model_input`` of the lightness of gray levels (s, s): for RGB presets the gray image in
    [-1, 1] directly (L -> sRGB of a neutral colour gives the level back)."""
    if get_preset(preset_name).space == "lab":
        return np.asarray(model_input(gray_luminance(levels), preset_name), np.float32)
    gray = levels.astype(np.float32) / 127.5 - 1.0
    return np.repeat(gray[..., None], 3, axis=-1)


def prepare(
    model: LoadedModel, image: np.ndarray, render_size: int | None = None, hints: list[Hint] | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """(model input (s, s, C) float32, the photograph's lightness, s) for an RGB (H, W, 3) or gray
    (H, W) uint8 array. The lightness is L float32 (H, W, 1) for RGB and the gray array itself for
    gray: what ``finish`` joins the chroma with. A model that takes hints gets ``hints`` (points of
    ``image``, ``models.hints.parse_hints``) drawn into its hint channels, none when None.

    Raises ValueError for a bad render_size or array shape, NoHintInputs (a ValueError) for hints
    given to a model without hint inputs.
    """
    if hints and not model.hints:
        raise NoHintInputs(model.version)
    inputs, light, size = _prepare(model, image, render_size)
    if model.hints:
        height, width = np.shape(image)[:2]
        inputs = np.concatenate([inputs, rasterize(hints or [], width, height, size)], axis=-1)
    return inputs, light, size


def _prepare(
    model: LoadedModel, image: np.ndarray, render_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    size = check_render_size(model, render_size)
    image = np.asarray(image)
    if image.dtype != np.uint8:  # values on the 0..255 scale, as uint8 would hold them
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"expected an RGB or gray image array, got shape {image.shape}")
    if min(image.shape[:2]) == 0:
        raise ValueError(f"the image has no pixels (shape {image.shape})")
    if image.ndim == 3 and (levels := neutral_levels(image)) is not None:
        image = levels  # the gray path below: the same lightness, a third of the work
    if image.ndim == 3:
        light = luminance(image)
        return np.asarray(model_input(shrink(light, size), model.preset), np.float32), light, size
    # the join looks a gray photograph's lightness up itself: keep the 1-byte pixels
    light = np.ascontiguousarray(image)
    return gray_model_input(shrink_gray(light, size), model.preset), light, size


def finish(model: LoadedModel, prediction: np.ndarray | tf.Tensor, light: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3), read-only (``join_chroma``): the generator's ``prediction`` (s, s, C) for
    a photograph whose lightness ``prepare`` gave as ``light``, chroma upsampled and joined with it
    (scaled by the model's ``chroma_scale`` first, when it has one, then faint colours muted under
    its ``chroma_knee``; with hints too, so that a hint changes nothing far from it)."""
    chroma = output_chroma(prediction, model.preset)
    if model.chroma_scale != 1.0:
        chroma = chroma * model.chroma_scale
    if model.chroma_knee:
        chroma = mute_faint(chroma, model.chroma_knee)
    return join_chroma(chroma, light)


def mute_faint(chroma: np.ndarray | tf.Tensor, knee: float) -> np.ndarray:
    """``chroma`` (..., 2) ab with each pixel's colour of strength c < ``knee`` scaled by c / knee
    (a colour of strength c then has c * c / knee), stronger ones unchanged: continuous, per pixel,
    the hue kept."""
    chroma = np.asarray(chroma, np.float32)
    a, b = chroma[..., 0], chroma[..., 1]
    # (numpy's sum over a last axis of two took 4x as long: 0.89 against 0.22 ms at 192x192)
    strength = np.sqrt(a * a + b * b)
    return chroma * np.minimum(strength * np.float32(1.0 / knee), np.float32(1.0))[..., None]


def colorize_array(
    model: LoadedModel, image: np.ndarray, render_size: int | None = None, hints: list[Hint] | None = None
) -> np.ndarray:
    """Colorize an RGB (H, W, 3) or gray (H, W) uint8 array (with ``hints``, as ``prepare``); returns
    RGB uint8 of the same size (computed on the CPU, a read-only view of padded 4-byte pixels:
    ``np.array`` it to write to it or to keep it without the padding).

    Raises ValueError for a bad render_size or array shape, or hints the model cannot take.
    """
    inputs, light, _ = prepare(model, image, render_size, hints)
    return finish(model, predict(model, inputs[None])[0], light)
