"""A training run: dataset -> Pix2Pix.fit() with callbacks -> published generator versions.

Everything a job does while it trains is a Keras callback (``models.callbacks``: progress and
ETA, cancellation at the next step, publishing to the model store, and resumable checkpoints so
that a job whose worker died resumes from its last checkpoint instead of starting over, and a job
stopped for a worker shutdown resumes from the very step it stopped at; ``models.plots``: the
report's sample plot). This module builds the networks and runs them, in the callbacks' order.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from models.backbones import PROVENANCE, pretrained_mobilenet_v2
from models.callbacks import (
    ProgressFn,
    ProgressReporter,
    Publisher,
    ResumableBackup,
    RunState,
    StepCounter,
    StopOnRequest,
    TimeLimit,
    progress_dict,
)
from models.config import TrainConfig
from models.data import (
    DatasetScan,
    find_dataset,
    load_photo,
    make_dataset,
    split_validation,
)
from models.device import training_strategy
from models.hint_net import accepts_hints, copy_weights_by_name, freeze_all_but_hints
from models.networks import build_discriminator, build_generator, decoder_of, encoder_of
from models.pix2pix import Pix2Pix, adam
from models.plots import SamplePlot, sample_pairs
from models.presets import MOBILENET_V2, REPORT_DECODER, REPORT_ENCODER, get_preset
from models.store import BrokenVersion, LoadedModel, ModelStore
from models.tensorboard import TENSORBOARD_DIR, JobTensorBoard

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    state: str  # "succeeded", "cancelled" or "interrupted" (stopped to resume later)
    steps: int
    published_versions: list[int] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)


def training_policy(config: TrainConfig, device: str | None = None) -> str:
    """The Keras dtype policy ``config.precision`` means on this machine (see models.device)."""
    from models.device import CPU, GPU, training_policy

    if config.precision == "float32":
        return "float32"
    if device is None:
        import tensorflow as tf

        device = GPU if tf.config.list_logical_devices("GPU") else CPU
    return training_policy(config.precision, device)


def build_pix2pix(
    config: TrainConfig, policy: str | None = None, hints_only: bool = False, replicas: int = 1
) -> Pix2Pix:
    """Generator, discriminator and optimisers for ``config`` (not yet trained), in ``policy``
    (default: what ``config.precision`` means here). float16 gets loss-scaling optimisers. With
    ``hints_only``, only the generator's hint branch trains (``freeze_all_but_hints``). Built inside
    a strategy's scope with several ``replicas``, batch normalisation takes its statistics over the
    whole batch, not each device's share (``synchronize_batch_norm``)."""
    policy = policy or training_policy(config)
    dtype = None if policy == "float32" else policy
    preset = get_preset(config.preset)
    shape = (config.image_size, preset.in_channels, preset.out_channels)
    decoder = config.decoder or REPORT_DECODER
    encoder = config.encoder or REPORT_ENCODER
    generator = build_generator(
        *shape, width=config.width, dtype=dtype, decoder=decoder, encoder=encoder, hints=bool(config.hints)
    )
    if config.train_encoder:
        unfreeze_encoder(generator)
    if hints_only:
        freeze_all_but_hints(generator)
    discriminator = build_discriminator(*shape, width=config.width, dtype=dtype)
    if replicas > 1:
        synchronize_batch_norm(generator)
        synchronize_batch_norm(discriminator)
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


def synchronize_batch_norm(network: keras.Model) -> None:
    """Every batch normalisation layer of ``network`` that learns takes its statistics over the
    whole batch across replicas: pix2pix trains on a few photographs a step, and a device's share
    of them (one photograph on each of four GPUs) would normalise each photograph by itself and
    train a different model than one device does. Frozen layers (a pretrained encoder's) run in
    inference mode and need none."""
    for layer in network.layers:  # a pretrained encoder, the one nested model, is frozen but for its BN
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            layer.synchronized = True


