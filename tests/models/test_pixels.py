"""The fast full-resolution colour maths of models.pixels against a straightforward reference.

The reference is models.color (TensorFlow's pow, the textbook formulas, shared with training):
``rgb_to_lab`` for the lightness ``prepare`` keeps, and bilinear resize + ``lab_to_rgb`` for what
``finish`` writes (in a wide photograph, horizontal pixel pairs share one chroma value). The fast
path (fitted polynomials, bucketed XLA loops) must agree to well under one uint8
level on average, and never by more than one.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from inference.images import rgbx_in_place
from models import color, pixels
from models.buffers import aligned_empty, host_array, shared_tensor
from models.colorize import gray_model_input, model_input, prepare
from models.pixels import (
    PAIR_FACTOR,
    _upsample,
    chroma_sharing,
    gray_luminance,
    gray_rgb_input,
    join_chroma,
    luminance,
    neutral_levels,
    pixel_bucket,
    rgb_output_chroma,
    shrink,
    shrink_gray,
)
from tests.photos import make_photo


def reference_lightness(rgb: np.ndarray) -> np.ndarray:
    return color.rgb_to_lab(tf.constant(rgb, tf.float32) / 255.0)[..., :1].numpy()


def reference_join(chroma: np.ndarray, lum: np.ndarray, shared: bool = True) -> np.ndarray:
    """Bilinear chroma joined with ``lum`` by the textbook formulas; ``shared``: at half the width
    where the fast path shares it between pixel pairs (``chroma_sharing``), each value repeated."""
    height, width = lum.shape[:2]
    share = chroma_sharing(width, chroma.shape[1]) if shared else 1
    size = (height, -(-width // share))  # an odd width: the chroma over one more pixel
    ab = tf.image.resize(tf.constant(chroma, tf.float32), size, method="bilinear").numpy()
    ab = np.repeat(ab, share, axis=1)[:, :width]
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


@pytest.fixture(params=["compiled", "passes"])
def lightness_path(request, monkeypatch):
    """Each of ``luminance``'s two ways: the compiled loop (large photographs) or OpenCV's passes."""
    monkeypatch.setattr(pixels, "_COMPILED_LIGHTNESS_PIXELS", 0 if request.param == "compiled" else 1 << 40)
    return request.param


@pytest.mark.parametrize("index", range(4))
def test_luminance_matches_the_reference_lab_lightness(index, lightness_path):
    rgb = random_images()[index]
    lum = luminance(rgb)
    assert lum.shape == (*rgb.shape[:2], 1) and lum.dtype == np.float32
    assert np.abs(lum - reference_lightness(rgb)).max() < 2e-3  # L is on a 0..100 scale


def test_every_gray_level_has_the_reference_lightness_by_either_path():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = reference_lightness(np.repeat(levels[..., None], 3, axis=-1))
    assert np.abs(gray_luminance(levels) - expected).max() < 2e-3
    assert np.abs(luminance(np.repeat(levels[..., None], 3, axis=-1)) - expected).max() < 2e-3
    # a gray photograph's model input, by either path
    for preset in ("seed", "lab"):
        direct = gray_model_input(levels, preset)
        np.testing.assert_allclose(direct, np.asarray(model_input(gray_luminance(levels), preset)), atol=1e-4)


def test_opencv_runs_in_its_callers_thread():
    import cv2

    assert cv2.getNumThreads() == 1  # set at import of models.pixels


def test_the_report_presets_gray_input_of_any_lightness_is_the_reference_neutral_colour():
    lum = np.linspace(0.0, 100.0, 2001, dtype=np.float32).reshape(1, -1, 1)
    lab = np.concatenate([lum, np.zeros_like(lum), np.zeros_like(lum)], axis=-1)
    expected = color.lab_to_rgb(tf.constant(lab)).numpy() * 2.0 - 1.0
    given = np.asarray(model_input(lum, "seed"))
    assert given.shape == expected.shape
    assert np.abs(given - expected).max() < 1e-4  # [-1, 1] scale: 0.013 of a uint8 level
    np.testing.assert_array_equal(given[..., 0], given[..., 2])  # neutral: one channel, repeated
    batch = tf.constant(np.stack([lum, lum[:, ::-1]]))  # a batch, as a tensor: each photograph alone
    np.testing.assert_array_equal(gray_rgb_input(batch), np.stack([given, given[:, ::-1]]))


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


def test_a_photograph_and_its_padding_bucket_neighbour_give_the_same_pixels(lightness_path):
    # the padded tail of a bucket must not leak into the pixels kept
    rgb = make_photo(70, 60, seed=5)
    assert pixel_bucket(70 * 60) > 70 * 60
    lum = luminance(rgb)
    chroma = np.random.default_rng(5).uniform(-40.0, 40.0, (16, 16, 2)).astype(np.float32)
    np.testing.assert_array_equal(luminance(rgb[:, :69])[..., 0], lum[:, :69, 0])
    whole = join_chroma(chroma, lum)
    assert whole.shape == (60, 70, 3)
    np.testing.assert_array_equal(join_chroma(chroma, lum), whole)


def test_pixel_pairs_share_chroma_only_in_photographs_much_wider_than_the_model_output():
    assert chroma_sharing(1632, 256) == 2  # a 2 MP photograph, the report's model
    assert chroma_sharing(1633, 256) == 2  # an odd width: rows are extended by a pixel
    assert chroma_sharing(PAIR_FACTOR * 256, 256) == 2
    assert chroma_sharing(PAIR_FACTOR * 256 - 2, 256) == 1  # chroma would vary too much across a pair
    # the shared value is the bilinear chroma at the pair's centre: the pixels of a pair move by
    # half a pixel's chroma step. Here a steep chroma field (ab +-60, from 6x6 to 32x32, 8x up):
    rng = np.random.default_rng(7)
    coarse = rng.uniform(-60.0, 60.0, (6, 6, 2)).astype(np.float32)
    chroma = tf.image.resize(coarse, (32, 32), method="bilinear").numpy()
    width = PAIR_FACTOR * 32 * 2
    lum = reference_lightness(make_photo(width, 90, seed=7))
    out = join_chroma(chroma, lum)
    assert np.abs(out.astype(int) - reference_join(chroma, lum)).max() <= 1
    assert not np.array_equal(out[:, 0::2], out[:, 1::2])  # each pixel keeps its own lightness

    def lab(rgb: np.ndarray) -> np.ndarray:
        return color.rgb_to_lab(tf.constant(rgb, tf.float32) / 255.0).numpy()

    # against every pixel's own bilinear chroma: below 1 (not perceptible) on average, and the
    # worst are out-of-gamut colours whose clipped channel moves (seen: mean 0.49, max 2.0)
    shift = np.linalg.norm(lab(out) - lab(reference_join(chroma, lum, shared=False)), axis=-1)
    assert shift.mean() < 0.6 and shift.max() < 2.5
    assert np.abs(lab(out)[..., 0] - lum[..., 0]).mean() < 0.5  # the lightness is the photograph's
    # an odd width: the same, the last pixel of each row alone in its pair
    odd = join_chroma(chroma, lum[:, :-1])
    assert odd.shape == (90, width - 1, 3)
    assert np.abs(odd.astype(int) - reference_join(chroma, lum[:, :-1])).max() <= 1


@pytest.mark.parametrize("width", [63, PAIR_FACTOR * 16 * 2 + 1])  # 63: no sharing
def test_a_gray_photograph_joins_by_its_own_levels_like_by_its_lightness(width):
    # the gray path looks each level's L up straight into the loop's buffer (OpenCV): the same
    # pixels as joining with the lightness table's L, for all 256 levels, with and without chroma
    # sharing, and for an odd width (rows one pixel longer when pairs share chroma)
    levels = np.tile(np.arange(256, dtype=np.uint8), 64 * width // 256 + 1)[: 64 * width].reshape(64, width)
    chroma = np.random.default_rng(width).uniform(-80.0, 80.0, (16, 16, 2)).astype(np.float32)
    by_levels = join_chroma(chroma, levels)
    assert by_levels.shape == (64, width, 3)
    np.testing.assert_array_equal(by_levels, join_chroma(chroma, gray_luminance(levels)))
    reference = reference_join(chroma, reference_lightness(np.repeat(levels[..., None], 3, axis=-1)))
    assert np.abs(by_levels.astype(int) - reference.astype(int)).max() <= 1
    neutral = join_chroma(np.zeros((4, 4, 2), np.float32), levels)  # no chroma: the levels back
    assert np.abs(neutral.astype(int) - levels[..., None].astype(int)).max() <= 1


def test_shrink_averages_areas_like_tensorflow():
    lum = reference_lightness(make_photo(512, 384, seed=2))
    small = shrink(lum, 64)
    assert small.shape == (64, 64, 1) and small.dtype == np.float32
    # whole-number ratios: the same means as TensorFlow's area resize
    exact = tf.image.resize(lum[:, 64:448], (64, 64), method="area").numpy()
    assert np.abs(shrink(lum[:, 64:448], 64) - exact).max() < 1e-3
    # other ratios: border pixels counted whole or not at all, not by their overlap
    near = tf.image.resize(lum, (64, 64), method="area").numpy()
    assert np.abs(small - near).mean() < 0.3 and np.abs(small - near).max() < 5


@pytest.mark.parametrize("size", [(1024, 600), (731, 1001)])  # even and odd sides, past the split
def test_a_large_photographs_shrink_in_two_halves_is_the_one_piece_shrink(size, monkeypatch):
    width, height = size
    assert width * height >= pixels._SPLIT_PIXELS
    gray = np.random.default_rng(5).integers(0, 256, (height, width), dtype=np.uint8)
    lum = gray_luminance(gray)
    threads = []
    run_parts = pixels.run_parts
    monkeypatch.setattr(pixels, "run_parts", lambda parts: threads.append(len(parts)) or run_parts(parts))
    monkeypatch.setattr(pixels, "cores", lambda: 2)
    for side in (256, 255):
        whole = Image.fromarray(gray).resize((side, side), Image.Resampling.BOX)
        np.testing.assert_array_equal(shrink_gray(gray, side), np.asarray(whole))
        plane = Image.frombuffer("F", (width, height), np.ascontiguousarray(lum[..., 0]), "raw", "F", 0, 1)
        np.testing.assert_array_equal(
            shrink(lum, side)[..., 0], np.asarray(plane.resize((side, side), Image.Resampling.BOX))
        )
    assert threads == [2, 2, 2, 2]  # every shrink was split
    monkeypatch.setattr(pixels, "cores", lambda: 1)  # one core: in one piece
    shrink_gray(gray, 256)
    assert threads == [2, 2, 2, 2]


def test_a_shrink_is_split_only_where_its_halves_give_the_same_rows(monkeypatch):
    # every height from 150 to 700 rows (narrow images: any size is "large" here) to the default
    # model's 192, the report's 256, 224 and an odd side
    monkeypatch.setattr(pixels, "_SPLIT_PIXELS", 0)
    monkeypatch.setattr(pixels, "cores", lambda: 2)
    rng = np.random.default_rng(12)
    split = {}
    for size in (192, 224, 255, 256):
        for height in range(150, 701):
            gray = rng.integers(0, 256, (height, 6), dtype=np.uint8)
            whole = np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BOX))
            np.testing.assert_array_equal(
                pixels._box_shrink(Image.fromarray(gray), size), whole, f"{height} -> {size}"
            )
            split[size, height] = pixels._exact_halves(height, size)
    assert not pixels._exact_halves(1120, 192)  # a 1680x1120 photograph to 192: ties, one piece
    assert pixels._exact_halves(1225, 256) and pixels._exact_halves(1024, 192)  # 2 MP, and q = 3
    assert not pixels._exact_halves(200, 255)  # fewer rows than the side: Pillow enlarges, one piece
    assert sum(split.values()) > len(split) // 2  # most shrinks are still split


def test_a_large_photographs_join_is_the_reference_join(monkeypatch):
    # past the split (its buffers filled on two threads, even on a one-core machine) and wide
    # enough for pixel pairs
    monkeypatch.setattr(pixels, "cores", lambda: 2)
    calls = []
    run_parts = pixels.run_parts
    monkeypatch.setattr(pixels, "run_parts", lambda parts: calls.append(len(parts)) or run_parts(parts))
    chroma = np.random.default_rng(9).uniform(-50.0, 50.0, (16, 16, 2)).astype(np.float32)
    lum = reference_lightness(make_photo(1201, 450, seed=9))
    assert lum.shape[0] * lum.shape[1] >= pixels._SPLIT_PIXELS and chroma_sharing(1201, 16) == 2
    assert np.abs(join_chroma(chroma, lum).astype(int) - reference_join(chroma, lum)).max() <= 1
    levels = make_photo(1201, 450, seed=10)[..., 0]
    by_levels = join_chroma(chroma, levels)
    np.testing.assert_array_equal(by_levels, join_chroma(chroma, gray_luminance(levels)))
    assert np.abs(by_levels.astype(int) - reference_join(chroma, gray_luminance(levels))).max() <= 1
    assert calls == [2, 2, 2]


def test_the_rgb_presets_output_chroma_is_the_reference_lab_chroma():
    rng = np.random.default_rng(11)
    prediction = rng.uniform(-1.0, 1.0, (2, 40, 24, 3)).astype(np.float32)  # a batch, any sides
    prediction[0, 0, :8] = [
        [-1, -1, -1],
        [1, 1, 1],
        [1, -1, -1],
        [-1, 1, -1],
        [-1, -1, 1],
        [0, 0, 0],
        [1, 1, -1],
        [-1, 0.5, 1],
    ]
    chroma = rgb_output_chroma(prediction)
    assert chroma.shape == (2, 40, 24, 2) and chroma.dtype == np.float32
    reference = color.rgb_to_lab(tf.constant((prediction + 1.0) / 2.0))[..., 1:].numpy()
    assert np.abs(chroma - reference).max() < 2e-3
    np.testing.assert_array_equal(rgb_output_chroma(prediction[1]), chroma[1])  # one photograph alone
    np.testing.assert_array_equal(rgb_output_chroma(tf.constant(prediction)), chroma)  # a tensor


@pytest.mark.parametrize("band_pixels", [1 << 16, 500, 100])  # 8 rows, then the rest; 4 rows; 1 row
def test_a_gray_photograph_saved_as_rgb_is_told_by_its_levels(band_pixels, monkeypatch):
    monkeypatch.setattr(pixels, "_NEUTRAL_BAND_PIXELS", band_pixels)
    gray = make_photo(120, 90, seed=4)[..., 1]
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_array_equal(neutral_levels(rgb), gray)
    for row, column, channel in [(-1, -1, 2), (45, 7, 1), (10, 0, 2), (0, 60, 1), (89, 119, 0)]:
        colour = rgb.copy()  # one pixel off neutral, anywhere: every band is checked to the end
        colour[row, column, channel] ^= 1
        assert neutral_levels(colour) is None
    np.testing.assert_array_equal(neutral_levels(rgb[::-1, ::2]), gray[::-1, ::2])  # any strides
    np.testing.assert_array_equal(neutral_levels(rgb[:3]), gray[:3])  # fewer rows than a band
    assert neutral_levels(make_photo(120, 90, seed=4)) is None


def test_a_gray_photograph_saved_as_rgb_takes_the_gray_path():
    gray = make_photo(120, 90, seed=4)[..., 1]
    rgb = np.repeat(gray[..., None], 3, axis=-1)

    class Model:  # what prepare reads of a loaded model
        image_size, render_size, size_step, preset, hints = 32, 32, 32, "lab", False

    inputs, light, size = prepare(Model, rgb)
    gray_inputs, gray_light, _ = prepare(Model, gray)
    assert light.dtype == np.uint8 and light.shape == (90, 120)
    np.testing.assert_array_equal(light, gray_light)
    np.testing.assert_array_equal(inputs, gray_inputs)
    # and the lightness of the RGB path is the same as the gray one's
    np.testing.assert_allclose(luminance(rgb), gray_luminance(gray), atol=2e-3)


def test_chroma_upsampling_is_tensorflows_bilinear_resize_written_into_the_padded_buffer():
    chroma = np.random.default_rng(6).uniform(-80.0, 80.0, (16, 12, 2)).astype(np.float32)
    for height, width in [(77, 50), (16, 12), (5, 7), (1, 1), (40, 3)]:  # up, same, down, odd
        rows = pixel_bucket(height * width)
        ab = _upsample(chroma, height, width, rows)
        assert ab.shape == (rows, 2) and ab.ctypes.data % 64 == 0
        expected = tf.image.resize(chroma, (height, width), method="bilinear").numpy().reshape(-1, 2)
        assert np.abs(ab[: height * width] - expected).max() < 2e-3  # OpenCV's weights: float32
        assert not ab[height * width :].any()  # the padding is zeros


def test_buffers_handed_to_the_compiled_loops_are_aligned_and_shared_not_copied():
    for rows, channels in [(1, 1), (4097, 1), (100, 2), (33, 3)]:
        array = aligned_empty(rows, np.float32, channels)
        assert array.ctypes.data % 64 == 0 and array.flags.c_contiguous
        assert array.shape == ((rows,) if channels == 1 else (rows, channels))
    array = aligned_empty(4096, np.uint8)
    array[:] = 7
    tensor = shared_tensor(array)
    array[0] = 9  # the tensor sees the change: it is the same memory
    assert int(tensor[0]) == 9 and int(tensor[1]) == 7
    # a misaligned buffer would crash XLA's loop: refused with an error instead
    with pytest.raises(ValueError, match="aligned"):
        shared_tensor(aligned_empty(4097, np.uint8)[1:])
    with pytest.raises(ValueError, match="aligned"):
        shared_tensor(aligned_empty(64, np.float32, 2)[:, 0])  # not contiguous


def test_the_compiled_pixel_loops_hold_no_value_wider_than_32_bits():
    # LLVM sizes a loop's vectors by its widest type: pixel pairs once packed into one uint64 held
    # the join's float maths to 4 lanes where AVX2 has 8, at 1.3x the time (Zen 3, 2 MP)
    pairs, one_each, ab = tf.zeros((4096, 2)), tf.zeros((4096,)), tf.zeros((4096, 2))
    loops = [
        (pixels._pixels_rgb, (pairs, ab)),
        (pixels._pixels_rgb, (one_each, ab)),
        (pixels._pixels_lightness, (tf.zeros((4096, 3), tf.uint8),)),
    ]
    for loop, args in loops:
        hlo = loop.experimental_get_compiler_ir(*args)(stage="optimized_hlo")
        types = set(re.findall(r"\b([a-z]+)(\d+)\[", hlo))
        assert types and max(int(bits) for _, bits in types) <= 32, sorted(types)
    # the pairs' words: the first pixel of each at the lower address, as one flat RGBX row
    words = host_array(pixels._pixels_rgb(tf.constant([[0.0, 100.0]]), tf.zeros((1, 2))))
    assert words.dtype == np.uint32 and words.shape == (1, 2)
    assert words.reshape(-1).view(np.uint8).tolist() == [0, 0, 0, 255, 255, 255, 255, 255]


def test_the_joined_photograph_is_a_read_only_view_of_rgbx_pixels():
    chroma = np.random.default_rng(8).uniform(-40.0, 40.0, (16, 16, 2)).astype(np.float32)
    for width in (63, 70, 71):  # one chroma a pixel (63), or pairs sharing it (71: rows one pixel longer)
        lum = reference_lightness(make_photo(width, 60, seed=8))
        out = join_chroma(chroma, lum)
        row = width + width % chroma_sharing(width, 16)
        assert out.shape == (60, width, 3) and out.strides == (4 * row, 4, 1)
        assert not out.flags.writeable
        rgbx = np.asarray(out.base).view(np.uint8).reshape(-1, 4)  # the kernel's words, as bytes
        assert (rgbx[: 60 * row, 3] == 255).all()  # the fourth byte: an opaque X
        np.testing.assert_array_equal(np.array(out), out)  # np.array gives a writable copy
        in_place = rgbx_in_place(out)  # what JPEG encoding takes without repacking
        assert in_place is not None and in_place.shape == (60, width, 4)
        np.testing.assert_array_equal(in_place[..., :3], out)


def test_a_loops_result_is_shared_from_host_memory_and_copied_from_a_gpu():
    on_cpu = tf.constant(np.arange(8, dtype=np.uint32))
    shared = host_array(on_cpu)
    np.testing.assert_array_equal(shared, np.arange(8))
    assert not shared.flags.writeable  # the tensor's own memory

    class OnGpu:  # what host_array reads of a tensor in GPU memory (numpy cannot map that)
        def __dlpack_device__(self):
            return (2, 0)  # kDLCUDA, device 0

        def numpy(self):
            return np.arange(3, dtype=np.uint32)

        def __dlpack__(self, **_):
            raise AssertionError("a GPU tensor must be copied, not mapped")

    np.testing.assert_array_equal(host_array(OnGpu()), np.arange(3))
