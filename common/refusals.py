"""Versions a replica refused as broken, shared through the store so that every replica refuses
them too: ``<models>/refused.json``, read-modify-write under a ``flock``, replaced atomically.

An entry holds the reason, who refused it, and the version's file signature (modification times)
at that moment: when the files change (published again, repaired), the refusal no longer applies
and every replica tries the version again. ``colorizer models retry <version>`` forgets one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from common.store import REFUSALS_FILE, Version, file_lock, replace_json

log = logging.getLogger(__name__)

REFUSALS_LOCK = ".refused.lock"


class Refusals:
    """The shared refusals of the model store at ``root``."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.path = self.root / REFUSALS_FILE

    def read(self) -> dict[str, dict[str, Any]]:
        """version -> {reason, signature, by, at}; {} when none (or when the file cannot be read,
        which is logged: a damaged file must not stop a replica from serving)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s cannot be read, so no shared refusal applies: %s", self.path.name, exc)
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def get(self, version: Version, signature: tuple, entries: dict | None = None) -> str | None:
        """Why ``version`` was refused, while its files are the ones refused; else None.
        ``entries``: what ``read`` gave, when the caller has it already."""
        entry = (self.read() if entries is None else entries).get(str(version))
        if entry is None or tuple(entry.get("signature") or ()) != tuple(signature):
            return None
        return f"{entry.get('reason')} (refused by {entry.get('by')})"

    def record(self, version: Version, signature: tuple, reason: str) -> None:
        entry = {
            "reason": reason,
            "signature": list(signature),
            "by": f"{socket.gethostname()}:{os.getpid()}",
            "at": time.time(),
        }
        self._change(lambda refusals: refusals.__setitem__(str(version), entry))

    def forget(self, version: Version) -> bool:
        """Drop the refusal of ``version``; returns whether there was one."""
        found: list[bool] = []
        self._change(lambda refusals: found.append(refusals.pop(str(version), None) is not None))
        return bool(found and found[0])

    def forget_all(self, versions: list[Version]) -> None:
        """Drop the refusals of ``versions`` (deleted by retention)."""
        keys = {str(v) for v in versions}
        self._change(lambda refusals: [refusals.pop(k) for k in list(refusals) if k in keys])

    def _change(self, change: Any) -> None:
        if not self.root.is_dir():
            return
        with file_lock(self.root / REFUSALS_LOCK):
            refusals = self.read()
            before = dict(refusals)
            change(refusals)
            if refusals != before:
                replace_json(self.path, refusals)
