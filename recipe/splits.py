"""The default model's photographs and their splits: which photographs are validation ones (by
category, people the largest), which calibrate, which train; fetched and laid out in a work folder
(``fetch_photos``) and read back (``Photos``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from models.evaluate import evaluate_model
from recipe.catalogue import GRAMPS_COLOUR_PORTRAITS

log = logging.getLogger(__name__)


# Snapshots are compared on the calibration photographs shrunk to this long side (the model still
# sees each whole photograph at its own 128 px; only the scoring is cheaper than full size).
SELECT_SIDE = 1024


# Kept out of training, by category (people the largest): the whole photographs the recipe
# scores candidates and snapshots on, and ``colorizer evaluate --model default`` reports on.
CATEGORIES = ("people", "animal", "building-street", "indoor", "object-food", "landscape-plant")
_MUSIC = "gcompris-qt-data/explore_world_music/gcompris/src/activities/explore_world_music/resource/music/"
_FARM = "gcompris-qt-data/explore_farm_animals/gcompris/src/activities/explore_farm_animals/resource/animals/"
_WORLD = (
    "gcompris-qt-data/explore_world_animals/gcompris/src/activities/explore_world_animals/resource/animals/"
)
_ERASE = "gcompris-qt-data/erase/gcompris/src/activities/erase/resource/"
_WONDERS = "gcompris-qt-data/explore_monuments/gcompris/src/activities/explore_monuments/resource/"
_OBJECTS = "gcompris-qt-data/categorization/gcompris/src/activities/categorization/resource/images/others/"
_SCRATCH = "scratch/usr/share/scratch/Media/"
_FACES = "gnome-control-center-data/usr/share/pixmaps/faces/"
_BACKSTRETCH = "libjs-jquery-backstretch/usr/share/doc/libjs-jquery-backstretch/examples/"
_PALAPELI = "palapeli-data/usr/share/palapeli/collection/"
_KPA = "kphotoalbum/usr/share/kphotoalbum/demo/"
_GRAMPS = "gramps/usr/share/doc/gramps/example/gramps/"
_FORENSICS = "forensics-samples-files/usr/share/forensics-samples/original-files/"
_AVATARS = "plasma-workspace-data/usr/share/plasma/avatars/photos/"
# The scenes with people: anne_helene | bar55 | cold_water | grand_canyon | jesper | new_wave |
# pool (with wayne) | qt-logo; validation takes the 1st, 3rd, 5th and 7th.
KPA_VALIDATION = ("anne_helene", "cold_water", "jesper", "jesper_2", "pool", "pool_2", "wayne")
# Scratch's people are cut-outs pasted onto a training scene (recipe.photo_sources); a person in
# validation is held out of training in every pose.
VALIDATION_PEOPLE_CUTOUTS = ("marissa", "nathan", "nina", "paul", "sam", "jay")
VALIDATION: dict[str, str] = {
    **{_MUSIC + f"{n}.webp": "people" for n in ("australia", "japan", "mexico", "orchestra")},
    _FACES + "surfer.jpg": "people",
    **{
        _SCRATCH + f"Costumes/People/{n}.gif": "people"
        for n in ("marissa", "nathan", "nina1", "paul1", "sam", "jay")
    },
    _FARM + "cat.webp": "animal",
    _FARM + "dog.webp": "animal",
    _FARM + "horse.webp": "animal",
    _ERASE + "penguin.webp": "animal",
    _ERASE + "giraffe.webp": "animal",
    _WORLD + "koala.webp": "animal",
    "lomiri-wallpapers-16.04/usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg": "animal",
    **{
        _SCRATCH + f"Backgrounds/Outdoors/{n}.jpg": "building-street"
        for n in ("houses", "village", "building-at-mit", "driveway")
    },
    _WONDERS + "wonders/colosseum.webp": "building-street",
    _WONDERS + "germany/berlinCathedral.webp": "building-street",
    _PALAPELI + "castle-maintenon.jpg": "building-street",
    **{
        _SCRATCH + f"Backgrounds/Indoors/{n}.jpg": "indoor"
        for n in ("kitchen", "hall", "clothing-store", "the-movies-inside")
    },
    _FACES + "tomatoes.jpg": "object-food",
    _FACES + "headphones.jpg": "object-food",
    _FACES + "book.jpg": "object-food",
    _PALAPELI + "citrus-fruits.jpg": "object-food",
    _BACKSTRETCH + "coffee.jpg": "object-food",
    _OBJECTS + "cup.webp": "object-food",
    _OBJECTS + "bucket.webp": "object-food",
    "plasma-workspace-wallpapers/usr/share/wallpapers/Kite/contents/images/2560x1600.jpg": "landscape-plant",
    "plasma-workspace-wallpapers/usr/share/wallpapers/Path/contents/images/2560x1600.jpg": "landscape-plant",
    "mate-backgrounds/usr/share/backgrounds/mate/nature/GreenMeadow.jpg": "landscape-plant",
    "mate-backgrounds/usr/share/backgrounds/mate/nature/FreshFlower.jpg": "landscape-plant",
    "lomiri-wallpapers-16.04/usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg": "landscape-plant",
    _SCRATCH + "Backgrounds/Nature/flower-bed.jpg": "landscape-plant",
    _FACES + "tree.jpg": "landscape-plant",
    _BACKSTRETCH + "sample2_1920.jpg": "landscape-plant",  # a lighthouse on cliffs
    # Added with issue 13's sources (the 44 above are unchanged, so old figures stay comparable).
    # KPhotoAlbum's photographs of people, by scene (a name less its _2 suffix; pool, pool_2 and
    # wayne are one pool hall and one evening, so they go together): the scenes with people in
    # name order, alternately to validation and training, starting with validation.
    **{_KPA + f"{n}.jpg": "people" for n in KPA_VALIDATION},
    **{_GRAMPS + n: "people" for n in GRAMPS_COLOUR_PORTRAITS},
    "scribus-template/usr/share/scribus/templates/scribus_project_pl/craigbradney.jpg": "people",
    "kodi-data/usr/share/kodi/addons/skin.estuary/extras/home-images/movie.jpg": "indoor",
    "hugin-data/usr/share/hugin/xrc/data/help_en_EN/AliasingPScubic.jpg": "indoor",  # a kitchen
    _FORENSICS + "pic2/IMG_20191224_234846.jpg": "indoor",  # a dinner table
    **{_AVATARS + f"{n}.png": "object-food" for n in ("Books", "Pencils", "Sushi")},
    "scribus-template/usr/share/scribus/templates/menu2/pizza.jpg": "object-food",
}


# A share of the other photographs (whole photographs only, never cut-outs) is kept out of
# training to choose with: candidates, snapshots and the chroma scale are picked on it, so the
# validation photographs only report.
CALIBRATION_SHARE = 0.1


def split_of(name: str, kind: str = "photograph") -> str:
    """``validation``, ``held out`` (another pose of a validation person), ``calibration`` or
    ``train``: a stable choice by the photograph's name."""
    if name in VALIDATION:
        return "validation"
    stem = PurePosixPath(name).stem
    if name.startswith(_SCRATCH + "Costumes/People/") and stem.startswith(VALIDATION_PEOPLE_CUTOUTS):
        return "held out"
    # KPhotoAlbum's photographs of one scene (bar55, bar55_2) share a split: hash the scene.
    scene = re.sub(r"_\d+(\.jpg)$", r"\1", name) if name.startswith(_KPA) else name
    rank = int(hashlib.sha1(scene.encode()).hexdigest()[:8], 16) / 16**8
    return "calibration" if kind == "photograph" and rank < CALIBRATION_SHARE else "train"


