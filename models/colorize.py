"""Colorize one photograph at any size with a loaded generator.

The model runs at its own size (or a requested ``render_size``); its chroma is upsampled to the
photograph's size and joined with the photograph's own full-resolution luminance, so the output
keeps every detail of the input and its L channel is the input's.

The work is split so a server can batch the model call: ``prepare`` (luminance, model input),
``predict`` (the generator), ``finish`` (chroma upsampled and joined with the luminance).
``colorize_array`` is the three in a row. ``prepare`` and ``finish`` are graph functions with
shape-agnostic signatures: a photograph of a new size does not trace them again.
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
    return _gray_rgb_input(tf.convert_to_tensor(lum_small, tf.float32))


def output_chroma(prediction: tf.Tensor, preset_name: str) -> tf.Tensor:
    """ab (Lab units) from the generator's output, per the preset."""
    if get_preset(preset_name).space == "lab":
        return color.denormalize_ab(prediction)
    return _rgb_output_chroma(tf.convert_to_tensor(prediction, tf.float32))


# The rgb preset converts the small image between RGB and Lab on every request: compiled (XLA,
# one program per render size), eager TensorFlow would spend milliseconds per op on it.


@tf.function(jit_compile=True)
def _gray_rgb_input(lum_small: tf.Tensor) -> tf.Tensor:
    zeros = tf.zeros_like(lum_small[..., 0])
    gray = tf.stack(_lab_to_srgb(lum_small[..., 0], zeros, zeros), axis=-1)
    return gray * 2.0 - 1.0  # the report's [-1, 1] RGB, gray in all three channels


