"""Shared test set-up: quiet TensorFlow, tiny photographs made on the fly, tiny models."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # no GPU here; skip the CUDA probe noise

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


def make_photo(width: int, height: int, seed: int) -> np.ndarray:
    """A colourful synthetic 'photograph': smooth sky-like gradient over a green band, with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([80 + 60 * y / height, 140 + 60 * y / height, np.full_like(y, 230)], -1)
    ground = np.stack([60 + 40 * x / width, 150 + 50 * np.sin(x / 7), 50 + 0 * x], -1)
    horizon = height * (0.4 + 0.2 * rng.random())
    img = np.where((y > horizon)[..., None], ground, sky)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dataset(folder: Path, count: int = 6, size: tuple[int, int] = (72, 56)) -> Path:
    """A folder of colour JPEG/PNG photographs for tiny training runs."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = Image.fromarray(make_photo(size[0] + 4 * i, size[1], seed=i))
        img.save(folder / (f"photo{i}.jpg" if i % 2 else f"photo{i}.png"))
    return folder


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """<tmp>/data/datasets/tiny with six small colour photographs; returns <tmp>/data."""
    data_dir = tmp_path / "data"
    write_dataset(data_dir / "datasets" / "tiny")
    return data_dir


@pytest.fixture(autouse=True)
def no_default(tmp_path_factory, monkeypatch) -> Path:
    """In-process tests start without the shipped default model unless a test installs one; the
    missing folder ``models.store.DEFAULT_MODEL_DIR`` points at. (A test names this fixture to say
    it relies on there being no default; tests that want one point the setting at their own; the
    end-to-end tests run real processes and see the real one.)
    """
    import models.store

    missing = tmp_path_factory.mktemp("nodefault") / "missing"
    monkeypatch.setattr(models.store, "DEFAULT_MODEL_DIR", missing)
    return missing


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Iterator[Path]:
    """COLORIZER_DATA_DIR=<tmp>/data for in-process CLI calls (the cached settings are reset)."""
    from common.settings import get_settings

    for key in list(os.environ):
        if key.startswith("COLORIZER_"):
            monkeypatch.delenv(key)
    data = tmp_path / "data"
    monkeypatch.setenv("COLORIZER_DATA_DIR", str(data))
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


# The in-process API fixtures (settings, start, client, fake_celery, keyed_client), for every test
# module; imported last, as tests.apptest uses make_photo above.
from tests.apptest import client, fake_celery, keyed_client, settings, start  # noqa: E402, F401
