"""The full-resolution colour maths of colorizing: a photograph's lightness, the model input
shrunk from it, and the predicted chroma upsampled and joined with the lightness into sRGB pixels,
as XLA-compiled loops over flat pixel buckets (a photograph of a new size compiles nothing again);
and the rgb preset's small RGB <-> Lab conversions. ``models.colorize`` drives them.
"""

from __future__ import annotations

import math
import sys
from functools import partial

import cv2
import numpy as np
import tensorflow as tf
from numpy.polynomial import Polynomial, chebyshev
from PIL import Image

from models import color
from models.buffers import aligned_empty, host_array, shared_tensor
from models.device import prefer_wide_vectors
from models.parallel import cores, run_parts

prefer_wide_vectors()  # before this module's XLA loops compile (models/device.py says why)
# OpenCV's calls here and in inference/jpeg.py are small and come from many threads at once: its own
# thread pool only added hand-offs and workers spinning beside the model (HTTP, 256x256 photographs,
# one client: 12.0-12.4 images/s with one OpenCV thread, 10.7 with its default two).
cv2.setNumThreads(1)


# -- colour conversion at full resolution ---------------------------------------------------------
#
# The per-pixel colour maths runs as XLA-fused loops over the photograph's pixels, flattened and
# padded to a bucket size (a power of two, or 1.5 times one), so each bucket compiles once and a
# photograph of a new size does not compile again. Unfused, a 2 MP photograph costs about ten
# passes over memory per operation, and TensorFlow's pow alone costs more than the model's share.
#
# Why each choice below, and what was tried and dropped: docs/performance.md, "Why it is this
# fast"; the profiles and figures behind them are in that page's git history.

_MIN_PIXEL_BUCKET = 1 << 12
_W_R, _W_G, _W_B = (float(w) for w in color._RGB_TO_XYZ.numpy()[1])  # Y of D65 white is 1
_XYZ_TO_RGB = color._XYZ_TO_RGB.numpy().tolist()
_WHITE_X, _, _WHITE_Z = (float(w) for w in color._WHITE.numpy())
_F_EPS = 0.008856  # below it, Lab's f(t) is linear
_GAMMA_KNEE = 0.0031308  # below it, sRGB's encoding is linear
_SRGB_KNEE = 0.04045  # below it, sRGB's decoding is linear
_LINEAR_LOW = (_SRGB_KNEE + 0.055) / 1.055  # above it, sRGB's decoding is a power


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
_LINEAR_TOE = 10  # the last level below sRGB's knee (_SRGB_KNEE)


def _srgb_linear(v: np.ndarray) -> np.ndarray:
    """Linear light of sRGB values ``v`` in [0, 1] (float64): color.rgb_to_lab's decoding."""
    return np.where(v > _SRGB_KNEE, ((v + 0.055) / 1.055) ** 2.4, v / 12.92)


def _level_linear_fit() -> tuple[list[float], float, float]:
    """(coefficients in t, offset, scale) of linear light above the toe, t = v * scale + offset."""
    v = np.arange(_LINEAR_TOE + 1, 256) / 255.0
    fit = Polynomial.fit(v, _srgb_linear(v), 10)
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


@tf.function(jit_compile=True)
def _pixels_lightness(rgb: tf.Tensor) -> tf.Tensor:
    """(n,) L of (n, 3) uint8 sRGB pixels: one vectorised loop (2 MP: 2 ms; table lookups for Y
    and a second call for L took 3 ms)."""
    linear = _level_linear(rgb)
    y = linear[:, 0] * _W_R + linear[:, 1] * _W_G + linear[:, 2] * _W_B
    return 116.0 * _fitted_f(y) - 16.0


_FY_EPS = 0.2068966  # Lab's f at _F_EPS: below it, f's inverse is linear


def _xyz_from_f(f: tf.Tensor) -> tf.Tensor:
    return tf.where(f > _FY_EPS, f * f * f, (f - 16.0 / 116.0) / 7.787)


# A pixel's sRGB levels packed in one uint32, R in the lowest byte (``_BYTE_SHIFTS``): in memory an
# RGBX pixel on a little-endian machine, the layout Pillow keeps RGB images in, so JPEG encoding
# wraps the result without repacking it (``inference.images.encode_image``).
_BYTE_SHIFTS = (0, 8, 16, 24) if sys.byteorder == "little" else (24, 16, 8, 0)


