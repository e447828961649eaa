"""Serving: batch independence, determinism, bfloat16, the dynamic batcher, no retracing.

Generators here are tiny (32 px, width 4) with lively weights (He-scaled instead of pix2pix's
N(0, 0.02)), so that their outputs, and their dropout noise, show in the pixels; one check runs a
256 px U-Net at width 16.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from common.settings import Settings
from inference.batcher import BatcherStopped, DynamicBatcher, QueueFull, batch_buckets, bucket_for
from inference.engine import Engine, engine_from_settings
from inference.errors import EngineBusy
from inference.pipeline import Pipeline
from models import serving as serving_module
from models.colorize import colorize_array, finish, prepare
from models.device import CPU, bfloat16_supported
from models.networks import build_generator
from models.pixels import _pixels_lightness, _pixels_rgb, chroma_sharing, pixel_bucket
from models.serving import _KERNEL_LAYERS, InferenceModel, batch_of, precision_twin
from models.store import LoadedModel, ModelStore
from service.metrics import ServiceMetrics
from tests.photos import make_photo


def lively(generator: keras.Model, seed: int = 0) -> keras.Model:
    """Give every kernel He-scaled random weights, so the untrained output is far from gray."""
    rng = np.random.default_rng(seed)
    weights = []
    for w in generator.get_weights():
        if w.ndim == 4:  # conv kernels: (kh, kw, in, out) or (kh, kw, out, in) for transposed
            fan_in = w.shape[0] * w.shape[1] * w.shape[2]
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), w.shape).astype(np.float32)
        weights.append(w)
    generator.set_weights(weights)
    return generator


def lively_model(image_size: int = 32, width: int = 4, seed: int = 0) -> LoadedModel:
    keras.utils.set_random_seed(seed)
    generator = lively(build_generator(image_size, 1, 2, width=width), seed)
    return LoadedModel(1, generator, "lab", image_size, {"width": width})


def photos(count: int, base: int = 40) -> list[np.ndarray]:
    return [make_photo(base + 7 * i, base + 3 * i, seed=i) for i in range(count)]


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return lively_model()


def publish_lively(store: ModelStore) -> int:
    keras.utils.set_random_seed(0)
    generator = lively(build_generator(32, 1, 2, width=4))
    return store.publish(generator, {"preset": "lab", "image_size": 32})


# -- inference model -------------------------------------------------------------------------------


# What a photograph alone and inside a batch of eight may differ by: (raw output, levels in 255 on a
# pixel, levels on average). float32 and native bfloat16 (AVX512_BF16/AMX, through oneDNN: measured
# identical) keep batch independence to rounding. Where bfloat16 is only emulated (AVX2-only CPUs,
# or TF_ENABLE_ONEDNN_OPTS=0: Eigen's kernels) the summation order follows the batch: measured on
# 48 photographs up to 9 levels on a pixel, 0.05 on average (0.09 at most). `auto` never serves
# bfloat16 there; one who asks for it gets that, and the log says it is emulated.
BATCH_TOLERANCE = {
    "float32": (1e-5, 1, 0.05),
    "bfloat16": (2e-2, 2, 0.05),
    "emulated bfloat16": (0.1, 16, 0.2),
}


def bfloat16_is_native() -> bool:
    return bfloat16_supported(CPU) and os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0"


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_an_image_is_colorized_the_same_alone_and_in_a_batch_of_eight(model, precision):
    serving = InferenceModel(model, precision)
    emulated = precision == "bfloat16" and not bfloat16_is_native()
    raw, pixel, mean = BATCH_TOLERANCE[f"emulated {precision}" if emulated else precision]
    prepared = [prepare(model, p) for p in photos(8)]
    inputs = np.stack([p[0] for p in prepared])
    together = serving.predict(inputs)
    alone = np.concatenate([serving.predict(inputs[i : i + 1]) for i in range(8)])
    padded = serving.predict(inputs[:3], pad_to=4)  # as the engine pads 3 requests to a bucket of 4
    assert padded.shape == (3, 32, 32, 2)
    assert np.abs(padded - together[:3]).max() < raw
    assert together.shape == (8, 32, 32, 2)
    assert np.abs(together - alone).max() < raw
    for (_, lum, _), a, b in zip(prepared, alone, together, strict=True):
        diff = np.abs(finish(model, a, lum).astype(int) - finish(model, b, lum))
        assert diff.max() <= pixel and diff.mean() < mean
    assert not np.allclose(together[0], together[1])  # different photographs, different outputs


def test_the_engines_batch_is_shared_with_the_model_call_not_copied(model, monkeypatch):
    serving = InferenceModel(model)
    inputs = [prepare(model, p)[0] for p in photos(3)]
    batch = batch_of(inputs, 4)  # as the engine batches 3 requests for a bucket of 4
    assert batch.shape == (4, *inputs[0].shape) and batch.dtype == np.float32
    assert batch.ctypes.data % 64 == 0 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch[:3], np.stack(inputs))
    assert not batch[3].any()  # the padding is zeros
    # the same four rows as a numpy array of numpy's own, which TensorFlow copies
    copied = serving.predict(np.stack([*inputs, np.zeros_like(inputs[0])]))[:3]

    def no_copy(*args, **kwargs):
        raise AssertionError("the batch was copied into TensorFlow")

    monkeypatch.setattr(serving_module.tf, "convert_to_tensor", no_copy)
    shared = serving.predict(batch)
    assert not shared.flags.writeable  # the output tensor's own memory, not a copy of it
    np.testing.assert_array_equal(shared[:3], copied)  # the same call on the same values


def test_the_same_photograph_gives_the_same_colorization(model):
    serving = InferenceModel(model)
    photo = make_photo(70, 50, seed=3)
    inputs, lum, _ = prepare(model, photo)
    first = finish(model, serving.predict(inputs[None])[0], lum)
    again = finish(model, serving.predict(inputs[None])[0], lum)
    assert np.array_equal(first, again)
    assert np.array_equal(first, colorize_array(model, photo))  # the CLI's path, the same pixels
    assert np.abs(first.astype(int) - photo).mean() > 5  # colour changed: a lively model


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b).mean())


def test_bfloat16_stays_within_one_level_of_float32_on_a_photograph(model):
    photo = make_photo(96, 64, seed=4)
    inputs, lum, _ = prepare(model, photo)
    f32 = finish(model, InferenceModel(model, "float32").predict(inputs[None])[0], lum)
    bf16_model = InferenceModel(model, "bfloat16")
    assert bf16_model.precision == "bfloat16"
    bf16 = finish(model, bf16_model.predict(inputs[None])[0], lum)
    assert _mad(f32, bf16) < 1.0  # 1/255 in [0, 1] units


def test_bfloat16_stays_within_one_level_of_float32_for_a_256_pixel_unet():
    model = lively_model(256, width=16, seed=1)
    photo = make_photo(300, 260, seed=6)
    inputs, lum, _ = prepare(model, photo)
    f32 = finish(model, InferenceModel(model, "float32").predict(inputs[None])[0], lum)
    bf16 = finish(model, InferenceModel(model, "bfloat16").predict(inputs[None])[0], lum)
    assert _mad(f32, photo) > 5  # the model does colour the photograph
    assert _mad(f32, bf16) < 1.0


def nested_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from nested_layers(layer)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"decoder": "resize", "encoder": "mobilenet_v2"},
        {"decoder": "resize", "encoder": "mobilenet_v2", "hints": True},
    ],
)
def test_the_bfloat16_twin_keeps_its_kernels_in_bfloat16_and_computes_what_the_mixed_policy_does(options):
    """Cloned from the generator, its weights cast once at load are those the mixed policy casts in
    every call: the same output to the bit as the generator rebuilt under that policy, and half
    the memory for them."""
    keras.utils.set_random_seed(3)
    generator = lively(build_generator(64, 1, 2, width=8, **options), 3)
    model = LoadedModel(1, generator, "lab", 64, {"width": 8})
    twin = precision_twin(model, "mixed_bfloat16")
    mixed = build_generator(64, 1, 2, width=8, dtype="mixed_bfloat16", **options)
    mixed.set_weights(generator.get_weights())
    layers = list(nested_layers(twin))  # the MobileNetV2 encoder is a model of its own
    kernels = [layer for layer in layers if isinstance(layer, _KERNEL_LAYERS)]
    assert kernels and all(w.dtype == "bfloat16" for layer in kernels for w in layer.weights)
    assert {w.dtype for w in mixed.weights} == {"float32"}
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(w.dtype == "float32" for layer in norms for w in layer.weights)
    channels = int(generator.input_shape[-1])  # with hint channels after the photograph's
    x = np.random.default_rng(3).uniform(-1, 1, (2, 64, 64, channels)).astype(np.float32)
    expected = mixed(x, training=False).numpy()
    assert np.abs(expected - generator(x, training=False).numpy()).max() > 0  # bfloat16 differs
    np.testing.assert_array_equal(twin(x, training=False).numpy(), expected)


def test_a_generator_that_is_not_our_unet_is_served_in_float32():
    inputs = keras.Input((None, None, 1))
    generator = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="only")(inputs))
    serving = InferenceModel(LoadedModel(1, generator, "lab", 32, {}), "bfloat16")
    assert serving.precision == "float32"
    assert serving.predict(np.zeros((1, 32, 32, 1), np.float32)).shape == (1, 32, 32, 2)


# -- the dynamic batcher ----------------------------------------------------------------------------


def test_batch_buckets_are_powers_of_two_up_to_the_largest_batch():
    assert batch_buckets(8) == (1, 2, 4, 8)
    assert batch_buckets(6) == (1, 2, 4, 6)
    assert batch_buckets(1) == (1,)
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 9]


class Recorder:
    """A run function that records its batches and can be held until released."""

    def __init__(self, hold: bool = False):
        self.batches: list[tuple[object, list]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, key, payloads):
        self.entered.set()
        self.release.wait(30)
        self.batches.append((key, list(payloads)))
        return [p * 10 for p in payloads]


@pytest.fixture
def make_batcher():
    made: list[DynamicBatcher] = []

    def _make(run, **options) -> DynamicBatcher:
        batcher = DynamicBatcher(run, **options)
        made.append(batcher)
        return batcher

    yield _make
    for batcher in made:
        batcher.stop()


def test_concurrent_submits_are_served_in_one_batch(make_batcher):
    run = Recorder()
    batcher = make_batcher(run, max_batch_size=4, timeout=5.0)
    results = [None] * 4

    def client(i):
        results[i] = batcher.submit("a", i).result(30)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [0, 10, 20, 30]
    assert [len(p) for _, p in run.batches] == [4]  # one call, not before the batch was full


def test_a_lone_request_runs_once_the_timeout_has_passed(make_batcher):
    run = Recorder()
    batcher = make_batcher(run, max_batch_size=8, timeout=0.05)
    started = time.monotonic()
    assert batcher.submit("a", 1).result(30) == 10
    assert time.monotonic() - started >= 0.05
    assert [len(p) for _, p in run.batches] == [1]


def test_batches_hold_one_key_and_other_keys_keep_their_turn(make_batcher):
    run = Recorder(hold=True)
    batcher = make_batcher(run, max_batch_size=8, timeout=0.0)
    first = batcher.submit("a", 0)
    assert run.entered.wait(30)  # the thread is busy with the first request
    futures = [batcher.submit(key, i) for i, key in enumerate("abab", start=1)]
    run.release.set()
    assert [f.result(30) for f in (first, *futures)] == [0, 10, 20, 30, 40]
    assert [(key, payloads) for key, payloads in run.batches] == [("a", [0]), ("a", [1, 3]), ("b", [2, 4])]


def test_submit_past_max_queue_raises_queue_full(make_batcher):
    run = Recorder(hold=True)
    batcher = make_batcher(run, max_batch_size=1, timeout=0.0, max_queue=2)
    running = batcher.submit("a", 0)
    assert run.entered.wait(30)
    queued = [batcher.submit("a", i) for i in (1, 2)]
    assert batcher.full() and batcher.depth() == 2
    with pytest.raises(QueueFull):
        batcher.submit("a", 3)
    run.release.set()
    assert [f.result(30) for f in (running, *queued)] == [0, 10, 20]


def test_a_failing_batch_fails_each_of_its_requests_and_the_thread_goes_on(make_batcher):
    calls = []

    def run(key, payloads):
        calls.append(list(payloads))
        if key == "bad":
            raise ValueError("broken generator")
        return payloads

    batcher = make_batcher(run, max_batch_size=4, timeout=0.0)
    with pytest.raises(ValueError, match="broken generator"):
        batcher.submit("bad", 1).result(30)
    assert batcher.submit("good", 2).result(30) == 2


def test_stop_fails_the_requests_still_queued(make_batcher):
    run = Recorder(hold=True)
    batcher = make_batcher(run, max_batch_size=1, timeout=0.0)
    running = batcher.submit("a", 0)
    assert run.entered.wait(30)
    queued = batcher.submit("a", 1)
    threading.Timer(0.2, run.release.set).start()
    batcher.stop()
    assert running.result(30) == 0
    with pytest.raises(BatcherStopped):
        queued.result(30)


class Overlap:
    """A run function wrapped to count the batches inside it at once; with ``pair``, each call is
    held until a second one runs beside it (30 s at most)."""

    def __init__(self, run, pair: bool = False):
        self.run = run
        self.pair = pair
        self.lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.two_inside = threading.Event()

    def __call__(self, key, payloads):
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            if self.inside >= 2:
                self.two_inside.set()
        try:
            if self.pair:
                self.two_inside.wait(30)
            return self.run(key, payloads)
        finally:
            with self.lock:
                self.inside -= 1


def test_a_second_full_batch_runs_beside_the_first_with_two_in_flight(make_batcher):
    run = Recorder(hold=True)
    overlap = Overlap(run)
    batcher = make_batcher(overlap, max_batch_size=2, timeout=5.0, in_flight=2)
    first = [batcher.submit("a", i) for i in (0, 1)]
    assert run.entered.wait(30)
    second = [batcher.submit("a", i) for i in (2, 3)]
    assert overlap.two_inside.wait(30)  # the second batch did not wait for the first
    run.release.set()
    assert [f.result(30) for f in (*first, *second)] == [0, 10, 20, 30]
    assert sorted(payloads for _, payloads in run.batches) == [[0, 1], [2, 3]]
    assert batcher.batches_run == 2


def test_with_two_in_flight_a_batch_that_is_not_full_waits_for_the_first_thread(make_batcher):
    run = Recorder(hold=True)
    overlap = Overlap(run)
    batcher = make_batcher(overlap, max_batch_size=4, timeout=0.0, in_flight=2)
    first = batcher.submit("a", 0)
    assert run.entered.wait(30)  # the first thread holds a batch of one
    waiting = [batcher.submit(key, i) for i, key in enumerate("ab", start=1)]
    assert not overlap.two_inside.wait(0.3)  # neither is a full batch: no second call starts
    assert batcher.depth() == 2
    run.release.set()
    assert [f.result(30) for f in (first, *waiting)] == [0, 10, 20]
    assert run.batches == [("a", [0]), ("a", [1]), ("b", [2])]
    assert overlap.most_inside == 1


def test_stop_ends_every_thread_in_flight(make_batcher):
    run = Recorder(hold=True)
    overlap = Overlap(run)
    batcher = make_batcher(overlap, max_batch_size=1, timeout=0.0, in_flight=3)
    running = [batcher.submit("a", i) for i in (0, 1)]
    assert overlap.two_inside.wait(30)
    threads = list(batcher._threads)
    assert len(threads) == 3
    threading.Timer(0.2, run.release.set).start()
    batcher.stop()
    assert [f.result(30) for f in running] == [0, 10]
    assert not any(thread.is_alive() for thread in threads)
    assert not batcher.running


def test_a_thread_that_outlives_stop_ends_when_started_again(make_batcher):
    run = Recorder(hold=True)
    batcher = make_batcher(run, max_batch_size=1, timeout=0.0, in_flight=2)
    stuck_request = batcher.submit("a", 0)
    assert run.entered.wait(30)
    stuck = [thread for thread in batcher._threads if thread.is_alive()]
    batcher.stop(timeout=0.1)  # a batch still running past the timeout: its thread lives on
    assert any(thread.is_alive() for thread in stuck)
    batcher.start()
    run.release.set()
    assert stuck_request.result(30) == 0
    for thread in stuck:
        thread.join(30)
        assert not thread.is_alive()  # it ended instead of serving beside the new threads
    assert batcher.submit("a", 1).result(30) == 10
    assert len([t for t in batcher._threads if t.is_alive()]) == 2


def test_in_flight_must_be_at_least_one():
    with pytest.raises(ValueError, match="in_flight"):
        DynamicBatcher(Recorder(), in_flight=0)


# -- the engine -------------------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path):
    store = ModelStore(tmp_path / "models")
    publish_lively(store)
    metrics = ServiceMetrics(max_batch_size=8)
    engine = Engine(store, precision="float32", batch_timeout=5.0, observer=metrics)
    engine.metrics = metrics
    assert engine.refresh() == 1
    yield engine
    engine.stop()


def _sample(metrics: ServiceMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


def colorize(engine: Engine, model, image: np.ndarray, render_size: int | None = None) -> np.ndarray:
    """One photograph through the pipeline the API uses, on ``engine``'s queue."""
    return Pipeline(engine, 10**8).colorize_array(image, model, render_size)


