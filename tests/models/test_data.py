"""The training data loader: which photographs it skips (gray or toned, too small, duplicates)
and the old-photograph degradations of the model input (the target colours untouched)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from models.config import TrainConfig
from models.data import (
    SKIP_NEAR_GRAY,
    DatasetError,
    colour_spread,
    degrade_lightness,
    is_near_gray,
    make_dataset,
    scan_images,
)
from tests.photos import make_photo


def toned(rgb: np.ndarray, tint: tuple[float, float, float]) -> np.ndarray:
    """A black-and-white print of ``rgb`` in one hue (sepia, cyanotype): colour, but no colours."""
    gray = rgb.astype(np.float32).mean(axis=-1, keepdims=True) / 255.0
    return np.clip(gray * np.asarray(tint) * 255.0, 0, 255).astype(np.uint8)


def test_gray_and_toned_photographs_have_no_colour_spread():
    photo = make_photo(120, 90, 1)
    gray = np.repeat(photo.mean(axis=-1, keepdims=True), 3, axis=-1).astype(np.uint8)
    assert colour_spread(photo) > 10 and not is_near_gray(photo)
    assert colour_spread(gray) < 0.5 and is_near_gray(gray)
    assert is_near_gray(toned(photo, (1.0, 0.85, 0.62)))  # sepia
    assert is_near_gray(toned(photo, (0.55, 0.75, 1.0)))  # cyanotype


def write(path: Path, rgb: np.ndarray) -> Path:
    Image.fromarray(rgb).save(path)
    return path


def test_the_loader_skips_gray_toned_tiny_and_duplicate_photographs_and_counts_them(tmp_path):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    keep = [write(folder / f"colour{i}.png", make_photo(80, 64, i)) for i in range(3)]
    photo = make_photo(80, 64, 9)
    write(folder / "gray.png", np.repeat(photo.mean(-1, keepdims=True), 3, -1).astype(np.uint8))
    Image.fromarray(photo).convert("L").save(folder / "gray-mode.jpg")
    write(folder / "sepia.jpg", toned(photo, (1.0, 0.85, 0.62)))
    write(folder / "tiny.png", make_photo(40, 30, 4))
    (folder / "sub" / "copy.png").write_bytes(keep[0].read_bytes())  # the same file twice
    scan = scan_images(folder, 48)
    assert scan.files == keep
    assert dict(scan.skipped) == {
        SKIP_NEAR_GRAY: 3,
        "smaller than 48 px": 1,
        "duplicate of another file": 1,
    }
    assert scan.summary()["skipped"] == 5


def test_a_dataset_file_that_is_postscript_whatever_its_name_is_skipped_unopened(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    opened = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(self))
    folder = tmp_path / "mixed"
    folder.mkdir()
    keep = [write(folder / f"colour{i}.png", make_photo(80, 64, i)) for i in range(2)]
    (folder / "photo.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 80 64\nshowpage\n")
    scan = scan_images(folder, 48)
    assert scan.files == keep and dict(scan.skipped) == {"unreadable": 1}
    assert opened == []


def test_a_dataset_of_gray_photographs_only_fails_with_the_reason(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(make_photo(80, 64, i)).convert("L").save(folder / f"{i}.png")
    with pytest.raises(DatasetError, match="3 nearly gray or toned"):
        scan_images(folder, 32)
    assert len(scan_images(folder, 32, skip_gray=False).files) == 3


def test_degradations_keep_shape_and_range_and_change_the_input():
    tf.random.set_seed(3)
    lum = tf.convert_to_tensor(make_photo(64, 48, 2).mean(axis=-1, keepdims=True) / 127.5 - 1.0, tf.float32)
    changed = 0
    for _ in range(20):
        out = degrade_lightness(lum)
        assert out.shape == lum.shape and out.dtype == tf.float32
        assert float(tf.reduce_min(out)) >= -1.0 and float(tf.reduce_max(out)) <= 1.0
        changed += float(tf.reduce_mean(tf.abs(out - lum))) > 0.01
    assert changed >= 12  # each effect is on 60% of the time: most draws change something
    three = tf.concat([lum, lum, lum], axis=-1)  # the report's preset: gray in three channels
    out = degrade_lightness(three)
    assert out.shape == three.shape
    assert np.allclose(out[..., 0], out[..., 2])  # still gray: the same in every channel


def test_degraded_inputs_keep_their_clean_target_colours(tmp_path):
    colours = [(200, 40, 40), (40, 160, 60), (50, 60, 210)]
    files = []
    for i, colour in enumerate(colours):
        image = np.zeros((64, 64, 3), np.uint8) + np.asarray(colour, np.uint8)
        files.append(write(tmp_path / f"{i}.png", image))
    tf.random.set_seed(0)
    degraded_any = False
    for source, target in make_dataset(files, 32, 2, "seed", degrade=1.0).take(8):
        rgb = np.round((target.numpy() + 1.0) * 127.5).astype(int)
        for pixels in rgb.reshape(2, -1, 3):
            assert tuple(np.median(pixels, axis=0)) in colours  # the target: the photograph itself
            assert np.abs(pixels - np.median(pixels, axis=0)).max() <= 1
        clean = target.numpy() @ np.asarray([0.299, 0.587, 0.114])  # roughly the target's gray
        degraded_any |= np.abs(source.numpy()[..., 0] - clean).mean() > 0.05
        assert source.numpy().min() >= -1.0 and source.numpy().max() <= 1.0
    assert degraded_any


def test_degrade_is_a_training_option_between_0_and_1():
    assert TrainConfig(dataset="d", steps=1).degrade == 0.0  # the report's clean inputs by default
    assert TrainConfig(dataset="d", steps=1, degrade=0.5).degrade == 0.5
    with pytest.raises(ValueError, match="degrade"):
        TrainConfig(dataset="d", steps=1, degrade=1.5)
