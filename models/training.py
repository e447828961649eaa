"""A training run: dataset -> Pix2Pix.fit() with callbacks -> published generator versions.

Everything a job does while it trains is a Keras callback: progress and ETA, cancellation at the
next step, the report's sample plot, publishing to the model store, and BackupAndRestore so that a
job whose worker died resumes from its last checkpoint instead of starting over.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from PIL import Image, ImageDraw

from models import color
from models.colorize import colorize_array
from models.config import TrainConfig
from models.data import (
    DatasetScan,
    center_view,
    load_photo,
    make_dataset,
    resolve_dataset,
    scan_images,
    split_validation,
    to_pair,
)
from models.networks import build_discriminator, build_generator
from models.pix2pix import Pix2Pix, adam
from models.presets import get_preset
from models.store import BrokenVersion, LoadedModel, ModelStore

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
SAMPLE_COUNT = 3
PLOT_TILE = 128


@dataclass
class TrainResult:
    state: str  # "succeeded" or "cancelled"
    steps: int
    published_versions: list[int] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)


@dataclass
class RunState:
    """What the callbacks share: the global step, the latest losses, what was published."""

    total_steps: int
    steps_per_epoch: int
    steps_per_pass: int
    step: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    published: dict[int, int] = field(default_factory=dict)  # step -> version
    cancelled: bool = False

    @property
    def versions(self) -> list[int]:
        return [self.published[s] for s in sorted(self.published)]


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore at each checkpoint interval, keeping the previous checkpoint as well.

    A checkpoint cut short by a killed worker falls back to the one before it (Keras's
    ``double_checkpoint``); if neither can be read, the backup is discarded with a log line and
    the job starts over rather than failing.
    """

    def __init__(self, backup_dir: Path):
        super().__init__(str(backup_dir), save_freq="epoch", double_checkpoint=True)

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("checkpoint in %s is unreadable (%s); training from the start", self.backup_dir, exc)
            shutil.rmtree(self.backup_dir, ignore_errors=True)
            self.model._initial_epoch = 0


class StepCounter(keras.callbacks.Callback):
    """Keeps the global step across BackupAndRestore resumes and stops at the last step."""

    def __init__(self, state: RunState):
        super().__init__()
        self.state = state
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.state.step = self._epoch * self.state.steps_per_epoch + batch + 1
        self.state.losses = {k: float(v) for k, v in (logs or {}).items()}
        if self.state.step >= self.state.total_steps:
            self.model.stop_training = True


class TimeLimit(keras.callbacks.Callback):
    """Ends training (as finished, not cancelled) once ``seconds`` of training have passed."""

    def __init__(self, state: RunState, seconds: float):
        super().__init__()
        self.state, self.seconds = state, seconds
        self._start = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        if time.monotonic() - self._start >= self.seconds:
            log.info("time limit of %.0f s reached at step %d", self.seconds, self.state.step)
            self.state.total_steps = self.state.step
            self.model.stop_training = True


class CancelOnRequest(keras.callbacks.Callback):
    """Stops training at the next step once ``should_cancel()`` is true."""

    def __init__(self, state: RunState, should_cancel: Callable[[], bool]):
        super().__init__()
        self.state = state
        self.should_cancel = should_cancel

    def on_train_batch_end(self, batch, logs=None):
        if self.should_cancel():
            log.info("cancel requested at step %d", self.state.step)
            self.state.cancelled = True
            self.model.stop_training = True


class ProgressReporter(keras.callbacks.Callback):
    """Calls ``on_progress`` after every step with step, total, epoch, losses and an ETA."""

    def __init__(self, state: RunState, on_progress: ProgressFn):
        super().__init__()
        self.state = state
        self.on_progress = on_progress
        self._start: tuple[float, int] | None = None

    def on_train_batch_end(self, batch, logs=None):
        now, step = time.monotonic(), self.state.step
        if self._start is None:
            self._start = (now, step)  # the first step includes tracing; measure from here
            eta = None
        else:
            t0, s0 = self._start
            per_step = (now - t0) / max(1, step - s0)
            eta = round(per_step * max(0, self.state.total_steps - step), 1)
        self.on_progress(progress_dict(self.state, eta))


