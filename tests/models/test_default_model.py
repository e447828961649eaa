"""The packaged default model: served while the store is empty, a starting point for training, and
time-limited training runs (how the default is made).

The stores here and ``COLORIZER_DEFAULT_MODEL_DIR`` point at a tiny float16 default built per test
(or at nothing), never at the checkout's models/default/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient

from common.settings import Settings, get_settings
from common.store import version_key
from inference.engine import Engine
from inference.pipeline import Pipeline
from models.config import TrainConfig
from models.networks import build_generator
from models.store import (
    DEFAULT_VERSION,
    WEIGHTS_FILE,
    BrokenVersion,
    LoadedModel,
    ModelStore,
    UnknownVersion,
    export_float16,
)
from models.training import run_training
from service.deps import get_celery
from tests.apptest import FakeCelery, assert_json_error, encode, photo, wait_for

TINY_JOB = {"dataset": "tiny", "preset": "lab", "image_size": 32, "width": 4, "steps": 4}
DEFAULT_METRICS = {"validation": {"images": 4, "ciede2000": 9.5, "grayscale_ciede2000": 14.25}}


def tiny_config(**overrides) -> TrainConfig:
    values = dict(
        dataset="tiny",
        image_size=32,
        steps=2,
        batch_size=2,
        width=4,
        sample_every=100,
        publish_every=100,
        checkpoint_every=2,
        seed=1,
    )
    return TrainConfig(**{**values, **overrides})


def publish_tiny(store: ModelStore, preset: str = "lab", **metadata) -> int:
    channels = {"lab": (1, 2), "seed": (3, 3)}[preset]
    generator = build_generator(32, *channels, width=4)
    return store.publish(generator, {"preset": preset, "image_size": 32, **metadata})


@pytest.fixture
def default_dir(tmp_path, monkeypatch) -> Path:
    """A tiny packaged default model (lab, 32 px, width 4, float16 weights, run at 64 px like the real
    one runs above its training size) in a temporary folder."""
    keras.utils.set_random_seed(123)
    generator = build_generator(32, 1, 2, width=4)
    metadata = {"preset": "lab", "image_size": 32, "render_size": 64, "width": 4, "metrics": DEFAULT_METRICS}
    folder = export_float16(
        LoadedModel(DEFAULT_VERSION, generator, "lab", 32, metadata), tmp_path / "default"
    )
    monkeypatch.setenv("COLORIZER_DEFAULT_MODEL_DIR", str(folder))
    get_settings.cache_clear()
    return folder


@pytest.fixture
def settings(dataset_dir: Path, tmp_path: Path) -> Settings:
    """apptest's settings, with the default model in the ``default_dir`` fixture's folder (none
    there unless a test asks for it), whatever order the fixtures are made in."""
    return Settings(data_dir=dataset_dir, reload_interval=0.2, default_model_dir=tmp_path / "default")


@pytest.fixture
def store(tmp_path) -> ModelStore:
    """A store whose default is the ``default_dir`` fixture's (none when a test does not ask for it)."""
    return ModelStore(tmp_path / "models", tmp_path / "default")


# -- version keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "key"), [(3, 3), ("3", 3), (" 12 ", 12), ("default", "default"), ("Default ", "default")]
)
def test_version_key_accepts_numbers_and_default(given, key):
    assert version_key(given) == key


@pytest.mark.parametrize("given", [0, -1, "0", "x", "1.5", "", True, None])
def test_version_key_rejects_anything_else(given):
    with pytest.raises(UnknownVersion, match="does not exist"):
        version_key(given)


# -- engine ------------------------------------------------------------------------------------------


def test_the_engine_serves_the_default_until_a_version_is_published(store, default_dir):
    engine = Engine(store)
    assert engine.refresh() == DEFAULT_VERSION
    assert engine.model().version == "default" and engine.model().preset == "lab"
    assert engine.describe()["model_version"] == "default"
    assert engine.refresh() is None  # nothing better yet, and the default is not loaded again
    assert Pipeline(engine, 10**8).colorize_array(np.full((20, 30), 90, np.uint8)).shape == (20, 30, 3)

    assert publish_tiny(store) == 1
    assert engine.refresh() == 1
    assert engine.model().version == 1 and engine.describe()["model_version"] == 1
    assert engine.cached_versions() == ["default"]
    assert engine.model("default").version == "default"  # still there on request
    assert engine.refresh() is None  # never back to the default


