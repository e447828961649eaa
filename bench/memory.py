"""Memory flatness: the API's resident memory over thousands of requests.

uvicorn in a subprocess serves the report-size generator (preset ``seed``, 256x256, width 64);
8 client threads post small photographs (96x64 JPEG, so the run stays short: the model still runs
at 256x256 for each) until ``--requests`` have been answered. The server's RSS is read from
/proc every ``--every`` requests. The baseline is taken after the first ``--every`` requests
(allocator pools and kernel caches settle during the first batches); the RSS before any request
is shown too.

    python bench/memory.py                   # 2,000 requests, about 3 minutes on 2 cores
    python bench/memory.py --requests 400    # a quick look
    python bench/memory.py --megapixels 2 --requests 500   # photographs of about 2 MP instead
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from api_server import Server
from harness import PRESET, SIZE, WIDTH, jpeg, machine, megapixels, photographs, report_generator, table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--every", type=int, default=100, help="requests between RSS samples")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--megapixels", type=float, default=0.0, help="post photographs of about this size (default 96x64)"
    )
    args = parser.parse_args()
    import httpx
    import numpy as np
    from PIL import Image

    from models.store import ModelStore

    print(f"Machine: {machine()}; load average at start {os.getloadavg()[0]:.2f}")
    photos, source = photographs()
    if args.megapixels:
        bodies = [jpeg(megapixels(p, args.megapixels)) for p in photos]
    else:
        bodies = [jpeg(np.asarray(Image.fromarray(p).resize((96, 64)))) for p in photos]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        ModelStore(data_dir / "models").publish(
            report_generator(), {"preset": PRESET, "image_size": SIZE, "width": WIDTH}
        )
        server = Server(data_dir)
        try:
            ready = server.wait_ready()
            print(
                f"Serving version {ready['model_version']} ({PRESET}, {SIZE} px, width {WIDTH}) from {source}"
            )
            samples = [(0, server.rss())]
            done = 0
            errors = 0
            lock = threading.Lock()
            next_sample = args.every

            def client(index: int) -> None:
                nonlocal done, errors, next_sample
                with httpx.Client(timeout=120, base_url=server.url) as http:
                    i = index
                    while True:
                        with lock:
                            if done + errors >= args.requests:
                                return
                        response = http.post(
                            "/colorize",
                            content=bodies[i % len(bodies)],
                            headers={"content-type": "image/jpeg"},
                        )
                        i += 1
                        with lock:
                            if response.status_code == 200:
                                done += 1
                            else:
                                errors += 1
                            if done >= next_sample:
                                samples.append((done, server.rss()))
                                next_sample += args.every

            threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            samples.append((done, server.rss()))
        finally:
            server.stop()

    mib = 1024 * 1024
    before = samples[0][1]
    baseline = samples[1][1] if len(samples) > 2 else before
    end = samples[-1][1]
    peak = max(rss for _, rss in samples[1:])
    rows = [[n, rss / mib] for n, rss in samples]
    print(table("Server RSS (MiB) by requests answered", ["requests", "RSS MiB"], rows))
    summary = [
        ["before any request", before / mib, ""],
        [f"start (after {samples[1][0] if len(samples) > 2 else 0} requests)", baseline / mib, ""],
        ["end", end / mib, f"{100 * (end - baseline) / baseline:+.1f}% vs start"],
        ["max", peak / mib, f"{100 * (peak - baseline) / baseline:+.1f}% vs start"],
    ]
    print(table(f"Memory over {done} requests ({errors} errors)", ["point", "RSS MiB", "change"], summary))
    print(f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
