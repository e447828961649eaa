"""The HTTP API in-process (TestClient): health, readiness, model listing, /metrics and the API key,
with real tiny generators published into a temporary store.

Only the Celery app is replaced (by a fake that records ``send_task``), through
``app.dependency_overrides``; everything else is the real thing.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

from prometheus_client.parser import text_string_to_metric_families

from models.store import GENERATOR_FILE, METADATA_FILE
from tests.apptest import (
    TINY_JOB,
    assert_json_error,
    changed,
    encode,
    photo,
    publish_tiny,
    wait_for,
)

# -- import hygiene ------------------------------------------------------------------------------


def test_importing_and_creating_the_app_does_not_import_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "import service.app\n"
        "from common.settings import Settings\n"
        f"service.app.create_app(Settings(data_dir={str(tmp_path)!r}))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# -- health and readiness ------------------------------------------------------------------------


def test_readyz_is_503_on_an_empty_store_then_200_once_a_version_is_published(settings, start):
    client = start(changed(settings, inference_runtime="auto"))  # the service's default
    assert client.get("/healthz").json() == {"status": "ok"}
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["ready"] is False and not_ready.json()["detail"]
    assert_json_error(
        client.post("/colorize", content=encode(photo()), headers={"content-type": "image/png"}), 503
    )

    publish_tiny(settings)
    ready = wait_for(lambda: (r := client.get("/readyz")).status_code == 200 and r.json(), what="hot reload")
    runtime = ready.pop("runtime"), ready.pop("runtime_reason")
    assert ready == {"ready": True, "model_version": 1, "policy": "latest", "device": "CPU:0", "detail": None}
    # a 32 px model of width 4 is too fast for a conversion to pay
    assert runtime[0].startswith("tensorflow ") and "too little to gain" in runtime[1]
    assert client.get("/healthz").status_code == 200


def test_readyz_says_the_first_model_is_loading_while_it_loads(settings, start, monkeypatch):
    from inference.engine import Engine

    publish_tiny(settings)
    release = threading.Event()
    load = Engine._load_and_warm

    def slow_load(engine, version):
        release.wait(60)
        return load(engine, version)

    monkeypatch.setattr(Engine, "_load_and_warm", slow_load)
    client = start(settings)
    try:
        loading = wait_for(
            lambda: (
                (r := client.get("/readyz")).json()["detail"] == "starting: loading model version 1" and r
            ),
            what="the load reported",
        )
        assert loading.status_code == 503
        refused = client.post("/colorize", content=encode(photo()), headers={"content-type": "image/png"})
        assert_json_error(refused, 503, "loading model version 1")
    finally:
        release.set()
    wait_for(lambda: client.get("/readyz").status_code == 200, what="version 1 served")


def test_a_newer_version_is_served_without_restart(client, settings):
    assert client.get("/readyz").json()["model_version"] == 1
    assert publish_tiny(settings, preset="seed") == 2
    wait_for(lambda: client.get("/readyz").json()["model_version"] == 2, what="version 2 served")
    response = client.post("/colorize", files={"image": ("old.png", encode(photo()), "image/png")})
    assert response.status_code == 200
    assert response.headers["x-model-version"] == "2"


def test_broken_version_is_skipped_once_and_the_old_one_keeps_serving(client, settings, caplog):
    caplog.set_level(logging.WARNING, logger="inference.engine")
    broken = settings.models_dir / "2"
    broken.mkdir()
    (broken / METADATA_FILE).write_text('{"preset": "lab", "image_size": 32, "version": 2}')
    (broken / GENERATOR_FILE).write_bytes(b"PK\x03\x04 this is not a keras archive")

    listing = wait_for(
        lambda: (v := client.get("/models").json()["versions"]) and len(v) == 2 and v[1]["error"] and v,
        what="version 2 marked broken",
    )
    assert listing[1]["version"] == 2 and "generator.keras" in listing[1]["error"]
    assert listing[1]["served"] is False and listing[0]["served"] is True
    response = client.post("/colorize", content=encode(photo()), headers={"content-type": "image/png"})
    assert response.status_code == 200 and response.headers["x-model-version"] == "1"
    assert client.get("/readyz").json()["model_version"] == 1

    # a later good version is still picked up, and the broken one was not retried on every tick
    assert publish_tiny(settings) == 3
    wait_for(lambda: client.get("/readyz").json()["model_version"] == 3, what="version 3 served")
    warnings = [r for r in caplog.records if r.getMessage().startswith("model version 2 cannot be served")]
    assert len(warnings) == 1


def test_models_lists_versions_with_metadata_and_the_served_one(client, settings):
    publish_tiny(settings, preset="seed")
    wait_for(lambda: client.get("/models").json()["served"] == 2, what="version 2 served")
    body = client.get("/models").json()
    assert body["device"] == "CPU:0"
    assert [(v["version"], v["preset"], v["served"]) for v in body["versions"]] == [
        (1, "lab", False),
        (2, "seed", True),
    ]
    assert body["versions"][1]["metadata"]["image_size"] == 32
    assert body["versions"][1]["image_size"] == body["versions"][1]["render_size"] == 32  # none set
    assert body["versions"][0]["loaded"] is True  # the previous one stays cached


def test_folders_in_the_store_that_are_not_versions_break_nothing(client, settings):
    # "²".isdigit() is True but int("²") raises; "١" and "１" read as 1 (issue 14)
    for name in ("²", "١", "１", "notes"):
        (settings.models_dir / name).mkdir()
    broken = settings.models_dir / "5"
    broken.mkdir()
    (broken / METADATA_FILE).write_text("{not json")
    assert publish_tiny(settings) == 6  # publishing (a training job) counts past them
    wait_for(lambda: client.get("/readyz").json()["model_version"] == 6, what="version 6 served")
    response = client.get("/models")
    assert response.status_code == 200, response.text
    versions = response.json()["versions"]
    assert [v["version"] for v in versions] == [1, 5, 6]
    assert "metadata.json" in versions[1]["error"]
    assert str(settings.models_dir) not in response.text  # no server paths, no key needed


# -- /metrics --------------------------------------------------------------------------------------


def _metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample called ``name`` with these labels in a scrape, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_metrics_expose_requests_inference_model_and_memory(client):
    before = client.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    served = _metric(
        before.text, "colorizer_http_requests_total", method="POST", route="/colorize", status="200"
    )
    assert served is None
    for _ in range(3):
        ok = client.post("/colorize", content=encode(photo()), headers={"content-type": "image/png"})
        assert ok.status_code == 200
    client.get("/jobs/0123456789abcdef0123456789abcdef")
    client.get("/no/such/path")
    text = client.get("/metrics").text
    assert _metric(text, "colorizer_http_requests_total", method="POST", route="/colorize", status="200") == 3
    assert (
        _metric(text, "colorizer_http_request_duration_seconds_count", route="/colorize", status="200") == 3
    )
    assert _metric(text, "colorizer_http_requests_total", route="/jobs/{job_id}", status="404") == 1
    assert _metric(text, "colorizer_http_requests_total", route="unmatched", status="404") == 1
    assert "/no/such/path" not in text  # raw paths never become labels
    assert _metric(text, "colorizer_inference_batch_size_sum") == 3
    assert _metric(text, "colorizer_inference_seconds_count") == 3
    assert _metric(text, "colorizer_inference_queue_depth") == 0
    assert _metric(text, "colorizer_model_info", version="1", preset="lab", runtime="tensorflow") == 1
    assert _metric(text, "colorizer_model_runtime_info", version="1", runtime="tensorflow") == 1
    assert _metric(text, "colorizer_runtime_fallbacks_total") is None  # no OpenVINO was asked for
    assert _metric(text, "colorizer_model_reloads_total") == 1
    assert _metric(text, "colorizer_model_reload_failures_total") == 0
    assert _metric(text, "process_resident_memory_bytes") > 10_000_000


def test_metrics_count_a_version_that_fails_to_load(client, settings):
    broken = settings.models_dir / "2"
    broken.mkdir()
    (broken / METADATA_FILE).write_text('{"preset": "lab", "image_size": 32}')
    (broken / GENERATOR_FILE).write_bytes(b"garbage")
    wait_for(lambda: 2 in client.app.state.engine.failed_versions(), what="version 2 tried")
    text = client.get("/metrics").text
    assert _metric(text, "colorizer_model_reload_failures_total") == 1
    publish_tiny(settings)  # version 3
    wait_for(lambda: client.get("/readyz").json()["model_version"] == 3, what="version 3 served")
    text = client.get("/metrics").text
    assert _metric(text, "colorizer_model_reloads_total") == 2
    assert _metric(text, "colorizer_model_info", version="3") == 1
    assert _metric(text, "colorizer_model_info", version="1") is None


def test_openvino_serves_and_a_version_it_cannot_convert_is_served_by_tensorflow(
    settings, start, monkeypatch
):
    from models import runtimes

    publish_tiny(settings)
    client = start(changed(settings, inference_runtime="openvino"))
    ready = wait_for(lambda: (r := client.get("/readyz")).status_code == 200 and r.json(), what="served")
    assert ready["runtime"] == "openvino float32"
    assert ready["runtime_reason"] == "COLORIZER_INFERENCE_RUNTIME is openvino"
    assert client.post("/colorize", content=encode(photo()), headers={"content-type": "image/png"}).is_success
    assert [v["runtime"] for v in client.get("/models").json()["versions"]] == ["openvino float32"]
    assert (settings.data_dir / "cache" / "openvino").is_dir()

    def fails(*args):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(runtimes, "convert", fails)
    publish_tiny(settings)  # version 2: its conversion fails
    ready = wait_for(
        lambda: (r := client.get("/readyz")).json()["model_version"] == 2 and r.json(), what="version 2"
    )
    assert ready["runtime"].startswith("tensorflow ")
    assert "OpenVINO cannot convert the model: RuntimeError: unsupported operation" in ready["runtime_reason"]
    assert client.post("/colorize", content=encode(photo()), headers={"content-type": "image/png"}).is_success
    text = client.get("/metrics").text
    assert _metric(text, "colorizer_runtime_fallbacks_total", runtime="openvino") == 1
    assert _metric(text, "colorizer_model_info", version="2", runtime="tensorflow") == 1
    assert _metric(text, "colorizer_model_runtime_info", version="1", runtime="openvino") == 1
    assert _metric(text, "colorizer_model_runtime_info", version="2", runtime="tensorflow") == 1
    versions = {v["version"]: v["runtime"] for v in client.get("/models").json()["versions"]}
    assert versions[1] == "openvino float32" and versions[2].startswith("tensorflow ")


# -- API key -------------------------------------------------------------------------------------


def test_jobs_need_the_api_key_when_one_is_set(keyed_client):
    missing = keyed_client.get("/jobs")
    assert_json_error(missing, 401, "X-API-Key")
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_json_error(keyed_client.get("/jobs", headers={"X-API-Key": "wrong"}), 401, "wrong")
    assert_json_error(keyed_client.post("/jobs", json=TINY_JOB), 401)
    assert_json_error(keyed_client.post("/jobs/0123456789abcdef0123456789abcdef/cancel"), 401)


def test_jobs_accept_the_api_key_as_header_or_bearer_token(keyed_client):
    assert keyed_client.get("/jobs", headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert keyed_client.get("/jobs", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
    submitted = keyed_client.post("/jobs", json=TINY_JOB, headers={"X-API-Key": "s3cret-key"})
    assert submitted.status_code == 202, submitted.text


def test_every_get_route_answers_head_with_its_own_checks(keyed_client, tmp_path):
    for path in ("/healthz", "/readyz", "/metrics", "/models", "/"):
        got, head = keyed_client.get(path), keyed_client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.headers.get("cache-control") == got.headers.get("cache-control"), path
    # the API key guards HEAD where it guards GET; a route with no GET still refuses HEAD
    assert keyed_client.head("/jobs").status_code == 401
    assert keyed_client.head("/jobs", headers={"X-API-Key": "s3cret-key"}).status_code == 200
    refused = keyed_client.head("/colorize")
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    # and a 405 names HEAD where GET is allowed
    assert keyed_client.put("/healthz").headers["allow"] == "GET, HEAD"
    unknown = keyed_client.head("/jobs/0123456789abcdef0123456789abcdef", headers={"X-API-Key": "s3cret-key"})
    assert unknown.status_code == 404
    # a second app adds no twins to the (module-level) routers again
    from common.settings import Settings
    from service.app import create_app
    from service.routers import health

    routes = len(health.router.routes)
    create_app(Settings(data_dir=tmp_path / "second"))
    assert len(health.router.routes) == routes
    # HEAD is implied by GET: not an operation of its own in the schema
    schema = keyed_client.get("/openapi.json").json()
    assert not [path for path, operations in schema["paths"].items() if "head" in operations]


def test_colorize_models_and_probes_stay_open_with_an_api_key(keyed_client):
    assert keyed_client.get("/healthz").status_code == 200
    assert keyed_client.get("/readyz").status_code == 200
    assert keyed_client.get("/models").status_code == 200
    response = keyed_client.post("/colorize", content=encode(photo()), headers={"content-type": "image/png"})
    assert response.status_code == 200
