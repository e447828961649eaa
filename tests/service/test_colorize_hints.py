"""Colour hints over HTTP: ``POST /colorize`` takes them as a multipart field or a query parameter,
``/colorize/batch`` per file; bad points and models without hint inputs get a 422 that says why."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from common.settings import Settings
from models.store import ModelStore
from service.app import create_app
from tests.apptest import assert_json_error, decoded, encode, publish_tiny_hints_to, publish_tiny_to, wait_for
from tests.service.test_datasets import zip_of

RED = [{"x": 10, "y": 12, "color": "#c81e14", "radius": 2}]


def _photo() -> Image.Image:
    levels = np.random.default_rng(2).integers(0, 256, (64, 96), dtype=np.uint8)
    return Image.fromarray(levels, "L")


def _pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(decoded(response).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def hinted(tmp_path_factory) -> Iterator[TestClient]:
    """An app whose version 1 takes hints and whose version 2 (served: the latest) does not. One
    for the module: its tests only send requests, and each app loading version 1 took 4-5 s."""
    root = tmp_path_factory.mktemp("hinted")
    settings = Settings(
        data_dir=root / "data",
        reload_interval=0.2,
        inference_runtime="tensorflow",
        default_model_dir=root / "no-default",
    )
    store = ModelStore(settings.models_dir)
    assert publish_tiny_hints_to(store) == 1
    assert publish_tiny_to(store) == 2
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, what="a model served")
        yield client


def test_hints_change_the_colour_near_them_and_nowhere_else(hinted):
    image = encode(_photo())
    plain = _pixels(hinted.post("/colorize?model=1", files={"image": ("p.png", image, "image/png")}))
    response = hinted.post(
        "/colorize?model=1", files={"image": ("p.png", image, "image/png")}, data={"hints": json.dumps(RED)}
    )
    assert response.headers["x-model-version"] == "1"
    difference = np.abs(_pixels(response) - plain).sum(axis=-1)
    assert difference[6:18, 4:16].max() > 5 and difference[40:, 50:].max() == 0
    # a raw upload carries them in the query; the same points give the same picture
    raw = hinted.post(
        "/colorize",
        params={"model": "1", "hints": json.dumps(RED)},
        content=image,
        headers={"content-type": "image/png"},
    )
    np.testing.assert_array_equal(_pixels(raw), _pixels(response))
    # no hints at all, or an empty list, is the automatic colouring
    empty = hinted.post(
        "/colorize?model=1", files={"image": ("p.png", image, "image/png")}, data={"hints": "[]"}
    )
    np.testing.assert_array_equal(_pixels(empty), plain)


def test_hints_are_points_of_the_photograph_as_it_is_seen_after_exif_rotation(hinted):
    tall = _photo().transpose(Image.Transpose.ROTATE_90)  # stored 64 wide, 96 high
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: 96 wide, 64 high
    image = encode(tall, "JPEG", exif=exif.tobytes(), quality=95)
    plain = _pixels(hinted.post("/colorize?model=1", files={"image": ("p.jpg", image, "image/jpeg")}))
    assert plain.shape[:2] == (64, 96)
    # (90, 5) lies inside the photograph only as it is seen
    point = [{"x": 90, "y": 5, "color": "#c81e14", "radius": 2}]
    response = hinted.post(
        "/colorize?model=1",
        files={"image": ("p.jpg", image, "image/jpeg")},
        data={"hints": json.dumps(point)},
    )
    difference = np.abs(_pixels(response) - plain).sum(axis=-1)
    assert difference[:12, 82:].max() > 5 and difference[40:, :40].max() == 0


@pytest.mark.parametrize(
    ("hints", "words"),
    [
        ("not json", "JSON list"),
        ("[" * 5000, "nested this deep"),  # Python's JSON parser gives up: not a 500
        (
            '[{"x": 1, "y": 1, "color": "#fff"}, {"x": 500, "y": 1, "color": "#fff"}]',
            "hint 1: (500, 1) is outside",
        ),
        ('[{"x": 1, "y": 1, "color": "blue"}]', "hint 0: color must be"),
        ('[{"x": 1, "y": 1}]', "hint 0: needs x, y and color"),
    ],
)
def test_a_bad_hint_is_a_422_naming_the_point(hinted, hints, words):
    image = encode(_photo())
    multipart = hinted.post(
        "/colorize?model=1", files={"image": ("p.png", image, "image/png")}, data={"hints": hints}
    )
    body = assert_json_error(multipart, 422, words)
    assert body["errors"][0]["loc"] == ["body", "hints"]
    raw = hinted.post(
        "/colorize",
        params={"model": "1", "hints": hints},
        content=image,
        headers={"content-type": "image/png"},
    )
    assert assert_json_error(raw, 422, words)["errors"][0]["loc"] == ["query", "hints"]


def test_a_model_without_hint_inputs_refuses_hints_and_hints_are_sent_once(hinted):
    image = encode(_photo())
    refused = hinted.post(
        "/colorize", files={"image": ("p.png", image, "image/png")}, data={"hints": json.dumps(RED)}
    )
    assert_json_error(refused, 422, "model version 2 takes no colour hints")
    models = {m["version"]: m["hints"] for m in hinted.get("/models").json()["versions"]}
    assert models == {1: True, 2: False}
    twice = hinted.post(
        "/colorize?model=1",
        params={"hints": "[]"},
        files={"image": ("p.png", image, "image/png")},
        data={"hints": "[]"},
    )
    assert_json_error(twice, 422, "send hints once")
    empty = hinted.post("/colorize?model=1&hints=", content=image, headers={"content-type": "image/png"})
    assert assert_json_error(empty, 422, "JSON list")["errors"][0]["loc"] == ["query", "hints"]


def test_a_batch_takes_hints_per_file_and_a_files_bad_hints_cost_only_that_file(hinted):
    image = encode(_photo())
    per_file = {
        "a.png": RED,
        "b.png": [{"x": 999, "y": 0, "color": "#fff"}],
        "ghost.png": RED,
        ".hidden.png": RED,  # skipped as hidden: its hints were for a file that is there
    }
    members = {"a.png": image, "b.png": image, "c.png": image, ".hidden.png": image}
    response = hinted.post(
        "/colorize/batch?model=1",
        files={"archive": ("in.zip", zip_of(members), "application/zip")},
        data={"hints": json.dumps(per_file)},
    )
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        manifest = {f["name"]: f for f in json.loads(archive.read("manifest.json"))["files"]}
        hinted_a = np.asarray(Image.open(io.BytesIO(archive.read("a.png"))).convert("RGB")).astype(int)
        plain_c = np.asarray(Image.open(io.BytesIO(archive.read("c.png"))).convert("RGB")).astype(int)
    assert manifest["a.png"]["status"] == "ok" and manifest["c.png"]["status"] == "ok"
    assert (
        manifest["b.png"]["status"] == "error" and "hint 0: (999, 0) is outside" in manifest["b.png"]["error"]
    )
    assert (
        manifest["ghost.png"]["status"] == "skipped"
        and "not in the archive" in manifest["ghost.png"]["error"]
    )
    assert manifest[".hidden.png"]["status"] == "skipped" and "hidden" in manifest[".hidden.png"]["error"]
    difference = np.abs(hinted_a - plain_c).sum(axis=-1)
    assert difference[6:18, 4:16].max() > 5 and difference[40:, 50:].max() == 0
    bad = hinted.post(
        "/colorize/batch?model=1",
        params={"hints": "[1]"},
        content=zip_of({"a.png": image}),
        headers={"content-type": "application/zip"},
    )
    assert_json_error(bad, 422, "object from file paths")
    deep = hinted.post(
        "/colorize/batch?model=1",
        files={"archive": ("in.zip", zip_of({"a.png": image}), "application/zip")},
        data={"hints": '{"a.png": ' + "[" * 100_000},
    )
    assert assert_json_error(deep, 422, "nested")["errors"][0]["loc"] == ["body", "hints"]
    refused = hinted.post(
        "/colorize/batch",
        params={"hints": json.dumps({"a.png": RED})},
        content=zip_of({"a.png": image}),
        headers={"content-type": "application/zip"},
    )
    assert_json_error(refused, 422, "takes no colour hints")
