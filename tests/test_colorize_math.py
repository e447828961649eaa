"""The fast full-resolution colour maths of models.colorize against a straightforward reference.

The reference is models.color (TensorFlow's pow, the textbook formulas, shared with training):
``rgb_to_lab`` for the lightness ``prepare`` keeps, and bilinear resize + ``lab_to_rgb`` for what
``finish`` writes. The fast path (table lookups, root-and-polynomial powers, bucketed XLA loops)
must agree to well under one uint8 level on average, and never by more than one.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models import color
from models.colorize import gray_luminance, join_chroma, luminance, pixel_bucket
from tests.conftest import make_photo


def reference_lightness(rgb: np.ndarray) -> np.ndarray:
    return color.rgb_to_lab(tf.constant(rgb, tf.float32) / 255.0)[..., :1].numpy()


def reference_join(chroma: np.ndarray, lum: np.ndarray) -> np.ndarray:
    ab = tf.image.resize(tf.constant(chroma, tf.float32), lum.shape[:2], method="bilinear")
    rgb = color.lab_to_rgb(tf.concat([tf.constant(lum, tf.float32), ab], axis=-1)).numpy()
    return np.round(rgb * 255.0).astype(np.uint8)


def random_images() -> list[np.ndarray]:
    """Noise (every level, every channel mix), a smooth photograph, black and white extremes."""
    rng = np.random.default_rng(0)
    extremes = np.zeros((16, 16, 3), np.uint8)
    extremes[8:] = 255
    extremes[:, 8:, 1] = 255 - extremes[:, 8:, 1]
    return [
        rng.integers(0, 256, (97, 131, 3), dtype=np.uint8),
        rng.integers(0, 256, (300, 200, 3), dtype=np.uint8),
        make_photo(257, 190, seed=3),
        extremes,
    ]


@pytest.mark.parametrize("index", range(4))
def test_luminance_matches_the_reference_lab_lightness(index):
    rgb = random_images()[index]
    lum = luminance(rgb)
    assert lum.shape == (*rgb.shape[:2], 1) and lum.dtype == np.float32
    assert np.abs(lum - reference_lightness(rgb)).max() < 2e-3  # L is on a 0..100 scale


def test_every_gray_level_has_the_reference_lightness_by_either_path():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = reference_lightness(np.repeat(levels[..., None], 3, axis=-1))
    assert np.abs(gray_luminance(levels) - expected).max() < 2e-3
    assert np.abs(luminance(np.repeat(levels[..., None], 3, axis=-1)) - expected).max() < 2e-3


@pytest.mark.parametrize("index", range(4))
def test_join_chroma_matches_resize_and_lab_to_rgb(index):
    rgb = random_images()[index]
    lum = reference_lightness(rgb)
    rng = np.random.default_rng(index)
    # ab well beyond the sRGB gamut too: the clipping must agree as well
    chroma = rng.uniform(-120.0, 120.0, (32, 32, 2)).astype(np.float32)
    out = join_chroma(chroma, lum)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    difference = np.abs(out.astype(int) - reference_join(chroma, lum).astype(int))
    assert difference.max() <= 1
    assert difference.mean() < 0.01  # in uint8 levels: the target is under 1


def test_join_chroma_is_exact_for_gray_and_the_ends_of_the_scale():
    lum = np.array([[0.0, 100.0], [50.0, 0.0]], np.float32)[..., None]
    out = join_chroma(np.zeros((4, 4, 2), np.float32), lum)
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [255, 255, 255]
    assert len(set(out[1, 0].tolist())) == 1  # L 50 without chroma is a neutral gray
    np.testing.assert_array_equal(out, reference_join(np.zeros((4, 4, 2), np.float32), lum))


def test_a_photograph_and_its_padding_bucket_neighbour_give_the_same_pixels():
    # the padded tail of a bucket must not leak into the pixels kept
    rgb = make_photo(70, 60, seed=5)
    assert pixel_bucket(70 * 60) > 70 * 60
    lum = luminance(rgb)
    chroma = np.random.default_rng(5).uniform(-40.0, 40.0, (16, 16, 2)).astype(np.float32)
    np.testing.assert_array_equal(luminance(rgb[:, :69])[..., 0], lum[:, :69, 0])
    whole = join_chroma(chroma, lum)
    assert whole.shape == (60, 70, 3)
    np.testing.assert_array_equal(join_chroma(chroma, lum), whole)
