"""The report's sample plot: every ``sample_every`` steps, rows of input, generated and target
images of the same few photographs, so runs and steps compare at a glance."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from PIL import Image, ImageDraw

from common.datasets import DatasetError
from models import color
from models.callbacks import RunState
from models.config import TrainConfig
from models.data import center_view, load_photo, to_pair
from models.hint_net import with_no_hints
from models.presets import get_preset

SAMPLE_COUNT = 3
PLOT_TILE = 128


class SamplePlot(keras.callbacks.Callback):
    """Every ``every`` steps, the report's plot: rows of input, generated and target images."""

    def __init__(self, state: RunState, every: int, folder: Path, pairs, preset_name: str):
        super().__init__()
        self.state, self.every, self.folder = state, every, folder
        self.pairs, self.preset_name = pairs, preset_name

    def on_train_batch_end(self, batch, logs=None):
        if self.state.step % self.every == 0:
            self.write(self.state.step)

    def write(self, step: int) -> Path:
        source, target = self.pairs
        fake = self.model.generator(with_no_hints(source, self.model.generator), training=False)
        rows = [
            to_display(source, self.preset_name, source, is_input=True),
            to_display(fake, self.preset_name, source),
            to_display(target, self.preset_name, source),
        ]
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"plot_{step:06d}.png"
        render_plot(rows, ["input", "generated", "target"]).save(path)
        self.state.samples[step] = path
        return path


def to_display(batch, preset_name: str, source, is_input: bool = False) -> np.ndarray:
    """Model-space tensors -> RGB uint8 images (n, s, s, 3) for the sample plot."""
    import tensorflow as tf

    batch = tf.convert_to_tensor(batch, tf.float32)
    if get_preset(preset_name).space == "lab":
        lum = color.denormalize_l(tf.convert_to_tensor(source, tf.float32))
        chroma = tf.zeros_like(tf.concat([lum, lum], -1)) if is_input else color.denormalize_ab(batch)
        rgb = color.lab_to_rgb(tf.concat([lum, chroma], axis=-1))
    else:
        rgb = tf.clip_by_value((batch + 1.0) / 2.0, 0.0, 1.0)
    return np.asarray(tf.round(rgb * 255.0), dtype=np.uint8)


def render_plot(rows: list[np.ndarray], labels: list[str]) -> Image.Image:
    """A grid with one labelled row per entry of ``rows`` (each (n, s, s, 3) uint8)."""
    n = rows[0].shape[0]
    margin, label_w = 4, 72
    sheet = Image.new("RGB", (label_w + n * (PLOT_TILE + margin), len(rows) * (PLOT_TILE + margin)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (row, label) in enumerate(zip(rows, labels, strict=True)):
        top = r * (PLOT_TILE + margin)
        draw.text((4, top + PLOT_TILE // 2 - 6), label, fill="black")
        for c in range(n):
            tile = Image.fromarray(row[c]).resize((PLOT_TILE, PLOT_TILE), Image.Resampling.NEAREST)
            sheet.paste(tile, (label_w + c * (PLOT_TILE + margin), top))
    return sheet


def sample_pairs(files: list[Path], config: TrainConfig):
    """Fixed (input, target) pairs from the first photographs' centres, for comparable plots."""
    views = []
    for path in files[:SAMPLE_COUNT]:
        image = load_photo(path, config.image_size * 2)
        if image is not None:
            views.append(center_view(image, config.image_size))
    if not views:
        raise DatasetError(
            f"none of the photographs of dataset {config.dataset!r} can be read any more (the first "
            f"{min(len(files), SAMPLE_COUNT)} tried): was it deleted or changed while the job started?"
        )
    return to_pair(np.stack(views), config.preset)
