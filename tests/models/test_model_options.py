"""Training and serving options beyond the report's recipe: the resize-convolution decoder,
aspect-ratio crops, render sizes, chroma scale, flip and scale averaging, encoder fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from keras import layers
from pydantic import ValidationError

from models.colorize import colorize_array
from models.config import TrainConfig
from models.data import random_view
from models.networks import build_generator, decoder_of
from models.serving import precision_twin
from models.store import BrokenVersion, LoadedModel, ModelStore, export_float16
from models.training import run_training
from tests.apptest import tiny_model
from tests.photos import make_photo

# The shipped default (models/default/) was built and scored with all 62 validation photographs.
SHIPPED_VALIDATION = 62


def layer_types(model) -> set[type]:
    return {type(layer) for layer in model.layers}


def test_the_resize_decoder_has_no_transposed_convolution_and_is_recognised():
    resize = build_generator(32, 1, 2, width=4, decoder="resize")
    report = build_generator(32, 1, 2, width=4)
    assert layers.Conv2DTranspose not in layer_types(resize)
    assert layers.UpSampling2D in layer_types(resize)
    assert layers.Conv2DTranspose in layer_types(report)
    assert (decoder_of(resize), decoder_of(report)) == ("resize", "transpose")
    # Same encoder, same U-Net shape: any multiple of 2**levels in, the same size out.
    out = resize(np.zeros((2, 64, 96, 1), np.float32), training=False)
    assert out.shape == (2, 64, 96, 2)
    assert float(tf.reduce_max(tf.abs(out))) <= 1.0  # tanh


def test_an_unknown_decoder_is_refused_by_the_config_and_the_builder():
    with pytest.raises(ValidationError, match="decoder"):
        TrainConfig(dataset="tiny", decoder="pixelshuffle")
    with pytest.raises(ValueError, match="decoder must be one of"):
        build_generator(32, 1, 2, width=4, decoder="pixelshuffle")
    with pytest.raises(ValidationError, match="max_aspect"):
        TrainConfig(dataset="tiny", max_aspect=0.5)


def _coordinate_image(height: int, width: int) -> tf.Tensor:
    """Red = x, green = y (0..255 over the image): a crop's extent shows in its value ranges."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / (width - 1) * 255, y / (height - 1) * 255, np.zeros_like(x)], -1)
    return tf.constant(np.round(rgb).astype(np.uint8))


def _crop_aspects(max_aspect: float, samples: int = 60) -> np.ndarray:
    """Width/height of the crops random_view took, from the coordinate ranges they span."""
    tf.random.set_seed(3)
    image = _coordinate_image(200, 200)
    aspects = []
    for _ in range(samples):
        view = random_view(image, 32, max_aspect).numpy()
        assert view.shape == (32, 32, 3)
        x_span = view[..., 0].max() - view[..., 0].min()
        y_span = view[..., 1].max() - view[..., 1].min()
        aspects.append(x_span / y_span)
    return np.array(aspects)


def test_square_crops_by_default_and_squeezed_crops_of_both_orientations_with_max_aspect():
    square = _crop_aspects(1.0)
    assert np.all(np.abs(np.log(square)) < 0.1)
    squeezed = _crop_aspects(2.0)
    assert squeezed.max() > 1.4 and squeezed.min() < 1 / 1.4  # wide ones and tall ones
    assert np.all(squeezed < 2.2) and np.all(squeezed > 1 / 2.2)


def test_a_resize_decoder_run_publishes_versions_that_load_export_and_twin(dataset_dir, tmp_path):
    store = ModelStore(dataset_dir / "models")
    config = TrainConfig(
        dataset="tiny",
        image_size=32,
        steps=3,
        batch_size=2,
        width=4,
        sample_every=3,
        publish_every=3,
        checkpoint_every=3,
        seed=1,
        decoder="resize",
        max_aspect=1.8,
    )
    result = run_training(config, data_dir=dataset_dir, job_dir=tmp_path / "job", store=store)
    assert result.state == "succeeded" and result.published_versions == [1]
    assert store.get(1).metadata["decoder"] == "resize"
    model = store.load(1)
    assert decoder_of(model.generator) == "resize"
    photo = make_photo(48, 40, 2)
    expected = colorize_array(model, photo)

    # The float16 export is rebuilt from its metadata (the decoder named there) and serves the same.
    exported = ModelStore.load_dir(export_float16(model, tmp_path / "f16"), "default")
    assert decoder_of(exported.generator) == "resize"
    assert np.abs(colorize_array(exported, photo).astype(int) - expected).mean() < 1.0

    # The bfloat16 serving twin is rebuilt with the same decoder and takes the same weights.
    twin = precision_twin(model, "mixed_bfloat16")
    assert decoder_of(twin) == "resize"
    assert len(twin.get_weights()) == len(model.generator.get_weights())


