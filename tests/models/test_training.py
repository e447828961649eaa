"""Model store, colorize, data pipeline and training runs on tiny data."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from common.datasets import DatasetError, resolve_dataset
from models import color
from models.callbacks import promotion
from models.colorize import colorize_array
from models.config import TrainConfig
from models.data import scan_images
from models.networks import build_generator
from models.store import GENERATOR_FILE, METADATA_FILE, BrokenVersion, ModelStore, UnknownVersion
from models.training import run_training
from tests.photos import make_photo, write_dataset


def tiny_config(**overrides) -> TrainConfig:
    values = dict(
        dataset="tiny",
        image_size=32,
        steps=6,
        batch_size=2,
        width=4,
        sample_every=3,
        publish_every=3,
        checkpoint_every=2,
        seed=1,
    )
    return TrainConfig(**{**values, **overrides})


def publish_tiny(store: ModelStore, preset: str = "lab") -> int:
    channels = (1, 2) if preset == "lab" else (3, 3)
    return store.publish(build_generator(32, *channels, width=4), {"preset": preset, "image_size": 32})


def test_publish_is_atomic_for_a_concurrent_reader(tmp_path):
    store = ModelStore(tmp_path / "models")
    generator = build_generator(32, 1, 2, width=4)
    seen_partial, seen_versions, stop = [], set(), threading.Event()

    def reader():
        while not stop.is_set():
            for version in store.versions():
                folder = store.root / str(version)
                files = {p.name for p in folder.iterdir()} if folder.exists() else set()
                if {GENERATOR_FILE, METADATA_FILE} - files:
                    seen_partial.append((version, files))
                seen_versions.add(version)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        published = [store.publish(generator, {"preset": "lab", "image_size": 32}) for _ in range(4)]
    finally:
        stop.set()
        thread.join()
    assert published == [1, 2, 3, 4]
    assert seen_partial == []
    assert seen_versions <= {1, 2, 3, 4} and seen_versions
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []
    assert store.latest().version == 4 and store.latest().metadata["version"] == 4


def test_store_reports_unknown_and_broken_versions(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(UnknownVersion):
        store.load(7)
    broken = tmp_path / "3"
    broken.mkdir()
    (broken / METADATA_FILE).write_text(json.dumps({"preset": "lab", "image_size": 32}))
    (broken / GENERATOR_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(BrokenVersion, match="cannot load"):
        store.load(3)
    (broken / METADATA_FILE).write_text("{not json")
    with pytest.raises(BrokenVersion, match="metadata"):
        store.load(3)


def test_store_refuses_a_generator_of_the_wrong_shape(tmp_path):
    store = ModelStore(tmp_path)
    version = store.publish(build_generator(32, 3, 3, width=4), {"preset": "lab", "image_size": 32})
    with pytest.raises(BrokenVersion, match="channels"):
        store.load(version)


@pytest.mark.parametrize("preset", ["lab", "seed"])
def test_colorize_keeps_size_and_luminance_of_any_photo(tmp_path, preset):
    store = ModelStore(tmp_path)
    model = store.load(publish_tiny(store, preset))
    photo = make_photo(83, 47, seed=5)
    out = colorize_array(model, photo)
    assert out.shape == photo.shape and out.dtype == np.uint8
    lum_in = color.rgb_to_lab(photo / 255.0)[..., 0].numpy()
    lum_out = color.rgb_to_lab(out / 255.0)[..., 0].numpy()
    assert np.abs(lum_in - lum_out).mean() < 0.5  # quantisation and gamut clipping only
    assert colorize_array(model, photo[..., 0]).shape == photo.shape  # a gray (H, W) array
    assert colorize_array(model, photo, render_size=64).shape == photo.shape
    with pytest.raises(ValueError, match="multiple of 32"):
        colorize_array(model, photo, render_size=40)


def test_dataset_scan_skips_and_counts_bad_files(tmp_path):
    folder = write_dataset(tmp_path / "ds", count=3)
    (folder / "sub").mkdir()
    Image.fromarray(make_photo(64, 64, 9)).save(folder / "sub" / "nested.webp")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    Image.fromarray(make_photo(64, 64, 9)).save(folder / "truncated.png")
    data = (folder / "truncated.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(make_photo(20, 20, 1)).save(folder / "small.png")
    (folder / "readme.txt").write_text("not an image")
    scan = scan_images(folder, min_side=32)
    assert len(scan.files) == 4  # three photos and the nested webp
    assert scan.skipped == {"unreadable": 2, "smaller than 32 px": 1, "not an image file type": 1}


def test_dataset_errors_say_what_is_wrong(tmp_path):
    datasets = tmp_path / "datasets"
    (datasets / "empty").mkdir(parents=True)
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_dataset(datasets, "missing")
    with pytest.raises(DatasetError, match="not a plain folder name"):
        resolve_dataset(datasets, "../etc")
    (datasets / "escape").symlink_to(tmp_path)
    with pytest.raises(DatasetError, match="outside"):
        resolve_dataset(datasets, "escape")
    with pytest.raises(DatasetError, match="no usable image"):
        scan_images(resolve_dataset(datasets, "empty"), 32)
    small = datasets / "small"
    small.mkdir()
    Image.fromarray(make_photo(16, 16, 0)).save(small / "a.png")
    with pytest.raises(DatasetError, match="1 smaller than 32 px"):
        scan_images(small, 32)


def test_a_dataset_deleted_while_the_job_starts_fails_with_the_dataset_error(
    dataset_dir, tmp_path, monkeypatch
):
    import models.data

    def scan_then_delete(folder, min_side):
        scan = scan_images(folder, min_side)
        shutil.rmtree(folder)  # someone deletes the dataset right after the scan
        return scan

    monkeypatch.setattr(models.data, "scan_images", scan_then_delete)
    with pytest.raises(DatasetError, match="can be read any more.*deleted or changed"):
        run_training(
            tiny_config(), data_dir=dataset_dir, job_dir=tmp_path / "job", store=ModelStore(tmp_path / "m")
        )


def test_training_run_reports_progress_plots_and_publishes(dataset_dir, tmp_path):
    store = ModelStore(dataset_dir / "models")
    progress = []
    result = run_training(
        tiny_config(),
        data_dir=dataset_dir,
        job_dir=tmp_path / "job",
        store=store,
        job_id="j1",
        on_progress=progress.append,
    )
    assert result.state == "succeeded" and result.steps == 6
    assert result.published_versions == [1, 2] == store.versions()
    assert [p["step"] for p in progress[:-1]] == [1, 2, 3, 4, 5, 6]
    assert progress[-1]["published_versions"] == [1, 2]
    assert all(np.isfinite(progress[-1]["losses"][k]) for k in ("g", "d", "l1"))
    assert progress[3]["eta_seconds"] is not None
    plots = sorted(p.name for p in (tmp_path / "job" / "samples").iterdir())
    assert plots == ["plot_000003.png", "plot_000006.png"]
    meta = store.get(2).metadata
    assert meta["job_id"] == "j1" and meta["step"] == 6 and meta["preset"] == "lab"
    assert json.loads((tmp_path / "job" / "config.json").read_text())["total_steps"] == 6
    model = store.load(2)
    assert colorize_array(model, make_photo(40, 30, 1)).shape == (30, 40, 3)


def test_training_stops_at_next_step_when_cancelled(dataset_dir, tmp_path):
    store = ModelStore(dataset_dir / "models")
    progress = []
    result = run_training(
        tiny_config(steps=50),
        data_dir=dataset_dir,
        job_dir=tmp_path / "job",
        store=store,
        on_progress=progress.append,
        should_cancel=lambda: len(progress) >= 4,
    )
    assert result.state == "cancelled"
    assert result.steps == 5  # asked after step 4 was reported; step 5 was the next one
    assert result.published_versions == [1]  # step 3 only; a cancelled run publishes no final version


def test_interrupted_training_resumes_from_checkpoint_without_duplicate_versions(dataset_dir, tmp_path):
    store = ModelStore(dataset_dir / "models")
    job_dir = tmp_path / "job"

    class Crash(RuntimeError):
        pass

    def crash_at_5(progress):
        if progress["step"] == 5:
            raise Crash("worker died")

    with pytest.raises(Crash):
        run_training(
            tiny_config(steps=8), data_dir=dataset_dir, job_dir=job_dir, store=store, on_progress=crash_at_5
        )
    assert store.versions() == [1]  # published at step 3
    assert (job_dir / "backup").is_dir()
    steps = []
    result = run_training(
        tiny_config(steps=8),
        data_dir=dataset_dir,
        job_dir=job_dir,
        store=store,
        on_progress=lambda p: steps.append(p["step"]),
    )
    assert steps[0] == 5  # resumed after the step-4 checkpoint, not from step 1
    assert result.state == "succeeded" and result.steps == 8
    assert store.versions() == [1, 2, 3] and result.published_versions == [1, 2, 3]
    assert [store.get(v).metadata["step"] for v in (1, 2, 3)] == [3, 6, 8]


def test_training_can_start_from_a_published_version(dataset_dir, tmp_path):
    store = ModelStore(dataset_dir / "models")
    base = publish_tiny(store)
    result = run_training(
        tiny_config(steps=2, init_from=base), data_dir=dataset_dir, job_dir=tmp_path / "job", store=store
    )
    assert result.state == "succeeded"
    with pytest.raises(UnknownVersion):
        run_training(
            tiny_config(steps=2, init_from=99), data_dir=dataset_dir, job_dir=tmp_path / "job2", store=store
        )
    with pytest.raises(BrokenVersion, match="does not fit"):
        run_training(
            tiny_config(steps=2, init_from=base, width=8),
            data_dir=dataset_dir,
            job_dir=tmp_path / "job3",
            store=store,
        )


def test_train_config_names_the_bad_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        TrainConfig(dataset="tiny", steps=0)
    assert err.value.errors()[0]["loc"] == ("steps",)
    with pytest.raises(ValidationError, match="power of two"):
        TrainConfig(dataset="tiny", steps=1, image_size=100)
    with pytest.raises(ValidationError, match="steps or epochs"):
        TrainConfig(dataset="tiny")
    with pytest.raises(ValidationError, match="dataset"):
        TrainConfig(dataset="../secrets", steps=1)
    with pytest.raises(ValidationError, match="unknown preset"):
        TrainConfig(dataset="tiny", steps=1, preset="sepia")


def test_epochs_mean_passes_over_the_dataset(dataset_dir, tmp_path):
    result = run_training(
        tiny_config(steps=None, epochs=2),
        data_dir=dataset_dir,
        job_dir=tmp_path / "job",
        store=ModelStore(tmp_path / "m"),
    )
    assert result.steps == 6  # 6 photos / batch 2 = 3 steps a pass


def test_dataset_path_outside_is_never_used(dataset_dir):
    assert not (Path(dataset_dir) / "datasets" / "..").resolve().samefile(dataset_dir / "datasets")


# -- the quality gate: promote_to --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "gray", "theirs", "promoted", "words"),
    [
        (9.0, 10.0, None, True, "beats the gray input's 10.00"),
        (9.0, 10.0, 9.5, True, "and version 3's 9.50"),
        (9.0, 10.0, 9.0, False, "does not beat version 3's 9.00"),
        (9.0, 10.0, 8.0, False, "does not beat version 3's 8.00"),
        (10.0, 10.0, None, False, "does not beat the gray input's 10.00"),
        (11.0, 10.0, 12.0, False, "does not beat the gray input's"),
    ],
)
def test_a_version_is_promoted_only_when_it_beats_gray_and_the_labelled_one(
    ours, gray, theirs, promoted, words
):
    decision = promotion({"ciede2000": ours, "grayscale_ciede2000": gray}, 3 if theirs else None, theirs)
    assert decision["promoted"] is promoted and words in decision["reason"]


def test_promote_to_must_be_a_label_and_needs_validation_photographs():
    assert tiny_config(promote_to="stable").promote_to == "stable"
    for bad in ("7", "Stable", "../x", "latest"):
        with pytest.raises(ValidationError, match="cannot name a label"):
            tiny_config(promote_to=bad)
    with pytest.raises(ValidationError, match="validation_split"):
        tiny_config(promote_to="stable", validation_split=0)


def test_a_run_moves_the_label_only_to_versions_that_beat_gray_and_the_labelled_one(dataset_dir, tmp_path):
    from common.labels import Labels
    from tests.apptest import tiny_model

    store = ModelStore(dataset_dir / "models")
    loud = tiny_model({})
    last = [layer for layer in loud.generator.layers if layer.weights][-1]
    kernel, _ = last.get_weights()
    last.set_weights([kernel, np.asarray([2.0, -2.0], np.float32)])  # a saturated green-blue cast
    first = store.publish(loud.generator, loud.metadata)
    Labels(store.root).set("stable", first)

    result = run_training(
        tiny_config(steps=6, promote_to="stable", validation_split=0.34),
        data_dir=dataset_dir,
        job_dir=tmp_path / "job",
        store=store,
    )
    expected = first
    for version in result.published_versions:
        decision = store.get(version).metadata["promotion"]
        beats_gray = decision["ciede2000"] < decision["grayscale_ciede2000"]
        incumbent = decision["incumbent_ciede2000"]
        assert decision["incumbent"] == expected and incumbent is not None  # scored on the same photos
        assert decision["promoted"] is (beats_gray and decision["ciede2000"] < incumbent), decision
        if decision["promoted"]:
            expected = version
    assert Labels(store.root).get("stable") == expected
    assert (
        store.get(result.published_versions[0]).metadata["promotion"]["incumbent_ciede2000"] > 20
    )  # the cast
