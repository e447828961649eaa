"""Errors the API raises and the handlers that turn every error into ``{"detail": "<sentence>", ...}``.

Validation errors (422) keep FastAPI's list of field errors under ``errors`` (with their ``loc``)
and put a readable summary in ``detail``. The inference room raises plain exceptions
(``inference.errors``); ``http_error`` says what each means in HTTP, here and nowhere else.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.jobs import UnknownJob
from common.labels import LabelsUnreadable
from common.store import BrokenVersion, UnknownVersion
from inference import errors as inference_errors
from inference.errors import (
    BadHints,
    BadRenderSize,
    CannotEncode,
    DamagedImage,
    EmptyImage,
    EngineBusy,
    ImageRejected,
    ImageTooLarge,
    ImageTooSmall,
    NoModelLoaded,
    NotAnImage,
)

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with its HTTP status, a sentence for the client and optional extra JSON fields."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra


# The inference room's plain exceptions as HTTP answers: a status, or a 422 on a request field.
_IMAGE_STATUS: dict[type[ImageRejected], int] = {
    EmptyImage: 400,
    DamagedImage: 400,
    ImageTooLarge: 413,
    NotAnImage: 415,
    ImageRejected: 400,  # any other kind: checked last, after its subclasses
}
_FIELD_OF: dict[type[ValueError], tuple[str, str]] = {
    ImageTooSmall: ("body", "image"),
    CannotEncode: ("query", "format"),
    BadRenderSize: ("query", "render_size"),
}


def http_error(exc: Exception) -> ApiError | RequestValidationError | None:
    """The API's answer to an inference error (None for any other exception): what the handlers
    send, and what a batch writes in its manifest."""
    if isinstance(exc, EngineBusy):
        return ApiError(503, str(exc), headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, NoModelLoaded):
        return ApiError(503, str(exc), headers={"Retry-After": "5"})
    if isinstance(exc, BadHints):
        return field_error(exc.location, "hints", str(exc), exc.value)
    for kind, (location, name) in _FIELD_OF.items():
        if isinstance(exc, kind):
            return field_error(location, name, str(exc), getattr(exc, "value", None))
    for kind, status in _IMAGE_STATUS.items():
        if isinstance(exc, kind):
            return ApiError(status, str(exc))
    return None


def inference_error(kind: Any, message: str) -> ValueError | None:
    """The inference error a colorize worker refused a photograph with (its class name and sentence,
    ``worker.colorize``), rebuilt so that this server answers it as if it had refused it itself; None
    for any other kind."""
    found = getattr(inference_errors, kind, None) if isinstance(kind, str) else None
    if isinstance(found, type) and issubclass(found, ImageRejected | BadRenderSize | BadHints):
        return found(message)
    return None


def field_error(location: str, field: str, message: str, value: Any = None) -> RequestValidationError:
    """A 422 for one request field (``location`` is "body", "query" or "path"), shaped like FastAPI's."""
    return RequestValidationError(
        [{"type": "value_error", "loc": (location, field), "msg": message, "input": value}]
    )


def _describe_location(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] == "body":
        return f"body field {'.'.join(parts[1:])}"
    if len(parts) > 1 and parts[0] in ("query", "path", "header", "cookie"):
        return f"{parts[0]} parameter {'.'.join(parts[1:])}"
    return ".".join(parts) or "request"


def _readable_message(msg: str) -> str:
    # pydantic prefixes errors from validators with "Value error, "; the person does not need it.
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def summarize_validation_errors(errors: Sequence[Mapping[str, Any]]) -> str:
    """One sentence listing each bad field and what is wrong with it."""
    parts = [
        f"{_describe_location(e.get('loc', ()))}: {_readable_message(str(e.get('msg', '')))}" for e in errors
    ]
    return "invalid request: " + "; ".join(parts) if parts else "invalid request"


def _error_body(detail: str, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, **jsonable_encoder(extra)}


def _body_fields(request: Request) -> list[str]:
    """The field names of the route's JSON body model (POST /jobs: TrainConfig's), if it has one."""
    body = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(body, "field_info", None), "annotation", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _name_the_likely_field(errors: list[dict[str, Any]], fields: list[str]) -> None:
    """``unknown field 'stpes' (did you mean 'steps'?)`` for each field the body model forbids."""
    for error in errors:
        loc = error.get("loc") or ()
        if error.get("type") == "extra_forbidden" and fields and len(loc) == 2:
            name = str(loc[-1])
            guesses = difflib.get_close_matches(name.lower().replace("-", "_"), fields, n=1, cutoff=0.6)
            hint = f"did you mean {guesses[0]!r}?" if guesses else f"the fields are {', '.join(fields)}"
            error["msg"] = f"unknown field ({hint})"