def test_a_model_runs_at_its_render_size_unless_asked_another(tmp_path):
    from models.colorize import check_render_size

    exported = ModelStore.load_dir(export_float16(tiny_model({"render_size": 64}), tmp_path / "v"), "v")
    assert exported.render_size == 64 and check_render_size(exported, None) == 64
    assert check_render_size(exported, 32) == 32
    photo = make_photo(50, 40, 2)
    assert colorize_array(exported, photo).shape == photo.shape
    # A MobileNetV2 encoder runs at any multiple of its stride, 32; the report's U-Net at 2**levels.
    assert LoadedModel(1, None, "lab", 128, {"encoder": "mobilenet_v2"}).size_step == 32
    assert LoadedModel(1, None, "lab", 128, {}).size_step == 128
    with pytest.raises(ValueError, match="multiple of 32"):
        check_render_size(LoadedModel(1, None, "lab", 128, {"encoder": "mobilenet_v2"}), 200)
    for bad in (48, 0, "big", True, 10_000):
        version = tmp_path / f"bad-{bad}"
        export_float16(tiny_model({"render_size": bad}), version)
        with pytest.raises(BrokenVersion, match="render_size"):
            ModelStore.load_dir(version, "bad")


def test_one_loaded_model_colorizes_at_several_render_sizes_in_turn():
    # colorize_array once failed at the second size it met (a retrace with unknown spatial
    # dimensions, which the resize decoder's upsampling cannot take).
    model = tiny_model({"render_size": 64, "flip_average": True})
    photo = make_photo(50, 40, 2)
    outputs = {size: np.asarray(colorize_array(model, photo, size)) for size in (64, 32, 96)}
    assert all(out.shape == photo.shape for out in outputs.values())
    assert np.array_equal(np.asarray(colorize_array(model, photo, 64)), outputs[64])


def test_serving_multiplies_the_predicted_chroma_by_the_models_chroma_scale(tmp_path):
    from skimage.color import rgb2lab

    photo = make_photo(64, 48, 3)
    full = rgb2lab(np.asarray(colorize_array(tiny_model({}), photo)))
    half = rgb2lab(np.asarray(colorize_array(tiny_model({"chroma_scale": 0.5}), photo)))
    assert np.abs(full[..., 1:]).mean() > 2.0  # the untrained model does colour
    assert np.abs(half[..., 0] - full[..., 0]).max() < 1.0  # the lightness is the photograph's
    assert np.abs(half[..., 1:] - 0.5 * full[..., 1:]).mean() < 0.5  # the chroma, halved
    # The float16 export keeps the scale; a version with a bad one is refused, not served.
    exported = ModelStore.load_dir(export_float16(tiny_model({"chroma_scale": 0.5}), tmp_path / "f16"), "d")
    assert exported.chroma_scale == 0.5
    for bad in (0, -1, 3.0, "half", True):
        version = tmp_path / f"bad-{bad}"
        export_float16(tiny_model({"chroma_scale": bad}), version)
        with pytest.raises(BrokenVersion, match="chroma_scale"):
            ModelStore.load_dir(version, "bad")


def test_a_chroma_knee_mutes_faint_colours_in_proportion_and_leaves_strong_ones(tmp_path):
    from models.colorize import mute_faint

    ab = np.array([[[0.0, 0.0], [3.0, 4.0], [-6.0, 8.0], [12.0, -16.0], [30.0, 40.0]]], np.float32)
    muted = mute_faint(ab, 20.0)  # strengths 0, 5, 10, 20, 50
    np.testing.assert_allclose(muted[0, :3], ab[0, :3] * np.array([[0.0], [0.25], [0.5]]), atol=1e-6)
    np.testing.assert_array_equal(muted[0, 3:], ab[0, 3:])  # at and above the knee: unchanged
    hue = np.arctan2(ab[0, 1:, 1], ab[0, 1:, 0])
    np.testing.assert_allclose(np.arctan2(muted[0, 1:, 1], muted[0, 1:, 0]), hue, atol=1e-6)
    # Served: the lightness stays the photograph's; faint colours fade more than strong ones.
    from skimage.color import rgb2lab

    photo = make_photo(64, 48, 3)
    plain = rgb2lab(np.asarray(colorize_array(tiny_model({}), photo)))
    kneed = rgb2lab(np.asarray(colorize_array(tiny_model({"chroma_knee": 100.0}), photo)))
    assert np.abs(kneed[..., 0] - plain[..., 0]).max() < 1.0
    plain_c, kneed_c = (
        np.hypot(*np.moveaxis(plain[..., 1:], -1, 0)),
        np.hypot(*np.moveaxis(kneed[..., 1:], -1, 0)),
    )
    assert plain_c.mean() > 2.0 and kneed_c.mean() < 0.5 * plain_c.mean()
    # each colour of strength c is served at about c * c / knee (the chroma is muted at the
    # model's size, then enlarged: equal up to the enlargement and 8-bit rounding)
    assert np.abs(kneed_c - plain_c**2 / 100.0).mean() < 0.5
    # The float16 export keeps the knee; a version with a bad one is refused, not served.
    exported = ModelStore.load_dir(export_float16(tiny_model({"chroma_knee": 20}), tmp_path / "f16"), "d")
    assert exported.chroma_knee == 20.0 and tiny_model({}).chroma_knee == 0.0
    for bad in (-1, 101, "faint", True):
        version = tmp_path / f"bad-{bad}"
        export_float16(tiny_model({"chroma_knee": bad}), version)
        with pytest.raises(BrokenVersion, match="chroma_knee"):
            ModelStore.load_dir(version, "bad")