def test_batches_in_flight_setting_gives_each_photograph_the_colours_it_gets_alone(tmp_path: Path):
    store = ModelStore(tmp_path / "models")
    publish_lively(store)
    settings = Settings(data_dir=tmp_path, batches_in_flight=2, max_batch_size=2, device="cpu")
    engine = engine_from_settings(store, settings, precision="float32", batch_timeout=5.0)
    overlap = Overlap(engine.batcher._run, pair=True)  # the first call waits for a second beside it
    engine.batcher._run = overlap
    try:
        assert engine.batcher.in_flight == 2
        assert engine.refresh() == 1
        model = engine.model()
        prepared = [engine.prepare(model, p) for p in photos(8)]
        futures = [engine.submit(model, inputs, size) for inputs, _, size in prepared]  # four full batches
        together = [f.result(60) for f in futures]
        assert engine.batcher.batches_run == 4
        assert overlap.most_inside == 2  # two model calls ran at once, each giving the right colours
        engine.batcher.timeout = 0.0
        for (inputs, _, size), prediction in zip(prepared, together, strict=True):
            alone = engine.submit(model, inputs, size).result(60)
            np.testing.assert_allclose(prediction, alone, atol=BATCH_TOLERANCE["float32"][0])
    finally:
        engine.stop()


