"""Two API replicas on one model store: how long after a change they serve different versions.

Two uvicorn processes share a data directory; clients post small photographs to both without
pause (a bounded load: ``--clients`` threads per replica, each waiting for its answer). Each
version is a copy of the packaged default model (a real load and warm-up: MobileNetV2 encoder,
192 px), published atomically. Two phases:

1. ``COLORIZER_SERVE=stable``: new versions are published (and must take no traffic), then the
   label is moved with ``PUT /models/labels/stable`` on one replica, ``--changes`` times;
2. ``COLORIZER_SERVE=latest``: versions are published ``--changes`` times.

For each change: when each replica answered with the new version for the first time (seconds
after the change), and the window in which the two served different versions. Prints Markdown
tables; the bound to expect is ``COLORIZER_RELOAD_INTERVAL`` plus a version's load and warm-up.

    python bench/replicas.py              # about 3 minutes on 2 cores
    python bench/replicas.py --changes 2  # shorter
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from api_server import Server
from harness import jpeg, machine, median, table


def publish_copy(store, source: Path) -> int:
    """Publish a copy of the model folder ``source`` as the next version of ``store``."""
    from common.store import METADATA_FILE, read_metadata

    def write(folder: Path) -> None:
        for item in source.iterdir():
            if item.name != METADATA_FILE:
                shutil.copy2(item, folder / item.name)

    return store.publish_files(write, read_metadata(source))


class Load:
    """``clients`` threads per server posting a photograph in turn; every answer is recorded."""

    def __init__(self, servers: list[Server], body: bytes, clients: int):
        self.answers: list[tuple[float, int, int, str | None]] = []  # (time, server, status, version)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._post, args=(i, server.url, body), daemon=True)
            for i, server in enumerate(servers)
            for _ in range(clients)
        ]

    def _post(self, index: int, url: str, body: bytes) -> None:
        import httpx

        with httpx.Client(timeout=120) as http:
            while not self._stop.is_set():
                try:
                    response = http.post(f"{url}/colorize", content=body)
                    status, version = response.status_code, response.headers.get("X-Model-Version")
                except httpx.HTTPError:
                    status, version = -1, None
                self.answers.append((time.monotonic(), index, status, version))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(180)

    def switch_times(self, since: float, version: int, servers: int, timeout: float = 120) -> list[float]:
        """Seconds after ``since`` at which each server first answered with ``version``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            firsts = []
            for index in range(servers):
                times = [
                    t for t, i, s, v in list(self.answers) if i == index and t > since and v == str(version)
                ]
                firsts.append(min(times) - since if times else None)
            if all(f is not None for f in firsts):
                return firsts
            time.sleep(0.1)
        raise RuntimeError(f"version {version} was not served by every replica within {timeout:.0f} s")


def run_phase(policy: str, changes: int, clients: int, default_dir: Path, body: bytes) -> tuple[list, dict]:
    from common.labels import Labels
    from models.store import ModelStore

    rows: list[list] = []
    served_from: dict[str, float] = {}  # version -> when it was labelled (or published, for latest)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        store = ModelStore(data_dir / "models")
        first = publish_copy(store, default_dir)
        Labels(store.root).set("stable", first)
        served_from[str(first)] = 0.0
        env = {"COLORIZER_SERVE": policy, "COLORIZER_DEFAULT_MODEL_DIR": str(data_dir / "none")}
        servers = [Server(data_dir, f"replica{i}.log", **env) for i in range(2)]
        try:
            for server in servers:
                server.wait_ready()
            import httpx

            with Load(servers, body, clients) as load:
                time.sleep(2.0)  # both replicas answering
                for change in range(changes):
                    version = publish_copy(store, default_dir)
                    if policy == "stable":
                        time.sleep(3.0)  # published, not labelled: it must take no traffic
                        since = time.monotonic()
                        url = f"{servers[0].url}/models/labels/stable"
                        httpx.put(url, json={"version": version}, timeout=120).raise_for_status()
                    else:
                        since = time.monotonic()
                    served_from[str(version)] = since
                    a, b = load.switch_times(since, version, len(servers))
                    rows.append([policy, change + 1, version, f"{a:.2f}", f"{b:.2f}", f"{abs(a - b):.2f}"])
                    time.sleep(1.0)
            answers = load.answers
        finally:
            for server in servers:
                server.stop()
    failed = sum(1 for _, _, status, _ in answers if status != 200)
    early = sum(1 for t, _, _, v in answers if v is not None and t < served_from.get(v, float("inf")))
    versions = sorted({v for *_, v in answers if v}, key=int)
    counts = {"answers": len(answers), "failed": failed, "early": early, "versions": versions}
    return rows, counts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2, help="client threads per replica")
    args = parser.parse_args()
    from models.store import DEFAULT_MODEL_DIR
    from tests.photos import make_photo

    print(f"Machine: {machine()}; load average at start {os.getloadavg()[0]:.2f}")
    body = jpeg(make_photo(320, 240, 5))
    rows, summary = [], []
    for policy in ("stable", "latest"):
        phase_rows, counts = run_phase(policy, args.changes, args.clients, DEFAULT_MODEL_DIR, body)
        rows += phase_rows
        summary.append(
            [policy, counts["answers"], counts["failed"], counts["early"], ", ".join(counts["versions"])]
        )
    header = ["policy", "change", "version", "replica A (s)", "replica B (s)", "A and B differ (s)"]
    print(table("Seconds from a change to each replica's first answer with the new version", header, rows))
    gaps = [float(r[-1]) for r in rows]
    switches = [float(x) for r in rows for x in r[3:5]]
    print(
        f"\nMedian window the replicas differ: {median(gaps):.2f} s (max {max(gaps):.2f}); median "
        f"switch {median(switches):.2f} s (max {max(switches):.2f}); reload interval 2.0 s"
    )
    header = ["policy", "answers", "failed (not 200)", "before its label (or publish)", "versions seen"]
    print(table("Answers", header, summary))


if __name__ == "__main__":
    main()
