"""The colorize worker's task (in-process, run eagerly): what it answers when it cannot colorize."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from common.fanout import encode_photo
from inference.engine import Engine
from inference.pipeline import Pipeline
from models.networks import build_generator
from models.store import ModelStore
from service.errors import inference_error
from worker import colorize as task_module


def test_a_worker_stopping_answers_a_version_it_gave_up_loading_so_the_sender_colorizes_it(
    tmp_path: Path, monkeypatch
):
    """A warm shutdown (``worker_shutting_down`` stops the engine) gives up loading the version a
    photograph still in flight asks for: the task answers NoModelLoaded, not a traceback, and the
    sender takes it as one to colorize itself."""
    store = ModelStore(tmp_path / "models")
    version = store.publish(build_generator(32, 1, 2, width=4), {"preset": "lab", "image_size": 32})
    engine = Engine(store)
    engine.stop()  # what the worker's shutdown signal does
    monkeypatch.setattr(task_module, "_pipeline", Pipeline(engine, 10**8))
    png = io.BytesIO()
    Image.fromarray(np.full((24, 32), 90, np.uint8)).save(png, "PNG")

    answer = task_module.colorize.apply(args=[encode_photo(png.getvalue()), version, "png"]).get()
    assert answer["kind"] == "NoModelLoaded" and "data" not in answer, answer
    assert f"model version {version} was not loaded: the service is stopping" in answer["error"]
    assert inference_error(answer["kind"], answer["error"]) is None  # the sender colorizes it itself
    assert engine.failed_versions() == {}  # not remembered as broken