def test_a_loadable_version_is_preferred_and_the_default_not_loaded(store, default_dir):
    publish_tiny(store)
    engine = Engine(store)
    assert engine.refresh() == 1
    assert engine.cached_versions() == []


def test_the_default_stands_in_when_every_version_is_broken(store, default_dir):
    broken = store.root / "1"
    broken.mkdir(parents=True)
    (broken / "metadata.json").write_text('{"preset": "lab", "image_size": 32}')
    (broken / "generator.keras").write_bytes(b"not a keras archive")
    engine = Engine(store)
    assert engine.refresh() == DEFAULT_VERSION
    assert 1 in engine.failed_versions()


def test_a_broken_default_is_remembered_with_a_reason_that_hides_the_path(store, default_dir):
    (default_dir / WEIGHTS_FILE).write_bytes(b"not an npz archive")
    engine = Engine(store)
    assert engine.refresh() is None and not engine.ready
    reason = engine.failed_versions()["default"]
    assert "the default model" in reason and str(default_dir) not in reason
    with pytest.raises(BrokenVersion):
        engine.model("default")


def test_without_a_default_an_empty_store_serves_nothing(store, no_default):
    engine = Engine(store)
    assert engine.refresh() is None and not engine.ready
    with pytest.raises(UnknownVersion, match="no default model"):
        engine.model("default")


# -- API ---------------------------------------------------------------------------------------------


def colorize(client: TestClient, query: str = ""):
    return client.post(f"/colorize{query}", content=encode(photo()), headers={"content-type": "image/png"})


def test_the_api_serves_the_default_then_swaps_to_version_1(settings, start, default_dir):
    client = start(settings)
    ready = wait_for(lambda: (r := client.get("/readyz")).status_code == 200 and r.json(), what="default")
    assert ready["model_version"] == "default"
    response = colorize(client)
    assert response.status_code == 200 and response.headers["x-model-version"] == "default"
    listing = client.get("/models").json()
    assert listing["served"] == "default"
    assert [(v["version"], v["served"], v["loaded"]) for v in listing["versions"]] == [
        ("default", True, True)
    ]
    assert listing["versions"][0]["metrics"] == DEFAULT_METRICS
    assert listing["versions"][0]["metadata"]["width"] == 4 and listing["versions"][0]["preset"] == "lab"
    assert (listing["versions"][0]["image_size"], listing["versions"][0]["render_size"]) == (32, 64)

    publish_tiny(ModelStore(settings.models_dir))
    wait_for(lambda: client.get("/readyz").json()["model_version"] == 1, what="version 1 served")
    assert colorize(client).headers["x-model-version"] == "1"
    explicit = colorize(client, "?model=default")
    assert explicit.status_code == 200 and explicit.headers["x-model-version"] == "default"
    listing = client.get("/models").json()
    assert listing["served"] == 1
    assert [(v["version"], v["served"], v["loaded"]) for v in listing["versions"]] == [
        ("default", False, True),
        (1, True, True),
    ]


def test_colorize_with_model_default_is_404_json_when_none_is_installed(settings, start, no_default):
    publish_tiny(ModelStore(settings.models_dir))
    client = start(settings)
    wait_for(lambda: client.get("/readyz").status_code == 200, what="version 1 served")
    assert_json_error(colorize(client, "?model=default"), 404, "no default model")
    assert [v["version"] for v in client.get("/models").json()["versions"]] == [1]


@pytest.fixture
def job_client(settings, start) -> Callable[[], tuple[TestClient, FakeCelery]]:
    """An app with a fake Celery (the job routes do not need a model served)."""

    def _make() -> tuple[TestClient, FakeCelery]:
        client, fake = start(settings), FakeCelery()
        client.app.dependency_overrides[get_celery] = lambda: fake
        return client, fake

    return _make


def test_a_job_can_start_from_the_default_when_it_is_installed(job_client, default_dir):
    client, fake = job_client()
    response = client.post("/jobs", json={**TINY_JOB, "init_from": "default"})
    assert response.status_code == 202, response.text
    assert response.json()["config"]["init_from"] == "default"
    assert fake.calls[0]["args"][1]["init_from"] == "default"


