"""The default model's photographs: Qt resource bundles, the checks that drop drawings, gray,
tiny and duplicate pictures, credits from debian/copyright, and the whole collection from a real
.deb built here with dpkg-deb."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recipe.catalogue import GRAMPS_COLOUR_PORTRAITS, SOURCES, Source
from recipe.photo_sources import (
    collect,
    credit,
    difference_hash,
    flat_share,
    paste_on_scene,
    read_rcc,
    spdx_credit,
    upright,
)
from tests.photos import make_photo


def build_rcc(files: dict[str, tuple[bytes, bool]]) -> bytes:
    """A Qt resource bundle (binary format 2) of ``files`` (path -> (data, compressed)): the tree,
    names and payload sections as Qt's rcc writes them, for read_rcc to parse back."""
    tree: dict = {}
    for path, content in files.items():
        node = tree
        *dirs, leaf = path.split("/")
        for part in dirs:
            node = node.setdefault(part, {})
        node[leaf] = content
    names, payload, nodes = bytearray(), bytearray(), []

    def name_offset(name: str) -> int:
        offset = len(names)
        encoded = name.encode("utf-16-be")
        names.extend(struct.pack(">HI", len(name), 0) + encoded)
        return offset

    # Breadth-first, children of a directory contiguous: the layout rcc uses.
    nodes.append(None)  # the root, filled in below
    queue = [(0, "", tree)]
    while queue:
        index, name, children = queue.pop(0)
        first = len(nodes)
        nodes.extend([None] * len(children))
        for i, (child, value) in enumerate(sorted(children.items())):
            if isinstance(value, dict):
                queue.append((first + i, child, value))
                continue
            data, compressed = value
            blob = struct.pack(">I", len(data)) + zlib.compress(data) if compressed else data
            offset = len(payload)
            payload.extend(struct.pack(">I", len(blob)) + blob)
            nodes[first + i] = struct.pack(
                ">IHHHIQ", name_offset(child), 1 if compressed else 0, 0, 0, offset, 0
            )
        nodes[index] = struct.pack(">IHIIQ", name_offset(name) if index else 0, 2, len(children), first, 0)
    tree_bytes = b"".join(nodes)
    header = 20
    tree_at, payload_at = header, header + len(tree_bytes)
    names_at = payload_at + len(payload)
    return b"qres" + struct.pack(">4I", 2, tree_at, payload_at, names_at) + tree_bytes + payload + names


