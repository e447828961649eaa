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

import sys
from typing import Any

import cv2
import numpy as np
import tensorflow as tf
from numpy.polynomial import Polynomial, chebyshev
from PIL import Image

from models import color
from models.device import prefer_wide_vectors
from models.presets import get_preset
from models.store import LoadedModel

prefer_wide_vectors()  # before this module's XLA loops compile (models/device.py says why)
# OpenCV's calls here and in inference/jpeg.py are small and come from many threads at once: its own
# thread pool only added hand-offs and workers spinning beside the model (HTTP, 256x256 photographs,
# one client: 12.0-12.4 images/s with one OpenCV thread, 10.7 with its default two).
cv2.setNumThreads(1)


def check_render_size(model: LoadedModel, render_size: int | None) -> int:
    """The side the model runs at (its own ``render_size`` when None); raises ValueError unless a
    positive multiple of the model's size_step."""
    if render_size is None:
        return model.render_size
    step = model.size_step
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
    """The report's [-1, 1] RGB input, gray in all three channels, of L (..., 1): a neutral colour's
    linear R, G and B all equal its Y, so one channel is computed and repeated."""
    y = _xyz_from_f((lum_small + 16.0) / 116.0)
    gamma = 1.055 * _root_power(tf.maximum(y, _GAMMA_KNEE), _GAMMA) - 0.055
    gray = tf.minimum(tf.where(y > _GAMMA_KNEE, gamma, 12.92 * y), 1.0)
    return tf.tile(gray * 2.0 - 1.0, [1] * (len(lum_small.shape) - 1) + [3])


