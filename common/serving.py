"""What each API replica serves, reported in the store: ``<models>/.serving/<replica>.json``,
rewritten by the replica's watcher at every look at the store (atomically), removed when it stops.

Retention never deletes a version a live replica serves or is loading (``in_use``), and
``GET /models`` lists every live replica with what it serves, so an operator sees at once whether
the replicas agree.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from common.store import Version, replace_json, version_from_json

log = logging.getLogger(__name__)

SERVING_DIR = ".serving"
# A report older than this is from a replica that stopped without saying so (killed, host lost).
LIVE_SECONDS = 300.0


def replica_id() -> str:
    """This process as a replica: host name and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ServingReports:
    """The serving reports of the model store at ``root``."""

    def __init__(self, root: Path | str):
        self.folder = Path(root) / SERVING_DIR

    def report(self, replica: str, served: Version | None, loading: Version | None, policy: str) -> None:
        """Write what ``replica`` serves now (raises OSError on a read-only store)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {
            "replica": replica,
            "served": served,
            "loading": loading,
            "policy": policy,
            "at": time.time(),
        }
        replace_json(self.folder / f"{replica}.json", record)

    def remove(self, replica: str) -> None:
        (self.folder / f"{replica}.json").unlink(missing_ok=True)

    def live(self, max_age: float = LIVE_SECONDS) -> list[dict[str, Any]]:
        """The reports of replicas heard from in the last ``max_age`` seconds, by replica name."""
        now = time.time()
        reports = []
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced, or damaged: the next report rewrites it
            at = record.get("at") if isinstance(record, dict) else None
            if isinstance(at, int | float) and now - at <= max_age:
                reports.append(record)
        return reports

    def in_use(self, max_age: float = LIVE_SECONDS) -> set[Version]:
        """Versions a live replica serves or is loading."""
        found = {version_from_json(r.get(key)) for r in self.live(max_age) for key in ("served", "loading")}
        return {v for v in found if v is not None}
