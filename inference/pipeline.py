"""The one colorize pipeline: bytes in, colorized bytes out, with the model call batched.

decode -> prepare (a worker thread) -> the model (the engine's inference thread, batched with
whatever else is queued) -> finish -> encode (a worker thread). ``POST /colorize``,
``POST /colorize/batch`` and ``colorizer colorize`` all run these three stages; only how they
schedule them differs (an event loop's threads, a window of a batch, two thread pools).

Every limit applies on every way in: the pixel count from the header before decoding, the
shortest side, the render size. Errors are ``inference.errors`` exceptions.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.engine import Engine
from inference.errors import BadHints
from inference.images import decode_image, encode_image
from models.store import LoadedModel


@dataclass(frozen=True)
class Prepared:
    """A photograph ready for the model: its input, its own lightness (what the chroma is joined
    with) and its transparency, with the model and the side it runs at."""

    model: LoadedModel
    inputs: np.ndarray
    light: Any
    size: int
    alpha: np.ndarray | None = None


class Pipeline:
    """The colorize stages on one engine, with the upload limits of its settings."""

    def __init__(self, engine: Engine, max_pixels: int, min_side: int = 1):
        self.engine = engine
        self.max_pixels = max_pixels
        self.min_side = min_side

    def prepare_array(
        self, model: LoadedModel, image: np.ndarray, render_size: int | None = None, hints: Any = None
    ) -> Prepared:
        """Blocking: ``image`` (RGB (H, W, 3) or gray (H, W) uint8) ready for the model, with
        ``hints`` (JSON text or a list of points, ``models.hints.parse_hints``) when given.
        Raises BadRenderSize, BadHints."""
        points = read_hints(model, hints, image.shape[1], image.shape[0])
        inputs, light, size = self.engine.prepare(model, image, render_size, points)
        return Prepared(model, inputs, light, size)

    def decode_and_prepare(
        self,
        data: bytes,
        model: LoadedModel,
        render_size: int | None = None,
        refuse_when_busy: bool = False,
        hints: Any = None,
        hints_location: str = "body",
    ) -> Prepared:
        """Blocking: check ``render_size`` (and, with ``refuse_when_busy``, that the queue has room,
        before any decoding), decode the photograph upright in sRGB and prepare the model input,
        with ``hints`` (JSON text or a list of points of the upright photograph) when given.

        Raises BadRenderSize, EngineBusy, BadHints (at ``hints_location``), or an ImageRejected
        subclass.
        """
        self.engine.check_render_size(model, render_size)
        if refuse_when_busy:
            self.engine.check_capacity()
        photo = decode_image(data, self.max_pixels, self.min_side)
        height, width = photo.pixels.shape[:2]
        points = read_hints(model, hints, width, height, hints_location)
        inputs, light, size = self.engine.prepare(model, photo.pixels, render_size, points)
        return Prepared(model, inputs, light, size, photo.alpha)

    def submit(self, prepared: Prepared) -> Future:
        """Queue the model call; the future gives the prediction. Raises EngineBusy."""
        return self.engine.submit(prepared.model, prepared.inputs, prepared.size)

    def finish(self, prepared: Prepared, prediction: np.ndarray) -> np.ndarray:
        """Blocking: the colorized RGB uint8 pixels at the photograph's size (a read-only view)."""
        return self.engine.finish(prepared.model, prediction, prepared.light)

    def finish_and_encode(self, prepared: Prepared, prediction: np.ndarray, image_format: str) -> bytes:
        """Blocking: ``finish``, encoded as ``image_format`` with the photograph's transparency where
        the format keeps it. Raises CannotEncode."""
        return encode_image(self.finish(prepared, prediction), image_format, prepared.alpha)

    def colorize_array(
        self,
        image: np.ndarray,
        model: LoadedModel | None = None,
        render_size: int | None = None,
        hints: Any = None,
    ) -> np.ndarray:
        """Blocking, through the batching queue (never from the inference thread): ``image``
        colorized by ``model`` (default: the served one), with ``hints`` when given."""
        prepared = self.prepare_array(model or self.engine.model(), image, render_size, hints)
        return self.finish(prepared, self.submit(prepared).result())

    def colorize_bytes(
        self,
        data: bytes,
        image_format: str = "png",
        model: LoadedModel | None = None,
        render_size: int | None = None,
        hints: Any = None,
    ) -> bytes:
        """Blocking, through the batching queue: a photograph file's bytes colorized and encoded
        (with ``hints``, JSON text or a list of points, when given)."""
        prepared = self.decode_and_prepare(data, model or self.engine.model(), render_size, hints=hints)
        return self.finish_and_encode(prepared, self.submit(prepared).result(), image_format)


def read_hints(model: LoadedModel, hints: Any, width: int, height: int, location: str = "body") -> list:
    """The points of ``hints`` (None, JSON text or a decoded list) on a ``width`` x ``height``
    photograph, for ``model``; raises BadHints (carried at ``location``) naming the bad point, or
    saying that the model takes no hints."""
    from models.hints import BadHint, NoHintInputs, parse_hints

    if hints is None:
        return []
    try:
        points = parse_hints(hints, width, height)
        if points and not model.hints:
            raise NoHintInputs(model.version)
    except BadHint as exc:
        raise BadHints(str(exc), hints if isinstance(hints, str) else None, location) from None
    return points
