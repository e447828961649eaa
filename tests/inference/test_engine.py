"""The inference engine without HTTP, and the TensorFlow device choice.

Engine tests call ``refresh()`` themselves (no watcher thread) so each step is deterministic; one
test runs the real watcher thread. The GPU branch of ``configure_tensorflow`` uses a mocked
``tf.config``: this machine has no GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from inference.engine import Engine
from inference.errors import NoModelLoaded
from inference.pipeline import Pipeline
from models.device import XLA_WIDE_VECTORS, configure_tensorflow, prefer_wide_vectors
from models.networks import build_generator
from models.serving import InferenceModel
from models.store import GENERATOR_FILE, METADATA_FILE, BrokenVersion, ModelStore, UnknownVersion
from tests.procs import wait_for


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def publish_tiny(store: ModelStore, preset: str = "lab") -> int:
    channels = {"lab": (1, 2), "seed": (3, 3)}[preset]
    return store.publish(build_generator(32, *channels, width=4), {"preset": preset, "image_size": 32})


def write_broken(
    store: ModelStore, version: int, metadata: str = '{"preset": "lab", "image_size": 32}'
) -> Path:
    folder = store.root / str(version)
    folder.mkdir(parents=True)
    (folder / METADATA_FILE).write_text(metadata)
    (folder / GENERATOR_FILE).write_bytes(b"not a keras archive")
    return folder


class CountingStore(ModelStore):
    """A real store that counts load() calls per version."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.loads: dict[int, int] = {}

    def load(self, version: int):
        self.loads[version] = self.loads.get(version, 0) + 1
        return super().load(version)


# -- device --------------------------------------------------------------------------------------


@pytest.mark.skipif(
    bool(tf.config.list_physical_devices("GPU")), reason="this test is for a machine without GPU"
)
@pytest.mark.parametrize("preference", ["auto", "cpu", "gpu"])
def test_configure_tensorflow_falls_back_to_the_cpu_without_a_gpu(preference, caplog):
    assert configure_tensorflow(preference) == "CPU:0"
    if preference == "gpu":
        assert "no GPU" in caplog.text


def test_configure_tensorflow_picks_the_gpu_and_enables_memory_growth_on_each():
    gpus = [SimpleNamespace(name="/physical_device:GPU:0"), SimpleNamespace(name="/physical_device:GPU:1")]
    growth_calls = []

    def set_memory_growth(device, enable):
        growth_calls.append((device.name, enable))
        if device is gpus[1]:
            raise RuntimeError("Physical devices cannot be modified after being initialized")

    with (
        mock.patch.object(tf.config, "list_physical_devices", return_value=gpus),
        mock.patch.object(tf.config.experimental, "set_memory_growth", side_effect=set_memory_growth),
    ):
        assert configure_tensorflow("auto") == "GPU:0"
        assert configure_tensorflow("gpu") == "GPU:0"
    assert growth_calls[:2] == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]


def test_configure_tensorflow_with_cpu_preference_hides_the_gpus():
    gpus = [SimpleNamespace(name="/physical_device:GPU:0")]
    with (
        mock.patch.object(tf.config, "list_physical_devices", return_value=gpus),
        mock.patch.object(tf.config.experimental, "set_memory_growth"),
        mock.patch.object(tf.config, "set_visible_devices") as set_visible,
    ):
        assert configure_tensorflow("cpu") == "CPU:0"
    set_visible.assert_called_once_with([], "GPU")


def test_configure_tensorflow_rejects_an_unknown_preference():
    with pytest.raises(ValueError, match="tpu"):
        configure_tensorflow("tpu")


