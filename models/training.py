"""A training run: dataset -> Pix2Pix.fit() with callbacks -> published generator versions.

Everything a job does while it trains is a Keras callback: progress and ETA, cancellation at the
next step, the report's sample plot, publishing to the model store, and resumable checkpoints so
that a job whose worker died resumes from its last checkpoint instead of starting over, and a job
stopped for a worker shutdown resumes from the very step it stopped at.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from PIL import Image, ImageDraw

from models import color
from models.backbones import PROVENANCE, pretrained_mobilenet_v2
from models.colorize import colorize_array
from models.config import TrainConfig
from models.data import (
    DatasetError,
    DatasetScan,
    center_view,
    load_photo,
    make_dataset,
    resolve_dataset,
    scan_images,
    split_validation,
    to_pair,
)
from models.networks import build_discriminator, build_generator, decoder_of, encoder_of
from models.pix2pix import Pix2Pix, adam
from models.presets import MOBILENET_V2, REPORT_DECODER, REPORT_ENCODER, get_preset
from models.store import BrokenVersion, LoadedModel, ModelStore

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
SAMPLE_COUNT = 3
PLOT_TILE = 128


@dataclass
class TrainResult:
    state: str  # "succeeded", "cancelled" or "interrupted" (stopped to resume later)
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
    interrupted: bool = False  # stopped to be resumed later (worker shutdown), not cancelled
    base_step: int = 0  # the step the run resumed from (0: a fresh start)
    trained_seconds: float = 0.0  # training time of earlier attempts (restored with a checkpoint)

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    @property
    def versions(self) -> list[int]:
        return [self.published[s] for s in sorted(self.published)]


CHECKPOINT_PREFIX = "step-"
CHECKPOINT_WEIGHTS = "checkpoint.weights.h5"
CHECKPOINT_STATE = "state.json"
CHECKPOINTS_KEPT = 2


class ResumableBackup(keras.callbacks.Callback):
    """Resumable checkpoints of the whole training state (both networks' weights, both optimisers'
    state, the global step and the training time so far) in ``backup_dir``.

    A checkpoint is written at the end of every checkpoint interval (one Keras epoch) and when
    training stops early to be resumed (``state.interrupted``: a worker shutdown), so a shutdown
    loses nothing and a killed worker at most one interval. Each is a folder ``step-<n>`` written
    under a temporary name and renamed into place, and the newest two are kept: a checkpoint cut
    short by a kill never replaces a whole one, and an unreadable newest one falls back to the one
    before; if none can be read, the job starts over with a log line rather than failing. A
    checkpoint that cannot be written (full disk) is logged and training goes on. The folder is
    removed once training finishes or is cancelled. Jobs checkpointed by Keras's
    ``BackupAndRestore`` (this project's earlier layout) resume from those files.
    """

    def __init__(self, state: RunState, backup_dir: Path):
        super().__init__()
        self.state, self.backup_dir = state, Path(backup_dir)

    def on_train_begin(self, logs=None):
        step, seconds = self.restore()
        self.state.base_step = self.state.step = step
        self.state.trained_seconds = seconds

    def restore(self) -> tuple[int, float]:
        """Load the newest readable checkpoint into the model: (its step, its training seconds)."""
        candidates = sorted(self.backup_dir.glob(f"{CHECKPOINT_PREFIX}*"), reverse=True)
        for folder in candidates:
            try:
                saved = json.loads((folder / CHECKPOINT_STATE).read_text())
                step, seconds = int(saved["step"]), float(saved.get("trained_seconds") or 0.0)
                self.model.load_weights(folder / CHECKPOINT_WEIGHTS)
            except Exception as exc:  # Keras and h5py raise many types for a damaged file
                log.warning("checkpoint %s is unreadable (%s); trying an older one", folder, exc)
                continue
            log.info("resuming from the checkpoint at step %d", step)
            return step, seconds
        legacy = self._restore_keras_backup()
        if legacy is not None:
            return legacy, 0.0
        if candidates:
            log.warning("no checkpoint in %s is readable; training from the start", self.backup_dir)
        return 0, 0.0

    def _restore_keras_backup(self) -> int | None:
        """The step of a Keras BackupAndRestore checkpoint (epoch = checkpoint interval), if any."""
        for suffix in ("", ".bkp"):
            weights = self.backup_dir / f"latest.weights.h5{suffix}"
            meta = self.backup_dir / f"training_metadata.json{suffix}"
            if not (weights.is_file() and meta.is_file()):
                continue
            try:
                epoch = int(json.loads(meta.read_text())["epoch"])
                self.model.load_weights(weights)
            except Exception as exc:
                log.warning("Keras checkpoint %s is unreadable (%s)", weights, exc)
                continue
            step = min(epoch * self.state.steps_per_epoch, self.state.total_steps)
            log.info("resuming from the Keras checkpoint at step %d", step)
            return step
        return None

    def on_epoch_end(self, epoch, logs=None):
        # Also called when training stops mid-interval: then it is the interrupt's checkpoint.
        if self.state.cancelled or self.state.finished or self.state.step <= self.state.base_step:
            return
        self.save(self.state.step)

    def save(self, step: int) -> Path | None:
        """Write the checkpoint of ``step``; None (logged) if it could not be written."""
        tmp = self.backup_dir / f".tmp-{step}-{uuid.uuid4().hex[:8]}"
        final = self.backup_dir / f"{CHECKPOINT_PREFIX}{step:09d}"
        try:
            tmp.mkdir(parents=True)
            self.model.save_weights(tmp / CHECKPOINT_WEIGHTS)
            saved = {"step": step, "trained_seconds": self.state.trained_seconds, "saved_at": time.time()}
            with open(tmp / CHECKPOINT_STATE, "w") as fh:
                json.dump(saved, fh)
                fh.flush()
                os.fsync(fh.fileno())
            if final.exists():  # the same step checkpointed again (e.g. after a resume)
                shutil.rmtree(final)
            os.rename(tmp, final)
        except OSError as exc:
            log.warning("cannot write the checkpoint of step %d in %s (%s); training goes on", step, tmp, exc)
            shutil.rmtree(tmp, ignore_errors=True)
            return None
        for old in sorted(self.backup_dir.glob(f"{CHECKPOINT_PREFIX}*"), reverse=True)[CHECKPOINTS_KEPT:]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def on_train_end(self, logs=None):
        if self.state.interrupted and not self.state.finished:
            return  # kept for the resumed run
        shutil.rmtree(self.backup_dir, ignore_errors=True)


class StepCounter(keras.callbacks.Callback):
    """Keeps the global step across resumes and stops at the last step.

    Every run, fresh or resumed, counts its Keras epochs from 0: step = the resumed step +
    epoch * steps_per_epoch + batch + 1 (so checkpoints of a resumed run fall at the resumed
    step plus whole intervals).
    """

    def __init__(self, state: RunState):
        super().__init__()
        self.state = state
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        state = self.state
        state.step = state.base_step + self._epoch * state.steps_per_epoch + batch + 1
        state.losses = {k: float(v) for k, v in (logs or {}).items()}
        if state.step >= state.total_steps:
            self.model.stop_training = True


class TimeLimit(keras.callbacks.Callback):
    """Ends training (as finished, not cancelled) once ``seconds`` of training have passed,
    counting the training time of earlier attempts of a resumed job."""

    def __init__(self, state: RunState, seconds: float):
        super().__init__()
        self.state, self.seconds = state, seconds
        self._start = 0.0
        self._before = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()
        self._before = self.state.trained_seconds  # restored by ResumableBackup, which runs first

    def on_train_batch_end(self, batch, logs=None):
        self.state.trained_seconds = self._before + time.monotonic() - self._start
        if self.state.trained_seconds >= self.seconds:
            log.info("time limit of %.0f s reached at step %d", self.seconds, self.state.step)
            self.state.total_steps = self.state.step
            self.model.stop_training = True


class StopOnRequest(keras.callbacks.Callback):
    """Stops training at the next step: for good once ``should_cancel()`` is true, or to be resumed
    later (ResumableBackup then checkpoints this step) once ``should_interrupt()`` is true."""

    def __init__(
        self,
        state: RunState,
        should_cancel: Callable[[], bool] | None = None,
        should_interrupt: Callable[[], bool] | None = None,
    ):
        super().__init__()
        self.state = state
        self.should_cancel = should_cancel
        self.should_interrupt = should_interrupt

    def on_train_batch_end(self, batch, logs=None):
        if self.should_cancel is not None and self.should_cancel():
            log.info("cancel requested at step %d", self.state.step)
            self.state.cancelled = True
            self.model.stop_training = True
        elif self.should_interrupt is not None and self.should_interrupt():
            log.info("stopping at step %d to resume later", self.state.step)
            self.state.interrupted = True
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
        "resumed_from_step": state.base_step or None,
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


class PublishError(OSError):
    """The model store could not take a version (read-only, disk full); names the store."""


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
        if not self.state.cancelled and self.state.finished:
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
        try:
            version = self.store.publish(float32_generator(self.model.generator), metadata)
        except OSError as exc:
            raise PublishError(
                f"cannot publish the generator of step {step} to the model store at {self.store.root}: {exc}"
            ) from exc
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


def training_policy(config: TrainConfig, device: str | None = None) -> str:
    """The Keras dtype policy ``config.precision`` means on this machine (see models.device)."""
    from models.device import CPU, GPU, training_policy

    if config.precision == "float32":
        return "float32"
    if device is None:
        import tensorflow as tf

        device = GPU if tf.config.list_logical_devices("GPU") else CPU
    return training_policy(config.precision, device)


def build_pix2pix(config: TrainConfig, policy: str | None = None) -> Pix2Pix:
    """Generator, discriminator and optimisers for ``config`` (not yet trained), in ``policy``
    (default: what ``config.precision`` means here). float16 gets loss-scaling optimisers."""
    policy = policy or training_policy(config)
    dtype = None if policy == "float32" else policy
    preset = get_preset(config.preset)
    shape = (config.image_size, preset.in_channels, preset.out_channels)
    decoder = config.decoder or REPORT_DECODER
    encoder = config.encoder or REPORT_ENCODER
    generator = build_generator(*shape, width=config.width, dtype=dtype, decoder=decoder, encoder=encoder)
    if config.train_encoder:
        unfreeze_encoder(generator)
    discriminator = build_discriminator(*shape, width=config.width, dtype=dtype)
    model = Pix2Pix(generator, discriminator)
    loss_scale = policy == "mixed_float16"
    model.compile(
        g_optimizer=adam(config.g_learning_rate, config.beta_1, loss_scale=loss_scale),
        d_optimizer=adam(config.d_learning_rate, config.beta_1, loss_scale=loss_scale),
        l1_weight=config.l1_weight,
    )
    if policy != "float32":
        log.info("training in %s", policy)
    return model


def unfreeze_encoder(generator: keras.Model) -> None:
    """Make a pretrained encoder's weights trainable, its batch normalisation excepted: with a few
    photographs a batch, batch statistics would be noise, so those layers keep ImageNet's (a
    non-trainable BatchNormalization runs in inference mode in Keras 3)."""
    encoder = generator.get_layer(MOBILENET_V2)
    encoder.trainable = True
    for layer in encoder.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def float32_generator(generator: keras.Model) -> keras.Model:
    """``generator`` itself when it is float32, else a float32 copy with the same weights.

    What is published stays precision-neutral: the server picks its own precision.
    """
    if all(layer.dtype_policy.name == "float32" for layer in generator.layers):
        return generator
    copy = keras.models.clone_model(
        generator,
        clone_function=lambda layer: layer.__class__.from_config({**layer.get_config(), "dtype": "float32"}),
    )
    copy.set_weights(generator.get_weights())
    return copy


def init_source(config: TrainConfig, store: ModelStore) -> LoadedModel:
    """The version ``config.init_from`` names; raises UnknownVersion or BrokenVersion if unusable."""
    loaded = store.load(config.init_from)
    if loaded.preset != config.preset:
        raise BrokenVersion(
            f"init_from version {config.init_from} is a {loaded.preset!r} model, "
            f"the job asks for {config.preset!r}"
        )
    return loaded


def resolve_architecture(config: TrainConfig, source: LoadedModel | None) -> TrainConfig:
    """``config`` with its decoder and encoder set: as asked, else the init_from model's, else the
    report's (a MobileNetV2 encoder implies the resize decoder)."""
    update = {}
    if config.encoder is None:
        update["encoder"] = encoder_of(source.generator) if source is not None else REPORT_ENCODER
    if config.decoder is None:
        if source is not None:
            update["decoder"] = decoder_of(source.generator)
        else:
            encoder = update.get("encoder", config.encoder)
            update["decoder"] = "resize" if encoder == MOBILENET_V2 else REPORT_DECODER
    return config.model_copy(update=update) if update else config


