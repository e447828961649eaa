"""The model store's versions, the packaged default model, which one is served, and the labels."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Response

from common.labels import BadLabel, LabelsUnreadable, check_label
from common.store import (
    DEFAULT_VERSION,
    BrokenVersion,
    UnknownVersion,
    Version,
    VersionStore,
    read_metadata,
    version_key,
)
from service.deps import EngineDep, StoreDep, require_api_key
from service.errors import ApiError, field_error
from service.schemas import (
    ErrorResponse,
    LabelMoved,
    LabelsResponse,
    LabelTarget,
    ModelInfo,
    ModelsResponse,
    ValidationErrorResponse,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/models", tags=["models"])

_KEYED = {401: {"model": ErrorResponse, "description": "Missing or wrong API key."}}


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def default_metadata(store: VersionStore) -> dict[str, Any]:
    """metadata.json of the store's default model (an ``error`` field when unreadable)."""
    try:
        return read_metadata(store.default_dir)
    except BrokenVersion:
        return {"error": "the default model's metadata.json is unreadable"}


@router.get("", response_model=ModelsResponse)
def list_models(store: StoreDep, engine: EngineDep) -> ModelsResponse:
    """The packaged default model (when installed) then every version in the store, oldest first,
    each with its metadata and metrics, and the one /colorize serves."""
    current = engine.current
    served = current.version if current is not None else None
    try:
        labels = engine.chooser.labels.read()
    except LabelsUnreadable as exc:
        log.warning("GET /models lists no labels: %s", exc)
        labels = {}
    cached = set(engine.cached_versions())
    runtimes = engine.loaded_runtimes()
    failed = engine.failed_versions()
    listed: list[tuple[int | str, dict[str, Any]]] = []
    if store.has_default():
        listed.append((DEFAULT_VERSION, default_metadata(store)))
    listed += [(int(info.version), info.metadata) for info in store.list()]
    versions = []
    for version, meta in listed:
        metrics = meta.get("metrics")
        versions.append(
            ModelInfo(
                version=version,
                preset=meta.get("preset") if isinstance(meta.get("preset"), str) else None,
                image_size=_as_int(meta.get("image_size")),
                render_size=_as_int(meta.get("render_size", meta.get("image_size"))),
                hints=meta.get("hints") is True,
                created_at=_as_float(meta.get("created_at")),
                served=version == served,
                labels=sorted(name for name, target in labels.items() if target == version),
                loaded=version == served or version in cached,
                runtime=runtimes.get(version),
                error=failed.get(version) or meta.get("error"),
                metrics=metrics if isinstance(metrics, dict) else None,
                metadata=meta,
            )
        )
    return ModelsResponse(
        served=served,
        policy=str(engine.chooser.policy),
        labels=labels,
        replicas=engine.reporter.reports.live(),
        device=engine.device,
        versions=versions,
    )


@router.get("/labels", response_model=LabelsResponse, responses={503: {"model": ErrorResponse}})
def list_labels(engine: EngineDep) -> LabelsResponse:
    """Every label and the version it points at, and the serving policy (COLORIZER_SERVE)."""
    return LabelsResponse(policy=str(engine.chooser.policy), labels=engine.chooser.labels.read())


def _unwritable(exc: OSError) -> ApiError:
    return ApiError(503, f"the model store cannot be written, so the label stays: {exc.strerror or exc}")


_UNWRITABLE = {503: {"model": ErrorResponse, "description": "The store cannot be written (or read)."}}


def _label_name(name: str) -> str:
    try:
        return check_label(name)
    except BadLabel as exc:
        raise field_error("path", "name", str(exc), name) from None


@router.put(
    "/labels/{name}",
    response_model=LabelMoved,
    dependencies=[Depends(require_api_key)],
    responses={
        **_KEYED,
        409: {"model": ErrorResponse, "description": "That version cannot be loaded; the label stays."},
        **_UNWRITABLE,
        422: {"model": ValidationErrorResponse, "description": "Bad label name, or no such version."},
    },
)
def move_label(name: str, target: LabelTarget, engine: EngineDep, store: StoreDep) -> LabelMoved:
    """Point a label at a version (creating the label). The version is loaded and tried on a test
    image first: a version that cannot be served is refused (409) and the label does not move.
    Every replica following the label switches at its next look at the store."""
    name = _label_name(name)
    try:
        version: Version = version_key(target.version)
        if version == DEFAULT_VERSION and not store.has_default():
            raise UnknownVersion("no default model is installed")
        engine.model(version)  # blocking (a sync route runs in a worker thread); raises BrokenVersion
        previous = engine.chooser.labels.set(name, version)
    except OSError as exc:  # a read-only store, a full disk
        raise ApiError(
            503, f"the model store cannot be written, so the label stays: {exc.strerror}"
        ) from None
    except UnknownVersion as exc:  # also a version deleted by retention meanwhile
        raise field_error(
            "body", "version", f"{exc} (GET /models lists the versions)", target.version
        ) from None
    log.info("label %r moved to version %s (was %s)", name, version, previous)
    return LabelMoved(label=name, version=version, previous=previous)


@router.delete(
    "/labels/{name}",
    status_code=204,
    dependencies=[Depends(require_api_key)],
    responses={
        **_KEYED,
        404: {"model": ErrorResponse, "description": "No such label."},
        **_UNWRITABLE,
        422: {"model": ValidationErrorResponse, "description": "A name that cannot be a label."},
    },
)
def delete_label(name: str, engine: EngineDep) -> Response:
    """Delete a label. Replicas that follow it keep serving what they serve."""
    try:
        previous = engine.chooser.labels.remove(_label_name(name))
    except OSError as exc:
        raise ApiError(
            503, f"the model store cannot be written, so the label stays: {exc.strerror}"
        ) from None
    log.info("label %r deleted (it pointed at version %s)", name, previous)
    return Response(status_code=204)
