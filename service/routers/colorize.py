"""POST /colorize: a photograph in (multipart field ``image`` or the raw file), colour out.

The body is read in chunks and refused past ``max_upload_bytes``, whatever Content-Length says. The
image's size is checked against ``max_image_pixels`` from its header, before any pixel is decoded.
Decoding and preparing the model input run in a worker thread, the model in the engine's
inference thread (batched with other requests), chroma joining and encoding in a worker thread
again: never on the event loop, which only awaits.
"""

from __future__ import annotations

import asyncio
import logging
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
    "The photograph: multipart field `image`, or the raw file (its bytes say what it is).",
    "image",
    ("image/*", "application/octet-stream"),
)

_RESPONSES_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The colorized photograph, at the input's size.",
        "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
        "headers": {
            "X-Model-Version": {
                "description": 'The model version used: a number, or "default".',
                "schema": {"type": "string"},
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
    """The photograph's bytes from a multipart field ``image`` or a raw body.

    A raw body's Content-Type is not trusted either way (``application/octet-stream``, curl's
    default form type, none at all): the decoder reads what the bytes are, and answers 415 when
    they are not an image. Raises ApiError 413 past ``limit`` bytes (checked while reading, not
    only from Content-Length) and a 422 naming ``image`` when the multipart field is missing.
    """
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
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
    return await limited.body()


def requested_version(model: str | None) -> int | str | None:
    """The ``model`` query value as a version number or "default" (None: the served one).

    Raises UnknownVersion for anything else.
    """
    if model is None or model.strip().lower() in ("", "latest"):
        return None
    return version_key(model)


# Query parameters /colorize and /colorize/batch share.
RenderSizeQuery = Annotated[
    int | None,
    Query(
        ge=1,
        description="Side the model runs at: a multiple of 32 for a MobileNetV2-encoder model (the "
        "default), of its image_size for others. Default: the model's render_size (GET /models).",
    ),
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
    engine: Any,
    model: LoadedModel,
    prediction: Any,
    lum: Any,
    image_format: str,
    alpha: np.ndarray | None = None,
) -> bytes:
    """Blocking: join the prediction's chroma with the photograph's lightness and encode it (with
    the photograph's transparency, where the format keeps it)."""
    return encode_image(engine.finish(model, prediction, lum), image_format, alpha)


# Removed: the generator's dropout noise gave colourings about 1 CIEDE2000 unit apart, too little
# to see (issue 14); a request that still asks for them is told so, not silently given one image.
_REMOVED = {
    "variations": "variations is no longer offered: the model's colourings of one photograph differed "
    "too little to see; send the photograph without it",
    "seed": "seed is no longer offered (it went with variations); send the photograph without it",
}


@router.post("/colorize", response_class=Response, responses=_RESPONSES_DOC, openapi_extra=_REQUEST_BODY_DOC)
async def colorize(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    image_format: Annotated[ImageFormat, Query(alias="format", description="Output image format.")] = "png",
    render_size: RenderSizeQuery = None,
    model: ModelQuery = None,
) -> Response:
    """Colorize a photograph; the answer is the image, at the input's size, with X-Model-Version."""
    version = requested_version(model)
    for name, reason in _REMOVED.items():
        if name in request.query_params:
            raise field_error("query", name, reason, request.query_params[name])
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
    prediction = await asyncio.wrap_future(engine.submit(used, inputs, size))
    encoded = await anyio.to_thread.run_sync(
        partial(finish_upload, engine, used, prediction, lum, image_format, photo.alpha),
        limiter=limiter,
    )
    return Response(encoded, media_type=FORMATS[image_format][1], headers=headers)
