"""The CPU runtimes (models.runtimes, models.serving): OpenVINO checked against TensorFlow, its
conversion cached, a corrupt cache rebuilt and never served, a failed conversion served by
TensorFlow with a reason, auto's choice by measurement, and agreement on real photographs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from models import runtimes
from models.runtimes import ConversionCache, Runner
from models.serving import InferenceModel, check_photographs
from tests.apptest import HINT_MODEL_METADATA, tiny_hint_generator, tiny_model

BUCKETS = (1, 2, 4)


def lively_model(**metadata):
    """The tiny 32 px generator with flip averaging (the default model's serving options)."""
    return tiny_model({"flip_average": True, **metadata})


def scale_last_layer(model, factor: float):
    """``model`` with its last weighted layer's weights times ``factor``: other weights, same shapes."""
    last = [layer for layer in model.generator.layers if layer.weights][-1]
    last.set_weights([w * factor for w in last.get_weights()])
    return model


def serving(model, cache=None, runtime="openvino", precision="float32", device="CPU:0") -> InferenceModel:
    inference = InferenceModel(model, precision, device, runtime, cache)
    inference.warm_up(model.render_size, BUCKETS)
    return inference


def reference(model, inputs) -> np.ndarray:
    return InferenceModel(model, "float32", "CPU:0", "tensorflow").predict(inputs)


def photo_inputs(model, count=3) -> np.ndarray:
    from models.colorize import prepare
    from tests.photos import make_photo

    return np.stack([prepare(model, make_photo(40 + 8 * i, 36, seed=i))[0] for i in range(count)])


@pytest.fixture
def conversions(monkeypatch) -> list:
    """Counts OpenVINO conversions (the real ones run)."""
    calls = []
    real = runtimes.convert

    def counting(*args):
        calls.append(args[1:])
        return real(*args)

    monkeypatch.setattr(runtimes, "convert", counting)
    return calls


def test_openvino_serves_what_tensorflow_computes_and_is_converted_once(tmp_path, conversions):
    model = lively_model()
    cache = ConversionCache(tmp_path)
    first = serving(model, cache)
    assert (first.runtime, first.runtime_precision, first.fallback) == ("openvino", "float32", None)
    inputs = photo_inputs(model)
    out = first.predict(inputs, pad_to=4)
    assert out.shape == (3, 32, 32, 2)
    assert np.abs(out - reference(model, inputs)).max() < 1e-4
    # each photograph comes out the same alone as in a batch
    assert np.array_equal(first.predict(inputs[1:2]), out[1:2])
    [folder] = (tmp_path / "openvino").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["model.bin", "model.xml", "sums.json"]
    assert len(conversions) == 1

    # a restart (a new InferenceModel of the same weights) reads the cache instead of converting
    again = serving(lively_model(), cache)
    assert again.runtime == "openvino" and len(conversions) == 1
    assert np.array_equal(again.predict(inputs), first.predict(inputs))
    # other weights, another key: converted
    serving(scale_last_layer(lively_model(), 1.5), cache)
    assert len(conversions) == 2 and len(list((tmp_path / "openvino").iterdir())) == 2


def test_the_cache_keeps_the_most_recently_used_conversions(tmp_path, conversions):
    cache = ConversionCache(tmp_path, keep=2)
    models = [scale_last_layer(lively_model(), factor) for factor in (1.0, 2.0, 3.0)]
    serving(models[0], cache)
    serving(models[1], cache)
    serving(models[0], cache)  # read back: used again, newer than the second
    assert len(conversions) == 2
    serving(models[2], cache)  # a third conversion: the least recently used one goes
    assert len(list((tmp_path / "openvino").iterdir())) == 2
    serving(models[0], cache)
    assert len(conversions) == 3  # still cached
    serving(models[1], cache)
    assert len(conversions) == 4  # dropped, converted again


@pytest.mark.parametrize("damage", ["truncated weights", "checksums of another model", "no checksums"])
def test_a_corrupt_cached_conversion_is_rebuilt_never_served(tmp_path, conversions, damage, caplog):
    model = lively_model()
    cache = ConversionCache(tmp_path)
    serving(model, cache)
    [folder] = (tmp_path / "openvino").iterdir()
    inputs = photo_inputs(model)
    if damage == "truncated weights":
        data = (folder / "model.bin").read_bytes()
        (folder / "model.bin").write_bytes(data[: len(data) // 2])
    elif damage == "checksums of another model":
        # files that match their checksums but hold other weights: only the check against
        # TensorFlow can tell
        spare = ConversionCache(tmp_path / "spare")
        serving(scale_last_layer(lively_model(), -3.0), spare)
        [made] = (tmp_path / "spare" / "openvino").iterdir()
        for name in ("model.xml", "model.bin", "sums.json"):
            (folder / name).write_bytes((made / name).read_bytes())
    else:
        (folder / "sums.json").unlink()
    before = len(conversions)
    with caplog.at_level(logging.WARNING, logger="models.runtimes"):
        rebuilt = serving(lively_model(), cache)
    assert "is unusable" in caplog.text
    assert rebuilt.runtime == "openvino" and len(conversions) == before + 1
    assert np.abs(rebuilt.predict(inputs) - reference(model, inputs)).max() < 1e-4
    assert json.loads((folder / "sums.json").read_text()) == runtimes._file_sums(folder)


def test_a_model_openvino_cannot_convert_is_served_by_tensorflow(tmp_path, monkeypatch, caplog):
    def fails(*args):
        raise RuntimeError("Cannot create Foo layer from unsupported opset")

    monkeypatch.setattr(runtimes, "convert", fails)
    model = lively_model()
    with caplog.at_level(logging.WARNING, logger="models.serving"):
        inference = serving(model, ConversionCache(tmp_path))
    assert inference.runtime == "tensorflow"
    assert "OpenVINO cannot convert the model: RuntimeError: Cannot create Foo" in inference.fallback
    assert "runs on TensorFlow" in caplog.text and "unsupported opset" in caplog.text
    inputs = photo_inputs(model)
    assert np.array_equal(inference.predict(inputs), reference(model, inputs))
    assert not (tmp_path / "openvino").exists()


def test_a_runtime_that_does_not_reproduce_tensorflow_is_refused(tmp_path, monkeypatch):
    real = runtimes.compile_openvino

    def off_by_a_little(model, precision):
        runner = real(model, precision)
        return Runner(runner.runtime, precision, lambda x: runner(x) + 0.02)

    monkeypatch.setattr(runtimes, "compile_openvino", off_by_a_little)
    inference = serving(lively_model(), ConversionCache(tmp_path))
    assert inference.runtime == "tensorflow"
    assert "does not reproduce TensorFlow's output" in inference.fallback
    assert "differs from TensorFlow's float32 by up to 0.02" in inference.fallback
    assert not (tmp_path / "openvino").exists()  # what failed the check is not cached


def test_disagreement_tolerances():
    reference_out = np.zeros((2, 8, 8, 2), np.float32)

    def runner(offset):
        return Runner("openvino", "float32", lambda x: reference_out + offset)

    assert runtimes.disagreement(runner(5e-5), reference_out, reference_out) is None
    assert "up to 0.002" in runtimes.disagreement(runner(2e-3), reference_out, reference_out)
    one_pixel = np.zeros_like(reference_out)
    one_pixel[0, 0, 0, 0] = 5e-4  # within the max, and the mean stays tiny
    assert runtimes.disagreement(runner(one_pixel), reference_out, reference_out) is None
    assert "mean 0.0005" in runtimes.disagreement(runner(5e-4), reference_out, reference_out)
    nan = runtimes.disagreement(runner(np.nan), reference_out, reference_out)
    assert nan is not None and "inf" in nan
    shape = Runner("openvino", "float32", lambda x: reference_out[:1])
    assert "shape" in runtimes.disagreement(shape, reference_out, reference_out)


def test_choose_takes_the_higher_rate_by_median_and_reports_each(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(runtimes.time, "perf_counter", lambda: clock[0])

    def runner(name, seconds):
        def call(x):
            clock[0] += seconds.pop(0) if isinstance(seconds, list) else seconds
            return x

        return Runner(name, "float32", call)

    batch = np.zeros((4, 2, 2, 1), np.float32)
    # one slow outlier (the machine was busy) does not decide: medians of 3 after a warm-up call
    steady = runner("tensorflow", 0.4)
    jumpy = runner("openvino", [9.0, 0.2, 5.0, 0.2, 0.2])
    best, seconds = runtimes.choose([steady, jumpy], batch)
    assert best is jumpy
    assert seconds == {"tensorflow float32": pytest.approx(0.1), "openvino float32": pytest.approx(0.05)}


def test_choose_gives_up_before_its_next_call_once_cancelled():
    calls = []
    runner = Runner("tensorflow", "float32", lambda x: calls.append(len(x)) or x)
    batch = np.zeros((2, 2, 2, 1), np.float32)
    # the engine stops during the third call: no fourth call, no choice
    with pytest.raises(runtimes.LoadCancelled):
        runtimes.choose([runner, runner], batch, cancelled=lambda: len(calls) >= 3)
    assert calls == [2, 2, 2]
    assert runtimes.choose([runner], batch, rounds=1, cancelled=lambda: False)[0] is runner


def test_auto_measures_both_and_serves_the_faster(tmp_path, monkeypatch):
    monkeypatch.setattr(runtimes, "TRIVIAL_SECONDS", 0.0)
    inference = serving(lively_model(), ConversionCache(tmp_path), runtime="auto")
    assert set(inference.runtime_seconds) == {"tensorflow float32", "openvino float32"}
    fastest = min(inference.runtime_seconds, key=inference.runtime_seconds.get)
    assert f"{inference.runtime} {inference.runtime_precision}" == fastest
    assert "the fastest here per image in batches of 4" in inference.runtime_reason


def test_auto_remembers_its_choice_for_this_model_on_this_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(runtimes, "TRIVIAL_SECONDS", 0.0)
    model, cache = lively_model(), ConversionCache(tmp_path)
    measured = runtimes.choose
    # the first server measures; OpenVINO is made the faster so the choice is not TensorFlow's default
    monkeypatch.setattr(
        runtimes,
        "choose",
        lambda runners, *args, **kwargs: (runners[-1], measured(runners, *args, **kwargs)[1]),
    )
    first = serving(model, cache, runtime="auto")
    assert first.runtime == "openvino" and len(list((tmp_path / "runtime-choices").glob("*.json"))) == 1

    def no_measuring(*args, **kwargs):
        raise AssertionError("a remembered choice is not measured again")

    monkeypatch.setattr(runtimes, "choose", no_measuring)
    monkeypatch.setattr(runtimes, "per_image_seconds", no_measuring)
    again = serving(model, cache, runtime="auto")  # a restart, or a second server on the machine
    assert again.runtime == "openvino" and again.runtime_seconds == first.runtime_seconds
    assert "measured when it first loaded on this machine" in again.runtime_reason
    inputs = np.random.default_rng(4).uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
    np.testing.assert_array_equal(again.predict(inputs), first.predict(inputs))

    # another machine (or another kernel setting) measures for itself
    elsewhere = {**runtimes.machine(), "settings": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}
    monkeypatch.setattr(runtimes, "machine", lambda: elsewhere)
    with pytest.raises(AssertionError, match="not measured again"):
        serving(model, cache, runtime="auto")


def test_the_first_choice_kept_holds_and_an_unreadable_one_is_measured_again(tmp_path):
    cache = ConversionCache(tmp_path)
    first = {"runtime": "openvino", "why": "faster", "seconds": {"openvino float32": 0.01}}
    assert cache.remember("k", first) == first
    later = {"runtime": "tensorflow", "why": "faster", "seconds": {"tensorflow float32": 0.01}}
    assert cache.remember("k", later) == first, "two servers choosing at once serve alike"
    assert cache.recall("k") == first and cache.recall("other") is None
    (tmp_path / "runtime-choices" / "k.json").write_text('{"runtime": "onnx"')
    assert cache.recall("k") is None
    assert not [p for p in (tmp_path / "runtime-choices").iterdir() if p.name.startswith(".")]


def test_auto_keeps_a_trivial_model_on_tensorflow_without_converting(tmp_path, monkeypatch):
    monkeypatch.setattr(runtimes, "TRIVIAL_SECONDS", 60.0)
    inference = serving(lively_model(), ConversionCache(tmp_path), runtime="auto")
    assert inference.runtime == "tensorflow" and "too little to gain" in inference.runtime_reason
    assert not (tmp_path / "openvino").exists()


def test_gpus_and_other_render_sizes_run_on_tensorflow(tmp_path):
    model = lively_model()
    on_gpu = InferenceModel(model, "float32", "GPU:0", "openvino", ConversionCache(tmp_path))
    on_gpu.choose_runtime(32, BUCKETS)
    assert on_gpu.runtime == "tensorflow" and "CPUs only" in on_gpu.runtime_reason
    inference = serving(model, ConversionCache(tmp_path))
    inputs = photo_inputs(model)
    from models.colorize import prepare
    from tests.photos import make_photo

    at_64 = np.stack([prepare(model, make_photo(40, 36, seed=1), 64)[0]])
    assert inference.runtime == "openvino"
    assert np.array_equal(inference.predict(at_64), reference(model, at_64))  # TensorFlow's own
    assert np.abs(inference.predict(inputs) - reference(model, inputs)).max() < 1e-4


def test_a_model_taking_hints_converts_with_its_hint_channels(tmp_path):
    from models.store import LoadedModel

    model = LoadedModel(1, tiny_hint_generator(), "lab", 32, dict(HINT_MODEL_METADATA))
    inference = serving(model, ConversionCache(tmp_path))
    assert inference.runtime == "openvino" and inference.in_channels > 1
    inputs = photo_inputs(model)
    inputs[..., 1:] = np.random.default_rng(0).uniform(-1, 1, inputs[..., 1:].shape)
    assert np.abs(inference.predict(inputs) - reference(model, inputs)).max() < 1e-4


def test_converting_sends_no_usage_data(tmp_path, monkeypatch):
    """OpenVINO's converter reports usage to Google Analytics from a forked copy of the process per
    event unless consent was declined (30 forks for one conversion of the tiny model, measured
    with the decline removed): the service declines it, so converting starts no process."""
    import multiprocessing

    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

    monkeypatch.delenv("CI", raising=False)  # the telemetry's own opt-out for CI jobs must not hide it
    started = []
    monkeypatch.setattr(multiprocessing.Process, "start", lambda process: started.append(process))
    serving(lively_model(), ConversionCache(tmp_path))
    assert started == []
    assert OptInChecker().check(enable_opt_in_dialog=False) == ConsentCheckResult.DECLINED


def test_check_photographs_are_fixed():
    first, second = check_photographs(), check_photographs()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert [p.shape for p in first] == [(240, 320, 3), (200, 120, 3)]
    assert all(p.std() > 20 for p in first)  # not flat: every kernel sees varied values


def test_the_default_model_colorizes_photographs_alike_on_every_runtime(tmp_path):
    """The shipped default through TensorFlow float32 and through OpenVINO: the mean CIEDE2000
    between the two colorizations of each photograph far below 0.5 (scikit-image's photographs:
    never trained on, only looked at; the validation photographs: bench/agreement.py)."""
    from skimage import data
    from skimage.color import deltaE_ciede2000, rgb2lab

    from models.colorize import finish, prepare
    from models.store import load_generator_dir, packaged_default

    model = load_generator_dir(packaged_default(), "default")
    size = model.render_size
    tensorflow = InferenceModel(model, "float32", "CPU:0", "tensorflow")
    openvino = InferenceModel(model, "float32", "CPU:0", "openvino", ConversionCache(tmp_path))
    openvino.warm_up(size, (1,))
    assert (openvino.runtime, openvino.runtime_precision) == ("openvino", "float32")
    deltas = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera"):
        photo = getattr(data, name)()
        inputs, light, _ = prepare(model, photo)
        ours = finish(model, openvino.predict(inputs[None])[0], light)
        theirs = finish(model, tensorflow.predict(inputs[None])[0], light)
        deltas.append(float(deltaE_ciede2000(rgb2lab(theirs), rgb2lab(ours)).mean()))
    assert max(deltas) < 0.05, deltas  # measured: below 0.001


def test_loading_version_after_version_raises_no_retracing_warning(tmp_path, caplog):
    """Each load converts from a function of its own, traced once: keyed by one shared lambda, TF
    took the fifth load as a function retraced in a loop and logged a warning about it."""
    from models.colorize import colorize_array
    from tests.photos import make_photo

    caplog.set_level(logging.WARNING)
    for version in range(6):
        model = tiny_model({"flip_average": True})
        serving(model, ConversionCache(tmp_path / str(version)))
        # and the CLI's way (colorizer evaluate runs every version)
        colorize_array(model, make_photo(40, 36, seed=version))
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
