"""Version labels and the serving policy, in the store itself so that every replica reads the same.

A label (``stable``, ``canary``, any lower-case name) points at a version and moves only when
someone moves it (``PUT /models/labels/<name>``, ``colorizer models label``). Labels live in
``<models>/labels.json``: read-modify-write under an exclusive ``flock`` on ``.labels.lock``,
written to a temporary file and renamed over the old one, so a reader sees the old labels or the
new ones, never a mix.

The policy (``COLORIZER_SERVE``) says what ``/colorize`` serves when a request names no model, as
TensorFlow Serving's version policy does: ``latest`` (the newest loadable version, the packaged
default while there is none), a version number (pinned), ``default`` (the packaged model), or a
label's name (whatever it points at; the packaged default until it is set).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.objectstore import LabelsConflict, mirror_of
from common.refusals import Refusals
from common.serving import ServingReports
from common.store import (
    DEFAULT_VERSION,
    LABELS_FILE,
    TRASH_PREFIX,
    UnknownVersion,
    Version,
    VersionStore,
    file_lock,
    parse_version,
    replace_json,
    version_from_json,
)

log = logging.getLogger(__name__)

LABELS_LOCK = ".labels.lock"
LATEST = "latest"
# Starts with a letter: a name can never be read as a version number, nor hold a path.
_LABEL = re.compile(r"[a-z][a-z0-9_-]{0,39}")
RESERVED = frozenset({LATEST, DEFAULT_VERSION})
_ANY = object()  # Labels._point: no expectation about the label's current version
# A label change that keeps losing its race with other machines' (a bucket store) gives up after this.
LABEL_RETRIES = 20


class BadLabel(ValueError):
    """Not a usable label name; the message says what a name may be."""


class UnknownLabel(UnknownVersion):
    """No such label in the store."""


class LabelsUnreadable(RuntimeError):
    """labels.json exists but is not a JSON object of label -> version."""


def check_label(name: Any) -> str:
    """``name`` if it can name a label; raises BadLabel with the rule."""
    if isinstance(name, str) and _LABEL.fullmatch(name) and name not in RESERVED:
        return name
    raise BadLabel(
        f"{name!r} cannot name a label: use 1-40 lower-case letters, digits, '-' or '_', starting "
        f"with a letter, and not {' or '.join(repr(r) for r in sorted(RESERVED))}"
    )


def is_label_name(text: Any) -> bool:
    return isinstance(text, str) and bool(_LABEL.fullmatch(text)) and text not in RESERVED


@dataclass(frozen=True)
class Policy:
    """What /colorize serves when a request names no model: ``kind`` is ``latest``, ``version``
    (pinned: ``value`` is a number or ``"default"``) or ``label`` (``value`` is its name)."""

    kind: str
    value: Version | None = None

    def __str__(self) -> str:
        return LATEST if self.kind == LATEST else str(self.value)

    @property
    def pinned(self) -> list[Version]:
        """The version this policy pins (retention keeps it), if it pins one."""
        return [self.value] if self.kind == "version" and self.value is not None else []


def parse_policy(text: str) -> Policy:
    """``COLORIZER_SERVE``'s value as a Policy; raises ValueError with what it may be."""
    cleaned = text.strip().lower() if isinstance(text, str) else text
    if cleaned == LATEST:
        return Policy(LATEST)
    if cleaned == DEFAULT_VERSION:
        return Policy("version", DEFAULT_VERSION)
    number = parse_version(cleaned)
    if number is not None:
        return Policy("version", number)
    if is_label_name(cleaned):
        return Policy("label", cleaned)
    raise ValueError(
        f"{text!r} is not a serving policy: use 'latest', a version number, 'default', or a label's "
        "name (lower-case letters, digits, '-' or '_', starting with a letter)"
    )