@tf.function(jit_compile=True)
def _rgb_output_chroma(prediction: tf.Tensor) -> tf.Tensor:
    """ab of RGB in [-1, 1]: color.rgb_to_lab's formulas, per channel."""
    rgb = _fitted_linear((prediction + 1.0) / 2.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    (xr, xg, xb), (yr, yg, yb), (zr, zg, zb) = _RGB_TO_XYZ
    fx = _fitted_f((xr * r + xg * g + xb * b) / _WHITE_X)
    fy = _fitted_f(yr * r + yg * g + yb * b)
    fz = _fitted_f((zr * r + zg * g + zb * b) / _WHITE_Z)
    return tf.stack([500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


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
    so their mean is closer to the truth (validation, 2026-12-02: flip averaging took mean
    CIEDE2000 12.51 -> 12.34), at the arithmetic of every view. ``batch``'s side must be static."""
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
        flip = model.flip_average
        # one trace per input shape (a render size): a retrace with unknown sides would hand the
        # resize decoder's upsampling a shape it cannot take
        fn = tf.function(lambda x: generator_output(model.generator, x, flip, model.scale_sizes(x.shape[1])))
        model._predict_fn = fn  # type: ignore[attr-defined]
    return fn(batch)


# -- colour conversion at full resolution ---------------------------------------------------------
#
# The per-pixel colour maths runs as XLA-fused loops over the photograph's pixels, flattened and
# padded to a bucket size (a power of two, or 1.5 times one), so each bucket compiles once and a
# photograph of a new size does not compile again. Unfused, a 2 MP photograph costs about ten
# passes over memory per operation, and TensorFlow's pow alone costs more than the model's share.
#
# What the 2 MP profile showed, and what the code does about it:
# - exp(p * log(x)) costs about 0.6 ns a value; three gammas and a cube root per pixel were
#   the largest single cost. The full-resolution loops raise to fractional powers with three square
#   roots (hardware, vectorised) and a degree-5 polynomial fitted at import (``_root_power``);
#   its error (below 1e-6) moves a uint8 output only where a value sits on a rounding boundary.
# - sRGB -> linear of a uint8 level is a fitted polynomial (``_level_linear``): L of a colour
#   photograph is one vectorised loop. (A 256-entry table made XLA compile a scalar loop, so Y
#   and L were two calls: a 2 MP photograph 13 ms unfused, 3 ms so, 2 ms now.)
# - The sRGB output is one uint32 per pixel, its three levels packed into it (``_srgb_of``): one
#   vectorised loop writes RGBX pixels, which Pillow encodes in place (a stack of three channels
#   took 22 ms, an (n, 3) broadcast 10 ms, then 2.8; packed 2.4 ms, and Pillow's repacking of
#   (H, W, 3) arrays, 1.2 ms, is gone).
# - In a wide photograph, horizontal pixel pairs share one chroma value (``chroma_sharing``) and
#   the join broadcasts it: the upsampled chroma is half the size.
# - The chroma is upsampled by OpenCV's bilinear resize straight into the padded buffer (2 MP:
#   0.3 ms; TensorFlow's resize costs about 4 ns an output pixel, 2.4 ms, and its pad 0.6 more).
# - Buffers go to the loops and back as DLPack tensors that share their memory (``_tensor``,
#   ``_host_array``): TensorFlow copies numpy arrays in and ``.numpy()`` copies out (1.3 ms).
# - XLA vectorises for 512-bit registers on AMD CPUs with AVX-512
#   (``models.device.prefer_wide_vectors``: the 2 MP join loop 3.5 -> 2.3 ms on a Zen 5 EPYC).
# - The model input is shrunk with Pillow's box filter (2 MP: 1.8 ms on the float lightness
#   against 3.1 ms for TensorFlow's area resize; see ``shrink``), a gray photograph as its levels.
# Tried and dropped: chroma upsampling fused into the join with gathers (10x slower, scalar
# loop), or as a blend of two rows of a horizontally resized chroma in a 2-D loop (XLA compiles
# 2-D shapes with small inner dimensions badly: 30 ms); Pillow's "F" resize, XLA's resize and
# TensorFlow's ScaleAndTranslate for upsampling (all slower than TensorFlow's resize); TensorFlow
# repeat or broadcast_to to replicate half-resolution chroma; Pillow 8-bit chroma upsampling (4 ms
# a channel); a YCbCr join handed to the JPEG encoder (no faster than RGB); a bit-trick pow
# (log2/exp2 polynomials) instead of the square roots (slower); XLA's fast-math flag (10% of
# the loop, not worth exact-formula drift); OpenCV's Lab conversion for the rgb preset's small
# output (0.2 ms faster, but its constants differ from models.color by up to 0.55 in ab).

_MIN_PIXEL_BUCKET = 1 << 12
_W_R, _W_G, _W_B = (float(w) for w in color._RGB_TO_XYZ.numpy()[1])  # Y of D65 white is 1
_XYZ_TO_RGB = color._XYZ_TO_RGB.numpy().tolist()
_RGB_TO_XYZ = color._RGB_TO_XYZ.numpy().tolist()
_WHITE_X, _, _WHITE_Z = (float(w) for w in color._WHITE.numpy())
_F_EPS = 0.008856  # below it, Lab's f(t) is linear
_GAMMA_KNEE = 0.0031308  # below it, sRGB's encoding is linear


def pixel_bucket(count: int) -> int:
    """The padded length for ``count`` pixels: 4096, 6144, 8192, 12288, ... (at most 1.5x count)."""
    size = _MIN_PIXEL_BUCKET
    while size < count:
        size = size * 3 // 2 if size & (size - 1) == 0 else size // 3 * 4
    return size


def _root_power_coefficients(low: float, p: float) -> list[float]:
    """Power-basis coefficients of a degree-5 polynomial in q = x**(1/8) fitting x**p = q**(8p) on
    [low, 1] (Chebyshev least squares: maximum error about 3e-7 for the powers used here)."""
    q = np.linspace(low**0.125, 1.0, 20001)
    return [float(c) for c in chebyshev.cheb2poly(chebyshev.chebfit(q, q ** (8.0 * p), 5))]


_CUBE_ROOT = _root_power_coefficients(_F_EPS, 1.0 / 3.0)
_GAMMA = _root_power_coefficients(_GAMMA_KNEE, 1.0 / 2.4)
_LINEAR_LOW = (0.04045 + 0.055) / 1.055  # above it, sRGB's decoding is a power
_POWER_0_4 = _root_power_coefficients(_LINEAR_LOW, 0.4)


def _horner(t: tf.Tensor, coefficients: list[float]) -> tf.Tensor:
    """The polynomial with power-basis ``coefficients`` (lowest first, at least two) at ``t``."""
    value = coefficients[-1] * t + coefficients[-2]
    for c in coefficients[-3::-1]:
        value = value * t + c
    return value


def _root_power(x: tf.Tensor, coefficients: list[float]) -> tf.Tensor:
    """x**p for x in the fitted range, from three square roots and a Horner polynomial."""
    return _horner(tf.sqrt(tf.sqrt(tf.sqrt(x))), coefficients)


# sRGB decoding of a uint8 level: linear up to level 10, above it a least-squares polynomial
# through the levels (degree 10: error below 3e-7, 2e-4 in L at the darkest). A 256-entry table
# lookup, as before, made XLA compile a scalar loop and split Y and L into two calls.
_LINEAR_TOE = 10  # the last level below sRGB's 0.04045 knee


def _level_linear_fit() -> tuple[list[float], float, float]:
    """(coefficients in t, offset, scale) of linear light above the toe, t = v * scale + offset."""
    v = np.arange(_LINEAR_TOE + 1, 256) / 255.0
    fit = Polynomial.fit(v, ((v + 0.055) / 1.055) ** 2.4, 10)
    low, high = (float(x) for x in fit.domain)
    return [float(c) for c in fit.coef], -(low + high) / (high - low), 2.0 / (high - low)


_LEVEL_LINEAR = _level_linear_fit()


def _level_linear(level: tf.Tensor) -> tf.Tensor:
    """Linear light of uint8 sRGB levels."""
    coefficients, offset, scale = _LEVEL_LINEAR
    v = tf.cast(level, tf.float32) / 255.0
    return tf.where(level > _LINEAR_TOE, _horner(v * scale + offset, coefficients), v / 12.92)


def _fitted_f(t: tf.Tensor) -> tf.Tensor:
    """Lab's f(t) of ``color.rgb_to_lab``, its cube root from ``_root_power``."""
    return tf.where(t > _F_EPS, _root_power(tf.maximum(t, _F_EPS), _CUBE_ROOT), 7.787 * t + 16.0 / 116.0)


def _fitted_linear(v: tf.Tensor) -> tf.Tensor:
    """sRGB decoding (``color.rgb_to_lab``'s) with x**2.4 = x * x * x**0.4, the last from
    ``_root_power``: the rgb preset's output chroma at 256x256 in 0.43 ms instead of 0.6 with exp
    and log."""
    x = tf.maximum((v + 0.055) / 1.055, _LINEAR_LOW)
    return tf.where(v > 0.04045, x * x * _root_power(x, _POWER_0_4), v / 12.92)


@tf.function(jit_compile=True)
def _pixels_lightness(rgb: tf.Tensor) -> tf.Tensor:
    """(n,) L of (n, 3) uint8 sRGB pixels: one vectorised loop (2 MP: 2 ms; table lookups for Y
    and a second call for L took 3 ms)."""
    linear = _level_linear(rgb)
    y = linear[:, 0] * _W_R + linear[:, 1] * _W_G + linear[:, 2] * _W_B
    return 116.0 * _fitted_f(y) - 16.0


def _xyz_from_f(f: tf.Tensor) -> tf.Tensor:
    return tf.where(f > 0.2068966, f * f * f, (f - 16.0 / 116.0) / 7.787)


def _shared(ab: tf.Tensor, count: int) -> tf.Tensor:
    """(count, 2) ab from (count / k, 2), each row repeated for k neighbouring pixels: inside a
    compiled loop, a broadcast that reads each row k times and writes nothing more."""
    rows = ab.shape[0]
    if rows == count:
        return ab
    return tf.reshape(tf.broadcast_to(ab[:, None, :], [rows, count // rows, 2]), [count, 2])


# A pixel's sRGB levels packed in one uint32, R in the lowest byte (``_BYTE_SHIFTS``): in memory an
# RGBX pixel on a little-endian machine, the layout Pillow keeps RGB images in, so JPEG encoding
# wraps the result without repacking it (``inference.images.encode_image``).
_BYTE_SHIFTS = (0, 8, 16, 24) if sys.byteorder == "little" else (24, 16, 8, 0)


def _srgb_of(fy: tf.Tensor, ab: tf.Tensor) -> tf.Tensor:
    """(n,) uint32 sRGB pixels (R, G, B, 255 by byte, ``_BYTE_SHIFTS``) of (n,) f(Y) = (L + 16) / 116
    and (n, 2) ab: color.lab_to_rgb's formulas."""
    x = _xyz_from_f(fy + ab[:, 0] / 500.0) * _WHITE_X
    y = _xyz_from_f(fy)
    z = _xyz_from_f(tf.maximum(fy - ab[:, 1] / 200.0, 0.0)) * _WHITE_Z
    word = tf.bitwise.left_shift(tf.constant(255, tf.uint32), _BYTE_SHIFTS[3])  # X: opaque
    for m, shift in zip(_XYZ_TO_RGB, _BYTE_SHIFTS[:3], strict=True):  # m: the weights of x, y, z
        linear = tf.maximum(m[0] * x + m[1] * y + m[2] * z, 0.0)
        gamma = 1.055 * _root_power(tf.maximum(linear, _GAMMA_KNEE), _GAMMA) - 0.055
        srgb = tf.minimum(tf.where(linear > _GAMMA_KNEE, gamma, 12.92 * linear), 1.0)
        level = tf.cast(srgb * 255.0 + 0.5, tf.uint32)  # srgb >= 0: + 0.5 and truncation round it
        word = tf.bitwise.bitwise_or(word, tf.bitwise.left_shift(level, shift))
    return word


@tf.function(jit_compile=True)
def _pixels_rgb(lum: tf.Tensor, ab: tf.Tensor) -> tf.Tensor:
    """(n,) packed sRGB (``_srgb_of``) of (n,) L and (n / k, 2) ab, k = 1 or 2 neighbouring pixels a row."""
    return _srgb_of((lum + 16.0) / 116.0, _shared(ab, lum.shape[0]))


# A gray level's f(Y) = (L + 16) / 116, computed in the loop instead of looked up (a lookup makes
# XLA's loop scalar; one in numpy first costs 2 ms and 8 MB at 2 MP). f is piecewise smooth in the
# level: linear up to level 10 (sRGB's toe), then Lab's toe up to level 23, then x**0.8 (x =
# (v + 0.055) / 1.055). Each piece is a least-squares polynomial through the levels of the
# ``_GRAY_LIGHTNESS`` table (defined below, with ``gray_luminance``), no square roots (1 ms less at
# 2 MP); its error at every level is below 2e-4 in L (tested).
_GRAY_PIECES = ((0, 10, 1), (11, 23, 3), (24, 255, 10))  # first level, last level, degree


def _gray_fits() -> list[tuple[int, list[float], float, float]]:
    """(last level, coefficients in t, offset, scale) per piece, t = v * scale + offset in [-1, 1]."""
    fy = (_GRAY_LIGHTNESS.astype(np.float64) + 16.0) / 116.0
    fits = []
    for first, last, degree in _GRAY_PIECES:
        v = np.arange(first, last + 1) / 255.0
        fit = Polynomial.fit(v, fy[first : last + 1], degree)
        low, high = (float(x) for x in fit.domain)
        fits.append((last, [float(c) for c in fit.coef], -(low + high) / (high - low), 2.0 / (high - low)))
    return fits


def _gray_fy(gray: tf.Tensor) -> tf.Tensor:
    """f(Y) of uint8 gray levels, piece by piece (``_gray_fits``)."""
    v = tf.cast(gray, tf.float32) / 255.0
    value = None
    for last, coefficients, offset, scale in reversed(_GRAY_FITS):
        piece = _horner(v * scale + offset, coefficients)
        value = piece if value is None else tf.where(gray > last, value, piece)
    return value


@tf.function(jit_compile=True)
def _gray_pixels_rgb(gray: tf.Tensor, ab: tf.Tensor) -> tf.Tensor:
    """(n,) packed sRGB (``_srgb_of``) of (n,) uint8 gray levels and (n / k, 2) ab, k = 1 or 2."""
    return _srgb_of(_gray_fy(gray), _shared(ab, gray.shape[0]))


# Buffers handed to the compiled loops are allocated here, aligned, and passed as DLPack tensors
# that share their memory: TensorFlow copies a numpy array it is given (1 ms for the 10 MB a 2 MP
# gray photograph's join reads), and XLA's CPU loops crash outright on a buffer that is not
# aligned, so ``_tensor`` checks.
_ALIGN = 64  # bytes


def _aligned_empty(rows: int, dtype: type, channels: int = 1) -> np.ndarray:
    """An uninitialised C-contiguous (rows,) or (rows, channels) array whose data is 64-byte aligned."""
    itemsize = np.dtype(dtype).itemsize
    size = rows * channels * itemsize
    raw = np.empty(size + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    array = raw[start : start + size].view(dtype)
    return array if channels == 1 else array.reshape(rows, channels)


def _tensor(array: np.ndarray) -> tf.Tensor:
    """A tensor sharing ``array``'s memory (no copy); ``array`` is from ``_aligned_empty``."""
    if not array.flags.c_contiguous or array.ctypes.data % _ALIGN:
        raise ValueError("a compiled loop's input must be a C-contiguous, 64-byte aligned array")
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


_DLPACK_CPU = 1  # DLPack's device type for host memory


def _host_array(tensor: tf.Tensor) -> np.ndarray:
    """A tensor's values as numpy: its own memory, read-only, when it is in host memory (``.numpy()``
    copies: 0.3 ms for a 2 MP photograph's pixels); a copy from a GPU's or another device's."""
    if tensor.__dlpack_device__()[0] != _DLPACK_CPU:
        return tensor.numpy()
    return np.from_dlpack(tensor)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Lab lightness L in [0, 100], float32 (H, W, 1), of an sRGB uint8 image (H, W, 3)."""
    height, width = rgb.shape[0], rgb.shape[1]
    count = height * width
    pixels = _rows(np.asarray(rgb, np.uint8), width, pixel_bucket(count), np.uint8)
    lightness = _host_array(_pixels_lightness(_tensor(pixels)))
    return lightness[:count].reshape(height, width, 1)  # a view: no copy (read-only on the CPU)


# L of every gray level: a gray photograph's luminance is one table lookup per pixel.
_GRAY_LEVELS_RGB = tf.repeat(tf.range(256, dtype=tf.float32)[:, None] / 255.0, 3, axis=1)
_GRAY_LIGHTNESS = color.rgb_to_lab(_GRAY_LEVELS_RGB)[:, 0].numpy()


_GRAY_FITS = _gray_fits()


def gray_luminance(gray: np.ndarray) -> np.ndarray:
    """Lab lightness (H, W, 1) of a gray uint8 image (H, W): that of the RGB image with R=G=B."""
    return np.take(_GRAY_LIGHTNESS, np.asarray(gray, np.uint8))[..., None]  # take: 2x fancy indexing


def shrink(lum: np.ndarray, size: int) -> np.ndarray:
    """Lightness (H, W, 1) averaged over areas to (size, size, 1) by Pillow's box filter: the mean
    of the pixels whose centres fall in each output pixel. TensorFlow's "area" resize also weights
    the border pixels by their overlap (the same at whole-number ratios, about 0.2 L apart on
    average otherwise) and takes twice as long on a 2 MP photograph."""
    height, width = lum.shape[0], lum.shape[1]
    plane = np.ascontiguousarray(lum, np.float32)
    image = Image.frombuffer("F", (width, height), plane, "raw", "F", 0, 1)
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))[..., None]


def _upsample(chroma: np.ndarray, height: int, width: int, rows: int) -> np.ndarray:
    """(rows, 2) ab: ``chroma`` (h, w, 2) resized bilinearly to height x width (half-pixel centres,
    edges clamped: TensorFlow's "bilinear"), flattened, zero rows appended.

    OpenCV's resize writes straight into the padded buffer: 0.3 ms for a 2 MP photograph's chroma,
    where TensorFlow's resize and pad took 3 ms (its resize costs about 4 ns an output pixel).
    """
    ab = _aligned_empty(rows, np.float32, 2)
    grid = ab[: height * width].reshape(height, width, 2)
    cv2.resize(chroma, (width, height), dst=grid, interpolation=cv2.INTER_LINEAR)
    ab[height * width :] = 0
    return ab


# Chroma is shared by horizontal pixel pairs once the photograph is at least this many times wider
# than the model's output, as JPEG's 4:2:2 shares it: the upsampled chroma then varies by under a
# quarter of a model pixel across a pair. The upsampling then writes, and the compiled loop reads,
# half as much, and the loop broadcasts each value to its pair. (Pairs of rows too would need the
# loop to know the row length: in the flat layout that is a gather, which XLA compiles to a
# scalar loop.)
PAIR_FACTOR = 4


def chroma_sharing(width: int, chroma_width: int) -> int:
    """How many horizontally neighbouring pixels share one upsampled chroma value: 2 or 1."""
    return 2 if width >= PAIR_FACTOR * chroma_width else 1


def _rows(plane: np.ndarray, row: int, bucket: int, dtype: type) -> np.ndarray:
    """(bucket,) or (bucket, C) aligned flat copy of ``plane`` (H, W) or (H, W, C) with rows
    ``row`` >= W long (the last pixel of a row repeated) and zeros after the last row."""
    height, width = plane.shape[:2]
    channels = plane.shape[2:]
    flat = _aligned_empty(bucket, dtype, *channels)
    grid = flat[: height * row].reshape(height, row, *channels)
    grid[:, :width] = plane
    grid[:, width:] = plane[:, -1:]
    flat[height * row :] = 0
    return flat


def join_chroma(chroma: np.ndarray | tf.Tensor, light: np.ndarray) -> np.ndarray:
    """sRGB uint8 (H, W, 3) from chroma ab at any size and the photograph's lightness: L float32
    (H, W, 1), or the gray uint8 photograph (H, W) itself (its L is computed in the same loop).
    The result is a view of 4-byte RGBX pixels (strides (4 * row, 4, 1)), not a copy: read-only
    where the loop ran on the CPU (``_host_array``).

    Where pixel pairs share chroma and the width is odd, rows are extended by one pixel (pairs never
    straddle two rows) and the chroma is spread over W + 1 pixels: a stretch of under one
    photograph pixel at the right edge.
    """
    gray = light.ndim == 2
    height, width = int(light.shape[0]), int(light.shape[1])
    chroma = np.ascontiguousarray(chroma, np.float32)  # a tensor's numpy view, or a copy off a GPU
    share = chroma_sharing(width, chroma.shape[1])
    row = width + width % share
    count = height * row
    bucket = pixel_bucket(count)  # even: a bucket holds whole pairs
    plane = light if gray else light.reshape(height, width)
    flat = _rows(plane, row, bucket, np.uint8 if gray else np.float32)
    ab = _upsample(chroma, height, row // share, bucket // share)
    words = _host_array((_gray_pixels_rgb if gray else _pixels_rgb)(_tensor(flat), _tensor(ab)))[:count]
    return words.view(np.uint8).reshape(height, row, 4)[:, :width, :3]  # a view: no copy


def neutral_levels(rgb: np.ndarray) -> np.ndarray | None:
    """The gray levels (H, W) of an RGB uint8 image whose every pixel has R = G = B (a black-and-white
    scan saved as RGB: JPEG decodes one exactly so), else None. 2 ms at 2 MP when it is gray; a
    colour photograph is told from its first rows."""
    for part in (rgb[:8], rgb):  # (comparing channel pairs as one (H, W, 2) view is 8x slower)
        red = part[..., 0]
        if not (np.array_equal(red, part[..., 1]) and np.array_equal(red, part[..., 2])):
            return None
    return np.ascontiguousarray(rgb[..., 0])


def shrink_gray(gray: np.ndarray, size: int) -> np.ndarray:
    """A gray uint8 photograph (H, W) shrunk to (size, size) by Pillow's box filter: the mean level
    of each area, rounded as a gray image of that size stores it (1.6 ms at 2 MP; the L of every
    pixel first, then their means, takes 4 ms)."""
    small = Image.fromarray(np.ascontiguousarray(gray, np.uint8)).resize((size, size), Image.Resampling.BOX)
    return np.asarray(small)


def gray_model_input(levels: np.ndarray, preset_name: str) -> np.ndarray:
    """``model_input`` of the lightness of gray levels (s, s): for RGB presets the gray image in
    [-1, 1] directly (L -> sRGB of a neutral colour gives the level back)."""
    if get_preset(preset_name).space == "lab":
        return np.asarray(model_input(gray_luminance(levels), preset_name), np.float32)
    gray = levels.astype(np.float32) / 127.5 - 1.0
    return np.repeat(gray[..., None], 3, axis=-1)


def prepare(
    model: LoadedModel, image: np.ndarray, render_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """(model input (s, s, C) float32, the photograph's lightness, s) for an RGB (H, W, 3) or gray
    (H, W) uint8 array. The lightness is L float32 (H, W, 1) for RGB and the gray array itself for
    gray: what ``finish`` joins the chroma with.

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
    if image.ndim == 3 and (levels := neutral_levels(image)) is not None:
        image = levels  # the gray path below: the same lightness, a third of the work
    if image.ndim == 3:
        light = luminance(image)
        return np.asarray(model_input(shrink(light, size), model.preset), np.float32), light, size
    # the join computes a gray photograph's lightness itself: keep the 1-byte pixels
    light = np.ascontiguousarray(image)
    return gray_model_input(shrink_gray(light, size), model.preset), light, size


def finish(model: LoadedModel, prediction: np.ndarray | tf.Tensor, light: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3), read-only (``join_chroma``): the generator's ``prediction`` (s, s, C) for
    a photograph whose lightness ``prepare`` gave as ``light``, chroma upsampled and joined with it
    (scaled by the model's ``chroma_scale`` first, when it has one)."""
    chroma = output_chroma(prediction, model.preset)
    if model.chroma_scale != 1.0:
        chroma = chroma * model.chroma_scale
    return join_chroma(chroma, light)


def colorize_array(model: LoadedModel, image: np.ndarray, render_size: int | None = None) -> np.ndarray:
    """Colorize an RGB (H, W, 3) or gray (H, W) uint8 array; returns RGB uint8 of the same size
    (computed on the CPU, a read-only view of padded 4-byte pixels: ``np.array`` it to write to it
    or to keep it without the padding).

    Raises ValueError for a bad render_size or array shape.
    """
    inputs, light, _ = prepare(model, image, render_size)
    return finish(model, predict(model, inputs[None])[0], light)