def progress_dict(state: RunState, eta: float | None) -> dict[str, Any]:
    return {
        "step": state.step,
        "total": state.total_steps,
        "epoch": state.step // max(1, state.steps_per_pass),
        "losses": {
            "g": state.losses.get("g_loss"),
            "d": state.losses.get("d_loss"),
            "l1": state.losses.get("l1"),
        },
        "eta_seconds": eta,
        "published_versions": state.versions,
    }


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
        fake = self.model.generator(source, training=False)
        rows = [
            to_display(source, self.preset_name, source, is_input=True),
            to_display(fake, self.preset_name, source),
            to_display(target, self.preset_name, source),
        ]
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"plot_{step:06d}.png"
        render_plot(rows, ["input", "generated", "target"]).save(path)
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


class Publisher(keras.callbacks.Callback):
    """Publishes the generator every ``every`` steps and at the end (unless cancelled).

    Steps already published (recorded in ``ledger``) are not published again, so a job resumed
    from a checkpoint does not publish duplicate versions of the same step.
    """

    def __init__(
        self,
        state: RunState,
        every: int,
        store: ModelStore,
        ledger: Path,
        metadata: dict,
        validation: list[tuple[str, np.ndarray]] | None = None,
    ):
        super().__init__()
        self.state, self.every, self.store = state, every, store
        self.ledger, self.metadata = ledger, metadata
        self.validation = validation or []
        self._scored: LoadedModel | None = None

    def on_train_batch_end(self, batch, logs=None):
        if self.state.step % self.every == 0:
            self.publish(self.state.step)

    def on_train_end(self, logs=None):
        if not self.state.cancelled and self.state.step >= self.state.total_steps:
            self.publish(self.state.step)

    def publish(self, step: int) -> int | None:
        if step in self.state.published or (self.state.published and step < max(self.state.published)):
            return None
        metadata = {
            **self.metadata,
            "step": step,
            "created_at": time.time(),
            "metrics": {
                "train": {k: round(v, 6) for k, v in self.state.losses.items()},
                **({"validation": self.validate()} if self.validation else {}),
            },
        }
        version = self.store.publish(self.model.generator, metadata)
        self.state.published[step] = version
        self.ledger.write_text(json.dumps({str(k): v for k, v in self.state.published.items()}))
        return version

    def validate(self) -> dict[str, float]:
        """Mean metrics on the held-out photographs, at the model's size."""
        from models.evaluate import evaluate_images, summary

        if self._scored is None:
            meta = self.metadata
            self._scored = LoadedModel(None, self.model.generator, meta["preset"], meta["image_size"], meta)
        model = self._scored
        report = evaluate_images(
            lambda gray: colorize_array(model, gray), self.validation, model.image_size, full_resolution=False
        )
        return summary(report)


def build_pix2pix(config: TrainConfig) -> Pix2Pix:
    """Generator, discriminator and optimisers for ``config`` (not yet trained)."""
    preset = get_preset(config.preset)
    shape = (config.image_size, preset.in_channels, preset.out_channels)
    generator = build_generator(*shape, width=config.width)
    discriminator = build_discriminator(*shape, width=config.width)
    model = Pix2Pix(generator, discriminator)
    model.compile(
        g_optimizer=adam(config.g_learning_rate, config.beta_1),
        d_optimizer=adam(config.d_learning_rate, config.beta_1),
        l1_weight=config.l1_weight,
    )
    return model


def init_generator(model: Pix2Pix, config: TrainConfig, store: ModelStore) -> None:
    """Start from a published version; raises UnknownVersion or BrokenVersion if it cannot."""
    loaded = store.load(config.init_from)
    if loaded.preset != config.preset:
        raise BrokenVersion(
            f"init_from version {config.init_from} is a {loaded.preset!r} model, "
            f"the job asks for {config.preset!r}"
        )
    try:
        model.generator.set_weights(loaded.generator.get_weights())
    except ValueError as exc:
        raise BrokenVersion(
            f"init_from version {config.init_from} does not fit this job's image_size/width: {exc}"
        ) from exc


