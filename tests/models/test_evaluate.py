"""Quality metrics against well-kept references, validation metrics per version, ``colorizer evaluate``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image
from skimage.color import rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cli import main
from common.settings import Settings
from models.colorize import colorize_array
from models.config import TrainConfig
from models.data import load_photo
from models.evaluate import (
    METRICS,
    colourfulness,
    evaluate_images,
    grayscale_of,
    score,
    square,
    summary,
)
from models.networks import build_generator
from models.store import ModelStore
from models.training import run_training
from service.app import create_app
from tests.photos import make_photo

# Observed on this machine: |tf - skimage| at most 6e-6 for SSIM and 3e-6 dB for PSNR (TensorFlow
# computes in float32, skimage in float64). The bounds leave room for other CPUs' float32 rounding
# yet catch a different SSIM definition: sample instead of population covariance moves it by 5e-4,
# a 7-pixel box window by 2e-3, sigma 1.0 by 2e-2 on these images.
SSIM_TOLERANCE = 5e-5
PSNR_TOLERANCE = 1e-4


def distorted(truth: np.ndarray, how: str, seed: int) -> np.ndarray:
    """``truth`` with one kind of damage a colorizer's output might show."""
    if how == "noise":
        noise = np.random.default_rng(seed).normal(0, 20, truth.shape)
        return np.clip(truth + noise, 0, 255).astype(np.uint8)
    if how == "gray":
        return grayscale_of(truth)
    if how == "shift":
        return np.roll(truth, 3, axis=1)
    # "blur": a 3-pixel average, different per channel
    total = truth.astype(np.int32) + np.roll(truth, 1, 0) + np.roll(truth, 1, 1)
    return (total // 3).astype(np.uint8)


# -- metrics against references --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["noise", "gray", "shift", "blur"])
@pytest.mark.parametrize("size", [(64, 48), (97, 31), (40, 40)])
def test_psnr_and_ssim_agree_with_skimage(size, how):
    truth = make_photo(*size, seed=size[0])
    output = distorted(truth, how, seed=size[1])
    scores = score(output, truth)
    expected_psnr = peak_signal_noise_ratio(truth, output, data_range=255)
    expected_ssim = structural_similarity(
        truth,
        output,
        channel_axis=-1,
        data_range=255,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert scores["psnr"] == pytest.approx(expected_psnr, abs=PSNR_TOLERANCE)
    assert scores["ssim"] == pytest.approx(expected_ssim, abs=SSIM_TOLERANCE)


def test_colourfulness_of_a_red_and_blue_image_matches_the_formula_by_hand():
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :10] = (255, 0, 0)
    image[:, 10:] = (0, 0, 255)
    # rg = R - G: 255 (red half), 0 (blue half) -> mean 127.5, std 127.5
    # yb = (R + G) / 2 - B: 127.5 (red half), -255 (blue half) -> mean -63.75, std 191.25
    # Hasler and Suesstrunk: sqrt(std_rg^2 + std_yb^2) + 0.3 * sqrt(mean_rg^2 + mean_yb^2)
    by_hand = math.sqrt(127.5**2 + 191.25**2) + 0.3 * math.sqrt(127.5**2 + 63.75**2)
    assert colourfulness(image) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(272.619, abs=1e-3)


def test_colourfulness_of_one_flat_colour_is_its_mean_term_only():
    image = np.full((8, 8, 3), (200, 100, 50), np.uint8)  # rg = 100, yb = 100, no spread
    assert colourfulness(image) == pytest.approx(0.3 * math.hypot(100, 100), rel=1e-12)


@pytest.mark.parametrize("level", [0, 77, 255])
def test_colourfulness_of_gray_is_zero(level):
    ramp = np.linspace(0, 255, 64).astype(np.uint8)[None, :].repeat(16, 0)
    assert colourfulness(np.repeat(ramp[..., None], 3, -1)) == 0.0
    assert colourfulness(np.full((4, 4, 3), level, np.uint8)) == 0.0


def test_grayscale_of_keeps_lab_lightness_and_has_no_chroma():
    rgb = make_photo(64, 48, seed=3)
    gray = grayscale_of(rgb)
    assert gray.shape == rgb.shape and gray.dtype == np.uint8
    lab_gray, lab = rgb2lab(gray), rgb2lab(rgb)
    # rounding to 8 bits moves L by at most ~0.2 and leaves under one unit of chroma
    assert np.abs(lab_gray[..., 0] - lab[..., 0]).max() < 0.5
    assert np.abs(lab_gray[..., 1:]).max() < 1.0
    assert np.abs(gray.astype(int) - gray[..., :1].astype(int)).max() <= 1  # R, G, B equal to a code value
    assert colourfulness(gray) < 0.5 < 100 < colourfulness(rgb)


def test_the_ground_truth_scores_perfectly_against_itself():
    truth = make_photo(48, 40, seed=2)
    scores = score(truth, truth)
    assert scores["psnr"] == 100.0  # infinite for identical images, capped so means stay finite
    assert scores["ciede2000"] == 0.0
    assert scores["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert scores["colourfulness_diff"] == 0.0


def test_evaluate_images_scores_the_grayscale_baseline_beside_the_model():
    photos = [(f"p{i}.png", make_photo(48 + 8 * i, 40, seed=i)) for i in range(3)]
    # an oracle colorizer: it knows each photograph (at both scales) from its grayscale version
    oracle = {}
    for _, rgb in photos:
        for truth in (square(rgb, 32), rgb):
            oracle[grayscale_of(truth).tobytes()] = truth
    report = evaluate_images(lambda gray: oracle[gray.tobytes()], photos, 32)

    assert [row["name"] for row in report["images"]] == ["p0.png", "p1.png", "p2.png"]
    assert report["images"][2]["width"] == 64 and report["images"][2]["height"] == 40
    for scale in ("model_size", "full"):
        model, baseline = report["mean"][scale]["model"], report["mean"][scale]["grayscale"]
        assert set(model) == set(baseline) == set(METRICS)
        assert model["psnr"] == 100.0 and model["ciede2000"] == 0.0
        assert baseline["colourfulness"] < 0.5 < 50 < baseline["colourfulness_gt"]
        assert baseline["ciede2000"] > 5 and baseline["psnr"] < 30
        assert baseline["colourfulness_diff"] == pytest.approx(-baseline["colourfulness_gt"], abs=0.5)
    per_image = [row["full"]["grayscale"]["ciede2000"] for row in report["images"]]
    assert report["mean"]["full"]["grayscale"]["ciede2000"] == pytest.approx(np.mean(per_image))
    headline = summary(report)
    assert headline["images"] == 3 and headline["psnr"] == 100.0
    assert headline["grayscale_ciede2000"] == round(report["mean"]["model_size"]["grayscale"]["ciede2000"], 4)


# -- validation metrics of published versions ---------------------------------------------------


def test_a_published_version_carries_validation_metrics_and_get_models_shows_them(
    dataset_dir, tmp_path, no_default
):
    settings = Settings(data_dir=dataset_dir, reload_interval=0.2)
    store = ModelStore(settings.models_dir)
    config = TrainConfig(
        dataset="tiny",
        image_size=32,
        width=4,
        steps=2,
        batch_size=2,
        publish_every=100,
        sample_every=100,
        seed=1,
    )
    result = run_training(config, data_dir=dataset_dir, job_dir=tmp_path / "job", store=store)
    assert result.published_versions == [1]
    metadata = store.get(1).metadata
    validation = metadata["metrics"]["validation"]
    held_out = metadata["dataset"]["validation_images"]
    assert validation["images"] == len(held_out) >= 1
    assert {f"grayscale_{m}" for m in METRICS} | set(METRICS) <= set(validation)
    assert 0 < validation["ciede2000"] and validation["psnr"] < 100
    assert validation["grayscale_colourfulness"] < 0.5

    # the numbers are the published generator's own, on the held-out photographs
    folder = dataset_dir / "datasets" / "tiny"
    photos = [(name, load_photo(folder / name, 64)) for name in held_out]
    published = store.load(1)
    again = summary(
        evaluate_images(lambda g: colorize_array(published, g), photos, 32, full_resolution=False)
    )
    for key in ("psnr", "ciede2000", "colourfulness", "grayscale_ciede2000"):
        assert validation[key] == pytest.approx(again[key], abs=2e-3), key

    with TestClient(create_app(settings)) as client:
        listed = client.get("/models").json()["versions"]
    assert [v["version"] for v in listed] == [1]
    assert listed[0]["metrics"]["validation"] == validation
    assert listed[0]["metadata"]["metrics"]["validation"] == validation
    assert set(listed[0]["metrics"]["train"]) >= {"g_loss", "d_loss", "l1"}


# -- colorizer evaluate ------------------------------------------------------------------------------


@pytest.fixture
def photos(tmp_path) -> Path:
    """Three colour photographs (one in a subfolder) and a file that is not one."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(make_photo(48, 40, seed=1)).save(folder / "a.png")
    Image.fromarray(make_photo(60, 44, seed=2)).save(folder / "b.jpg", quality=95)
    Image.fromarray(make_photo(40, 52, seed=3)).save(folder / "sub" / "c.png")
    (folder / "notes.txt").write_text("not a photograph")
    return folder


def publish_tiny(data_dir: Path, seed: int) -> int:
    import keras

    keras.utils.set_random_seed(seed)
    generator = build_generator(32, 1, 2, width=4)
    metadata = {"preset": "lab", "image_size": 32, "width": 4}
    return ModelStore(data_dir / "models").publish(generator, metadata)


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_evaluate_prints_tables_with_the_baseline_and_writes_json_markdown_and_sheet(
    data_dir, photos, tmp_path
):
    publish_tiny(data_dir, seed=1)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(
        "evaluate", "--model", "1", "--images", str(photos),
        "--json", str(out / "r.json"), "--markdown", str(out / "r.md"), "--sheet", str(out / "sheet.png"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    document = json.loads((out / "r.json").read_text())
    assert document["models"] == ["version 1"] and document["skipped"] == {}
    report = document["reports"]["version 1"]
    assert report["model"] == {"label": "version 1", "version": 1, "preset": "lab", "image_size": 32}
    assert [row["name"] for row in report["images"]] == ["a.png", "b.jpg", "sub/c.png"]
    for row in report["images"]:
        for scale in ("model_size", "full"):
            assert set(row[scale]) == {"model", "grayscale"}
            assert set(row[scale]["model"]) == set(row[scale]["grayscale"]) == set(METRICS)
    assert set(report["mean"]) == {"model_size", "full"}
    full_psnr = [row["full"]["model"]["psnr"] for row in report["images"]]
    assert report["mean"]["full"]["model"]["psnr"] == pytest.approx(np.mean(full_psnr))

    stdout = result.stdout
    assert (out / "r.md").read_text() == stdout
    assert "[1/3]" not in stdout and "[3/3] sub/c.png" in result.stderr  # progress on stderr only
    lines = stdout.splitlines()
    assert sum(line.startswith("| sub/c.png | 40x52 | version 1 |") for line in lines) == 1
    assert sum(line.startswith("| sub/c.png | 40x52 | grayscale input (baseline) |") for line in lines) == 1
    assert "## Means at full resolution" in stdout and "## Means at the model's own size" in stdout
    # A subfolder is a category: the table per category, photographs at the top level apart.
    assert "## By category: version 1, at full resolution" in stdout
    assert "| sub | 1 |" in stdout and "| uncategorised | 2 |" in stdout and "| **all** | 3 |" in stdout
    means = [line for line in lines if line.startswith("| grayscale input (baseline) |")]
    assert len(means) == 2  # one baseline row per means table
    baseline_ciede = f"{report['mean']['full']['grayscale']['ciede2000']:.2f}"
    assert means[-1].split("|")[4].strip() == baseline_ciede

    with Image.open(out / "sheet.png") as sheet:
        assert sheet.format == "PNG"
        assert len(sheet.getcolors(1 << 20) or []) > 100  # photographs, not a blank page


def test_evaluate_compare_puts_two_models_side_by_side(data_dir, photos, tmp_path):
    publish_tiny(data_dir, seed=1)
    second = publish_tiny(data_dir, seed=2)
    second_folder = str(data_dir / "models" / str(second))  # a version folder given by path
    result = run_cli(
        "evaluate", "--compare", "1", second_folder, "--images", str(photos), "--no-full",
        "--json", str(tmp_path / "c.json"), "--sheet", str(tmp_path / "sheet.png"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    document = json.loads((tmp_path / "c.json").read_text())
    assert document["models"] == ["version 1", second_folder]
    first, other = (document["reports"][label] for label in document["models"])
    assert set(first["mean"]) == set(other["mean"]) == {"model_size"}
    assert other["model"]["version"] == second_folder
    # same photographs, same baseline; different generators, different colours
    assert first["mean"]["model_size"]["grayscale"] == other["mean"]["model_size"]["grayscale"]
    assert (
        first["mean"]["model_size"]["model"]["ciede2000"] != other["mean"]["model_size"]["model"]["ciede2000"]
    )

    lines = result.stdout.splitlines()
    table_start = lines.index("## Means at the model's own size (centre square)") + 2
    table = [line.split("|")[1].strip() for line in lines[table_start + 2 : table_start + 5]]
    assert table == ["version 1", second_folder, "grayscale input (baseline)"]
    assert "## Means at full resolution" not in result.stdout
    assert sum(line.startswith("| a.png |") for line in lines) == 3  # two models + baseline
    assert (tmp_path / "sheet-version-1.png").is_file()
    assert len(list(tmp_path.glob("sheet-*.png"))) == 2


def test_evaluate_needs_one_model_and_names_a_missing_one(data_dir, photos):
    publish_tiny(data_dir, seed=1)
    neither = CliRunner().invoke(main, ["evaluate", "--images", str(photos)])
    assert neither.exit_code == 2 and "--model or --compare" in neither.output
    unknown = CliRunner().invoke(main, ["evaluate", "--model", "9", "--images", str(photos)])
    assert unknown.exit_code == 1 and "version 9 does not exist" in unknown.output
    no_default = CliRunner().invoke(main, ["evaluate", "--model", "default", "--images", str(photos)])
    assert no_default.exit_code == 1 and "no default model" in no_default.output
    odd = CliRunner().invoke(main, ["evaluate", "--model", "nonsense", "--images", str(photos)])
    assert odd.exit_code == 2 and "not a version number" in odd.output


# -- per category -----------------------------------------------------------------------------------


def test_by_category_reports_each_category_and_the_share_of_photographs_won():
    from models.evaluate import by_category, category_table

    photos = [
        (f"{c}/p{i}.png", make_photo(48 + 8 * i, 40, seed=i))
        for i, c in enumerate(["people", "people", "animal"])
    ]
    # Right on the first photograph (an oracle), the gray input itself on the others (no win).
    oracle = {grayscale_of(t).tobytes(): t for t in (square(photos[0][1], 32), photos[0][1])}
    report = evaluate_images(lambda gray: oracle.get(gray.tobytes(), gray), photos, 32)
    assert [row["category"] for row in report["images"]] == ["people", "people", "animal"]

    table = by_category(report)
    assert list(table) == ["animal", "people", "all"]
    assert [table[c]["images"] for c in table] == [1, 2, 3]
    assert table["people"]["won"] == 0.5 and table["animal"]["won"] == 0.0
    assert table["all"]["won"] == pytest.approx(1 / 3)
    gray_people = [row["full"]["grayscale"]["ciede2000"] for row in report["images"][:2]]
    assert table["people"]["grayscale_ciede2000"] == pytest.approx(np.mean(gray_people))
    assert table["people"]["ciede2000"] == pytest.approx(gray_people[1] / 2)  # 0 on the oracle's
    assert table["all"]["colourfulness_gt"] == pytest.approx(
        report["mean"]["full"]["model"]["colourfulness_gt"]
    )
    markdown = category_table(report)
    assert "| people | 2 |" in markdown and "| 50% |" in markdown and "| **all** | 3 |" in markdown


def test_evaluate_with_hints_scores_a_hint_model_given_true_colours_and_refuses_others(
    data_dir, photos, tmp_path
):
    from tests.apptest import publish_tiny_hints_to

    store = ModelStore(data_dir / "models")
    hinted = publish_tiny_hints_to(store)
    plain = publish_tiny(data_dir, seed=1)
    scores = {}
    for count in (0, 20):
        out = tmp_path / f"r{count}.json"
        args = ["evaluate", "--model", str(hinted), "--images", str(photos), "--no-full", "--json", str(out)]
        result = run_cli(*args, "--hints", str(count))
        assert result.exit_code == 0, result.output
        document = json.loads(out.read_text())
        assert document["hints"] == count
        scores[count] = document["reports"][f"version {hinted}"]["mean"]["model_size"]["model"]["ciede2000"]
    assert scores[20] < scores[0]  # the true colours, even spread a few pixels, bring it closer
    refused = CliRunner().invoke(
        main, ["evaluate", "--model", str(plain), "--images", str(photos), "--hints", "3"]
    )
    assert refused.exit_code == 2 and "takes no colour hints" in refused.output