def test_tensorflows_normal_start_up_lines_are_held_back_and_anything_else_passes(tmp_path):
    # what TensorFlow's C++ side writes straight to file descriptor 2, in a child process
    code = """
import os, sys
from unittest import mock
from models.device import quiet_tensorflow_start
with mock.patch("models.device.no_nvidia_driver", return_value=True):
    with quiet_tensorflow_start():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called "
                    b"are written to STDERR\\n")
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see ...\\n")
        os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\\n")
        os.write(2, b"E0000 something else went wrong\\n")
        print("a Python warning", file=sys.stderr)
os.write(2, b"after\\n")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "E0000 something else went wrong\na Python warning\nafter\n"


def test_xla_gets_wide_vectors_on_amd_avx512_and_intel_amx_cpus_unless_a_width_is_set():
    amd, avx512, checked = "AuthenticAMD", {"avx2", "avx512f"}, (2, 21)
    intel, amx = "GenuineIntel", {"avx2", "avx512f", "avx512_bf16", "amx_tile"}
    environ: dict[str, str] = {}
    assert prefer_wide_vectors(intel, amx, checked, environ)  # Sapphire Rapids and later
    assert environ["XLA_FLAGS"] == XLA_WIDE_VECTORS
    environ = {}
    assert prefer_wide_vectors(amd, avx512, checked, environ)
    assert environ["XLA_FLAGS"] == XLA_WIDE_VECTORS
    assert not prefer_wide_vectors(amd, avx512, checked, environ)  # once is enough
    assert environ["XLA_FLAGS"] == XLA_WIDE_VECTORS
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}  # other flags are kept
    assert prefer_wide_vectors(amd, avx512, (2, 22), environ)
    assert environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {XLA_WIDE_VECTORS}"
    environ = {"XLA_FLAGS": "--xla_cpu_prefer_vector_width=256"}  # the opt-out
    assert not prefer_wide_vectors(amd, avx512, checked, environ)
    assert environ["XLA_FLAGS"] == "--xla_cpu_prefer_vector_width=256"
    for vendor, flags, tensorflow in [
        (amd, {"avx2", "fma"}, checked),  # no AVX-512
        (intel, avx512, checked),  # older Intel parts slow their clock for 512-bit work
        (intel, {"avx2", "amx_tile"}, checked),  # AMX without AVX-512 (no such part known)
        ("", amx, checked),  # a vendor Linux does not name
        (amd, avx512, (2, 18)),  # a TensorFlow not checked to know the flag
        (amd, avx512, (0, 0)),  # TensorFlow's version unknown
    ]:
        environ = {}
        assert not prefer_wide_vectors(vendor, flags, tensorflow, environ) and environ == {}


def test_this_tensorflows_xla_knows_the_wide_vector_flag():
    # XLA aborts the whole process on an unknown flag: a TensorFlow upgrade that dropped this one
    # must fail here, not take the service down on the first photograph.
    import subprocess
    import sys

    code = (
        "import numpy as np, tensorflow as tf\n"
        "f = tf.function(lambda x: tf.sqrt(x) * 2.0, jit_compile=True)\n"
        "print(float(f(np.float32(4.0))))\n"
    )
    env = {**os.environ, "XLA_FLAGS": XLA_WIDE_VECTORS, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "4.0"


# -- engine --------------------------------------------------------------------------------------


def test_engine_with_an_empty_store_serves_nothing(store):
    engine = Engine(store)
    assert engine.refresh() is None
    assert not engine.ready and engine.device == "CPU:0"
    with pytest.raises(NoModelLoaded):
        engine.model()


def test_refresh_swaps_in_a_newer_version_and_requests_in_flight_keep_theirs(store):
    publish_tiny(store)
    engine = Engine(store)
    assert engine.refresh() == 1
    in_flight = engine.model()
    assert publish_tiny(store, preset="seed") == 2
    assert engine.refresh() == 2
    assert engine.refresh() is None  # nothing newer

    assert in_flight.version == 1
    image = np.full((20, 30), 90, np.uint8)
    # the old one still works
    assert Pipeline(engine, 10**8).colorize_array(image, in_flight).shape == (20, 30, 3)
    assert engine.model().version == 2 and engine.model().preset == "seed"
    assert engine.model(1) is in_flight  # the previous version stays cached
    assert engine.cached_versions() == [1]


def test_a_broken_newest_version_is_skipped_for_the_newest_good_one(store):
    publish_tiny(store)
    write_broken(store, 2)
    engine = Engine(store)
    assert engine.refresh() == 1
    assert engine.model().version == 1
    assert "generator.keras" in engine.failed_versions()[2]


def test_a_broken_version_is_not_loaded_again_until_its_files_change(tmp_path):
    store = CountingStore(tmp_path / "models")
    publish_tiny(store)
    folder = write_broken(store, 2)
    engine = Engine(store)
    for _ in range(3):
        engine.refresh()
    assert store.loads == {1: 1, 2: 1}
    with pytest.raises(BrokenVersion):
        engine.model(2)  # on demand: the remembered reason, no new load
    assert store.loads[2] == 1

    # the operator repairs version 2 in place: its files change, so it is tried again
    build_generator(32, 1, 2, width=4).save(folder / "repaired.keras")
    (folder / "repaired.keras").replace(folder / GENERATOR_FILE)
    assert engine.refresh() == 2
    assert 2 not in engine.failed_versions()


def test_a_version_whose_metadata_cannot_be_served_is_remembered_as_broken(store):
    publish_tiny(store)
    folder = store.root / "2"
    folder.mkdir()
    build_generator(32, 1, 2, width=4).save(folder / GENERATOR_FILE)
    (folder / METADATA_FILE).write_text('{"preset": "lab", "image_size": 48}')  # not a power of two
    engine = Engine(store)
    assert engine.refresh() == 1
    reason = engine.failed_versions()[2]
    assert "power of two" in reason and "\n" not in reason


def test_on_demand_versions_are_cached_least_recently_used_first(store):
    for _ in range(4):
        publish_tiny(store)
    engine = Engine(store, cache_size=2)
    assert engine.refresh() == 4
    for version in (1, 2, 1, 3):
        assert engine.model(version).version == version
    assert engine.cached_versions() == [1, 3]  # 2 was the least recently used


def test_an_unknown_version_raises_unknown_version(store):
    publish_tiny(store)
    engine = Engine(store)
    engine.refresh()
    with pytest.raises(UnknownVersion):
        engine.model(99)


@pytest.mark.parametrize("render_size", [48, 1024 + 32])
def test_check_render_size_rejects_sizes_the_model_cannot_use(store, render_size):
    publish_tiny(store)
    engine = Engine(store, max_render_size=1024)
    engine.refresh()
    with pytest.raises(ValueError, match="render_size"):
        engine.check_render_size(engine.model(), render_size)
    assert engine.check_render_size(engine.model(), 64) == 64


def test_stopping_gives_up_a_load_in_progress_at_its_next_step(store, monkeypatch, caplog):
    """A SIGTERM during start-up (``docker stop``) must not wait for the whole warm-up: the load
    stops at its next step, nothing of it is served, and it is not remembered as broken."""
    publish_tiny(store)
    engine = Engine(store, reload_interval=0.1)
    calls = []
    real_call = InferenceModel._tensorflow

    def call_until_stopped(self, inputs):  # a long first warm-up call, still running when stop comes
        calls.append(len(inputs))
        deadline = time.monotonic() + 60
        while not self.cancelled() and time.monotonic() < deadline:
            time.sleep(0.01)
        return real_call(self, inputs)

    monkeypatch.setattr(InferenceModel, "_tensorflow", call_until_stopped)
    engine.start()
    wait_for(lambda: calls, 60, "the first warm-up call")
    with caplog.at_level("INFO", logger="inference.engine"):
        engine.stop()
    assert calls == [1]  # buckets 2, 4 and 8 were not warmed up
    assert not engine.ready and engine.failed_versions() == {}
    assert "the load of model version 1 was given up: the engine is stopping" in caplog.text
    assert not any(t.name == "model-watcher" and t.is_alive() for t in threading.enumerate())

    monkeypatch.undo()  # started again, it loads and serves the same version
    engine.start()
    try:
        wait_for(lambda: engine.ready, 60, "the engine serving again")
        assert engine.ready and engine.model().version == 1
    finally:
        engine.stop()


def test_a_watcher_that_outlives_stop_ends_when_started_again(store, monkeypatch, caplog):
    """``stop`` gives up waiting for a watcher stuck in a look at the store; started again, the
    engine runs one new watcher, and the stuck one ends as soon as its look returns instead of
    running beside it (and leaves the replica's report to the new one)."""
    publish_tiny(store)
    engine = Engine(store, reload_interval=0.05)
    release, entered = threading.Event(), threading.Event()
    real_refresh = Engine.refresh
    stuck_threads = []

    def stuck_once(self):  # the first look hangs (a store that stopped answering), later ones do not
        if not entered.is_set():
            stuck_threads.append(threading.current_thread())
            entered.set()
            release.wait(60)
        return real_refresh(self)

    monkeypatch.setattr(Engine, "refresh", stuck_once)
    withdrawn = []
    monkeypatch.setattr(engine.reporter, "withdraw", lambda: withdrawn.append(threading.current_thread()))
    engine.start()
    assert entered.wait(60)
    (stuck,) = stuck_threads
    with caplog.at_level("WARNING", logger="inference.engine"):
        engine.stop(timeout=0.1)
    assert "the model watcher did not stop within" in caplog.text and stuck.is_alive()

    engine.start()
    try:
        wait_for(lambda: engine.ready, 60, "the new watcher serving version 1")
        release.set()
        stuck.join(30)
        assert not stuck.is_alive()
        watchers = [t for t in threading.enumerate() if t.name == "model-watcher" and t.is_alive()]
        assert len(watchers) == 1 and watchers[0] is not stuck
        assert withdrawn == []  # the stuck watcher left the report alone
    finally:
        release.set()
        engine.stop()
    assert [t.name for t in withdrawn] == ["model-watcher"]  # the new one withdrew it on stop


def test_the_watcher_thread_picks_up_a_new_version_and_stops(store):
    engine = Engine(store, reload_interval=0.1)
    engine.start()
    try:
        publish_tiny(store)
        wait_for(lambda: engine.ready, 30, "the engine serving version 1")
        assert engine.ready and engine.model().version == 1
    finally:
        engine.stop()
    assert not any(t.name == "model-watcher" and t.is_alive() for t in threading.enumerate())
