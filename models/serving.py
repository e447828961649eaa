"""A generator made ready for serving: its precision, compiled calls, padding to batch buckets.

``InferenceModel`` wraps a ``LoadedModel`` for a server that batches requests:

- **Precision**: "float32" runs the generator as loaded; "bfloat16" runs a twin cloned from it
  under Keras's ``mixed_bfloat16`` policy with the same weights (bfloat16 matmuls and
  convolutions, float32 normalisation and output), its convolution and dense weights stored in
  bfloat16 (``precision_twin``).
- **Fixed signatures**: one ``tf.function`` per render size, its input signature fixed at
  ``(None, size, size, channels)``; it is traced once, never per request. The caller may pad a
  batch to a few bucket sizes (the engine uses 1, 2, 4, 8) so the kernels only see those shapes.
- **View averaging**: a model whose metadata says ``flip_average`` runs on each image and its
  mirror in one call, and one with ``scale_steps`` also at other sides, resized back
  (``models.colorize.generator_output``).
- **Inference mode**: BatchNorm uses its moving statistics and Dropout is off
  (``training=False``), so an image's output does not depend on the rest of its batch.
- **Runtime** (``models.runtimes``): at the model's own render side, warming up also decides what
  runs it on a CPU: TensorFlow as above, or the same function converted to OpenVINO and checked
  against TensorFlow (``runtime`` "openvino"), or whichever of the two is faster here, measured
  then ("auto"). Other sides, and every GPU, run on TensorFlow.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from models import runtimes
from models.buffers import aligned_empty, host_array, is_aligned, shared_tensor
from models.colorize import generator_output, prepare
from models.networks import FLOAT32_LAYERS, width_of
from models.store import LoadedModel, weights_digest

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16")
_POLICY = {"bfloat16": "mixed_bfloat16"}


# Layers whose weights a twin keeps in its compute dtype. Under a mixed policy a layer keeps them in
# float32 and casts them in every call: for the report's generator in bfloat16, 54M weights cast
# into 109 MB of new tensors per call. Cast once instead, the outputs are the same to the bit and a
# call is faster (Intel Xeon with AMX, 256x256: 41.6 against 58.4 ms at batch 1, 18.7 against 21.7
# ms an image at batch 8). Normalisation keeps its float32 statistics, as the mixed policy does.
_KERNEL_LAYERS = (
    keras.layers.Conv2D,
    keras.layers.Conv2DTranspose,
    keras.layers.DepthwiseConv2D,
    keras.layers.Dense,
)
_INITIALIZERS = ("kernel_initializer", "depthwise_initializer", "bias_initializer")


def precision_twin(model: LoadedModel, policy: str) -> Any:
    """The generator under dtype ``policy`` with the same weights: a clone of it, its output
    (``FLOAT32_LAYERS``) in float32 as ``build_generator`` makes it, and the weights of its
    convolutions and dense layers stored in the policy's compute dtype (``_KERNEL_LAYERS``).

    Raises ValueError when the generator is not one ``build_generator`` makes.
    """
    generator = model.generator
    try:
        width_of(generator)
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"the generator is not a U-Net this code builds: {exc}") from exc
    compute = keras.DTypePolicy(policy).compute_dtype

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name in FLOAT32_LAYERS:
            config["dtype"] = "float32"
        elif isinstance(layer, _KERNEL_LAYERS):
            config["dtype"] = compute
            for key in set(_INITIALIZERS) & set(config):
                config[key] = "zeros"  # overwritten below: the random draws took 0.5 s a load
        else:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(generator, clone_function=clone, recursive=True)  # the encoder too
    twin.set_weights(generator.get_weights())  # raises ValueError when the shapes differ
    return twin


def batch_of(inputs: list[np.ndarray], size: int) -> np.ndarray:
    """One batch (size, *shape) float32 of model ``inputs`` (each of one shape), in an aligned
    buffer that the compiled call shares rather than copies, padded with zeros to ``size`` items.
    Per batch of eight 256x256 inputs, copying them into TensorFlow and its output back out took
    about 3.5 ms of the inference thread's time between calls, with the model's threads idle
    (docs/performance.md)."""
    shape = inputs[0].shape
    batch = aligned_empty(size * int(np.prod(shape)), np.float32).reshape(size, *shape)
    np.stack(inputs, out=batch[: len(inputs)])
    batch[len(inputs) :] = 0
    return batch


class InferenceModel:
    """Compiled inference for one loaded generator; safe to call from several threads."""

    def __init__(
        self,
        model: LoadedModel,
        precision: str = "float32",
        device: str = "CPU:0",
        runtime: str = "tensorflow",
        cache: runtimes.ConversionCache | None = None,
        cancelled: Callable[[], bool] | None = None,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if runtime not in runtimes.RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(runtimes.RUNTIMES)}, got {runtime!r}")
        self.model = model
        self.device = device
        self.precision = precision
        self.network = model.generator
        if precision != "float32":
            try:
                with tf.device(device):
                    self.network = precision_twin(model, _POLICY[precision])
            except ValueError as exc:
                log.warning(
                    "model version %s runs in float32: no %s twin (%s)", model.version, precision, exc
                )
                self.precision = "float32"
        self.in_channels = int(self.network.input_shape[-1])
        self.runtime_preference = runtime
        self.cache = cache
        # Asked between the steps of a warm-up: True gives it up (runtimes.LoadCancelled).
        self.cancelled = cancelled
        # What runs the model's render side (set when warming up at it), and why.
        self.runtime = "tensorflow"
        self.runtime_precision = self.precision
        self.runtime_reason = "not warmed up at the model's render side yet"
        # Why OpenVINO does not serve a model it was to serve (conversion or check failed), else None.
        self.fallback: str | None = None
        self.runtime_seconds: dict[str, float] = {}  # auto's measurement: seconds per image
        self._runners: dict[int, runtimes.Runner] = {}  # sides not run by TensorFlow
        self._decided: set[int] = set()
        self._functions: dict[int, Any] = {}
        self._lock = threading.Lock()

    # -- compiled calls ------------------------------------------------------------------------

    def function(self, size: int) -> Any:
        """The tf.function for render side ``size``: input signature (None, size, size, C), fixed."""
        with self._lock:
            fn = self._functions.get(size)
            if fn is None:
                fn = served_function(self.network, self.model, size, self.in_channels)
                self._functions[size] = fn
        return fn

    def tracing_count(self) -> int:
        """How many times any of this model's functions has been traced."""
        with self._lock:
            functions = list(self._functions.values())
        return sum(fn.experimental_get_tracing_count() for fn in functions)

    # -- inference -----------------------------------------------------------------------------

    def predict(self, inputs: np.ndarray, pad_to: int | None = None) -> np.ndarray:
        """Generator output (n, s, s, out) float32 for model inputs (n, s, s, C): read-only where
        TensorFlow computed it on the CPU (its own memory, not a copy).

        With ``pad_to``, the batch runs padded with zeros to that many items (dropped again), in a
        ``batch_of`` buffer.
        """
        count, size = inputs.shape[0], inputs.shape[1]
        if pad_to is not None and pad_to > count:
            inputs = batch_of(list(inputs), pad_to)
        runner = self._runners.get(size)
        if runner is not None:
            return runner(inputs)[:count]
        return self._tensorflow(inputs)[:count]

    @property
    def runtime_name(self) -> str:
        """What runs the model's render side, e.g. "openvino float32" (``runtimes.Runner.name``)."""
        return f"{self.runtime} {self.runtime_precision}"

    def _tensorflow(self, inputs: np.ndarray) -> np.ndarray:
        """The compiled call on ``inputs``: shared with TensorFlow without a copy when they are a
        ``batch_of`` buffer, and its output read back without one (read-only) from host memory."""
        with tf.device(self.device):
            aligned = is_aligned(inputs) and inputs.dtype == np.float32
            tensor = shared_tensor(inputs) if aligned else tf.convert_to_tensor(inputs, tf.float32)
            return host_array(self.function(inputs.shape[1])(tensor))

    def warm_up(self, size: int, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Trace the function for ``size`` and run each batch size once (kernels are picked per
        shape); at the model's render side, then choose the runtime (``choose_runtime``).

        Raises runtimes.LoadCancelled between two of its steps once ``cancelled`` says so."""
        for count in batch_sizes:
            runtimes.check_cancelled(self.cancelled)
            self.predict(np.zeros((count, size, size, self.in_channels), np.float32))
        if size == self.model.render_size and size not in self._decided:
            self.choose_runtime(size, batch_sizes)
            self._decided.add(size)

    # -- runtime -------------------------------------------------------------------------------

    @functools.cached_property
    def weights_digest(self) -> str:
        """``models.store.weights_digest`` of the generator as served: the weights part of the keys
        of its conversion and of ``auto``'s choice, hashed once."""
        return weights_digest(self.model.generator.get_weights())

    def choose_runtime(self, size: int, batch_sizes: tuple[int, ...]) -> None:
        """Decide what runs side ``size``: TensorFlow (asked, on a GPU, or a model too fast to gain
        from converting), OpenVINO (asked, or measured faster by ``auto``). ``auto``'s choice is
        remembered in the conversion cache for this model on this machine, and a choice remembered
        there is taken without measuring. OpenVINO that cannot convert or does not match TensorFlow
        leaves TensorFlow serving, with a log line and ``fallback`` saying why."""
        tensorflow = runtimes.Runner("tensorflow", self.precision, self._tensorflow)
        largest = np.zeros((max(batch_sizes), size, size, self.in_channels), np.float32)
        preference = self.runtime_preference
        self.runtime, self.fallback = "tensorflow", None
        if preference == "tensorflow":
            self.runtime_reason = "COLORIZER_INFERENCE_RUNTIME is tensorflow"
            return
        if not self.device.upper().startswith("CPU"):
            self.runtime_reason = f"OpenVINO runs on CPUs only; this model runs on {self.device}"
            return
        key, choice = self._recalled_choice(size, len(largest)) if preference == "auto" else (None, None)
        if preference == "auto" and choice is None:
            seconds = runtimes.per_image_seconds(tensorflow, largest, cancelled=self.cancelled)
            if seconds < runtimes.TRIVIAL_SECONDS:
                why = (
                    f"TensorFlow takes {1000 * seconds:.2f} ms per image: too little to gain from converting"
                )
                choice = self._remember(key, "tensorflow", why, {tensorflow.name: seconds})
        if choice is not None and choice["runtime"] == "tensorflow":
            self.runtime_reason, self.runtime_seconds = choice["why"], choice["seconds"]
            return
        runtimes.check_cancelled(self.cancelled)
        try:
            runner = self._openvino(size)
        except runtimes.RuntimeUnavailable as exc:
            self.fallback = str(exc)
            self.runtime_reason = f"OpenVINO is not used: {exc}"
            log.warning("model version %s runs on TensorFlow: %s", self.model.version, exc)
            return
        if preference == "openvino":
            chosen, why = runner, "COLORIZER_INFERENCE_RUNTIME is openvino"
        else:
            if choice is None:
                best, seconds = runtimes.choose([tensorflow, runner], largest, cancelled=self.cancelled)
                measured = ", ".join(f"{name} {1000 * s:.1f} ms" for name, s in seconds.items())
                why = f"the fastest here per image in batches of {len(largest)}: {measured}"
                choice = self._remember(key, best.runtime, why, seconds)
            chosen = runner if choice["runtime"] == "openvino" else tensorflow
            why, self.runtime_seconds = choice["why"], choice["seconds"]
        self.runtime, self.runtime_precision, self.runtime_reason = chosen.runtime, chosen.precision, why
        if chosen is runner:
            self._runners[size] = runner
        log.info("model version %s runs on %s: %s", self.model.version, chosen.name, why)

    def _recalled_choice(self, size: int, batch: int) -> tuple[str | None, dict[str, Any] | None]:
        """(the key of ``auto``'s choice for side ``size`` here, the choice remembered under it with
        its ``why`` saying so, or None); (None, None) without a cache."""
        if self.cache is None:
            return None, None
        options = {
            "purpose": "runtime choice",
            "side": size,
            "batch": batch,
            "channels": self.in_channels,
            "precision": self.precision,
            "flip_average": self.model.flip_average,
            "scale_sizes": list(self.model.scale_sizes(size)),
            "preset": self.model.preset,
            "machine": runtimes.machine(),
        }
        key = runtimes.conversion_key(self.weights_digest, options)
        choice = self.cache.recall(key)
        if choice is not None:
            choice = {**choice, "why": f"{choice['why']} (measured when it first loaded on this machine)"}
        return key, choice

    def _remember(self, key: str | None, runtime: str, why: str, seconds: dict[str, float]) -> dict[str, Any]:
        """The choice made here, kept under ``key`` (the one kept when another server chose first)."""
        choice = {"runtime": runtime, "why": why, "seconds": seconds}
        return self.cache.remember(key, choice) if self.cache is not None and key is not None else choice

    def _openvino(self, size: int) -> runtimes.Runner:
        """The OpenVINO Runner for side ``size``, checked against TensorFlow float32 on a fixed input
        (two synthetic photographs prepared as the service prepares any). Raises RuntimeUnavailable."""
        reference_fn = served_function(self.model.generator, self.model, size, self.in_channels)
        with tf.device(self.device):
            check = np.stack([prepare(self.model, photo, size)[0] for photo in check_photographs()])
            reference = reference_fn(tf.convert_to_tensor(check)).numpy()
        options = {
            "flip_average": self.model.flip_average,
            "scale_sizes": list(self.model.scale_sizes(size)),
            "preset": self.model.preset,
        }
        return runtimes.openvino_runner(
            reference_fn,
            size,
            self.in_channels,
            options,
            self.weights_digest,
            check,
            reference,
            self.cache,
        )


def served_function(network: Any, model: LoadedModel, size: int, channels: int) -> Any:
    """The tf.function of ``generator_output`` of ``network`` as ``model`` is served at side ``size``,
    input signature (None, size, size, ``channels``). A partial, not a lambda: TensorFlow keys its
    tracing statistics by the Python function's code, so one lambda's functions, each traced once
    for a version loaded, read as a function retraced in a loop from the fifth version on, and it
    logged a warning about it."""
    spec = tf.TensorSpec([None, size, size, channels], tf.float32)
    body = functools.partial(
        generator_output, network, flip_average=model.flip_average, scale_sizes=model.scale_sizes(size)
    )
    return tf.function(body, input_signature=[spec])


def check_photographs() -> list[np.ndarray]:
    """Two fixed synthetic RGB photographs (smooth colour fields with stripes and edges, two aspect
    ratios): the input every runtime's output is checked on."""
    rng = np.random.default_rng(19)
    photos = []
    for height, width in ((240, 320), (200, 120)):
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        coarse = rng.uniform(0, 255, (4, 5, 3)).astype(np.float32)
        field = coarse[(y * 4 // height).astype(int), (x * 5 // width).astype(int)]
        field += 40 * (np.sin(x / 6.0) * np.cos(y / 9.0))[..., None]
        photos.append(np.clip(field, 0, 255).astype(np.uint8))
    return photos
