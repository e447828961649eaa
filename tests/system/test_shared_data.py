"""A worker whose data directory is not the API's never loses a job (real processes, Redis): alone,
it hands the job back to the queue and at last fails it with a reason the API shows; beside a
worker that shares the API's data directory, the job is trained by that one."""

from __future__ import annotations

import httpx
import pytest
import redis

from tests.apptest import TINY_JOB
from tests.photos import write_dataset
from tests.procs import REDIS_TEST_URL, Proc, colorizer, colorizer_env, free_port, wait_for

pytestmark = pytest.mark.integration

JOB = {**TINY_JOB, "batch_size": 2, "seed": 3}
TIMEOUT = 180  # seconds: workers importing TensorFlow, and the hand-backs


def test_a_job_no_worker_can_see_fails_loudly_and_a_worker_that_can_see_it_runs_it(tmp_path, procs):
    redis.Redis.from_url(REDIS_TEST_URL).flushdb()
    shared = tmp_path / "shared"
    write_dataset(shared / "datasets" / "tiny")
    elsewhere = tmp_path / "elsewhere"  # a second machine's empty volume
    settings = {
        "COLORIZER_BROKER_URL": REDIS_TEST_URL,
        "COLORIZER_DEFAULT_MODEL_DIR": str(tmp_path / "none"),
        "COLORIZER_UNSEEN_JOB_SECONDS": "12",  # hand-backs 1, 2, 4 and 8 s apart, then it fails
    }
    port = free_port()
    api = Proc(
        colorizer("serve", "--port", str(port)), colorizer_env(shared, **settings), tmp_path / "api.log"
    )
    stranger = Proc(colorizer("worker"), colorizer_env(elsewhere, **settings), tmp_path / "stranger.log")
    procs.extend([api, stranger])
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    wait_for(lambda: client.get("/healthz").status_code == 200, TIMEOUT, "the API", (api, stranger))

    lost = client.post("/jobs", json=JOB).json()["id"]
    failed = wait_for(
        lambda: (r := client.get(f"/jobs/{lost}").json())["state"] == "failed" and r,
        TIMEOUT,
        "the job no worker can see to fail",
        (api, stranger),
    )
    assert "COLORIZER_DATA_DIR" in failed["error"] and "no record of it" in failed["error"]
    assert str(elsewhere) not in failed["error"]  # no server paths in answers
    assert "handing it back to the queue" in stranger.log()
    assert [j["state"] for j in client.get("/jobs").json()] == ["failed"]

    colleague = Proc(colorizer("worker"), colorizer_env(shared, **settings), tmp_path / "colleague.log")
    procs.append(colleague)
    everyone = (api, stranger, colleague)
    wait_for(lambda: " ready." in colleague.log(), TIMEOUT, "the colleague worker", everyone)
    trained = client.post("/jobs", json=JOB).json()["id"]
    done = wait_for(
        lambda: (r := client.get(f"/jobs/{trained}").json())["state"] in ("succeeded", "failed") and r,
        TIMEOUT,
        "the job to be trained by the worker that shares the data directory",
        everyone,
    )
    assert done["state"] == "succeeded", done["error"]
    assert done["published_versions"]
    client.close()
