"""Loading the model store's generators: ``LoadedModel`` (a generator with its metadata and how
to serve it), checked loading of a version folder (.keras with safe_mode, or float16 weights),
float16 export, and ``ModelStore``: ``common.store.VersionStore`` (layout, listing, atomic
publishing) that loads and publishes Keras generators.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from common.store import (
    DEFAULT_VERSION,
    GENERATOR_FILE,
    METADATA_FILE,
    WEIGHTS_FILE,
    BrokenVersion,
    UnknownVersion,
    VersionStore,
    read_metadata,
    write_json,
)

log = logging.getLogger(__name__)

# The generator that ships inside the package, served while the store is empty.
DEFAULT_MODEL_DIR = Path(__file__).parent / "default"


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
    def chroma_knee(self) -> float:
        """The chroma (Lab units) under which serving mutes a predicted colour in proportion to its
        strength: c becomes c * c / knee below it, stays above (metadata ``chroma_knee``, applied
        after ``chroma_scale``; 0, off, when absent). A faint colour is the model hedging between
        hues it cannot tell apart; a strong one, a colour it knows (recipe.calibrate)."""
        return float(self.metadata.get("chroma_knee", 0.0))

    @property
    def flip_average(self) -> bool:
        """Whether serving averages the generator's output on the photograph and on its mirror
        image (metadata ``flip_average``, chosen on calibration photographs by recipe.default_model)."""
        return bool(self.metadata.get("flip_average", False))

    @cached_property
    def hints(self) -> bool:
        """Whether the generator takes colour hints (``models.hint_net``): its input has the hint
        channels after the preset's."""
        from models.hint_net import accepts_hints

        return accepts_hints(self.generator)

    def scale_sizes(self, size: int) -> tuple[int, ...]:
        """The other sides the generator also runs at when serving at side ``size``, its outputs
        resized to ``size`` and averaged with the one at ``size`` (metadata ``scale_steps``: offsets in
        multiples of ``size_step``, chosen on calibration photographs by recipe.default_model; none
        when absent). Sides below one step are skipped."""
        step = self.size_step
        sides = (size + int(k) * step for k in self.metadata.get("scale_steps", ()))
        return tuple(dict.fromkeys(s for s in sides if s >= step and s != size))


def weights_digest(weights: list[np.ndarray]) -> str:
    """The SHA-256 of a generator's weight arrays (each one's dtype, shape and values): what tells
    one set of weights from another (0.19 s for the report's 54M parameters, 218 MB)."""
    digest = hashlib.sha256()
    for array in weights:
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def load_generator_dir(path: Path, version: int | str) -> LoadedModel:
    """Load and check a version directory; raises BrokenVersion with the reason."""
    import keras

    from models.hint_net import accepts_hints
    from models.hints import HINT_CHANNELS
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
    knee = metadata.get("chroma_knee", 0.0)
    if isinstance(knee, bool) or not isinstance(knee, int | float) or not 0.0 <= knee <= 100.0:
        raise BrokenVersion(f"{path}: chroma_knee must be a number in [0, 100], got {knee!r}")
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
    hint_channels = HINT_CHANNELS if accepts_hints(generator) else 0
    if (in_ch, out_ch) != (preset.in_channels + hint_channels, preset.out_channels):
        raise BrokenVersion(
            f"{path}: generator maps {in_ch}->{out_ch} channels, preset {preset.name!r} needs "
            f"{preset.in_channels}->{preset.out_channels}" + (" and the hints" if hint_channels else "")
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
            hints=metadata.get("hints") is True,
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
    write_json(out_dir / METADATA_FILE, {**model.metadata, "weights_dtype": "float16"})
    return out_dir


def packaged_default(folder: Path | str | None = None) -> Path:
    """``folder`` (the ``COLORIZER_DEFAULT_MODEL_DIR`` setting), else the default model packaged
    with the code (``DEFAULT_MODEL_DIR``): the ``default_dir`` a service's store is given."""
    return Path(folder) if folder is not None else DEFAULT_MODEL_DIR


class ModelStore(VersionStore):
    """A ``VersionStore`` of generators that also loads them (``load``) and publishes Keras models
    (``publish``). The API, the worker and the CLI give it the default's folder their settings say
    (``packaged_default``).
    """

    def load(self, version: int | str) -> LoadedModel:
        """Load a version's generator (or ``"default"``); raises UnknownVersion or BrokenVersion."""
        if version == DEFAULT_VERSION:
            if self.default_dir is None or not self.has_default():
                raise UnknownVersion("no default model is installed with this package")
            return load_generator_dir(self.default_dir, DEFAULT_VERSION)
        version = self._number(version)
        path = self.version_dir(version)
        if not path.is_dir():
            raise UnknownVersion(f"model version {version} does not exist")
        return load_generator_dir(path, version)

    @staticmethod
    def load_dir(path: Path, version: int | str) -> LoadedModel:
        """Load a version directory outside any store (a path given on the command line)."""
        return load_generator_dir(Path(path), version)

    def publish(self, generator: Any, metadata: dict[str, Any]) -> int:
        """Save ``generator`` (Keras's .keras file) with ``metadata`` as the next version and
        return its number, atomically (``VersionStore.publish_files``). Raises OSError."""
        return self.publish_files(lambda folder: generator.save(folder / GENERATOR_FILE), metadata)
