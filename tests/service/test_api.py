"""The HTTP API in-process (TestClient), with real tiny generators published into a temporary store.

Only the Celery app is replaced (by a fake that records ``send_task``), through
``app.dependency_overrides``; everything else is the real thing.
"""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from inference.images import to_array
from models.store import GENERATOR_FILE, METADATA_FILE
from service.app import create_app
from service.deps import get_celery
from tests.apptest import (
    TINY_JOB,
    FakeCelery,
    assert_json_error,
    changed,
    decoded,
    encode,
    photo,
    png_declaring,
    publish_tiny,
    wait_for,
)
from tests.photos import make_photo

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
    client = start(settings)
    assert client.get("/healthz").json() == {"status": "ok"}
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["ready"] is False and not_ready.json()["detail"]
    assert_json_error(
        client.post("/colorize", content=encode(photo()), headers={"content-type": "image/png"}), 503
    )

    publish_tiny(settings)
    ready = wait_for(lambda: (r := client.get("/readyz")).status_code == 200 and r.json(), what="hot reload")
    assert ready == {"ready": True, "model_version": 1, "device": "CPU:0", "detail": None}
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


# -- /colorize -----------------------------------------------------------------------------------


def test_colorize_multipart_returns_a_png_of_the_input_size(client):
    gray = photo(90, 60, mode="L")
    response = client.post("/colorize", files={"image": ("old.jpg", encode(gray, "JPEG"), "image/jpeg")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model-version"] == "1"
    out = decoded(response)
    assert out.format == "PNG" and out.mode == "RGB" and out.size == (90, 60)


def test_colorize_raw_image_body_returns_the_image_with_its_model_version(client):
    response = client.post("/colorize", content=encode(photo(33, 47)), headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == "1"
    assert decoded(response).size == (33, 47)


@pytest.mark.parametrize(
    ("fmt", "pil_format", "media_type"), [("jpeg", "JPEG", "image/jpeg"), ("webp", "WEBP", "image/webp")]
)
def test_colorize_answers_in_the_requested_format(client, fmt, pil_format, media_type):
    response = client.post(
        f"/colorize?format={fmt}", content=encode(photo()), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    out = decoded(response)
    assert out.format == pil_format and out.size == (50, 40)


def test_colorize_rejects_an_unsupported_format(client):
    response = client.post(
        "/colorize?format=gif", content=encode(photo()), headers={"content-type": "image/png"}
    )
    body = assert_json_error(response, 422, "format")
    assert body["errors"][0]["loc"] == ["query", "format"]


def test_colorize_runs_at_a_valid_render_size(client):
    response = client.post(
        "/colorize?render_size=64", content=encode(photo()), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200, response.text
    assert decoded(response).size == (50, 40)


@pytest.mark.parametrize("render_size", [33, 2048])
def test_colorize_rejects_a_render_size_the_model_cannot_use(client, render_size):
    response = client.post(
        f"/colorize?render_size={render_size}", content=encode(photo()), headers={"content-type": "image/png"}
    )
    body = assert_json_error(response, 422, "render_size")
    assert body["errors"][0]["loc"] == ["query", "render_size"]


@pytest.mark.parametrize("model", ["99", "unknown"])
def test_colorize_with_an_unknown_model_version_is_404(client, model):
    response = client.post(
        f"/colorize?model={model}", content=encode(photo()), headers={"content-type": "image/png"}
    )
    assert_json_error(response, 404, "does not exist")


# superscript two, Arabic-Indic one, full-width one, "1²", a leading zero-width digit: version 1
# exists, and none of these may name it (or answer 500)
@pytest.mark.parametrize("model", ["%C2%B2", "%D9%A1", "%EF%BC%91", "1%C2%B2", "%F0%9D%9F%8F", "9" * 300])
def test_colorize_takes_version_numbers_in_ascii_digits_only(client, model):
    response = client.post(
        f"/colorize?model={model}", content=encode(photo()), headers={"content-type": "image/png"}
    )
    assert_json_error(response, 404, "ASCII digits")
    again = client.post("/colorize?model=1", content=encode(photo()), headers={"content-type": "image/png"})
    assert again.status_code == 200 and again.headers["x-model-version"] == "1"


def test_colorize_loads_an_older_version_on_demand(client, settings):
    publish_tiny(settings)
    wait_for(lambda: client.get("/readyz").json()["model_version"] == 2, what="version 2 served")
    for version in ("1", "2", "1"):
        response = client.post(
            f"/colorize?model={version}", content=encode(photo()), headers={"content-type": "image/png"}
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-model-version"] == version


def test_colorize_with_a_broken_version_is_409(client, settings):
    broken = settings.models_dir / "7"
    broken.mkdir()
    (broken / METADATA_FILE).write_text('{"preset": "lab", "image_size": 32}')
    (broken / GENERATOR_FILE).write_bytes(b"garbage")
    response = client.post(
        "/colorize?model=7", content=encode(photo()), headers={"content-type": "image/png"}
    )
    body = assert_json_error(response, 409, "cannot be loaded")
    assert str(settings.models_dir) not in body["detail"]  # no server paths in answers


def test_colorize_rejects_a_non_image_with_json(client):
    response = client.post("/colorize", files={"image": ("notes.txt", b"just some text", "text/plain")})
    assert_json_error(response, 415, "not an image")


def test_colorize_rejects_truncated_png(client):
    whole = encode(photo(120, 90))
    response = client.post(
        "/colorize", content=whole[: len(whole) // 2], headers={"content-type": "image/png"}
    )
    assert_json_error(response, 400, "truncated")


def test_colorize_rejects_a_body_that_is_not_an_image(client):
    response = client.post(
        "/colorize", content=b"a=1", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert_json_error(response, 415, "not an image")


# the bytes say what they are: curl --data-binary without -H sends a form type, others none
@pytest.mark.parametrize(
    "content_type", ["application/octet-stream", "application/x-www-form-urlencoded", None]
)
def test_colorize_reads_a_raw_photograph_whatever_its_content_type(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/colorize", content=encode(photo(50, 40)), headers=headers)
    assert response.status_code == 200, response.text
    assert decoded(response).size == (50, 40)


def test_colorize_multipart_without_the_image_field_is_422_naming_image(client):
    response = client.post("/colorize", files={"photo": ("old.png", encode(photo()), "image/png")})
    body = assert_json_error(response, 422, "image")
    assert body["errors"][0]["loc"] == ["body", "image"]


def test_colorize_rejects_an_upload_over_max_upload_bytes(settings, start):
    publish_tiny(settings)
    client = start(changed(settings, max_upload_bytes=2048))
    big = bytes(5000)
    response = client.post("/colorize", content=big, headers={"content-type": "image/png"})
    assert_json_error(response, 413, "2048 bytes")
    multipart = client.post("/colorize", files={"image": ("big.png", big, "image/png")})
    assert_json_error(multipart, 413)


def test_colorize_rejects_an_oversized_chunked_upload_without_content_length(settings, start):
    publish_tiny(settings)
    client = start(changed(settings, max_upload_bytes=2048))
    chunks_sent = []

    def body() -> Iterator[bytes]:
        for i in range(100):
            chunks_sent.append(i)
            yield bytes(1000)

    response = client.post("/colorize", content=body(), headers={"content-type": "image/png"})
    assert "content-length" not in response.request.headers
    assert_json_error(response, 413, "2048 bytes")


@pytest.mark.parametrize("side", [40, 100], ids=["over-the-limit", "over-pillow-bomb-guard"])
def test_colorize_rejects_an_image_with_too_many_pixels(settings, start, side):
    publish_tiny(settings)
    client = start(changed(settings, max_image_pixels=1000))
    wait_for(lambda: client.get("/readyz").status_code == 200, what="ready")
    small_file_many_pixels = encode(Image.new("L", (side, side), 128))
    response = client.post("/colorize", content=small_file_many_pixels, headers={"content-type": "image/png"})
    assert_json_error(response, 413, "COLORIZER_MAX_IMAGE_PIXELS")


def test_the_pillow_pixel_limit_is_restored_when_the_app_stops(settings, start):
    before = Image.MAX_IMAGE_PIXELS
    with TestClient(create_app(changed(settings, max_image_pixels=1000))):
        assert Image.MAX_IMAGE_PIXELS == 1000
    assert Image.MAX_IMAGE_PIXELS == before


def _rgba() -> Image.Image:
    image = photo(mode="RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return image


def _palette_with_transparency() -> Image.Image:
    image = photo().convert("P")
    image.paste(0, (0, 0, 10, 10))  # a corner in palette index 0, the transparent one
    image.info["transparency"] = 0
    return image


def _sixteen_bit() -> Image.Image:
    values = (np.asarray(photo(mode="L")).astype(np.uint16) * 257).astype(np.uint16)
    return Image.fromarray(values)


@pytest.mark.parametrize(
    ("make", "fmt"),
    [
        (lambda: photo(mode="L"), "PNG"),
        (lambda: photo(mode="1"), "PNG"),
        (lambda: photo(mode="LA"), "PNG"),
        (_rgba, "PNG"),
        (lambda: photo(mode="P"), "GIF"),
        (_palette_with_transparency, "PNG"),
        (lambda: photo(mode="CMYK"), "JPEG"),
        (lambda: photo(mode="CMYK"), "TIFF"),
        (_sixteen_bit, "PNG"),
    ],
    ids=["L", "1", "LA", "RGBA", "P", "P-transparent", "CMYK-jpeg", "CMYK-tiff", "I;16"],
)
def test_colorize_accepts_every_common_pixel_mode(client, make, fmt):
    response = client.post(
        "/colorize", files={"image": ("in", encode(make(), fmt), "application/octet-stream")}
    )
    assert response.status_code == 200, response.text
    assert decoded(response).size == (50, 40)


def test_sixteen_bit_gray_is_scaled_to_eight_bits_not_clipped():
    values = np.array([[0, 257 * 64, 32768, 65535]], dtype=np.uint16)
    assert to_array(Image.fromarray(values)).tolist() == [[0, 64, 128, 255]]


def test_colorize_applies_exif_orientation(client):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated a quarter turn: portrait
    upload = encode(photo(60, 20), "JPEG", exif=exif)
    response = client.post("/colorize", content=upload, headers={"content-type": "image/jpeg"})
    assert response.status_code == 200, response.text
    assert decoded(response).size == (20, 60)


def test_colorize_runs_the_model_off_the_event_loop(client, monkeypatch):
    engine = client.app.state.engine
    seen = []

    def where() -> str:
        try:
            asyncio.get_running_loop()
            return "event loop"
        except RuntimeError:
            return threading.current_thread().name

    def spy(name, original):
        def wrapper(*args, **kwargs):
            seen.append((name, where()))
            return original(*args, **kwargs)

        return wrapper

    serving = engine.model().serving
    monkeypatch.setattr(engine, "prepare", spy("prepare", engine.prepare))
    monkeypatch.setattr(engine, "finish", spy("finish", engine.finish))
    monkeypatch.setattr(serving, "predict", spy("model", serving.predict))
    response = client.post("/colorize", content=encode(photo()), headers={"content-type": "image/png"})
    assert response.status_code == 200
    assert [name for name, _ in seen] == ["prepare", "model", "finish"]
    assert all(thread != "event loop" for _, thread in seen)
    assert dict(seen)["model"] == "inference"  # the engine's one inference thread


def test_colorize_batches_concurrent_requests_in_one_model_call(settings, start):
    publish_tiny(settings)
    client = start(changed(settings, batch_timeout_ms=3000, max_batch_size=4))
    wait_for(lambda: client.get("/readyz").status_code == 200, what="ready")
    upload = encode(photo())
    with ThreadPoolExecutor(4) as pool:
        responses = list(
            pool.map(
                lambda _: client.post("/colorize", content=upload, headers={"content-type": "image/png"}),
                range(4),
            )
        )
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.content for r in responses}) == 1  # the same photograph, the same answer
    registry = client.app.state.metrics.registry
    assert registry.get_sample_value("colorizer_inference_batch_size_count") == 1
    assert registry.get_sample_value("colorizer_inference_batch_size_sum") == 4


def test_colorize_answers_503_with_retry_after_when_the_queue_is_full(settings, start):
    publish_tiny(settings)
    client = start(changed(settings, max_queue=1, max_batch_size=1, batch_timeout_ms=0))
    wait_for(lambda: client.get("/readyz").status_code == 200, what="ready")
    engine = client.app.state.engine
    model = engine.model()
    entered, gate = threading.Event(), threading.Event()
    run = engine.batcher._run

    def held(key, payloads):
        entered.set()
        gate.wait(30)
        return run(key, payloads)

    engine.batcher._run = held
    try:
        inputs, _, size = engine.prepare(model, make_photo(40, 30, seed=1))
        running = engine.submit(model, inputs, size)
        assert entered.wait(30)
        queued = engine.submit(model, inputs, size)  # the queue (of one) is now full
        response = client.post("/colorize", content=encode(photo()), headers={"content-type": "image/png"})
        assert_json_error(response, 503, "busy", "COLORIZER_MAX_QUEUE")
        assert int(response.headers["retry-after"]) >= 1
    finally:
        gate.set()
    running.result(30), queued.result(30)
    ok = client.post("/colorize", content=encode(photo()), headers={"content-type": "image/png"})
    assert ok.status_code == 200


# variations (dropout noise) were removed: about 1 CIEDE2000 unit apart, they looked the same
@pytest.mark.parametrize("query", ["variations=4", "variations=4&seed=7", "seed=3"])
def test_colorize_says_variations_are_no_longer_offered(client, query):
    response = client.post(
        f"/colorize?{query}", content=encode(photo()), headers={"content-type": "image/png"}
    )
    body = assert_json_error(response, 422, "no longer offered")
    assert body["errors"][0]["loc"][0] == "query"


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
    assert _metric(text, "colorizer_model_info", version="1", preset="lab") == 1
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


def test_colorize_models_and_probes_stay_open_with_an_api_key(keyed_client):
    assert keyed_client.get("/healthz").status_code == 200
    assert keyed_client.get("/readyz").status_code == 200
    assert keyed_client.get("/models").status_code == 200
    response = keyed_client.post("/colorize", content=encode(photo()), headers={"content-type": "image/png"})
    assert response.status_code == 200


# -- /jobs ---------------------------------------------------------------------------------------


def test_submitting_a_job_queues_it_and_answers_202(client, fake_celery):
    response = client.post("/jobs", json=TINY_JOB)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "queued" and job["config"]["dataset"] == "tiny"
    assert job["config"]["batch_size"] == 1  # the resolved config, defaults included
    [call] = fake_celery.calls
    assert call["name"] == "colorizer.train" and call["queue"] == "training"
    assert call["args"] == [job["id"], job["config"]]

    status = client.get(f"/jobs/{job['id']}")
    assert status.status_code == 200
    assert status.json()["state"] == "queued" and status.json()["progress"]["step"] == 0
    assert [j["id"] for j in client.get("/jobs").json()] == [job["id"]]


def test_submitting_a_job_with_a_missing_dataset_is_422_naming_dataset(client, fake_celery):
    response = client.post("/jobs", json={**TINY_JOB, "dataset": "nowhere"})
    body = assert_json_error(response, 422, "dataset", "nowhere")
    assert body["errors"][0]["loc"] == ["body", "dataset"]
    assert fake_celery.calls == [] and client.get("/jobs").json() == []


def test_submitting_a_job_whose_dataset_symlink_escapes_is_422(client, fake_celery, settings, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (settings.datasets_dir / "sneaky").symlink_to(outside)
    response = client.post("/jobs", json={**TINY_JOB, "dataset": "sneaky"})
    body = assert_json_error(response, 422, "outside")
    assert body["errors"][0]["loc"] == ["body", "dataset"]
    assert fake_celery.calls == []


def test_submitting_a_job_with_a_bad_field_is_422_naming_the_field(client, fake_celery):
    response = client.post("/jobs", json={**TINY_JOB, "batch_size": 0, "colour": "blue"})
    body = assert_json_error(response, 422, "batch_size", "colour")
    assert {tuple(e["loc"]) for e in body["errors"]} == {("body", "batch_size"), ("body", "colour")}
    assert fake_celery.calls == []


def test_a_mistyped_job_field_is_answered_with_the_name_it_probably_meant(client, fake_celery):
    response = client.post("/jobs", json={**TINY_JOB, "stpes": 4, "l1weight": 10, "colour": "blue"})
    body = assert_json_error(response, 422, "stpes", "did you mean 'steps'?", "did you mean 'l1_weight'?")
    assert "colour" in body["detail"] and "the fields are dataset, preset" in body["detail"]
    assert fake_celery.calls == []


def test_submitting_a_job_from_a_missing_version_is_422_naming_init_from(client, fake_celery):
    response = client.post("/jobs", json={**TINY_JOB, "init_from": 42})
    body = assert_json_error(response, 422, "init_from")
    assert body["errors"][0]["loc"] == ["body", "init_from"]
    assert client.post("/jobs", json={**TINY_JOB, "init_from": 1}).status_code == 202


def test_submitting_a_job_with_the_broker_down_is_503_and_the_job_failed(client):
    fake = FakeCelery(error=OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused."))
    client.app.dependency_overrides[get_celery] = lambda: fake
    response = client.post("/jobs", json=TINY_JOB)
    body = assert_json_error(response, 503, "broker")
    job_id = body["job"]["id"]
    record = client.get(f"/jobs/{job_id}").json()
    assert record["state"] == "failed" and "Connection refused" in record["error"]
    assert record["finished_at"] is not None


def test_cancelling_a_queued_job_cancels_it(client, fake_celery):
    job_id = client.post("/jobs", json=TINY_JOB).json()["id"]
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert client.get(f"/jobs/{job_id}").json()["state"] == "cancelled"


def test_cancelling_a_running_job_is_accepted_and_leaves_it_to_stop(client, fake_celery):
    job_id = client.post("/jobs", json=TINY_JOB).json()["id"]
    client.app.state.job_store.update(job_id, state="running")
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 202
    assert response.json()["state"] == "running"
    assert client.app.state.job_store.cancel_requested(job_id)


def test_a_job_whose_losses_diverged_still_reads_as_json(client, fake_celery):
    job_id = client.post("/jobs", json=TINY_JOB).json()["id"]
    client.app.state.job_store.update(
        job_id, state="running", losses={"g": float("nan"), "d": 0.5}, eta_seconds=float("inf")
    )
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json()["losses"] == {"g": None, "d": 0.5} and response.json()["eta_seconds"] is None
    assert client.get("/jobs").json()[0]["losses"]["g"] is None


def test_a_job_cancelled_before_its_first_sample_is_not_told_to_try_again(client, fake_celery):
    job_id = client.post("/jobs", json=TINY_JOB).json()["id"]
    assert client.post(f"/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    body = assert_json_error(client.get(f"/jobs/{job_id}/samples/latest"), 404, "cancelled", "no sample")
    assert "try again" not in body["detail"]


def test_latest_sample_is_404_until_one_is_written(client, fake_celery, settings):
    job_id = client.post("/jobs", json=TINY_JOB).json()["id"]
    assert_json_error(client.get(f"/jobs/{job_id}/samples/latest"), 404, "no sample yet")

    samples = settings.jobs_dir / job_id / "samples"
    samples.mkdir(parents=True)
    (samples / "plot_000001.png").write_bytes(encode(photo(30, 20)))
    response = client.get(f"/jobs/{job_id}/samples/latest")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert decoded(response).size == (30, 20)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/jobs/0123456789abcdef0123456789abcdef"),
        ("GET", "/jobs/not-a-job-id"),
        ("POST", "/jobs/0123456789abcdef0123456789abcdef/cancel"),
        ("GET", "/jobs/0123456789abcdef0123456789abcdef/samples/latest"),
    ],
)
def test_unknown_job_is_404_json(client, method, path):
    assert_json_error(client.request(method, path), 404, "does not exist")


# -- bad input to /colorize: every one a 4xx with a sentence ---------------------------------------


@pytest.mark.parametrize("how", ["raw", "multipart"])
def test_colorize_rejects_an_empty_upload(client, how):
    if how == "raw":
        response = client.post("/colorize", content=b"", headers={"content-type": "image/png"})
    else:
        response = client.post("/colorize", files={"image": ("empty.png", b"", "image/png")})
    assert_json_error(response, 400, "empty")


@pytest.mark.parametrize(
    "payload",
    [
        np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>",
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="50" height="40">'
        b'<rect width="50" height="40" fill="red"/></svg>',
    ],
    ids=["random-bytes", "html-as-png", "svg-as-png"],
)
def test_colorize_rejects_a_file_that_is_not_an_image_even_when_named_png(client, payload):
    response = client.post("/colorize", files={"image": ("photo.png", payload, "image/png")})
    assert_json_error(response, 415, "not an image")


def test_colorize_rejects_truncated_jpeg(client):
    whole = encode(photo(120, 90), "JPEG", quality=95)
    response = client.post(
        "/colorize", content=whole[: len(whole) * 2 // 3], headers={"content-type": "image/jpeg"}
    )
    assert_json_error(response, 400, "truncated")


def test_colorize_refuses_a_decompression_bomb_from_its_header_alone(client):
    bomb = png_declaring(50_000, 50_000)  # 2.5 gigapixels declared in under 100 bytes
    assert len(bomb) < 100
    response = client.post("/colorize", content=bomb, headers={"content-type": "image/png"})
    assert_json_error(response, 413, "2500000000 pixels", "COLORIZER_MAX_IMAGE_PIXELS")


@pytest.mark.parametrize("size", [(1, 1), (20000, 1), (3, 500)], ids=["1x1", "20000x1", "3x500"])
def test_colorize_rejects_an_image_too_thin_to_be_a_photograph(client, size):
    response = client.post(
        "/colorize", content=encode(Image.new("L", size, 90)), headers={"content-type": "image/png"}
    )
    body = assert_json_error(response, 422, f"{size[0]}x{size[1]}", "at least 8 pixels")
    assert body["errors"][0]["loc"] == ["body", "image"]


def test_the_smallest_accepted_image_is_colorized(client):
    response = client.post(
        "/colorize", content=encode(photo(8, 8, "L")), headers={"content-type": "image/png"}
    )
    assert response.status_code == 200, response.text
    assert decoded(response).size == (8, 8)


# -- unusual but valid images ----------------------------------------------------------------------


def _colorized(client, data: bytes, fmt: str = "png") -> Image.Image:
    response = client.post(
        f"/colorize?format={fmt}", files={"image": ("in", data, "application/octet-stream")}
    )
    assert response.status_code == 200, response.text
    return decoded(response)


@pytest.mark.parametrize("fmt", ["png", "webp"])
@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_colorize_carries_transparency_through_to_png_and_webp(client, fmt, mode):
    source = _rgba().convert(mode)
    result = _colorized(client, encode(source), fmt)
    assert result.mode == "RGBA" and result.size == source.size
    expected = np.asarray(source.getchannel("A"), np.int16)
    got = np.asarray(result.getchannel("A"), np.int16)
    tolerance = 0 if fmt == "png" else 8  # lossy WebP may round alpha a little
    assert np.abs(got - expected).max() <= tolerance


def test_colorize_keeps_a_palette_images_transparent_index(client):
    source = _palette_with_transparency()
    result = _colorized(client, encode(source))
    expected = np.asarray(source.convert("RGBA").getchannel("A"))
    assert result.mode == "RGBA"
    assert np.array_equal(np.asarray(result.getchannel("A")), expected)
    assert (expected == 0).any() and (expected == 255).any()


def test_colorize_to_jpeg_drops_transparency_and_keeps_the_size(client):
    result = _colorized(client, encode(_rgba()), "jpeg")
    assert result.mode == "RGB" and result.size == (50, 40)


def test_an_opaque_rgba_image_comes_back_without_an_alpha_channel(client):
    result = _colorized(client, encode(photo(mode="RGBA")))
    assert result.mode == "RGB"


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_colorize_uses_the_first_frame_of_an_animation(client, fmt):
    first = photo(mode="L").convert("RGB")
    second = Image.fromarray(255 - np.asarray(first))
    options = {"lossless": True} if fmt == "WEBP" else {}
    animation = encode(first, fmt, save_all=True, append_images=[second], duration=100, loop=0, **options)
    with Image.open(io.BytesIO(animation)) as check:
        assert check.n_frames == 2
        check.seek(0)
        first_as_decoded = encode(check.convert("RGB"))
    from_animation = np.asarray(_colorized(client, animation), np.int16)
    from_first_frame = np.asarray(_colorized(client, first_as_decoded), np.int16)
    assert np.abs(from_animation - from_first_frame).max() <= 1


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("JPEG", {"progressive": True, "quality": 90}),
        ("TIFF", {}),
        ("BMP", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
    ],
    ids=["progressive-jpeg", "tiff", "bmp", "tiff-lzw"],
)
def test_colorize_reads_progressive_jpeg_tiff_and_bmp(client, fmt, options):
    data = encode(photo(64, 48), fmt, **options)
    with Image.open(io.BytesIO(data)) as check:
        assert check.format == fmt and (fmt != "JPEG" or check.info.get("progressive"))
        same_pixels_as_png = encode(check.convert("RGB"))
    result = _colorized(client, data)
    assert result.size == (64, 48)
    reference = _colorized(client, same_pixels_as_png)
    assert np.abs(np.asarray(result, np.int16) - np.asarray(reference, np.int16)).max() <= 1


def test_an_srgb_profile_changes_nothing_and_a_broken_profile_does_not_cost_the_photo():
    from PIL import ImageCms

    from inference.images import decode_image

    source = photo(32, 24)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    tagged = decode_image(encode(source, icc_profile=srgb), 10**6).pixels
    assert np.abs(tagged.astype(np.int16) - np.asarray(source, np.int16)).max() <= 1
    broken = decode_image(encode(source, icc_profile=b"not a profile"), 10**6).pixels
    assert np.array_equal(broken, np.asarray(source))


def test_jpeg_encoding_takes_rgbx_pixels_in_place_only_where_the_whole_buffer_is_there():
    from inference.images import encode_image, rgbx_in_place

    rng = np.random.default_rng(3)
    words = rng.integers(0, 256, (20, 7, 4), dtype=np.uint8)  # rows of 7 pixels, 5 kept: the join's shape
    view = words[:, :5, :3]
    wrapped = rgbx_in_place(view)
    assert wrapped is not None and wrapped.shape == (20, 5, 4) and np.shares_memory(wrapped, words)
    np.testing.assert_array_equal(wrapped, words[:, :5])
    copy = np.ascontiguousarray(view)
    assert encode_image(view, "jpeg") == encode_image(copy, "jpeg")  # the same bytes as from a copy
    for fmt in ("png", "webp"):  # other formats take the plain path
        decoded = Image.open(io.BytesIO(encode_image(view, fmt)))
        assert decoded.size == (5, 20)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_image(view, "png")))), view)
    # not wrapped: contiguous RGB, or a view whose last pixel's fourth byte is outside the buffer
    assert rgbx_in_place(copy) is None
    assert rgbx_in_place(words[..., 1:4]) is None
    assert rgbx_in_place(words[::2, :, :3]) is not None  # every other row: a longer stride
    assert rgbx_in_place(words[:, ::2, :3]) is None  # every other pixel: not 4-byte pixels


def test_a_jpeg_too_tall_for_the_format_is_a_422_naming_the_format():
    from inference.errors import CannotEncode
    from inference.images import encode_image
    from service.errors import http_error

    with pytest.raises(CannotEncode) as caught:
        encode_image(np.zeros((65501, 1, 3), np.uint8), "jpeg")
    assert "at most 65500 pixels" in str(caught.value)
    (error,) = http_error(caught.value).errors()  # what the API answers
    assert error["loc"] == ("query", "format") and "at most 65500 pixels" in error["msg"]


def test_the_api_caps_mallocs_arenas_unless_the_environment_already_does(monkeypatch):
    import os
    import platform
    import subprocess
    import sys

    from service.app import MALLOC_ARENAS, limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not limit_malloc_arenas()  # glibc read the variable at start: nothing to do
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt and malloc_info are glibc's")
    # In a fresh process (the cap cannot be undone): 8 threads that each malloc get 8 arenas of
    # their own, or share MALLOC_ARENAS once the API has capped them. glibc's malloc_info counts.
    code = """
import ctypes, os, sys, tempfile, threading
from service.app import limit_malloc_arenas
if sys.argv[1] == "cap":
    assert limit_malloc_arenas()
start = threading.Barrier(8)
def work():
    start.wait()
    for _ in range(500):
        bytearray(64 * 1024)  # malloc itself, not Python's small-object allocator
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = os.path.join(tempfile.mkdtemp(), "info.xml")
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
print(open(path).read().count("<heap nr="))
"""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    heaps = {}
    for mode in ("cap", "none"):
        done = subprocess.run(
            [sys.executable, "-c", code, mode], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr[-2000:]
        heaps[mode] = int(done.stdout)
    assert heaps["cap"] <= MALLOC_ARENAS < heaps["none"]
