"""``colorizer colorize``: a folder of photographs through the inference pipeline, with every
unreadable file reported, subfolders mirrored, finished outputs skipped, orientation, colour
profiles and transparency handled."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image, ImageCms, ImageOps

from cli import main
from models.store import ModelStore
from tests.photos import adobe_rgb_like_profile, make_photo


def publish_tiny_model_to(store: ModelStore) -> int:
    """Publish a tiny untrained lab generator (32 px, width 4) into ``store``; returns its version."""
    from models.networks import build_generator

    generator = build_generator(32, 1, 2, width=4)
    return store.publish(generator, {"preset": "lab", "image_size": 32})


def publish_tiny_model(data_dir: Path) -> int:
    return publish_tiny_model_to(ModelStore(data_dir / "models"))


# --- colorize ------------------------------------------------------------------------------


def test_colorize_writes_every_readable_image_and_reports_the_rest(data_dir, tmp_path):
    version = publish_tiny_model(data_dir)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(make_photo(50, 40, seed=1)).convert("L").save(photos / "a.png")
    Image.fromarray(make_photo(30, 70, seed=2)).save(photos / "b.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "notes.txt").write_text("not an image; not picked up from a folder")
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(make_photo(20, 20, seed=3)).save(other / "a.webp")  # same stem as a.png
    out_dir = tmp_path / "out"

    result = CliRunner().invoke(main, ["colorize", str(photos), str(other / "a.webp"), "--out", str(out_dir)])

    assert result.exit_code == 1, result.output  # one file failed
    assert f"failed {photos / 'broken.jpg'}: the image" in result.output
    assert f"colorized 3 of 4 file(s) into {out_dir} with model version {version}; 1 failed" in result.output
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == ["a-1.png", "a.png", "b.png"]
    sizes = {name: Image.open(out_dir / name).size for name in written}
    assert sizes == {"a.png": (50, 40), "b.png": (30, 70), "a-1.png": (20, 20)}
    assert all(Image.open(out_dir / name).mode == "RGB" for name in written)


def test_colorize_keeps_the_input_luminance_and_honours_format(data_dir, tmp_path):
    publish_tiny_model(data_dir)
    gray = make_photo(40, 40, seed=4)
    Image.fromarray(gray).convert("L").save(tmp_path / "g.png")
    result = CliRunner().invoke(
        main, ["colorize", str(tmp_path / "g.png"), "-o", str(tmp_path / "o"), "--format", "jpeg"]
    )
    assert result.exit_code == 0, result.output
    out = Image.open(tmp_path / "o" / "g.jpg")
    assert out.format == "JPEG" and out.size == (40, 40)
    lum_in = np.asarray(Image.open(tmp_path / "g.png"), dtype=float)
    lum_out = np.asarray(out.convert("L"), dtype=float)
    assert np.abs(lum_in - lum_out).mean() < 6  # colour added, luminance kept (JPEG loses a little)


def test_colorize_without_a_model_says_how_to_get_one(data_dir, tmp_path):
    Image.fromarray(make_photo(20, 20, seed=5)).save(tmp_path / "x.png")
    result = CliRunner().invoke(main, ["colorize", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "no model in" in result.output and "colorizer train" in result.output


def test_colorize_rejects_an_unknown_version_and_a_bad_render_size(data_dir, tmp_path):
    publish_tiny_model(data_dir)
    Image.fromarray(make_photo(20, 20, seed=6)).save(tmp_path / "x.png")
    args = ["colorize", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]
    unknown = CliRunner().invoke(main, [*args, "--model", "7"])
    assert unknown.exit_code == 1 and "model version 7 does not exist" in unknown.output
    bad_size = CliRunner().invoke(main, [*args, "--render-size", "33"])
    assert bad_size.exit_code == 2 and "--render-size" in bad_size.output
    assert not (tmp_path / "o").exists()


def colorize_folder(*args: str) -> tuple[int, str]:
    """Run ``colorizer colorize`` in process; (exit code, everything it printed)."""
    result = CliRunner().invoke(main, ["colorize", *args])
    return result.exit_code, result.output


def lab_lightness(rgb: np.ndarray) -> np.ndarray:
    from models.color import rgb_to_lab

    return rgb_to_lab(rgb.astype(np.float32) / 255.0)[..., 0].numpy()


def test_colorize_mirrors_subfolders_with_recursive_and_reports_damaged_files(data_dir, tmp_path):
    publish_tiny_model(data_dir)
    photos = tmp_path / "photos"
    (photos / "2024" / "june").mkdir(parents=True)
    (photos / "scans").mkdir()
    Image.fromarray(make_photo(40, 30, seed=1)).save(photos / "top.jpg")
    Image.fromarray(make_photo(30, 40, seed=2)).save(photos / "2024" / "june" / "beach.png")
    Image.fromarray(make_photo(36, 36, seed=3)).convert("L").save(photos / "scans" / "old.tif")
    whole = io.BytesIO()
    Image.fromarray(make_photo(64, 64, seed=4)).save(whole, "JPEG")
    (photos / "scans" / "cut.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    out_dir = tmp_path / "out"

    code, output = colorize_folder(str(photos), "--out", str(out_dir), "--recursive")

    assert code == 1, output
    assert f"failed {photos / 'scans' / 'cut.jpg'}: the image" in output and "damaged" in output
    assert "colorized 3 of 4 file(s)" in output and "1 failed" in output
    written = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file())
    assert written == ["2024/june/beach.png", "scans/old.png", "top.png"]
    assert Image.open(out_dir / "2024" / "june" / "beach.png").size == (30, 40)
    assert Image.open(out_dir / "scans" / "old.png").mode == "RGB"

    flat = tmp_path / "flat"
    code, output = colorize_folder(str(photos), "--out", str(flat))
    assert code == 0, output
    assert sorted(p.name for p in flat.rglob("*")) == ["top.png"]  # without --recursive: the top only


def test_colorize_a_second_run_skips_finished_outputs_but_not_partial_ones(data_dir, tmp_path):
    publish_tiny_model(data_dir)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(["a", "b", "c"]):
        Image.fromarray(make_photo(40, 30, seed=i)).save(photos / f"{name}.jpg")
    out_dir = tmp_path / "out"
    code, output = colorize_folder(str(photos), "-o", str(out_dir))
    assert code == 0 and "colorized 3 of 3 file(s)" in output, output
    finished = (out_dir / "a.png").stat().st_mtime_ns

    # a run killed while writing b.png: the half file sits under its temporary name
    (out_dir / "b.png").unlink()
    (out_dir / ".b.png.part").write_bytes(b"\x89PNG\r\n\x1a\n half a file")
    code, output = colorize_folder(str(photos), "-o", str(out_dir))

    assert code == 0, output
    assert "colorized 1 of 3 file(s)" in output
    assert "skipped 2 whose output already exists" in output
    assert (out_dir / "a.png").stat().st_mtime_ns == finished
    assert Image.open(out_dir / "b.png").size == (40, 30)
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.png", "b.png", "c.png"]  # no .part left

    code, output = colorize_folder(str(photos), "-o", str(out_dir))
    assert code == 0 and f"nothing to do: the 3 output(s) exist in {out_dir}" in output, output

    code, output = colorize_folder(str(photos), "-o", str(out_dir), "--overwrite")
    assert code == 0 and "colorized 3 of 3 file(s)" in output and "skipped" not in output, output
    assert (out_dir / "a.png").stat().st_mtime_ns != finished


def test_colorize_writes_an_exif_rotated_jpeg_upright(data_dir, tmp_path):
    publish_tiny_model(data_dir)
    stored = make_photo(60, 20, seed=7)
    stored[:, :30] //= 4  # dark left half: where it ends up shows the rotation
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed a quarter turn clockwise: portrait
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", quality=95, exif=exif)

    code, output = colorize_folder(str(tmp_path / "rotated.jpg"), "-o", str(tmp_path / "out"))

    assert code == 0, output
    out = Image.open(tmp_path / "out" / "rotated.png")
    assert out.size == (20, 60)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "rotated.jpg")).convert("RGB"))
    assert np.abs(lab_lightness(np.asarray(out)) - lab_lightness(upright)).mean() < 3
    lightness = lab_lightness(np.asarray(out))
    assert lightness[:30].mean() < lightness[30:].mean() - 10  # the dark half is now on top


def test_colorize_converts_an_embedded_icc_profile_to_srgb(data_dir, tmp_path):
    publish_tiny_model(data_dir)
    profile = adobe_rgb_like_profile()
    assert "Adobe RGB-like" in ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile)))
    patches = np.zeros((32, 48, 3), np.uint8)
    patches[:, :16] = (200, 30, 30)
    patches[:, 16:32] = (30, 200, 30)
    patches[:, 32:] = (30, 30, 200)
    tagged = Image.fromarray(patches)
    tagged.save(tmp_path / "tagged.png", icc_profile=profile)
    srgb = ImageCms.profileToProfile(
        tagged, ImageCms.ImageCmsProfile(io.BytesIO(profile)), ImageCms.createProfile("sRGB")
    )
    srgb.save(tmp_path / "converted.png")  # what the tagged file looks like, as plain sRGB
    tagged.save(tmp_path / "untagged.png")  # the same numbers read as sRGB: the wrong colours

    code, output = colorize_folder(str(tmp_path), "-o", str(tmp_path / "out"))

    assert code == 0, output
    result = {
        name: np.asarray(Image.open(tmp_path / "out" / f"{name}.png")).astype(int)
        for name in ("tagged", "converted", "untagged")
    }
    assert np.abs(result["tagged"] - result["converted"]).max() <= 1
    assert np.abs(result["tagged"] - result["untagged"]).mean() > 5


def test_colorize_carries_transparency_to_png_and_webp_but_not_jpeg(data_dir, tmp_path):
    publish_tiny_model(data_dir)
    rgba = np.dstack([make_photo(40, 30, seed=8), np.full((30, 40), 255, np.uint8)])
    rgba[:, :10, 3] = 0  # a transparent strip
    rgba[:, 10:20, 3] = 128  # and a half-transparent one
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")

    for fmt in ("png", "webp", "jpeg"):
        code, output = colorize_folder(
            str(tmp_path / "cutout.png"), "-o", str(tmp_path / fmt), "--format", fmt
        )
        assert code == 0, output
    png = Image.open(tmp_path / "png" / "cutout.png")
    assert png.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(png)[..., 3], rgba[..., 3])
    webp = Image.open(tmp_path / "webp" / "cutout.webp")
    assert webp.mode == "RGBA" and np.asarray(webp)[:, :10, 3].max() == 0
    assert Image.open(tmp_path / "jpeg" / "cutout.jpg").mode == "RGB"


def test_colorize_model_option_takes_default_and_latest_falls_back_to_it(data_dir, tmp_path, monkeypatch):
    from common.settings import get_settings

    Image.fromarray(make_photo(20, 20, seed=9)).save(tmp_path / "x.png")
    args = [str(tmp_path / "x.png"), "-o", str(tmp_path / "o")]
    code, output = colorize_folder(*args, "--model", "default")
    assert code == 1 and "no default model is installed" in output

    shelf = ModelStore(tmp_path / "packaged")
    monkeypatch.setenv("COLORIZER_DEFAULT_MODEL_DIR", str(shelf.root / str(publish_tiny_model_to(shelf))))
    get_settings.cache_clear()
    code, output = colorize_folder(*args, "--model", "default")
    assert code == 0 and "with model version default" in output, output
    assert (tmp_path / "o" / "x.png").is_file()
    code, output = colorize_folder(*args, "--model", "latest", "--overwrite")
    assert code == 0 and "using the packaged default model" in output and "version default" in output
    version = publish_tiny_model(data_dir)
    code, output = colorize_folder(*args, "--overwrite")
    assert code == 0 and f"with model version {version}" in output, output
    code, output = colorize_folder(*args, "--model", "newest", "--overwrite")
    assert code == 2 and "not a version number, 'latest' or 'default'" in output


def test_colorize_takes_hints_for_one_photograph_or_by_name_and_refuses_them_for_a_plain_model(
    data_dir, tmp_path
):
    import json

    from tests.apptest import publish_tiny_hints_to

    store = ModelStore(data_dir / "models")
    hinted = publish_tiny_hints_to(store)
    plain_version = publish_tiny_model_to(store)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 96), dtype=np.uint8), "L").save(photo)
    points = [{"x": 10, "y": 12, "color": "#c81e14", "radius": 2}]
    (tmp_path / "one.json").write_text(json.dumps(points))
    (tmp_path / "named.json").write_text(json.dumps({"photo.png": points}))
    runner = CliRunner()
    outputs = {}
    for name, extra in {
        "none": [],
        "one": ["--hints", "one.json"],
        "named": ["--hints", "named.json"],
    }.items():
        args = ["colorize", str(photo), "--out", str(tmp_path / name), "--model", str(hinted)]
        result = runner.invoke(main, args + [str(tmp_path / a) if a.endswith(".json") else a for a in extra])
        assert result.exit_code == 0, result.output
        outputs[name] = np.asarray(Image.open(tmp_path / name / "photo.png").convert("RGB")).astype(int)
    np.testing.assert_array_equal(outputs["one"], outputs["named"])
    difference = np.abs(outputs["one"] - outputs["none"]).sum(axis=-1)
    assert difference[6:18, 4:16].max() > 5 and difference[40:, 50:].max() == 0

    refused = runner.invoke(
        main,
        ["colorize", str(photo), "--out", str(tmp_path / "x"), "--model", str(plain_version)]
        + ["--hints", str(tmp_path / "one.json")],
    )
    assert refused.exit_code == 2 and "takes no colour hints" in refused.output
    (tmp_path / "bad.json").write_text(json.dumps({"other.png": points}))
    unknown = runner.invoke(
        main, ["colorize", str(photo), "--out", str(tmp_path / "y"), "--hints", str(tmp_path / "bad.json")]
    )
    assert unknown.exit_code == 2 and "hints for photographs not given: other.png" in unknown.output
