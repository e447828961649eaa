"""POST /colorize: a photograph in (multipart field ``image`` or a raw ``image/*`` body), colour out.

The body is read in chunks and refused past ``max_upload_bytes``, whatever Content-Length says. The
image's size is checked against ``max_image_pixels`` from its header, before any pixel is decoded.
Decoding and preparing the model input run in a worker thread, the model in the engine's
inference thread (batched with other requests), chroma joining and encoding in a worker thread
again: never on the event loop, which only awaits.
"""

from __future__ import annotations

import asyncio
import io
import logging
import secrets
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Any, Literal

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Query, Request, Response
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.types import Message

from models.store import LoadedModel
from service.deps import EngineDep, SettingsDep
from service.engine import Engine, version_key
from service.errors import ApiError, field_error
from service.schemas import ErrorResponse, ValidationErrorResponse

log = logging.getLogger(__name__)

router = APIRouter(tags=["colorize"])

ImageFormat = Literal["png", "jpeg", "jpg", "webp"]

# format query value -> (Pillow format, media type, save options)
FORMATS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "png": ("PNG", "image/png", {}),
    "jpeg": ("JPEG", "image/jpeg", {"quality": 90}),
    "jpg": ("JPEG", "image/jpeg", {"quality": 90}),
    "webp": ("WEBP", "image/webp", {"quality": 90}),
}

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

_REQUEST_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "The photograph: multipart field `image`, or the raw file with an image/* type.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

_RESPONSES_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The colorized photograph, at the input's size (with variations=N, a sheet "
        "of N colorizations side by side).",
        "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
        "headers": {
            "X-Model-Version": {
                "description": 'The model version used: a number, or "default".',
                "schema": {"type": "string"},
            },
            "X-Variations": {
                "description": "With variations=N: N, the number of tiles in the sheet.",
                "schema": {"type": "integer"},
            },
            "X-Seed": {
                "description": "With variations: the seed used; send it again for the same sheet.",
                "schema": {"type": "integer"},
            },
        },
    },
    400: {"model": ErrorResponse, "description": "Empty, damaged or truncated image."},
    404: {"model": ErrorResponse, "description": "No such model version."},
    409: {"model": ErrorResponse, "description": "That model version cannot be loaded."},
    413: {"model": ErrorResponse, "description": "Upload or image too large."},
    415: {"model": ErrorResponse, "description": "Not an image."},
    422: {"model": ValidationErrorResponse, "description": "Bad format, render_size or missing field."},
    503: {
        "model": ErrorResponse,
        "description": "No model loaded yet, or too many photographs waiting (see Retry-After).",
    },
}


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the upload is larger than {limit} bytes (COLORIZER_MAX_UPLOAD_BYTES): send a smaller photograph",
    )


def _limited_receive(
    receive: Callable[[], Awaitable[Message]], limit: int
) -> Callable[[], Awaitable[Message]]:
    """Wrap an ASGI receive so reading more than ``limit`` body bytes raises a 413."""
    received = 0

    async def receive_at_most() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return receive_at_most


async def read_upload(request: Request, limit: int) -> bytes:
    """The photograph's bytes from a multipart field ``image`` or a raw ``image/*`` body.

    Raises ApiError 413 past ``limit`` bytes (checked while reading, not only from Content-Length),
    415 for another content type, and a 422 naming ``image`` when the multipart field is missing.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limited = Request(request.scope, receive=_limited_receive(request.receive, limit))
    if media_type == "multipart/form-data":
        async with limited.form(max_files=1, max_fields=20) as form:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                fields = ", ".join(sorted(form.keys())) or "none"
                raise field_error(
                    "body",
                    "image",
                    f"send the photograph as the multipart file field 'image' (fields sent: {fields})",
                )
            return await upload.read()
    if media_type.startswith("image/"):
        return await limited.body()
    raise ApiError(
        415,
        f"unsupported Content-Type {media_type or '(none)'!r}: send the photograph as multipart/form-data "
        "field 'image' (curl -F image=@photo.jpg) or as a raw body with an image/* Content-Type",
    )


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels become white: the model sees what a viewer would."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_array(image: Image.Image) -> np.ndarray:
    """A decoded Pillow image as uint8 gray (H, W) or RGB (H, W, 3); raises ApiError 415 for odd modes."""
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
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in image.info):
        return np.asarray(_flatten_alpha(image))
    if mode == "RGB":
        return np.asarray(image)
    try:
        return np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise ApiError(
            415, f"images in pixel mode {mode} are not supported ({exc}): send RGB or gray"
        ) from exc


def _too_many_pixels(max_pixels: int, size: str) -> ApiError:
    return ApiError(
        413,
        f"the image is {size}, more than the {max_pixels} pixels allowed "
        "(COLORIZER_MAX_IMAGE_PIXELS): send a smaller one",
    )


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an upload with Pillow, upright (EXIF orientation applied), as uint8 gray or RGB.

    Raises ApiError: 400 empty or damaged, 413 more than ``max_pixels`` pixels (checked from the
    header before decoding), 415 not an image.
    """
    if not data:
        raise ApiError(400, "the upload is empty: send a photograph")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's guard (Image.MAX_IMAGE_PIXELS) caught it first
        raise _too_many_pixels(max_pixels, "too large") from exc
    except UnidentifiedImageError as exc:
        raise ApiError(
            415, "the upload is not an image Pillow can read: send a PNG, JPEG, WebP, TIFF, BMP or GIF"
        ) from exc
    except Exception as exc:  # Pillow raises many types for a damaged header
        raise ApiError(
            400, f"the image header is damaged ({exc}): send the file again or another one"
        ) from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise _too_many_pixels(max_pixels, f"{width}x{height} = {width * height} pixels")
        if width * height == 0:
            raise ApiError(400, "the image has no pixels")
        try:
            image.load()
        except Image.DecompressionBombError as exc:
            raise _too_many_pixels(max_pixels, "too large") from exc
        except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, EOFError, ...
            raise ApiError(
                400, f"the image is damaged or truncated ({exc}): send the whole file again"
            ) from exc
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception as exc:  # a malformed EXIF block should not cost the photo
            log.info("ignoring unreadable EXIF orientation: %s", exc)
            upright = image
        return to_array(upright)


