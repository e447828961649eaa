"""The catalogue of openly licensed photographs the default model's recipe takes from Debian
packages: each ``Source`` is a package, a file pattern in it, and what was decided about its files
by looking at them (drawings excluded by name, pictures stored on their side, credits read by hand).
``recipe.photo_sources`` fetches and checks them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """Files matching ``pattern`` in ``package`` (inside the bundle ``rcc`` if given).

    ``strip`` is removed from the front of a file's path to get the path that the package's
    ``debian/copyright`` uses. ``cutout``: transparent cut-outs, pasted onto a scene.
    """

    package: str
    pattern: str
    rcc: str | None = None
    strip: str = ""
    cutout: bool = False
    exclude: tuple[str, ...] = ()
    upstream: str = ""  # put in front of the stripped path (Lomiri's copyright says 16.04/<file>)
    # (file-name pattern, degrees clockwise): pictures stored on their side or upside down with no
    # EXIF orientation to say so (looked at), turned upright when collected.
    rotate: tuple[tuple[str, int], ...] = ()
    # (author, licence) read by hand from a debian/copyright that is not machine-readable (DEP-5).
    credit: tuple[str, str] | None = None
    # Each file has an SPDX sidecar ``<file>.license`` (REUSE) naming its author and licence.
    spdx_sidecar: bool = False
    # Whether its photographs may be the scene a cut-out is pasted onto. A cut-out takes the scene
    # its name's hash picks among all of them, so a new scene would move every cut-out onto another
    # (validation's people among them): sources added since the shipped default was made (from
    # 2026-12-04 on) say False, so that adding them changes no photograph already there
    # (tests/recipe/test_photo_sources.py keeps the list of scene sources as it is).
    scene: bool = True


_GCOMPRIS_RCC = "usr/share/gcompris-qt/rcc/{}.rcc"
_SCRATCH_DRAWINGS = ("room1", "room2", "room3", "party-room", "spotlight-stage", "school2", "woods-and-bench")
_LOMIRI_ART = ("*analogpattern*", "*umang*", "*Fossa*", "*Infinite-Sea*", "*Painting-Colors*", "*warty*")
PICTURES = ("*.jpg", "*.jpeg", "*.png", "*.webp", "*.gif")
# Gramps' example portraits in colour (its other example pictures are sepia or gray).
GRAMPS_COLOUR_PORTRAITS = ("Gunnlaugur_Larusson_-_Yawn.jpg", "O0.jpg", "O4.jpg")
# GIMP's manual: the unedited photographs its tutorials and filter pages start from (a group of
# soldiers in red uniforms, a vintage car, ducks, a squirrel, flowers, the Taj Mahal, stained
# glass, a key fob), picked by eye; the rest are screenshots, filter results or crops of these.
GIMP_HELP_PHOTOS = (
    "filters/examples/distort/spherize-ex-orig.jpg",
    "filters/examples/enhance/high-pass-origin.png",
    "filters/examples/kvitveis-orig.png",
    "filters/examples/light-and-shadow/vignette-ex-orig.jpg",
    "filters/examples/map/little_planet-origin.jpg",
    "filters/examples/taj_orig.jpg",
    "tool-options/lockbrush-orig.png",
    "tutorials/quickie-crop-example-source.jpg",
    "tutorials/quickie-flip-example-source.jpg",
    "tutorials/quickie-jpeg-example.jpg",
    "tutorials/quickie-remove-background-source.jpg",
    "tutorials/quickie-rotate-example-source.jpg",
    "using/duck_orig.png",
    "using/fog-tree-example.png",
    "using/keyfob_orig.png",
)
HUGIN_PHOTOS = (
    "250px-LagardePont-defish.jpg",
    "250px-TKS-Mmm-obliquev120-recti.png",
    "300px-Lamp_enfuse.jpg",
    "600px-Tuebingen_Neckarfront_small15_2006-06-11.jpg",
    "800px-C_Marchi-GrandCentral-adj.jpg",
    "AliasingPScubic.jpg",  # a kitchen (its enlarged crops and twin, AliasingPT*, are left out)
    "CA_fringes00.jpg",
    "CA_tCA00.jpg",
    "Medinet_habu_horizontal_stereographic.jpg",
    "SB_Blended.jpg",
)

SOURCES: list[Source] = [
    # The wallpapers the first default model used (nature, water, sky, two dogs).
    Source(
        "mate-backgrounds", "usr/share/backgrounds/mate/nature/*.jpg", strip="usr/share/backgrounds/mate/"
    ),
    Source(
        "plasma-workspace-wallpapers",
        "usr/share/wallpapers/*/contents/images/2560x1600.jpg",
        strip="usr/share/",
        # Abstract or edited art, not photographs.
        exclude=(
            "*/Altai/*",
            "*/Autumn/*",
            "*/Canopee/*",
            "*/Cascade/*",
            "*/Cluster/*",
            "*/Elarun/*",
            "*/Flow/*",
            "*/Honeywave/*",
            "*/IceCold/*",
            "*/Next/*",
            "*/Opal/*",
            "*/PastelHills/*",
            "*/Patak/*",
            "*/Shell/*",
            "*/Volna/*",
            "*/SafeLanding/*",
            "*/Mountain/*",
        ),
    ),
    Source(
        "lomiri-wallpapers-16.04",
        "usr/share/backgrounds/*.jpg",
        strip="usr/share/backgrounds/",
        exclude=_LOMIRI_ART,
        upstream="16.04/",
    ),
    Source(
        "lomiri-wallpapers-20.04",
        "usr/share/backgrounds/*.jpg",
        strip="usr/share/backgrounds/",
        exclude=_LOMIRI_ART,
        upstream="20.04/",
    ),
    # GCompris: animals (1920x1080 and 1024 px), monuments and buildings, musicians, objects.
    *(
        Source(
            "gcompris-qt-data", f"*/resource/{pattern}", rcc=_GCOMPRIS_RCC.format(bundle), strip="gcompris/"
        )
        for bundle, pattern in (
            ("erase", "*"),
            ("explore_farm_animals", "animals/*"),
            ("explore_world_animals", "animals/*"),
            ("explore_world_music", "music/*"),
            ("explore_monuments", "*/*"),
            ("categorization", "images/*/*"),
            ("photo_hunter", "*"),
        )
    ),
    # Scratch 1.4: streets, buildings, rooms, sports grounds, nature (480x360), and photographs
    # of people cut out on a transparent background.
    Source(
        "scratch",
        "usr/share/scratch/Media/Backgrounds/*/*.jpg",
        strip="usr/share/scratch/",
        exclude=tuple(f"*/{name}.jpg" for name in _SCRATCH_DRAWINGS),
    ),
    Source(
        "scratch",
        "usr/share/scratch/Media/Costumes/People/*",
        strip="usr/share/scratch/",
        cutout=True,
        exclude=("*/girl5.gif",),  # a drawing whose flat share (0.11) passes for a photograph's
    ),
    Source("gnome-control-center-data", "usr/share/pixmaps/faces/*.jpg", strip="usr/share/pixmaps/"),
    Source("palapeli-data", "usr/share/palapeli/collection/*.jpg", strip="usr/share/palapeli/"),
    Source(
        "libjs-jquery-backstretch",
        "usr/share/doc/libjs-jquery-backstretch/examples/*.jpg",
        strip="usr/share/doc/libjs-jquery-backstretch/",
    ),
    Source(
        "psychtoolbox-3-common",
        "usr/share/psychtoolbox-3/PsychDemos/konijntjes1024x768.jpg",
        strip="usr/share/psychtoolbox-3/",
    ),
    # Tux Paint's photographic stamps (the drawings among them are dropped by the drawing test).
    *(
        Source(
            "tuxpaint-stamps-default",
            f"usr/share/tuxpaint/stamps/{group}/*.png",
            strip="usr/share/tuxpaint/",
            cutout=True,
        )
        for group in (
            "animals",
            "food",
            "plants",
            "vehicles",
            "household",
            "clothes",
            "hobbies",
            "sports",
            "town",
            "people",
        )
    ),
    # KPhotoAlbum's demo album (the upstream author's own photographs: friends in bars and at a
    # pool table, faces, a beach, the Grand Canyon, dogs, rabbits, the sea, snow, a sunset).
    Source(
        "kphotoalbum",
        "usr/share/kphotoalbum/demo/*.jpg",
        strip="usr/share/kphotoalbum/",
        rotate=(
            ("*/grand_canyon_1.jpg", 180),
            ("*/new_wave_1.jpg", 90),
            ("*/pool_2.jpg", 270),
            ("*/wayne.jpg", 90),
        ),
        credit=(
            "2003-2010, 2013-2014 Jesper K. Pedersen <blackie@kde.org> and 7 others "
            "(debian/copyright, not machine-readable: one grant for the whole package)",
            "GPL-2+",
        ),
    ),
    # Gramps' example family tree: the three colour portraits (the sepia and gray ones are only
    # shown on the old-photographs sheet, see recipe.default_model.OLD_PHOTOGRAPHS).
    *(
        Source("gramps", f"usr/share/doc/gramps/example/gramps/{name}", strip="usr/share/doc/gramps/")
        for name in GRAMPS_COLOUR_PORTRAITS
    ),
    # Plasma's account pictures: objects, food, animals (512 px, CC0 from Pexels, a REUSE sidecar each).
    Source(
        "plasma-workspace-data",
        "usr/share/plasma/avatars/photos/*.png",
        strip="usr/share/plasma/",
        upstream="kcms/users/",
        spdx_sidecar=True,
    ),
    # Phone photographs: dogs, a street, a dinner table (CC-BY-SA-4.0). The circuit board is lit
    # by a dim tinted lamp; the checks decide about it.
    Source(
        "forensics-samples-files",
        "usr/share/forensics-samples/original-files/pic[12]/IMG*",
        strip="usr/share/forensics-samples/",
    ),
    # Kodi's home-screen photographs: a cinema hall and a concert (CC0).
    Source(
        "kodi-data", "usr/share/kodi/addons/skin.estuary/extras/home-images/*.jpg", strip="usr/share/kodi/"
    ),
    # libjxl's test photographs from wesaturate (CC0): a snail, tulips, blossom.
    Source(
        "libjxl-testdata",
        "usr/share/libjxl-testdata/external/wesaturate/500px/*_srgb8.png",
        strip="usr/share/libjxl-testdata/",
    ),
    # Scribus templates: Riku Leino's photographs (placed in the public domain: a pizza, teriyaki,
    # a canyon, a city sunset, the moon) and Maciej Hanski's portrait of Craig Bradney (GPL-2+).
    *(
        Source(
            "scribus-template",
            f"usr/share/scribus/templates/{path}",
            strip="usr/share/scribus/templates/",
            credit=(
                "2004 Riku Leino <tsoots@gmail.com> (debian/copyright, not machine-readable)",
                "public-domain",
            ),
        )
        for path in ("menu2/pizza.jpg", "menu1/teriyaki.png", "br2/*.jpg", "cal2/moon.jpg")
    ),
    Source(
        "scribus-template",
        "usr/share/scribus/templates/scribus_project_pl/craigbradney.jpg",
        strip="usr/share/scribus/templates/",
        credit=("Maciej Hanski <ma_han2000@yahoo.de> (debian/copyright, not machine-readable)", "GPL-2+"),
    ),
    # Hugin's manual: the whole, undistorted-enough photographs among its illustrations (rooms, a
    # kitchen, a station hall, a church, buildings, a riverfront, a forest), picked by eye; the
    # rest are screenshots, side-by-side comparisons, crops, grids or fisheye warps.
    *(
        Source("hugin-data", f"usr/share/hugin/xrc/data/help_en_EN/{name}", strip="usr/share/hugin/")
        for name in HUGIN_PHOTOS
    ),
    # LXQt's photographic wallpapers (landscapes, fog, flowers).
    *(
        Source("lxqt-themes", f"usr/share/lxqt/wallpapers/{name}", strip="usr/share/lxqt/")
        for name in ("Valendas.png", "cloud.png", "flowers.png", "fog.jpg", "this-is-not-windows.jpg")
    ),
    # Added 2026-12-04 (after the shipped default was made; ``recipe.default_model.incumbent`` keeps
    # it a rival): GIMP's manual (above), Tux Paint's photographic templates (a lighthouse, sheep,
    # jellyfish, woods, rocks, the sea) and matplotlib's portrait of Grace Hopper.
    *(
        Source(
            "gimp-help-en",
            f"usr/share/gimp/2.0/help/en/images/{name}",
            strip="usr/share/gimp/2.0/help/en/",
            scene=False,
        )
        for name in GIMP_HELP_PHOTOS
    ),
    Source("tuxpaint-data", "usr/share/tuxpaint/templates/*.jpg", strip="usr/share/tuxpaint/", scene=False),
    Source(
        "python-matplotlib-data",
        "usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        strip="usr/share/matplotlib/",
        scene=False,
        # debian/copyright gives matplotlib's licence with no short name for every file; the picture
        # itself is an official portrait by the US Navy, a work of the US government
        credit=("US Navy, official portrait of Grace Hopper (matplotlib's sample data)", "public-domain"),
    ),
]
