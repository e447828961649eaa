"""Training datasets under ``<data_dir>/datasets``: import an uploaded archive, list, describe, delete.

A dataset is a folder of colour photographs, read by the training pipeline (``models.data``) with
its subfolders and by file suffix (``IMAGE_SUFFIXES``). An upload is extracted into a staging
folder ``.incoming-<random>`` inside the datasets folder (same file system) and renamed into place
only once complete, so a failure of any kind (a limit, a full disk, a client gone) leaves nothing
a job could name. Only images are written: every other member is skipped and counted by kind, and
unsafe members (absolute or ``..`` paths, links, devices) are skipped too, never refused whole, so
one stray entry does not cost the upload; none of them ever touches the disk.

``dataset.json`` in the folder records what the import found, so listing is cheap; folders placed
by hand without one are described by a quick scan of file names.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from common.datasets import DATASET_MANIFEST, IMAGE_SUFFIXES
from common.photos import PHOTO_FORMATS
from models.config import DATASET_NAME
from service.archives import ArchiveReader, EntryUnreadable, is_hidden
from service.errors import ApiError, field_error

log = logging.getLogger(__name__)

# The same rule as TrainConfig.dataset (models/config.py), so every uploaded dataset can be named by a job.
MANIFEST_FILE = DATASET_MANIFEST  # models/data.py skips it when training
STAGING_PREFIX = ".incoming-"
TRASH_PREFIX = ".deleting-"
# Leftover staging or trash folders older than this (a crash mid-upload) are removed.
STALE_AFTER_S = 24 * 3600
# Members that are archives themselves: never extracted, counted apart from other non-images.
ARCHIVE_SUFFIXES = frozenset({".zip", ".tar", ".gz", ".tgz", ".bz2", ".tbz2", ".xz", ".txz", ".7z", ".rar"})
# The validation decode: JPEGs decode at a reduced scale (fast), other formats in full.
_DRAFT_SIDE = 64
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass(frozen=True)
class DatasetLimits:
    """What an uploaded archive may hold (from Settings)."""

    max_entries: int
    max_unpacked_bytes: int
    max_image_pixels: int
    min_image_side: int


def check_name(name: str, location: str = "query") -> str:
    """``name`` when it is a valid dataset name; raises a 422 naming ``name`` at ``location``."""
    if not DATASET_NAME.fullmatch(name) or ".." in name:
        raise field_error(
            location,
            "name",
            "a dataset name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            "(no '..')",
            name,
        )
    return name


def unknown_dataset(name: str) -> ApiError:
    return ApiError(404, f"dataset {name!r} does not exist; GET /datasets lists the datasets there are")


def dataset_exists(name: str) -> ApiError:
    return ApiError(
        409, f"dataset {name!r} already exists: choose another name, or DELETE /datasets/{name} first"
    )


def check_image(path: Path, limits: DatasetLimits) -> int | str:
    """The image's pixel count when it is usable for training, else the reason to skip it.

    The size comes from the header, before any pixel is decoded; then a real decode (reduced scale
    for JPEG) catches damaged and truncated files.
    """
    try:
        with Image.open(path, formats=PHOTO_FORMATS) as image:
            width, height = image.size
            if width * height > limits.max_image_pixels:
                return "too many pixels"
            if min(width, height) < limits.min_image_side:
                return "too small"
            image.draft("RGB", (_DRAFT_SIDE, _DRAFT_SIDE))
            image.load()
    except Image.DecompressionBombError:
        return "too many pixels"
    except Exception:  # Pillow raises many types for a damaged or foreign file
        return "unreadable image"
    return width * height


def _skip_reason(path: str) -> str | None:
    """Why a member with this safe path is not extracted, or None for an image to check."""
    if is_hidden(path):
        return "hidden or system file"
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in ARCHIVE_SUFFIXES:
        return "nested archive"
    if suffix not in IMAGE_SUFFIXES:
        return "not an image file type"
    return None


def _summary(counts: Counter) -> str:
    return ", ".join(f"{n} {why}" for why, n in counts.most_common()) or "no files"


class DatasetStore:
    """The datasets folder (``Settings.datasets_dir``)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # -- reading -------------------------------------------------------------------------------

    def _folder(self, name: str) -> Path:
        """The existing dataset folder ``name``; raises ApiError 404 if it is not a usable dataset."""
        if not DATASET_NAME.fullmatch(name) or ".." in name:
            raise unknown_dataset(name)
        folder = self.root / name
        root = self.root.resolve()
        resolved = folder.resolve()
        # The rule of the jobs route: a dataset must stay inside the datasets folder.
        if not folder.is_dir() or resolved.parent != root:
            raise unknown_dataset(name)
        return folder

    def exists(self, name: str) -> bool:
        """True when anything (a folder, a file, a link) already has this name."""
        path = self.root / name
        return path.exists() or path.is_symlink()

    def names(self) -> list[str]:
        """Names of the datasets, sorted (staging and trash folders are never listed)."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            try:
                self._folder(child.name)
            except ApiError:
                continue
            found.append(child.name)
        return sorted(found)

    def describe(self, name: str) -> dict[str, Any]:
        """What is known of dataset ``name``: from its manifest, or a scan of file names when it was
        placed by hand (pixels then unknown). Raises ApiError 404."""
        folder = self._folder(name)
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
            if isinstance(manifest, dict) and isinstance(manifest.get("images"), int):
                return {**manifest, "name": name, "source": "upload"}
        except (OSError, ValueError):
            pass  # no manifest (or a damaged one): describe the folder as it is
        return self._scan(name, folder)

    def _scan(self, name: str, folder: Path) -> dict[str, Any]:
        images = 0
        size = 0
        skipped: Counter = Counter()
        for dirpath, _, files in os.walk(folder):  # os.walk does not follow links into folders
            for file_name in files:
                path = Path(dirpath) / file_name
                relative = path.relative_to(folder).as_posix()
                reason = _skip_reason(relative)
                if reason is not None:
                    skipped[reason] += 1
                    continue
                try:
                    size += path.stat().st_size
                except OSError:
                    skipped["unreadable image"] += 1
                    continue
                images += 1
        return {
            "name": name,
            "images": images,
            "skipped": sum(skipped.values()),
            "skipped_reasons": dict(skipped),
            "pixels": None,
            "bytes": size,
            "created_at": folder.stat().st_mtime,
            "source": "folder",
        }

    # -- writing -------------------------------------------------------------------------------

    def new_staging(self) -> Path:
        """A fresh, empty staging folder inside the datasets folder (created with it if needed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep_stale()
        staging = self.root / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        return staging

    def sweep_stale(self, max_age: float = STALE_AFTER_S) -> None:
        """Remove staging and trash folders older than ``max_age`` seconds (left by a crash)."""
        cutoff = time.time() - max_age
        for child in self.root.iterdir():
            if child.name.startswith((STAGING_PREFIX, TRASH_PREFIX)) and not child.is_symlink():
                try:
                    if child.stat().st_mtime < cutoff:
                        log.info("removing the leftover %s", child)
                        shutil.rmtree(child, ignore_errors=True)
                except OSError:
                    continue

    def import_archive(
        self,
        archive: Path,
        staging: Path,
        name: str,
        limits: DatasetLimits,
        source: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Extract the images of ``archive`` into ``staging``, check each, and move them into place as
        dataset ``name``; returns its description (also written as ``dataset.json``).

        Blocking. Raises ApiError: 409 ``name`` exists, 413 a limit of the archive, 400 damaged,
        415 not an archive, 422 no usable image, 507 the disk is full. On any error nothing is left
        in the datasets folder but ``staging``, which the caller removes.
        """
        images_dir = staging / "images"
        images_dir.mkdir()
        try:
            found = self._extract(archive, images_dir, limits)
        except OSError as exc:
            if exc.errno in _DISK_FULL:
                raise ApiError(507, "the server's disk is full: the dataset was not saved") from exc
            raise
        skipped: Counter = found["skipped"]
        if found["images"] == 0:
            raise ApiError(
                422,
                f"the archive has no usable image ({_summary(skipped)}): send JPEG, PNG or WebP photographs",
            )
        manifest = {
            "name": name,
            "images": found["images"],
            "skipped": sum(skipped.values()),
            "skipped_reasons": dict(skipped),
            "pixels": found["pixels"],
            "bytes": found["bytes"],
            "created_at": time.time(),
            "archive": source or {},
        }
        (images_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        target = self.root / name
        if self.exists(name):
            raise dataset_exists(name)
        try:
            # Atomic on one file system; it fails (rather than merging) when a non-empty folder of
            # that name appeared meanwhile, e.g. a concurrent upload of the same name.
            os.rename(images_dir, target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise dataset_exists(name) from exc
            raise
        log.info(
            "dataset %s imported: %d images, %d skipped (%s)",
            name,
            found["images"],
            manifest["skipped"],
            _summary(skipped),
        )
        return {**manifest, "source": "upload"}

    def _extract(self, archive: Path, images_dir: Path, limits: DatasetLimits) -> dict[str, Any]:
        skipped: Counter = Counter()
        images = pixels = size = 0
        with ArchiveReader(
            archive, max_entries=limits.max_entries, max_unpacked_bytes=limits.max_unpacked_bytes
        ) as reader:
            for entry in reader.entries():
                if entry.kind == "dir":
                    continue  # folders are made as their images need them
                if entry.path is None:
                    log.warning("skipping archive member with an unsafe path: %r", entry.name)
                    skipped["unsafe path"] += 1
                    continue
                if entry.kind == "link":
                    skipped["link"] += 1
                    continue
                if entry.kind == "special":
                    skipped["not a regular file"] += 1
                    continue
                reason = _skip_reason(entry.path)
                if reason is not None:
                    skipped[reason] += 1
                    continue
                target = images_dir / entry.path
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    out = open(target, "xb")  # noqa: SIM115 - closed below; "x": never overwrite
                except (FileExistsError, NotADirectoryError, IsADirectoryError):
                    skipped["duplicate name"] += 1
                    continue
                try:
                    with out:
                        for chunk in entry.chunks(reader.budget):
                            out.write(chunk)
                except EntryUnreadable as exc:
                    log.info("skipping unreadable archive member %r: %s", entry.name, exc)
                    target.unlink()
                    skipped["unreadable entry"] += 1
                    continue
                checked = check_image(target, limits)
                if isinstance(checked, str):
                    target.unlink()
                    skipped[checked] += 1
                    continue
                images += 1
                pixels += checked
                size += target.stat().st_size
        return {"images": images, "skipped": skipped, "pixels": pixels, "bytes": size}

    def delete(self, name: str, active_jobs: Callable[[str], list[str]]) -> None:
        """Remove dataset ``name`` unless a job still needs it.

        ``active_jobs(name)`` lists the queued or running jobs naming it; it is asked again after
        the folder has been moved aside, so a job submitted meanwhile gets its dataset back.
        Raises ApiError 404 unknown, 409 in use.
        """
        folder = self._folder(name)

        def refuse_if_used() -> None:
            jobs = active_jobs(name)
            if jobs:
                raise ApiError(
                    409,
                    f"dataset {name!r} is used by {len(jobs)} queued or running job(s) ({', '.join(jobs)}): "
                    "cancel them or wait for them to finish, then delete it",
                    jobs=jobs,
                )

        refuse_if_used()
        trash = self.root / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
        os.rename(folder, trash)  # from here on, no new job can name it
        try:
            refuse_if_used()
        except ApiError:
            os.rename(trash, folder)
            raise
        if trash.is_symlink():
            trash.unlink()  # a linked dataset: remove the link, never what it points to
        else:
            shutil.rmtree(trash)
        log.info("dataset %s deleted", name)