def encode_image(array: np.ndarray, image_format: str) -> bytes:
    """Encode RGB uint8 pixels as png, jpeg or webp; raises ApiError 422 if the format cannot hold them."""
    pil_format, _, options = FORMATS[image_format]
    buffer = io.BytesIO()
    try:
        Image.fromarray(array).save(buffer, pil_format, **options)
    except (OSError, ValueError) as exc:  # e.g. WebP is limited to 16383 px a side
        raise field_error(
            "query", "format", f"the result cannot be encoded as {image_format} ({exc}); ask for format=png"
        ) from exc
    return buffer.getvalue()


def parse_version(model: str | None) -> int | str | None:
    """The ``model`` query value as a version number or "default" (None: the served one).

    Raises UnknownVersion for anything else.
    """
    if model is None or model.strip().lower() in ("", "latest"):
        return None
    return version_key(model)


MAX_SEED = 2**31 - 1


def prepare_upload(
    engine: Engine,
    data: bytes,
    version: int | str | None,
    render_size: int | None,
    max_pixels: int,
) -> tuple[LoadedModel, Any, Any, int]:
    """Blocking: pick the model, check render_size and capacity, decode, prepare the model input.

    Returns (model, model input, lightness, render side).
    """
    model = engine.model(version)
    try:
        engine.check_render_size(model, render_size)
    except ValueError as exc:
        raise field_error("query", "render_size", str(exc), render_size) from exc
    engine.check_capacity()  # refuse before decoding when the queue is full
    pixels = decode_image(data, max_pixels)
    inputs, lum, size = engine.prepare(model, pixels, render_size)
    return model, inputs, lum, size


def finish_upload(
    engine: Engine, model: LoadedModel, predictions: list[Any], lum: Any, image_format: str
) -> bytes:
    """Blocking: join each prediction's chroma with the photograph's lightness, side by side, encode."""
    tiles = [engine.finish(model, prediction, lum) for prediction in predictions]
    sheet = tiles[0] if len(tiles) == 1 else np.concatenate(tiles, axis=1)
    return encode_image(sheet, image_format)


@router.post("/colorize", response_class=Response, responses=_RESPONSES_DOC, openapi_extra=_REQUEST_BODY_DOC)
async def colorize(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    image_format: Annotated[ImageFormat, Query(alias="format", description="Output image format.")] = "png",
    render_size: Annotated[
        int | None,
        Query(ge=1, description="Side the model runs at; a multiple of 2**levels. Default: its own size."),
    ] = None,
    model: Annotated[
        str | None,
        Query(description='A model version from GET /models, or "default". Default: the served one.'),
    ] = None,
    variations: Annotated[
        int | None,
        Query(
            ge=1,
            le=8,
            description="Return N different plausible colorizations (the generator's dropout as noise) "
            "side by side in one image, instead of the one deterministic colorization.",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        Query(ge=0, le=MAX_SEED, description="With variations: the same seed gives the same sheet."),
    ] = None,
) -> Response:
    """Colorize a photograph; the answer is the image, at the input's size, with X-Model-Version.

    With ``variations`` N: N colorizations side by side (N times as wide), X-Variations and X-Seed.
    """
    version = parse_version(model)
    if seed is not None and variations is None:
        raise field_error("query", "seed", "seed only applies with variations", seed)
    data = await read_upload(request, settings.max_upload_bytes)
    limiter = getattr(request.app.state, "inference_limiter", None)
    used, inputs, lum, size = await anyio.to_thread.run_sync(
        partial(prepare_upload, engine, data, version, render_size, settings.max_image_pixels),
        limiter=limiter,
    )
    headers = {"X-Model-Version": str(used.version), "Cache-Control": "no-store"}
    if variations is None:
        prediction = await asyncio.wrap_future(engine.submit(used, inputs, size))
        predictions = [prediction]
    else:
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
        future = engine.submit(used, inputs, size, variations=variations, seed=seed)
        predictions = list(await asyncio.wrap_future(future))
        headers.update({"X-Variations": str(variations), "X-Seed": str(seed)})
    encoded = await anyio.to_thread.run_sync(
        partial(finish_upload, engine, used, predictions, lum, image_format), limiter=limiter
    )
    return Response(encoded, media_type=FORMATS[image_format][1], headers=headers)