def test_flip_averaging_is_the_mean_of_the_photograph_and_its_mirror_image(tmp_path):
    from models.colorize import generator_output, predict
    from models.serving import InferenceModel

    plain = tiny_model({})
    inputs = tf.random.stateless_uniform((3, 32, 64, 1), (1, 2), -1.0, 1.0)
    direct = plain.generator(inputs, training=False).numpy()
    mirrored = plain.generator(inputs[:, :, ::-1], training=False).numpy()[:, :, ::-1]
    averaged = generator_output(plain.generator, inputs, flip_average=True).numpy()
    assert np.abs(direct - mirrored).max() > 0.01  # the generator is not symmetric itself
    np.testing.assert_allclose(averaged, (direct + mirrored) / 2, atol=1e-5)
    np.testing.assert_array_equal(generator_output(plain.generator, inputs).numpy(), direct)
    # A model whose metadata says so is served that way, by every path, and keeps it in float16.
    flipped = ModelStore.load_dir(export_float16(tiny_model({"flip_average": True}), tmp_path / "f"), "f")
    assert flipped.flip_average and not plain.flip_average
    served = InferenceModel(flipped).predict(inputs[:, :32, :32].numpy())
    expected = generator_output(flipped.generator, inputs[:, :32, :32], flip_average=True).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(predict(flipped, inputs[:, :32, :32]).numpy(), expected, atol=1e-5)
    photo = make_photo(50, 40, 2)
    mirror = np.asarray(colorize_array(flipped, photo[:, ::-1]))[:, ::-1].astype(int)
    assert np.abs(mirror - np.asarray(colorize_array(flipped, photo)).astype(int)).max() <= 1
    for bad in ("yes", 1, None):
        version = tmp_path / f"bad-{bad}"
        export_float16(tiny_model({"flip_average": bad}), version)
        with pytest.raises(BrokenVersion, match="flip_average"):
            ModelStore.load_dir(version, "bad")


def test_scale_averaging_adds_the_outputs_at_other_sides_resized_back(tmp_path):
    from models.colorize import generator_output, predict
    from models.serving import InferenceModel

    model = ModelStore.load_dir(export_float16(tiny_model({"scale_steps": [1, -1, 2]}), tmp_path / "s"), "s")
    assert model.scale_sizes(32) == (64, 96)  # 0 px is no side: skipped
    assert model.scale_sizes(64) == (96, 32, 128)
    assert tiny_model({}).scale_sizes(32) == ()
    inputs = tf.random.stateless_uniform((2, 32, 32, 1), (3, 4), -1.0, 1.0)
    views = [model.generator(inputs, training=False).numpy()]
    for side in (64, 96):
        enlarged = tf.image.resize(inputs, (side, side), method="bilinear")
        views.append(tf.image.resize(model.generator(enlarged, training=False), (32, 32)).numpy())
    expected = np.mean(views, axis=0)
    assert np.abs(views[0] - views[1]).max() > 1e-3  # the views differ: the mean is not one of them
    averaged = generator_output(model.generator, inputs, scale_sizes=(64, 96)).numpy()
    np.testing.assert_allclose(averaged, expected, atol=1e-5)
    # every serving path runs it as the metadata says
    np.testing.assert_allclose(InferenceModel(model).predict(inputs.numpy()), expected, atol=1e-5)
    np.testing.assert_allclose(predict(model, inputs).numpy(), expected, atol=1e-5)
    photo = make_photo(50, 40, 2)
    assert colorize_array(model, photo).shape == photo.shape
    for bad in ([0], [5], "1", [1.5], [True], [1, 2, 3, 4, -1]):
        version = tmp_path / f"bad-{bad}"
        export_float16(tiny_model({"scale_steps": bad}), version)
        with pytest.raises(BrokenVersion, match="scale_steps"):
            ModelStore.load_dir(version, "bad")


def _publish_resize(store: ModelStore) -> int:
    generator = build_generator(32, 1, 2, width=4, decoder="resize")
    return store.publish(generator, {"preset": "lab", "image_size": 32, "width": 4, "decoder": "resize"})


