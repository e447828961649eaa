"""What a training job writes for TensorBoard, under ``<job folder>/tensorboard``.

Keras's own ``TensorBoard`` callback writes the losses (``batch_*`` every ``LOSS_EVERY`` steps, ``epoch_*``
at each checkpoint interval) to ``train/``; this subclass puts them on the job's global step, so
that a job resumed from a checkpoint continues its curves instead of drawing them again from 0, and
adds what the job's other callbacks produce: the validation scores of each published version
(``validation/``: CIEDE2000, PSNR, ... against the gray input) and the report's sample plot
(``train/``, image ``samples``). Point TensorBoard at the jobs folder to watch every job at once:
``tensorboard --logdir <data dir>/jobs``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from models.callbacks import RunState

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
# The losses are written every this many steps: 800 points for the default model's 8,000 steps.
LOSS_EVERY = 10


class JobTensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback on ``state.step``, plus the job's validation scores and plots."""

    def __init__(self, state: RunState, log_dir: Path, every: int = LOSS_EVERY):
        super().__init__(log_dir=str(log_dir), update_freq=every, write_graph=False)
        self.state = state
        self._written: set[tuple[str, int]] = set()

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._global_train_batch = self.state.step  # restored by ResumableBackup, which runs first

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        # an epoch is a checkpoint interval, written at its last step (whatever LOSS_EVERY says)
        with tf.summary.record_if(True):
            super().on_epoch_end(self.state.step, logs)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        self.write_new()

    def on_train_end(self, logs=None):
        self.write_new()  # the publisher's last version comes at the end of training
        super().on_train_end(logs)

    def write_new(self) -> None:
        """The scores and plots that appeared since the last call."""
        import tensorflow as tf

        with tf.summary.record_if(True):  # Keras records its batch summaries every LOSS_EVERY steps only
            self._write_scores(tf)
            self._write_samples(tf)

    def _write_scores(self, tf) -> None:
        for step, scores in sorted(self.state.scores.items()):
            if ("scores", step) in self._written:
                continue
            self._written.add(("scores", step))
            with self._val_writer.as_default():
                for name, value in scores.items():
                    if isinstance(value, int | float):
                        tf.summary.scalar(name, value, step=step)

    def _write_samples(self, tf) -> None:
        for step, path in sorted(self.state.samples.items()):
            if ("samples", step) in self._written:
                continue
            self._written.add(("samples", step))
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))[None]
            except OSError as exc:  # a plot that could not be read back is not worth a failed job
                log.warning("cannot add the sample plot %s to TensorBoard (%s)", path, exc)
                continue
            with self._train_writer.as_default():
                tf.summary.image("samples", pixels, step=step)
