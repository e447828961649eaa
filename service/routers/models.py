"""The model store's versions and which one is served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

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


@router.get("", response_model=ModelsResponse)
def list_models(store: StoreDep, engine: EngineDep) -> ModelsResponse:
    """Every version in the store, oldest first, with its metadata, and the one /colorize serves."""
    current = engine.current
    served = int(current.version) if current is not None else None
    cached = set(engine.cached_versions())
    failed = engine.failed_versions()
    versions = []
    for info in store.list():
        version = int(info.version)
        meta = info.metadata
        versions.append(
            ModelInfo(
                version=version,
                preset=meta.get("preset") if isinstance(meta.get("preset"), str) else None,
                image_size=_as_int(meta.get("image_size")),
                created_at=_as_float(meta.get("created_at")),
                served=version == served,
                loaded=version == served or version in cached,
                error=failed.get(version) or meta.get("error"),
                metadata=meta,
            )
        )
    return ModelsResponse(served=served, device=engine.device, versions=versions)
