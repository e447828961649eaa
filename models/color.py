"""sRGB <-> CIE Lab (D65) in TensorFlow, and the normalisation shared by training and serving.

Formulas follow skimage.color.rgb2lab / lab2rgb (tests compare against it).
"""

from __future__ import annotations

import tensorflow as tf

# Normalisation constants, defined once: L in [0, 100] -> [-1, 1]; ab in about [-110, 110] -> [-1, 1].
L_SCALE = 50.0
AB_SCALE = 110.0

_RGB_TO_XYZ = tf.constant(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ],
    dtype=tf.float32,
)
_XYZ_TO_RGB = tf.linalg.inv(_RGB_TO_XYZ)
_WHITE = tf.constant([0.95047, 1.0, 1.08883], dtype=tf.float32)  # D65, 2 degree observer


def rgb_to_lab(rgb: tf.Tensor) -> tf.Tensor:
    """sRGB in [0, 1], shape (..., 3) -> Lab with L in [0, 100]."""
    rgb = tf.convert_to_tensor(rgb, tf.float32)
    linear = tf.where(rgb > 0.04045, tf.pow((rgb + 0.055) / 1.055, 2.4), rgb / 12.92)
    xyz = tf.linalg.matvec(_RGB_TO_XYZ, linear) / _WHITE
    eps = 0.008856
    f = tf.where(xyz > eps, tf.pow(tf.maximum(xyz, eps), 1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = tf.unstack(f, axis=-1)
    lum = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return tf.stack([lum, a, b], axis=-1)


def lab_to_rgb(lab: tf.Tensor) -> tf.Tensor:
    """Lab (L in [0, 100]) -> sRGB in [0, 1], clipped to the gamut."""
    lab = tf.convert_to_tensor(lab, tf.float32)
    lum, a, b = tf.unstack(lab, axis=-1)
    fy = (lum + 16.0) / 116.0
    fx = fy + a / 500.0
    fz = fy - b / 200.0
    f = tf.stack([fx, fy, tf.maximum(fz, 0.0)], axis=-1)
    xyz = tf.where(f > 0.2068966, tf.pow(f, 3.0), (f - 16.0 / 116.0) / 7.787) * _WHITE
    linear = tf.linalg.matvec(_XYZ_TO_RGB, xyz)
    linear = tf.maximum(linear, 0.0)
    rgb = tf.where(linear > 0.0031308, 1.055 * tf.pow(linear, 1.0 / 2.4) - 0.055, 12.92 * linear)
    return tf.clip_by_value(rgb, 0.0, 1.0)


def rgb_to_gray(rgb: tf.Tensor) -> tf.Tensor:
    """sRGB in [0, 1] (..., 3) -> (..., 1) luminance-matched gray: the L of Lab mapped back to sRGB.

    Using Lab's L (rather than a luma formula) means the grayscale input a model trains on is the
    same signal that serving keeps from the user's photograph.
    """
    lum = rgb_to_lab(rgb)[..., :1]
    zeros = tf.zeros_like(lum)
    return lab_to_rgb(tf.concat([lum, zeros, zeros], axis=-1))[..., :1]


def normalize_l(lum: tf.Tensor) -> tf.Tensor:
    return lum / L_SCALE - 1.0


def denormalize_l(x: tf.Tensor) -> tf.Tensor:
    return (x + 1.0) * L_SCALE


def normalize_ab(ab: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(ab / AB_SCALE, -1.0, 1.0)


def denormalize_ab(x: tf.Tensor) -> tf.Tensor:
    return x * AB_SCALE
