"""POST /colorize/batch: an archive of photographs in, a zip of colorized photographs out.

The archive (zip or tar, multipart field ``archive`` or a raw body) is streamed to a temporary
folder in the data directory, then read one member at a time: at most a window of photographs
(``max_batch_size``, and never more than ``max_queue``) is held decoded or waiting for the model,
so a batch neither fills memory nor trips the engine's own queue limit (when other requests fill
the queue, an entry waits and retries). The whole batch uses one model version, picked once.

The answer is a zip with each colorized photograph under its own path (its extension changed only
when the output format differs) and ``manifest.json`` listing every member: name, output,
status (``ok``, ``error``, ``skipped``), the error sentence, the model version. A bad file costs
its own entry, never the batch; only a batch with nothing colorized at all is an error (422).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import shutil
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import anyio
import anyio.abc
import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from common.fanout import RemoteColorizer, RemoteFailed, decode_photo
from common.settings import Settings
from inference.errors import EngineBusy
from inference.pipeline import Pipeline
from models.hints import NoHintInputs
from models.store import LoadedModel
from service.archives import ArchiveReader, EntryTooLarge, EntryUnreadable, is_hidden, safe_path
from service.deps import PipelineDep, SettingsDep, get_fanout
from service.errors import ApiError, field_error, http_error, inference_error, summarize_validation_errors
from service.routers.colorize import ModelQuery, RenderSizeQuery, requested_version
from service.schemas import ErrorResponse, ValidationErrorResponse, upload_body_doc
from service.uploads import receive_archive

log = logging.getLogger(__name__)

router = APIRouter(tags=["colorize"])

BatchFormat = Literal["png", "jpeg", "jpg", "webp"]
MANIFEST_NAME = "manifest.json"
# Output format for an input whose own format cannot be written (TIFF, BMP, GIF, ...).
FALLBACK_FORMAT = "png"
# An input's suffix -> the format that keeps it (jpg and jpeg are the same format).
_SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
_SAME_FORMAT = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
# How long one entry keeps retrying while other requests fill the engine's queue.
BUSY_PATIENCE_S = 60.0

_REQUEST_BODY_DOC = upload_body_doc(
    "A zip (or tar) of photographs: multipart field `archive`, or the raw archive (application/zip). "
    "Paths inside are kept in the answer.",
    "archive",
    ("application/zip",),
)

_RESPONSES_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A zip: each colorized photograph under its own path, and manifest.json.",
        "content": {"application/zip": {}},
        "headers": {
            "X-Model-Version": {"description": "The model version used.", "schema": {"type": "string"}},
            "X-Batch-Colorized": {"description": "Files colorized.", "schema": {"type": "integer"}},
            "X-Batch-Failed": {"description": "Files in error or skipped.", "schema": {"type": "integer"}},
        },
    },
    400: {"model": ErrorResponse, "description": "Damaged archive or interrupted upload."},
    404: {"model": ErrorResponse, "description": "No such model version."},
    409: {"model": ErrorResponse, "description": "That model version cannot be loaded."},
    413: {
        "model": ErrorResponse,
        "description": "Upload, file count, entries or unpacked size over a limit.",
    },
    415: {"model": ErrorResponse, "description": "Not a zip or tar archive."},
    422: {"model": ValidationErrorResponse, "description": "Bad query, or no file could be colorized."},
    503: {"model": ErrorResponse, "description": "No model loaded yet, or the server stayed busy."},
}


@dataclass
class ManifestEntry:
    """One archive member in manifest.json."""

    name: str
    output: str | None = None
    status: Literal["ok", "error", "skipped"] = "ok"
    error: str | None = None
    format: str | None = None
    renamed: bool = False
    model_version: int | str | None = None
    # who colorized it: a colorize worker's node name, or "api" (this server); None when not colorized
    colorized_by: str | None = None


def output_name(name: str, requested: str | None) -> tuple[str, str]:
    """(the output path, the format) for input path ``name``: the same path when the format is its
    own (``requested`` None keeps each file's format where it can be written), else the same path
    with the format's extension."""
    path = PurePosixPath(name)
    own = _SUFFIX_FORMATS.get(path.suffix.lower())
    fmt = _SAME_FORMAT[requested] if requested is not None else (own or FALLBACK_FORMAT)
    if own == fmt:
        return name, fmt
    extension = ".jpg" if fmt == "jpeg" else f".{fmt}"
    return str(path.with_suffix(extension)), fmt


def _sentence(exc: Exception) -> str:
    exc = http_error(exc) or exc
    if isinstance(exc, ApiError):
        return exc.detail
    if isinstance(exc, RequestValidationError):
        return summarize_validation_errors(exc.errors()).removeprefix("invalid request: ")
    return str(exc)


class _Batch:
    """One batch being colorized: the model, the output zip, the window of photographs in flight."""

    def __init__(
        self,
        pipeline: Pipeline,
        model: LoadedModel,
        settings: Settings,
        out: zipfile.ZipFile,
        image_format: str | None,
        render_size: int | None,
        limiter: anyio.CapacityLimiter | None,
        hints: dict[str, Any] | None = None,
        remote: RemoteColorizer | None = None,
        window: int | None = None,
    ):
        self.pipeline = pipeline
        self.remote = remote
        self.hints = dict(hints or {})  # member path -> its colour hints (a list of points)
        self.model = model
        self.settings = settings
        self.out = out
        self.image_format = image_format
        self.render_size = render_size
        self.limiter = limiter
        self.window = anyio.Semaphore(window or max(1, min(settings.max_batch_size, settings.max_queue)))
        self.write_lock = anyio.Lock()
        self.entries: list[ManifestEntry] = []
        self.outputs: set[str] = {MANIFEST_NAME}
        self.names: set[str] | None = None  # every member's path, read when a rename first needs it
        self.busy = 0

    async def _wait_for_room(self, deadline: float) -> None:
        """Return when the engine's queue has room; raises EngineBusy after ``deadline``."""
        delay = 0.05
        while True:
            try:
                self.pipeline.engine.check_capacity()
                return
            except EngineBusy:
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(delay)
                delay = min(1.0, delay * 2)

    async def colorize(self, entry: ManifestEntry, data: bytes, hints: Any = None) -> None:
        """Colorize one photograph into the output zip (through a colorize worker when the batch has
        them, else here); its errors go to ``entry``. Releases the window."""
        try:
            encoded = await self._remotely(entry, data, hints) if self.remote is not None else None
            if encoded is None:
                encoded = await self._here(entry, data, hints)
            del data
            async with self.write_lock:
                await anyio.to_thread.run_sync(partial(self.out.writestr, entry.output, encoded))
        except EngineBusy as exc:
            self.busy += 1
            self._fail(entry, exc)
        except (ApiError, RequestValidationError, ValueError) as exc:  # ImageRejected is a ValueError
            self._fail(entry, exc)
        except Exception as exc:  # one photograph must not cost the batch; the log keeps the trace
            log.exception("colorizing batch member %r failed", entry.name)
            self._fail(entry, RuntimeError(f"internal error ({type(exc).__name__}); the server log has it"))
        finally:
            self.window.release()

    async def _remotely(self, entry: ManifestEntry, data: bytes, hints: Any) -> bytes | None:
        """The photograph colorized by a colorize worker; None when none could (this server does it
        then). Raises the inference error a worker refused the photograph with."""
        assert self.remote is not None and entry.format is not None
        send = partial(
            self.remote.submit,
            data,
            version=self.model.version,
            image_format=entry.format,
            render_size=self.render_size,
            hints=hints,
        )
        try:  # in a thread: encoding the photograph and publishing it to the broker block
            future = await anyio.to_thread.run_sync(send, limiter=self.limiter)
        except Exception as exc:  # the broker cannot take it right now
            log.warning(
                "batch member %r: cannot send it to the colorize workers (%s); colorizing it here",
                entry.name,
                exc,
            )
            return None
        try:
            answer = await asyncio.wrap_future(future)
        except RemoteFailed as exc:
            log.warning("batch member %r: %s; colorizing it here", entry.name, exc)
            return None
        if "error" not in answer:
            entry.colorized_by = str(answer.get("worker"))
            return decode_photo(answer["data"])
        refusal = inference_error(answer.get("kind"), answer["error"])
        if refusal is None:  # the worker cannot load the version (its store is not ours?)
            log.warning(
                "batch member %r: worker %s: %s; colorizing it here",
                entry.name,
                answer.get("worker"),
                answer["error"],
            )
            return None
        raise refusal

    async def _here(self, entry: ManifestEntry, data: bytes, hints: Any) -> bytes:
        """The photograph colorized by this server's engine, waiting for room in its queue."""
        assert entry.format is not None
        deadline = time.monotonic() + BUSY_PATIENCE_S
        await self._wait_for_room(deadline)  # before decoding: no work spent while the queue is full
        prepared = await anyio.to_thread.run_sync(
            partial(self.pipeline.decode_and_prepare, data, self.model, self.render_size, hints=hints),
            limiter=self.limiter,
        )
        while True:
            try:
                future = self.pipeline.submit(prepared)
                break
            except EngineBusy:
                await self._wait_for_room(deadline)
        prediction = await asyncio.wrap_future(future)
        encoded = await anyio.to_thread.run_sync(
            partial(self.pipeline.finish_and_encode, prepared, prediction, entry.format),
            limiter=self.limiter,
        )
        entry.colorized_by = "api"
        return encoded

    def _fail(
        self, entry: ManifestEntry, exc: Exception, status: Literal["error", "skipped"] = "error"
    ) -> None:
        entry.status = status
        entry.error = _sentence(exc)
        entry.output = None
        entry.format = None
        entry.renamed = False

    async def run(self, reader: ArchiveReader) -> None:
        """Read every member and colorize the photographs, a window at a time."""
        settings = self.settings
        files = reader.count_files()
        if files is not None and files > settings.max_batch_files:
            raise _too_many_files(settings.max_batch_files)
        failure: Exception | None = None
        async with anyio.create_task_group() as group:
            try:
                await self._feed(reader, group)
            except Exception as exc:  # raised as itself below, not wrapped in the task group's ExceptionGroup
                failure = exc
                group.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _member_paths(self, reader: ArchiveReader) -> set[str]:
        """Every member's path (as ``_feed`` names them), read once, when a renamed output first needs
        to know it takes no other file's name: a tar's names take a pass over the whole stream, which a
        batch that renames nothing never pays."""
        if self.names is None:
            names = await anyio.to_thread.run_sync(reader.member_names)
            self.names = {as_text(path) for path in map(safe_path, names) if path is not None}
        return self.names

    async def _feed(self, reader: ArchiveReader, group: anyio.abc.TaskGroup) -> None:
        """Read members one by one and start a colorization per photograph, within the window."""
        settings = self.settings
        seen_files = 0
        entries = reader.entries()
        while True:
            entry = await anyio.to_thread.run_sync(next, entries, None)
            if entry is None:
                break
            if entry.kind == "dir":
                continue
            seen_files += 1
            if seen_files > settings.max_batch_files:  # a tar: only known while reading
                raise _too_many_files(settings.max_batch_files)
            item = ManifestEntry(as_text(entry.name), model_version=self.model.version)
            hints = self.hints.pop(item.name, None)  # taken even when the file is skipped
            self.entries.append(item)
            skip = _skip_reason(entry.kind, entry.path)
            if skip is not None:
                self._fail(item, ValueError(skip), "skipped")
                continue
            assert entry.path is not None
            path = as_text(entry.path)
            item.output, item.format = output_name(path, self.image_format)
            item.renamed = item.output != path
            if item.renamed and (
                item.output in self.outputs or item.output in await self._member_paths(reader)
            ):
                # a.tif would become a.png, the name of another file: a.tif.png instead
                item.output = f"{path}{PurePosixPath(item.output).suffix}"
            if item.output in self.outputs:
                self._fail(item, ValueError("another file in the archive has the same name"), "skipped")
                continue
            self.outputs.add(item.output)
            await self.window.acquire()
            try:
                data = await anyio.to_thread.run_sync(entry.read, reader.budget, settings.max_upload_bytes)
            except EntryTooLarge:
                self.window.release()
                self._fail(
                    item,
                    ValueError(
                        f"the file is larger than {settings.max_upload_bytes} bytes "
                        "(COLORIZER_MAX_UPLOAD_BYTES): send a smaller photograph"
                    ),
                )
                continue
            except EntryUnreadable as exc:
                self.window.release()
                self._fail(item, ValueError(f"the file cannot be read from the archive ({exc})"))
                continue
            except BaseException:
                self.window.release()
                raise
            group.start_soon(self.colorize, item, data, hints)

    def manifest(self) -> dict[str, Any]:
        counts = {
            status: sum(1 for e in self.entries if e.status == status)
            for status in ("ok", "error", "skipped")
        }
        return {
            "model_version": self.model.version,
            "format": self.image_format or "each file's own (png when it cannot be written)",
            "render_size": self.render_size,
            "counts": counts,
            "files": [asdict(e) for e in self.entries],
        }


def _too_many_files(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the archive holds more than {limit} files (COLORIZER_MAX_BATCH_FILES): "
        "split it into smaller batches",
    )


BatchHintsQuery = Annotated[
    str | None,
    Query(
        description="Colour hints per file, as JSON: an object from each file's path in the archive to its "
        'hints (as POST /colorize takes them), e.g. `{"family/1931.jpg": [{"x": 120, "y": 80, "color": '
        '"#aa3311"}]}`. A multipart upload may send it as the field `hints` instead. A file\'s bad hints '
        "cost that file (its manifest entry says why), not the batch.",
    ),
]


def batch_hints(text: str, location: str) -> dict[str, Any]:
    """The per-file hints of a batch request; raises a 422 unless a JSON object of lists."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise field_error(location, "hints", f"hints must be JSON: {exc}", text) from None
    except RecursionError:  # Python's parser gives up on arrays or objects nested about 1000 deep
        raise field_error(
            location, "hints", "hints must be JSON nested at most a few levels deep", text
        ) from None
    if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
        raise field_error(
            location,
            "hints",
            'hints for a batch must be an object from file paths to lists of points, such as {"a.jpg": '
            '[{"x": 10, "y": 20, "color": "#aa3311"}]}',
            text,
        )
    return value


def as_text(name: str) -> str:
    """A member's name as text that can be written: bytes of it that are not UTF-8 (which tarfile
    keeps as lone surrogates, and no zip entry or JSON text can hold) shown as U+FFFD."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that no byte made
        return name.encode("utf-8", "replace").decode("utf-8")


