"""JPEG encoding in bands on every core (inference/jpeg.py): the joined file is exactly a one-piece
encode with restart markers, and decodes to the pixels Pillow's encode gives. And plain JPEG
uploads decoded by OpenCV: the pixels Pillow decodes, and Pillow's path for everything else."""

from __future__ import annotations

import io
import threading

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from inference import images, jpeg
from inference.errors import DamagedImage
from models import parallel
from models.parallel import run_parts
from tests.photos import adobe_rgb_like_profile, srgb_like_profile


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields with noise: blocks that are neither flat nor random."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    fields = [np.sin(x / 17.0 + k) * np.cos(y / 11.0 - k) for k in range(3)]
    rgb = np.stack(fields, axis=-1) * 90 + 128 + rng.normal(0, 8, (height, width, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _rgbx(rgb: np.ndarray, spare: int = 1) -> np.ndarray:
    """(H, W, 4) view of 4-byte pixels in rows ``spare`` pixels longer, as the colorizer's join lays
    them out."""
    height, width = rgb.shape[:2]
    words = np.full((height, width + spare, 4), 255, np.uint8)
    words[:, :width, :3] = rgb
    return words[:, :width]


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize(
    ("height", "width", "rows"),
    [(203, 157, 48), (200, 64, 16), (96, 40, 32)],
    ids=["odd-sides-short-last-band", "thirteen-bands-RST-wraps", "whole-bands"],
)
def test_joined_bands_are_byte_for_byte_a_one_piece_encode_with_restart_markers(height, width, rows):
    rgb = _photo(height, width)
    for pixels in (rgb, _rgbx(rgb)):
        joined = jpeg.encode_jpeg(pixels, 90, rows=rows)
        one_piece = jpeg._encode(np.ascontiguousarray(rgb), 90, jpeg.restart_interval(rows, width))
        assert joined == one_piece
        assert Image.open(io.BytesIO(joined)).size == (width, height)


def test_bands_decode_to_the_pixels_of_pillows_one_piece_jpeg():
    rgb = _photo(173, 250, seed=1)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=90)  # Pillow's default subsampling: 4:2:0
    banded = jpeg.encode_jpeg(_rgbx(rgb), 90, rows=32)
    np.testing.assert_array_equal(_pixels(banded), _pixels(buffer.getvalue()))
    decoded = cv2.imdecode(np.frombuffer(banded, np.uint8), cv2.IMREAD_COLOR)  # a second decoder agrees
    np.testing.assert_array_equal(decoded[..., ::-1], _pixels(banded))


def test_the_second_band_is_encoded_on_the_pool_while_the_caller_encodes_the_first(monkeypatch):
    threads: list[str] = []
    pool_started = threading.Event()
    encode = jpeg._encode

    def recording(pixels, quality, restart_interval=0):
        threads.append(threading.current_thread().name)
        if threading.current_thread() is threading.main_thread():
            assert pool_started.wait(30), "the pool never took the second band"
        else:
            pool_started.set()
        return encode(pixels, quality, restart_interval)

    monkeypatch.setattr(jpeg, "_encode", recording)
    jpeg.encode_jpeg(_photo(32, 48), 90, rows=16)
    # one band each, at the same time (the caller waited for the pool inside its own band); which
    # of the two reached the recorder first is up to the scheduler
    assert len(threads) == 2 and threading.main_thread().name in threads
    assert [t for t in threads if t.startswith("spare-core")]


def test_bands_the_busy_pool_has_not_started_are_encoded_by_the_caller(monkeypatch):
    pool = parallel.spare_pool()
    release = threading.Event()
    blockers = [pool.submit(release.wait, 30) for _ in range(pool._max_workers)]  # every worker busy
    threads: list[str] = []
    encode = jpeg._encode

    def recording(pixels, quality, restart_interval=0):
        threads.append(threading.current_thread().name)
        return encode(pixels, quality, restart_interval)

    monkeypatch.setattr(jpeg, "_encode", recording)
    try:
        rgb = _photo(64, 48)
        joined = jpeg.encode_jpeg(rgb, 90, rows=16)  # would wait 30 s for the pool if it waited
        assert threads == [threading.main_thread().name] * 4
        assert joined == encode(rgb, 90, jpeg.restart_interval(16, 48))
    finally:
        release.set()
        for blocker in blockers:
            blocker.result()


def test_band_rows_split_large_images_over_the_workers_in_whole_mcu_rows():
    assert jpeg.band_rows(300, 400, workers=2) == 300  # 0.12 MP: one band
    assert jpeg.band_rows(1226, 1631, workers=1) == 1226
    rows = jpeg.band_rows(1226, 1631, workers=2)  # 2 MP: two bands, the last shorter
    assert rows % jpeg.MCU == 0 and rows < 1226 <= 2 * rows
    assert jpeg.band_rows(4000, 3000, workers=4) == 1008  # 63 MCU rows a band, 250 of them
    # a band is one restart interval, at most 65535 MCUs: 16 MCU rows of a 65000-pixel width, not 63
    wide = jpeg.band_rows(2000, 65000, workers=2)
    assert wide == 256 and jpeg.restart_interval(wide, 65000) == 16 * 4063


def test_encode_jpeg_rejects_what_it_cannot_encode():
    with pytest.raises(ValueError, match="65500"):
        jpeg.encode_jpeg(np.zeros((65501, 1, 3), np.uint8), 90)
    with pytest.raises(ValueError, match="RGB or RGBX"):
        jpeg.encode_jpeg(np.zeros((8, 8), np.uint8), 90)
    with pytest.raises(ValueError, match="whole MCU rows"):
        jpeg.encode_jpeg(_photo(40, 8), 90, rows=12)


def test_bands_whose_headers_differ_are_not_joined():
    rgb = _photo(32, 32)
    top, bottom = jpeg._encode(rgb[:16], 90), jpeg._encode(rgb[16:], 80)  # other quantisation tables
    with pytest.raises(ValueError, match="headers differ"):
        jpeg.join_bands([top, bottom], 32, jpeg.restart_interval(16, 32))
    with pytest.raises(ValueError, match="not a JPEG"):
        jpeg.join_bands([b"PNG", top], 32, 2)


def _saved(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.fixture
def opencv_decodes(monkeypatch) -> list[str]:
    """The modes of the uploads ``inference.images`` hands to OpenCV's decoder (and what it gave)."""
    calls: list[str] = []

    def recording(data, mode, size, orientation=1):
        pixels = jpeg.decode_jpeg(data, mode, size, orientation)
        calls.append(f"{mode}:{'decoded' if pixels is not None else 'refused'}")
        return pixels

    monkeypatch.setattr(images, "decode_jpeg", recording)
    return calls


@pytest.mark.parametrize(
    "options",
    [
        {"quality": 90},
        {"quality": 95, "subsampling": 0},
        {"quality": 85, "progressive": True},
        {"quality": 90, "restart_marker_rows": 2},
    ],
    ids=["baseline-420", "444", "progressive", "restart-markers"],
)
def test_plain_jpeg_uploads_are_decoded_by_opencv_to_pillows_pixels(options, opencv_decodes):
    rgb = _photo(173, 250, seed=2)
    for upload, mode in ((rgb, "RGB"), (rgb[..., 1].copy(), "L")):
        data = _saved(upload, **options)
        decoded = images.decode_image(data, 10**6).pixels
        with Image.open(io.BytesIO(data)) as reference:
            np.testing.assert_array_equal(decoded, np.asarray(reference))
            assert reference.mode == mode
    assert opencv_decodes == ["RGB:decoded", "L:decoded"]


@pytest.mark.parametrize("orientation", range(10))  # 0 and 9 are not orientations: left as stored
def test_a_jpeg_with_an_exif_orientation_is_decoded_by_opencv_and_turned_upright_as_pillow_does(
    orientation, opencv_decodes
):
    rgb = _photo(40, 64, seed=3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    for upload in (rgb, rgb[..., 0].copy()):
        data = _saved(upload, exif=exif)
        decoded = images.decode_image(data, 10**6).pixels
        with Image.open(io.BytesIO(data)) as reference:
            upright = ImageOps.exif_transpose(reference)
            np.testing.assert_array_equal(decoded, np.asarray(upright))
    assert opencv_decodes == ["RGB:decoded", "L:decoded"]


def test_a_jpeg_whose_profile_is_srgb_in_effect_is_decoded_by_opencv_and_another_is_converted(
    opencv_decodes,
):
    rgb = _photo(40, 60, seed=3)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    adobe = adobe_rgb_like_profile()
    assert images.is_srgb(srgb) and not images.is_srgb(adobe) and not images.is_srgb(b"not a profile")
    plain = images.decode_image(_saved(rgb), 10**6).pixels
    np.testing.assert_array_equal(images.decode_image(_saved(rgb, icc_profile=srgb), 10**6).pixels, plain)
    gray = rgb[..., 1].copy()  # a gray photograph's profile is left alone on either path
    np.testing.assert_array_equal(
        images.decode_image(_saved(gray, icc_profile=srgb), 10**6).pixels,
        images.decode_image(_saved(gray), 10**6).pixels,
    )
    assert opencv_decodes == ["RGB:decoded", "RGB:decoded", "L:decoded", "L:decoded"]
    converted = images.decode_image(_saved(rgb, icc_profile=adobe), 10**6).pixels  # Pillow's path
    assert opencv_decodes[4:] == []
    reference = ImageCms.profileToProfile(
        Image.fromarray(plain), ImageCms.ImageCmsProfile(io.BytesIO(adobe)), ImageCms.createProfile("sRGB")
    )
    np.testing.assert_array_equal(converted, np.asarray(reference))
    assert np.abs(converted.astype(np.int16) - plain).max() > 10  # Adobe RGB's greens are wider


def test_a_cameras_srgb_profile_is_srgb_in_effect_and_its_photographs_take_opencvs_path(opencv_decodes):
    rgb = _photo(40, 60, seed=4)
    camera = srgb_like_profile()  # sampled curve, rounded colorants: LittleCMS moves some levels by 1
    converted = ImageCms.profileToProfile(
        Image.fromarray(rgb), ImageCms.ImageCmsProfile(io.BytesIO(camera)), ImageCms.createProfile("sRGB")
    )
    assert np.abs(np.asarray(converted, np.int16) - rgb).max() <= 1
    assert images.is_srgb(camera)
    exif = Image.Exif()
    exif[0x0112] = 8
    data = _saved(rgb, icc_profile=camera, exif=exif)
    with Image.open(io.BytesIO(data)) as reference:
        upright = np.asarray(ImageOps.exif_transpose(reference))
    np.testing.assert_array_equal(images.decode_image(data, 10**6).pixels, upright)
    assert opencv_decodes == ["RGB:decoded"]


def test_an_orientation_or_a_profile_of_the_wrong_type_costs_nothing(opencv_decodes):
    rgb = _photo(30, 40, seed=5)
    data = _saved(rgb)
    with Image.open(io.BytesIO(data)) as image:  # Pillow writes only ints there: a malformed file's
        image.getexif = lambda: {0x0112: (6, 1)}
        assert images._plain_jpeg(data, image) is None  # Pillow's path, whatever it makes of it
    assert opencv_decodes == []
    image = Image.fromarray(rgb)
    image.info["icc_profile"] = 5  # a TIFF tag of the wrong type reads so
    assert not images.is_srgb(5) and images._to_srgb(image) is image


def test_profile_verdicts_are_kept_for_the_last_64_profiles_by_digest(monkeypatch):
    probes = []
    probe = images._converts_to_itself
    monkeypatch.setattr(images, "_converts_to_itself", lambda icc: probes.append(1) or probe(icc))
    monkeypatch.setattr(images, "_VERDICTS", images.OrderedDict())
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert images.is_srgb(srgb) and images.is_srgb(bytes(srgb))  # the second from the cache
    assert len(probes) == 1
    for k in range(70):
        assert not images.is_srgb(b"junk %d" % k)
    assert len(images._VERDICTS) == 64 and len(probes) == 71
    assert images.is_srgb(srgb) and len(probes) == 72  # pushed out by the junk, probed again


def test_a_png_whose_profile_is_srgb_in_effect_skips_the_conversion(monkeypatch):
    conversions = []
    convert = images._transformed
    monkeypatch.setattr(images, "_transformed", lambda *a: conversions.append(1) or convert(*a))
    rgb = _photo(30, 50, seed=5)
    for profile, converted in [(ImageCms.createProfile("sRGB"), 0), (adobe_rgb_like_profile(), 1)]:
        buffer = io.BytesIO()
        icc = profile if isinstance(profile, bytes) else ImageCms.ImageCmsProfile(profile).tobytes()
        Image.fromarray(rgb).save(buffer, "PNG", icc_profile=icc)
        pixels = images.decode_image(buffer.getvalue(), 10**6).pixels
        assert len(conversions) == converted
        assert np.array_equal(pixels, rgb) == (not converted)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_large_photographs_profile_is_converted_in_bands_to_the_one_piece_pixels(mode, monkeypatch):
    monkeypatch.setattr(images, "_BAND_PIXELS", 256)
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    bands = []
    monkeypatch.setattr(images, "run_parts", lambda parts: bands.append(len(parts)) or run_parts(parts))
    source = ImageCms.ImageCmsProfile(io.BytesIO(adobe_rgb_like_profile()))
    rgb = _photo(41, 30, seed=6)  # an odd height: the bands differ by a row
    image = Image.fromarray(rgb).convert(mode)
    image.info["icc_profile"] = adobe_rgb_like_profile()
    converted = images._to_srgb(image)
    reference = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode=mode)
    assert bands == [2] and converted.mode == mode and converted.size == (30, 41)
    np.testing.assert_array_equal(np.asarray(converted), np.asarray(reference))


def test_a_damaged_jpeg_is_refused_by_opencv_and_pillow_says_why(opencv_decodes):
    whole = _saved(_photo(40, 60, seed=3))
    with pytest.raises(DamagedImage) as caught:  # OpenCV refuses a truncated file; Pillow says why
        images.decode_image(whole[: len(whole) * 2 // 3], 10**6)
    assert "truncated" in str(caught.value)
    assert opencv_decodes == ["RGB:refused"]
