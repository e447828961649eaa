"""What the in-process API tests share: helpers, and fixtures (registered in conftest.py) that
publish real tiny generators into a temporary store and start the app with its lifespan.

Only the Celery app is replaced (by ``FakeCelery``, which records ``send_task``), through
``app.dependency_overrides``; everything else is the real thing.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from common.settings import Settings

# Imported before any test app starts: its engine thread imports TensorFlow, and a test that
# builds a model meanwhile would import it from a second thread (Python's import locks can then
# deadlock; seen running the readyz test alone).
from models.networks import build_generator
from models.store import LoadedModel, ModelStore
from service.app import create_app
from service.deps import get_celery
from tests.photos import make_photo

TINY_JOB = {"dataset": "tiny", "preset": "lab", "image_size": 32, "width": 4, "steps": 4}


# -- helpers -------------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def publish_tiny_to(store: ModelStore, preset: str = "lab", **metadata: Any) -> int:
    """Publish a tiny untrained generator (32 px, width 4) into ``store``; returns its version."""
    channels = {"lab": (1, 2), "seed": (3, 3)}[preset]
    generator = build_generator(32, *channels, width=4)
    return store.publish(generator, {"preset": preset, "image_size": 32, **metadata})


def tiny_model(metadata: dict) -> LoadedModel:
    """A 32 px resize-decoder generator, untrained but not gray (last bias set), as a loaded version."""
    import keras

    keras.utils.set_random_seed(4)
    generator = build_generator(32, 1, 2, width=4, decoder="resize")
    last = [layer for layer in generator.layers if layer.weights][-1]
    kernel, bias = last.get_weights()
    last.set_weights([kernel, np.asarray([0.3, -0.25], np.float32)])  # an untrained model is all gray
    base = {"preset": "lab", "image_size": 32, "width": 4, "decoder": "resize"}
    return LoadedModel(1, generator, "lab", 32, {**base, **metadata})


HINT_MODEL_METADATA = {
    "preset": "lab",
    "image_size": 32,
    "width": 4,
    "decoder": "resize",
    "encoder": "mobilenet_v2",
    "hints": True,
}


def tiny_hint_generator() -> Any:
    """A 32 px generator that takes colour hints: untrained (random encoder), its hint propagation
    narrowed to a few pixels, so a hint changes the colours near it and nowhere far away."""
    import keras

    keras.utils.set_random_seed(5)
    generator = build_generator(32, 1, 2, width=4, decoder="resize", encoder="mobilenet_v2", hints=True)
    last = generator.get_layer("out_upconv")
    last.set_weights([last.get_weights()[0], np.asarray([0.3, -0.25], np.float32)])
    propagation = generator.get_layer("hint_propagation")
    propagation.log_spread.assign(-3.5)  # a spread of 3% of the side
    return generator


def publish_tiny_hints_to(store: ModelStore) -> int:
    """Publish ``tiny_hint_generator`` into ``store``; returns its version."""
    return store.publish(tiny_hint_generator(), dict(HINT_MODEL_METADATA))


def publish_tiny(settings: Settings, preset: str = "lab") -> int:
    """Publish a tiny untrained generator (32 px, width 4) into the settings' store."""
    return publish_tiny_to(ModelStore(settings.models_dir), preset)


def changed(settings: Settings, **changes: Any) -> Settings:
    """The same settings with some fields changed, validated again."""
    return Settings(**{**dict(settings), **changes})


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(width: int = 50, height: int = 40, mode: str = "RGB") -> Image.Image:
    return Image.fromarray(make_photo(width, height, seed=1)).convert(mode)


def decoded(response) -> Image.Image:
    return Image.open(io.BytesIO(response.content))


def assert_json_error(response, status: int, *words: str) -> dict:
    """The response is a JSON error with ``status`` whose detail sentence mentions ``words``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    for word in words:
        assert word in body["detail"], body
    return body


class FakeCelery:
    """Records send_task calls; raises ``error`` when given, like an unreachable broker."""

    def __init__(self, error: Exception | None = None):
        self.calls: list[dict[str, Any]] = []
        self.error = error

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> None:
        self.calls.append({"name": name, "args": args, "kwargs": kwargs, **options})
        if self.error is not None:
            raise self.error


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def settings(dataset_dir: Path) -> Settings:
    """A fresh data directory with the ``tiny`` dataset, looked at every 0.2 s. Models run on
    TensorFlow: ``auto`` measures (and may convert) every version as it loads, about 4 s of CPU a
    load in these tests; the tests of that choice ask for it (``changed``)."""
    return Settings(data_dir=dataset_dir, reload_interval=0.2, inference_runtime="tensorflow")


@pytest.fixture
def start() -> Iterator[Callable[[Settings], TestClient]]:
    """Start an app (lifespan included) for some settings; every one is stopped at the end."""
    with ExitStack() as stack:

        def _start(settings: Settings) -> TestClient:
            return stack.enter_context(TestClient(create_app(settings)))

        yield _start


@pytest.fixture
def client(settings: Settings, start) -> TestClient:
    """An app serving version 1 (a tiny lab generator), ready."""
    publish_tiny(settings)
    client = start(settings)
    wait_for(lambda: client.get("/readyz").status_code == 200, what="version 1 served")
    return client


@pytest.fixture
def fake_celery(client: TestClient) -> FakeCelery:
    fake = FakeCelery()
    client.app.dependency_overrides[get_celery] = lambda: fake
    return fake


@pytest.fixture
def keyed_client(settings, start) -> TestClient:
    publish_tiny(settings)
    client = start(changed(settings, api_key="s3cret-key"))
    wait_for(lambda: client.get("/readyz").status_code == 200, what="ready")
    client.app.dependency_overrides[get_celery] = lambda: FakeCelery()
    return client


def publish_lively_tiny(settings: Settings) -> int:
    """Publish a tiny generator with He-scaled weights: its dropout noise shows in the pixels."""
    from keras.utils import set_random_seed

    from tests.inference.test_serving import lively

    set_random_seed(0)
    from models.networks import build_generator

    generator = lively(build_generator(32, 1, 2, width=4))
    return ModelStore(settings.models_dir).publish(generator, {"preset": "lab", "image_size": 32})


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few dozen bytes whose header declares a ``width`` x ``height`` canvas."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
