"""POST /colorize/batch in-process: a zip of photographs in, a zip of colorized ones and a manifest out.

Real tiny generators (test_api's fixtures), real archives built here.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from tests.apptest import (
    assert_json_error,
    changed,
    png_declaring,
    publish_lively_tiny,
    publish_tiny,
    wait_for,
)
from tests.photos import make_photo
from tests.service.test_datasets import file_info, tar_made_the_usual_way, tar_of, zip_of


def gray(width: int, height: int, fmt: str = "PNG", seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(make_photo(width, height, seed)).convert("L").save(buffer, fmt)
    return buffer.getvalue()


def batch(client, members: dict[str, bytes], how: str = "raw", **params):
    archive = zip_of(members)
    if how == "multipart":
        return client.post(
            "/colorize/batch", files={"archive": ("in.zip", archive, "application/zip")}, params=params
        )
    return client.post(
        "/colorize/batch", content=archive, params=params, headers={"content-type": "application/zip"}
    )


def unzip(response) -> tuple[dict[str, Image.Image], dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        images = {
            name: Image.open(io.BytesIO(archive.read(name)))
            for name in archive.namelist()
            if name != "manifest.json"
        }
    return images, manifest


@pytest.fixture
def lively(settings, start):
    """An app serving a tiny generator whose colours show (He-scaled weights), ready."""
    version = publish_lively_tiny(settings)
    client = start(settings)
    wait_for(lambda: client.get("/readyz").status_code == 200, what="a model served")
    return client, version


@pytest.mark.parametrize("how", ["raw", "multipart"])
def test_batch_colorizes_every_photo_under_its_own_name(lively, how):
    client, version = lively
    members = {"a.png": gray(50, 40), "sub/b.jpg": gray(64, 48, "JPEG", 1), "c.webp": gray(40, 40, "WEBP", 2)}
    response = batch(client, members, how)
    images, manifest = unzip(response)
    assert response.headers["x-model-version"] == str(version)
    assert response.headers["x-batch-colorized"] == "3" and response.headers["x-batch-failed"] == "0"
    assert sorted(images) == sorted(members)
    for name, data in members.items():
        source = Image.open(io.BytesIO(data))
        assert images[name].size == source.size and images[name].format == source.format
        rgb = np.asarray(images[name].convert("RGB")).astype(int)
        assert np.abs(rgb[..., 0] - rgb[..., 2]).mean() > 1, f"{name} came back gray"
    assert manifest["model_version"] == version and manifest["counts"] == {"ok": 3, "error": 0, "skipped": 0}
    assert [(f["name"], f["output"], f["status"], f["renamed"]) for f in manifest["files"]] == [
        (name, name, "ok", False) for name in members
    ]
    # the embedded broker: no colorize workers, the API colorizes the batch itself
    assert {f["colorized_by"] for f in manifest["files"]} == {"api"}


def test_batch_gives_the_same_pixels_as_colorize(lively):
    client, _ = lively
    data = gray(48, 40)
    single = client.post("/colorize", content=data, headers={"content-type": "image/png"})
    images, _ = unzip(batch(client, {"x.png": data}))
    one = np.asarray(Image.open(io.BytesIO(single.content)).convert("RGB")).astype(int)
    assert np.abs(np.asarray(images["x.png"].convert("RGB")).astype(int) - one).max() <= 2


def test_batch_lists_per_file_errors_in_the_manifest_and_colorizes_the_others(client):
    members = {
        "good.png": gray(40, 32),
        "notes.txt": b"not a photo",
        "broken.png": gray(40, 32)[:80],
        "tiny.png": gray(4, 4),
        "huge.png": png_declaring(100_000, 100_000),
        "../evil.png": gray(40, 32),
        "__MACOSX/._good.png": b"resource fork",
        "also-good.jpg": gray(40, 32, "JPEG"),
    }
    images, manifest = unzip(batch(client, members))
    assert sorted(images) == ["also-good.jpg", "good.png"]
    by_name = {f["name"]: f for f in manifest["files"]}
    assert {n: f["status"] for n, f in by_name.items()} == {
        "good.png": "ok",
        "notes.txt": "error",
        "broken.png": "error",
        "tiny.png": "error",
        "huge.png": "error",
        "../evil.png": "skipped",
        "__MACOSX/._good.png": "skipped",
        "also-good.jpg": "ok",
    }
    assert "not an image" in by_name["notes.txt"]["error"]
    assert "damaged" in by_name["broken.png"]["error"]
    assert "COLORIZER_MIN_IMAGE_SIDE" in by_name["tiny.png"]["error"]
    assert "COLORIZER_MAX_IMAGE_PIXELS" in by_name["huge.png"]["error"]
    assert "unsafe path" in by_name["../evil.png"]["error"]
    assert all(f["output"] is None for f in manifest["files"] if f["status"] != "ok")
    assert manifest["counts"] == {"ok": 2, "error": 4, "skipped": 2}


def test_batch_changes_the_extension_only_when_the_format_differs(client):
    members = {"a.png": gray(40, 32), "b.jpg": gray(40, 32, "JPEG"), "c.jpeg": gray(40, 32, "JPEG")}
    images, manifest = unzip(batch(client, members, format="jpeg"))
    assert sorted(images) == ["a.jpg", "b.jpg", "c.jpeg"]
    assert all(image.format == "JPEG" for image in images.values())
    renamed = {f["name"]: (f["output"], f["renamed"], f["format"]) for f in manifest["files"]}
    assert renamed == {
        "a.png": ("a.jpg", True, "jpeg"),
        "b.jpg": ("b.jpg", False, "jpeg"),
        "c.jpeg": ("c.jpeg", False, "jpeg"),
    }


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_batch_writes_formats_it_cannot_keep_as_png_without_clashing(client, kind):
    members = {"scan.tif": gray(40, 32, "TIFF"), "scan.png": gray(40, 32), "old.bmp": gray(40, 32, "BMP")}
    if kind == "zip":
        response = batch(client, members)
    else:  # a tar's names come one by one: scan.png is read after scan.tif has been colorized
        archive = tar_of([(file_info(name), data) for name, data in members.items()], kind == "tar.gz")
        response = client.post(
            "/colorize/batch", content=archive, headers={"content-type": "application/x-tar"}
        )
    images, manifest = unzip(response)
    assert sorted(images) == ["old.png", "scan.png", "scan.tif.png"]
    assert all(image.format == "PNG" for image in images.values())
    # scan.tif would become scan.png, the name of another file of the archive: it keeps its own name.
    assert {f["name"]: (f["output"], f["renamed"]) for f in manifest["files"]} == {
        "scan.tif": ("scan.tif.png", True),
        "scan.png": ("scan.png", False),
        "old.bmp": ("old.png", True),
    }


def test_batch_reads_a_tar_too(client):
    archive = tar_of([(file_info("dir/a.png"), gray(40, 32))], compress=True)
    response = client.post("/colorize/batch", content=archive, headers={"content-type": "application/gzip"})
    images, manifest = unzip(response)
    assert list(images) == ["dir/a.png"] and manifest["counts"]["ok"] == 1


def test_a_tar_members_name_that_is_not_utf8_is_colorized_under_a_name_that_can_be_written(client):
    info = file_info("a\udcff\udcfe.png")  # the bytes a, 0xff, 0xfe: a name from a Latin-1 disk
    response = client.post(
        "/colorize/batch",
        content=tar_of([(info, gray(40, 32))]),
        headers={"content-type": "application/x-tar"},
    )
    images, manifest = unzip(response)
    assert list(images) == ["a\ufffd\ufffd.png"] and manifest["counts"]["ok"] == 1
    assert manifest["files"][0]["name"] == "a\ufffd\ufffd.png"


def test_batch_reads_a_tar_made_with_tar_czf_dot(client, tmp_path):
    archive = tar_made_the_usual_way(tmp_path, {"a.png": gray(40, 32), "dir/b.png": gray(30, 20)})
    response = client.post("/colorize/batch", content=archive, headers={"content-type": "application/gzip"})
    images, manifest = unzip(response)
    assert sorted(images) == ["a.png", "dir/b.png"] and manifest["counts"]["ok"] == 2


def test_a_batch_with_no_image_is_422_with_a_sentence(client):
    body = assert_json_error(batch(client, {"readme.txt": b"hello", "data.csv": b"1,2"}), 422, "no file")
    assert [f["status"] for f in body["files"]] == ["error", "error"]
    empty = assert_json_error(batch(client, {}), 422, "no file")
    for answer in (body, empty):  # like every 422: the field at fault
        assert [e["loc"] for e in answer["errors"]] == [["body", "archive"]]


def test_batch_keeps_within_the_engine_queue_limit(settings, start, monkeypatch):
    publish_tiny(settings)
    client = start(changed(settings, max_queue=2, max_batch_size=8))
    wait_for(lambda: client.get("/readyz").status_code == 200, what="ready")
    engine = client.app.state.engine
    depths: list[int] = []
    refused: list[str] = []
    submit, check_capacity = engine.submit, engine.check_capacity

    def submit_spy(*args, **kwargs):
        future = submit(*args, **kwargs)
        depths.append(engine.queue_depth())
        return future

    def capacity_spy() -> None:
        try:
            check_capacity()
        except Exception as exc:
            refused.append(type(exc).__name__)
            raise

    monkeypatch.setattr(engine, "submit", submit_spy)
    monkeypatch.setattr(engine, "check_capacity", capacity_spy)
    members = {f"p{i}.png": gray(40 + i, 32, seed=i) for i in range(10)}
    images, manifest = unzip(batch(client, members))
    assert sorted(images) == sorted(members) and manifest["counts"]["ok"] == 10
    assert len(depths) == 10 and max(depths) <= 2 and refused == []


def test_batch_limits_are_413(settings, start):
    publish_tiny(settings)
    client = start(changed(settings, max_batch_files=3, max_batch_bytes=60_000, max_unpacked_bytes=2_000_000))
    wait_for(lambda: client.get("/readyz").status_code == 200, what="ready")
    four = {f"p{i}.png": gray(40, 32, seed=i) for i in range(4)}
    assert_json_error(batch(client, four), 413, "COLORIZER_MAX_BATCH_FILES")
    assert_json_error(batch(client, {"bomb.png": b"\0" * 10_000_000}), 413, "COLORIZER_MAX_UNPACKED_BYTES")
    big = zip_of({f"n{i}.png": np.random.default_rng(i).bytes(30_000) for i in range(3)})

    def chunks() -> Iterator[bytes]:
        for at in range(0, len(big), 8192):
            yield big[at : at + 8192]

    for body in (big, chunks()):
        response = client.post("/colorize/batch", content=body, headers={"content-type": "application/zip"})
        assert_json_error(response, 413, "COLORIZER_MAX_BATCH_BYTES")
    leftovers = [p.name for p in settings.data_dir.iterdir() if p.name.startswith(".batch-")]
    assert leftovers == []


def test_batch_takes_the_query_parameters_of_colorize(client):
    assert_json_error(batch(client, {"a.png": gray(40, 32)}, model="42"), 404, "42")
    body = assert_json_error(batch(client, {"a.png": gray(40, 32)}, render_size=33), 422, "render_size")
    assert body["errors"][0]["loc"] == ["query", "render_size"]
    assert_json_error(batch(client, {"a.png": gray(40, 32)}, format="gif"), 422, "format")
    images, manifest = unzip(batch(client, {"a.png": gray(40, 32)}, render_size=64, model="1"))
    assert manifest["render_size"] == 64 and images["a.png"].size == (40, 32)


def test_batch_and_colorize_routes_do_not_collide(client):
    assert (
        client.post("/colorize", content=gray(40, 32), headers={"content-type": "image/png"}).status_code
        == 200
    )
    assert_json_error(client.get("/colorize/batch"), 405)
    assert_json_error(
        client.post("/colorize/batch", content=b"x" * 600, headers={"content-type": "image/png"}), 415
    )


def test_the_temporary_files_of_a_batch_are_removed_after_it_is_sent(client, settings):
    unzip(batch(client, {"a.png": gray(40, 32)}))
    assert [p.name for p in settings.data_dir.iterdir() if p.name.startswith(".batch-")] == []


class StandInWorkers:
    """In place of the colorize workers (common.fanout.RemoteColorizer): answers each photograph as
    ``answer(name_of_its_bytes)`` says, or refuses to send it."""

    def __init__(self, answer):
        self.answer, self.sent = answer, []

    def submit(self, data, *, version, image_format, render_size=None, hints=None):
        from concurrent.futures import Future

        self.sent.append((data, version, image_format))
        future: Future = Future()
        outcome = self.answer(data)
        if isinstance(outcome, Exception):
            raise outcome
        future.set_result(outcome)
        return future


def fanned_out(monkeypatch, workers: StandInWorkers) -> None:
    from service.routers import batch as route

    monkeypatch.setattr(route, "get_fanout", lambda request: (workers, 4))


def test_a_fanned_out_batch_keeps_the_workers_answers_and_their_refusals_in_the_apis_words(
    lively, monkeypatch
):
    from common.fanout import encode_photo

    client, version = lively
    good, bad = gray(40, 30), b"this is not a photograph"

    def answer(data: bytes):
        if data == bad:  # what worker.colorize answers for it: the inference error's class and sentence
            return {
                "error": "the upload is not an image Pillow can read: send a PNG",
                "kind": "NotAnImage",
                "worker": "w1@h",
            }
        return {"data": encode_photo(b"\x89PNG colorized"), "model_version": version, "worker": "w1@h"}

    workers = StandInWorkers(answer)
    fanned_out(monkeypatch, workers)
    response = batch(client, {"a.png": good, "b.png": bad})
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert archive.read("a.png") == b"\x89PNG colorized"  # the worker's bytes, as they came
    files = {f["name"]: f for f in manifest["files"]}
    assert (files["a.png"]["status"], files["a.png"]["colorized_by"]) == ("ok", "w1@h")
    assert files["b.png"]["status"] == "error" and files["b.png"]["colorized_by"] is None
    assert files["b.png"]["error"] == "the upload is not an image Pillow can read: send a PNG"
    assert {v for _, v, _ in workers.sent} == {version} and {f for _, _, f in workers.sent} == {"png"}


@pytest.mark.parametrize(
    "outcome",
    [
        ConnectionError("the broker is down"),  # cannot be sent
        {
            "error": "model version 9 does not exist",
            "kind": "UnknownVersion",
            "worker": "w1@h",
        },  # not in its store
    ],
)
def test_a_photograph_the_workers_cannot_take_is_colorized_by_the_api(lively, monkeypatch, outcome):
    client, _ = lively
    workers = StandInWorkers(lambda data: outcome)
    fanned_out(monkeypatch, workers)
    images, manifest = unzip(batch(client, {"a.png": gray(40, 30), "b.jpg": gray(48, 32, "JPEG", 1)}))
    assert len(workers.sent) == 2
    assert [(f["status"], f["colorized_by"]) for f in manifest["files"]] == [("ok", "api"), ("ok", "api")]
    assert images["a.png"].size == (40, 30) and images["b.jpg"].size == (48, 32)
