"""Training data: a folder of colour photographs -> an endless tf.data stream of (input, target).

Files are checked once with Pillow (so unreadable ones are skipped and counted before training
starts), decoded once at a reduced size and cached in memory; each step then takes a random crop
at a random scale, flips it, and derives the grayscale input from the crop itself.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from common.datasets import DATASET_MANIFEST, IMAGE_SUFFIXES, DatasetError, resolve_dataset
from common.photos import PHOTO_FORMATS

log = logging.getLogger(__name__)

# Cap what a single training photograph may decode to (a 2560x1600 wallpaper is 4.1 MP).
MAX_SOURCE_PIXELS = 100_000_000
# A photograph whose chroma varies less than this (``colour_spread``, in Lab units) is gray or
# toned (sepia, cyanotype): used as a colour target it teaches the model gray, so it is skipped.
NEAR_GRAY_SPREAD = 4.0
SKIP_NEAR_GRAY = "nearly gray or toned (no colour to learn)"


@dataclass
class DatasetScan:
    """Usable files of a dataset folder and why the others were skipped."""

    folder: Path
    files: list[Path]
    skipped: Counter = field(default_factory=Counter)

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> dict:
        return {"images": len(self.files), "skipped": self.skipped_count, "reasons": dict(self.skipped)}


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def scan_images(folder: Path, min_side: int, skip_gray: bool = True) -> DatasetScan:
    """Find usable images (jpg, png, webp; recursive) at least ``min_side`` pixels on the short side
    and, with ``skip_gray``, with colour in them (``is_near_gray``): gray and toned photographs are
    skipped and counted under ``SKIP_NEAR_GRAY``.

    A file whose bytes are those of one already found (the same photograph copied twice) is
    skipped as a duplicate: it would count twice in training and could sit on both sides of a
    validation split.

    Raises DatasetError naming the counts when no file is usable.
    """
    folder = Path(folder)
    root = folder.resolve()
    scan = DatasetScan(folder, [])
    seen: set[str] = set()
    for dirpath, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in sorted(names):
            path = Path(dirpath) / name
            if name.startswith(".") or (dirpath == str(folder) and name == DATASET_MANIFEST):
                continue  # hidden files, and the manifest an upload writes beside its photographs
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                scan.skipped["not an image file type"] += 1
                continue
            if not _inside(path, root):
                scan.skipped["links outside the dataset"] += 1
                continue
            try:
                data = path.read_bytes()  # read once: decoded below and hashed for duplicates
                with Image.open(io.BytesIO(data), formats=PHOTO_FORMATS) as img:
                    width, height = img.size
                    if width * height > MAX_SOURCE_PIXELS:
                        scan.skipped["too many pixels"] += 1
                        continue
                    # A full decode (at reduced scale for JPEG) catches truncated files too.
                    img.draft("RGB", (min_side, min_side))
                    img.load()
                    gray = skip_gray and min(width, height) >= min_side and is_near_gray(img.convert("RGB"))
            except Exception:  # Pillow raises many types for damaged files
                scan.skipped["unreadable"] += 1
                continue
            if min(width, height) < min_side:
                scan.skipped[f"smaller than {min_side} px"] += 1
                continue
            if gray:
                scan.skipped[SKIP_NEAR_GRAY] += 1
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest in seen:
                scan.skipped["duplicate of another file"] += 1
                continue
            seen.add(digest)
            scan.files.append(path)
    scan.files.sort()
    if not scan.files:
        reasons = ", ".join(f"{n} {why}" for why, n in scan.skipped.items()) or "no files"
        raise DatasetError(f"no usable image in dataset folder {folder.name!r} ({reasons})")
    return scan


def find_dataset(data_dir: Path, name: str, min_side: int, dataset_path: Path | None = None) -> DatasetScan:
    """``scan_images`` of dataset ``name`` under ``<data_dir>/datasets`` (or of ``dataset_path``).

    Needs no TensorFlow: a worker checks a job's dataset before it imports TensorFlow, so a job
    whose dataset is missing or unusable fails in a moment. Raises DatasetError."""
    folder = dataset_path or resolve_dataset(Path(data_dir) / "datasets", name)
    return scan_images(folder, min_side)


def colour_spread(rgb: np.ndarray) -> float:
    """How much a picture's colours vary beyond what its lightness explains: the spread (root of
    the summed variances) of its Lab a and b after removing their quadratic fit on L, over a
    thumbnail of at most 96 px. About 0 for a gray photograph and for a toned one (sepia,
    cyanotype: one hue whose chroma follows the lightness); an ordinary colour photograph is well
    above 10."""
    from skimage.color import rgb2lab

    rgb = np.asarray(rgb, dtype=np.uint8)
    if rgb.ndim == 3 and rgb.shape[0] > 1 and max(rgb.shape[:2]) > 96:
        image = Image.fromarray(rgb)
        image.thumbnail((96, 96), Image.Resampling.BOX)
        rgb = np.asarray(image)
    lab = rgb2lab(rgb.reshape(-1, 1, 3)).reshape(-1, 3).astype(np.float64)
    lum = lab[:, 0] / 100.0
    basis = np.stack([lum * lum, lum, np.ones_like(lum)], axis=-1)
    fit, *_ = np.linalg.lstsq(basis, lab[:, 1:], rcond=None)
    residual = lab[:, 1:] - basis @ fit
    return float(np.sqrt(residual.var(axis=0).sum()))


def is_near_gray(rgb: np.ndarray) -> bool:
    """Whether a picture has too little colour to be a colour target (``NEAR_GRAY_SPREAD``)."""
    return colour_spread(rgb) < NEAR_GRAY_SPREAD


def load_photo(path: Path, short_side: int) -> np.ndarray | None:
    """Decode to RGB uint8, upright (EXIF), shrunk so its short side is at most ``short_side``.

    Returns None for a file that fails to decode (truncated data only shows up here).
    """
    try:
        with Image.open(path, formats=PHOTO_FORMATS) as img:
            img.draft("RGB", (short_side, short_side))  # JPEG: decode at a reduced scale, fast
            img = ImageOps.exif_transpose(img).convert("RGB")
            scale = short_side / min(img.size)
            if scale < 1:
                size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
                img = img.resize(size, Image.Resampling.LANCZOS)
            return np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        log.warning("skipping %s: %s", path, exc)
        return None


def random_view(image, image_size: int, max_aspect: float = 1.0):
    """A random crop resized to a square of ``image_size``, randomly flipped.

    Its short side is in [image_size, the photograph's short side]; with ``max_aspect`` > 1 its
    aspect ratio is random up to that, either way (log-uniform), and the resize squeezes it, as
    serving squeezes a whole photograph to the model's square: the model then learns textures as
    they look at inference. ``max_aspect`` 1 gives square crops (the report's).
    """
    import tensorflow as tf

    shape = tf.shape(image)
    short = tf.minimum(shape[0], shape[1])
    side = tf.random.uniform((), image_size, short + 1, dtype=tf.int32)
    if max_aspect > 1.0:
        log_aspect = tf.random.uniform((), -np.log(max_aspect), np.log(max_aspect))
        long = tf.cast(tf.round(tf.cast(side, tf.float32) * tf.exp(tf.abs(log_aspect))), tf.int32)
        height, width = tf.cond(log_aspect > 0, lambda: (long, side), lambda: (side, long))
        height, width = tf.minimum(height, shape[0]), tf.minimum(width, shape[1])
    else:
        height = width = side
    crop = tf.image.random_crop(image, tf.stack([height, width, 3]))
    crop = tf.image.resize(tf.cast(crop, tf.float32) / 255.0, (image_size, image_size), method="area")
    return tf.image.random_flip_left_right(tf.clip_by_value(crop, 0.0, 1.0))


def center_view(image: np.ndarray, image_size: int) -> np.ndarray:
    """The centred largest square, resized to image_size, as float RGB in [0, 1]."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(image[top : top + side, left : left + side])
    square = square.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(square, dtype=np.float32) / 255.0


def degrade_lightness(x):
    """``x`` (a model input in [-1, 1], (h, w, c), every channel the same lightness) made to look
    like an old photograph's scan: a tone curve (gamma 0.7-1.4), faded contrast with lifted blacks
    or dimmed whites, softness (a shrink and enlarge by up to 2.5x) and film grain (noise of
    standard deviation up to 0.08, partly coarse). Each effect is applied or not at random, so a
    degraded input may also come out almost clean. Returns a tensor of ``x``'s shape in [-1, 1].
    """
    import tensorflow as tf

    # Random draws from the global generator, which keras.utils.set_random_seed seeds.
    shape = tf.shape(x)
    height, width = shape[0], shape[1]
    on = tf.random.uniform((4,)) < 0.6  # each effect on with this probability
    v = (x + 1.0) / 2.0
    gamma = tf.exp(tf.random.uniform((), np.log(0.7), np.log(1.4)))
    v = tf.where(on[0], tf.pow(tf.maximum(v, 1e-6), gamma), v)
    contrast = tf.random.uniform((), 0.45, 1.0)
    centre = tf.random.uniform((), 0.35, 0.65)
    v = tf.where(on[1], centre + contrast * (v - centre), v)
    factor = tf.random.uniform((), 1.2, 2.5)
    small = tf.maximum(
        1, tf.cast(tf.round(tf.cast(tf.stack([height, width]), tf.float32) / factor), tf.int32)
    )
    soft = tf.image.resize(tf.image.resize(v, small, method="area"), tf.stack([height, width]), "bilinear")
    v = tf.where(on[2], soft, v)
    sigma = tf.random.uniform((), 0.01, 0.08) / 2.0  # in [0, 1] units
    fine = tf.random.normal(tf.stack([height, width, 1]))
    coarse = tf.image.resize(
        tf.random.normal(tf.stack([tf.maximum(1, height // 2), tf.maximum(1, width // 2), 1])),
        tf.stack([height, width]),
        "bilinear",
    )
    grain = sigma * (0.6 * fine + 0.8 * coarse)
    v = tf.where(on[3], v + grain, v)  # (h, w, 1) grain broadcasts over the channels
    return tf.clip_by_value(v, 0.0, 1.0) * 2.0 - 1.0


def to_pair(rgb, preset_name: str):
    """(model input, target) in [-1, 1] from RGB in [0, 1], per the preset's colour space."""
    import tensorflow as tf

    from models import color
    from models.presets import get_preset

    lab = color.rgb_to_lab(rgb)
    lum = lab[..., :1]
    if get_preset(preset_name).space == "lab":
        return color.normalize_l(lum), color.normalize_ab(lab[..., 1:])
    gray = color.rgb_to_gray(rgb)
    return tf.concat([gray, gray, gray], axis=-1) * 2.0 - 1.0, rgb * 2.0 - 1.0


def make_dataset(
    files: list[Path],
    image_size: int,
    batch_size: int,
    preset_name: str,
    cache_scale: float = 2.0,
    max_aspect: float = 1.0,
    degrade: float = 0.0,
    hints: bool = False,
):
    """An endless, shuffled, batched, prefetched tf.data.Dataset of (input, target) batches.

    A share ``degrade`` of the inputs are made to look like old photographs
    (``degrade_lightness``); their targets stay clean. With ``hints``, each input also has hint
    channels simulated from its target (``models.hints.simulated_hints``).

    Photographs are decoded once with their short side at ``cache_scale * image_size`` and cached
    in memory; crops are then taken at scales between that and the crop size, with aspect ratios
    up to ``max_aspect`` (see ``random_view``).
    """
    import tensorflow as tf

    # Imported here, eagerly: imported first inside to_pair's trace below, models.color's
    # module-level constants would belong to that one dataset's graph, and a second dataset
    # would fail to capture them.
    from models import color  # noqa: F401

    short_side = max(image_size, int(round(image_size * cache_scale)))

    def decode(path: bytes) -> np.ndarray:
        image = load_photo(Path(path.decode()), short_side)
        return image if image is not None else np.zeros((0, 0, 3), np.uint8)  # filtered out below

    # Not Dataset.from_generator: once a from_generator dataset has run in a process, every
    # training step there is about 1.4x slower (0.55 s against 0.39 s at 256, batch 1, bfloat16,
    # measured with the iterator alive or long gone); a numpy_function map does not do that.
    ds = tf.data.Dataset.from_tensor_slices([str(path) for path in files])
    ds = ds.map(
        lambda path: tf.ensure_shape(tf.numpy_function(decode, [path], tf.uint8), [None, None, 3]),
        num_parallel_calls=tf.data.AUTOTUNE,  # Pillow decodes without the GIL
    )
    ds = ds.filter(lambda image: tf.reduce_min(tf.shape(image)[:2]) >= image_size)
    ds = ds.cache().shuffle(max(1, len(files)), reshuffle_each_iteration=True).repeat()
    ds = ds.map(lambda img: random_view(img, image_size, max_aspect), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda rgb: to_pair(rgb, preset_name), num_parallel_calls=tf.data.AUTOTUNE)
    if degrade > 0:

        @tf.autograph.experimental.do_not_convert  # tf.cond already: nothing for AutoGraph to do
        def maybe_degrade(x, y):
            return tf.cond(tf.random.uniform(()) < degrade, lambda: degrade_lightness(x), lambda: x), y

        ds = ds.map(maybe_degrade, num_parallel_calls=tf.data.AUTOTUNE)
    if hints:
        from models.hints import simulated_hints

        ds = ds.map(
            lambda x, y: (tf.concat([x, simulated_hints(y)], axis=-1), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def split_validation(scan: DatasetScan, share: float) -> tuple[list[Path], list[Path]]:
    """(training files, validation files): a stable split by a hash of each file's path.

    A file stays on the same side when others are added. With ``share`` > 0 and at least two
    files, at least one is kept for validation.
    """
    if share <= 0 or len(scan.files) < 2:
        return list(scan.files), []

    def rank(path: Path) -> str:
        return hashlib.sha1(str(path.relative_to(scan.folder)).encode()).hexdigest()

    ranked = sorted(scan.files, key=rank)
    count = max(1, min(len(ranked) - 1, round(len(ranked) * share)))
    held = set(ranked[:count])
    return [p for p in scan.files if p not in held], [p for p in scan.files if p in held]