def test_the_engine_batches_concurrent_photographs_into_one_model_call(engine):
    model = engine.model()
    prepared = [engine.prepare(model, p) for p in photos(8)]
    futures = [engine.submit(model, inputs, size) for inputs, _, size in prepared]
    predictions = [f.result(60) for f in futures]
    assert _sample(engine.metrics, "colorizer_inference_batch_size_count") == 1
    assert _sample(engine.metrics, "colorizer_inference_batch_size_sum") == 8
    engine.batcher.timeout = 0.0  # each alone, now: a batch of one, without waiting for company
    alone = [colorize(engine, model, p) for p in photos(8)]
    for (_, lum, _), prediction, single in zip(prepared, predictions, alone, strict=True):
        assert np.abs(engine.finish(model, prediction, lum).astype(int) - single).max() <= 1


def test_no_retracing_across_photographs_of_many_sizes(engine):
    model = engine.model()
    serving = model.serving
    engine.batcher.timeout = 0.0
    sizes = [(i, 20 + 13 * i, 90 - 5 * i) for i in range(12)]
    colour_fns = (_pixels_lightness, _pixels_rgb)

    def traces() -> tuple[int, ...]:
        return (serving.tracing_count(), *(fn.experimental_get_tracing_count() for fn in colour_fns))

    def colorize_all(shapes, shift: int = 0) -> None:
        for i, w, h in shapes:  # every third one gray: the gray path to the same join
            photo = make_photo(w, h, seed=i + shift)
            out = colorize(engine, model, photo if i % 3 else photo[..., 0])
            assert out.shape[:2] == photo.shape[:2]

    assert serving.tracing_count() == 1  # one signature per (model, render size), traced at warm-up
    colorize_all(sizes)
    seen = traces()
    assert seen[0] == 1

    # other photographs, other sizes, the same pixel buckets: nothing is traced or compiled again
    # (wide photographs share chroma across pixel pairs, odd widths in rows one pixel longer: the
    # join's compiled shape is its bucket and its sharing)
    def shapes(w: int, h: int) -> tuple[int, int, int]:
        share = chroma_sharing(w, model.image_size)
        return pixel_bucket(w * h), pixel_bucket(h * (w + w % share)), share

    others = [(i, w + 2, h) for i, w, h in sizes if shapes(w + 2, h) == shapes(w, h)]
    assert len(others) >= 8
    colorize_all(others, shift=100)
    assert traces() == seen
    colorize(engine, model, make_photo(50, 40, seed=1), render_size=64)  # a new size: one more trace
    colorize(engine, model, make_photo(80, 30, seed=2), render_size=64)
    assert serving.tracing_count() == 2