def fetch_photos(workdir: Path) -> list[dict[str, Any]]:
    """Collect the sources' photographs (``recipe.photo_sources.collect``) and lay them out:
    training ones in ``workdir/datasets/default-train/``, calibration ones in
    ``workdir/calibration/``, validation ones in ``workdir/validation/<category>/``. Returns the
    manifest (each photograph's name, package, version, path, sha256, author, licence, split and
    category).

    Raises RuntimeError without apt-get, or when a validation photograph is missing.
    """
    from recipe.photo_sources import collect

    collected = collect(workdir, workdir / "photos", scene_ok=lambda name: split_of(name) == "train")
    found = {photo["name"] for photo in collected.photos}
    missing = sorted(set(VALIDATION) - found)
    if missing:
        raise RuntimeError(f"validation photographs not found or dropped by the checks: {missing}")
    folders = {
        "train": workdir / "datasets" / "default-train",
        "calibration": workdir / "calibration",
        "validation": workdir / "validation",
    }
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
    manifest = []
    for photo in collected.photos:
        split = split_of(photo["name"], "photograph" if photo["kind"] == "photograph" else "cut-out")
        category = VALIDATION.get(photo["name"])
        if split in folders:
            target_dir = folders[split] / category if category else folders[split]
            target_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(workdir / "photos" / photo["file"], target_dir / photo["file"])
        manifest.append({**photo, "split": split, **({"category": category} if category else {})})
    (workdir / "skipped.json").write_text(json.dumps(dict(collected.skipped), indent=2))
    log.info(
        "photographs: %s; skipped %s", dict(Counter(p["split"] for p in manifest)), dict(collected.skipped)
    )
    return manifest


@dataclass(frozen=True)
class Photos:
    """The photographs the recipe trains on, chooses with (calibration) and reports on (validation)."""

    calibration: list[Path]
    validation: list[Path]
    training: list[Path] = field(default_factory=list)

    def fingerprint(self) -> str:
        """A digest of every calibration and validation file and of the training folder's: a saved
        run is reused only on the photographs it was trained and scored on."""
        digest = hashlib.sha256()
        for group in (self.calibration, self.validation, self.training):
            for path in sorted(group, key=lambda p: p.name):  # not by folder: a category may be renamed
                digest.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()

    @classmethod
    def of(cls, workdir: Path) -> Photos:
        workdir = Path(workdir)
        return cls(
            sorted((workdir / "calibration").rglob("*.png")),
            sorted((workdir / "validation").rglob("*.png")),
            sorted((workdir / "datasets" / "default-train").glob("*.png")),
        )


def evaluate_on(model: Any, files: list[Path], max_side: int | None = None, hints: int = 0) -> dict[str, Any]:
    """evaluate_model on ``files`` (with ``hints`` per photograph), each named by its path under
    their common folder (so the validation photographs are <category>/<file>)."""
    root = Path(os.path.commonpath(files)) if len(files) > 1 else files[0].parent
    return evaluate_model(model, files, max_side=max_side, root=root, hints=hints)
