"""Model versions that failed to load, remembered with their files' modification times: a broken
version is not tried again until one of its files changes (a re-publish, a repaired copy).

A failure is also written to the store's shared refusals (``common.refusals``), and a version
another replica refused counts as failed here too: replicas on one store refuse the same versions.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from dataclasses import dataclass

from common.refusals import Refusals
from common.store import (
    DEFAULT_VERSION,
    GENERATOR_FILE,
    METADATA_FILE,
    WEIGHTS_FILE,
    BrokenVersion,
    Version,
    version_from_json,
)
from models.store import ModelStore

log = logging.getLogger(__name__)

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
    shared: bool  # also written to the store: the store's entry is then the authority


# Causes that say nothing about the files (this replica's memory, a flaky disk or network share):
# a load that failed so is remembered here only, never refused for every replica.
_TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.EAGAIN, errno.ENOMEM, errno.ETIMEDOUT})


def about_the_files(exc: BaseException) -> bool:
    """Whether a failed load says the version's files are bad (any replica would fail the same):
    a BrokenVersion whose causes hold no memory, resource or I/O error."""
    if not isinstance(exc, BrokenVersion):
        return False  # it loaded, then failed on a test image: this replica's runtime
    cause: BaseException | None = exc
    while cause is not None:
        name = type(cause).__name__
        if isinstance(cause, MemoryError) or "ResourceExhausted" in name or "OutOfMemory" in name:
            return False
        if isinstance(cause, OSError) and cause.errno in _TRANSIENT_ERRNOS:
            return False
        cause = cause.__cause__ or cause.__context__
    return True


class FailedVersions:
    """Thread-safe memory of the versions of ``store`` that could not be served, and why (here or,
    through the store, by another replica)."""

    def __init__(self, store: ModelStore):
        self.store = store
        self.shared = Refusals(store.root)
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
        """Why ``version`` failed (here, or at another replica), while its files are the ones that
        failed; else None."""
        with self._lock:
            failure = self._failed.get(version)
        signature = self.signature(version)
        elsewhere = self.refused_elsewhere(version, signature)
        if failure is not None and failure.signature == signature:
            if not failure.shared or elsewhere is not None:
                return failure.reason
            with self._lock:  # its shared refusal was withdrawn (colorizer models retry): try again
                self._failed.pop(version, None)
            return None
        return elsewhere

    def refused_elsewhere(
        self, version: Version, signature: Signature | None = None, entries: dict | None = None
    ) -> str | None:
        """Why another replica refused ``version`` (these very files), or None."""
        reason = self.shared.get(version, signature or self.signature(version), entries)
        return one_line(reason) if reason is not None else None

    def record(self, version: Version, signature: Signature, reason: str, share: bool = True) -> None:
        """Remember that ``version`` (these files) failed; ``share`` also refuses it for every
        replica (only for failures about the files: ``about_the_files``)."""
        shared = False
        if share:
            try:
                self.shared.record(version, signature, reason)
                shared = True
            except OSError as exc:  # a read-only store: this replica still remembers
                log.warning("cannot share the refusal of version %s: %s", version, exc)
        with self._lock:
            self._failed[version] = _Failure(signature, reason, shared)

    def forget(self, version: Version) -> None:
        """``version`` loaded: no refusal of it applies any more, here or in the store."""
        with self._lock:
            self._failed.pop(version, None)
        if str(version) in self.shared.read():
            try:
                self.shared.forget(version)
            except OSError as exc:
                log.warning("cannot clear the refusal of version %s: %s", version, exc)

    def reasons(self) -> dict[Version, str]:
        """Every version refused here or (for the files it has now) by another replica."""
        with self._lock:
            reasons = {v: f.reason for v, f in self._failed.items()}
        entries = self.shared.read()
        for key in entries:
            version = version_from_json(key)  # None: not a version (a hand-edited file)
            if version is None or version in reasons:
                continue
            if (reason := self.refused_elsewhere(version, entries=entries)) is not None:
                reasons[version] = reason
        return reasons