def png_bytes(rgb: np.ndarray, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_read_rcc_gives_back_every_file_plain_or_compressed():
    files = {
        "game/src/activities/erase/resource/cat.webp": (b"cat pixels" * 50, True),
        "game/src/activities/erase/resource/dog.png": (b"dog", False),
        "game/top.txt": (b"hello", False),
    }
    found = dict(read_rcc(build_rcc(files)))
    assert found == {path: data for path, (data, _) in files.items()}


def test_read_rcc_refuses_what_is_not_a_bundle():
    with pytest.raises(ValueError, match="not a Qt resource bundle"):
        list(read_rcc(b"PK\x03\x04 a zip file"))


def test_a_drawing_is_flat_and_a_photograph_is_not():
    drawing = np.zeros((60, 40, 3), np.uint8)
    drawing[:30] = (250, 200, 10)
    drawing[30:] = (20, 120, 200)
    photo = make_photo(40, 60, 1)
    assert flat_share(drawing) > 0.9
    assert flat_share(photo) < 0.05
    # Only the cut-out's own pixels count: a transparent (flat) surround says nothing.
    mask = np.zeros((60, 40), bool)
    mask[10:50, 10:30] = True
    framed = np.zeros_like(photo)
    framed[mask] = photo[mask]
    assert flat_share(framed) > 0.5 and flat_share(framed, mask) < 0.05


def test_the_same_picture_at_another_size_hashes_alike_and_another_does_not():
    photo = make_photo(160, 120, 3)
    half = np.asarray(Image.fromarray(photo).resize((80, 60), Image.Resampling.LANCZOS))
    other = np.ascontiguousarray(np.rot90(photo, 2))
    assert (difference_hash(photo) ^ difference_hash(half)).bit_count() <= 6
    assert (difference_hash(photo) ^ difference_hash(other)).bit_count() > 20


COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pictures

Files: *
Copyright: 2020 The Picture Team
           2021 Someone Else
License: GPL-3+

Files: src/photos/cat.jpg src/photos/dog*.jpg
Copyright: Jane Doe
License: CC-BY-SA-3.0

License: GPL-3+
 The GPL.

License: CC-BY-SA-3.0
 The CC licence.
"""


def parsed_copyright(tmp_path: Path):
    from debian.copyright import Copyright

    path = tmp_path / "copyright"
    path.write_text(COPYRIGHT)
    with open(path) as fh:
        return Copyright(fh, strict=False)


def test_credit_finds_the_paragraph_of_a_converted_picture(tmp_path):
    copyright = parsed_copyright(tmp_path)
    # The package ships cat.webp; debian/copyright names the upstream cat.jpg.
    assert credit(copyright, "pkg/src/photos/cat.webp", "pkg/") == ("Jane Doe", "CC-BY-SA-3.0")
    assert credit(copyright, "pkg/src/photos/dog2.jpg", "pkg/") == ("Jane Doe", "CC-BY-SA-3.0")
    author, licence = credit(copyright, "pkg/src/other/tree.png", "pkg/")
    assert author == "2020 The Picture Team and 1 others (debian/copyright)" and licence == "GPL-3+"


def test_a_cut_out_is_pasted_whole_onto_the_scene():
    person = np.full((90, 40, 3), (200, 30, 30), np.uint8)
    mask = np.ones((90, 40), bool)
    scene = make_photo(300, 200, 2)
    out = paste_on_scene(person, mask, scene, seed=5)
    assert out.shape == (256, 256, 3)
    red = np.all(np.abs(out.astype(int) - (200, 30, 30)) < 8, axis=-1)
    assert 0.05 < red.mean() < 0.6  # the person is there, on a scene
    assert np.array_equal(out, paste_on_scene(person, mask, scene, seed=5))  # the same every run


def package_root(tmp_path: Path, name: str, version: str, copyright_text: str) -> Path:
    """The folder dpkg-deb builds package ``name`` from: its control file and debian/copyright."""
    root = tmp_path / "pkgroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        f"Description: test {name}\n"
    )
    (root / "usr/share/doc" / name).mkdir(parents=True)
    (root / "usr/share/doc" / name / "copyright").write_text(copyright_text)
    return root


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian or Ubuntu)")
def test_collect_keeps_photographs_and_drops_gray_tiny_drawn_and_duplicate_ones(tmp_path):
    root = package_root(tmp_path, "pictures", "1.2-3", COPYRIGHT)
    photos = root / "usr/share/pictures/src/photos"
    photos.mkdir(parents=True)
    photo = make_photo(240, 180, 1)
    Image.fromarray(photo).save(photos / "cat.jpg", quality=95)
    Image.fromarray(photo).resize((224, 168)).save(photos / "cat-small.png")  # the same picture
    Image.fromarray(make_photo(240, 180, 7)[::-1].copy()).save(photos / "dog1.png")
    gray = np.repeat(make_photo(240, 180, 2).mean(axis=-1, keepdims=True), 3, axis=-1).astype(np.uint8)
    Image.fromarray(gray).save(photos / "gray.png")
    Image.fromarray(make_photo(100, 80, 3)).save(photos / "tiny.png")
    drawing = np.zeros((180, 240, 3), np.uint8)
    drawing[:, :120] = (240, 30, 30)
    drawing[:, 120:] = (30, 30, 240)
    Image.fromarray(drawing).save(photos / "drawing.png")
    (photos / "notes.txt").write_text("not a picture")
    bundle = {"app/src/photos/rabbit.png": (png_bytes(make_photo(220, 170, 4)), True)}
    (root / "usr/share/pictures/bundle.rcc").write_bytes(build_rcc(bundle))
    cutouts = root / "usr/share/pictures/people"
    cutouts.mkdir(parents=True)
    rgba = np.zeros((120, 60, 4), np.uint8)
    rgba[..., :3] = make_photo(60, 120, 5)
    rgba[10:110, 10:50, 3] = 255
    Image.fromarray(rgba, "RGBA").save(cutouts / "person.png")
    (root / "usr/share/pictures/zoo").mkdir(parents=True)  # a source added later
    Image.fromarray(make_photo(230, 175, 8)).save(root / "usr/share/pictures/zoo/boat.png")
    workdir = tmp_path / "work"
    (workdir / "debs").mkdir(parents=True)
    subprocess.run(
        [
            "dpkg-deb",
            "--build",
            "--root-owner-group",
            str(root),
            str(workdir / "debs" / "pictures_1.2-3_all.deb"),
        ],
        check=True,
        capture_output=True,
    )
    sources = [
        Source("pictures", "usr/share/pictures/src/photos/*", strip="usr/share/pictures/"),
        Source("pictures", "*/photos/*", rcc="usr/share/pictures/bundle.rcc", strip="app/"),
        Source("pictures", "usr/share/pictures/people/*", cutout=True),
    ]
    collected = collect(workdir, tmp_path / "out", sources)
    by_name = {p["name"]: p for p in collected.photos}
    assert sorted(by_name) == [
        "pictures/bundle/app/src/photos/rabbit.png",
        "pictures/usr/share/pictures/people/person.png",
        "pictures/usr/share/pictures/src/photos/cat.jpg",  # the larger of the two copies
        "pictures/usr/share/pictures/src/photos/dog1.png",
    ]
    assert dict(collected.skipped) == {
        "duplicate": 1,
        "nearly gray": 1,
        "smaller than 160 px": 1,
        "drawing": 1,
    }
    cat = by_name["pictures/usr/share/pictures/src/photos/cat.jpg"]
    assert cat["author"] == "Jane Doe" and cat["license"] == "CC-BY-SA-3.0"
    assert cat["version"] == "1.2-3" and len(cat["sha256"]) == 64 and cat["size"] == [240, 180]
    assert by_name["pictures/bundle/app/src/photos/rabbit.png"]["license"] == "GPL-3+"
    person = by_name["pictures/usr/share/pictures/people/person.png"]
    assert person["kind"] == "cut-out on a scene"
    for entry in collected.photos:
        with Image.open(tmp_path / "out" / entry["file"]) as image:
            assert image.mode == "RGB" and min(image.size) >= 160
    assert (workdir / "licenses" / "pictures.copyright").read_text() == COPYRIGHT
    # A source added later that offers no scenes joins the photographs and leaves the composite as
    # it was (the person's hash picks the third of three scenes, the dog; of four, the boat).
    later = collect(
        workdir, tmp_path / "out2", [*sources, Source("pictures", "usr/share/pictures/zoo/*", scene=False)]
    )
    assert len(later.photos) == len(collected.photos) + 1
    assert (tmp_path / "out2" / person["file"]).read_bytes() == (
        tmp_path / "out" / person["file"]
    ).read_bytes()


def test_the_sources_offering_scenes_are_the_ones_the_composites_were_made_on():
    # A new scene moves every cut-out onto another one (``Source.scene``): a source added to the
    # catalogue offers none, or every composite, validation's people among them, changes.
    scenes = [s for s in SOURCES if s.scene and not s.cutout]
    assert len(scenes) == 44
    assert sorted({s.package for s in scenes}) == [
        "forensics-samples-files",
        "gcompris-qt-data",
        "gnome-control-center-data",
        "gramps",
        "hugin-data",
        "kodi-data",
        "kphotoalbum",
        "libjs-jquery-backstretch",
        "libjxl-testdata",
        "lomiri-wallpapers-16.04",
        "lomiri-wallpapers-20.04",
        "lxqt-themes",
        "mate-backgrounds",
        "palapeli-data",
        "plasma-workspace-data",
        "plasma-workspace-wallpapers",
        "psychtoolbox-3-common",
        "scratch",
        "scribus-template",
    ]


def test_upright_turns_a_picture_clockwise_by_the_first_matching_pattern():
    image = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8))  # red left of blue
    rotate = (("*/side.jpg", 90), ("*/down.jpg", 180), ("*/other.jpg", 270))
    turned = np.asarray(upright(image, "usr/share/album/side.jpg", rotate))
    assert turned.shape == (2, 1, 3) and turned[0, 0, 0] == 255  # clockwise: red goes on top
    assert np.asarray(upright(image, "usr/share/album/other.jpg", rotate))[0, 0, 2] == 255
    assert np.asarray(upright(image, "a/down.jpg", rotate))[0, 0, 2] == 255  # blue now on the left
    assert upright(image, "a/upright.jpg", rotate) is image


def test_spdx_credit_reads_a_reuse_sidecar():
    sidecar = (
        "# SPDX-FileCopyrightText: 2017 Skitterphoto <info@skitterphoto.com>\n#\n"
        "# SPDX-License-Identifier: CC0-1.0\n#\n# https://www.pexels.com/photo/maki-681586/\n"
    )
    assert spdx_credit(sidecar) == ("2017 Skitterphoto <info@skitterphoto.com>", "CC0-1.0")
    assert spdx_credit("nothing here") == ("unknown", "unknown")


def test_the_photograph_sources_of_issue_13_and_none_of_doubtful_provenance():
    packages = {s.package for s in SOURCES}
    assert {
        "kphotoalbum",
        "gramps",
        "plasma-workspace-data",
        "forensics-samples-files",
        "kodi-data",
        "libjxl-testdata",
        "scribus-template",
        "hugin-data",
        "lxqt-themes",
    } <= packages
    # Faces and scenes of doubtful provenance (PASCAL VOC / Flickr, photographed postcards), and
    # scikit-image's photographs (the out-of-domain check) are never trained on.
    assert not packages & {
        "libdlib19.1",
        "labelme-examples",
        "python3-imgviz",
        "cimg-doc",
        "facedetect",
        "python3-skimage",
        "python3-skimage-lib",
    }
    kpa = next(s for s in SOURCES if s.package == "kphotoalbum")
    assert "CategoryImages" not in kpa.pattern and kpa.credit is not None
    assert dict(kpa.rotate) == {
        "*/grand_canyon_1.jpg": 180,
        "*/new_wave_1.jpg": 90,
        "*/pool_2.jpg": 270,
        "*/wayne.jpg": 90,
    }
    gramps = [s.pattern.rsplit("/", 1)[-1] for s in SOURCES if s.package == "gramps"]
    assert gramps == list(GRAMPS_COLOUR_PORTRAITS)  # only the colour portraits
    scribus = [s for s in SOURCES if s.package == "scribus-template"]
    assert all(s.credit for s in scribus) and not any("scribus_project_de" in s.pattern for s in scribus)


OLD_STYLE_COPYRIGHT = """\
This package was debianized by someone.

Copyright:

    2003-2010 The Album Author <album@example.org>

License:

    GPL-2+
"""


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian or Ubuntu)")
def test_collect_credits_by_hand_or_sidecar_and_turns_pictures_upright(tmp_path):
    root = package_root(tmp_path, "album", "5.9-1", OLD_STYLE_COPYRIGHT)
    demo = root / "usr/share/album/demo"
    demo.mkdir(parents=True)
    photo = make_photo(240, 180, 6)
    Image.fromarray(photo).save(demo / "wayne.png")
    Image.fromarray(make_photo(200, 200, 8)).save(demo / "sushi.png")
    (demo / "sushi.png.license").write_text(
        "# SPDX-FileCopyrightText: 2017 A Photographer\n# SPDX-License-Identifier: CC0-1.0\n"
    )
    workdir = tmp_path / "work"
    (workdir / "debs").mkdir(parents=True)
    deb = workdir / "debs" / "album_5.9-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True)
    sources = [
        Source(
            "album", "usr/share/album/demo/wayne.png", rotate=(("*/wayne.png", 90),), credit=("Ann", "GPL-2+")
        ),
        Source("album", "usr/share/album/demo/sushi.png", spdx_sidecar=True),
    ]
    collected = collect(workdir, tmp_path / "out", sources)
    by_name = {p["name"].rsplit("/", 1)[-1]: p for p in collected.photos}
    assert (by_name["wayne.png"]["author"], by_name["wayne.png"]["license"]) == ("Ann", "GPL-2+")
    assert by_name["wayne.png"]["size"] == [180, 240]  # turned upright: now portrait
    turned = np.asarray(Image.open(tmp_path / "out" / by_name["wayne.png"]["file"]))
    assert np.array_equal(turned, np.rot90(photo, -1))  # clockwise, pixel for pixel (PNG is lossless)
    assert (by_name["sushi.png"]["author"], by_name["sushi.png"]["license"]) == (
        "2017 A Photographer",
        "CC0-1.0",
    )
    # A package whose debian/copyright is not machine-readable needs a credit given by hand.
    with pytest.raises(RuntimeError, match="not machine-readable"):
        collect(workdir, tmp_path / "out2", [Source("album", "usr/share/album/demo/wayne.png")])


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian or Ubuntu)")
def test_a_package_whose_documentation_is_another_packages_takes_that_ones_copyright(tmp_path):
    # gimp-help-en's /usr/share/doc/gimp-help-en is a link to gimp-help-common, which holds the
    # debian/copyright: the recipe fetches that package too and credits the pictures by it.
    workdir = tmp_path / "work"
    (workdir / "debs").mkdir(parents=True)
    common = package_root(tmp_path / "common", "help-common", "2.1-1", COPYRIGHT)
    language = tmp_path / "language" / "pkgroot"
    (language / "DEBIAN").mkdir(parents=True)
    (language / "DEBIAN" / "control").write_text(
        "Package: help-en\nVersion: 2.1-1\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: test help-en\n"
    )
    (language / "usr/share/doc").mkdir(parents=True)
    (language / "usr/share/doc/help-en").symlink_to("help-common")
    (language / "usr/share/help/en").mkdir(parents=True)
    Image.fromarray(make_photo(240, 180, 9)).save(language / "usr/share/help/en/duck.png")
    for root, name in ((common, "help-common"), (language, "help-en")):
        deb = workdir / "debs" / f"{name}_2.1-1_all.deb"
        subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True)
    collected = collect(
        workdir, tmp_path / "out", [Source("help-en", "usr/share/help/en/*.png", strip="usr/")]
    )
    (duck,) = collected.photos
    assert (duck["package"], duck["license"]) == ("help-en", "GPL-3+")
    assert "The Picture Team" in duck["author"]
    assert (workdir / "licenses" / "help-en.copyright").read_text() == COPYRIGHT
