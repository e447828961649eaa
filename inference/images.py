"""Photographs in and out: decode an upload safely and upright, encode a result.

Shared by ``/colorize``, ``/colorize/batch`` and the ``colorizer colorize`` command, so every way in
applies the same limits and the same care: the pixel count is checked from the header before any
pixel is decoded, EXIF orientation is applied, an embedded ICC profile is converted to sRGB, 16-bit
gray is scaled (not clipped), and transparency is kept aside to be put back on PNG and WebP output.
Errors are ``inference.errors.ImageRejected`` subclasses with a sentence for the person. No
TensorFlow here.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from common.photos import PHOTO_FORMATS
from inference.errors import (
    CannotEncode,
    DamagedImage,
    EmptyImage,
    ImageTooLarge,
    ImageTooSmall,
    NotAnImage,
)
from inference.jpeg import decode_jpeg, encode_jpeg
from inference.png import SIGNATURE as PNG_SIGNATURE
from inference.png import encode_png, packed_rgb, rgbx_in_place
from models.parallel import band_rows, run_parts

log = logging.getLogger(__name__)

# format name -> (Pillow format, media type, save options)
FORMATS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "png": ("PNG", "image/png", {}),  # encoded by inference/png.py, on every core
    "jpeg": ("JPEG", "image/jpeg", {"quality": 90}),
    "jpg": ("JPEG", "image/jpeg", {"quality": 90}),
    "webp": ("WEBP", "image/webp", {"quality": 90}),
}
# Formats whose output keeps an alpha channel.
ALPHA_FORMATS = frozenset({"png", "webp"})

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SRGB = ImageCms.createProfile("sRGB")
_ORIENTATION = 0x0112  # the EXIF tag


@dataclass(frozen=True)
class Photo:
    """A decoded photograph: ``pixels`` uint8 gray (H, W) or sRGB (H, W, 3), transparent parts
    composited on white (what a viewer shows, and what the model sees); ``alpha`` uint8 (H, W)
    when the file had transparency, else None."""

    pixels: np.ndarray
    alpha: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


# Modes whose PNG may name one transparent colour (a tRNS chunk: ``info["transparency"]``), which
# Pillow's convert to RGBA turns into alpha.
_KEYED_MODES = ("P", "1", "L", "RGB")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode in _KEYED_MODES and "transparency" in image.info)


def _flatten_alpha(rgba: Image.Image) -> Image.Image:
    """Transparent pixels become white: the model sees what a viewer would."""
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_array(image: Image.Image) -> np.ndarray:
    """A decoded Pillow image as uint8 gray (H, W) or RGB (H, W, 3); raises NotAnImage for odd modes."""
    mode = image.mode
    if mode == "L":
        return np.asarray(image)
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode in _SIXTEEN_BIT_MODES:
        # 16-bit gray (scans, PNG-16): scale to 8 bits instead of clipping everything above 255.
        values = np.asarray(image).astype(np.float32)
        return np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
    if mode == "F":
        values = np.asarray(image).astype(np.float32)
        if values.size and np.nanmax(values) <= 1.0:
            values = values * 255.0
        return np.clip(np.nan_to_num(np.round(values)), 0, 255).astype(np.uint8)
    if _has_alpha(image):
        return np.asarray(_flatten_alpha(image.convert("RGBA")))
    if mode == "RGB":
        return np.asarray(image)
    try:
        return np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise NotAnImage(f"images in pixel mode {mode} are not supported ({exc}): send RGB or gray") from exc


# Colours that tell whether a profile is sRGB's (``is_srgb``): every level of gray and of each
# primary alone, and a cube of 17 levels a channel.
_CUBE = np.stack(np.meshgrid(*[np.linspace(0, 255, 17).round()] * 3, indexing="ij"), -1).reshape(-1, 3)
_RAMP = np.arange(256)[:, None]
_PROBE = np.concatenate(
    [np.repeat(_RAMP, 3, 1), _RAMP * [1, 0, 0], _RAMP * [0, 1, 0], _RAMP * [0, 0, 1], _CUBE]
).astype(np.uint8)[None]


_PROFILE_ERRORS = (ImageCms.PyCMSError, OSError, ValueError, TypeError)  # TypeError: a profile not bytes
_VERDICTS: OrderedDict[bytes, bool] = OrderedDict()  # is_srgb's, by the profile's digest
_VERDICTS_KEPT = 64
_VERDICTS_LOCK = threading.Lock()


def is_srgb(icc: bytes) -> bool:
    """Whether an embedded ICC profile is sRGB in effect: converting the probe colours from it to
    sRGB, as ``_to_srgb`` would, moves none by more than one level (the probe's grid points: a
    profile that strayed only between them would pass). Cameras and scanners embed such profiles;
    their photographs are decoded as they are, without LittleCMS's pass over every pixel (a 2 MP
    JPEG: 7 ms instead of 58; 12 MP: 65 instead of 324). False for a profile that cannot be read
    (``_to_srgb`` logs it). The verdicts of the last 64 profiles are kept, by digest."""
    if not isinstance(icc, bytes):  # a TIFF tag of the wrong type
        return False
    key = hashlib.blake2b(icc, digest_size=16).digest()
    with _VERDICTS_LOCK:
        verdict = _VERDICTS.get(key)
    if verdict is None:
        verdict = _converts_to_itself(icc)
        with _VERDICTS_LOCK:
            _VERDICTS[key] = verdict
            while len(_VERDICTS) > _VERDICTS_KEPT:
                _VERDICTS.popitem(last=False)
    return verdict


def _converts_to_itself(icc: bytes) -> bool:
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        transform = ImageCms.buildTransform(source, _SRGB, "RGB", "RGB")
        converted = ImageCms.applyTransform(Image.fromarray(_PROBE), transform)
    except _PROFILE_ERRORS:
        return False
    return bool(np.abs(np.asarray(converted, np.int16) - _PROBE).max() <= 1)


def _to_srgb(image: Image.Image) -> Image.Image:
    """The image converted from its embedded ICC profile to sRGB (unchanged without one, or with
    one that is sRGB in effect: ``is_srgb``).

    A broken profile is ignored with a log line: the pixels are still worth colouring.
    """
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    if image.mode != "CMYK" and is_srgb(icc):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        output_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        # no cache of the last pixel: the one transform is then safe to run on bands at once
        transform = ImageCms.buildTransform(
            source, _SRGB, image.mode, output_mode, flags=ImageCms.Flags.NOCACHE
        )
        return _transformed(image, transform)
    except _PROFILE_ERRORS as exc:
        log.info("ignoring an unusable ICC profile: %s", exc)
        return image


# From this many pixels on, a profile's conversion runs in horizontal bands on every core
# (LittleCMS releases the GIL): 12 MP 200 -> 100 ms on 2 cores, the same pixels.
_BAND_PIXELS = 1 << 19


def _transformed(image: Image.Image, transform: ImageCms.ImageCmsTransform) -> Image.Image:
    """``image`` through an ICC ``transform``, a large one in bands at once (``models.parallel``)."""
    width, height = image.size
    rows = band_rows(height, width, _BAND_PIXELS)
    if rows >= height:
        return ImageCms.applyTransform(image, transform)
    tops = range(0, height, rows)
    parts = [image.crop((0, top, width, min(height, top + rows))) for top in tops]
    done = run_parts([partial(ImageCms.applyTransform, part, transform) for part in parts])
    converted = Image.new(done[0].mode, image.size)
    for top, part in zip(tops, done, strict=True):
        converted.paste(part, (0, top))
    return converted


def too_many_pixels(max_pixels: int, size: str) -> ImageTooLarge:
    return ImageTooLarge(
        f"the image is {size}, more than the {max_pixels} pixels allowed "
        "(COLORIZER_MAX_IMAGE_PIXELS): send a smaller one",
    )


def _declared_size(bomb: Image.DecompressionBombError) -> str:
    """The pixel count out of Pillow's message ("Image size (N pixels) exceeds limit ...")."""
    found = re.search(r"\((\d+) pixels\)", str(bomb))
    return f"{found[1]} pixels" if found else "too large"


