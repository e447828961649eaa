"""The report's networks, the Pix2Pix train step and the colour maths."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from skimage import color as skcolor

from models import color
from models.networks import build_discriminator, build_generator, encoder_filters
from models.pix2pix import Pix2Pix, adam, discriminator_loss, generator_loss


def test_report_generator_has_report_shape_and_parameter_count():
    generator = build_generator(256, 3, 3, width=64)
    assert generator.count_params() == 54_429_315
    assert generator(tf.zeros((1, 256, 256, 3))).shape == (1, 256, 256, 3)
    convs = [layer for layer in generator.layers if layer.name.endswith("_conv")]
    assert [c.filters for c in convs] == [64, 128, 256, 512, 512, 512, 512, 512]
    dropouts = [layer.name for layer in generator.layers if "dropout" in layer.name]
    assert dropouts == ["dec1_dropout", "dec2_dropout", "dec3_dropout"]


def test_report_discriminator_is_a_70px_patchgan_on_the_pair():
    discriminator = build_discriminator(256, 3, 3, width=64)
    assert discriminator.count_params() == 6_968_257
    out = discriminator([tf.zeros((2, 256, 256, 3)), tf.zeros((2, 256, 256, 3))])
    assert out.shape == (2, 16, 16, 1)


def test_depth_follows_image_size_and_width_scales_filters():
    assert encoder_filters(5, 8) == [8, 16, 32, 64, 64]
    generator = build_generator(32, 1, 2, width=8)
    assert generator(tf.zeros((1, 32, 32, 1))).shape == (1, 32, 32, 2)
    bottleneck = generator.get_layer("bottleneck_conv")
    assert bottleneck.output.shape[1:3] in ((None, None), (1, 1))
    with pytest.raises(ValueError, match="power of two"):
        build_generator(48, 1, 2, width=8)


def test_weights_start_from_normal_0_02():
    generator = build_generator(64, 1, 2, width=16)
    kernel = generator.get_layer("enc2_conv").kernel.numpy()
    assert abs(kernel.mean()) < 0.005
    assert 0.017 < kernel.std() < 0.023


def test_losses_match_their_definitions():
    real, fake = tf.fill((1, 2, 2, 1), 3.0), tf.fill((1, 2, 2, 1), -3.0)
    sp = np.log1p(np.exp(-3.0))  # BCE of a logit of 3 against its label
    assert float(discriminator_loss(real, fake)) == pytest.approx(sp, rel=1e-4)
    target, out = tf.zeros((1, 2, 2, 2)), tf.fill((1, 2, 2, 2), 0.5)
    total, gan, l1 = generator_loss(fake, target, out, l1_weight=100.0)
    assert float(l1) == pytest.approx(0.5)
    assert float(total) == pytest.approx(float(gan) + 50.0, rel=1e-5)


def test_one_train_step_changes_both_networks():
    generator, discriminator = build_generator(32, 1, 2, 4), build_discriminator(32, 1, 2, 4)
    model = Pix2Pix(generator, discriminator)
    model.compile(adam(), adam(), l1_weight=100.0)
    g_before = [v.numpy().copy() for v in generator.trainable_variables]
    d_before = [v.numpy().copy() for v in discriminator.trainable_variables]
    rng = np.random.default_rng(0)
    source = rng.uniform(-1, 1, (2, 32, 32, 1)).astype("float32")
    target = rng.uniform(-1, 1, (2, 32, 32, 2)).astype("float32")
    logs = model.train_on_batch(source, target, return_dict=True)
    assert set(logs) >= {"g_loss", "d_loss", "l1"}
    assert all(np.isfinite(v) for v in logs.values())
    g_changed = [
        not np.allclose(a, b.numpy()) for a, b in zip(g_before, generator.trainable_variables, strict=True)
    ]
    d_changed = [
        not np.allclose(a, b.numpy())
        for a, b in zip(d_before, discriminator.trainable_variables, strict=True)
    ]
    assert all(g_changed) and all(d_changed)


def test_lab_conversion_matches_skimage_both_ways():
    rgb = np.random.default_rng(1).random((16, 16, 3))
    assert np.abs(color.rgb_to_lab(rgb).numpy() - skcolor.rgb2lab(rgb)).max() < 1e-3
    lab = skcolor.rgb2lab(rgb)
    assert np.abs(color.lab_to_rgb(lab).numpy() - skcolor.lab2rgb(lab)).max() < 1e-4


def test_lab_round_trip_is_lossless_in_gamut():
    rgb = np.random.default_rng(2).random((32, 32, 3)).astype(np.float32)
    back = color.lab_to_rgb(color.rgb_to_lab(rgb)).numpy()
    assert np.abs(back - rgb).max() < 1e-4


def test_gray_input_keeps_lab_luminance():
    rgb = np.random.default_rng(3).random((8, 8, 3)).astype(np.float32)
    gray = color.rgb_to_gray(rgb)
    lum = color.rgb_to_lab(rgb)[..., 0].numpy()
    gray_lum = color.rgb_to_lab(tf.concat([gray] * 3, -1))[..., 0].numpy()
    assert np.abs(lum - gray_lum).max() < 1e-2
    assert color.normalize_ab(tf.constant([500.0, -500.0])).numpy().tolist() == [1.0, -1.0]


def _applier(optimizer, variables):
    def apply(grads):
        optimizer.apply_gradients(zip(grads, variables, strict=True))

    return apply


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_adam_updates_like_keras_adam(compiled, monkeypatch):
    keras_steps = []
    keras_update = keras.optimizers.Adam.update_step
    monkeypatch.setattr(
        keras.optimizers.Adam,
        "update_step",
        lambda self, *args: keras_steps.append(type(self).__name__) or keras_update(self, *args),
    )
    rng = np.random.default_rng(3)
    shapes = [(3, 3, 4, 8), (8,), (17,)]
    start = [rng.normal(size=s).astype(np.float32) for s in shapes]
    steps = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(5)]
    results = []
    for optimizer in (keras.optimizers.Adam(2e-4, beta_1=0.5), adam()):
        assert type(optimizer).__name__ == ("FusedAdam" if results else "Adam")
        variables = [keras.Variable(v) for v in start]
        optimizer.build(variables)

        run = _applier(optimizer, variables)
        run = tf.function(run) if compiled else run
        for grads in steps:
            run([tf.constant(g) for g in grads])
        results.append([np.asarray(v) for v in [*variables, *optimizer.variables]])
    keras_adam, fused = results
    assert set(keras_steps) == {"Adam"}  # FusedAdam never fell back to Keras's update
    assert len(keras_adam) == len(fused)  # the same slots: checkpoints are interchangeable
    for expected, got in zip(keras_adam, fused, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(fused[0], start[0])  # it did train


def test_a_checkpoint_written_with_keras_adam_resumes_with_fused_adam(tmp_path):
    # a job checkpointed before the optimiser changed resumes with its moments and step count
    def pix2pix(optimizer) -> Pix2Pix:
        keras.utils.set_random_seed(0)
        model = Pix2Pix(build_generator(32, 1, 2, width=8), build_discriminator(32, 1, 2, width=8))
        model.compile(optimizer(), optimizer())
        return model

    before = pix2pix(lambda: keras.optimizers.Adam(2e-4, beta_1=0.5))
    batch = (tf.random.uniform((2, 32, 32, 1)), tf.random.uniform((2, 32, 32, 2)))
    before.train_step(batch)
    before.save_weights(tmp_path / "checkpoint.weights.h5")
    after = pix2pix(adam)
    after.load_weights(tmp_path / "checkpoint.weights.h5")
    assert int(after.g_optimizer.iterations) == 1
    for old, new in zip(before.g_optimizer.variables, after.g_optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
