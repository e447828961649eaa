"""The default-model recipe: how it splits its photographs, picks a candidate, a snapshot, a render
size and a chroma scale, reuses finished stages, exports; and the shipped default model itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import recipe.calibrate as calibration
import recipe.default_model as recipe
from models.backbones import WEIGHTS_SHA256
from models.colorize import colorize_array
from models.config import TrainConfig
from models.evaluate import summary
from models.networks import decoder_of, encoder_of
from models.store import LoadedModel, ModelStore, export_float16
from recipe.calibrate import calibrate_chroma, calibrate_render_size, calibrated
from recipe.default_model import CANDIDATES, _config, best_snapshot, choose, incumbent, scored_run
from recipe.reports import OLD_PHOTOGRAPHS, write_manifest
from recipe.splits import CATEGORIES, VALIDATION, Photos, evaluate_on, split_of
from tests.apptest import tiny_model
from tests.photos import make_photo

# The shipped default (models/default/) was built and scored with all 62 validation photographs.
SHIPPED_VALIDATION = 62


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


def fake_report(files, metrics: dict) -> dict:
    """What ``evaluate_on`` returns, cut to what the recipe's choices read: ``metrics`` (mean
    CIEDE2000 and colourfulness) for the model, the same for the gray input."""
    return {"images": files, "mean": {"full": {"model": metrics, "grayscale": metrics}}}


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
        metrics = {  # a knee only ever costs here: it mutes and gains nothing
            "ciede2000": by_scale[scale] + model.chroma_knee / 10,
            "colourfulness": colour_at_1 * scale,
            "colourfulness_gt": 50.0,
        }
        return fake_report(files, metrics)

    monkeypatch.setattr(calibration, "evaluate_on", fake_evaluate)
    model = LoadedModel("x", None, "lab", 32, {})
    chosen, tried = calibrate_chroma(model, Photos([Path("c.png")], []))
    assert chosen == {"chroma_scale": 0.9, "chroma_knee": 0.0}
    no_knee = [t["chroma_scale"] for t in tried if t["chroma_knee"] == 0.0]
    assert no_knee == list(calibration.CHROMA_SCALES)
    assert [(t["chroma_knee"], t["chroma_scale"]) for t in tried[len(no_knee) :]] == [
        (knee, scale) for knee in calibration.CHROMA_KNEES for scale in calibration.KNEE_SCALES
    ]
    assert model.chroma_scale == 1.0 and model.chroma_knee == 0.0  # the model itself is left as it was
    colour_at_1 = 28.0  # a model that plays safe with brownish output: its chroma is raised
    assert calibrate_chroma(model, Photos([Path("c.png")], []))[0]["chroma_scale"] == 1.5


def test_a_knee_is_chosen_when_muting_faint_colours_beats_the_scale_alone(monkeypatch):
    def fake_evaluate(model, files, max_side=None):
        scale, knee = model.chroma_scale, model.chroma_knee
        # muting the faint colours costs a little colour and wins more error than the scale alone
        metrics = {
            "ciede2000": 10.0 + abs(scale - 1.15) - (0.3 if knee == 20.0 else 0.0),
            "colourfulness": 40.0 * scale * (1.0 - knee / 200),
            "colourfulness_gt": 50.0,
        }
        return fake_report(files, metrics)

    monkeypatch.setattr(calibration, "evaluate_on", fake_evaluate)
    model = LoadedModel("x", None, "lab", 32, {})
    chosen, tried = calibrate_chroma(model, Photos([Path("c.png")], []))
    assert chosen == {"chroma_scale": 1.15, "chroma_knee": 20.0}
    # the same gain at a knee that leaves too little colour is not taken
    assert (
        next(t for t in tried if t["chroma_knee"] == 20.0 and t["chroma_scale"] == 1.0)["colourfulness"] < 40
    )


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
        return fake_report(files, metrics)

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
        return fake_report(files, metrics)

    monkeypatch.setattr(calibration, "evaluate_on", fake_evaluate)
    model = tiny_model({"render_size": 32, "encoder": "mobilenet_v2", "flip_average": True})
    chosen, result = calibrated(model, Photos([Path("c.png")], []))
    assert (result["render_size"], result["flip_average"], result["chroma_scale"]) == (160, True, 0.9)
    assert (chosen.render_size, chosen.flip_average, chosen.chroma_scale) == (160, True, 0.9)
    assert result["calibration"]["ciede2000"] == pytest.approx(0.0)
    # Sizes are compared as the model runs without calibration (no flip, chroma 1); then flip
    # averaging at the chosen size; then the chroma scale with both.
    n = len(calibration.RENDER_SIZES)
    assert seen[:n] == [(size, False, 1.0) for size in calibration.RENDER_SIZES]
    assert seen[n : n + 2] == [(160, False, 1.0), (160, True, 1.0)]
    pairs = len(calibration.CHROMA_SCALES) + len(calibration.CHROMA_KNEES) * len(calibration.KNEE_SCALES)
    assert [s[:2] for s in seen[n + 2 :]] == [(160, True)] * pairs
    assert result["chroma_knee"] == chosen.chroma_knee == 0.0  # a knee only mutes: no gain here

    # The previous default is a rival only when none of today's scoring photographs trained it.
    manifest = [{"sha256": "a", "split": "train"}, {"sha256": "b", "split": "calibration"}]
    assert incumbent(tmp_path / "none", manifest) is None
    shipped = export_float16(tiny_model({"photos": manifest}), tmp_path / "default")
    assert incumbent(shipped, manifest).metadata["photos"] == manifest
    added = [*manifest, {"sha256": "c", "split": "validation"}, {"sha256": "d", "split": "train"}]
    assert incumbent(shipped, added) is not None  # photographs new to the sources: still fair
    # a photograph it was scored on now trains: still fair
    assert incumbent(shipped, [*manifest, {"sha256": "b", "split": "train"}]) is not None
    assert incumbent(shipped, [{**manifest[0], "split": "calibration"}, manifest[1]]) is None  # trained it
    assert incumbent(shipped, [{**manifest[0], "split": "validation"}]) is None
    unrecorded = export_float16(tiny_model({}), tmp_path / "unrecorded")
    assert incumbent(unrecorded, manifest) is None


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
        model.chroma_scale in {*calibration.CHROMA_SCALES, *calibration.KNEE_SCALES}
        and model.chroma_scale == meta["recipe"]["chroma_scale"]
    )
    assert model.chroma_knee in {0.0, *calibration.CHROMA_KNEES} and model.chroma_knee == meta["recipe"].get(
        "chroma_knee", 0.0
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
    # It takes colour hints (issue 17): without them it colours exactly as the automatic model, and
    # 10 hints from the truth bring the validation CIEDE2000 to at most 0.7 of it.
    assert model.hints and meta["hints"] is True
    curve = {c["hints"]: c for c in meta["metrics"]["validation_hints"]}
    assert set(curve) == {0, 1, 2, 5, 10, 20}
    assert curve[0]["ciede2000"] == pytest.approx(full["ciede2000"], abs=1e-3)
    assert curve[10]["ciede2000"] <= 0.7 * curve[0]["ciede2000"]
    assert curve[20]["ciede2000"] < curve[10]["ciede2000"] < curve[2]["ciede2000"] < curve[0]["ciede2000"]
    manifest = meta["photos"]
    assert {p["name"] for p in manifest if p["split"] == "validation"} == set(VALIDATION)
    assert all(p["sha256"] and p["author"] and p["license"] for p in manifest)
    photo = make_photo(90, 60, 4)
    out = colorize_array(model, photo)
    assert out.shape == photo.shape and out.std(axis=-1).mean() > 1.0  # coloured, not gray


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
    # today's sources hold a training photograph the previous default never saw, and it was trained
    # on one that is gone from them: its record must keep naming what its weights saw
    gone, new = (
        {**manifest[0], "sha256": sha, "split": "train", "name": f"train/{sha}.png"}
        for sha in ("gone", "new")
    )
    monkeypatch.setattr(recipe, "fetch_photos", lambda workdir: [*manifest, new])
    # one knee at two scales: the knee's way through calibration and export, at a third of the grid
    monkeypatch.setattr(calibration, "CHROMA_KNEES", (20.0,))
    monkeypatch.setattr(calibration, "KNEE_SCALES", (1.0, 1.15))
    store = ModelStore(workdir / "models")
    version = store.publish(tiny_model({}).generator, tiny_model({}).metadata)
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
    comparison["photos"] = [*manifest, new]
    previous = tiny_model({"photos": [gone, *manifest], "recipe": {"winner": "older"}})
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
    assert meta["photos"] == ([gone, *manifest] if best == recipe.PREVIOUS_DEFAULT else [*manifest, new])
    assert shipped["photos"] == [*manifest, new]  # the comparison records this run's photographs
    # the tiny model's U-Net encoder cannot take hints: said so, not failed
    assert "cannot take hints" in shipped["hints"]["skipped"] and not meta.get("hints")

    weights = np.load(out / "generator.weights.npz")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "comparison.json").write_text(__import__("json").dumps(shipped, default=str))
    monkeypatch.setattr(recipe, "write_old_photographs_sheet", lambda *args: None)  # needs gramps
    if best == recipe.PREVIOUS_DEFAULT:  # not made from today's photographs: only a rebuild replaces it
        with pytest.raises(RuntimeError, match="rebuild"):
            recipe.recalibrate_default(workdir, out, docs)
        return
    again = recipe.recalibrate_default(workdir, out, docs)
    assert again["recalibrated"] and again["shipped"] == best
    assert "calibrated again" in (docs / "comparison.md").read_text()
    after = np.load(out / "generator.weights.npz")
    assert all(np.array_equal(weights[k], after[k]) for k in weights.files)  # no training
    # A default made from other photographs cannot be recalibrated on these: rebuild it.
    monkeypatch.setattr(recipe, "fetch_photos", lambda workdir: manifest[:1])
    with pytest.raises(RuntimeError, match="rebuild"):
        recipe.recalibrate_default(workdir, out, docs)


def test_a_kept_previous_default_records_the_photographs_its_weights_were_trained_on():
    """Kept over a rebuild on more photographs, the previous default's metadata and manifest name its
    own training photographs (not the rebuild's) and today's scoring photographs."""
    from types import SimpleNamespace

    trained = [{"sha256": "a", "split": "train"}, {"sha256": "b", "split": "train"}]
    scored_then = [{"sha256": "c", "split": "calibration"}]
    today = [
        {"sha256": "a", "split": "train"},
        {"sha256": "n", "split": "train"},  # new to the sources: the previous default never saw it
        {"sha256": "c", "split": "calibration"},
        {"sha256": "m", "split": "calibration"},
        {"sha256": "v", "split": "validation"},
        {"sha256": "h", "split": "held out"},
    ]
    previous = SimpleNamespace(metadata={"photos": [*trained, *scored_then]})
    assert recipe.kept_photos(previous, today) == [*trained, *today[2:]]


def test_the_last_snapshots_averaged_are_one_more_snapshot_to_choose_from(tmp_path, monkeypatch):
    store = ModelStore(tmp_path / "models")
    model = tiny_model({})
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
        return fake_report(files, metrics)

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


def test_a_rebuild_can_compare_only_named_candidates(tmp_path, monkeypatch):
    trained = []
    metrics = {"ciede2000": 10.0, "colourfulness": 30.0, "colourfulness_gt": 50.0}

    def fake_scored_run(workdir, name, config, photos, average_last=0):
        trained.append(name)
        return {"name": name, "config": config.model_dump(), "version": 1, "step": 1, "calibration": metrics}

    monkeypatch.setattr(recipe, "fetch_photos", lambda workdir: [])
    monkeypatch.setattr(recipe, "scored_run", fake_scored_run)
    monkeypatch.setattr(recipe, "export_default", lambda workdir, comparison, out_dir, docs_dir: comparison)
    named = ["lab-128-w32-mnv2-l1w100", "lab-128-w32-mnv2-l1only"]
    comparison = recipe.build_default_model(tmp_path, 2, 3, tmp_path / "out", candidates=named)
    # in the recipe's order, then the winner's longer run; the comparison says it was narrowed
    assert trained == ["lab-128-w32-mnv2-l1only", "lab-128-w32-mnv2-l1w100", f"{comparison['winner']}-final"]
    assert comparison["narrowed_to"] == ["lab-128-w32-mnv2-l1only", "lab-128-w32-mnv2-l1w100"]
    trained.clear()
    whole = recipe.build_default_model(tmp_path, 2, 3, tmp_path / "out")
    assert trained[:-1] == list(CANDIDATES) and "narrowed_to" not in whole
    with pytest.raises(ValueError, match="no candidate lab-nope: the recipe's are seed-128-w32"):
        recipe.build_default_model(tmp_path, 2, 3, tmp_path / "out", candidates=["lab-nope"])


def test_the_default_model_command_names_the_candidates_when_one_is_unknown(tmp_path):
    from click.testing import CliRunner

    from cli.main import main

    result = CliRunner().invoke(
        main, ["default-model", "--workdir", str(tmp_path), "--candidate", "lab-nope"]
    )
    assert result.exit_code == 1 and "no candidate lab-nope: the recipe's are seed-128-w32" in result.output
    assert not any(tmp_path.iterdir())  # refused before fetching anything