def run_training(
    config: TrainConfig,
    *,
    data_dir: Path,
    job_dir: Path,
    store: ModelStore,
    job_id: str | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: Callable[[], bool] | None = None,
    verbose: int = 0,
    dataset_path: Path | None = None,
    validation_files: list[Path] | None = None,
) -> TrainResult:
    """Train per ``config`` on ``<data_dir>/datasets/<config.dataset>`` (or ``dataset_path``).

    A share ``config.validation_split`` of the photographs (or ``validation_files``, when given)
    is kept out of training; every published version carries its metrics on them.

    Raises DatasetError for an unusable dataset, UnknownVersion/BrokenVersion for a bad
    ``init_from``, OSError when the job folder or model store cannot be written.
    """
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    folder = dataset_path or resolve_dataset(Path(data_dir) / "datasets", config.dataset)
    scan = scan_images(folder, config.image_size)
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)

    if validation_files is None:
        train_files, validation_files = split_validation(scan, config.validation_split)
    else:
        train_files = list(scan.files)
    steps_per_pass = max(1, math.ceil(len(train_files) / config.batch_size))
    total = config.steps if config.steps is not None else config.epochs * steps_per_pass
    spe = max(1, min(config.checkpoint_every, total))  # one Keras "epoch" = one checkpoint interval
    state = RunState(total_steps=total, steps_per_epoch=spe, steps_per_pass=steps_per_pass)
    ledger = job_dir / "published.json"
    if ledger.exists():  # a resumed job: what the earlier attempt already published
        state.published = {int(k): int(v) for k, v in json.loads(ledger.read_text()).items()}
    _save_resolved_config(job_dir, config, scan, state, validation_files)

    model = build_pix2pix(config)
    if config.init_from is not None:
        init_generator(model, config, store)
    dataset = make_dataset(train_files, config.image_size, config.batch_size, config.preset)
    validation = [
        (p.name, image)
        for p in validation_files
        if (image := load_photo(p, config.image_size * 2)) is not None
    ]
    metadata = _metadata(config, job_id, scan)
    metadata["dataset"]["validation_images"] = [p.name for p in validation_files]
    callbacks: list[keras.callbacks.Callback] = [
        ResumableBackup(job_dir / "backup"),
        StepCounter(state),
        SamplePlot(
            state,
            config.sample_every,
            job_dir / "samples",
            sample_pairs(validation_files + train_files, config),
            config.preset,
        ),
        Publisher(state, config.publish_every, store, ledger, metadata, validation),
    ]
    if config.max_seconds is not None:
        callbacks.insert(2, TimeLimit(state, config.max_seconds))
    if should_cancel is not None:
        callbacks.insert(2, CancelOnRequest(state, should_cancel))
    if on_progress is not None:
        callbacks.append(ProgressReporter(state, on_progress))
    log.info(
        "training %s on %d images (%d held out) for %d steps",
        config.preset,
        len(train_files),
        len(validation_files),
        total,
    )
    epochs = math.ceil(total / spe)
    model.fit(
        dataset, epochs=epochs, steps_per_epoch=spe, callbacks=callbacks, verbose=verbose, shuffle=False
    )
    result = TrainResult(
        state="cancelled" if state.cancelled else "succeeded",
        steps=state.step,
        published_versions=state.versions,
        losses=dict(state.losses),
    )
    if on_progress is not None:
        on_progress(progress_dict(state, 0.0))
    return result


def sample_pairs(files: list[Path], config: TrainConfig):
    """Fixed (input, target) pairs from the first photographs' centres, for comparable plots."""
    views = []
    for path in files[:SAMPLE_COUNT]:
        image = load_photo(path, config.image_size * 2)
        if image is not None:
            views.append(center_view(image, config.image_size))
    return to_pair(np.stack(views), config.preset)


def _metadata(config: TrainConfig, job_id: str | None, scan: DatasetScan) -> dict[str, Any]:
    return {
        "preset": config.preset,
        "image_size": config.image_size,
        "width": config.width,
        "job_id": job_id,
        "config": config.model_dump(),
        "dataset": {"name": config.dataset, **scan.summary()},
    }


def _save_resolved_config(
    job_dir: Path, config: TrainConfig, scan: DatasetScan, state: RunState, validation: list[Path]
) -> None:
    resolved = {
        **config.model_dump(),
        "total_steps": state.total_steps,
        "steps_per_checkpoint": state.steps_per_epoch,
        "steps_per_pass": state.steps_per_pass,
        "dataset_folder": str(scan.folder),
        "dataset_scan": scan.summary(),
        "validation_files": [str(p) for p in validation],
    }
    (job_dir / "config.json").write_text(json.dumps(resolved, indent=2))
