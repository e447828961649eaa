"""Receive a large upload (an archive) straight to a file on disk, never whole in memory.

Like ``/colorize`` (``service.routers.colorize.read_upload``), the byte limit is enforced while the
body is read, whatever Content-Length says; unlike it, the bytes go to a file the caller chose
(inside the data directory, so the limit is about disk there, not memory or a small /tmp).
Multipart bodies are parsed as they stream (python-multipart's push parser): the file field goes
to disk, a few short text fields are kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread
from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from service.errors import ApiError, field_error

log = logging.getLogger(__name__)

# Media types accepted for a raw archive body (the type is then found from the content).
ARCHIVE_MEDIA_TYPES = frozenset(
    {
        "application/zip",
        "application/x-zip-compressed",
        "application/x-zip",
        "application/x-tar",
        "application/gzip",
        "application/x-gzip",
        "application/x-gtar",
        "application/x-compressed-tar",
        "application/x-bzip2",
        "application/x-xz",
        "application/octet-stream",
    }
)
# enough for a batch's colour hints (a few thousand points), still bounded in memory
MAX_TEXT_FIELD_BYTES = 256 * 1024
# Write to disk in pieces of about this size, off the event loop.
WRITE_BATCH = 1024 * 1024


@dataclass
class ReceivedArchive:
    """Where the archive was written, its size, the multipart text fields and the file's name."""

    path: Path
    size: int
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None


def upload_too_large(limit: int, setting: str) -> ApiError:
    return ApiError(413, f"the upload is larger than {limit} bytes ({setting}): send a smaller archive")


class _MultipartToFile:
    """python-multipart callbacks: the part named ``file_field`` goes to ``out``, the parts named in
    ``text_fields`` are kept (at most MAX_TEXT_FIELD_BYTES each), any other part is dropped."""

    def __init__(self, out: BinaryIO, file_field: str, text_fields: tuple[str, ...]):
        self.out = out
        self.file_field = file_field
        self.text_fields = text_fields
        self.fields: dict[str, str] = {}
        self.seen: list[str] = []
        self.file_parts = 0
        self.filename: str | None = None
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._target: str | None = None  # "file", a text field's name, or None (dropped)
        self._text = bytearray()
        self.ended = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _end(self) -> None:
        self.ended = True

    def _part_begin(self) -> None:
        self._headers = {}
        self._target = None
        self._text = bytearray()

    def _header_end(self) -> None:
        self._headers[bytes(self._header_name).decode("latin-1").lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self.seen.append(name)
        if name == self.file_field:
            self.file_parts += 1
            if self.file_parts > 1:
                raise field_error(
                    "body", self.file_field, f"send one archive in the field {self.file_field!r}"
                )
            self._target = "file"
            filename = options.get(b"filename")
            self.filename = filename.decode("utf-8", "replace") if filename is not None else None
        elif name in self.text_fields:
            self._target = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._target == "file":
            self.out.write(data[start:end])
        elif self._target is not None:
            self._text.extend(data[start:end])
            if len(self._text) > MAX_TEXT_FIELD_BYTES:
                raise field_error(
                    "body", self._target, f"the field is longer than {MAX_TEXT_FIELD_BYTES} bytes"
                )

    def _part_end(self) -> None:
        if self._target not in (None, "file"):
            self.fields[self._target] = self._text.decode("utf-8", "replace").strip()


async def receive_archive(
    request: Request,
    dest: Path,
    limit: int,
    *,
    setting: str,
    file_field: str = "archive",
    text_fields: tuple[str, ...] = (),
) -> ReceivedArchive:
    """Write the uploaded archive (multipart field ``file_field`` or a raw archive body) to ``dest``.

    Raises ApiError 413 past ``limit`` bytes of body (checked while reading, not only from
    Content-Length; ``setting`` names the knob in the message), 415 for another Content-Type, 400
    for a malformed multipart body or an interrupted upload, and a 422 naming ``file_field`` when
    the multipart file field is missing. ``dest`` may be left partly written: the caller cleans up.
    """
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise upload_too_large(limit, setting)
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type != "multipart/form-data" and media_type not in ARCHIVE_MEDIA_TYPES:
        raise ApiError(
            415,
            f"unsupported Content-Type {media_type or '(none)'!r}: send the archive as multipart/form-data "
            f"field {file_field!r} (curl -F {file_field}=@photos.zip) or as a raw body with Content-Type "
            "application/zip, application/x-tar or application/gzip (curl --data-binary @photos.zip)",
        )
    received = 0
    pending: list[bytes] = []
    pending_bytes = 0
    with open(dest, "wb") as out:
        form: _MultipartToFile | None = None
        parser: MultipartParser | None = None
        if media_type == "multipart/form-data":
            _, options = parse_options_header(content_type)
            boundary = options.get(b"boundary")
            if not boundary:
                raise ApiError(400, "the multipart body has no boundary in its Content-Type")
            form = _MultipartToFile(out, file_field, text_fields)
            parser = MultipartParser(boundary, form.callbacks())

        def write(chunks: list[bytes]) -> None:
            data = b"".join(chunks)
            if parser is not None:
                parser.write(data)
            else:
                out.write(data)

        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise upload_too_large(limit, setting)
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= WRITE_BATCH:
                    await anyio.to_thread.run_sync(write, pending)
                    pending, pending_bytes = [], 0
            if pending:
                await anyio.to_thread.run_sync(write, pending)
            if parser is not None:
                parser.finalize()
        except ClientDisconnect:
            raise ApiError(400, "the upload was interrupted before the end: send it again") from None
        except MultipartParseError as exc:
            raise ApiError(400, f"the multipart body is malformed ({exc}): send it again") from exc
    if form is not None:
        if not form.ended:
            raise ApiError(400, "the multipart body ended before its closing boundary: send it again")
        if form.file_parts == 0:
            sent = ", ".join(repr(name) for name in form.seen) or "none"
            raise field_error(
                "body",
                file_field,
                f"send the archive as the multipart file field {file_field!r} (fields sent: {sent})",
            )
        return ReceivedArchive(dest, dest.stat().st_size, form.fields, form.filename)
    return ReceivedArchive(dest, received)
