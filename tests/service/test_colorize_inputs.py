"""What ``POST /colorize`` makes of bad and of unusual but valid images: every bad one a 4xx with a
sentence, every valid one colorized with its size, transparency and orientation kept."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from inference.images import to_array
from tests.apptest import (
    assert_json_error,
    decoded,
    encode,
    photo,
    png_declaring,
)

# -- bad input to /colorize: every one a 4xx with a sentence ---------------------------------------


@pytest.mark.parametrize("how", ["raw", "multipart"])
def test_colorize_rejects_an_empty_upload(client, how):
    if how == "raw":
        response = client.post("/colorize", content=b"", headers={"content-type": "image/png"})
    else:
        response = client.post("/colorize", files={"image": ("empty.png", b"", "image/png")})
    assert_json_error(response, 400, "empty")


@pytest.mark.parametrize(
    "payload",
    [
        np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="50" height="40">'
        b'<rect width="50" height="40" fill="red"/></svg>',
    ],
    ids=["random-bytes", "html-as-png", "svg-as-png"],
)
def test_colorize_rejects_a_file_that_is_not_an_image_even_when_named_png(client, payload):
    response = client.post("/colorize", files={"image": ("photo.png", payload, "image/png")})
    assert_json_error(response, 415, "not an image")


# PostScript, as a text EPS and behind the binary EPS header: Pillow would render either by running
# Ghostscript on the upload
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\n%%EndComments\n0.5 setgray 0 0 64 48 rectfill\n"
BINARY_EPS = (
    b"\xc5\xd0\xd3\xc6" + (32).to_bytes(4, "little") + len(EPS).to_bytes(4, "little") + bytes(20) + EPS
)


@pytest.mark.parametrize("payload", [EPS, BINARY_EPS], ids=["eps", "binary-eps"])
def test_postscript_is_refused_as_not_an_image_and_never_opened(client, payload, monkeypatch):
    from PIL import EpsImagePlugin

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(self))
    response = client.post("/colorize", files={"image": ("photo.jpg", payload, "image/jpeg")})
    assert_json_error(response, 415, "not an image")
    assert opened == []


def test_colorize_rejects_truncated_jpeg(client):
    whole = encode(photo(120, 90), "JPEG", quality=95)
    response = client.post(
        "/colorize", content=whole[: len(whole) * 2 // 3], headers={"content-type": "image/jpeg"}
    )
    assert_json_error(response, 400, "truncated")


def test_colorize_refuses_a_decompression_bomb_from_its_header_alone(client):
    bomb = png_declaring(50_000, 50_000)  # 2.5 gigapixels declared in under 100 bytes
    assert len(bomb) < 100
    response = client.post("/colorize", content=bomb, headers={"content-type": "image/png"})
    assert_json_error(response, 413, "2500000000 pixels", "COLORIZER_MAX_IMAGE_PIXELS")


@pytest.mark.parametrize("size", [(1, 1), (20000, 1), (3, 500)], ids=["1x1", "20000x1", "3x500"])
def test_colorize_rejects_an_image_too_thin_to_be_a_photograph(client, size):
    response = client.post(
        "/colorize", content=encode(Image.new("L", size, 90)), headers={"content-type": "image/png"}
    )
    body = assert_json_error(response, 422, f"{size[0]}x{size[1]}", "at least 8 pixels")
    assert body["errors"][0]["loc"] == ["body", "image"]


def test_the_smallest_accepted_image_is_colorized(client):
    response = client.post(
        "/colorize", content=encode(photo(8, 8, "L")), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200, response.text
    assert decoded(response).size == (8, 8)


# -- unusual but valid images ----------------------------------------------------------------------


def _rgba() -> Image.Image:
    image = photo(mode="RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return image


def _palette_with_transparency() -> Image.Image:
    image = photo().convert("P")
    image.paste(0, (0, 0, 10, 10))  # a corner in palette index 0, the transparent one
    image.info["transparency"] = 0
    return image


def _sixteen_bit() -> Image.Image:
    values = (np.asarray(photo(mode="L")).astype(np.uint16) * 257).astype(np.uint16)
    return Image.fromarray(values)


@pytest.mark.parametrize(
    ("make", "fmt"),
    [
        (lambda: photo(mode="L"), "PNG"),
        (lambda: photo(mode="1"), "PNG"),
        (lambda: photo(mode="LA"), "PNG"),
        (_rgba, "PNG"),
        (lambda: photo(mode="P"), "GIF"),
        (_palette_with_transparency, "PNG"),
        (lambda: photo(mode="CMYK"), "JPEG"),
        (lambda: photo(mode="CMYK"), "TIFF"),
        (_sixteen_bit, "PNG"),
    ],
    ids=["L", "1", "LA", "RGBA", "P", "P-transparent", "CMYK-jpeg", "CMYK-tiff", "I;16"],
)
def test_colorize_accepts_every_common_pixel_mode(client, make, fmt):
    response = client.post(
        "/colorize", files={"image": ("in", encode(make(), fmt), "application/octet-stream")}
    )
    assert response.status_code == 200, response.text
    assert decoded(response).size == (50, 40)


def test_sixteen_bit_gray_is_scaled_to_eight_bits_not_clipped():
    values = np.array([[0, 257 * 64, 32768, 65535]], dtype=np.uint16)
    assert to_array(Image.fromarray(values)).tolist() == [[0, 64, 128, 255]]


def test_colorize_applies_exif_orientation(client):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated a quarter turn: portrait
    upload = encode(photo(60, 20), "JPEG", exif=exif)
    response = client.post("/colorize", content=upload, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    assert decoded(response).size == (20, 60)


def _colorized(client, data: bytes, fmt: str = "png") -> Image.Image:
    response = client.post(
        f"/colorize?format={fmt}", files={"image": ("in", data, "application/octet-stream")}
    )
    assert response.status_code == 200, response.text
    return decoded(response)


@pytest.mark.parametrize("fmt", ["png", "webp"])
@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_colorize_carries_transparency_through_to_png_and_webp(client, fmt, mode):
    source = _rgba().convert(mode)
    result = _colorized(client, encode(source), fmt)
    assert result.mode == "RGBA" and result.size == source.size
    expected = np.asarray(source.getchannel("A"), np.int16)
    got = np.asarray(result.getchannel("A"), np.int16)
    tolerance = 0 if fmt == "png" else 8  # lossy WebP may round alpha a little
    assert np.abs(got - expected).max() <= tolerance


def test_colorize_keeps_a_palette_images_transparent_index(client):
    source = _palette_with_transparency()
    result = _colorized(client, encode(source))
    expected = np.asarray(source.convert("RGBA").getchannel("A"))
    assert result.mode == "RGBA"
    assert np.array_equal(np.asarray(result.getchannel("A")), expected)
    assert (expected == 0).any() and (expected == 255).any()


@pytest.mark.parametrize(("mode", "key"), [("L", 0), ("RGB", (0, 0, 0))])
def test_colorize_keeps_a_gray_or_rgb_pngs_transparent_colour(client, mode, key):
    source = photo(mode=mode)
    source.paste(key, (0, 0, 10, 10))  # a corner in the colour the PNG's tRNS chunk names
    result = _colorized(client, encode(source, transparency=key))
    expected = np.asarray(Image.open(io.BytesIO(encode(source, transparency=key))).convert("RGBA"))[..., 3]
    assert result.mode == "RGBA"
    assert np.array_equal(np.asarray(result.getchannel("A")), expected)
    assert (expected[:10, :10] == 0).all() and (expected == 255).any()


def test_colorize_to_jpeg_drops_transparency_and_keeps_the_size(client):
    result = _colorized(client, encode(_rgba()), "jpeg")
    assert result.mode == "RGB" and result.size == (50, 40)


def test_an_opaque_rgba_image_comes_back_without_an_alpha_channel(client):
    result = _colorized(client, encode(photo(mode="RGBA")))
    assert result.mode == "RGB"


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_colorize_uses_the_first_frame_of_an_animation(client, fmt):
    first = photo(mode="L").convert("RGB")
    second = Image.fromarray(255 - np.asarray(first))
    options = {"lossless": True} if fmt == "WEBP" else {}
    animation = encode(first, fmt, save_all=True, append_images=[second], duration=100, loop=0, **options)
    with Image.open(io.BytesIO(animation)) as check:
        assert check.n_frames == 2
        check.seek(0)
        first_as_decoded = encode(check.convert("RGB"))
    from_animation = np.asarray(_colorized(client, animation), np.int16)
    from_first_frame = np.asarray(_colorized(client, first_as_decoded), np.int16)
    assert np.abs(from_animation - from_first_frame).max() <= 1


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("JPEG", {"progressive": True, "quality": 90}),
        ("TIFF", {}),
        ("BMP", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
    ],
    ids=["progressive-jpeg", "tiff", "bmp", "tiff-lzw"],
)
def test_colorize_reads_progressive_jpeg_tiff_and_bmp(client, fmt, options):
    data = encode(photo(64, 48), fmt, **options)
    with Image.open(io.BytesIO(data)) as check:
        assert check.format == fmt and (fmt != "JPEG" or check.info.get("progressive"))
        same_pixels_as_png = encode(check.convert("RGB"))
    result = _colorized(client, data)
    assert result.size == (64, 48)
    reference = _colorized(client, same_pixels_as_png)
    assert np.abs(np.asarray(result, np.int16) - np.asarray(reference, np.int16)).max() <= 1


def test_an_srgb_profile_changes_nothing_and_a_broken_profile_does_not_cost_the_photo():
    from PIL import ImageCms

    from inference.images import decode_image

    source = photo(32, 24)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged = decode_image(encode(source, icc_profile=srgb), 10**6).pixels
    assert np.abs(tagged.astype(np.int16) - np.asarray(source, np.int16)).max() <= 1
    broken = decode_image(encode(source, icc_profile=b"not a profile"), 10**6).pixels
    assert np.array_equal(broken, np.asarray(source))


def test_jpeg_encoding_takes_rgbx_pixels_in_place_only_where_the_whole_buffer_is_there():
    from inference.images import encode_image, rgbx_in_place

    rng = np.random.default_rng(3)
    words = rng.integers(0, 256, (20, 7, 4), dtype=np.uint8)  # rows of 7 pixels, 5 kept: the join's shape
    view = words[:, :5, :3]
    wrapped = rgbx_in_place(view)
    assert wrapped is not None and wrapped.shape == (20, 5, 4) and np.shares_memory(wrapped, words)
    np.testing.assert_array_equal(wrapped, words[:, :5])
    copy = np.ascontiguousarray(view)
    assert encode_image(view, "jpeg") == encode_image(copy, "jpeg")  # the same bytes as from a copy
    for fmt in ("png", "webp"):  # other formats take the pixels packed (by OpenCV): the same bytes
        assert encode_image(view, fmt) == encode_image(copy, fmt)
        assert Image.open(io.BytesIO(encode_image(view, fmt))).size == (5, 20)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_image(view, "png")))), view)
    alpha = rng.integers(0, 256, (20, 5), dtype=np.uint8)
    assert encode_image(view, "png", alpha) == encode_image(copy, "png", alpha)
    # not wrapped: contiguous RGB, or a view whose last pixel's fourth byte is outside the buffer
    assert rgbx_in_place(copy) is None
    assert rgbx_in_place(words[..., 1:4]) is None
    assert rgbx_in_place(words[::2, :, :3]) is not None  # every other row: a longer stride
    assert rgbx_in_place(words[:, ::2, :3]) is None  # every other pixel: not 4-byte pixels


def test_a_jpeg_too_tall_for_the_format_is_a_422_naming_the_format():
    from inference.errors import CannotEncode
    from inference.images import encode_image
    from service.errors import http_error

    with pytest.raises(CannotEncode) as caught:
        encode_image(np.zeros((65501, 1, 3), np.uint8), "jpeg")
    assert "at most 65500 pixels" in str(caught.value)
    (error,) = http_error(caught.value).errors()  # what the API answers
    assert error["loc"] == ("query", "format") and "at most 65500 pixels" in error["msg"]


def test_the_api_caps_mallocs_arenas_unless_the_environment_already_does(monkeypatch):
    import os
    import platform

    from service.app import MALLOC_ARENAS, limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not limit_malloc_arenas()  # glibc read the variable at start: nothing to do
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt and malloc_info are glibc's")
    # In a fresh process (the cap cannot be undone): 8 threads that each malloc get 8 arenas of
    # their own, or share MALLOC_ARENAS once the API has capped them. glibc's malloc_info counts.
    code = """
import ctypes, os, sys, tempfile, threading
from service.app import limit_malloc_arenas
if sys.argv[1] == "cap":
    assert limit_malloc_arenas()
start = threading.Barrier(8)
def work():
    start.wait()
    for _ in range(500):
        bytearray(64 * 1024)  # malloc itself, not Python's small-object allocator
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = os.path.join(tempfile.mkdtemp(), "info.xml")
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
print(open(path).read().count("<heap nr="))
"""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    heaps = {}
    for mode in ("cap", "none"):
        done = subprocess.run(
            [sys.executable, "-c", code, mode], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr[-2000:]
        heaps[mode] = int(done.stdout)
    assert heaps["cap"] <= MALLOC_ARENAS < heaps["none"]
