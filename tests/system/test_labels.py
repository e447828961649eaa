"""Labels with real processes: two API replicas following ``stable`` on one store, two workers
publishing at once; the label, not the newest version, decides what both serve; retention keeps
the labelled version; a pinned replica keeps its version across restarts."""

from __future__ import annotations

import io
import threading
import time

import httpx
import pytest
import redis
from PIL import Image

from common.labels import Labels
from models.store import ModelStore
from tests.apptest import TINY_JOB, publish_tiny_to
from tests.photos import make_photo, write_dataset
from tests.procs import REDIS_TEST_URL, Proc, colorizer, colorizer_env, free_port, wait_for

pytestmark = pytest.mark.integration

JOB = {**TINY_JOB, "batch_size": 2, "steps": 6, "publish_every": 3, "checkpoint_every": 3, "seed": 3}
TIMEOUT = 240  # seconds: four processes importing TensorFlow on two cores


def gray_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(make_photo(40, 30, seed=2)).convert("L").save(buffer, "PNG")
    return buffer.getvalue()


def served(client: httpx.Client) -> int | str | None:
    response = client.get("/readyz")
    return response.json().get("model_version") if response.status_code == 200 else None


def test_replicas_follow_the_label_not_the_newest_version_and_a_pin_survives_restarts(tmp_path, procs):
    data_dir = tmp_path / "data"
    write_dataset(data_dir / "datasets" / "tiny")
    store = ModelStore(data_dir / "models")
    assert publish_tiny_to(store) == 1
    Labels(store.root).set("stable", 1)
    redis.Redis.from_url(REDIS_TEST_URL).flushdb()
    env = colorizer_env(
        data_dir,
        COLORIZER_BROKER_URL=REDIS_TEST_URL,  # two workers on one queue
        COLORIZER_SERVE="stable",
        COLORIZER_KEEP_VERSIONS="2",
        COLORIZER_DEFAULT_MODEL_DIR=str(tmp_path / "no-default"),
    )
    ports = [free_port(), free_port()]
    apis = [
        Proc(colorizer("serve", "--port", str(p)), env, tmp_path / f"api{i}.log") for i, p in enumerate(ports)
    ]
    workers = [Proc(colorizer("worker"), env, tmp_path / f"worker{i}.log") for i in range(2)]
    procs.extend([*apis, *workers])
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{p}", timeout=60) for p in ports]
    everyone = tuple(procs)
    for client in clients:
        wait_for(lambda c=client: served(c) == 1, TIMEOUT, "a replica serving the label", everyone)

    # Two jobs publish four versions (2-5) while clients colorize on both replicas.
    job_ids = [clients[0].post("/jobs", json=JOB).json()["id"] for _ in range(2)]
    answers: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def keep_posting(client: httpx.Client) -> None:
        body = gray_png()
        while not stop.is_set():
            response = client.post("/colorize", content=body)
            answers.append((response.status_code, response.headers.get("X-Model-Version")))

    posters = [threading.Thread(target=keep_posting, args=(c,)) for c in clients]
    for poster in posters:
        poster.start()
    try:
        for job_id in job_ids:
            wait_for(
                lambda j=job_id: clients[1].get(f"/jobs/{j}").json()["state"] == "succeeded",
                TIMEOUT,
                f"job {job_id}",
                everyone,
            )
        time.sleep(1.0)  # several looks at the store by both replicas after the last publish
    finally:
        stop.set()
        for poster in posters:
            poster.join(60)
    published = sorted(v for j in job_ids for v in clients[0].get(f"/jobs/{j}").json()["published_versions"])
    assert published == [2, 3, 4, 5]
    assert answers and set(answers) == {(200, "1")}, sorted(set(answers))
    assert [served(c) for c in clients] == [1, 1]
    assert store.versions() == [1, 4, 5]  # retention: the newest two and the labelled one

    # Moving the label switches both replicas.
    moved = clients[0].put("/models/labels/stable", json={"version": 4})
    assert moved.status_code == 200 and moved.json()["previous"] == 1
    for client in clients:
        wait_for(lambda c=client: served(c) == 4, TIMEOUT, "both replicas on version 4", everyone)
    assert clients[1].get("/models/labels").json() == {"policy": "stable", "labels": {"stable": 4}}

    # A replica pinned to version 5 serves it, and again after a restart.
    for restart in range(2):
        apis[1].stop()
        pinned_env = {**env, "COLORIZER_SERVE": "5"}
        apis[1] = Proc(
            colorizer("serve", "--port", str(ports[1])), pinned_env, tmp_path / f"pinned{restart}.log"
        )
        procs.append(apis[1])
        wait_for(lambda: served(clients[1]) == 5, TIMEOUT, "the pinned replica", (apis[1],))
        assert clients[1].get("/readyz").json()["policy"] == "5"
    assert served(clients[0]) == 4
    for client in clients:
        client.close()