def _srgb_of(fy: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """uint32 sRGB pixels (R, G, B, 255 by byte, ``_BYTE_SHIFTS``) of f(Y) = (L + 16) / 116 ``fy``
    and chroma ``a``, ``b`` (broadcast against it): color.lab_to_rgb's formulas."""
    x = _xyz_from_f(fy + a / 500.0) * _WHITE_X
    y = _xyz_from_f(fy)
    z = _xyz_from_f(tf.maximum(fy - b / 200.0, 0.0)) * _WHITE_Z
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
    """Packed sRGB (``_srgb_of``) of L ``lum`` (n,) with (n, 2) ab, or of pixel pairs: ``lum``
    (n, 2) with one ab row each, broadcast over the pair, as (n, 2) words.

    Only 32-bit values in the loop: LLVM sizes a loop's vectors by its widest type, and the pairs
    packed into one uint64 by shifts held the float maths to 4 lanes where AVX2 has 8 (2 MP gray
    join on Zen 3: 10.0 -> 7.8 ms, the same pixels)."""
    fy = (lum + 16.0) / 116.0
    if fy.shape.rank == 1:
        return _srgb_of(fy, ab[:, 0], ab[:, 1])
    return _srgb_of(fy, ab[:, 0:1], ab[:, 1:2])


# From this many pixels on, a colour photograph's lightness is the compiled loop's (on every core);
# below it, a few passes of OpenCV and numpy on one core, with no TensorFlow call, take less time
# and CPU. Right after a model call on Zen 5 (15 rounds, wall / CPU ms): 256x256 0.87 / 0.90
# compiled against 0.27 / 0.27; 512x512 1.03 / 1.10 against 0.64 / 0.64; 724x724 1.20 / 1.29
# against 1.16 / 1.16; 1024x1024 1.45 / 1.79 against 2.26 / 2.26.
_COMPILED_LIGHTNESS_PIXELS = 1 << 19
# linear light of every uint8 sRGB level, and Y's weights of linear R, G and B
_LINEAR_OF_LEVEL = _srgb_linear(np.arange(256) / 255.0).astype(np.float32)
_Y_OF_LINEAR = np.array([[_W_R, _W_G, _W_B]], np.float32)


def _lab_f(t: np.ndarray) -> np.ndarray:
    """Lab's f of float32 ``t`` (Y, X / Xn or Z / Zn): the cube root, linear below ``_F_EPS``.

    The line is the cube root's tangent at ``_F_EPS``, above the (concave) root everywhere else, so
    f is the lesser of the line and the root of ``t`` held at ``_F_EPS`` from below: a few OpenCV
    passes, no masked copy. numpy's cbrt is a scalar loop on CPUs without AVX-512 (numpy vectorises
    it with AVX-512 only): 3.1 ms for the three channels of a 256x256 image on Zen 3, 0.3 ms this
    way, the same values within 4e-7."""
    flat = t.reshape(1, -1)  # one channel: OpenCV applies a scalar to the first channel only
    root = _power(cv2.max(flat, _F_EPS), 1.0 / 3.0)
    return cv2.min(root, _affine(flat, 7.787, 16.0 / 116.0)).reshape(t.shape)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Lab lightness L in [0, 100], float32 (H, W, 1), of an sRGB uint8 image (H, W, 3)."""
    height, width = rgb.shape[0], rgb.shape[1]
    count = height * width
    if count < _COMPILED_LIGHTNESS_PIXELS:
        linear = cv2.LUT(np.ascontiguousarray(rgb, np.uint8), _LINEAR_OF_LEVEL)  # (H, W, 3) float32
        y = cv2.transform(linear, _Y_OF_LINEAR).reshape(height, width, 1)
        return _lab_f(y) * np.float32(116.0) - np.float32(16.0)
    pixels = _rows(np.asarray(rgb, np.uint8), width, pixel_bucket(count), np.uint8)
    lightness = host_array(_pixels_lightness(shared_tensor(pixels)))
    return lightness[:count].reshape(height, width, 1)  # a view: no copy (read-only on the CPU)


# L of every gray level: a gray photograph's luminance is one table lookup per pixel.
_GRAY_LEVELS_RGB = tf.repeat(tf.range(256, dtype=tf.float32)[:, None] / 255.0, 3, axis=1)
_GRAY_LIGHTNESS = color.rgb_to_lab(_GRAY_LEVELS_RGB)[:, 0].numpy()


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
    return _box_shrink(image, size)[..., None]


# From this many pixels on, a shrink or the buffers of a join are split between two threads
# (models.parallel). A 2 MP photograph's shrink: 1.06 against 1.52 ms (gray), 1.64 against 2.31
# (lightness); 12 MP gray: 5.1 against 9.4 ms; 1 MP gray 0.76 against 0.99.
_SPLIT_PIXELS = 1 << 19


def _split(pixels: int) -> bool:
    return pixels >= _SPLIT_PIXELS and cores() > 1


def _exact_halves(height: int, size: int) -> bool:
    """Whether Pillow's box filter from ``height`` rows to ``size`` gives the same rows as two
    halves (``_box_shrink``): a shrink whose ratio height / size, in lowest terms p / q, has q odd
    (no row's box edge falls exactly on a pixel's centre, so rounding in the halves' sums cannot
    move one) or a power of two (every sum exact). Otherwise an edge can tie, and the halves then
    counted a boundary row differently (1120 rows to 192: up to 26 levels apart)."""
    q = size // math.gcd(height, size)
    return height >= size >= 2 and (q % 2 == 1 or q & (q - 1) == 0)


def _box_shrink(image: Image.Image, size: int) -> np.ndarray:
    """Pillow's box filter of ``image`` to (size, size), a large image's top and bottom halves on
    two threads where that gives the same pixels (``_exact_halves``; tested): each half of the
    output from its own part of the image (``resize``'s ``box``, in fractional pixels)."""
    width, height = image.size
    if not (_split(width * height) and _exact_halves(height, size)):
        return np.asarray(image.resize((size, size), Image.Resampling.BOX))
    top = size // 2
    cut = height * top / size  # where the top half's last output row ends in the image

    halves = [(top, (0, 0, width, cut)), (size - top, (0, cut, width, height))]
    resized = run_parts(
        [partial(image.resize, (size, rows), Image.Resampling.BOX, box) for rows, box in halves]
    )
    return np.concatenate([np.asarray(half) for half in resized])


def _upsample(chroma: np.ndarray, height: int, width: int, rows: int) -> np.ndarray:
    """(rows, 2) ab: ``chroma`` (h, w, 2) resized bilinearly to height x width (half-pixel centres,
    edges clamped: TensorFlow's "bilinear"), flattened, zero rows appended.

    OpenCV's resize writes straight into the padded buffer: 0.3 ms for a 2 MP photograph's chroma,
    where TensorFlow's resize and pad took 3 ms (its resize costs about 4 ns an output pixel).
    """
    ab = aligned_empty(rows, np.float32, 2)
    grid = ab[: height * width].reshape(height, width, 2)
    cv2.resize(chroma, (width, height), dst=grid, interpolation=cv2.INTER_LINEAR)
    ab[height * width :] = 0
    return ab


# Chroma is shared by horizontal pixel pairs once the photograph is at least this many times wider
# than the model's output, as JPEG's 4:2:2 shares it: the upsampled chroma then varies by under a
# quarter of a model pixel across a pair. The upsampling then writes, and the compiled loop reads,
# half as much, and the loop takes the pair's two pixels (an (n, 2) array) with their one chroma
# value broadcast over them: every load and store whole vectors. (Each chroma value repeated for
# the flat pixels instead compiled to one scalar load per pixel and channel: 0.5 ms more at 2 MP.
# Pairs of rows too would need the loop to know the row length: in the flat layout that is a
# gather, which XLA compiles to a scalar loop.)
PAIR_FACTOR = 4


def chroma_sharing(width: int, chroma_width: int) -> int:
    """How many horizontally neighbouring pixels share one upsampled chroma value: 2 or 1."""
    return 2 if width >= PAIR_FACTOR * chroma_width else 1


def _rows(
    plane: np.ndarray, row: int, bucket: int, dtype: type, table: np.ndarray | None = None
) -> np.ndarray:
    """(bucket,) or (bucket, C) aligned flat copy of ``plane`` (H, W) or (H, W, C) with rows
    ``row`` >= W long (the last pixel of a row repeated) and zeros after the last row. With a
    256-entry ``table``, uint8 ``plane``'s values looked up in it (OpenCV's LUT, written straight
    into the buffer: a gray photograph's L at 2 MP in 0.7 ms, where numpy's take costs 1.9)."""
    height, width = plane.shape[:2]
    channels = plane.shape[2:]
    flat = aligned_empty(bucket, dtype, *channels)
    grid = flat[: height * row].reshape(height, row, *channels)
    if table is None:
        grid[:, :width] = plane
    else:
        cv2.LUT(np.asarray(plane, np.uint8), table, dst=grid[:, :width])
    grid[:, width:] = grid[:, width - 1 : width]
    flat[height * row :] = 0
    return flat


def join_chroma(chroma: np.ndarray | tf.Tensor, light: np.ndarray) -> np.ndarray:
    """sRGB uint8 (H, W, 3) from chroma ab at any size and the photograph's lightness: L float32
    (H, W, 1), or the gray uint8 photograph (H, W) itself (its L looked up into the loop's buffer
    by ``_rows``).
    The result is a view of 4-byte RGBX pixels (strides (4 * row, 4, 1)), not a copy: read-only
    where the loop ran on the CPU (``host_array``).

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
    plane, table = (light, _GRAY_LIGHTNESS) if gray else (light.reshape(height, width), None)
    parts = [
        partial(_upsample, chroma, height, row // share, bucket // share),
        partial(_rows, plane, row, bucket, np.float32, table),
    ]
    ab, flat = run_parts(parts) if _split(count) else [part() for part in parts]
    pixels = flat if share == 1 else flat.reshape(bucket // 2, 2)
    words = host_array(_pixels_rgb(shared_tensor(pixels), shared_tensor(ab))).reshape(-1)
    return words.view(np.uint8)[: 4 * count].reshape(height, row, 4)[:, :width, :3]  # a view: no copy


# Rows of a photograph compared at a time by ``neutral_levels``: about 64K pixels, whose green and
# blue planes stay in the cache between OpenCV's split and its comparisons.
_NEUTRAL_BAND_PIXELS = 1 << 16


def neutral_levels(rgb: np.ndarray) -> np.ndarray | None:
    """The gray levels (H, W) of an RGB uint8 image whose every pixel has R = G = B (a black-and-white
    scan saved as RGB: JPEG decodes one exactly so), else None; a colour photograph is told from its
    first rows. Band by band, OpenCV splits the channels (red into the result, green and blue into
    two small planes reused) and compares the planes in one pass each: 0.5 ms at 2 MP and 3.7 at
    12 MP, where numpy's comparisons of the interleaved channels took 2.6 and 16, and splitting
    whole planes 0.6 and 26 (10,000 page faults at 12 MP)."""
    rgb = np.asarray(rgb, np.uint8)
    height, width = rgb.shape[:2]
    rows = max(1, _NEUTRAL_BAND_PIXELS // max(1, width))
    levels = np.empty((height, width), np.uint8)
    green, blue = np.empty((rows, width), np.uint8), np.empty((rows, width), np.uint8)
    start, band = 0, min(8, rows)
    while start < height:
        stop = min(height, start + band)
        red, count = levels[start:stop], stop - start
        cv2.split(np.ascontiguousarray(rgb[start:stop]), [red, green[:count], blue[:count]])
        if cv2.norm(red, green[:count], cv2.NORM_INF) or cv2.norm(red, blue[:count], cv2.NORM_INF):
            return None
        start, band = stop, rows
    return levels


def shrink_gray(gray: np.ndarray, size: int) -> np.ndarray:
    """A gray uint8 photograph (H, W) shrunk to (size, size) by Pillow's box filter: the mean level
    of each area, rounded as a gray image of that size stores it (2 MP: 1.1 ms in two halves, 1.5 in
    one piece; the L of every pixel first, then their means, took 4 ms)."""
    return _box_shrink(Image.fromarray(np.ascontiguousarray(gray, np.uint8)), size)


# The rgb preset converts the small image between RGB and Lab on every request, by a few
# whole-array passes of OpenCV and numpy, each vectorised, with no TensorFlow call: right after a
# model call, one compiled call (one loop on two threads) took 1.15 ms for the output chroma at
# 256x256 on Zen 5, these passes 0.54 on one thread (the call alone cost 0.5 back to back: a
# TensorFlow call right after a model call is slow; docs/performance.md). OpenCV's pow is 10x
# slower than its exp and log (0.19 against 0.02 ms at 256x256): powers are exp(p * log(x)).


def _power(x: np.ndarray, p: float) -> np.ndarray:
    """x**p of positive float32 ``x`` (OpenCV's exp and log: within 1e-6 relative)."""
    return cv2.exp(cv2.log(x) * np.float32(p))


def _affine(x: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """scale * x + offset of float32 ``x`` in one OpenCV pass (``addWeighted``, x again at weight 0),
    where numpy's two arithmetic operations make two passes and an array between them."""
    return cv2.addWeighted(x, scale, x, 0.0, offset)


def gray_rgb_input(lum_small: np.ndarray | tf.Tensor) -> np.ndarray:
    """The report's [-1, 1] RGB input (..., 3) float32, gray in all three channels, of L (..., 1):
    a neutral colour's linear R, G and B all equal its Y, so one channel is computed and repeated."""
    light = np.asarray(lum_small, np.float32)
    flat = np.ascontiguousarray(light).reshape(1, -1)  # one channel: OpenCV's scalars reach only the first
    # Y of f = (L + 16) / 116: the cube of f held at _FY_EPS from below, plus the line
    # L / (116 * 7.787) less its value there, below it (the two pieces meet there, within 5e-7)
    fy = cv2.max(_affine(flat, 1.0 / 116.0, 16.0 / 116.0), _FY_EPS)
    toe = cv2.min(_affine(flat, 1.0 / (116.0 * 7.787), -_F_EPS), 0.0)
    y = cv2.add(fy * fy * fy, toe)
    # sRGB's encoding: the lesser of the line 12.92 Y and the power of Y held at the knee from below
    # (the line below the knee; above it the concave power, which is under the line there)
    power = _power(cv2.max(y, _GAMMA_KNEE), 1.0 / 2.4)
    gamma = cv2.min(_affine(power, 1.055, -0.055), cv2.multiply(y, 12.92))
    gray = _affine(gamma, 2.0, -1.0)
    return np.repeat(cv2.min(gray, 1.0).reshape(light.shape), 3, axis=-1)


_XYZ_OF_LINEAR = (color._RGB_TO_XYZ.numpy() / color._WHITE.numpy()[:, None]).astype(np.float32)
_AB_OF_F = np.array([[500.0, -500.0, 0.0], [0.0, 200.0, -200.0], [0.0, 0.0, 0.0]], np.float32)


def rgb_output_chroma(prediction: np.ndarray | tf.Tensor) -> np.ndarray:
    """ab (..., 2) float32 of RGB (..., 3) in [-1, 1]: color.rgb_to_lab's formulas (within 2e-4)."""
    rgb = np.asarray(prediction, np.float32)  # a GPU's tensor is copied to the host here
    # every channel in one row: OpenCV takes any count, and applies a scalar to the first channel only
    flat = np.ascontiguousarray(rgb).reshape(1, -1)
    # sRGB's decoding of v = (x + 1) / 2: the power ((v + 0.055) / 1.055) ** 2.4 of v held at the
    # knee from below, plus the line v / 12.92 less its value at the knee, below the knee (where the
    # two pieces meet)
    base = cv2.max(_affine(flat, 0.5 / 1.055, 0.555 / 1.055), _LINEAR_LOW)
    toe = cv2.min(_affine(flat, 0.5 / 12.92, (0.5 - _SRGB_KNEE) / 12.92), 0.0)
    linear = cv2.add(_power(base, 2.4), toe).reshape(1, -1, 3)
    f = _lab_f(cv2.transform(linear, _XYZ_OF_LINEAR))  # of X / Xn, Y, Z / Zn
    # a 3x3 transform, then the first two channels: OpenCV's 2x3 one is 10x slower
    return cv2.transform(f, _AB_OF_F)[..., :2].reshape(*rgb.shape[:-1], 2)