class Labels:
    """The labels of the model store at ``root``: safe for concurrent readers and writers, in one
    process or many, on one machine or on a shared volume with working ``flock``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.path = self.root / LABELS_FILE

    def read(self) -> dict[str, Version]:
        """Every label and its version; {} when none was ever set. Raises LabelsUnreadable."""
        mirror = mirror_of(self.root)
        if mirror is not None:  # the store follows a bucket: its labels first (common.objectstore)
            mirror.sync()
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise LabelsUnreadable(f"{LABELS_FILE} cannot be read: {exc.strerror}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise LabelsUnreadable(f"{LABELS_FILE} is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise LabelsUnreadable(f"{LABELS_FILE} is not a JSON object of label -> version")
        labels: dict[str, Version] = {}
        for name, value in data.items():
            target = version_from_json(value)
            if not is_label_name(name) or target is None:
                raise LabelsUnreadable(f"{LABELS_FILE}: {name!r} -> {value!r} is not a label and a version")
            labels[name] = target
        return labels

    def get(self, name: str) -> Version:
        """The version label ``name`` points at; raises UnknownLabel (or BadLabel, LabelsUnreadable)."""
        check_label(name)
        labels = self.read()
        if name not in labels:
            raise UnknownLabel(f"label {name!r} does not exist (GET /models/labels lists them)")
        return labels[name]

    def set(self, name: str, version: Version) -> Version | None:
        """Point ``name`` at ``version``; returns the version it pointed at before, if any."""
        return self._point(name, version)[1]

    def move_if(self, name: str, expected: Version | None, version: Version) -> bool:
        """Point ``name`` at ``version`` only if it still points at ``expected`` (None: unset);
        returns whether it moved. For a decision taken on the label's earlier version."""
        return self._point(name, version, expected)[0]

    def _point(self, name: str, version: Version, expected: Any = _ANY) -> tuple[bool, Version | None]:
        """(whether ``name`` now points at ``version``, what it pointed at before); it moves only
        from ``expected`` when one is given. Raises BadLabel, UnknownVersion, LabelsUnreadable."""
        check_label(name)
        target = version_from_json(version)
        if target is None:
            raise UnknownVersion(f"model version {version!r} does not exist")

        def change(labels: dict[str, Version]) -> tuple[bool, Version | None]:
            previous = labels.get(name)
            if expected is not _ANY and previous != expected:
                return False, previous
            if isinstance(target, int) and not VersionStore(self.root).version_dir(target).is_dir():
                raise UnknownVersion(f"model version {target} does not exist (GET /models lists them)")
            labels[name] = target
            return True, previous

        return self._transaction(change)

    def remove(self, name: str) -> Version:
        """Delete label ``name``; returns the version it pointed at. Raises UnknownLabel."""
        check_label(name)

        def change(labels: dict[str, Version]) -> tuple[bool, Version]:
            if name not in labels:
                raise UnknownLabel(f"label {name!r} does not exist (GET /models/labels lists them)")
            return True, labels.pop(name)

        return self._transaction(change)[1]

    def _transaction(self, change: Callable[[dict[str, Version]], tuple[bool, Any]]) -> tuple[bool, Any]:
        """Read the labels, ``change`` them in place (it answers (write them?, its result)), write
        them back, under the lock that retention holds (a labelled version cannot go meanwhile).
        A store following a bucket (common.objectstore) reads the bucket's labels first and writes
        them back only if no other machine changed them meanwhile, else starts again."""
        mirror = mirror_of(self.root)
        for _attempt in range(LABEL_RETRIES):
            with self._locked():
                if mirror is not None:
                    mirror.pull_labels()
                labels = self.read()
                write, result = change(labels)
                if not write:
                    return write, result
                try:
                    if mirror is not None:
                        mirror.push_labels({k: labels[k] for k in sorted(labels)})
                except LabelsConflict:
                    continue
                self._write(labels)
                return write, result
        raise LabelsUnreadable(f"{LABELS_FILE}: other machines kept changing the labels; try again")

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.root / LABELS_LOCK)

    def _write(self, labels: dict[str, Version]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        replace_json(self.path, labels)


def prune_versions(store: VersionStore, keep: int, protected: Iterable[Version] = ()) -> list[int]:
    """Retention: delete every published version but the newest ``keep``, the labelled ones, those
    a live API replica serves or is loading (``common.serving``) and ``protected`` (a pinned
    version); returns the numbers deleted.

    Runs under the labels' lock, so no label can be pointed at a version being deleted. Each
    version is first renamed to a hidden folder (one atomic step: a reader sees it whole or not at
    all; a replica that has it loaded keeps serving it from memory), then removed.
    """
    if keep < 1:
        raise ValueError("keep at least the newest version")
    labels = Labels(store.root)
    with labels._locked():
        versions = store.versions()
        in_use = ServingReports(store.root).in_use()  # served or being loaded by a live replica
        kept = set(versions[-keep:]) | set(labels.read().values()) | set(protected) | in_use
        removed = []
        for version in versions:
            if version in kept:
                continue
            trash = store.root / f"{TRASH_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(store.root / str(version), trash)
            except FileNotFoundError:
                continue  # another process pruned it first
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(version)
        mirror = mirror_of(store.root)
        for version in removed if mirror is not None else ():
            mirror.delete(version)  # hidden everywhere at once, then its files
    if removed:
        Refusals(store.root).forget_all(removed)
        log.info(
            "retention: deleted versions %s (kept the newest %d, labelled, pinned, served)", removed, keep
        )
    return removed
