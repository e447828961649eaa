"""POST /colorize: a photograph in (multipart field ``image`` or a raw ``image/*`` body), colour out.

The body is read in chunks and refused past ``max_upload_bytes``, whatever Content-Length says. The
image's size is checked against ``max_image_pixels`` from its header, before any pixel is decoded.
Decoding and preparing the model input run in a worker thread, the model in the engine's
inference thread (batched with other requests), chroma joining and encoding in a worker thread
again: never on the event loop, which only awaits.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Any, Literal

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Query, Request, Response
from starlette.types import Message

from models.store import LoadedModel
from service.deps import EngineDep, SettingsDep
from service.engine import Engine, version_key
from service.errors import ApiError, field_error
from service.images import FORMATS, Photo, decode_image, encode_image
from service.schemas import ErrorResponse, ValidationErrorResponse, upload_body_doc

log = logging.getLogger(__name__)

router = APIRouter(tags=["colorize"])

ImageFormat = Literal["png", "jpeg", "jpg", "webp"]

_REQUEST_BODY_DOC = upload_body_doc(
    "The photograph: multipart field `image`, or the raw file with an image/* type.", "image", ("image/*",)
)

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


def parse_version(model: str | None) -> int | str | None:
    """The ``model`` query value as a version number or "default" (None: the served one).

    Raises UnknownVersion for anything else.
    """
    if model is None or model.strip().lower() in ("", "latest"):
        return None
    return version_key(model)


MAX_SEED = 2**31 - 1

# Query parameters /colorize and /colorize/batch share.
RenderSizeQuery = Annotated[
    int | None,
    Query(ge=1, description="Side the model runs at; a multiple of 2**levels. Default: its own size."),
]
ModelQuery = Annotated[
    str | None,
    Query(description='A model version from GET /models, or "default". Default: the served one.'),
]


def prepare_upload(
    engine: Engine,
    data: bytes,
    version: int | str | None,
    render_size: int | None,
    max_pixels: int,
    min_side: int = 1,
) -> tuple[LoadedModel, Any, Any, int, Photo]:
    """Blocking: pick the model, check render_size and capacity, decode, prepare the model input.

    Returns (model, model input, lightness, render side, the decoded photograph).
    """
    model = engine.model(version)
    try:
        engine.check_render_size(model, render_size)
    except ValueError as exc:
        raise field_error("query", "render_size", str(exc), render_size) from exc
    engine.check_capacity()  # refuse before decoding when the queue is full
    photo = decode_image(data, max_pixels, min_side)
    inputs, lum, size = engine.prepare(model, photo.pixels, render_size)
    return model, inputs, lum, size, photo


def finish_upload(
    engine: Engine,
    model: LoadedModel,
    predictions: list[Any],
    lum: Any,
    image_format: str,
    alpha: np.ndarray | None = None,
) -> bytes:
    """Blocking: join each prediction's chroma with the photograph's lightness, side by side, encode
    (with the photograph's transparency on each tile, where the format keeps it)."""
    tiles = [engine.finish(model, prediction, lum) for prediction in predictions]
    sheet = tiles[0] if len(tiles) == 1 else np.concatenate(tiles, axis=1)
    if alpha is not None and len(tiles) > 1:
        alpha = np.concatenate([alpha] * len(tiles), axis=1)
    return encode_image(sheet, image_format, alpha)


@router.post("/colorize", response_class=Response, responses=_RESPONSES_DOC, openapi_extra=_REQUEST_BODY_DOC)
async def colorize(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    image_format: Annotated[ImageFormat, Query(alias="format", description="Output image format.")] = "png",
    render_size: RenderSizeQuery = None,
    model: ModelQuery = None,
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
    used, inputs, lum, size, photo = await anyio.to_thread.run_sync(
        partial(
            prepare_upload,
            engine,
            data,
            version,
            render_size,
            settings.max_image_pixels,
            settings.min_image_side,
        ),
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
        partial(finish_upload, engine, used, predictions, lum, image_format, photo.alpha),
        limiter=limiter,
    )
    return Response(encoded, media_type=FORMATS[image_format][1], headers=headers)
