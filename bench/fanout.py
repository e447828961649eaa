"""A big batch through POST /colorize/batch: in the API that received it, or fanned out to 1, 2 and 3
colorize workers (``colorizer worker --colorize``), and what it does to a single /colorize meanwhile.

One phase per set-up, in one run on this machine: a fresh API (uvicorn) on Redis (its own database,
``--redis``), the packaged default model, and 0-3 colorize worker processes, warmed up. In each
phase: the median latency of one small /colorize at a time with nothing else running (idle), then
a ``--photos``-photograph batch (JPEGs of about 0.3 MP) while one client keeps posting single
/colorize requests one after another; the batch's time and photographs per second, and that
client's latencies during the batch. Ratios are against the in-API phase of the same run.

All processes share this machine's cores: on 2 cores more workers cannot add arithmetic, they
only take the batch out of the API's queue. Prints Markdown tables.

    python bench/fanout.py               # about 4 minutes on 2 cores
    python bench/fanout.py --photos 40   # shorter
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from api_server import Server, service_env
from harness import ROOT, jpeg, machine, median, megapixels, percentile, photographs, square, table

IDLE_REQUESTS = 15


class Workers:
    """``count`` colorize worker processes on ``data_dir`` and ``broker``."""

    def __init__(self, count: int, data_dir: Path, broker: str):
        env = service_env(data_dir, COLORIZER_BROKER_URL=broker)
        self.logs = [data_dir / f"painter{i}.log" for i in range(count)]
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", "--colorize", "-n", f"painter{i}@%h"],
                cwd=ROOT,
                env=env,
                stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
                stderr=subprocess.STDOUT,
            )
            for i, log in enumerate(self.logs)
        ]

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not all(" ready." in log.read_text(errors="replace") for log in self.logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a colorize worker did not start: " + self.logs[0].read_text()[-2000:])
            time.sleep(0.5)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def archive(photos: list[bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for i, data in enumerate(photos):
            zf.writestr(f"album/{i:03d}.jpg", data)
    return out.getvalue()


def single(http, body: bytes) -> float:
    start = time.perf_counter()
    response = http.post("/colorize", content=body, headers={"content-type": "image/jpeg"})
    response.raise_for_status()
    return time.perf_counter() - start


def run_phase(workers: int, batch: bytes, small: bytes, photos: int, broker: str) -> dict:
    import httpx
    import redis

    redis.Redis.from_url(broker).flushdb()
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-fanout-{workers}-"))
    fanout = "auto" if workers else "off"
    server = Server(data_dir, COLORIZER_BROKER_URL=broker, COLORIZER_BATCH_FANOUT=fanout)
    painters = Workers(workers, data_dir, broker) if workers else None
    try:
        server.wait_ready()
        if painters is not None:
            painters.wait_ready()
        with httpx.Client(base_url=server.url, timeout=600) as http:
            # warm-up: every worker loads the model and traces its shapes
            for _ in range(2):
                http.post(
                    "/colorize/batch",
                    content=archive([small] * 24 * max(1, workers)),
                    headers={"content-type": "application/zip"},
                ).raise_for_status()
            idle = [single(http, small) for _ in range(IDLE_REQUESTS)]
            during: list[float] = []
            done = threading.Event()

            def keep_posting() -> None:
                with httpx.Client(base_url=server.url, timeout=600) as other:
                    while not done.is_set():
                        during.append(single(other, small))

            client = threading.Thread(target=keep_posting)
            start = time.perf_counter()
            client.start()
            answer = http.post("/colorize/batch", content=batch, headers={"content-type": "application/zip"})
            seconds = time.perf_counter() - start
            done.set()
            client.join()
            answer.raise_for_status()
            colorized = int(answer.headers["x-batch-colorized"])
            assert colorized == photos, answer.headers
            return {
                "workers": workers,
                "seconds": seconds,
                "rate": photos / seconds,
                "idle": median(idle),
                "during": median(during),
                "during_p90": percentile(during, 90),
                "requests": len(during),
            }
    finally:
        if painters is not None:
            painters.stop()
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=100, help="photographs in the batch")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2, 3], help="phases (0: in the API)")
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/11", help="a Redis database to use and empty"
    )
    args = parser.parse_args()

    pictures, source = photographs(8)
    bodies = [jpeg(megapixels(pictures[i % len(pictures)], 0.3)) for i in range(args.photos)]
    batch = archive(bodies)
    small = jpeg(square(pictures[0], 256))
    print(
        f"machine: {machine()}; photographs: {source}; "
        f"batch of {args.photos} at 0.3 MP, {len(batch) / 1e6:.1f} MB"
    )
    results = [run_phase(n, batch, small, args.photos, args.redis) for n in args.workers]
    base = results[0]
    rows = [
        [
            "in the API" if r["workers"] == 0 else f"{r['workers']} colorize worker(s)",
            r["seconds"],
            r["rate"],
            r["rate"] / base["rate"],
            r["idle"] * 1000,
            r["during"] * 1000,
            r["during_p90"] * 1000,
            r["during"] / r["idle"],
            r["requests"],
        ]
        for r in results
    ]
    print(
        table(
            f"A {args.photos}-photograph batch and a single /colorize meanwhile "
            "(medians; ratios within this run)",
            [
                "batch colorized by",
                "batch s",
                "photos/s",
                "x in-API rate",
                "/colorize idle ms",
                "during batch ms",
                "p90 ms",
                "during / idle",
                "requests during",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
