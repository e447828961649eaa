"""PNG encoding in bands (inference/png.py): every band split decodes to the very pixels, by Pillow
and by OpenCV, with valid chunk CRCs and a valid zlib stream."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from inference import png
from models import parallel
from models.parallel import run_parts


def _pixels(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """Smooth fields with noise and a few saturated spots (the filter's wrap-arounds)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    fields = [np.sin(x / 9.0 + k) * np.cos(y / 7.0 - k) * 120 + 128 for k in range(channels)]
    pixels = np.stack(fields, axis=-1) + rng.normal(0, 12, (height, width, channels))
    pixels[::5, ::3] = 255
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of each chunk, their CRCs checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0] == zlib.crc32(kind + body)
        found.append((kind, body))
        at += 12 + length
    return found


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 37), (29, 1), (23, 31), (64, 48)])
@pytest.mark.parametrize("rows", [1, 3, 10, None])  # None: parallel.band_rows' choice
def test_every_band_split_decodes_to_the_very_pixels(channels, height, width, rows):
    pixels = _pixels(height, width, channels, seed=height * width + channels)
    data = png.encode_png(pixels, rows)
    kinds = [kind for kind, _ in _chunks(data)]
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]
    raw = zlib.decompress(_chunks(data)[1][1])  # zlib checks the stream's Adler-32
    assert len(raw) == height * (width * channels + 1)
    assert set(raw[:: width * channels + 1]) == {2}  # every row filtered by Up
    with Image.open(io.BytesIO(data)) as decoded:
        decoded.load()
        back = np.asarray(decoded)
    np.testing.assert_array_equal(back, pixels[..., 0] if channels == 1 else pixels)
    opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if channels >= 3:
        opencv = cv2.cvtColor(opencv, cv2.COLOR_BGR2RGB if channels == 3 else cv2.COLOR_BGRA2RGBA)
    if channels == 2:  # OpenCV reads gray and alpha as BGRA
        opencv = opencv[..., [0, 3]]
    np.testing.assert_array_equal(opencv.reshape(pixels.shape), pixels)


def test_a_large_image_is_deflated_in_bands_on_the_spare_cores(monkeypatch):
    parts = []
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    monkeypatch.setattr(png, "BAND_PIXELS", 500)
    monkeypatch.setattr(png, "run_parts", lambda work: parts.append(len(work)) or run_parts(work))
    pixels = _pixels(41, 30, 3)
    assert parallel.band_rows(41, 30, png.BAND_PIXELS) == 21
    data = png.encode_png(pixels)
    assert parts == [2]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    assert parallel.band_rows(41, 30, png.BAND_PIXELS) == 41  # one core: one piece


def test_bands_made_of_many_pieces_and_a_stream_in_many_idat_chunks_decode_the_same(monkeypatch):
    monkeypatch.setattr(png, "_PIECE_BYTES", 100)  # 1 row a piece at 31 pixels a row, 2 at 11
    monkeypatch.setattr(png, "_IDAT_BYTES", 97)
    for width in (31, 11):
        pixels = _pixels(29, width, 3, seed=width)
        data = png.encode_png(pixels, rows=10)
        chunks = _chunks(data)
        assert [kind for kind, _ in chunks].count(b"IDAT") > 3
        assert zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)


@pytest.mark.parametrize("lengths", [(1, 1), (3, 65521), (65520, 65522), (100000, 7), (5, 200000)])
def test_adler32_combine_is_zlibs(lengths):
    rng = np.random.default_rng(sum(lengths))
    first, second = (rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths)
    assert png.adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) == zlib.adler32(
        first + second
    )
    ones = b"\xff" * lengths[1]  # the largest sums
    assert png.adler32_combine(zlib.adler32(first), zlib.adler32(ones), len(ones)) == zlib.adler32(
        first + ones
    )


def test_pixels_of_any_stride_are_encoded_as_they_look():
    rgbx = _pixels(20, 9, 4)
    view = rgbx[:, 1:8, :3]  # the join's RGBX pixels seen as RGB, rows cut short
    with Image.open(io.BytesIO(png.encode_png(view, 6))) as decoded:
        np.testing.assert_array_equal(np.asarray(decoded), view)


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((4, 4, 3), np.float32),
        np.zeros((4, 4, 5), np.uint8),
        np.zeros((4,), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
    ],
    ids=["float", "five-channels", "one-dimension", "no-rows"],
)
def test_what_png_cannot_hold_is_refused(pixels):
    with pytest.raises(ValueError):
        png.encode_png(pixels)