def _skip_reason(kind: str, path: str | None) -> str | None:
    if path is None:
        return "unsafe path (absolute, '..' or a drive letter): not colorized"
    if kind == "link":
        return "a link, not a file: not colorized"
    if kind == "special":
        return "not a regular file: not colorized"
    if is_hidden(path):
        return "a hidden or system file: not colorized"
    return None


def _write_manifest(out: zipfile.ZipFile, manifest: dict[str, Any]) -> None:
    out.writestr(MANIFEST_NAME, json.dumps(manifest, indent=2), compress_type=zipfile.ZIP_DEFLATED)
    out.close()


@router.post(
    "/colorize/batch",
    response_class=FileResponse,
    responses=_RESPONSES_DOC,
    openapi_extra=_REQUEST_BODY_DOC,
)
async def colorize_batch(
    request: Request,
    pipeline: PipelineDep,
    settings: SettingsDep,
    image_format: Annotated[
        BatchFormat | None,
        Query(alias="format", description="Output format for every file. Default: each file's own."),
    ] = None,
    render_size: RenderSizeQuery = None,
    model: ModelQuery = None,
    hints: BatchHintsQuery = None,
) -> FileResponse:
    """Colorize every photograph of a zip; the answer is a zip of the results plus manifest.json."""
    version = requested_version(model)
    per_file = batch_hints(hints, "query") if hints is not None else None
    # one version for the whole batch; a bad render_size is refused before the upload is read
    used = await anyio.to_thread.run_sync(pipeline.engine.model, version)
    pipeline.engine.check_render_size(used, render_size)
    staging = Path(tempfile.mkdtemp(prefix=".batch-", dir=settings.data_dir))
    cleanup = partial(shutil.rmtree, staging, ignore_errors=True)
    try:
        received = await receive_archive(
            request,
            staging / "upload",
            settings.max_batch_bytes,
            setting="COLORIZER_MAX_BATCH_BYTES",
            text_fields=("hints",),
        )
        if "hints" in received.fields:
            if per_file is not None:
                raise field_error("query", "hints", "send hints once: as the multipart field or the query")
            per_file = batch_hints(received.fields["hints"], "body")
        if per_file and not used.hints:
            raise field_error("body", "hints", str(NoHintInputs(used.version)))
        reader = await anyio.to_thread.run_sync(
            partial(
                ArchiveReader,
                received.path,
                max_entries=settings.max_archive_entries,
                max_unpacked_bytes=settings.max_unpacked_bytes,
            )
        )
        result = staging / "colorized.zip"
        remote, window = await anyio.to_thread.run_sync(get_fanout, request)
        with await anyio.to_thread.run_sync(reader.__enter__), zipfile.ZipFile(result, "w") as out:
            batch = _Batch(
                pipeline,
                used,
                settings,
                out,
                image_format,
                render_size,
                getattr(request.app.state, "inference_limiter", None),
                per_file,
                remote,
                window or None,
            )
            await batch.run(reader)
            for name in batch.hints:  # hints for a name no file of the archive has
                missing = "hints given for a file that is not in the archive"
                batch.entries.append(ManifestEntry(name, status="skipped", error=missing))
            manifest = batch.manifest()
            counts = manifest["counts"]
            if counts["ok"] == 0:
                _refuse_empty(batch, manifest)
            await anyio.to_thread.run_sync(_write_manifest, out, manifest)
    except BaseException as exc:
        await anyio.to_thread.run_sync(cleanup)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ApiError(507, "the server's disk is full: retry later or send a smaller batch") from exc
        raise
    log.info(
        "batch colorized with version %s: %s%s",
        used.version,
        counts,
        f" (through {window} photographs in flight to the colorize workers)" if remote is not None else "",
    )
    headers = {
        "X-Model-Version": str(used.version),
        "X-Batch-Colorized": str(counts["ok"]),
        "X-Batch-Failed": str(counts["error"] + counts["skipped"]),
        "Cache-Control": "no-store",
    }
    # The zip streams from disk; the temporary folder goes once it is sent (or the client left).
    return FileResponse(
        result,
        media_type="application/zip",
        filename="colorized.zip",
        headers=headers,
        background=BackgroundTask(cleanup),
    )


def _refuse_empty(batch: _Batch, manifest: dict[str, Any]) -> None:
    """Raise the error for a batch where nothing was colorized: 503 if only the queue was in the way,
    else 422 with the manifest's entries."""
    files = manifest["files"]
    if not files:
        raise _unusable("the archive holds no file at all: put photographs in it", files)
    if batch.busy and batch.busy == manifest["counts"]["error"]:
        raise ApiError(
            503,
            "the server stayed too busy to colorize this batch: retry in a while",
            headers={"Retry-After": "10"},
            files=files,
        )
    reasons = "; ".join(f"{f['name']}: {f['error']}" for f in files[:5])
    more = f" (and {len(files) - 5} more)" if len(files) > 5 else ""
    raise _unusable(f"no file of the archive could be colorized: {reasons}{more}", files)


def _unusable(detail: str, files: list[dict[str, Any]]) -> ApiError:
    """The 422 of a batch with nothing colorized: the archive is the request field at fault
    (``errors``, as in every 422), and ``files`` says what became of each file."""
    error = {"type": "value_error", "loc": ["body", "archive"], "msg": detail, "input": None}
    return ApiError(422, detail, files=files, errors=[error])
