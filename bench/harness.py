"""Shared by the benchmarks: the compute limit, FLOP counts, photographs, tables, timing.

Benchmarks print tables of ratios measured within one run; nothing here asserts a time.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/serve.py` from the checkout
    sys.path.insert(0, str(ROOT))

RECIPE_PHOTOS = ROOT / "var" / "default-model" / "validation"


# -- timing ------------------------------------------------------------------------------------------

# The report's generator: preset seed (grayscale RGB in, RGB out), 256x256, width 64.
PRESET = "seed"
SIZE = 256
WIDTH = 64


def report_generator():
    """The report-size generator with fixed random weights (speed does not depend on them)."""
    import keras

    from models.networks import build_generator

    keras.utils.set_random_seed(0)
    return build_generator(SIZE, 3, 3, width=WIDTH)


def timed(fn: Callable[[], object], repeat: int, warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn`` over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


# -- the compute limit --------------------------------------------------------------------------------


def matmul_gflops(dtype: str = "float32", n: int = 2048, repeat: int = 5) -> float:
    """Best GFLOP/s of an n x n x n matmul in ``dtype`` (float32 or bfloat16) on this machine."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = tf.cast(tf.constant(rng.standard_normal((n, n), np.float32)), dtype)
    b = tf.cast(tf.constant(rng.standard_normal((n, n), np.float32)), dtype)
    fn = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y)[:1, :1], tf.float32)))
    best = min(timed(lambda: fn(a, b).numpy(), repeat, warmup=2))
    return 2.0 * n**3 / best / 1e9


# -- FLOPs --------------------------------------------------------------------------------------------


def conv_flops(model, input_shapes: Sequence[tuple[int, ...]]) -> float:
    """Forward FLOPs for one sample: 2 x the multiply-adds of every Conv2D and Conv2DTranspose.

    ``input_shapes`` are the per-sample shapes of the model's inputs (e.g. [(256, 256, 3)]).
    BatchNorm, activations and concatenation are left out (under 1% here).
    """
    import keras

    inputs = [keras.Input(shape) for shape in input_shapes]
    sized = keras.models.clone_model(model, input_tensors=inputs if len(inputs) > 1 else inputs[0])
    macs = 0
    for layer in sized.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, h, w, c_in = layer.input.shape
            kh, kw = layer.kernel_size
            macs += h * w * kh * kw * c_in * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
            kh, kw = layer.kernel_size
            macs += h * w * kh * kw * layer.input.shape[-1] * layer.filters
    return 2.0 * macs


# -- photographs --------------------------------------------------------------------------------------


def photographs(count: int = 4) -> tuple[list[np.ndarray], str]:
    """RGB uint8 photographs: the default-model recipe's validation photos when present, else
    synthetic ones; returns (photos, where they came from)."""
    from PIL import Image

    files = sorted(RECIPE_PHOTOS.glob("*.jpg"))[:count]
    if files:
        return [np.asarray(Image.open(f).convert("RGB")) for f in files], f"{RECIPE_PHOTOS} ({len(files)})"
    from tests.photos import make_photo

    return [make_photo(2000, 1500, seed=i) for i in range(count)], "synthetic (tests.photos.make_photo)"


def square(photo: np.ndarray, side: int) -> np.ndarray:
    """The centred largest square, resized to ``side``."""
    from PIL import Image

    h, w = photo.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(photo[top : top + s, left : left + s])
    return np.asarray(crop.resize((side, side), Image.Resampling.LANCZOS))


def megapixels(photo: np.ndarray, mp: float) -> np.ndarray:
    """The photograph resized to about ``mp`` megapixels, aspect kept."""
    from PIL import Image

    h, w = photo.shape[:2]
    scale = (mp * 1e6 / (h * w)) ** 0.5
    size = (round(w * scale), round(h * scale))
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))


def jpeg(photo: np.ndarray, quality: int = 90) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


# -- tables -------------------------------------------------------------------------------------------


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table with a title line."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "-"
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = [f"\n### {title}\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line about the machine: CPU model, cores, bfloat16 support, oneDNN's instruction cap."""
    from models.device import bfloat16_supported, onednn_isa_cap

    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    bf16 = "native bfloat16" if bfloat16_supported("CPU:0") else "no native bfloat16"
    cap = onednn_isa_cap()
    capped = "" if cap == "ALL" else f", oneDNN capped at {cap} (ONEDNN_MAX_CPU_ISA)"
    return f"{model}, {os.cpu_count()} cores, {bf16}{capped}"