# How much of a bad field's value a 422 echoes back (``input``), as JSON text.
ECHO_CHARS = 200


def _json_safe(value: Any) -> Any:
    """``value`` with the numbers JSON text cannot hold (NaN, Infinity: Python's JSON parser takes
    them) as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def echoable(value: Any) -> Any:
    """A bad field's value as a 422 may echo it: JSON-safe, and cut to ECHO_CHARS characters of its
    JSON text (as a string then) where it is longer: a 100 MB field is not sent back."""
    try:
        value = _json_safe(value)
        text = json.dumps(value)
    except (RecursionError, TypeError, ValueError):
        return "(a value that cannot be shown)"
    if len(text) <= ECHO_CHARS:
        return value
    return f"{text[:ECHO_CHARS]}... ({len(text)} characters)"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = jsonable_encoder(exc.errors())
    for error in errors:
        if "input" in error:
            error["input"] = echoable(error["input"])
    _name_the_likely_field(errors, _body_fields(request))
    return JSONResponse(
        status_code=422, content=_error_body(summarize_validation_errors(errors), errors=errors)
    )


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(
        status_code=exc.status_code, content=_error_body(exc.detail, **exc.extra), headers=exc.headers
    )


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no endpoint {request.method} {request.url.path}; the API is described at /docs"
    elif exc.status_code == 405 and detail == "Method Not Allowed":
        detail = f"{request.url.path} does not accept {request.method}; the API is described at /docs"
    content = detail if isinstance(detail, dict) and "detail" in detail else {"detail": str(detail)}
    return JSONResponse(
        status_code=exc.status_code, content=jsonable_encoder(content), headers=_allowing_head(exc)
    )


def _allowing_head(exc: StarletteHTTPException) -> dict[str, str] | None:
    """The exception's headers, with HEAD in a 405's Allow where GET is: the route that refused
    is the GET one, and its HEAD twin (``service.app.answer_head``) answers HEAD."""
    headers = getattr(exc, "headers", None)
    if exc.status_code != 405 or not headers or "Allow" not in headers:
        return headers
    allowed = [method.strip() for method in headers["Allow"].split(",")]
    if "GET" in allowed and "HEAD" not in allowed:
        headers = {**headers, "Allow": ", ".join([*allowed, "HEAD"])}
    return headers


async def _inference_error(request: Request, exc: Exception) -> JSONResponse:
    answer = http_error(exc)  # never None: registered for the inference exceptions only
    if isinstance(answer, RequestValidationError):
        return await _validation_error(request, answer)
    return await _api_error(request, answer)


async def _unknown_version(request: Request, exc: UnknownVersion) -> JSONResponse:
    return JSONResponse(
        status_code=404, content=_error_body(f"{exc}; GET /models lists the versions there are")
    )


async def _broken_version(request: Request, exc: BrokenVersion) -> JSONResponse:
    log.warning("request for a broken model version: %s", exc)
    return JSONResponse(
        status_code=409,
        content=_error_body(
            f"that model version cannot be loaded ({exc}); use another one (GET /models) or publish it again"
        ),
    )


async def _labels_unreadable(request: Request, exc: LabelsUnreadable) -> JSONResponse:
    log.error("the model store's labels cannot be read: %s", exc)
    return JSONResponse(
        status_code=503,
        content=_error_body(
            f"the model store's labels cannot be read ({exc}); an operator must fix or remove it"
        ),
    )


async def _unknown_job(request: Request, exc: UnknownJob) -> JSONResponse:
    return JSONResponse(status_code=404, content=_error_body(f"{exc}; GET /jobs lists the jobs there are"))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        status_code=500,
        content=_error_body("internal server error; the server log has the details, please report it"),
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for kind in (ImageRejected, BadRenderSize, BadHints, EngineBusy, NoModelLoaded):
        app.add_exception_handler(kind, _inference_error)
    app.add_exception_handler(UnknownVersion, _unknown_version)
    app.add_exception_handler(BrokenVersion, _broken_version)
    app.add_exception_handler(LabelsUnreadable, _labels_unreadable)
    app.add_exception_handler(UnknownJob, _unknown_job)
    app.add_exception_handler(Exception, _unexpected)
