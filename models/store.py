"""The model store: a TensorFlow-Serving-style repository of generator versions on a shared volume.

Layout::

    <root>/<version>/generator.keras    the generator, loaded with safe_mode
    <root>/<version>/metadata.json      preset, image size, training config, job id, step, ...

Versions are positive integers. Publishing writes a hidden temporary directory on the same volume
and renames it into place, so a reader sees a whole version or none. A publisher that fails (full
disk, read-only store) removes its temporary directory; one that is killed mid-publish leaves it,
and the next publish removes such leftovers once they are an hour old.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

GENERATOR_FILE = "generator.keras"
# Compact alternative: float16 weights of a generator rebuilt from metadata (the shipped default).
WEIGHTS_FILE = "generator.weights.npz"
DEFAULT_VERSION = "default"
# The generator that ships inside the package, served while the store is empty.
DEFAULT_MODEL_DIR = Path(__file__).parent / "default"
METADATA_FILE = "metadata.json"
TEMP_PREFIX = ".tmp-"
# A publisher's temporary directory older than this was left by a killed process.
STALE_TEMP_SECONDS = 3600.0


# Version numbers are ASCII digits: str.isdigit() also takes "²" (int() refuses it) and "١٢" or
# "１" (int() reads them as 12 and 1).
_VERSION_NUMBER = re.compile(r"[0-9]+")
# A published version's folder is readable by an API running as another user on the shared volume
# (mkdtemp creates it 0700).
VERSION_DIR_MODE = 0o755


# Far beyond any real store; a longer number is not a version (and would be too long a file name).
MAX_VERSION_DIGITS = 18


def parse_version(text: Any) -> int | None:
    """``text`` as a version number (ASCII digits, above zero), or None for anything else."""
    if isinstance(text, str) and len(text) <= MAX_VERSION_DIGITS and _VERSION_NUMBER.fullmatch(text):
        number = int(text)
        return number if number > 0 else None
    return None


class UnknownVersion(LookupError):
    """No such version in the store."""


class BrokenVersion(RuntimeError):
    """A version directory exists but cannot be loaded (truncated file, bad JSON, wrong shapes)."""


@dataclass(frozen=True)
class VersionInfo:
    version: int | str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A generator ready to run, with what serving needs to know about it."""

    version: int | str
    generator: Any  # keras.Model
    preset: str
    image_size: int
    metadata: dict[str, Any]
    # Set by a server: compiled calls in its precision (models.serving.InferenceModel).
    serving: Any = field(default=None, repr=False, compare=False)

    @property
    def levels(self) -> int:
        from models.presets import levels_for

        return levels_for(self.image_size)

    @property
    def size_step(self) -> int:
        """The sides the generator can run at are multiples of this: its encoder's total stride
        (32 for MobileNetV2's; 2**levels for the report's U-Net, which goes down to 1x1)."""
        from models.presets import MOBILENET_V2, MOBILENET_V2_STRIDE

        return MOBILENET_V2_STRIDE if self.metadata.get("encoder") == MOBILENET_V2 else 2**self.levels

    @property
    def render_size(self) -> int:
        """The side serving runs the generator at unless a request asks for another (metadata
        ``render_size``, chosen on calibration photographs by recipe.default_model; else image_size)."""
        return int(self.metadata.get("render_size", self.image_size))

    @property
    def chroma_scale(self) -> float:
        """The factor serving multiplies the predicted chroma by (metadata ``chroma_scale``, 1 when
        absent): a model calibrated to mute colours it is unsure of (recipe.default_model)."""
        return float(self.metadata.get("chroma_scale", 1.0))

    @property
    def flip_average(self) -> bool:
        """Whether serving averages the generator's output on the photograph and on its mirror
        image (metadata ``flip_average``, chosen on calibration photographs by recipe.default_model)."""
        return bool(self.metadata.get("flip_average", False))

    def scale_sizes(self, size: int) -> tuple[int, ...]:
        """The other sides the generator also runs at when serving at side ``size``, its outputs
        resized to ``size`` and averaged with the one at ``size`` (metadata ``scale_steps``: offsets in
        multiples of ``size_step``, chosen on calibration photographs by recipe.default_model; none
        when absent). Sides below one step are skipped."""
        step = self.size_step
        sides = (size + int(k) * step for k in self.metadata.get("scale_steps", ()))
        return tuple(dict.fromkeys(s for s in sides if s >= step and s != size))