def unfreeze_encoder(generator: keras.Model) -> None:
    """Make a pretrained encoder's weights trainable, its batch normalisation excepted: with a few
    photographs a batch, batch statistics would be noise, so those layers keep ImageNet's (a
    non-trainable BatchNormalization runs in inference mode in Keras 3)."""
    encoder = generator.get_layer(MOBILENET_V2)
    encoder.trainable = True
    for layer in encoder.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


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
    """``config`` with its decoder, encoder and hints set: as asked, else the init_from model's, else
    the report's (a MobileNetV2 encoder implies the resize decoder; no hints).

    Raises BrokenVersion when hints are asked of a model whose encoder cannot take them."""
    update: dict[str, Any] = {}
    if config.hints is None:
        update["hints"] = source is not None and accepts_hints(source.generator)
    if config.encoder is None:
        update["encoder"] = encoder_of(source.generator) if source is not None else REPORT_ENCODER
    if config.decoder is None:
        if source is not None:
            update["decoder"] = decoder_of(source.generator)
        else:
            encoder = update.get("encoder", config.encoder)
            update["decoder"] = "resize" if encoder == MOBILENET_V2 else REPORT_DECODER
    config = config.model_copy(update=update) if update else config
    if config.hints and config.encoder != MOBILENET_V2:
        raise BrokenVersion(
            f"init_from version {config.init_from} has a {config.encoder!r} encoder: hints need mobilenet_v2"
        )
    return config


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
        if accepts_hints(source.generator) == bool(config.hints):
            model.generator.set_weights(source.generator.get_weights())
        else:  # an automatic model gains hints (a new propagation), or a hint model loses them
            copy_weights_by_name(source.generator, model.generator)
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
    scan: DatasetScan | None = None,
) -> TrainResult:
    """Train per ``config`` on ``<data_dir>/datasets/<config.dataset>`` (or ``dataset_path``).

    A share ``config.validation_split`` of the photographs (or ``validation_files``, when given)
    is kept out of training; every published version carries its metrics on them. A run in a
    ``job_dir`` that holds a checkpoint resumes from it, and publishes no step that the job
    already published. ``should_interrupt()`` true stops at the next step with a checkpoint of
    it (result state ``interrupted``), for a later run to resume. ``scan`` is the dataset's
    ``find_dataset`` when the caller has already checked it.

    Raises DatasetError for an unusable dataset, UnknownVersion/BrokenVersion for a bad
    ``init_from``, PublishError when the model store cannot take a version, OSError when the job
    folder cannot be written.
    """
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    if scan is None:
        scan = find_dataset(data_dir, config.dataset, config.image_size, dataset_path)
    log.info("dataset %s: %d usable photographs, skipped %s", scan.folder.name, len(scan.files), scan.skipped)
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

    # an automatic model that gains hints keeps its automatic colours exactly: only the branch trains
    hints_only = bool(config.hints) and source is not None and not accepts_hints(source.generator)
    strategy, devices = training_strategy(config.strategy, config.devices, config.batch_size)
    with strategy.scope():  # variables (networks, optimisers, metrics) on every replica's device
        model = build_pix2pix(config, hints_only=hints_only, replicas=strategy.num_replicas_in_sync)
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
        hints=bool(config.hints),
    )
    validation = [
        (p.name, image)
        for p in validation_files
        if (image := load_photo(p, config.image_size * 2)) is not None
    ]
    metadata = _metadata(config, job_id, scan)
    metadata["dataset"]["validation_images"] = [p.name for p in validation_files]
    # in the order models.callbacks describes: restore first, count the step, stop, act, report
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
        Publisher(state, config.publish_every, store, ledger, metadata, validation, config.promote_to),
        JobTensorBoard(state, job_dir / TENSORBOARD_DIR),
    ]
    if config.max_seconds is not None:
        callbacks.insert(2, TimeLimit(state, config.max_seconds))
    if should_cancel is not None or should_interrupt is not None:
        callbacks.insert(2, StopOnRequest(state, should_cancel, should_interrupt))
    if on_progress is not None:
        callbacks.append(ProgressReporter(state, on_progress))
    log.info(
        "training %s on %d images (%d held out) for %d steps on %s",
        config.preset,
        len(train_files),
        len(validation_files),
        total,
        ", ".join(devices),
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


def _metadata(config: TrainConfig, job_id: str | None, scan: DatasetScan) -> dict[str, Any]:
    return {
        "preset": config.preset,
        "image_size": config.image_size,
        "width": config.width,
        "decoder": config.decoder,
        "encoder": config.encoder,
        "hints": bool(config.hints),
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