# How the formats read here begin: a file that begins like one of them but that Pillow cannot
# identify is a damaged photograph (400), not another kind of file (415). (BMP's "BM" is not here:
# Pillow's BMP reader takes every file that begins so, and a failed read is already "damaged".)
_SIGNATURES = {
    PNG_SIGNATURE: "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def _signature_of(data: bytes) -> str | None:
    """The format whose signature ``data`` begins with, if it is one read here."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for signature, kind in _SIGNATURES.items() if data.startswith(signature)), None)


def decode_image(data: bytes, max_pixels: int, min_side: int = 1) -> Photo:
    """Decode an upload with Pillow (first frame of an animation), upright and in sRGB.

    Raises EmptyImage, DamagedImage, ImageTooLarge (more than ``max_pixels`` pixels, checked from
    the header before decoding), NotAnImage, ImageTooSmall (a side shorter than ``min_side``).
    """
    if not data:
        raise EmptyImage("the upload is empty: send a photograph")
    try:
        image = Image.open(io.BytesIO(data), formats=PHOTO_FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's guard (Image.MAX_IMAGE_PIXELS) caught it first
        raise too_many_pixels(max_pixels, _declared_size(exc)) from exc
    except UnidentifiedImageError as exc:
        if kind := _signature_of(data):
            raise DamagedImage(
                f"the image is damaged: it begins as a {kind} file, but its header cannot be read; "
                "send the file again or another one"
            ) from exc
        raise NotAnImage(
            "the upload is not an image Pillow can read: send a PNG, JPEG, WebP, TIFF, BMP or GIF"
        ) from exc
    except Exception as exc:  # Pillow raises many types for a damaged header
        raise DamagedImage(
            f"the image header is damaged ({exc}): send the file again or another one"
        ) from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise too_many_pixels(max_pixels, f"{width}x{height} = {width * height} pixels")
        if min(width, height) < max(1, min_side):
            raise ImageTooSmall(
                f"the image is {width}x{height}: both sides must be at least {max(1, min_side)} pixels "
                "(COLORIZER_MIN_IMAGE_SIDE)",
            )
        if (pixels := _plain_jpeg(data, image)) is not None:
            return Photo(pixels)
        try:
            image.load()  # the first frame of an animated GIF or WebP
        except Image.DecompressionBombError as exc:
            raise too_many_pixels(max_pixels, _declared_size(exc)) from exc
        except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, EOFError, ...
            raise DamagedImage(
                f"the image is damaged or truncated ({exc}): send the whole file again"
            ) from exc
        try:  # in place: without a rotation to do, a copy would cost 1 ms at 2 MP (RGB)
            ImageOps.exif_transpose(image, in_place=True)
        except Exception as exc:  # a malformed EXIF block should not cost the photo
            log.info("ignoring unreadable EXIF orientation: %s", exc)
        upright = _to_srgb(image)
        if not _has_alpha(upright):
            return Photo(to_array(upright))
        rgba = upright.convert("RGBA")  # once: both the alpha and the flattened pixels come from it
        alpha = np.asarray(rgba.getchannel("A"))
        pixels = np.asarray(_flatten_alpha(rgba))
        return Photo(pixels, None if alpha.min() == 255 else alpha)  # an unused alpha carries nothing


def _plain_jpeg(data: bytes, image: Image.Image) -> np.ndarray | None:
    """The pixels of an RGB or gray JPEG whose colours need no conversion (no ICC profile, one
    that is sRGB in effect, or a gray photograph's, which ``_to_srgb`` leaves alone too), decoded
    by OpenCV and turned upright for its EXIF orientation (``inference.jpeg.decode_jpeg``); None
    for any other image."""
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return None
    icc = image.info.get("icc_profile")
    if icc and image.mode == "RGB" and not is_srgb(icc):
        return None
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block: Pillow's path logs it
        return None
    if not isinstance(orientation, int):  # malformed too
        return None
    return decode_jpeg(data, image.mode, image.size, orientation)


def _unencodable(image_format: str, exc: Exception) -> CannotEncode:
    """The error for a result the asked-for format cannot hold."""
    return CannotEncode(f"the result cannot be encoded as {image_format} ({exc}); ask for format=png")


def encode_image(rgb: np.ndarray, image_format: str, alpha: np.ndarray | None = None) -> bytes:
    """Encode RGB uint8 pixels as png, jpeg or webp, with ``alpha`` (H, W) where the format keeps it.

    Raises CannotEncode if the format cannot hold the image.
    """
    pil_format, _, options = FORMATS[image_format]
    if pil_format == "JPEG":  # on every core, from the join's 4-byte pixels as they are (inference/jpeg.py)
        rgbx = rgbx_in_place(rgb)
        try:
            return encode_jpeg(rgb if rgbx is None else rgbx, options["quality"])
        except ValueError as exc:
            raise _unencodable(image_format, exc) from exc
    keep_alpha = alpha is not None and image_format in ALPHA_FORMATS and alpha.shape == rgb.shape[:2]
    if pil_format == "PNG":  # a piece of rows at a time, packed as it is filtered (inference/png.py)
        try:
            return encode_png(np.dstack([packed_rgb(rgb), alpha]) if keep_alpha else rgb)
        except ValueError as exc:
            raise _unencodable(image_format, exc) from exc
    rgb = packed_rgb(rgb)  # Pillow's fromarray would copy the view by numpy
    image = Image.fromarray(rgb)
    if keep_alpha:
        image.putalpha(Image.fromarray(alpha))
    buffer = io.BytesIO()
    try:
        image.save(buffer, pil_format, **options)
    except (OSError, ValueError) as exc:  # e.g. WebP is limited to 16383 px a side
        raise _unencodable(image_format, exc) from exc
    return buffer.getvalue()
