"""The generator's hint inputs (models/hint_net.py): no hints colour exactly as the automatic
model, a branch added to a trained model starts by changing nothing, a hint changes the colours
near it, and hint models go through the store, the bfloat16 twin and training."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from models.color import rgb_to_lab
from models.colorize import colorize_array, prepare
from models.config import TrainConfig
from models.hint_net import accepts_hints, copy_weights_by_name, with_no_hints
from models.hints import HINT_CHANNELS, Hint, NoHintInputs, hint_ab, simulated_hints
from models.networks import build_generator
from models.store import LoadedModel, ModelStore, export_float16
from models.training import run_training
from tests.apptest import HINT_MODEL_METADATA, tiny_hint_generator, tiny_model
from tests.models.test_training import tiny_config
from tests.photos import make_photo

MNV2 = {"decoder": "resize", "encoder": "mobilenet_v2"}


def _inputs(count: int = 2, side: int = 32) -> np.ndarray:
    return np.random.default_rng(3).uniform(-1, 1, (count, side, side, 1)).astype(np.float32)


def test_without_hints_a_hint_model_colours_exactly_as_the_automatic_one_it_grew_from():
    automatic = build_generator(32, 1, 2, width=4, **MNV2)
    hinted = build_generator(32, 1, 2, width=4, hints=True, **MNV2)
    assert not accepts_hints(automatic) and accepts_hints(hinted)
    assert hinted.input_shape[-1] == 1 + HINT_CHANNELS
    assert copy_weights_by_name(automatic, hinted) > 0
    x = _inputs()
    expected = automatic(x, training=False).numpy()
    none = with_no_hints(tf.constant(x), hinted)
    np.testing.assert_array_equal(hinted(none, training=False).numpy(), expected)
    # a hint changes its own photograph, and leaves the other of the batch exactly as it was
    some = np.zeros((2, 32, 32, HINT_CHANNELS), np.float32)
    some[0, 4:6, 4:6] = (0.5, -0.5, 1.0)
    with_hint = hinted(np.concatenate([x, some], -1), training=False).numpy()
    np.testing.assert_array_equal(with_hint[1], expected[1])
    assert np.abs(with_hint[0] - expected[0]).max() > 0.01
    # towards the hint's colour, where it is
    assert (
        np.abs(with_hint[0, 4:6, 4:6] - (0.5, -0.5)).mean()
        < np.abs(expected[0, 4:6, 4:6] - (0.5, -0.5)).mean()
    )


def test_hints_need_the_mobilenet_encoder():
    with pytest.raises(ValueError, match="mobilenet_v2"):
        build_generator(32, 1, 2, width=4, decoder="resize", hints=True)
    with pytest.raises(ValueError, match="hints need encoder mobilenet_v2"):
        TrainConfig(dataset="d", steps=1, hints=True)
    with pytest.raises(ValueError, match="hints need encoder mobilenet_v2"):
        TrainConfig(dataset="d", steps=1, hints=True, encoder="unet")
    TrainConfig(dataset="d", steps=1, hints=True, init_from=3)  # the model's encoder decides


def test_a_hint_changes_the_colour_near_it_and_not_far_away():
    model = LoadedModel(1, tiny_hint_generator(), "lab", 32, dict(HINT_MODEL_METADATA))
    photo = np.random.default_rng(2).integers(0, 256, (64, 96), dtype=np.uint8)
    plain = np.asarray(colorize_array(model, photo)).astype(int)
    hinted = np.asarray(colorize_array(model, photo, hints=[Hint(10, 12, (200, 30, 20), 2)])).astype(int)
    difference = np.abs(hinted - plain).sum(axis=-1)
    assert difference[6:18, 4:16].max() > 5  # where the hint is
    assert difference[40:, 50:].max() == 0  # far away: not a level changed
    # no hints is the automatic output exactly, with or without an empty list
    np.testing.assert_array_equal(np.asarray(colorize_array(model, photo, hints=[])), plain)


def test_the_model_input_carries_the_hints_and_a_model_without_them_refuses_hints():
    model = LoadedModel(1, tiny_hint_generator(), "lab", 32, dict(HINT_MODEL_METADATA))
    photo = np.full((40, 80), 100, np.uint8)
    inputs, _, size = prepare(model, photo, hints=[Hint(79, 39, (255, 0, 0))])
    assert inputs.shape == (32, 32, 1 + HINT_CHANNELS) and size == 32
    assert inputs[31, 31, 3] == 1.0 and inputs[..., 3].sum() == 1.0  # the bottom-right cell
    assert inputs[31, 31, 1] > 0.5  # red: a strongly positive
    automatic = tiny_model({})
    assert not automatic.hints
    with pytest.raises(NoHintInputs, match="takes no colour hints"):
        prepare(automatic, photo, hints=[Hint(1, 1, (255, 0, 0))])
    assert prepare(automatic, photo, hints=[])[0].shape == (32, 32, 1)


def test_a_hint_model_goes_through_the_store_as_keras_or_float16_and_its_bfloat16_twin(tmp_path):
    from models.serving import precision_twin

    generator = tiny_hint_generator()
    store = ModelStore(tmp_path / "store")
    version = store.publish(generator, dict(HINT_MODEL_METADATA))
    loaded = store.load(version)
    assert loaded.hints
    x = np.concatenate([_inputs(1), np.zeros((1, 32, 32, 3), np.float32)], -1)
    x[0, 3:5, 3:5, 1:] = (0.4, 0.2, 1.0)
    expected = generator(x, training=False).numpy()
    np.testing.assert_array_equal(loaded.generator(x, training=False).numpy(), expected)
    export_float16(loaded, tmp_path / "f16")
    small = ModelStore.load_dir(tmp_path / "f16", "default")
    assert small.hints
    np.testing.assert_allclose(small.generator(x, training=False).numpy(), expected, atol=0.02)
    twin = precision_twin(small, "mixed_bfloat16")
    assert accepts_hints(twin)
    np.testing.assert_allclose(twin(x, training=False).numpy(), expected, atol=0.1)


def test_simulated_hints_are_patches_of_the_true_colours():
    tf.random.set_seed(7)
    ab = tf.random.uniform((32, 32, 2), -1, 1)
    counts = []
    for _ in range(60):
        grid = simulated_hints(ab).numpy()
        assert grid.shape == (32, 32, 3)
        mask = grid[..., 2]
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert np.all(grid[..., :2][mask == 0] == 0)  # colour only where the mask is
        assert np.all(np.abs(grid[..., :2]) <= 1.0)
        counts.append(mask.sum())
    assert 0 < sum(c == 0 for c in counts) < 30  # often none (1 in 8 on average), not mostly
    flat = tf.ones((32, 32, 2)) * tf.constant([0.25, -0.5])
    grid = simulated_hints(flat).numpy()
    hinted = grid[..., 2] == 1
    assert hinted.any()
    np.testing.assert_allclose(grid[..., 0][hinted], 0.25, atol=1e-6)
    np.testing.assert_allclose(grid[..., 1][hinted], -0.5, atol=1e-6)


def test_an_automatic_model_gains_hints_by_training_only_its_hint_branch(dataset_dir, tmp_path):
    store = ModelStore(dataset_dir / "models")
    meta = {k: v for k, v in HINT_MODEL_METADATA.items() if k != "hints"}
    automatic = build_generator(32, 1, 2, width=4, **MNV2)
    base = store.publish(automatic, meta)
    config = tiny_config(steps=4, publish_every=4, l1_weight=10_000.0, init_from=base, hints=True)
    result = run_training(config, data_dir=dataset_dir, job_dir=tmp_path / "job", store=store)
    assert result.state == "succeeded" and len(result.published_versions) == 1
    trained = store.load(result.published_versions[0])
    assert trained.hints and trained.metadata["hints"] is True
    learnt = trained.generator.get_layer("hint_propagation").get_weights()
    started = (
        build_generator(32, 1, 2, width=4, hints=True, **MNV2).get_layer("hint_propagation").get_weights()
    )
    assert not np.allclose(learnt[1:], started[1:])  # temperature, spread and prior moved
    x = _inputs(1)
    np.testing.assert_array_equal(  # and the automatic colours are the base's, exactly
        trained.generator(with_no_hints(tf.constant(x), trained.generator), training=False).numpy(),
        automatic(x, training=False).numpy(),
    )
    # a job from the hint model keeps its hints unless told otherwise
    again = TrainConfig(**{**config.model_dump(), "hints": None, "init_from": trained.version, "steps": 2})
    result = run_training(again, data_dir=dataset_dir, job_dir=tmp_path / "job2", store=store)
    assert store.load(result.published_versions[-1]).hints
    # and loses them when asked to: an automatic model again
    plain = TrainConfig(**{**again.model_dump(), "hints": False})
    result = run_training(plain, data_dir=dataset_dir, job_dir=tmp_path / "job3", store=store)
    assert not store.load(result.published_versions[-1]).hints


def test_the_shipped_default_takes_a_hints_colour_near_it_and_little_far_away():
    from models.store import DEFAULT_MODEL_DIR

    model = ModelStore.load_dir(DEFAULT_MODEL_DIR, "default")
    photo = np.asarray(Image.fromarray(make_photo(240, 160, seed=3)).convert("L"))
    plain = np.asarray(colorize_array(model, photo)).astype(float)
    hint = Hint(30, 30, (40, 90, 220), 4)  # a clear blue, top left
    hinted = np.asarray(colorize_array(model, photo, hints=[hint])).astype(float)
    plain_ab = np.asarray(rgb_to_lab(plain / 255.0))[..., 1:]
    hinted_ab = np.asarray(rgb_to_lab(hinted / 255.0))[..., 1:]
    blue_ab = hint_ab([hint])[0]
    near = (slice(22, 39), slice(22, 39))
    # where the hint is, the colour moves most of the way to the hint's
    assert (
        np.linalg.norm(hinted_ab[near] - blue_ab, axis=-1).mean()
        < 0.5 * np.linalg.norm(plain_ab[near] - blue_ab, axis=-1).mean()
    )
    change = np.linalg.norm(hinted_ab - plain_ab, axis=-1)
    assert change[near].mean() > 10 * change[120:, 180:].mean()  # the far corner barely moves
