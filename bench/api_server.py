"""The API under uvicorn in a subprocess, and clients posting photographs to it (bench/serve.py,
bench/memory.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness import ROOT, median, percentile


def service_env(data_dir: Path, **env: str) -> dict[str, str]:
    """A service process's environment: this one's without COLORIZER_ settings, on ``data_dir``, on
    the CPU, with ``env``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COLORIZER_")}
    environment.update(
        COLORIZER_DATA_DIR=str(data_dir),
        COLORIZER_DEVICE="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="-1",
        **env,
    )
    return environment


class Server:
    """The API under uvicorn in a subprocess, on a free port."""

    def __init__(self, data_dir: Path, log_name: str = "server.log", **env: str):
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        environment = service_env(data_dir, **env)
        self.log = open(data_dir / log_name, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "service.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 300) -> dict:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {Path(self.log.name).read_text()[-3000:]}")
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=5)
                if response.status_code == 200:
                    return response.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the server did not become ready")

    def rss(self) -> int:
        """Resident memory of the server process, bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def load(url: str, bodies: list[bytes], clients: int, seconds: float, fmt: str = "jpeg") -> dict:
    """``clients`` threads posting ``bodies`` in turn for ``seconds``; throughput and latencies, and
    the CPU the clients themselves took per request (``client_cpu_ms``).

    The clients share the machine with the server, so they are the standard library's
    ``http.client`` on one kept-alive connection each: about 0.3 ms of CPU per request here, where
    an httpx client took about 2 ms (measured on 2 cores, 16 clients at 40 requests/s: about 8% of
    a core taken from the model call that the throughput is compared with).
    """
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target = f"/colorize?format={fmt}"
    headers = {"content-type": "image/jpeg"}
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        i = index
        try:
            while time.monotonic() < deadline:
                body = bodies[i % len(bodies)]
                i += 1
                start = time.perf_counter()
                try:
                    connection.request("POST", target, body, headers)
                    response = connection.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException):
                    connection.close()  # the next request connects again
                    status = -1
                elapsed = time.perf_counter() - start
                with lock:
                    if status == 200:
                        latencies.append(elapsed)
                    else:
                        errors.append(status)
        finally:
            connection.close()

    cpu = time.process_time()
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    done = len(latencies)
    return {
        "rate": done / elapsed,
        "p50": median(latencies),
        "p99": percentile(latencies, 99),
        "done": done,
        "errors": len(errors),
        "client_cpu_ms": 1000 * (time.process_time() - cpu) / max(1, done + len(errors)),
    }


def batch_counts(url: str) -> tuple[float, float]:
    """(images, model calls) so far, from the server's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            values[sample.name] = sample.value
    return values.get("colorizer_inference_batch_size_sum", 0.0), values.get(
        "colorizer_inference_batch_size_count", 0.0
    )
