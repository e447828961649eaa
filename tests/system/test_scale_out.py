"""Several machines' worth of the service on loopback (real processes, Redis, one shared store):
two API replicas, a training worker and two colorize workers. Training jobs and a 100-photograph
batch run across the workers while one colorize worker and one API are killed; every job finishes,
every photograph comes back, and a client going back and forth between the APIs sees no failed
request but those the killed API had in flight."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import threading
import time
import zipfile
from collections import Counter

import httpx
import pytest
import redis
from PIL import Image

from common.objectstore import follow
from models.networks import build_generator
from models.store import ModelStore
from tests.apptest import TINY_JOB
from tests.conftest import s3_client
from tests.photos import make_photo, write_dataset
from tests.procs import REDIS_TEST_URL, Proc, colorizer, colorizer_env, free_port, wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 240  # seconds: five processes importing TensorFlow on two cores
PHOTOS = 100
STALL_SECONDS = 4  # a photograph its colorize worker went silent on is sent again after this


def png(width: int, height: int, seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(make_photo(width, height, seed=seed)).convert("L").save(out, "PNG")
    return out.getvalue()


def batch_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(PHOTOS):
            archive.writestr(f"album/{i:03d}.png", png(640 + i, 480, seed=i))
        archive.writestr("album/notes.png", b"not a photograph")  # refused by a worker, as by the API
    return out.getvalue()


def started_by(backend: redis.Redis, node: str) -> set[str]:
    """The colorize tasks that the result backend says ``node`` has started and not finished (the
    API forgets each result once read, so the scan reads little more than those in flight)."""
    started = set()
    for key in backend.scan_iter("celery-task-meta-*"):
        meta = json.loads(backend.get(key) or "{}")
        if meta.get("status") == "STARTED" and str(meta["result"].get("hostname")).startswith(node):
            started.add(meta["task_id"])
    return started


def freeze_holding(worker: Proc, node: str, everyone) -> set[str]:
    """SIGSTOP ``worker`` at a moment it holds started photographs, which it then cannot finish
    (a worker killed right after finishing all it held would leave nothing to send again);
    returns their task ids."""
    backend = redis.Redis.from_url(REDIS_TEST_URL)

    def frozen() -> set[str]:
        if not started_by(backend, node):
            return set()
        os.killpg(worker.popen.pid, signal.SIGSTOP)
        time.sleep(0.3)  # a result it sent just before stopping reaches the backend
        held = started_by(backend, node)
        if not held:
            os.killpg(worker.popen.pid, signal.SIGCONT)
        return held

    try:
        return wait_for(frozen, TIMEOUT, f"{node} holding a started photograph", everyone)
    finally:
        backend.close()


class Client:
    """POST /colorize to each API in turn, to the other one when one refuses connections (as a load
    balancer would); records every answer until stopped."""

    def __init__(self, ports: list[int]):
        self.clients = [httpx.Client(base_url=f"http://127.0.0.1:{p}", timeout=60) for p in ports]
        self.results: list[tuple[int, str, float]] = []  # (api index, outcome, time sent)
        self.photo = png(96, 64, seed=7)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            turn += 1
            for index in (turn % 2, (turn + 1) % 2):
                sent = time.monotonic()
                try:
                    answer = self.clients[index].post("/colorize", files={"image": ("p.png", self.photo)})
                except httpx.ConnectError:
                    continue  # nobody listening: not a request, try the other API
                except httpx.HTTPError as exc:
                    self.results.append((index, f"broken: {type(exc).__name__}", sent))
                    break
                self.results.append((index, str(answer.status_code), sent))
                break
            time.sleep(0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        for client in self.clients:
            client.close()


def store_in_bucket(endpoint: str, url: str) -> dict[str, str]:
    """The settings of a process whose model store is the bucket at ``url`` on ``endpoint``."""
    return {
        "COLORIZER_MODEL_STORE_URL": url,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_two_apis_three_workers_survive_a_killed_worker_and_a_killed_api(
    tmp_path, procs, s3_server, bucket, request
):
    """The model store in an S3-compatible bucket that every process follows, mirrored into the
    folder they share. A shared folder alone is this run without the mirroring: it once ran both
    ways, about 70 s each on two cores; test_labels and test_hot_swap share a plain folder."""
    redis.Redis.from_url(REDIS_TEST_URL).flushdb()
    shared = tmp_path / "shared"
    write_dataset(shared / "datasets" / "tiny")
    follow(bucket, shared / "models", s3_client(s3_server))
    request.addfinalizer(lambda: follow(None, shared / "models"))
    ModelStore(shared / "models").publish(
        build_generator(32, 1, 2, width=4), {"preset": "lab", "image_size": 32}
    )
    settings = {
        **store_in_bucket(s3_server, bucket),
        "COLORIZER_BROKER_URL": REDIS_TEST_URL,
        "COLORIZER_DEFAULT_MODEL_DIR": str(tmp_path / "none"),
        "COLORIZER_FANOUT_STALL_SECONDS": str(STALL_SECONDS),
        # what the killed worker had taken but not started is sent again after this
        "COLORIZER_FANOUT_QUEUE_SECONDS": "20",
        "COLORIZER_RECOVERY_INTERVAL": "2",
        "COLORIZER_MAX_BATCH_FILES": str(PHOTOS + 1),
    }
    env = colorizer_env(shared, **settings)
    ports = [free_port(), free_port()]
    apis = [
        Proc(colorizer("serve", "--port", str(port)), env, tmp_path / f"api{i}.log")
        for i, port in enumerate(ports)
    ]
    trainer = Proc(colorizer("worker", "-n", "trainer@%h"), env, tmp_path / "trainer.log")
    painters = [
        Proc(colorizer("worker", "--colorize", "-n", f"painter{i}@%h"), env, tmp_path / f"painter{i}.log")
        for i in range(2)
    ]
    procs.extend([*apis, trainer, *painters])
    everyone = (*apis, trainer, *painters)
    a, b = (httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) for port in ports)
    for api in (a, b):
        wait_for(lambda api=api: api.get("/readyz").status_code == 200, TIMEOUT, "both APIs ready", everyone)
    for painter in painters:
        wait_for(lambda p=painter: " ready." in p.log(), TIMEOUT, "the colorize workers", everyone)
        # batch work yields the CPU to an API's single photographs (COLORIZER_COLORIZE_WORKER_NICE)
        assert os.getpriority(os.PRIO_PROCESS, painter.popen.pid) == os.getpriority(os.PRIO_PROCESS, 0) + 10

    # training jobs through either API, trained by the training worker
    jobs = [api.post("/jobs", json={**TINY_JOB, "seed": i}).json()["id"] for i, api in enumerate((a, b))]
    client = Client(ports)
    client.thread.start()

    # the batch through API a; painter0 is killed once it has colorized a few of its photographs
    answer: dict[str, httpx.Response] = {}
    sender = threading.Thread(
        target=lambda: answer.setdefault(
            "batch", a.post("/colorize/batch", files={"archive": ("a.zip", batch_zip())})
        ),
        daemon=True,
    )
    sender.start()
    wait_for(lambda: painters[0].log().count("succeeded in") >= 3, TIMEOUT, "painter0 at work", everyone)
    held = freeze_holding(painters[0], "painter0@", everyone)
    painters[0].stop(signal.SIGKILL)
    time.sleep(1.0)  # API b dies with the client's requests going to it
    apis[1].stop(signal.SIGKILL)
    killed_at = time.monotonic()
    alive = (apis[0], trainer, painters[1])
    sender.join(TIMEOUT)
    assert "batch" in answer, "the batch did not come back"
    batch = answer["batch"]
    assert batch.status_code == 200, batch.text
    with zipfile.ZipFile(io.BytesIO(batch.content)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        names = set(archive.namelist())
    assert manifest["counts"] == {"ok": PHOTOS, "error": 1, "skipped": 0}
    assert {f"album/{i:03d}.png" for i in range(PHOTOS)} <= names
    files = {f["name"]: f for f in manifest["files"]}
    assert files["album/notes.png"]["error"].startswith("the upload is not an image Pillow can read"), files[
        "album/notes.png"
    ]
    by = Counter(f["colorized_by"].split("@")[0] for f in manifest["files"] if f["status"] == "ok")
    # the workers did it, both of them (the killed one before it died), not the API
    assert by["painter0"] >= 3 and by["painter1"] > 0 and by["painter0"] + by["painter1"] == PHOTOS, by
    # what the killed worker had in hand went to the other one
    for task_id in held:
        assert f"colorize task {task_id}: its worker painter0@" in apis[0].log(), task_id

    # the command line, pointed at the broker, colorizes a folder on the surviving colorize worker
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(6):
        (folder / f"{i}.png").write_bytes(png(120, 90, seed=50 + i))
    (folder / "broken.png").write_bytes(b"not a photograph")
    run = subprocess.run(
        colorizer("colorize", str(folder), "--out", str(tmp_path / "out"), "--remote", "--model", "1"),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert run.returncode == 1, run.stderr  # the broken file, reported
    assert "on 1 colorize worker(s): painter1@" in run.stderr, run.stderr
    assert "failed " in run.stderr and "not an image Pillow can read" in run.stderr
    assert "colorized 6 of 7 file(s)" in run.stdout and "with model version 1" in run.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}.png" for i in range(6)]

    for job in jobs:
        record = wait_for(
            lambda job=job: (r := a.get(f"/jobs/{job}").json())["state"] in ("succeeded", "failed") and r,
            TIMEOUT,
            f"job {job} to finish",
            alive,
        )
        assert record["state"] == "succeeded", record["error"]

    time.sleep(1.0)
    client.close()
    failed = [r for r in client.results if r[1] != "200"]
    # allowed: what was in flight on API b when it was killed (sent before, answered never)
    unexplained = [r for r in failed if not (r[0] == 1 and r[2] <= killed_at)]
    assert not unexplained, (unexplained, len(client.results))
    assert len([r for r in client.results if r[2] > killed_at]) >= 5  # API a went on serving
    a.close()
    b.close()


def test_machines_without_a_shared_models_folder_meet_at_the_bucket(tmp_path, procs, s3_server, bucket):
    """Machine 1 runs an API and a training worker on its data folder, machine 2 an API on its own:
    the version the worker publishes reaches the bucket and is served by both; a label moved on
    machine 2 is followed by machine 1."""
    redis.Redis.from_url(REDIS_TEST_URL).flushdb()
    settings = {
        "COLORIZER_BROKER_URL": REDIS_TEST_URL,
        "COLORIZER_DEFAULT_MODEL_DIR": str(tmp_path / "none"),
        "COLORIZER_SERVE": "stable",
        **store_in_bucket(s3_server, bucket),
    }
    one, two = tmp_path / "machine1", tmp_path / "machine2"
    write_dataset(one / "datasets" / "tiny")
    ports = [free_port(), free_port()]
    apis = [
        Proc(
            colorizer("serve", "--port", str(port)), colorizer_env(data, **settings), tmp_path / f"api{i}.log"
        )
        for i, (port, data) in enumerate(zip(ports, (one, two), strict=True))
    ]
    trainer = Proc(colorizer("worker"), colorizer_env(one, **settings), tmp_path / "trainer.log")
    procs.extend([*apis, trainer])
    everyone = (*apis, trainer)
    a, b = (httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) for port in ports)
    for api in (a, b):
        wait_for(lambda api=api: api.get("/healthz").status_code == 200, TIMEOUT, "both APIs", everyone)

    job = a.post("/jobs", json={**TINY_JOB, "seed": 1, "publish_every": 2}).json()["id"]
    record = wait_for(
        lambda: (r := a.get(f"/jobs/{job}").json())["state"] in ("succeeded", "failed") and r,
        TIMEOUT,
        "the job",
        everyone,
    )
    assert record["state"] == "succeeded", record["error"]
    assert record["published_versions"] == [1, 2]
    # machine 2 lists what machine 1's worker published, from the bucket (it looks at the bucket at
    # most once a second: a look during training may have seen version 1 alone)
    wait_for(
        lambda: [m["version"] for m in b.get("/models").json()["versions"]] == [1, 2],
        TIMEOUT,
        "machine 2 to list versions 1 and 2",
        everyone,
    )
    assert (two / "models" / "2" / ".mirrored").exists()
    # a label moved on machine 2 is served on both
    assert b.put("/models/labels/stable", json={"version": 1}).status_code == 200
    for api in (a, b):
        ready = wait_for(
            lambda api=api: (r := api.get("/readyz")).status_code == 200 and r.json(),
            TIMEOUT,
            "stable served",
            everyone,
        )
        assert ready["model_version"] == 1, ready
    a.close()
    b.close()
