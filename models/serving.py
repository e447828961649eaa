"""A generator made ready for serving: its precision, compiled calls, padding to batch buckets, noise.

``InferenceModel`` wraps a ``LoadedModel`` for a server that batches requests:

- **Precision**: "float32" runs the generator as loaded; "bfloat16" runs a twin rebuilt from the
  architecture under Keras's ``mixed_bfloat16`` policy with the same weights (float32 variables,
  bfloat16 matmuls and convolutions, float32 output).
- **Fixed signatures**: one ``tf.function`` per render size, its input signature fixed at
  ``(None, size, size, channels)``; it is traced once, never per request. The caller may pad a
  batch to a few bucket sizes (the engine uses 1, 2, 4, 8) so the kernels only see those shapes.
- **Inference mode**: BatchNorm uses its moving statistics and Dropout is off
  (``training=False``), so an image's output does not depend on the rest of its batch.
- **Noise**: ``predict_noisy`` runs a twin sharing every weight whose Dropout layers stay on
  (pix2pix's noise), seeded, for several plausible colorizations of one photograph.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import tensorflow as tf

from models.networks import build_generator, decoder_of, dropout_layers, noisy_twin
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
        width = int(generator.get_layer("enc1_conv").filters)
    except (ValueError, AttributeError) as exc:
        raise ValueError(f"the generator is not a U-Net this code builds: {exc}") from exc
    twin = build_generator(
        model.image_size,
        preset.in_channels,
        preset.out_channels,
        width=width,
        dtype=policy,
        decoder=decoder_of(generator),
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
        self._noisy: Any = None
        self._functions: dict[tuple[int, bool], Any] = {}
        self._lock = threading.Lock()
        self._noise_lock = threading.Lock()  # reseeding and the noisy call go together

    # -- compiled calls ------------------------------------------------------------------------

    def _noisy_network(self) -> Any:
        # caller holds _lock
        if self._noisy is None:
            with tf.device(self.device):
                self._noisy = noisy_twin(self.network)
        return self._noisy

    def function(self, size: int, noisy: bool = False) -> Any:
        """The tf.function for render side ``size``: input signature (None, size, size, C), fixed."""
        key = (size, noisy)
        with self._lock:
            fn = self._functions.get(key)
            if fn is None:
                network = self._noisy_network() if noisy else self.network
                spec = tf.TensorSpec([None, size, size, self.in_channels], tf.float32)
                fn = tf.function(lambda x: network(x, training=False), input_signature=[spec])
                self._functions[key] = fn
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

    def predict_noisy(self, inputs: np.ndarray, seed: int) -> np.ndarray:
        """Like ``predict`` with Dropout active (BatchNorm still in inference mode): every item of
        the batch gets its own noise; the same ``seed`` and inputs give the same outputs."""
        fn = self.function(inputs.shape[1], noisy=True)
        with self._noise_lock, tf.device(self.device):
            for index, layer in enumerate(dropout_layers(self._noisy)):
                state = layer.seed_generator.state
                state.assign(np.array([seed, index], dtype=state.dtype))
            out = fn(tf.convert_to_tensor(inputs, tf.float32))
        return out.numpy()

    def warm_up(self, size: int, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Trace the function for ``size`` and run each batch size once (kernels are picked per shape)."""
        for count in batch_sizes:
            self.predict(np.zeros((count, size, size, self.in_channels), np.float32))
