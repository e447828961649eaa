"""Model versions that failed to load, remembered with their files' modification times: a broken
version is not tried again until one of its files changes (a re-publish, a repaired copy)."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass

from common.store import DEFAULT_VERSION, GENERATOR_FILE, METADATA_FILE, WEIGHTS_FILE, Version
from models.store import ModelStore

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAX_REASON = 400

Signature = tuple[int | None, ...]


def one_line(text: str) -> str:
    """An error message fit for a log line and a JSON answer: one line, no colours, bounded."""
    text = " ".join(_ANSI.sub("", text).split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


@dataclass(frozen=True)
class _Failure:
    signature: Signature
    reason: str


class FailedVersions:
    """Thread-safe memory of the versions of ``store`` that could not be served, and why."""

    def __init__(self, store: ModelStore):
        self.store = store
        self._failed: dict[Version, _Failure] = {}
        self._lock = threading.Lock()

    def signature(self, version: Version) -> Signature:
        """The modification times of the version's files (None for a missing one)."""
        folder = self.store.default_dir if version == DEFAULT_VERSION else self.store.root / str(version)
        stamps: list[int | None] = []
        for name in (GENERATOR_FILE, WEIGHTS_FILE, METADATA_FILE):
            try:
                stamps.append(os.stat(folder / name).st_mtime_ns if folder is not None else None)
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def known(self, version: Version) -> str | None:
        """Why ``version`` failed, while its files are the ones that failed; else None."""
        with self._lock:
            failure = self._failed.get(version)
        if failure is not None and failure.signature == self.signature(version):
            return failure.reason
        return None

    def record(self, version: Version, signature: Signature, reason: str) -> None:
        with self._lock:
            self._failed[version] = _Failure(signature, reason)

    def forget(self, version: Version) -> None:
        with self._lock:
            self._failed.pop(version, None)

    def reasons(self) -> dict[Version, str]:
        with self._lock:
            return {v: f.reason for v, f in self._failed.items()}
