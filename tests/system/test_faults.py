"""Faults injected into real processes: killed workers, a restarted Redis, bad datasets, shutdowns.

Each test starts the real worker (and API) as separate process groups, injects the fault with a
signal, and checks the job records and the model store afterwards. Redis tests run their own
``redis-server`` (AOF on, as in docker-compose.yml) on a free port, never the shared one.
"""

from __future__ import annotations

import io
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from common.jobs import JobStore
from common.settings import Settings
from models.store import ModelStore
from tests.photos import make_photo, write_dataset
from tests.procs import Proc, colorizer, colorizer_env, free_port, wait_for

pytestmark = pytest.mark.integration

# Tiny jobs: a step takes milliseconds, so a LONG_JOB ends by the time budget (max_seconds) each
# test gives it, never by its step count.
LONG_JOB = {
    "dataset": "tiny",
    "preset": "lab",
    "image_size": 32,
    "width": 4,
    "batch_size": 2,
    "steps": 1_000_000,
    "sample_every": 1_000_000,
    "publish_every": 40,
    "checkpoint_every": 10,
    "validation_split": 0,
    "seed": 5,
}
SMALL_JOB = {**LONG_JOB, "steps": 6, "publish_every": 3, "checkpoint_every": 2}
TIMEOUT = 180  # seconds for anything that needs a worker to start and import TensorFlow


# -- helpers --------------------------------------------------------------------------------------


