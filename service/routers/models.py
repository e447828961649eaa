"""The model store's versions, the packaged default model, and which one is served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from common.store import DEFAULT_VERSION, BrokenVersion, VersionStore, read_metadata
from service.deps import EngineDep, StoreDep
from service.schemas import ModelInfo, ModelsResponse

router = APIRouter(prefix="/models", tags=["models"])


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
    cached = set(engine.cached_versions())
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
                created_at=_as_float(meta.get("created_at")),
                served=version == served,
                loaded=version == served or version in cached,
                error=failed.get(version) or meta.get("error"),
                metrics=metrics if isinstance(metrics, dict) else None,
                metadata=meta,
            )
        )
    return ModelsResponse(served=served, device=engine.device, versions=versions)
