"""Security: the API key on every state-changing route, no path out of the data directory, JSON-only
Celery, and no secret in a repr or an error message. (Logs of real processes: test_faults.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from common.jobs import JobStore
from common.settings import Settings, redact_url
from service.app import create_app
from service.deps import get_celery
from tests.apptest import FakeCelery
from tests.procs import colorizer_env

KEY = "k3y-" + "9f2c" * 6
TINY_JOB = {"dataset": "tiny", "image_size": 32, "steps": 2, "width": 4, "batch_size": 2}
# Routes that change nothing on the server and stay open with a key (README: only /jobs needs it).
OPEN_POSTS = {("POST", "/colorize"), ("POST", "/colorize/batch")}


@pytest.fixture
def keyed(dataset_dir) -> Iterator[tuple[TestClient, FakeCelery, Settings]]:
    settings = Settings(data_dir=dataset_dir, api_key=KEY)
    fake = FakeCelery()
    with TestClient(create_app(settings)) as client:
        client.app.dependency_overrides[get_celery] = lambda: fake
        yield client, fake, settings


def test_every_state_changing_route_refuses_a_request_without_the_key(keyed):
    client, fake, settings = keyed
    # Every route the app has, from its OpenAPI schema (FastAPI nests included routers).
    changing = [
        (method.upper(), path)
        for path, operations in client.app.openapi()["paths"].items()
        for method in operations
        if method.upper() in ("POST", "PUT", "PATCH", "DELETE")
    ]
    checked = set()
    for method, path in changing:
        if (method, path) in OPEN_POSTS:
            continue
        url = path.replace("{job_id}", "0123456789abcdef0123456789abcdef").replace("{name}", "tiny")
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
            response = client.request(method, url, json=TINY_JOB, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["detail"]
        checked.add((method, path))
    # The routes there are today; a new one must be added here or to OPEN_POSTS on purpose.
    assert checked == {
        ("POST", "/jobs"),
        ("POST", "/jobs/{job_id}/cancel"),
        ("POST", "/datasets"),
        ("DELETE", "/datasets/{name}"),
        ("PUT", "/models/labels/{name}"),
        ("DELETE", "/models/labels/{name}"),
    }
    assert (settings.datasets_dir / "tiny").is_dir()  # the DELETE without a key deleted nothing
    assert fake.calls == [] and JobStore(settings.jobs_dir).list() == []


@pytest.mark.parametrize(
    "dataset",
    ["..", "../tiny", "../../etc", "/etc", "/tmp/x", "tiny/../..", "a/b", "tiny\\..\\..", ".", "~root", ""],
)
def test_a_dataset_name_cannot_leave_the_datasets_directory(keyed, dataset):
    client, fake, settings = keyed
    response = client.post("/jobs", json={**TINY_JOB, "dataset": dataset}, headers={"X-API-Key": KEY})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "dataset"]
    assert fake.calls == [] and JobStore(settings.jobs_dir).list() == []


def test_a_dataset_symlinked_out_of_the_data_directory_is_refused(keyed, tmp_path):
    client, fake, settings = keyed
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (settings.datasets_dir / "escape").symlink_to(outside)
    (settings.datasets_dir / "loop").symlink_to(settings.datasets_dir)
    for name in ("escape", "loop"):
        response = client.post("/jobs", json={**TINY_JOB, "dataset": name}, headers={"X-API-Key": KEY})
        assert response.status_code == 422, response.text
    assert fake.calls == []


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/..%2F..%2Fetc%2Fpasswd",
        "/jobs/%2e%2e",
        "/jobs/..%2F..%2Fmodels/samples/latest",
        "/jobs/0123456789ABCDEF0123456789ABCDEF",
        "/jobs/0123456789abcdef0123456789abcdef%2F..%2F..",
    ],
)
def test_a_job_id_in_a_path_cannot_name_another_folder(keyed, path):
    client, _fake, _settings = keyed
    response = client.get(path, headers={"X-API-Key": KEY})
    assert response.status_code == 404, response.text
    assert response.json()["detail"]


def test_model_and_init_from_take_version_numbers_only(keyed):
    client, fake, _settings = keyed
    response = client.post("/jobs", json={**TINY_JOB, "init_from": "../1"}, headers={"X-API-Key": KEY})
    assert response.status_code == 422 and fake.calls == []
    colorized = client.post(
        "/colorize?model=../../etc", content=b"\x89PNG\r\n\x1a\n", headers={"content-type": "image/png"}
    )
    assert colorized.status_code in (404, 422), colorized.text


def test_celery_accepts_json_only(tmp_path):
    from kombu.exceptions import ContentDisallowed
    from kombu.serialization import dumps, loads, prepare_accept_content

    from common.queue import create_celery

    for broker in (None, "redis://127.0.0.1:6379/13"):
        conf = create_celery(Settings(data_dir=tmp_path, broker_url=broker)).conf
        assert list(conf.accept_content) == ["json"] and list(conf.result_accept_content) == ["json"]
        assert conf.task_serializer == conf.result_serializer == "json"
        accept = prepare_accept_content(conf.accept_content)  # as the worker's consumer does
        for serializer in ("pickle", "yaml"):
            content_type, encoding, body = dumps({"job": 1}, serializer=serializer)
            with pytest.raises(ContentDisallowed):
                loads(body, content_type, encoding, accept=accept)
        content_type, encoding, body = dumps({"job": 1}, serializer="json")
        assert loads(body, content_type, encoding, accept=accept) == {"job": 1}


def test_settings_never_show_the_api_key_or_a_url_password():
    settings = Settings(api_key=KEY, broker_url="redis://:hunter2-pw@redis:6379/0")
    for text in (repr(settings), str(settings), repr(settings.api_key)):
        assert KEY not in text and "hunter2-pw" not in text
    assert "redis://:***@redis:6379/0" in repr(settings)
    assert settings.api_key.get_secret_value() == KEY
    assert redact_url("db+postgresql://user:hunter2-pw@db/x") == "db+postgresql://user:***@db/x"
    assert redact_url("redis://redis:6379/0") == "redis://redis:6379/0"


def test_cli_errors_name_the_bad_settings_without_their_secret_values(tmp_path):
    env = colorizer_env(
        tmp_path,
        COLORIZER_API_KEY=KEY,
        COLORIZER_PORT="not-a-port",
        COLORIZER_BROKER_URL="ftp://admin:hunter2-pw@broker/0",
    )
    out = subprocess.run(
        [sys.executable, "-m", "cli", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    assert "COLORIZER_PORT" in out.stderr and "COLORIZER_BROKER_URL" in out.stderr
    assert KEY not in out.stdout + out.stderr and "hunter2-pw" not in out.stdout + out.stderr


def test_the_api_key_is_compared_in_constant_time(keyed, monkeypatch):
    import service.deps

    client, _, _ = keyed
    compared: list[tuple[bytes, bytes]] = []
    real = service.deps.secrets.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service.deps.secrets, "compare_digest", spy)
    assert client.get("/jobs", headers={"X-API-Key": "k3y-wrong"}).status_code == 401
    assert client.get("/jobs", headers={"X-API-Key": KEY}).status_code == 200
    assert compared == [(b"k3y-wrong", KEY.encode()), (KEY.encode(), KEY.encode())]


def test_a_version_whose_keras_file_carries_code_is_refused_without_running_it(tmp_path, monkeypatch):
    import keras

    from models.store import GENERATOR_FILE, METADATA_FILE, BrokenVersion, ModelStore

    marker = tmp_path / "code-ran"
    monkeypatch.setenv("COLORIZER_TEST_MARKER", str(marker))
    # A Lambda layer is arbitrary Python stored in the file: loading it unsafely would run it.
    inputs = keras.Input((32, 32, 1))
    touch_marker = lambda x: (open(__import__("os").environ["COLORIZER_TEST_MARKER"], "w").close(), x)[1]  # noqa: E731
    outputs = keras.layers.Lambda(touch_marker)(inputs)
    outputs = keras.layers.Conv2D(2, 1)(outputs)
    folder = tmp_path / "models" / "1"
    folder.mkdir(parents=True)
    keras.Model(inputs, outputs).save(folder / GENERATOR_FILE)
    (folder / METADATA_FILE).write_text('{"preset": "lab", "image_size": 32}')
    marker.unlink(missing_ok=True)  # building the model ran the lambda once, here, on purpose

    with pytest.raises(BrokenVersion, match="(?i)unsafe|lambda|safe_mode"):
        ModelStore(tmp_path / "models").load(1)
    assert not marker.exists()