class RedisServer:
    """A private redis-server with AOF persistence in ``folder``, restartable on the same port."""

    def __init__(self, folder: Path, password: str):
        self.folder, self.password, self.port = folder, password, free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        args += ["--appendonly", "yes", "--save", "", "--requirepass", self.password]
        self.proc = Proc(args, dict(os.environ), self.folder / f"redis-{self.starts}.log")
        wait_for(self.ping, 30, "redis-server up", (self.proc,))

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """SIGTERM: Redis's own shutdown, which flushes the AOF (what `docker stop` does)."""
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM, timeout=30)
            self.proc = None


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (the worker's pool child), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def step_of(jobs: JobStore, job_id: str) -> int:
    return int(jobs.get(job_id)["progress"]["step"])


def submit(settings: Settings, config: dict) -> str:
    """Queue a job as the API does (record first, then the message), without an API process."""
    from common.queue import TRAIN_QUEUE, TRAIN_TASK, create_celery

    job_id = JobStore(settings.jobs_dir).create(config)["id"]
    app = create_celery(settings)
    try:
        app.send_task(TRAIN_TASK, args=[job_id, config], queue=TRAIN_QUEUE, ignore_result=True)
    finally:
        app.close()
    return job_id


def assert_one_sequence_of_versions(store: ModelStore, job_id: str, published: list[int]) -> list[int]:
    """The job's versions in the store are exactly ``published``, each step published once, and
    every version folder is whole (a publisher killed mid-publish leaves only a ``.tmp-`` folder)."""
    mine = [info for info in store.list() if info.metadata.get("job_id") == job_id]
    assert [int(info.version) for info in mine] == published
    steps = [info.metadata["step"] for info in mine]
    assert steps == sorted(set(steps)), f"a step was published twice: {steps}"
    for info in store.list():
        assert {"generator.keras", "metadata.json"} <= {p.name for p in info.path.iterdir()}
    return steps


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", secrets.token_hex(12))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def start_worker(procs: list[Proc], env: dict[str, str], log: Path) -> Proc:
    worker = Proc(colorizer("worker"), env, log)
    procs.append(worker)
    return worker


# -- 1 and 5: a worker killed or stopped mid-job; the job resumes and publishes each step once ---


def test_killed_or_stopped_worker_resumes_the_job_from_its_checkpoint(tmp_path, redis_server, procs):
    data_dir = tmp_path / "data"
    write_dataset(data_dir / "datasets" / "tiny")
    extra = {
        "COLORIZER_BROKER_URL": redis_server.url,
        "COLORIZER_VISIBILITY_TIMEOUT": "60",
        "COLORIZER_RECOVERY_INTERVAL": "1",
    }
    env = colorizer_env(data_dir, **extra)
    settings = Settings(data_dir=data_dir, broker_url=redis_server.url)
    jobs, store = JobStore(settings.jobs_dir), ModelStore(settings.models_dir)
    every = LONG_JOB["checkpoint_every"]

    worker = start_worker(procs, env, tmp_path / "worker-1.log")
    job_id = submit(settings, {**LONG_JOB, "max_seconds": 45})  # across attempts; generous under load
    wait_for(lambda: step_of(jobs, job_id) >= 15, TIMEOUT, "training progress", (worker,))

    # (a) SIGTERM to the worker's main process only, as `docker stop` or systemd would send it: the
    # job stops at its next step with a checkpoint of that step and goes back to queued.
    os.kill(worker.popen.pid, signal.SIGTERM)
    worker.popen.wait(60)
    stopped = jobs.get(job_id)
    assert stopped["state"] == "queued", stopped
    assert stopped["interruptions"] == 1 and stopped["attempts"] == 1
    interrupted_at = stopped["progress"]["step"]
    backup = jobs.job_dir(job_id) / "backup"
    assert f"step-{interrupted_at:09d}" in os.listdir(backup), os.listdir(backup)

    # (b) a new worker finds the job nobody trains and resumes it from exactly that step.
    worker = start_worker(procs, env, tmp_path / "worker-2.log")
    resumed = wait_for(
        lambda: (r := jobs.get(job_id))["attempts"] == 2 and r["progress"]["step"] > interrupted_at and r,
        TIMEOUT,
        "the job to resume after the warm shutdown",
        (worker,),
    )
    assert resumed["resumed_from_step"] == interrupted_at

    # (c) SIGKILL the pool child that trains: Celery requeues the message at once (reject on
    # worker lost); the job resumes from its last checkpoint, at most one interval back.
    wait_for(lambda: step_of(jobs, job_id) >= interrupted_at + 2 * every, TIMEOUT, "more steps", (worker,))
    (child,) = child_pids(worker.popen.pid)
    seen = step_of(jobs, job_id)
    os.kill(child, signal.SIGKILL)
    again = wait_for(
        lambda: (r := jobs.get(job_id))["attempts"] == 3 and r["progress"]["step"] > seen and r,
        TIMEOUT,
        "the job to resume after its child was killed",
        (worker,),
    )
    assert seen - every <= again["resumed_from_step"] <= again["progress"]["step"]

    # (d) SIGKILL the whole worker: nothing is acknowledged or requeued by Celery; the next
    # worker's recovery re-queues the job (Redis alone would wait out the visibility timeout).
    wait_for(
        lambda: step_of(jobs, job_id) >= again["progress"]["step"] + 2 * every, TIMEOUT, "steps", (worker,)
    )
    seen = step_of(jobs, job_id)
    worker.stop(signal.SIGKILL)
    worker = start_worker(procs, env, tmp_path / "worker-3.log")
    done = wait_for(
        lambda: (r := jobs.get(job_id))["state"] in ("succeeded", "failed") and r,
        TIMEOUT,
        "the job to finish after the worker was killed",
        (worker,),
    )
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 4 and done["interruptions"] == 1
    assert seen - every <= done["resumed_from_step"]
    assert "queued again to resume" in worker.log()

    # Exactly one sequence of versions: no step published twice across the four runs.
    steps = assert_one_sequence_of_versions(store, job_id, done["published_versions"])
    assert steps and steps[-1] == done["progress"]["step"]
    assert all(s % LONG_JOB["publish_every"] == 0 for s in steps[:-1])
    assert not backup.exists()  # removed once the job finished


# -- 3: bad datasets fail readably and the worker goes on; the embedded broker recovers a kill ---


def test_bad_datasets_fail_readably_and_a_killed_embedded_worker_recovers(tmp_path, procs):
    data_dir = tmp_path / "data"
    datasets = data_dir / "datasets"
    write_dataset(datasets / "tiny")
    (datasets / "empty").mkdir()
    (datasets / "corrupt").mkdir()
    (datasets / "corrupt" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (datasets / "corrupt" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_dataset(datasets / "small", count=3, size=(24, 20))  # under the 32 px crop
    env = colorizer_env(data_dir, COLORIZER_RECOVERY_INTERVAL="1")  # the embedded SQLite broker
    settings = Settings(data_dir=data_dir)
    jobs, store = JobStore(settings.jobs_dir), ModelStore(settings.models_dir)

    bad = {
        name: submit(settings, {**SMALL_JOB, "dataset": name})
        for name in ("gone", "empty", "corrupt", "small")
    }
    # The time budget counts every attempt, so it must outlast the kill below by a wide margin
    # (under load, step 15 can take several seconds of it); otherwise the first attempt may finish,
    # and remove its checkpoints, just before the kill.
    good = submit(settings, {**LONG_JOB, "max_seconds": 20})
    worker = start_worker(procs, env, tmp_path / "worker-1.log")

    for job_id in bad.values():
        wait_for(lambda j=job_id: jobs.get(j)["state"] == "failed", TIMEOUT, "bad job to fail", (worker,))
    errors = {name: jobs.get(job_id)["error"] for name, job_id in bad.items()}
    assert "dataset 'gone' does not exist" in errors["gone"]
    assert errors["empty"] == "no usable image in dataset folder 'empty' (no files)"
    assert "no usable image" in errors["corrupt"] and "2 unreadable" in errors["corrupt"]
    assert "no usable image" in errors["small"] and "3 smaller than 32 px" in errors["small"]

    # The worker took the good job after them. SIGKILL the whole worker mid-job: the embedded
    # broker never hands that message out again; the next worker's recovery re-queues the job.
    wait_for(lambda: step_of(jobs, good) >= 15, TIMEOUT, "the good job to train", (worker,))
    worker.stop(signal.SIGKILL)
    assert jobs.get(good)["state"] == "running"
    assert any(p.name.startswith("step-") for p in (jobs.job_dir(good) / "backup").iterdir())
    worker = start_worker(procs, env, tmp_path / "worker-2.log")
    done = wait_for(
        lambda: (r := jobs.get(good))["state"] in ("succeeded", "failed") and r,
        TIMEOUT,
        "the good job to finish",
        (worker,),
    )
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2 and done["resumed_from_step"] >= LONG_JOB["checkpoint_every"]
    assert_one_sequence_of_versions(store, good, done["published_versions"])


# -- 2, 5 and 6: Redis restarts under a running and a queued job; the API stops gracefully -------


def photo_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_photo(width, height, seed=4)).convert("L").save(buf, "PNG")
    return buf.getvalue()


def post_in_two_halves(base_url: str, payload: bytes, halfway: threading.Event, go_on: threading.Event):
    """POST /colorize whose body stops halfway until ``go_on``; returns a dict that gets the response."""
    result: dict = {}

    def body() -> Iterator[bytes]:
        yield payload[: len(payload) // 2]
        halfway.set()
        go_on.wait(60)
        yield payload[len(payload) // 2 :]

    def post() -> None:
        headers = {"Content-Type": "image/png", "Content-Length": str(len(payload))}
        try:
            result["response"] = httpx.post(
                f"{base_url}/colorize", content=body(), headers=headers, timeout=120
            )
        except httpx.HTTPError as exc:
            result["error"] = exc

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    result["thread"] = thread
    return result


def test_redis_restart_loses_no_job_and_the_api_fails_fast_then_stops_gracefully(
    tmp_path, procs, redis_server
):
    api_key, wrong_key = secrets.token_hex(12), secrets.token_hex(12)
    data_dir = tmp_path / "data"
    write_dataset(data_dir / "datasets" / "tiny")
    env = colorizer_env(
        data_dir,
        COLORIZER_BROKER_URL=redis_server.url,
        COLORIZER_API_KEY=api_key,
        COLORIZER_RECOVERY_INTERVAL="1",
        # the API serves what the jobs publish; loading the packaged default before them took
        # seconds of both cores from the training it waits for
        COLORIZER_DEFAULT_MODEL_DIR=str(tmp_path / "no-default"),
    )
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    worker = start_worker(procs, env, tmp_path / "worker.log")
    api = Proc(colorizer("serve", "--port", str(port)), env, tmp_path / "api.log")
    procs.append(api)
    client = httpx.Client(base_url=base_url, timeout=30, headers={"X-API-Key": api_key})
    try:
        wait_for(lambda: client.get("/healthz").status_code == 200, TIMEOUT, "API up", (api,))
        assert client.get("/jobs", headers={"X-API-Key": wrong_key}).status_code == 401

        # The budget counts every attempt: it must outlast the Redis outage below by a wide margin,
        # or the first attempt could finish before the outage interrupts it.
        running = client.post("/jobs", json={**LONG_JOB, "max_seconds": 20})
        queued = client.post("/jobs", json=SMALL_JOB)
        assert running.status_code == queued.status_code == 202, (running.text, queued.text)
        running_id, queued_id = running.json()["id"], queued.json()["id"]
        wait_for(
            lambda: client.get(f"/jobs/{running_id}").json()["progress"]["step"] >= 15,
            TIMEOUT,
            "the first job to train",
            (api, worker),
        )

        # Redis goes away (a clean shutdown flushes its AOF, as a container restart would).
        redis_server.stop()
        started = time.monotonic()
        refused = client.post("/jobs", json=SMALL_JOB)
        assert time.monotonic() - started < 10, "POST /jobs must fail fast while the broker is down"
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/json" and "Retry-After" in refused.headers
        assert "broker" in refused.json()["detail"] and refused.json()["job"]["state"] == "failed"
        listed = client.get("/jobs")  # job records need no broker
        assert listed.status_code == 200 and {running_id, queued_id} <= {j["id"] for j in listed.json()}

        # Redis comes back on the same port with its data: nothing was lost, the worker
        # reconnects, the interrupted job resumes, the queued one runs, and POST /jobs works again.
        redis_server.start()
        for job_id in (running_id, queued_id):
            wait_for(
                lambda j=job_id: client.get(f"/jobs/{j}").json()["state"] in ("succeeded", "failed"),
                TIMEOUT,
                "jobs to finish after the Redis restart",
                (api, worker),
            )
        first, second = (client.get(f"/jobs/{j}").json() for j in (running_id, queued_id))
        assert first["state"] == second["state"] == "succeeded", (first, second)
        assert first["attempts"] >= 2 and first["resumed_from_step"] >= LONG_JOB["checkpoint_every"]
        assert_one_sequence_of_versions(
            ModelStore(data_dir / "models"), running_id, first["published_versions"]
        )
        after = client.post("/jobs", json=SMALL_JOB)
        assert after.status_code == 202, after.text
        assert client.post(f"/jobs/{after.json()['id']}/cancel").status_code in (200, 202)

        # Graceful stop: SIGTERM while a photograph is half uploaded; its answer still arrives whole.
        newest = ModelStore(data_dir / "models").versions()[-1]
        wait_for(
            lambda: client.get("/readyz").json().get("model_version") == newest,
            TIMEOUT,
            "the newest version to be served",
            (api,),
        )
        payload = photo_png(1600, 1200)
        halfway, go_on = threading.Event(), threading.Event()
        upload = post_in_two_halves(base_url, payload, halfway, go_on)
        assert halfway.wait(30)
        assert client.get("/healthz").status_code == 200  # the server has read the upload's headers
        api.popen.send_signal(signal.SIGTERM)

        def refuses_new_connections() -> bool:
            try:
                httpx.get(f"{base_url}/healthz", timeout=2)
            except httpx.ConnectError:
                return True
            return False

        wait_for(refuses_new_connections, 30, "the API to stop accepting connections")
        go_on.set()
        upload["thread"].join(120)
        assert "error" not in upload, upload.get("error")
        response = upload["response"]
        assert response.status_code == 200, response.text
        assert Image.open(io.BytesIO(response.content)).size == (1600, 1200)
        # uvicorn finishes its shutdown, then re-raises the SIGTERM it caught (exit status -15).
        assert api.popen.wait(60) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in api.log()
    finally:
        client.close()
        worker.stop()

    # No secret in any log: not the API key, not the wrong key tried, not the Redis password.
    logs = api.log() + worker.log()
    for secret in (api_key, wrong_key, redis_server.password):
        assert secret not in logs
