"""The model store's layout, listing and publishing, without loading anything: a
TensorFlow-Serving-style repository of versions on a shared volume, readable by any process.

Layout::

    <root>/<version>/generator.keras    the generator (or generator.weights.npz: float16 weights)
    <root>/<version>/metadata.json      preset, image size, training config, job id, step, ...

Versions are positive integers. Publishing writes a hidden temporary directory on the same volume
and renames it into place, so a reader sees a whole version or none. A publisher that fails (full
disk, read-only store) removes its temporary directory; one that is killed mid-publish leaves it,
and the next publish removes such leftovers once they are an hour old. Loading a version's
generator is ``models.store.ModelStore``'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.objectstore import MIRRORED, mirror_of

log = logging.getLogger(__name__)

GENERATOR_FILE = "generator.keras"
# Compact alternative: float16 weights of a generator rebuilt from metadata (the shipped default).
WEIGHTS_FILE = "generator.weights.npz"
DEFAULT_VERSION = "default"
METADATA_FILE = "metadata.json"
TEMP_PREFIX = ".tmp-"
# Where versions deleted by retention go first: one rename hides a version whole (common.labels).
TRASH_PREFIX = ".trash-"
# The store's own files beside the versions: the labels (common.labels) and the versions a
# replica refused (common.refusals).
LABELS_FILE = "labels.json"
REFUSALS_FILE = "refused.json"
_STORE_FILES = frozenset({LABELS_FILE, REFUSALS_FILE})
# A publisher's temporary directory older than this was left by a killed process.
STALE_TEMP_SECONDS = 3600.0


# Version numbers are ASCII digits: str.isdigit() also takes "²" (int() refuses it) and "١٢" or
# "１" (int() reads them as 12 and 1).
_VERSION_NUMBER = re.compile(r"[0-9]+")
# A published version's folder is readable by an API running as another user on the shared volume
# (mkdtemp creates it 0700).
VERSION_DIR_MODE = 0o755


# Far beyond any real store; a longer number is not a version (and would be too long a file name).
MAX_VERSION_DIGITS = 18


def parse_version(text: Any) -> int | None:
    """``text`` as a version number (ASCII digits, above zero), or None for anything else."""
    if isinstance(text, str) and len(text) <= MAX_VERSION_DIGITS and _VERSION_NUMBER.fullmatch(text):
        number = int(text)
        return number if number > 0 else None
    return None


class UnknownVersion(LookupError):
    """No such version in the store."""


class BrokenVersion(RuntimeError):
    """A version directory exists but cannot be loaded (truncated file, bad JSON, wrong shapes)."""


Version = int | str  # a published version number, or DEFAULT_VERSION


def version_key(version: int | str) -> Version:
    """``version`` as the store and the engine key it: a positive int or ``"default"``; raises UnknownVersion.

    Accepts what clients send: ``3``, ``"3"``, ``"default"`` (any case, surrounding spaces).
    """
    if isinstance(version, str):
        text = version.strip().lower()
        if text == DEFAULT_VERSION:
            return DEFAULT_VERSION
        number = parse_version(text)
        if number is not None:
            return number
    elif isinstance(version, int) and not isinstance(version, bool) and version > 0:
        return version
    raise UnknownVersion(
        f"model version {version!r} does not exist (versions are positive numbers in ASCII digits, "
        f"or {DEFAULT_VERSION!r})"
    )


def version_from_json(value: Any) -> Version | None:
    """A version as written in the store's JSON files (a number, its digits, or "default"); None
    for anything else."""
    if value == DEFAULT_VERSION:
        return DEFAULT_VERSION
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return parse_version(value) if isinstance(value, str) else None


def version_rank(version: Version) -> int:
    """Order of preference: the packaged default below every published version."""
    return 0 if version == DEFAULT_VERSION else int(version)


@dataclass(frozen=True)
class VersionInfo:
    version: int | str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


def read_metadata(path: Path) -> dict[str, Any]:
    """metadata.json of a version directory; raises BrokenVersion if missing or not a JSON object."""
    try:
        data = json.loads((path / METADATA_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BrokenVersion(f"{path}: unreadable {METADATA_FILE}: {exc}") from exc
    if not isinstance(data, dict):
        raise BrokenVersion(f"{path}: {METADATA_FILE} is not a JSON object")
    return data


class VersionStore:
    """Integer-versioned folders under ``root``: listed, read and published; safe for concurrent
    readers and publishers.

    ``default_dir`` is the folder of the version called ``"default"`` (served while the store has
    no loadable version); None: the store has no default.
    """

    def __init__(self, root: Path | str, default_dir: Path | str | None = None):
        self.root = Path(root)
        self.default_dir = Path(default_dir) if default_dir is not None else None
        self._ignored: set[str] = set()  # names already logged as not a version

    def _version_dirs(self) -> list[tuple[int, Path]]:
        mirror = mirror_of(self.root)
        if mirror is not None:  # the folder follows a bucket (common.objectstore)
            mirror.sync()
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            version = parse_version(child.name)
            if version is not None and child.is_dir():
                found.append((version, child))
            elif not child.name.startswith(".") and child.name not in _STORE_FILES | self._ignored:
                self._ignored.add(child.name)
                log.warning(
                    "ignoring %r in the model store: versions are folders named by a positive "
                    "number in ASCII digits",
                    child.name,
                )
        return sorted(found)

    def public_reason(self, exc: BaseException) -> str:
        """``exc``'s message with this store's and the default model's folders named, not shown
        (answers to clients carry no server paths)."""
        text = str(exc).replace(f"{self.root}{os.sep}", "version ")
        return text.replace(str(self.default_dir), "the default model") if self.default_dir else text

    def versions(self) -> list[int]:
        """Version numbers present, ascending (without reading metadata)."""
        return [v for v, _ in self._version_dirs()]

    def list(self) -> list[VersionInfo]:
        """Every version with its metadata, ascending; unreadable metadata shows as an error field."""
        infos = []
        for version, path in self._version_dirs():
            try:
                metadata = read_metadata(path)
            except BrokenVersion as exc:
                metadata = {"error": self.public_reason(exc)}
            infos.append(VersionInfo(version, path, metadata))
        return infos

    def latest(self) -> VersionInfo | None:
        """The highest version, or None when the store is empty."""
        dirs = self._version_dirs()
        if not dirs:
            return None
        version, path = dirs[-1]
        try:
            metadata = read_metadata(path)
        except BrokenVersion as exc:
            metadata = {"error": self.public_reason(exc)}
        return VersionInfo(version, path, metadata)

    def get(self, version: int | str) -> VersionInfo:
        """One version's info; raises UnknownVersion."""
        number = self._number(version)
        path = self.version_dir(number)
        if not path.is_dir():
            raise UnknownVersion(f"model version {version} does not exist")
        return VersionInfo(number, path, read_metadata(path))

    def version_dir(self, number: int) -> Path:
        """Where version ``number`` is (or would be) in the folder; a folder following a bucket
        looks at the bucket first when it does not have it yet."""
        path = self.root / str(number)
        mirror = mirror_of(self.root)
        if mirror is not None and not path.is_dir():
            mirror.fetch(number)
        return path

    @staticmethod
    def _number(version: int | str) -> int:
        number = version if isinstance(version, int) and not isinstance(version, bool) else None
        if isinstance(version, str):
            number = parse_version(version.strip())
        if number is None or not 0 < number < 10**MAX_VERSION_DIGITS:
            raise UnknownVersion(
                f"model version {version!r} does not exist (versions are positive numbers in ASCII digits)"
            )
        return number

    def has_default(self) -> bool:
        """Whether the store has a default model (served while it has no loadable version)."""
        return self.default_dir is not None and (self.default_dir / METADATA_FILE).is_file()

    def publish_files(self, write: Callable[[Path], None], metadata: dict[str, Any]) -> int:
        """Publish what ``write(folder)`` writes into an empty folder, with ``metadata``, as the
        next version; returns its number.

        The version appears atomically (rename of a finished temporary directory). Raises OSError
        if the store is not writable or the disk is full; no partial version is left behind.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temp_dirs()
        tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-", dir=self.root))
        try:
            os.chmod(tmp, VERSION_DIR_MODE)
            write(tmp)
            mirror = mirror_of(self.root)
            for attempt in range(100):
                version = max([*self.versions(), *(mirror.versions()[1] if mirror else ()), 0]) + 1
                meta = {
                    **metadata,
                    "version": version,
                    "created_at": metadata.get("created_at") or time.time(),
                }
                write_json(tmp / METADATA_FILE, meta)
                if mirror is not None:  # the number is taken in the bucket, where it is shared
                    if not mirror.claim(version):
                        continue
                    mirror.upload(version, tmp)
                    (tmp / MIRRORED).touch()
                try:
                    # rename() of a directory onto an existing non-empty one fails: no overwrite.
                    os.rename(tmp, self.root / str(version))
                except OSError:
                    if (self.root / str(version)).exists() and attempt < 99:
                        continue  # another publisher took this number; take the next
                    raise
                log.info("published model version %s to %s", version, self.root)
                return version
            raise OSError("could not allocate a model version")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def remove_stale_temp_dirs(self, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
        """Remove temporary directories of publishers killed mid-publish, and versions retention was
        killed while deleting; returns what was removed."""
        removed = []
        now = time.time()
        leftovers = [*self.root.glob(f"{TEMP_PREFIX}*"), *self.root.glob(f"{TRASH_PREFIX}*")]
        for child in leftovers:
            try:
                trash = child.name.startswith(TRASH_PREFIX)  # hidden already: no reader left
                if child.is_dir() and (trash or now - child.stat().st_mtime > older_than):
                    shutil.rmtree(child)
                    removed.append(child)
            except OSError as exc:
                log.warning("cannot remove the leftover %s: %s", child, exc)
        return removed


def write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())


_THREAD_LOCKS: dict[Path, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing) for the ``with`` block: one writer at a
    time across processes (``flock``, on one machine or a shared volume where it works) and across
    this process's threads (on NFS, Linux's ``flock`` is a POSIX lock, which a process's threads
    share)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _THREAD_LOCKS_GUARD:
        in_process = _THREAD_LOCKS.setdefault(path.resolve(), threading.Lock())
    with in_process:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def replace_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` as a whole: a temporary file beside it, synced, then renamed over
    it, so a reader sees the old content or the new, never a mix. Readable by other users."""
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.stem}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
