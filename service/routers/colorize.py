"""POST /colorize: a photograph in (multipart field ``image`` or the raw file), colour out.

The body is read in chunks and refused past ``max_upload_bytes``, whatever Content-Length says. The
image's size is checked against ``max_image_pixels`` from its header, before any pixel is decoded.
The work is ``inference.pipeline``'s: decoding and preparing the model input in a worker thread,
the model in the engine's inference thread (batched with other requests), chroma joining and
encoding in a worker thread again: never on the event loop, which only awaits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from python_multipart.multipart import parse_options_header
from starlette.types import Message

from common.labels import is_label_name
from common.store import version_key
from inference.images import FORMATS
from inference.pipeline import Pipeline, Prepared
from service.deps import PipelineDep, SettingsDep
from service.errors import ApiError, field_error
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
                "description": 'The model version used: a number or "default" (for a label, its version).',
                "schema": {"type": "string"},
            },
        },
    },
    400: {"model": ErrorResponse, "description": "Empty, damaged or truncated image."},
    404: {"model": ErrorResponse, "description": "No such model version or label."},
    409: {"model": ErrorResponse, "description": "That model version cannot be loaded."},
    413: {"model": ErrorResponse, "description": "Upload or image too large."},
    415: {"model": ErrorResponse, "description": "Not an image."},
    422: {
        "model": ValidationErrorResponse,
        "description": "Bad format, render_size, hints (or hints for a model without hint inputs), "
        "or missing field.",
    },
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


class _LimitedBody:
    """An ASGI receive that raises a 413 past ``limit`` body bytes, and notes whether a multipart
    body's closing delimiter (``--boundary--``) went by: Starlette's form parser takes a body cut
    off before it as if it had ended there, dropping the part it was in."""

    def __init__(self, receive: Callable[[], Awaitable[Message]], limit: int, boundary: bytes | None):
        self.receive = receive
        self.limit = limit
        self.received = 0
        self.closing = b"--" + boundary + b"--" if boundary else b""
        self.closed = not self.closing  # no boundary: Starlette's parser refuses the body itself
        self._tail = b""

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            self.received += len(body)
            if self.received > self.limit:
                raise _too_large(self.limit)
            if self.closing and not self.closed and body:
                window = self._tail + body
                self.closed = self.closing in window
                self._tail = window[1 - len(self.closing) :]
        return message


async def read_upload(request: Request, limit: int) -> tuple[bytes, str | None]:
    """The photograph's bytes from a multipart field ``image`` or a raw body, and the multipart
    field ``hints`` (colour hints as JSON text) when there is one.

    A raw body's Content-Type is not trusted either way (``application/octet-stream``, curl's
    default form type, none at all): the decoder reads what the bytes are, and answers 415 when
    they are not an image. Raises ApiError 413 past ``limit`` bytes (checked while reading, not
    only from Content-Length), 400 for a multipart body cut off before its closing boundary, and a
    422 naming ``image`` when the multipart field is missing or sent twice.
    """
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type != "multipart/form-data":
        return await Request(request.scope, receive=_LimitedBody(request.receive, limit, None)).body(), None
    body = _LimitedBody(request.receive, limit, parse_options_header(content_type)[1].get(b"boundary"))
    # two files: the photograph, and hints sent as a file by mistake (refused below, in words)
    async with Request(request.scope, receive=body).form(max_files=2, max_fields=20) as form:
        if not body.closed:
            raise ApiError(400, "the multipart body ended before its closing boundary: send it again")
        uploads = form.getlist("image")
        if len(uploads) > 1:
            raise field_error("body", "image", "send one photograph in the field 'image'")
        upload = uploads[0] if uploads else None
        if upload is None or isinstance(upload, str):
            fields = ", ".join(sorted(form.keys())) or "none"
            raise field_error(
                "body",
                "image",
                f"send the photograph as the multipart file field 'image' (fields sent: {fields})",
            )
        hints = form.get("hints")
        if hints is not None and not isinstance(hints, str):
            raise field_error("body", "hints", "send hints as a text field of JSON, not as a file")
        return await upload.read(), hints


def requested_version(model: str | None) -> int | str | None:
    """The ``model`` query value as a version number, "default" or a label's name (None: the
    served one; the engine resolves a label when it takes the model).

    Raises UnknownVersion for anything else.
    """
    if model is None or model.strip().lower() in ("", "latest"):
        return None
    if is_label_name(model.strip()):
        return model.strip()
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
    Query(
        description='A model version from GET /models, "default", or a label (GET /models/labels). '
        "Default: the one COLORIZER_SERVE names."
    ),
]


HintsQuery = Annotated[
    str | None,
    Query(
        description='Colour hints as JSON, for a raw-body upload: `[{"x": 120, "y": 80, "color": "#aa3311", '
        '"radius": 3}]`, pixels of the photograph as it is seen (after EXIF rotation), an optional radius '
        "in pixels. A multipart upload may send them as the field `hints` instead. Only for models that "
        "take hints (GET /models).",
    ),
]


def _pick_and_prepare(
    pipeline: Pipeline,
    data: bytes,
    version: int | str | None,
    render_size: int | None,
    hints: str | None = None,
    hints_location: str = "body",
) -> Prepared:
    """Blocking: the model asked for, then the photograph decoded and prepared (refused before
    decoding when the queue is full)."""
    model = pipeline.engine.model(version)
    return pipeline.decode_and_prepare(
        data, model, render_size, refuse_when_busy=True, hints=hints, hints_location=hints_location
    )


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
    pipeline: PipelineDep,
    settings: SettingsDep,
    image_format: Annotated[ImageFormat, Query(alias="format", description="Output image format.")] = "png",
    render_size: RenderSizeQuery = None,
    model: ModelQuery = None,
    hints: HintsQuery = None,
) -> Response:
    """Colorize a photograph (with colour hints, for a model that takes them); the answer is the
    image, at the input's size, with X-Model-Version."""
    version = requested_version(model)
    for name, reason in _REMOVED.items():
        if name in request.query_params:
            raise field_error("query", name, reason, request.query_params[name])
    data, form_hints = await read_upload(request, settings.max_upload_bytes)
    if form_hints is not None and hints is not None:
        raise field_error("query", "hints", "send hints once: as the multipart field or the query, not both")
    location = "query" if hints is not None else "body"
    limiter = getattr(request.app.state, "inference_limiter", None)
    prepared = await anyio.to_thread.run_sync(
        partial(
            _pick_and_prepare,
            pipeline,
            data,
            version,
            render_size,
            hints if hints is not None else form_hints,
            location,
        ),
        limiter=limiter,
    )
    headers = {"X-Model-Version": str(prepared.model.version), "Cache-Control": "no-store"}
    prediction = await asyncio.wrap_future(pipeline.submit(prepared))
    encoded = await anyio.to_thread.run_sync(
        partial(pipeline.finish_and_encode, prepared, prediction, image_format), limiter=limiter
    )
    return Response(encoded, media_type=FORMATS[image_format][1], headers=headers)