@tf.function(jit_compile=True)
def _rgb_output_chroma(prediction: tf.Tensor) -> tf.Tensor:
    """ab of RGB in [-1, 1]: color.rgb_to_lab's formulas, per channel."""
    rgb = _linear((prediction + 1.0) / 2.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    (xr, xg, xb), (yr, yg, yb), (zr, zg, zb) = _RGB_TO_XYZ
    fx = _f_from_xyz((xr * r + xg * g + xb * b) / _WHITE_X)
    fy = _f_from_xyz(yr * r + yg * g + yb * b)
    fz = _f_from_xyz((zr * r + zg * g + zb * b) / _WHITE_Z)
    return tf.stack([500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def predict(model: LoadedModel, batch: tf.Tensor) -> tf.Tensor:
    """Run the generator at inference (moving BatchNorm statistics, no dropout)."""
    fn = getattr(model, "_predict_fn", None)
    if fn is None:
        fn = tf.function(lambda x: model.generator(x, training=False), reduce_retracing=True)
        model._predict_fn = fn  # type: ignore[attr-defined]
    return fn(batch)


# -- colour conversion at full resolution ---------------------------------------------------------
#
# The per-pixel colour maths runs as one XLA-fused loop over the photograph's pixels, flattened and
# padded to a bucket size (a power of two, or 1.5 times one), so each bucket compiles once and a
# photograph of a new size does not compile again. Unfused, a 2 MP photograph costs about ten
# passes over memory per operation, and TensorFlow's pow alone costs more than the model's share.
# Powers are written exp(p * log(x)): same values to float rounding, and vectorised.

_MIN_PIXEL_BUCKET = 1 << 12
_W_R, _W_G, _W_B = (float(w) for w in color._RGB_TO_XYZ.numpy()[1])  # Y of D65 white is 1
_XYZ_TO_RGB = color._XYZ_TO_RGB.numpy().tolist()
_RGB_TO_XYZ = color._RGB_TO_XYZ.numpy().tolist()
_WHITE_X, _, _WHITE_Z = (float(w) for w in color._WHITE.numpy())


def pixel_bucket(count: int) -> int:
    """The padded length for ``count`` pixels: 4096, 6144, 8192, 12288, ... (at most 1.5x count)."""
    size = _MIN_PIXEL_BUCKET
    while size < count:
        size = size * 3 // 2 if size & (size - 1) == 0 else size // 3 * 4
    return size


def _power(x: tf.Tensor, p: float) -> tf.Tensor:
    return tf.exp(tf.math.log(x) * p)


def _f_from_xyz(t: tf.Tensor) -> tf.Tensor:
    eps = 0.008856
    return tf.where(t > eps, _power(tf.maximum(t, eps), 1.0 / 3.0), 7.787 * t + 16.0 / 116.0)


def _lightness(y: tf.Tensor) -> tf.Tensor:
    return 116.0 * _f_from_xyz(y) - 16.0


def _linear(v: tf.Tensor) -> tf.Tensor:
    return tf.where(v > 0.04045, _power((v + 0.055) / 1.055, 2.4), v / 12.92)


@tf.function(jit_compile=True)
def _pixels_lightness(rgb: tf.Tensor) -> tf.Tensor:
    """(n,) L of (n, 3) uint8 sRGB pixels: only Y of XYZ is needed."""
    linear = _linear(tf.cast(rgb, tf.float32) / 255.0)
    return _lightness(linear[:, 0] * _W_R + linear[:, 1] * _W_G + linear[:, 2] * _W_B)


def _xyz_from_f(f: tf.Tensor) -> tf.Tensor:
    return tf.where(f > 0.2068966, f * f * f, (f - 16.0 / 116.0) / 7.787)


def _lab_to_srgb(lum: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> list[tf.Tensor]:
    """[R, G, B] in [0, 1] of L, a, b: color.lab_to_rgb's formulas, per channel."""
    fy = (lum + 16.0) / 116.0
    x = _xyz_from_f(fy + a / 500.0) * _WHITE_X
    y = _xyz_from_f(fy)
    z = _xyz_from_f(tf.maximum(fy - b / 200.0, 0.0)) * _WHITE_Z
    channels = []
    for m in _XYZ_TO_RGB:
        linear = tf.maximum(m[0] * x + m[1] * y + m[2] * z, 0.0)
        # log(0) would be -inf: feed the branch that is not taken a harmless value
        gamma = _power(tf.maximum(linear, 0.0031308), 1.0 / 2.4)
        srgb = tf.where(linear > 0.0031308, 1.055 * gamma - 0.055, 12.92 * linear)
        channels.append(tf.clip_by_value(srgb, 0.0, 1.0))
    return channels


@tf.function(jit_compile=True)
def _pixels_rgb(lum: tf.Tensor, ab: tf.Tensor) -> tf.Tensor:
    """(n, 3) uint8 sRGB of (n,) L and (n, 2) ab."""
    channels = _lab_to_srgb(lum, ab[:, 0], ab[:, 1])
    return tf.stack([tf.cast(tf.round(c * 255.0), tf.uint8) for c in channels], axis=-1)


def _padded(values: np.ndarray, count: int, dtype: type) -> np.ndarray:
    """``values`` as ``count`` rows, zero rows appended up to the bucket size."""
    flat = np.asarray(values, dtype).reshape(count, -1)
    padded = np.empty((pixel_bucket(count), flat.shape[1]), dtype)
    padded[:count] = flat
    padded[count:] = 0
    return padded if flat.shape[1] > 1 else padded[:, 0]


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Lab lightness L in [0, 100], float32 (H, W, 1), of an sRGB uint8 image (H, W, 3)."""
    height, width = rgb.shape[0], rgb.shape[1]
    count = height * width
    lightness = _pixels_lightness(_padded(rgb, count, np.uint8)).numpy()
    return lightness[:count].reshape(height, width, 1)  # a view: no copy


# L of every gray level: a gray photograph's luminance is one table lookup per pixel.
_GRAY_LIGHTNESS = _lightness(_linear(tf.range(256, dtype=tf.float32) / 255.0) * (_W_R + _W_G + _W_B)).numpy()


def gray_luminance(gray: np.ndarray) -> np.ndarray:
    """Lab lightness (H, W, 1) of a gray uint8 image (H, W): that of the RGB image with R=G=B."""
    return _GRAY_LIGHTNESS[np.asarray(gray, np.uint8)][..., None]


@tf.function(input_signature=[tf.TensorSpec([None, None, 1], tf.float32), tf.TensorSpec([], tf.int32)])
def _shrink(lum: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    return tf.image.resize(lum, tf.stack([size, size]), method="area")


@tf.function(
    input_signature=[
        tf.TensorSpec([None, None, 2], tf.float32),
        tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.int32),
    ]
)
def _grow(chroma: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    return tf.image.resize(chroma, tf.stack([height, width]), method="bilinear")


def join_chroma(chroma: np.ndarray | tf.Tensor, lum: np.ndarray) -> np.ndarray:
    """sRGB uint8 (H, W, 3) from the photograph's lightness (H, W, 1) and chroma ab at any size."""
    height, width = int(lum.shape[0]), int(lum.shape[1])
    count = height * width
    ab = _grow(tf.convert_to_tensor(chroma, tf.float32), tf.constant(height), tf.constant(width)).numpy()
    rgb = _pixels_rgb(_padded(lum, count, np.float32), _padded(ab, count, np.float32)).numpy()
    return rgb[:count].reshape(height, width, 3)


def prepare(
    model: LoadedModel, image: np.ndarray, render_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """(model input (s, s, C) float32, the photograph's lightness (H, W, 1), s) for an RGB (H, W, 3)
    or gray (H, W) uint8 array.

    Raises ValueError for a bad render_size or array shape.
    """
    size = check_render_size(model, render_size)
    image = np.asarray(image)
    if image.dtype != np.uint8:  # values on the 0..255 scale, as uint8 would hold them
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"expected an RGB or gray image array, got shape {image.shape}")
    if min(image.shape[:2]) == 0:
        raise ValueError(f"the image has no pixels (shape {image.shape})")
    lum = luminance(image) if image.ndim == 3 else gray_luminance(image)
    lum_small = _shrink(lum, tf.constant(size, tf.int32))
    return model_input(lum_small, model.preset).numpy(), lum, size


def finish(model: LoadedModel, prediction: np.ndarray | tf.Tensor, lum: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3): the generator's ``prediction`` (s, s, C) for a photograph whose
    lightness is ``lum`` (H, W, 1), chroma upsampled and joined with that lightness."""
    prediction = tf.convert_to_tensor(prediction, tf.float32)
    chroma = output_chroma(prediction[None], model.preset)[0]
    return join_chroma(chroma, lum)


def colorize_array(model: LoadedModel, image: np.ndarray, render_size: int | None = None) -> np.ndarray:
    """Colorize an RGB (H, W, 3) or gray (H, W) uint8 array; returns RGB uint8 of the same size.

    Raises ValueError for a bad render_size or array shape.
    """
    inputs, lum, _ = prepare(model, image, render_size)
    return finish(model, predict(model, inputs[None])[0], lum)
