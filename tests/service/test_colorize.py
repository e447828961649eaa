"""``POST /colorize`` in-process (TestClient), with real tiny generators in a temporary store:
formats, render sizes, versions, limits, batching and back-pressure."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.store import GENERATOR_FILE, METADATA_FILE
from service.app import create_app
from tests.apptest import (
    assert_json_error,
    changed,
    decoded,
    encode,
    photo,
    publish_tiny,
    wait_for,
)
from tests.photos import make_photo

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


def test_the_colorize_routes_dependencies_are_called_on_the_event_loop():
    # FastAPI calls a plain-def dependency in its thread pool: a thread hop for each one on every
    # photograph, about 0.5 ms of CPU per request for the two /colorize has (docs/performance.md)
    from service.routers.colorize import router

    route = next(r for r in router.routes if getattr(r, "path", "") == "/colorize")
    calls, todo = [], list(route.dependant.dependencies)
    while todo:
        dependency = todo.pop()
        calls.append(dependency.call)
        todo.extend(dependency.dependencies)
    assert calls, "the route has dependencies: the pipeline and the settings"
    assert all(inspect.iscoroutinefunction(call) for call in calls), calls


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


def _multipart(*parts: tuple[str, str | None, bytes], close: bool = True) -> tuple[bytes, dict]:
    """A multipart body of (field, filename or None, data) parts, cut before its closing boundary
    unless ``close``."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--b0undary\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    if close:
        body += b"--b0undary--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=b0undary"}


def test_colorize_tells_a_cut_off_or_misshapen_multipart_body_apart_from_a_missing_field(client):
    image = encode(photo())
    body, headers = _multipart(("image", "a.png", image), close=False)
    assert_json_error(client.post("/colorize", content=body, headers=headers), 400, "closing boundary")
    body, headers = _multipart(("image", "a.png", image), ("image", "b.png", image))
    assert_json_error(client.post("/colorize", content=body, headers=headers), 422, "send one photograph")
    body, headers = _multipart(("image", "a.png", image), ("hints", "hints.json", b"[]"))
    hints = assert_json_error(client.post("/colorize", content=body, headers=headers), 422, "not as a file")
    assert hints["errors"][0]["loc"] == ["body", "hints"]
    body, headers = _multipart(("image", "a.png", image))
    assert client.post("/colorize", content=body, headers=headers).status_code == 200


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
