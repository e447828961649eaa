"""The generator's hint inputs (Zhang et al. 2017): a model that takes hints has the hint
channels (a, b of each hinted pixel and a mask, ``models.hints``) after the photograph's, and ends
in ``HintPropagation``, which carries each hint's correction (its colour minus the automatic
prediction there) to the pixels that look like it.

The propagation works on a coarse grid of the picture (``GRID`` x ``GRID`` cells): each cell's
embedding is a learnt projection of the decoder's last features and the lightness there, and a
cell takes the hinted cells' corrections weighted by how alike the two cells are (cosine of their
embeddings, sharpened by a learnt temperature) and how near (a learnt spatial spread), against a
learnt prior weight for "no correction" (Nadaraya-Watson): far or unlike a hint, nothing changes.
The correction is enlarged to the model's size and added to the automatic chroma. With no hint
there is no correction at all, so an input without hints is coloured exactly as the automatic
model would. Learning a metric and three numbers is quick; a network that had to learn to spread
hints by itself (Zhang et al. trained theirs on 1.3 million photographs; a ControlNet-style branch
tried here first) barely moved in 1,000 steps on the recipe's 380 photographs.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from models.hints import HINT_CHANNELS

SPLIT_LAYER = "hint_split_gray"


@keras.saving.register_keras_serializable(package="colorizer")
class Channels(layers.Layer):
    """The channels [start, stop) of the input (the photograph's, or the hints')."""

    def __init__(self, start: int, stop: int, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, x):
        return x[..., self.start : self.stop]

    def compute_output_shape(self, shape):
        return (*shape[:-1], self.stop - self.start)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "start": self.start, "stop": self.stop}


GRID = 32  # the propagation's grid: GRID x GRID cells whatever the side (a multiple of 32)
EMBEDDING = 16


@keras.saving.register_keras_serializable(package="colorizer")
class HintPropagation(layers.Layer):
    """``[chroma, hints, features, lightness]`` -> the chroma (b, s, s, 2), normalised as the
    model's output, with the hints' corrections carried to the cells that look like them."""

    def build(self, shapes):
        channels = int(shapes[2][-1]) + int(shapes[3][-1])
        self.projection = self.add_weight(
            shape=(channels, EMBEDDING), initializer="glorot_uniform", name="projection"
        )
        self.log_temperature = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(2.3), name="log_temperature"
        )
        self.log_spread = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(-1.9), name="log_spread"
        )
        self.log_prior = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(-2.3), name="log_prior"
        )

    def call(self, inputs):
        import tensorflow as tf

        chroma, hints, features, lightness = (tf.cast(x, tf.float32) for x in inputs)
        side = tf.shape(chroma)[1:3]
        cells = GRID * GRID

        def grid(x):  # (b, GRID * GRID, c): the mean over each cell (sides are multiples of GRID)
            step = side // GRID
            blocks = tf.reshape(x, (tf.shape(x)[0], GRID, step[0], GRID, step[1], x.shape[-1]))
            return tf.reshape(tf.reduce_mean(blocks, axis=(2, 4)), (tf.shape(x)[0], cells, x.shape[-1]))

        mask = hints[..., 2:3]
        covered = grid(mask)  # the share of each cell under a hint
        hinted = tf.cast(covered > 0, tf.float32)
        safe = tf.maximum(covered, 1e-6)
        correction = (grid(hints[..., :2] * mask) - grid(chroma * mask)) / safe * hinted  # (b, n, 2)
        embedding = tf.matmul(grid(tf.concat([features, lightness], axis=-1)), self.projection)
        embedding = tf.math.l2_normalize(embedding, axis=-1)
        alike = tf.matmul(embedding, embedding, transpose_b=True) - 1.0  # cosine - 1, in [-2, 0]
        ticks = (tf.range(GRID, dtype=tf.float32) + 0.5) / GRID
        ys, xs = tf.meshgrid(ticks, ticks, indexing="ij")
        where = tf.stack([tf.reshape(ys, [-1]), tf.reshape(xs, [-1])], axis=-1)  # (n, 2)
        distance = tf.reduce_sum(tf.square(where[:, None, :] - where[None, :, :]), axis=-1)  # (n, n)
        spread = tf.exp(self.log_spread)
        logits = tf.exp(self.log_temperature) * alike - distance / (2.0 * spread * spread)
        weights = tf.exp(logits) * tf.transpose(hinted, (0, 2, 1))  # (b, n, n): only hinted cells count
        change = tf.matmul(weights, correction) / (
            tf.reduce_sum(weights, axis=-1, keepdims=True) + tf.exp(self.log_prior)
        )
        change = tf.image.resize(tf.reshape(change, (-1, GRID, GRID, 2)), side, method="bilinear")
        return tf.clip_by_value(chroma + change, -1.0, 1.0)

    def compute_output_shape(self, shapes):
        return shapes[0]


def split_input(in_channels: int, dtype=None) -> tuple[Any, Any, Any]:
    """(the model input, the photograph's channels, the hint channels) of a hint model."""
    inputs = keras.Input((None, None, in_channels + HINT_CHANNELS), name="gray")
    photo = Channels(0, in_channels, name=SPLIT_LAYER, dtype=dtype)(inputs)
    hints = Channels(in_channels, in_channels + HINT_CHANNELS, name="hint_split_hints", dtype=dtype)(inputs)
    return inputs, photo, hints


def accepts_hints(generator: keras.Model) -> bool:
    """Whether a generator ``build_generator`` made takes hint channels."""
    return any(layer.name == SPLIT_LAYER for layer in generator.layers)


def with_no_hints(inputs, generator: keras.Model):
    """``inputs`` (n, s, s, C) with all-zero hint channels appended when ``generator`` takes hints."""
    if not accepts_hints(generator):
        return inputs
    none = ops.zeros((*ops.shape(inputs)[:-1], HINT_CHANNELS), inputs.dtype)
    return ops.concatenate([inputs, none], axis=-1)


def freeze_all_but_hints(generator: keras.Model) -> int:
    """Train only the hint branch: the automatic colours stay exactly the source model's. Returns
    how many layers stay trainable."""
    trainable = 0
    for layer in generator.layers:
        layer.trainable = layer.name.startswith("hint")
        trainable += layer.trainable
    return trainable


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> int:
    """Copy every layer's weights from ``source`` to ``target``'s layer of the same name (a hint
    model's hint layers are left out when ``target`` has none); returns how many layers were
    copied. Raises ValueError when another layer is missing or its shapes differ."""
    names = {layer.name for layer in target.layers}
    copied = 0
    for layer in source.layers:
        if not layer.weights or (layer.name.startswith("hint") and layer.name not in names):
            continue
        if layer.name not in names:
            raise ValueError(f"layer {layer.name!r} has no counterpart")
        target.get_layer(layer.name).set_weights(layer.get_weights())
        copied += 1
    return copied