def test_the_engine_answers_busy_when_its_queue_is_full(tmp_path):
    store = ModelStore(tmp_path / "models")
    publish_lively(store)
    engine = Engine(store, precision="float32", max_batch_size=1, batch_timeout=0.0, max_queue=1)
    try:
        engine.refresh()
        model = engine.model()
        gate = threading.Event()
        entered = threading.Event()
        run = engine.batcher._run

        def held(key, payloads):
            entered.set()
            gate.wait(30)
            return run(key, payloads)

        engine.batcher._run = held
        inputs, _, size = engine.prepare(model, make_photo(40, 30, seed=1))
        running = engine.submit(model, inputs, size)
        assert entered.wait(30)
        queued = engine.submit(model, inputs, size)
        with pytest.raises(EngineBusy) as busy:
            engine.submit(model, inputs, size)
        assert busy.value.retry_after >= 1 and "retry in" in str(busy.value)
        with pytest.raises(EngineBusy):
            engine.check_capacity()
        gate.set()
        assert running.result(30).shape == queued.result(30).shape == (32, 32, 2)
    finally:
        engine.stop()


@pytest.mark.parametrize(("in_flight", "seconds"), [(1, 6), (2, 3), (4, 2)])
def test_retry_after_counts_the_batches_that_run_at_once(tmp_path, monkeypatch, in_flight, seconds):
    # 15 queued and the refused one: 4 batches of 4, run in_flight at a time, 1.5 s each
    engine = Engine(ModelStore(tmp_path / "models"), max_batch_size=4, batches_in_flight=in_flight)
    monkeypatch.setattr(engine.batcher, "depth", lambda: 15)
    engine.batcher.last_batch_seconds = 1.5
    assert engine.retry_after() == seconds


def test_the_engine_picks_bfloat16_only_where_the_hardware_has_it(tmp_path, monkeypatch):
    import models.device

    store = ModelStore(tmp_path / "models")
    publish_lively(store)
    monkeypatch.setattr(models.device, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    with_bf16 = Engine(store)
    with_bf16.refresh()
    assert with_bf16.precision == "bfloat16" and with_bf16.model().serving.precision == "bfloat16"
    monkeypatch.setattr(models.device, "cpu_flags", lambda: {"avx2"})
    without = Engine(store)
    without.refresh()
    assert without.precision == "float32" and without.describe()["precision"] == "float32"