def read_metadata(path: Path) -> dict[str, Any]:
    """metadata.json of a version directory; raises BrokenVersion if missing or not a JSON object."""
    try:
        data = json.loads((path / METADATA_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BrokenVersion(f"{path}: unreadable {METADATA_FILE}: {exc}") from exc
    if not isinstance(data, dict):
        raise BrokenVersion(f"{path}: {METADATA_FILE} is not a JSON object")
    return data


def load_generator_dir(path: Path, version: int | str) -> LoadedModel:
    """Load and check a version directory; raises BrokenVersion with the reason."""
    import keras

    from models.presets import get_preset, levels_for

    metadata = read_metadata(path)
    try:
        preset = get_preset(str(metadata["preset"]))
        image_size = int(metadata["image_size"])
        levels_for(image_size)
    except (KeyError, TypeError, ValueError) as exc:
        raise BrokenVersion(f"{path}: metadata lacks a valid preset/image_size: {exc}") from exc
    scale = metadata.get("chroma_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0.0 < scale <= 2.0:
        raise BrokenVersion(f"{path}: chroma_scale must be a number in (0, 2], got {scale!r}")
    render_size = metadata.get("render_size", image_size)
    if (
        isinstance(render_size, bool)
        or not isinstance(render_size, int)
        or not 0 < render_size <= 8 * image_size
    ):
        raise BrokenVersion(
            f"{path}: render_size must be a whole number in (0, {8 * image_size}], got {render_size!r}"
        )
    if not isinstance(metadata.get("flip_average", False), bool):
        raise BrokenVersion(f"{path}: flip_average must be true or false, got {metadata['flip_average']!r}")
    steps = metadata.get("scale_steps", [])
    if not isinstance(steps, list) or len(steps) > 4 or not all(_small_offset(k) for k in steps):
        raise BrokenVersion(
            f"{path}: scale_steps must be a list of up to 4 non-zero whole numbers in [-4, 4], got {steps!r}"
        )
    use_keras_file = (path / GENERATOR_FILE).exists() or not (path / WEIGHTS_FILE).exists()
    try:
        if use_keras_file:
            generator = keras.saving.load_model(path / GENERATOR_FILE, compile=False, safe_mode=True)
        else:
            generator = _generator_from_weights(path, preset, image_size, metadata)
    except BrokenVersion:
        raise
    except Exception as exc:  # Keras raises many types for a damaged archive
        name = GENERATOR_FILE if use_keras_file else WEIGHTS_FILE
        raise BrokenVersion(f"{path}: cannot load {name}: {exc}") from exc
    in_ch = generator.input_shape[-1]
    out_ch = generator.output_shape[-1]
    if (in_ch, out_ch) != (preset.in_channels, preset.out_channels):
        raise BrokenVersion(
            f"{path}: generator maps {in_ch}->{out_ch} channels, preset {preset.name!r} needs "
            f"{preset.in_channels}->{preset.out_channels}"
        )
    model = LoadedModel(version, generator, preset.name, image_size, metadata)
    if render_size % model.size_step:
        raise BrokenVersion(f"{path}: render_size must be a multiple of {model.size_step}, got {render_size}")
    return model


def _small_offset(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -4 <= value <= 4 and value != 0


def _generator_from_weights(path: Path, preset: Any, image_size: int, metadata: dict[str, Any]) -> Any:
    """Rebuild the generator named by ``metadata`` and load float16 weights (no pickle) as float32."""
    from models.networks import build_generator
    from models.presets import REPORT_DECODER, REPORT_ENCODER

    try:
        width = int(metadata["width"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BrokenVersion(f"{path}: metadata lacks the generator width: {exc}") from exc
    decoder = metadata.get("decoder") or REPORT_DECODER  # versions from before the option
    try:
        generator = build_generator(
            image_size,
            preset.in_channels,
            preset.out_channels,
            width=width,
            decoder=decoder,
            encoder=metadata.get("encoder") or REPORT_ENCODER,
        )
    except ValueError as exc:
        raise BrokenVersion(f"{path}: {exc}") from exc
    with np.load(path / WEIGHTS_FILE, allow_pickle=False) as archive:
        weights = [archive[f"arr_{i}"].astype(np.float32) for i in range(len(archive.files))]
    generator.set_weights(weights)
    return generator


def export_float16(model: LoadedModel, out_dir: Path) -> Path:
    """Write ``model`` as float16 weights plus its metadata (about half a .keras file's size)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = [np.asarray(w).astype(np.float16) for w in model.generator.get_weights()]
    np.savez_compressed(out_dir / WEIGHTS_FILE, *weights)
    _write_json(out_dir / METADATA_FILE, {**model.metadata, "weights_dtype": "float16"})
    return out_dir


def packaged_default(folder: Path | str | None = None) -> Path:
    """``folder`` (the ``COLORIZER_DEFAULT_MODEL_DIR`` setting), else the default model packaged
    with the code (``DEFAULT_MODEL_DIR``): the ``default_dir`` a service's store is given."""
    return Path(folder) if folder is not None else DEFAULT_MODEL_DIR


class ModelStore:
    """Integer-versioned generators under ``root``; safe for concurrent readers and publishers.

    ``default_dir`` is the folder of the version called ``"default"`` (served while the store has
    no loadable version); None: the store has no default. The API, the worker and the CLI give
    theirs as their settings say (``packaged_default``).
    """

    def __init__(self, root: Path | str, default_dir: Path | str | None = None):
        self.root = Path(root)
        self.default_dir = Path(default_dir) if default_dir is not None else None
        self._ignored: set[str] = set()  # names already logged as not a version

    def _version_dirs(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            version = parse_version(child.name)
            if version is not None and child.is_dir():
                found.append((version, child))
            elif not child.name.startswith(".") and child.name not in self._ignored:
                self._ignored.add(child.name)
                log.warning(
                    "ignoring %r in the model store: versions are folders named by a positive "
                    "number in ASCII digits",
                    child.name,
                )
        return sorted(found)

    def public_reason(self, exc: BaseException) -> str:
        """``exc``'s message with this store's and the default model's folders named, not shown
        (answers to clients carry no server paths)."""
        text = str(exc).replace(f"{self.root}{os.sep}", "version ")
        return text.replace(str(self.default_dir), "the default model") if self.default_dir else text

    def versions(self) -> list[int]:
        """Version numbers present, ascending (without reading metadata)."""
        return [v for v, _ in self._version_dirs()]

    def list(self) -> list[VersionInfo]:
        """Every version with its metadata, ascending; unreadable metadata shows as an error field."""
        infos = []
        for version, path in self._version_dirs():
            try:
                metadata = read_metadata(path)
            except BrokenVersion as exc:
                metadata = {"error": self.public_reason(exc)}
            infos.append(VersionInfo(version, path, metadata))
        return infos

    def latest(self) -> VersionInfo | None:
        """The highest version, or None when the store is empty."""
        dirs = self._version_dirs()
        if not dirs:
            return None
        version, path = dirs[-1]
        try:
            metadata = read_metadata(path)
        except BrokenVersion as exc:
            metadata = {"error": self.public_reason(exc)}
        return VersionInfo(version, path, metadata)

    def get(self, version: int | str) -> VersionInfo:
        """One version's info; raises UnknownVersion."""
        number = self._number(version)
        path = self.root / str(number)
        if not path.is_dir():
            raise UnknownVersion(f"model version {version} does not exist")
        return VersionInfo(number, path, read_metadata(path))

    @staticmethod
    def _number(version: int | str) -> int:
        number = version if isinstance(version, int) and not isinstance(version, bool) else None
        if isinstance(version, str):
            number = parse_version(version.strip())
        if number is None or not 0 < number < 10**MAX_VERSION_DIGITS:
            raise UnknownVersion(
                f"model version {version!r} does not exist (versions are positive numbers in ASCII digits)"
            )
        return number

    def load(self, version: int | str) -> LoadedModel:
        """Load a version's generator (or ``"default"``); raises UnknownVersion or BrokenVersion."""
        if version == DEFAULT_VERSION:
            if self.default_dir is None or not self.has_default():
                raise UnknownVersion("no default model is installed with this package")
            return load_generator_dir(self.default_dir, DEFAULT_VERSION)
        version = self._number(version)
        path = self.root / str(version)
        if not path.is_dir():
            raise UnknownVersion(f"model version {version} does not exist")
        return load_generator_dir(path, version)

    def has_default(self) -> bool:
        """Whether the store has a default model (served while it has no loadable version)."""
        return self.default_dir is not None and (self.default_dir / METADATA_FILE).is_file()

    @staticmethod
    def load_dir(path: Path, version: int | str) -> LoadedModel:
        """Load a version directory outside any store (a path given on the command line)."""
        return load_generator_dir(Path(path), version)

    def publish(self, generator: Any, metadata: dict[str, Any]) -> int:
        """Save ``generator`` with ``metadata`` as the next version and return its number.

        The version appears atomically (rename of a finished temporary directory). Raises OSError
        if the store is not writable or the disk is full; no partial version is left behind.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temp_dirs()
        tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-", dir=self.root))
        try:
            os.chmod(tmp, VERSION_DIR_MODE)
            generator.save(tmp / GENERATOR_FILE)
            for attempt in range(100):
                version = (self.versions() or [0])[-1] + 1
                meta = {
                    **metadata,
                    "version": version,
                    "created_at": metadata.get("created_at") or time.time(),
                }
                _write_json(tmp / METADATA_FILE, meta)
                try:
                    # rename() of a directory onto an existing non-empty one fails: no overwrite.
                    os.rename(tmp, self.root / str(version))
                except OSError:
                    if (self.root / str(version)).exists() and attempt < 99:
                        continue  # another publisher took this number; take the next
                    raise
                log.info("published model version %s to %s", version, self.root)
                return version
            raise OSError("could not allocate a model version")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def remove_stale_temp_dirs(self, older_than: float = STALE_TEMP_SECONDS) -> list[Path]:
        """Remove temporary directories of publishers killed mid-publish; returns what was removed."""
        removed = []
        now = time.time()
        for child in self.root.glob(f"{TEMP_PREFIX}*"):
            try:
                if child.is_dir() and now - child.stat().st_mtime > older_than:
                    shutil.rmtree(child)
                    removed.append(child)
            except OSError as exc:
                log.warning("cannot remove the leftover %s: %s", child, exc)
        return removed


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
