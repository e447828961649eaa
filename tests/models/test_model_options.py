"""Training options beyond the report's recipe: the resize-convolution decoder and aspect-ratio
crops; how the default-model recipe splits its photographs, picks a snapshot and a chroma scale;
and the shipped default model itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from keras import layers
from pydantic import ValidationError

import recipe.calibrate as calibration
import recipe.default_model as recipe
from models.backbones import WEIGHTS_SHA256
from models.colorize import colorize_array
from models.config import TrainConfig
from models.data import random_view
from models.evaluate import summary
from models.networks import build_generator, decoder_of, encoder_of
from models.serving import precision_twin
from models.store import BrokenVersion, LoadedModel, ModelStore, export_float16
from models.training import run_training
from recipe.calibrate import calibrate_chroma, calibrate_render_size, calibrated
from recipe.default_model import CANDIDATES, _config, best_snapshot, choose, incumbent, scored_run
from recipe.reports import OLD_PHOTOGRAPHS, write_manifest
from recipe.splits import CATEGORIES, VALIDATION, Photos, evaluate_on, split_of
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


def test_the_recipe_keeps_the_best_colourful_snapshot():
    snapshots = [
        {"version": 1, "ciede2000": 15.0, "colourfulness": 10.0, "colourfulness_gt": 50.0},  # too gray
        {"version": 2, "ciede2000": 18.0, "colourfulness": 30.0, "colourfulness_gt": 50.0},
        {"version": 3, "ciede2000": 17.0, "colourfulness": 26.0, "colourfulness_gt": 50.0},
        {"version": 4, "ciede2000": 19.0, "colourfulness": 40.0, "colourfulness_gt": 50.0},
    ]
    assert best_snapshot(snapshots)["version"] == 3
    gray = [{**s, "colourfulness": 1.0} for s in snapshots]
    assert best_snapshot(gray)["version"] == 1  # none colourful: the lowest CIEDE2000 of all


def test_the_recipe_validation_set_has_every_category_with_people_the_largest():
    counts = {c: list(VALIDATION.values()).count(c) for c in CATEGORIES}
    assert len(VALIDATION) >= 40 and set(VALIDATION.values()) == set(CATEGORIES)
    assert counts["people"] == max(counts.values()) and counts["people"] > sorted(counts.values())[-2]
    assert "seed-128-w32" in CANDIDATES and CANDIDATES["seed-128-w32"]["preset"] == "seed"
    for candidate in CANDIDATES.values():
        TrainConfig(dataset="default-train", steps=1, **candidate)  # every candidate is a valid job


def test_issue_13_adds_validation_photographs_and_keeps_the_first_44():
    names = list(VALIDATION)
    assert len(names) == 62 and names[43].endswith("backstretch/examples/sample2_1920.jpg")
    added = {n: c for n, c in list(VALIDATION.items())[44:]}
    people = [n for n, c in added.items() if c == "people"]
    assert len(people) == 11 and sum(n.startswith("kphotoalbum/") for n in people) == 7
    assert {c for c in added.values()} == {"people", "indoor", "object-food"}
    # KPhotoAlbum: a scene (name less its _2 suffix) is wholly in validation or wholly out of it.
    kpa = "kphotoalbum/usr/share/kphotoalbum/demo/"
    demo = [
        "anne_helene", "bar55", "bar55_2", "cold_water", "grand_canyon_1", "grand_canyon_2", "jesper",
        "jesper_2", "new_wave_1", "new_wave_2", "pool", "pool_2", "qt-logo", "wayne",
    ]  # fmt: skip
    scenes: dict[str, set[str]] = {}
    for n in demo:
        scene = "pool" if n == "wayne" else n.rsplit("_", 1)[0] if n[-2:] in ("_1", "_2") else n
        scenes.setdefault(scene, set()).add(split_of(kpa + n + ".jpg"))
    assert all(len(splits) == 1 for splits in scenes.values()), scenes
    assert sum(splits == {"validation"} for splits in scenes.values()) == 4


def test_gramps_colour_portraits_validate_and_are_not_shown_as_old_photographs():
    from recipe.catalogue import GRAMPS_COLOUR_PORTRAITS

    assert OLD_PHOTOGRAPHS[0] == "gramps"
    for name in GRAMPS_COLOUR_PORTRAITS:
        assert VALIDATION[f"gramps/usr/share/doc/gramps/example/gramps/{name}"] == "people"


def test_the_recipe_split_is_stable_and_keeps_a_validation_person_out_in_every_pose():
    people = "scratch/usr/share/scratch/Media/Costumes/People/"
    assert all(split_of(name) == "validation" for name in VALIDATION)
    assert split_of(people + "marissa-crouch.gif", "cut-out") == "held out"  # marissa.gif validates
    assert split_of(people + "cassy-dancing-1.gif", "cut-out") == "train"  # cut-outs never calibrate
    names = [f"pkg/photos/{i}.jpg" for i in range(400)]
    splits = [split_of(name) for name in names]
    assert splits == [split_of(name) for name in names]  # by name: the same at every run
    assert 0.05 < splits.count("calibration") / len(names) < 0.15
    assert set(splits) == {"train", "calibration"}


def _scored(name: str, ciede: float, colourfulness: float) -> dict:
    model = {"ciede2000": ciede, "colourfulness": colourfulness, "colourfulness_gt": 50.0}
    config = {"l1_weight": CANDIDATES[name].get("l1_weight", 100.0)}
    return {
        "name": name,
        "config": config,
        "calibration": model,
        "report": {"mean": {"full": {"model": model}}},
    }


def test_the_recipe_ships_only_a_resize_decoder_even_when_a_transpose_one_scores_better():
    results = [
        _scored("seed-128-w32", 15.0, 40.0),  # best colourful score, but ConvTranspose
        _scored("lab-128-w32-l1w10", 16.0, 45.0),
        _scored("lab-128-w32-l1w100", 14.0, 20.0),  # lowest, but under half the truth's colour
    ]
    assert choose(results)["name"] == "lab-128-w32-l1w10"


def test_a_candidate_within_calibration_noise_with_more_l1_weight_is_preferred():
    gan, l1 = "lab-128-w32-mnv2-l1w100", "lab-128-w32-mnv2-l1only"
    assert choose([_scored(gan, 10.40, 30.0), _scored(l1, 10.55, 27.0)])["name"] == l1  # 0.15: noise
    assert choose([_scored(gan, 10.20, 30.0), _scored(l1, 10.55, 27.0)])["name"] == gan  # 0.35: not
    # ... but never one under half the truth's colourfulness
    assert choose([_scored(gan, 10.40, 30.0), _scored(l1, 10.45, 20.0)])["name"] == gan


def test_the_chroma_scale_is_the_lowest_ciede_that_keeps_enough_colour(monkeypatch):
    # Muting helps CIEDE2000 down to 0.5, but under 0.9 the colour drops under 80% of the truth's.
    by_scale = {
        1.0: 16.0,
        0.9: 15.0,
        0.8: 14.2,
        0.7: 13.9,
        0.6: 13.5,
        0.5: 13.4,
        1.15: 16.5,
        1.3: 17,
        1.5: 18,
    }
    colour_at_1 = 48.0

    def fake_evaluate(model, files, max_side=None):
        scale = model.chroma_scale
        metrics = {
            "ciede2000": by_scale[scale],
            "colourfulness": colour_at_1 * scale,
            "colourfulness_gt": 50.0,
        }
        return {"images": files, "mean": {"full": {"model": metrics, "grayscale": metrics}}}

    monkeypatch.setattr(calibration, "evaluate_on", fake_evaluate)
    model = LoadedModel("x", None, "lab", 32, {})
    scale, tried = calibrate_chroma(model, Photos([Path("c.png")], []))
    assert scale == 0.9 and [t["chroma_scale"] for t in tried] == list(calibration.CHROMA_SCALES)
    assert model.chroma_scale == 1.0  # the model itself is left as it was
    colour_at_1 = 28.0  # a model that plays safe with brownish output: its chroma is raised
    assert calibrate_chroma(model, Photos([Path("c.png")], []))[0] == 1.5


def test_the_render_size_is_the_lowest_ciede_among_the_sizes_the_model_can_run_at(monkeypatch):
    seen = []

    def fake_evaluate(model, files, max_side=None):
        size = model.render_size
        seen.append((size, model.chroma_scale))
        metrics = {  # finer chroma helps up to 192; at 256 the colour is too weak
            "ciede2000": {128: 10.0, 160: 9.6, 192: 9.2, 224: 9.4, 256: 9.0}[size],
            "colourfulness": 20.0 if size == 256 else 30.0,
            "colourfulness_gt": 50.0,
        }
        return {"images": files, "mean": {"full": {"model": metrics, "grayscale": metrics}}}

    monkeypatch.setattr(calibration, "evaluate_on", fake_evaluate)
    mnv2 = LoadedModel("x", None, "lab", 128, {"encoder": "mobilenet_v2", "chroma_scale": 1.3})
    size, tried = calibrate_render_size(mnv2, Photos([Path("c.png")], []))
    assert size == 192 and [t["render_size"] for t in tried] == list(calibration.RENDER_SIZES)
    assert {scale for _, scale in seen} == {1.0}  # sizes are compared before the chroma is scaled
    assert mnv2.render_size == 128  # the model itself is left as it was
    # The report's U-Net at 128 runs only at multiples of 128 (and 256 is too gray here).
    seen.clear()
    unet = LoadedModel("x", None, "lab", 128, {})
    assert calibrate_render_size(unet, Photos([Path("c.png")], []))[0] == 128
    assert [s for s, _ in seen] == [128, 256]


def test_a_rebuild_calibrates_size_then_chroma_and_meets_the_previous_default_only_on_the_same_photos(
    tmp_path, monkeypatch
):
    seen = []

    def fake_evaluate(model, files, max_side=None):
        # best at 160 px, flip averaged; there, chroma 0.9 is the lowest CIEDE2000 keeping 80% of
        # the colour
        size, scale, flip = model.render_size, model.chroma_scale, model.flip_average
        seen.append((size, flip, scale))
        metrics = {
            "ciede2000": abs(size - 160) / 10 + abs(scale - 0.9) + (0.0 if flip else 0.5),
            "colourfulness": 48.0 * scale,
            "colourfulness_gt": 50.0,
        }
        return {"images": files, "mean": {"full": {"model": metrics, "grayscale": metrics}}}

    monkeypatch.setattr(calibration, "evaluate_on", fake_evaluate)
    model = _tiny_model({"render_size": 32, "encoder": "mobilenet_v2", "flip_average": True})
    chosen, result = calibrated(model, Photos([Path("c.png")], []))
    assert (result["render_size"], result["flip_average"], result["chroma_scale"]) == (160, True, 0.9)
    assert (chosen.render_size, chosen.flip_average, chosen.chroma_scale) == (160, True, 0.9)
    assert result["calibration"]["ciede2000"] == pytest.approx(0.0)
    # Sizes are compared as the model runs without calibration (no flip, chroma 1); then flip
    # averaging at the chosen size; then the chroma scale with both.
    n = len(calibration.RENDER_SIZES)
    assert seen[:n] == [(size, False, 1.0) for size in calibration.RENDER_SIZES]
    assert seen[n : n + 2] == [(160, False, 1.0), (160, True, 1.0)]
    assert [s[:2] for s in seen[n + 2 :]] == [(160, True)] * len(calibration.CHROMA_SCALES)

    # The previous default is a rival only when made from the same photographs and splits.
    manifest = [{"sha256": "a", "split": "train"}, {"sha256": "b", "split": "calibration"}]
    assert incumbent(tmp_path / "none", manifest) is None
    shipped = export_float16(_tiny_model({"photos": manifest}), tmp_path / "default")
    assert incumbent(shipped, manifest).metadata["photos"] == manifest
    assert incumbent(shipped, [*manifest, {"sha256": "c", "split": "validation"}]) is None
    assert incumbent(shipped, [{**manifest[0], "split": "calibration"}, manifest[1]]) is None


def test_a_model_runs_at_its_render_size_unless_asked_another(tmp_path):
    from models.colorize import check_render_size

    exported = ModelStore.load_dir(export_float16(_tiny_model({"render_size": 64}), tmp_path / "v"), "v")
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
        export_float16(_tiny_model({"render_size": bad}), version)
        with pytest.raises(BrokenVersion, match="render_size"):
            ModelStore.load_dir(version, "bad")


def test_one_loaded_model_colorizes_at_several_render_sizes_in_turn():
    # colorize_array once failed at the second size it met (a retrace with unknown spatial
    # dimensions, which the resize decoder's upsampling cannot take).
    model = _tiny_model({"render_size": 64, "flip_average": True})
    photo = make_photo(50, 40, 2)
    outputs = {size: np.asarray(colorize_array(model, photo, size)) for size in (64, 32, 96)}
    assert all(out.shape == photo.shape for out in outputs.values())
    assert np.array_equal(np.asarray(colorize_array(model, photo, 64)), outputs[64])


def test_a_scored_run_is_reused_only_for_the_same_configuration(tmp_path, monkeypatch):
    calls = []
    metrics = {"ciede2000": 15.0, "colourfulness": 30.0, "colourfulness_gt": 50.0}
    report = {"images": [], "mean": {"full": {"model": metrics, "grayscale": metrics}}}

    def fake_train_and_score(workdir, name, config, photos, average_last=0):
        calls.append(config.steps)
        snapshot = {"version": 1, "step": 7, **metrics, "whole": metrics}
        return {"name": name, "config": config.model_dump(), "steps": 7, "snapshots": [snapshot],
                "version": 1, "step": 7, "calibration": metrics, "report": report}  # fmt: skip

    monkeypatch.setattr(recipe, "train_and_score", fake_train_and_score)
    candidate = CANDIDATES["lab-128-w32-l1w10"]
    photos = Photos([], [])
    first = scored_run(tmp_path, "lab", _config(candidate, 60), photos)
    again = scored_run(tmp_path, "lab", _config(candidate, 60), photos)
    assert first == again and calls == [60]  # the second came from results/lab.json
    assert (tmp_path / "results" / "lab.json").is_file()
    scored_run(tmp_path, "lab", _config(candidate, 90), photos)  # another budget: trained again
    assert calls == [60, 90]
    other = tmp_path / "a.png"
    other.write_bytes(b"another photograph")
    scored_run(tmp_path, "lab", _config(candidate, 90), Photos([other], []))  # other photographs: again
    assert calls == [60, 90, 90]


def test_snapshots_are_chosen_on_whole_photographs_when_scored_there():
    centre_best = {"version": 1, "ciede2000": 12.0, "colourfulness": 35.0, "colourfulness_gt": 50.0}
    centre_worse = {"version": 2, "ciede2000": 14.0, "colourfulness": 35.0, "colourfulness_gt": 50.0}
    assert best_snapshot([centre_best, centre_worse])["version"] == 1
    # As served (the whole photograph), version 1 turns gray and version 2 holds up.
    centre_best["whole"] = {"ciede2000": 17.0, "colourfulness": 12.0, "colourfulness_gt": 50.0}
    centre_worse["whole"] = {"ciede2000": 15.0, "colourfulness": 30.0, "colourfulness_gt": 50.0}
    assert best_snapshot([centre_best, centre_worse])["version"] == 2


def test_the_shipped_default_is_the_recipes_resize_decoder_model_and_beats_gray():
    import models

    folder = Path(models.__file__).parent / "default"
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 25 * 2**20
    model = ModelStore.load_dir(folder, "default")
    meta = model.metadata
    assert decoder_of(model.generator) == "resize" == meta["decoder"]
    # On MobileNetV2's ImageNet features, whose source is recorded (models.backbones).
    assert encoder_of(model.generator) == "mobilenet_v2" == meta["encoder"]
    assert meta["pretrained_encoder"]["sha256"] == WEIGHTS_SHA256
    assert meta["weights_dtype"] == "float16" and meta["recipe"]["winner"] in CANDIDATES
    assert (
        model.chroma_scale in calibration.CHROMA_SCALES
        and model.chroma_scale == meta["recipe"]["chroma_scale"]
    )
    assert (
        model.render_size in calibration.RENDER_SIZES and model.render_size == meta["recipe"]["render_size"]
    )
    # What `colorizer evaluate` measured on the validation photographs when the recipe shipped it
    # (MODEL_CARD.md): the done-when of the default model, kept true by whoever rebuilds it.
    full = meta["metrics"]["validation_full"]
    assert full["images"] == SHIPPED_VALIDATION == len(VALIDATION)
    categories = meta["metrics"]["validation_categories"]
    assert set(categories) == {*CATEGORIES, "all"} and categories["all"]["images"] == len(VALIDATION)
    # Better than the gray input overall, on mean CIEDE2000 and on most photographs (issue 13 asks
    # for 60% and for people's mean too: not met yet, MODEL_CARD.md), and better than the
    # previous defaults (on the same 62: the U-Net 12.91, 42%, people 12.65, 27%; MobileNetV2 at
    # 128 px 12.65, 52%, people 11.77, 36%).
    assert categories["all"]["ciede2000"] < categories["all"]["grayscale_ciede2000"]
    assert categories["all"]["won"] > 0.52
    assert categories["all"]["ciede2000"] < 12.65 and categories["people"]["ciede2000"] < 12.65
    assert categories["people"]["won"] > 0.5
    assert full["colourfulness"] >= 0.5 * full["colourfulness_gt"]
    manifest = meta["photos"]
    assert {p["name"] for p in manifest if p["split"] == "validation"} == set(VALIDATION)
    assert all(p["sha256"] and p["author"] and p["license"] for p in manifest)
    photo = make_photo(90, 60, 4)
    out = colorize_array(model, photo)
    assert out.shape == photo.shape and out.std(axis=-1).mean() > 1.0  # coloured, not gray


def _tiny_model(metadata: dict) -> LoadedModel:
    import keras

    keras.utils.set_random_seed(4)
    generator = build_generator(32, 1, 2, width=4, decoder="resize")
    last = [layer for layer in generator.layers if layer.weights][-1]
    kernel, bias = last.get_weights()
    last.set_weights([kernel, np.asarray([0.3, -0.25], np.float32)])  # an untrained model is all gray
    base = {"preset": "lab", "image_size": 32, "width": 4, "decoder": "resize"}
    return LoadedModel(1, generator, "lab", 32, {**base, **metadata})


def test_serving_multiplies_the_predicted_chroma_by_the_models_chroma_scale(tmp_path):
    from skimage.color import rgb2lab

    photo = make_photo(64, 48, 3)
    full = rgb2lab(np.asarray(colorize_array(_tiny_model({}), photo)))
    half = rgb2lab(np.asarray(colorize_array(_tiny_model({"chroma_scale": 0.5}), photo)))
    assert np.abs(full[..., 1:]).mean() > 2.0  # the untrained model does colour
    assert np.abs(half[..., 0] - full[..., 0]).max() < 1.0  # the lightness is the photograph's
    assert np.abs(half[..., 1:] - 0.5 * full[..., 1:]).mean() < 0.5  # the chroma, halved
    # The float16 export keeps the scale; a version with a bad one is refused, not served.
    exported = ModelStore.load_dir(export_float16(_tiny_model({"chroma_scale": 0.5}), tmp_path / "f16"), "d")
    assert exported.chroma_scale == 0.5
    for bad in (0, -1, 3.0, "half", True):
        version = tmp_path / f"bad-{bad}"
        export_float16(_tiny_model({"chroma_scale": bad}), version)
        with pytest.raises(BrokenVersion, match="chroma_scale"):
            ModelStore.load_dir(version, "bad")


def test_flip_averaging_is_the_mean_of_the_photograph_and_its_mirror_image(tmp_path):
    from models.colorize import generator_output, predict
    from models.serving import InferenceModel

    plain = _tiny_model({})
    inputs = tf.random.stateless_uniform((3, 32, 64, 1), (1, 2), -1.0, 1.0)
    direct = plain.generator(inputs, training=False).numpy()
    mirrored = plain.generator(inputs[:, :, ::-1], training=False).numpy()[:, :, ::-1]
    averaged = generator_output(plain.generator, inputs, flip_average=True).numpy()
    assert np.abs(direct - mirrored).max() > 0.01  # the generator is not symmetric itself
    np.testing.assert_allclose(averaged, (direct + mirrored) / 2, atol=1e-5)
    np.testing.assert_array_equal(generator_output(plain.generator, inputs).numpy(), direct)
    # A model whose metadata says so is served that way, by every path, and keeps it in float16.
    flipped = ModelStore.load_dir(export_float16(_tiny_model({"flip_average": True}), tmp_path / "f"), "f")
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
        export_float16(_tiny_model({"flip_average": bad}), version)
        with pytest.raises(BrokenVersion, match="flip_average"):
            ModelStore.load_dir(version, "bad")


def test_scale_averaging_adds_the_outputs_at_other_sides_resized_back(tmp_path):
    from models.colorize import generator_output, predict
    from models.serving import InferenceModel

    model = ModelStore.load_dir(export_float16(_tiny_model({"scale_steps": [1, -1, 2]}), tmp_path / "s"), "s")
    assert model.scale_sizes(32) == (64, 96)  # 0 px is no side: skipped
    assert model.scale_sizes(64) == (96, 32, 128)
    assert _tiny_model({}).scale_sizes(32) == ()
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
        export_float16(_tiny_model({"scale_steps": bad}), version)
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


def test_the_manifest_lists_every_photograph_with_its_credit_and_the_dropped_counts(tmp_path):
    photos = [
        {"name": "p/a.jpg", "split": "train", "package": "p", "version": "1", "path": "/a.jpg",
         "kind": "photograph", "author": "A | B", "license": "CC0-1.0", "sha256": "ab" * 32},
        {"name": "p/b.jpg", "split": "validation", "category": "people", "package": "p", "version": "1",
         "path": "/b.jpg", "kind": "photograph", "author": "C", "license": "GPL-3+", "sha256": "cd" * 32},
    ]  # fmt: skip
    text = write_manifest(tmp_path, photos, {"drawing": 3, "nearly gray": 1}).read_text()
    assert "2 photographs kept, by split: 1 train, 1 validation" in text
    assert "Dropped by the checks: 3 drawing, 1 nearly gray" in text
    rows = [
        line for line in text.splitlines() if line.startswith("| validation") or line.startswith("| train")
    ]
    assert rows[0].startswith("| validation | people | p (1) | `/b.jpg` |")  # validation first
    assert "| A / B | CC0-1.0 | `" + "ab" * 32 + "` |" in rows[1]  # a | in a name cannot break the table


def test_export_ships_the_better_on_calibration_and_recalibrating_keeps_the_weights(tmp_path, monkeypatch):
    """The recipe's last step, end to end on tiny models and photographs: the run's model and the
    previous default are calibrated the same way, the better on calibration ships with its
    choices and its validation figures in its metadata; ``recalibrate_default`` calibrates the
    shipped one again without training and keeps its weights."""
    from PIL import Image

    workdir = tmp_path / "work"
    manifest = []
    for split, folder in (
        (("calibration", "calibration"),) * 2
        + (("validation", "validation/people"),) * 2
        + (("validation", "validation/animal"),)
    ):
        (workdir / folder).mkdir(parents=True, exist_ok=True)
        name = f"{folder}/{len(manifest)}.png"
        Image.fromarray(make_photo(56, 40, len(manifest))).save(workdir / name)
        credit = {
            "package": "p",
            "version": "1",
            "path": name,
            "kind": "photograph",
            "author": "A",
            "license": "CC0-1.0",
        }
        manifest.append({"sha256": f"{len(manifest)}", "split": split, "name": name, **credit})
    monkeypatch.setattr(recipe, "fetch_photos", lambda workdir: manifest)
    store = ModelStore(workdir / "models")
    version = store.publish(_tiny_model({}).generator, _tiny_model({}).metadata)
    report = evaluate_on(store.load(version), Photos.of(workdir).validation)
    run = {"name": "tiny", "version": version, "step": 4, "steps": 4, "seconds": 1.0, "report": report}
    scores = summary(evaluate_on(store.load(version), Photos.of(workdir).calibration), "full")
    run["calibration"] = {**scores, "ciede2000": 1.0}
    comparison = {
        "candidates": [run],
        "winner": "tiny",
        "final": {**run, "name": "tiny-final", "calibration": {**scores, "ciede2000": 2.0}},
        "photos": manifest,
        "budget": {"candidate_steps": 4, "final_steps": 8},
    }
    out = tmp_path / "default"
    previous = _tiny_model({"photos": manifest, "recipe": {"winner": "older"}})
    previous.generator.layers[-1].set_weights(
        [w * 3 for w in previous.generator.layers[-1].get_weights()]  # wronger, louder colours
    )
    export_float16(previous, out)

    shipped = recipe.export_default(workdir, comparison, out)
    rows = shipped["calibrated"]
    assert set(rows) == {"tiny", recipe.PREVIOUS_DEFAULT}
    best = min(rows, key=lambda name: rows[name]["calibration"]["ciede2000"])
    assert shipped["shipped"] == best
    meta = ModelStore.load_dir(out, "default").metadata
    for key in ("render_size", "flip_average", "chroma_scale"):
        assert meta[key] == meta["recipe"][key] == rows[best][key]
    assert ("kept_over" in meta["recipe"]) == (best == recipe.PREVIOUS_DEFAULT)
    categories = meta["metrics"]["validation_categories"]
    assert (categories["people"]["images"], categories["animal"]["images"], categories["all"]["images"]) == (
        2,
        1,
        3,
    )
    assert meta["photos"] == manifest

    weights = np.load(out / "generator.weights.npz")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "comparison.json").write_text(__import__("json").dumps(shipped, default=str))
    monkeypatch.setattr(recipe, "write_old_photographs_sheet", lambda *args: None)  # needs gramps
    again = recipe.recalibrate_default(workdir, out, docs)
    assert again["recalibrated"] and again["shipped"] == best
    assert "calibrated again" in (docs / "comparison.md").read_text()
    after = np.load(out / "generator.weights.npz")
    assert all(np.array_equal(weights[k], after[k]) for k in weights.files)  # no training
    # A default made from other photographs cannot be recalibrated on these: rebuild it.
    monkeypatch.setattr(recipe, "fetch_photos", lambda workdir: manifest[:1])
    with pytest.raises(RuntimeError, match="rebuild"):
        recipe.recalibrate_default(workdir, out, docs)


def test_the_last_snapshots_averaged_are_one_more_snapshot_to_choose_from(tmp_path, monkeypatch):
    store = ModelStore(tmp_path / "models")
    model = _tiny_model({})
    shapes = [w.shape for w in model.generator.get_weights()]
    snapshots = []
    for step, value in ((10, 1.0), (20, 2.0), (30, 4.0)):
        model.generator.set_weights([np.full(shape, value, np.float32) for shape in shapes])
        version = store.publish(model.generator, {**model.metadata, "step": step, "metrics": {}})
        snapshots.append({"version": version, "step": step, "ciede2000": 9.0, "colourfulness": 30.0,
                          "colourfulness_gt": 50.0})  # fmt: skip

    def fake_evaluate(model, files, max_side=None):
        averaged = "averaged_steps" in model.metadata  # the average is the best here
        metrics = {"ciede2000": 8.0 if averaged else 9.0, "colourfulness": 30.0, "colourfulness_gt": 50.0}
        return {"images": files, "mean": {"full": {"model": metrics, "grayscale": metrics}}}

    monkeypatch.setattr(recipe, "evaluate_on", fake_evaluate)
    run = {"name": "final", "snapshots": snapshots}
    recipe.score_snapshots(store, run, Photos([Path("c.png")], []), average_last=2)
    averaged = run["snapshots"][-1]
    assert len(run["snapshots"]) == 4 and averaged["averaged_steps"] == [20, 30]
    assert run["version"] == averaged["version"] and run["step"] == 30
    loaded = store.load(averaged["version"])
    assert all(np.allclose(w, 3.0) for w in loaded.generator.get_weights())  # (2 + 4) / 2, BN stats too
    assert loaded.metadata["step"] == 30 and "metrics" not in loaded.metadata
    recipe.score_snapshots(store, run, Photos([Path("c.png")], []), average_last=2)  # a resumed recipe
    assert len(run["snapshots"]) == 4  # averaged once


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
