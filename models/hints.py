"""Colour hints (Zhang et al. 2017, "Real-Time User-Guided Image Colorization with Learned Deep
Priors"): points a person places on the photograph, each with a colour, given to the generator as
three channels at its input size: a and b of the hinted colour (normalised as the model's ab
output) and a mask (1 where a hint is). No hints is all zeros, an ordinary input.

At serving, ``parse_hints`` checks a request's points against the (upright) photograph and
``rasterize`` draws them into the model's grid, where the whole photograph is squeezed to a
square. At training, ``simulate_hints`` draws points from the true colours the way the paper did:
a geometric number of them (often none), placed around the centre, each the mean colour of a
small patch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_HINTS = 200
MAX_RADIUS = 256  # pixels of the photograph
HINT_CHANNELS = 3  # a, b, mask
_HEX = re.compile(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})")
# Simulated hints (the paper's choices): the count is geometric with this p (so 1 in 8 inputs has
# none), positions are normal around the centre with this deviation (a share of the side), and
# each hint is the mean colour of a square patch of 1 to MAX_PATCH pixels a side.
SIMULATED_P = 1 / 8
SIMULATED_SPREAD = 0.25
MAX_PATCH = 9


class BadHint(ValueError):
    """A hint that cannot be used; names the point (``index``, from 0) and why."""

    def __init__(self, index: int | None, message: str):
        self.index = index
        super().__init__(message if index is None else f"hint {index}: {message}")


class NoHintInputs(BadHint):
    """Hints sent to a model that has no hint inputs."""

    def __init__(self, version: int | str):
        super().__init__(
            None,
            f"model version {version} takes no colour hints: send the photograph without hints, or ask "
            "for a model that takes them (GET /models says which do)",
        )


@dataclass(frozen=True)
class Hint:
    """A point of the upright photograph (pixels, from its top-left corner) and its colour."""

    x: float
    y: float
    rgb: tuple[int, int, int]
    radius: float = 0.0


def _number(value: Any, name: str, index: int) -> float:
    try:
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    except OverflowError:  # an integer of hundreds of digits
        number = None
    if number is None or not math.isfinite(number):
        raise BadHint(index, f"{name} must be a number, not {str(value)[:40]!r}")
    return number


def _colour(value: Any, index: int) -> tuple[int, int, int]:
    match = _HEX.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise BadHint(index, f"color must be an sRGB colour such as '#aa3311', not {value!r}")
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(d * 2 for d in digits)
    return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))


def parse_hints(data: Any, width: int, height: int) -> list[Hint]:
    """The hints of a request (JSON text or the decoded list of ``{"x", "y", "color", "radius"}``)
    for an upright photograph of ``width`` x ``height``; raises BadHint naming the first bad one."""
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise BadHint(None, f"hints must be a JSON list of points: {exc}") from None
        except RecursionError:  # Python's parser gives up on arrays or objects nested about 1000 deep
            raise BadHint(None, "hints must be a JSON list of points, not lists nested this deep") from None
    if not isinstance(data, list):
        raise BadHint(
            None, 'hints must be a JSON list of points such as [{"x": 10, "y": 20, "color": "#aa3311"}]'
        )
    if len(data) > MAX_HINTS:
        raise BadHint(None, f"at most {MAX_HINTS} hints, not {len(data)}")
    hints = []
    for index, point in enumerate(data):
        if not isinstance(point, dict):
            raise BadHint(index, f"must be an object with x, y and color, not {point!r}")
        unknown = set(point) - {"x", "y", "color", "radius"}
        if unknown:
            raise BadHint(index, f"unknown field(s) {sorted(unknown)}: a hint has x, y, color and radius")
        if "x" not in point or "y" not in point or "color" not in point:
            raise BadHint(index, "needs x, y and color")
        x, y = _number(point["x"], "x", index), _number(point["y"], "y", index)
        if not (0 <= x < width and 0 <= y < height):
            raise BadHint(index, f"({x:g}, {y:g}) is outside the {width}x{height} photograph")
        radius = _number(point.get("radius", 0), "radius", index)
        if not 0 <= radius <= MAX_RADIUS:
            raise BadHint(index, f"radius must be from 0 to {MAX_RADIUS} pixels, not {radius:g}")
        hints.append(Hint(x, y, _colour(point["color"], index), radius))
    return hints


def hint_ab(hints: list[Hint]) -> np.ndarray:
    """The Lab a and b of each hint's colour, (n, 2) float32 (``models.color``'s conversion)."""
    if not hints:
        return np.zeros((0, 2), np.float32)
    from models.color import rgb_to_lab

    rgb = np.asarray([h.rgb for h in hints], np.float32)[None] / 255.0
    return np.asarray(rgb_to_lab(rgb))[0, :, 1:].astype(np.float32)


def rasterize(hints: list[Hint], width: int, height: int, size: int) -> np.ndarray:
    """(size, size, 3) float32: the hints drawn into the model's grid, where the ``width`` x
    ``height`` photograph is squeezed to ``size`` x ``size``. A hint covers the grid cells whose
    centres lie within its radius (an ellipse in the grid when the photograph is not square), and
    at least the cell it falls in; a later hint wins where two overlap."""
    from models.color import AB_SCALE  # here: models.color loads TensorFlow, the API imports this module

    grid = np.zeros((size, size, HINT_CHANNELS), np.float32)
    sx, sy = size / width, size / height
    centres = np.arange(size, dtype=np.float32) + 0.5
    for hint, ab in zip(hints, hint_ab(hints), strict=True):
        gx, gy = (hint.x + 0.5) * sx, (hint.y + 0.5) * sy
        rx, ry = max(hint.radius * sx, 1e-6), max(hint.radius * sy, 1e-6)
        inside = ((centres[None, :] - gx) / rx) ** 2 + ((centres[:, None] - gy) / ry) ** 2 <= 1.0
        inside[min(int(gy), size - 1), min(int(gx), size - 1)] = True
        grid[inside] = (ab[0] / AB_SCALE, ab[1] / AB_SCALE, 1.0)
    return grid


def simulate_hints(ab: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Training hints for a target whose normalised ab is ``ab`` (size, size, 2): (size, size, 3)."""
    size = ab.shape[0]
    grid = np.zeros((size, size, HINT_CHANNELS), np.float32)
    for _ in range(rng.geometric(SIMULATED_P) - 1):
        side = int(rng.integers(1, MAX_PATCH + 1))
        cy, cx = (np.clip(rng.normal(0.5, SIMULATED_SPREAD, 2), 0, 1) * (size - side)).astype(int)
        patch = ab[cy : cy + side, cx : cx + side]
        grid[cy : cy + side, cx : cx + side, :2] = patch.reshape(-1, 2).mean(axis=0)
        grid[cy : cy + side, cx : cx + side, 2] = 1.0
    return grid