def init_generator(model: Pix2Pix, config: TrainConfig, source: LoadedModel) -> None:
    """Start the generator from ``source`` (``init_source``); BrokenVersion if it does not fit."""
    encoder = encoder_of(source.generator)
    if encoder != config.encoder:
        raise BrokenVersion(
            f"init_from version {config.init_from} has a {encoder!r} encoder, the job asks for "
            f"{config.encoder!r} (leave encoder out to take the model's)"
        )
    decoder = decoder_of(source.generator)
    if decoder != config.decoder:
        raise BrokenVersion(
            f"init_from version {config.init_from} has a {decoder!r} decoder, the job asks for "
            f"{config.decoder!r} (leave decoder out to take the model's)"
        )
    try:
        model.generator.set_weights(source.generator.get_weights())
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
    should_interrupt: Callable[[], bool] | None = None,
    verbose: int = 0,
    dataset_path: Path | None = None,
    validation_files: list[Path] | None = None,
) -> TrainResult:
    """Train per ``config`` on ``<data_dir>/datasets/<config.dataset>`` (or ``dataset_path``).

    A share ``config.validation_split`` of the photographs (or ``validation_files``, when given)
    is kept out of training; every published version carries its metrics on them. A run in a
    ``job_dir`` that holds a checkpoint resumes from it, and publishes no step that the job
    already published. ``should_interrupt()`` true stops at the next step with a checkpoint of
    it (result state ``interrupted``), for a later run to resume.

    Raises DatasetError for an unusable dataset, UnknownVersion/BrokenVersion for a bad
    ``init_from``, PublishError when the model store cannot take a version, OSError when the job
    folder cannot be written.
    """
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    folder = dataset_path or resolve_dataset(Path(data_dir) / "datasets", config.dataset)
    scan = scan_images(folder, config.image_size)
    log.info("dataset %s: %d usable photographs, skipped %s", folder.name, len(scan.files), scan.skipped)
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
    if job_id is not None:
        # A worker killed between a publish and its ledger write: the store knows better.
        state.published.update(published_steps(store, job_id))
    source = init_source(config, store) if config.init_from is not None else None
    config = resolve_architecture(config, source)
    _save_resolved_config(job_dir, config, scan, state, validation_files)

    model = build_pix2pix(config)
    if source is not None:
        init_generator(model, config, source)
    elif config.encoder == MOBILENET_V2:  # a resumed run's checkpoint then overrides them
        pretrained_mobilenet_v2(model.generator, Path(data_dir) / "pretrained")
    dataset = make_dataset(
        train_files,
        config.image_size,
        config.batch_size,
        config.preset,
        max_aspect=config.max_aspect,
        degrade=config.degrade,
    )
    validation = [
        (p.name, image)
        for p in validation_files
        if (image := load_photo(p, config.image_size * 2)) is not None
    ]
    metadata = _metadata(config, job_id, scan)
    metadata["dataset"]["validation_images"] = [p.name for p in validation_files]
    callbacks: list[keras.callbacks.Callback] = [
        ResumableBackup(state, job_dir / "backup"),
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
    if should_cancel is not None or should_interrupt is not None:
        callbacks.insert(2, StopOnRequest(state, should_cancel, should_interrupt))
    if on_progress is not None:
        callbacks.append(ProgressReporter(state, on_progress))
    log.info(
        "training %s on %d images (%d held out) for %d steps",
        config.preset,
        len(train_files),
        len(validation_files),
        total,
    )
    # Enough epochs for a fresh start; a resumed run needs fewer, and StepCounter stops it at total.
    epochs = math.ceil(total / spe)
    model.fit(
        dataset, epochs=epochs, steps_per_epoch=spe, callbacks=callbacks, verbose=verbose, shuffle=False
    )
    if state.cancelled:
        outcome = "cancelled"
    elif state.interrupted and not state.finished:
        outcome = "interrupted"
    else:
        outcome = "succeeded"
    result = TrainResult(
        state=outcome,
        steps=state.step,
        published_versions=state.versions,
        losses=dict(state.losses),
    )
    if on_progress is not None:
        on_progress(progress_dict(state, 0.0))
    return result


def published_steps(store: ModelStore, job_id: str) -> dict[int, int]:
    """{step: version} of the versions in ``store`` that job ``job_id`` published."""
    found = {}
    for info in store.list():
        meta = info.metadata
        if meta.get("job_id") == job_id and isinstance(meta.get("step"), int):
            found[meta["step"]] = int(info.version)
    return found


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


def _metadata(config: TrainConfig, job_id: str | None, scan: DatasetScan) -> dict[str, Any]:
    return {
        "preset": config.preset,
        "image_size": config.image_size,
        "width": config.width,
        "decoder": config.decoder,
        "encoder": config.encoder,
        **({"pretrained_encoder": PROVENANCE} if config.encoder == MOBILENET_V2 else {}),
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
