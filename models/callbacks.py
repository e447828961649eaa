"""The callbacks of a training run and the state they share (``RunState``).

Their order matters, and ``models.training.run_training`` lists them in it:
1. ``ResumableBackup``: at the start it restores the newest checkpoint into the networks and
   ``state`` (step, training time, what was published), before anything reads them; at each
   checkpoint interval's end it saves them.
2. ``StepCounter``: advances ``state.step`` after each batch; every later callback reads it.
3. ``StopOnRequest`` and ``TimeLimit`` (when asked for): set ``state.cancelled`` or
   ``state.interrupted`` and stop training at this step.
4. ``models.plots.SamplePlot`` and ``Publisher``: plot and publish at ``state.step``; the
   publisher also publishes once at the end unless cancelled.
5. ``models.tensorboard.JobTensorBoard``: the losses, and the scores and plots of step 4, for
   TensorBoard.
6. ``ProgressReporter`` (when asked for) last: it reports the step, the losses and what was
   published, after the others have acted on this step.
"""

from __future__ import annotations

import json
import logging
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

from common.labels import Labels, LabelsUnreadable
from common.store import BrokenVersion, UnknownVersion, Version
from models.colorize import colorize_array
from models.store import LoadedModel, ModelStore

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]


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
    scores: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> validation metrics
    samples: dict[int, Path] = field(default_factory=dict)  # step -> the sample plot of that step

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
        promote_to: str | None = None,
    ):
        super().__init__()
        self.state, self.every, self.store = state, every, store
        self.ledger, self.metadata = ledger, metadata
        self.validation = validation or []
        self.promote_to = promote_to if self.validation else None
        if promote_to is not None and not self.validation:
            log.warning("promote_to %r is off: the job has no validation photographs to judge on", promote_to)
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
        if self.validation:
            self.state.scores[step] = metadata["metrics"]["validation"]
        if self.promote_to is not None:
            metadata["promotion"] = self.judge(metadata["metrics"]["validation"])
        try:
            version = self.store.publish(float32_generator(self.model.generator), metadata)
        except OSError as exc:
            raise PublishError(
                f"cannot publish the generator of step {step} to the model store at {self.store.root}: {exc}"
            ) from exc
        self.state.published[step] = version
        self.ledger.write_text(json.dumps({str(k): v for k, v in self.state.published.items()}))
        if self.promote_to is not None and metadata["promotion"]["promoted"]:
            self.promote(version, metadata["promotion"])
        return version

    def judge(self, scores: dict[str, float]) -> dict[str, Any]:
        """Whether the version about to be published beats the gray input and the version
        ``promote_to`` points at, both scored here on this job's validation photographs."""
        label = self.promote_to
        incumbent: Version | None = None
        theirs: float | None = None
        try:
            incumbent = Labels(self.store.root).get(label)
        except (UnknownVersion, LabelsUnreadable) as exc:  # UnknownLabel: not set yet
            log.info("promotion to %r: no version to beat (%s)", label, exc)
        if incumbent is not None:
            try:
                theirs = self._score(self.store.load(incumbent))["ciede2000"]
            except Exception as exc:  # a broken incumbent, or no memory for a second generator
                log.warning("promotion to %r: version %s could not be scored: %s", label, incumbent, exc)
                if not isinstance(exc, UnknownVersion | BrokenVersion):
                    return {
                        "label": label,
                        "promoted": False,
                        "reason": f"version {incumbent} could not be scored",
                    }
        return {"label": label, **promotion(scores, incumbent, theirs)}

    def promote(self, version: int, decision: dict[str, Any]) -> None:
        """Move the label, unless it moved since the decision (another job, a person): forward only."""
        try:
            moved = Labels(self.store.root).move_if(self.promote_to, decision.get("incumbent"), version)
        except (OSError, UnknownVersion, LabelsUnreadable) as exc:  # e.g. retention took it meanwhile
            log.warning("version %s was not labelled %r: %s", version, self.promote_to, exc)
            return
        if moved:
            log.info("label %r moved to version %s: %s", self.promote_to, version, decision["reason"])
        else:
            log.info("label %r moved since version %s was judged; it stays", self.promote_to, version)

    def validate(self) -> dict[str, float]:
        """Mean metrics on the held-out photographs, at the model's size."""
        if self._scored is None:
            meta = self.metadata
            self._scored = LoadedModel(None, self.model.generator, meta["preset"], meta["image_size"], meta)
        return self._score(self._scored)

    def _score(self, model: LoadedModel) -> dict[str, float]:
        """``model``'s mean metrics on the held-out photographs, at this run's image size."""
        from models.evaluate import evaluate_images, summary

        size = self.metadata["image_size"]
        report = evaluate_images(
            lambda gray: colorize_array(model, gray), self.validation, size, full_resolution=False
        )
        return summary(report)


def promotion(scores: dict[str, float], incumbent: Version | None, theirs: float | None) -> dict[str, Any]:
    """The quality gate's decision for a version with validation ``scores``: promoted when its
    CIEDE2000 is below the gray input's and below ``theirs`` (the labelled version's, on the same
    photographs; None when the label is not set or its version cannot be loaded)."""
    ours, gray = scores["ciede2000"], scores["grayscale_ciede2000"]
    decision = {
        "ciede2000": ours,
        "grayscale_ciede2000": gray,
        "incumbent": incumbent,
        "incumbent_ciede2000": theirs,
    }
    if not ours < gray:
        reason = f"CIEDE2000 {ours:.2f} does not beat the gray input's {gray:.2f}"
        return {**decision, "promoted": False, "reason": reason}
    if theirs is not None and not ours < theirs:
        reason = f"CIEDE2000 {ours:.2f} does not beat version {incumbent}'s {theirs:.2f}"
        return {**decision, "promoted": False, "reason": reason}
    against = f" and version {incumbent}'s {theirs:.2f}" if theirs is not None else ""
    reason = f"CIEDE2000 {ours:.2f} beats the gray input's {gray:.2f}{against}"
    return {**decision, "promoted": True, "reason": reason}


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
