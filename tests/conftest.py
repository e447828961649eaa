"""Shared test set-up: quiet TensorFlow, tiny photographs made on the fly, tiny models."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # no GPU here; skip the CUDA probe noise

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.photos import write_dataset  # noqa: E402


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """<tmp>/data/datasets/tiny with six small colour photographs; returns <tmp>/data."""
    data_dir = tmp_path / "data"
    write_dataset(data_dir / "datasets" / "tiny")
    return data_dir


@pytest.fixture(autouse=True)
def no_default(tmp_path_factory, monkeypatch) -> Path:
    """In-process tests start without the shipped default model unless a test installs one: the
    missing folder ``COLORIZER_DEFAULT_MODEL_DIR`` names (a ``ModelStore`` made without
    ``default_dir`` has none either). A test names this fixture to say it relies on there being no
    default; tests that want one point the setting at their own; the end-to-end tests run real
    processes without the tests' COLORIZER_ settings and see the real one.
    """
    from common.settings import get_settings

    missing = tmp_path_factory.mktemp("nodefault") / "missing"
    monkeypatch.setenv("COLORIZER_DEFAULT_MODEL_DIR", str(missing))
    get_settings.cache_clear()
    yield missing
    get_settings.cache_clear()


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Iterator[Path]:
    """COLORIZER_DATA_DIR=<tmp>/data for in-process CLI calls (the cached settings are reset)."""
    from common.settings import get_settings

    for key in list(os.environ):
        if key.startswith("COLORIZER_") and key != "COLORIZER_DEFAULT_MODEL_DIR":  # (no_default's)
            monkeypatch.delenv(key)
    data = tmp_path / "data"
    monkeypatch.setenv("COLORIZER_DATA_DIR", str(data))
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


# The in-process API fixtures (settings, start, client, fake_celery, keyed_client), for every test
# module.
from tests.apptest import client, fake_celery, keyed_client, settings, start  # noqa: E402, F401


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A real S3-compatible server on loopback (moto's, which keeps S3's conditional writes); its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_client(endpoint: str):
    """A boto3 S3 client for ``endpoint`` (any credentials: the test server takes them)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh bucket on ``s3_server``: its URL, with a prefix."""
    import uuid

    name = f"models-{uuid.uuid4().hex[:12]}"
    s3_client(s3_server).create_bucket(Bucket=name)
    return f"s3://{name}/colorizer/models"
