"""inference.pipeline: the one colorize pipeline, and its plain errors as the API answers them."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.engine import Engine
from inference.errors import (
    BadRenderSize,
    CannotEncode,
    DamagedImage,
    EmptyImage,
    EngineBusy,
    ImageTooLarge,
    ImageTooSmall,
    NoModelLoaded,
    NotAnImage,
)
from inference.pipeline import Pipeline
from models.store import ModelStore
from service.errors import ApiError, http_error
from tests.apptest import publish_tiny_to
from tests.photos import make_photo


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    store = ModelStore(tmp_path_factory.mktemp("pipeline") / "models")
    publish_tiny_to(store)
    engine = Engine(store, precision="float32", batch_timeout=0.0)
    assert engine.refresh() == 1
    yield engine
    engine.stop()


def test_a_file_comes_back_colorized_at_its_size_with_its_transparency(engine):
    rgba = np.dstack([make_photo(50, 30, seed=3), np.full((30, 50), 200, np.uint8)])
    rgba[:5, :5, 3] = 0
    out = Image.open(io.BytesIO(Pipeline(engine, 10**6).colorize_bytes(_png(rgba), "png")))
    assert out.size == (50, 30) and out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3], rgba[..., 3])
    jpeg = Image.open(io.BytesIO(Pipeline(engine, 10**6).colorize_bytes(_png(rgba), "jpeg")))
    assert jpeg.format == "JPEG" and jpeg.size == (50, 30) and jpeg.mode == "RGB"


def test_its_stages_give_what_colorize_bytes_gives(engine):
    pipeline = Pipeline(engine, 10**6)
    data = _png(make_photo(40, 40, seed=5))
    model = engine.model()
    prepared = pipeline.decode_and_prepare(data, model)
    assert prepared.model is model and prepared.size == model.render_size and prepared.alpha is None
    staged = pipeline.finish_and_encode(prepared, pipeline.submit(prepared).result(30), "png")
    assert staged == pipeline.colorize_bytes(data, "png")


@pytest.mark.parametrize(
    ("data", "limits", "error", "sentence"),
    [
        (b"", (10**6, 1), EmptyImage, "empty"),
        (b"not an image at all", (10**6, 1), NotAnImage, "not an image"),
        (_png(make_photo(40, 40, seed=1))[:60], (10**6, 1), DamagedImage, "damaged"),
        # the signature of a format read here, then nothing Pillow can identify: damaged, not another kind
        (b"\x89PNG\r\n\x1a\n" + bytes(100), (10**6, 1), DamagedImage, "begins as a PNG file"),
        (b"\xff\xd8\xff" + b"junk" * 30, (10**6, 1), DamagedImage, "begins as a JPEG file"),
        (b"RIFF\x10\x00\x00\x00WEBP" + bytes(40), (10**6, 1), DamagedImage, "begins as a WebP file"),
        (b"GIF89a" + bytes(5), (10**6, 1), DamagedImage, "begins as a GIF file"),
        (b"MM\x00*" + bytes(3), (10**6, 1), DamagedImage, "begins as a TIFF file"),
        (b"PNG, said a text file", (10**6, 1), NotAnImage, "not an image"),  # a signature is bytes
        (_png(make_photo(40, 40, seed=1)), (1000, 1), ImageTooLarge, "1000 pixels"),
        (_png(make_photo(40, 8, seed=1)), (10**6, 16), ImageTooSmall, "at least 16 pixels"),
    ],
)
def test_bad_photographs_raise_plain_errors_with_a_sentence(engine, data, limits, error, sentence):
    with pytest.raises(error) as caught:
        Pipeline(engine, *limits).decode_and_prepare(data, engine.model())
    assert sentence in str(caught.value)


def test_a_bad_render_size_or_a_full_queue_is_refused_before_decoding(engine):
    pipeline = Pipeline(engine, 10**6)
    with pytest.raises(BadRenderSize, match="multiple of"):
        pipeline.decode_and_prepare(b"not an image", engine.model(), render_size=33)
    gate = threading.Event()
    run = engine.batcher._run
    engine.batcher._run = lambda key, payloads: gate.wait(30) and run(key, payloads)
    # a full queue, plus what the held calls may have taken off it: each a whole batch, if the
    # inference thread wakes after several submits
    batcher = engine.batcher
    full = batcher.max_queue + batcher.max_batch_size * batcher.in_flight
    prepared = pipeline.decode_and_prepare(_png(make_photo(20, 20, seed=2)), engine.model())
    try:
        futures = []
        with pytest.raises(EngineBusy):  # fill the queue (calls may be running, held at the gate)
            for _ in range(full + 1):
                futures.append(pipeline.submit(prepared))
        with pytest.raises(EngineBusy, match="busy"):
            pipeline.decode_and_prepare(b"not an image", engine.model(), refuse_when_busy=True)
    finally:
        gate.set()
        engine.batcher._run = run
    assert all(f.result(30).shape == (32, 32, 2) for f in futures)


@pytest.mark.parametrize(
    ("error", "status", "field"),
    [
        (EmptyImage("empty"), 400, None),
        (DamagedImage("damaged"), 400, None),
        (ImageTooLarge("large"), 413, None),
        (NotAnImage("what"), 415, None),
        (ImageTooSmall("small"), 422, ("body", "image")),
        (CannotEncode("cannot"), 422, ("query", "format")),
        (BadRenderSize("odd", 33), 422, ("query", "render_size")),
        (EngineBusy(3, retry_after=7), 503, None),
        (NoModelLoaded(), 503, None),
    ],
)
def test_the_api_answers_each_inference_error_with_its_status(error, status, field):
    answer = http_error(error)
    if field is None:
        assert isinstance(answer, ApiError) and answer.status_code == status
        assert answer.detail == str(error)
    else:
        (problem,) = answer.errors()
        assert problem["loc"] == field and problem["msg"] == str(error)
        assert problem["input"] == getattr(error, "value", None)  # the value sent, where there is one
    if isinstance(error, EngineBusy):
        assert answer.headers["Retry-After"] == "7"
    assert http_error(ValueError("anything else")) is None


def test_the_cli_folder_run_writes_what_the_pipeline_gives(engine, tmp_path: Path):
    from cli.colorize import FolderRun, plan_outputs

    folder = tmp_path / "in"
    folder.mkdir()
    data = _png(make_photo(36, 28, seed=4))
    (folder / "a.png").write_bytes(data)
    (folder / "broken.png").write_bytes(b"not an image")
    pipeline = Pipeline(engine, 10**6)
    results: dict[str, str | None] = {}
    run = FolderRun(pipeline, engine.model(), fmt="png", render_size=None, jobs=2, window=4)
    run.run(plan_outputs((folder,), tmp_path / "out", "png"), lambda t, e: results.update({t.source.name: e}))
    assert results["a.png"] is None and "not an image" in results["broken.png"]
    assert (tmp_path / "out" / "a.png").read_bytes() == pipeline.colorize_bytes(data, "png")