# At most this many simulated hints per training input (the geometric count's tail is cut here).
MAX_SIMULATED = 24


def simulated_hints(ab):
    """``simulate_hints`` in TensorFlow, for a tf.data map: hint channels (size, size, 3) drawn
    from a square target's normalised ``ab`` (size, size, 2), with TensorFlow's seeded generator."""
    import tensorflow as tf

    size = tf.shape(ab)[0]
    # geometric count of failures before a success: floor(log U / log(1 - p))
    uniform = tf.random.uniform((), 1e-7, 1.0)
    count = tf.minimum(tf.cast(tf.math.log(uniform) / np.log(1.0 - SIMULATED_P), tf.int32), MAX_SIMULATED)
    sides = tf.random.uniform((MAX_SIMULATED,), 1, MAX_PATCH + 1, dtype=tf.int32)
    centres = tf.clip_by_value(tf.random.normal((MAX_SIMULATED, 2), 0.5, SIMULATED_SPREAD), 0.0, 1.0)
    corners = tf.cast(centres * tf.cast(size - sides, tf.float32)[:, None], tf.int32)  # (n, 2): y, x
    cells = tf.range(size)
    rows = (cells[None, :] >= corners[:, :1]) & (cells[None, :] < corners[:, :1] + sides[:, None])
    cols = (cells[None, :] >= corners[:, 1:]) & (cells[None, :] < corners[:, 1:] + sides[:, None])
    patches = tf.cast(rows[:, :, None] & cols[:, None, :], tf.float32)  # (n, size, size)
    patches *= tf.cast(tf.range(MAX_SIMULATED) < count, tf.float32)[:, None, None]
    means = tf.einsum("nyx,yxc->nc", patches, ab) / tf.maximum(
        tf.reduce_sum(patches, axis=(1, 2))[:, None], 1.0
    )
    # a later hint wins where two overlap: each cell takes the last patch covering it
    order = tf.cast(tf.range(1, MAX_SIMULATED + 1), tf.float32)[:, None, None]
    last = tf.argmax(patches * order, axis=0)  # (size, size)
    mask = tf.reduce_max(patches, axis=0)
    colours = tf.gather(means, last) * mask[..., None]
    return tf.concat([colours, mask[..., None]], axis=-1)