def _init_config(**overrides) -> TrainConfig:
    values = dict(dataset="tiny", image_size=32, width=4, batch_size=2, steps=2, publish_every=2, seed=1)
    return TrainConfig(**{**values, **overrides})


def test_a_job_from_a_resize_model_takes_its_decoder_unless_it_asks_for_another(dataset_dir, tmp_path):
    from models.store import BrokenVersion

    store = ModelStore(dataset_dir / "models")
    source = _publish_resize(store)
    result = run_training(
        _init_config(init_from=source), data_dir=dataset_dir, job_dir=tmp_path / "a", store=store
    )
    version = result.published_versions[-1]
    assert store.get(version).metadata["decoder"] == "resize"
    assert decoder_of(store.load(version).generator) == "resize"
    with pytest.raises(BrokenVersion, match="has a 'resize' decoder, the job asks for 'transpose'"):
        run_training(
            _init_config(init_from=source, decoder="transpose"),
            data_dir=dataset_dir,
            job_dir=tmp_path / "b",
            store=store,
        )
    # Without init_from, the report's decoder.
    fresh = run_training(_init_config(), data_dir=dataset_dir, job_dir=tmp_path / "c", store=store)
    assert store.get(fresh.published_versions[-1]).metadata["decoder"] == "transpose"


def test_the_training_input_pipeline_crops_decodable_photographs_only(tmp_path):
    from PIL import Image

    from models.data import make_dataset

    colours = {(200, 30, 30), (30, 200, 30), (30, 30, 200)}
    files = []
    for i, (colour, size) in enumerate(zip(sorted(colours), [(80, 48), (48, 64), (100, 100)], strict=True)):
        path = tmp_path / f"good{i}.png"
        Image.new("RGB", size, colour).save(path)
        files.append(path)
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30), (255, 255, 0)).save(small)  # under the crop size: left out
    broken = tmp_path / "broken.jpg"
    buffer = tmp_path / "whole.jpg"
    Image.new("RGB", (64, 64), (0, 255, 255)).save(buffer)
    broken.write_bytes(buffer.read_bytes()[:200])  # a header, no pixels: fails to decode
    dataset = make_dataset([*files, small, broken], 32, 2, "seed")
    seen = set()
    for source, target in dataset.take(12):
        assert source.shape == (2, 32, 32, 3) and target.shape == (2, 32, 32, 3)
        assert source.dtype == tf.float32
        rgb = np.round((target.numpy() + 1.0) * 127.5).reshape(2, -1, 3)
        for pixels in rgb:
            colour = tuple(int(v) for v in np.median(pixels, axis=0))
            assert colour in colours, colour  # only the decodable photographs, whole crops of them
            seen.add(colour)
        # the input is the target's gray, in all three channels
        assert np.allclose(source.numpy()[..., 0], source.numpy()[..., 2])
    assert seen == colours  # every usable photograph comes round


def test_train_encoder_fine_tunes_mobilenet_weights_but_keeps_its_batch_norm_statistics():
    from models.training import build_pix2pix

    base = {"dataset": "d", "steps": 1, "preset": "lab", "image_size": 32, "width": 4}
    with pytest.raises(ValidationError, match="train_encoder"):
        TrainConfig(**base, encoder="unet", train_encoder=True)
    frozen = build_pix2pix(TrainConfig(**base, encoder="mobilenet_v2", decoder="resize"))
    tuned = build_pix2pix(TrainConfig(**base, encoder="mobilenet_v2", decoder="resize", train_encoder=True))
    encoder = tuned.generator.get_layer("mobilenet_v2")
    assert not [v for v in frozen.generator.trainable_variables if "mobilenet" in v.path]
    kernels = [v for v in encoder.trainable_variables if "kernel" in v.path]
    assert kernels and not [v for v in encoder.trainable_variables if "gamma" in v.path or "beta" in v.path]
    moving = [v for v in encoder.non_trainable_variables if "moving" in v.path]
    assert moving
    before = [v.numpy().copy() for v in (*kernels, *moving)]
    source = tf.random.stateless_uniform((2, 32, 32, 1), (5, 6), -1.0, 1.0)
    target = tf.random.stateless_uniform((2, 32, 32, 2), (7, 8), -1.0, 1.0)
    tuned.fit(tf.data.Dataset.from_tensors((source, target)), epochs=1, verbose=0)
    after = [v.numpy() for v in (*kernels, *moving)]
    assert any(np.abs(b - a).max() > 0 for b, a in zip(before[: len(kernels)], after, strict=False))
    for b, a in zip(before[len(kernels) :], after[len(kernels) :], strict=True):
        np.testing.assert_array_equal(b, a)  # batch norm runs on ImageNet's statistics, untouched