def test_a_job_from_the_default_without_one_installed_is_422_naming_init_from(job_client, no_default):
    client, fake = job_client()
    body = assert_json_error(
        client.post("/jobs", json={**TINY_JOB, "init_from": "default"}), 422, "init_from"
    )
    assert body["errors"][0]["loc"] == ["body", "init_from"] and "no default model" in body["detail"]
    assert fake.calls == []


@pytest.mark.parametrize(
    ("published", "job", "named"),
    [
        ({"preset": "seed", "width": 4}, {}, "preset 'seed'"),
        ({"preset": "lab", "width": 8}, {}, "width 8"),
        ({"preset": "lab", "width": 4}, {"image_size": 64}, "image_size 32"),
        # A version from before the decoder option has the report's ConvTranspose decoder.
        ({"preset": "lab", "width": 4}, {"decoder": "resize"}, "decoder 'transpose'"),
        ({"preset": "lab", "width": 4, "decoder": "resize"}, {"decoder": "transpose"}, "decoder 'resize'"),
        # A version from before the encoder option has the report's U-Net encoder.
        ({"preset": "lab", "width": 4}, {"encoder": "mobilenet_v2"}, "encoder 'unet'"),
    ],
)
def test_a_job_from_a_version_of_another_shape_is_422_naming_init_from(
    job_client, settings, no_default, published, job, named
):
    store = ModelStore(settings.models_dir)
    extra = {key: value for key, value in published.items() if key != "preset"}
    version = publish_tiny(store, published["preset"], **extra)
    client, fake = job_client()
    response = client.post("/jobs", json={**TINY_JOB, **job, "init_from": version})
    body = assert_json_error(response, 422, "init_from", named, f"model version {version}")
    assert body["errors"][0]["loc"] == ["body", "init_from"]
    assert fake.calls == []
    matching = client.post("/jobs", json={**TINY_JOB, "init_from": publish_tiny(store, width=4)})
    assert matching.status_code == 202, matching.text


def test_a_job_from_a_default_of_another_shape_is_422(job_client, default_dir):
    client, _ = job_client()
    response = client.post("/jobs", json={**TINY_JOB, "width": 8, "init_from": "default"})
    assert_json_error(response, 422, "init_from", "the default model has width 4", "width 8")


# -- training ----------------------------------------------------------------------------------------


def test_training_can_start_from_the_default_model(dataset_dir, tmp_path, store, default_dir):
    # a learning rate too small to move any weight: the published generator is the default's
    config = tiny_config(init_from="default", g_learning_rate=1e-12, d_learning_rate=1e-12)
    result = run_training(config, data_dir=dataset_dir, job_dir=tmp_path / "job", store=store)
    assert result.state == "succeeded" and result.published_versions == [1]
    assert store.get(1).metadata["config"]["init_from"] == "default"
    published = store.load(1).generator.trainable_weights
    default = ModelStore.load_dir(default_dir, DEFAULT_VERSION).generator.trainable_weights
    assert len(published) == len(default)
    for trained, start in zip(published, default, strict=True):
        np.testing.assert_allclose(np.asarray(trained), np.asarray(start), atol=1e-6)

    with pytest.raises(BrokenVersion, match="does not fit"):
        run_training(
            tiny_config(init_from="default", width=8),
            data_dir=dataset_dir,
            job_dir=tmp_path / "j2",
            store=store,
        )


def test_training_from_the_default_without_one_installed_raises_unknown_version(
    dataset_dir, tmp_path, store, no_default
):
    with pytest.raises(UnknownVersion, match="no default model"):
        run_training(
            tiny_config(init_from="default"), data_dir=dataset_dir, job_dir=tmp_path / "j", store=store
        )
    assert store.versions() == []


def test_a_time_limit_ends_the_run_as_succeeded_and_publishes(dataset_dir, tmp_path, store):
    progress = []
    config = tiny_config(steps=10_000, max_seconds=0.01, publish_every=10_000)
    result = run_training(
        config, data_dir=dataset_dir, job_dir=tmp_path / "job", store=store, on_progress=progress.append
    )
    assert result.state == "succeeded"
    assert 1 <= result.steps < 10  # the first step alone (tracing) outlasts the limit
    assert result.published_versions == [1] == store.versions()
    metadata = store.get(1).metadata
    assert metadata["step"] == result.steps
    assert metadata["metrics"]["validation"]["images"] >= 1
    assert progress[-1]["step"] == progress[-1]["total"] == result.steps
