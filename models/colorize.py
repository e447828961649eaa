"""Colorize one photograph at any size with a loaded generator.

The model runs at its own size (or a requested ``render_size``); its chroma is upsampled to the
photograph's size and joined with the photograph's own full-resolution luminance, so the output
keeps every detail of the input and its L channel is the input's.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from models import color
from models.presets import get_preset
from models.store import LoadedModel


def check_render_size(model: LoadedModel, render_size: int | None) -> int:
    """The side the model runs at; raises ValueError unless a positive multiple of 2**levels."""
    if render_size is None:
        return model.image_size
    step = 2**model.levels
    if render_size < step or render_size % step:
        raise ValueError(f"render_size must be a multiple of {step} for this model")
    return render_size


def model_input(lum_small: tf.Tensor, preset_name: str) -> tf.Tensor:
    """Model input from luminance L in [0, 100] of shape (..., s, s, 1), per the preset."""
    preset = get_preset(preset_name)
    if preset.space == "lab":
        return color.normalize_l(lum_small)
    zeros = tf.zeros_like(lum_small)
    gray = color.lab_to_rgb(tf.concat([lum_small, zeros, zeros], axis=-1))
    return gray * 2.0 - 1.0  # the report's [-1, 1] RGB, gray in all three channels


def output_chroma(prediction: tf.Tensor, preset_name: str) -> tf.Tensor:
    """ab (Lab units) from the generator's output, per the preset."""
    if get_preset(preset_name).space == "lab":
        return color.denormalize_ab(prediction)
    return color.rgb_to_lab((prediction + 1.0) / 2.0)[..., 1:]


def predict(model: LoadedModel, batch: tf.Tensor) -> tf.Tensor:
    """Run the generator at inference (moving BatchNorm statistics, no dropout)."""
    fn = getattr(model, "_predict_fn", None)
    if fn is None:
        fn = tf.function(lambda x: model.generator(x, training=False), reduce_retracing=True)
        model._predict_fn = fn  # type: ignore[attr-defined]
    return fn(batch)


def colorize_array(model: LoadedModel, image: np.ndarray, render_size: int | None = None) -> np.ndarray:
    """Colorize an RGB (H, W, 3) or gray (H, W) uint8 array; returns RGB uint8 of the same size.

    Raises ValueError for a bad render_size or array shape.
    """
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB or gray image array, got shape {image.shape}")
    size = check_render_size(model, render_size)
    height, width = image.shape[:2]
    rgb = tf.convert_to_tensor(image, tf.float32) / 255.0
    lum = color.rgb_to_lab(rgb)[..., :1]  # (H, W, 1), the photograph's own luminance
    lum_small = tf.image.resize(lum, (size, size), method="area")
    chroma = output_chroma(predict(model, model_input(lum_small, model.preset)[None]), model.preset)[0]
    chroma_full = tf.image.resize(chroma, (height, width), method="bilinear")
    out = color.lab_to_rgb(tf.concat([lum, chroma_full], axis=-1))
    return tf.cast(tf.round(out * 255.0), tf.uint8).numpy()
