"""A generator made ready for serving: its precision, compiled calls, padding to batch buckets.

``InferenceModel`` wraps a ``LoadedModel`` for a server that batches requests:

- **Precision**: "float32" runs the generator as loaded; "bfloat16" runs a twin rebuilt from the
  architecture under Keras's ``mixed_bfloat16`` policy with the same weights (float32 variables,
  bfloat16 matmuls and convolutions, float32 output).
- **Fixed signatures**: one ``tf.function`` per render size, its input signature fixed at
  ``(None, size, size, channels)``; it is traced once, never per request. The caller may pad a
  batch to a few bucket sizes (the engine uses 1, 2, 4, 8) so the kernels only see those shapes.
- **View averaging**: a model whose metadata says ``flip_average`` runs on each image and its
  mirror in one call, and one with ``scale_steps`` also at other sides, resized back
  (``models.colorize.generator_output``).
- **Inference mode**: BatchNorm uses its moving statistics and Dropout is off
  (``training=False``), so an image's output does not depend on the rest of its batch.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import tensorflow as tf

from models.colorize import generator_output
from models.networks import build_generator, decoder_of, encoder_of, width_of
from models.presets import get_preset
from models.store import LoadedModel

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16")
_POLICY = {"bfloat16": "mixed_bfloat16"}


def precision_twin(model: LoadedModel, policy: str) -> Any:
    """The generator rebuilt from its architecture under dtype ``policy``, with the same weights.

    Raises ValueError when the generator is not one ``build_generator`` makes.
    """
    generator = model.generator
    preset = get_preset(model.preset)
    try:
        width = width_of(generator)
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"the generator is not a U-Net this code builds: {exc}") from exc
    twin = build_generator(
        model.image_size,
        preset.in_channels,
        preset.out_channels,
        width=width,
        dtype=policy,
        decoder=decoder_of(generator),
        encoder=encoder_of(generator),
        hints=model.hints,
    )
    twin.set_weights(generator.get_weights())  # raises ValueError when the shapes differ
    return twin


class InferenceModel:
    """Compiled inference for one loaded generator; safe to call from several threads."""

    def __init__(
        self,
        model: LoadedModel,
        precision: str = "float32",
        device: str = "CPU:0",
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
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
        self._functions: dict[int, Any] = {}
        self._lock = threading.Lock()

    # -- compiled calls ------------------------------------------------------------------------

    def function(self, size: int) -> Any:
        """The tf.function for render side ``size``: input signature (None, size, size, C), fixed."""
        with self._lock:
            fn = self._functions.get(size)
            if fn is None:
                network, flip, sizes = self.network, self.model.flip_average, self.model.scale_sizes(size)
                spec = tf.TensorSpec([None, size, size, self.in_channels], tf.float32)
                fn = tf.function(lambda x: generator_output(network, x, flip, sizes), input_signature=[spec])
                self._functions[size] = fn
        return fn

    def tracing_count(self) -> int:
        """How many times any of this model's functions has been traced."""
        with self._lock:
            functions = list(self._functions.values())
        return sum(fn.experimental_get_tracing_count() for fn in functions)

    # -- inference -----------------------------------------------------------------------------

    def predict(self, inputs: np.ndarray, pad_to: int | None = None) -> np.ndarray:
        """Generator output (n, s, s, out) float32 for model inputs (n, s, s, C).

        With ``pad_to``, the batch runs padded with zeros to that many items (dropped again).
        """
        count, size = inputs.shape[0], inputs.shape[1]
        target = max(count, pad_to or 0)
        if target > count:
            padding = np.zeros((target - count, *inputs.shape[1:]), np.float32)
            inputs = np.concatenate([inputs, padding])
        with tf.device(self.device):
            out = self.function(size)(tf.convert_to_tensor(inputs, tf.float32))
        return out.numpy()[:count]

    def warm_up(self, size: int, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Trace the function for ``size`` and run each batch size once (kernels are picked per shape)."""
        for count in batch_sizes:
            self.predict(np.zeros((count, size, size, self.in_channels), np.float32))
