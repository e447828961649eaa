"""Run in a fresh process by tests/models/test_distributed.py: TensorFlow's CPU split into two
logical devices (possible only before TensorFlow sets up its devices), then training on one and on
two replicas. Prints one JSON object: what the test checks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import tensorflow as tf

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from models.config import TrainConfig  # noqa: E402
from models.device import training_strategy  # noqa: E402
from models.store import ModelStore  # noqa: E402
from models.training import build_pix2pix, run_training  # noqa: E402
from tests.photos import write_dataset  # noqa: E402

TWO = ["CPU:0", "CPU:1"]


def same_losses() -> dict:
    """The same networks, the same batches, 6 steps on one device and on two replicas: losses per
    2-step interval. Dropout is off: its random draws depend on how the batch is laid out, which is
    the one difference a mirrored run is allowed."""
    dropout_call = keras.layers.Dropout.call
    keras.layers.Dropout.call = lambda self, inputs, training=False: inputs
    try:
        config = TrainConfig(
            dataset="x", preset="seed", image_size=16, width=4, batch_size=4, steps=6, seed=1
        )
        keras.utils.set_random_seed(1)
        one = build_pix2pix(config)
        strategy, _ = training_strategy("mirrored", TWO, config.batch_size)
        with strategy.scope():
            two = build_pix2pix(config, replicas=strategy.num_replicas_in_sync)
        two.generator.set_weights(one.generator.get_weights())
        two.discriminator.set_weights(one.discriminator.get_weights())
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (8, 16, 16, 3)).astype("float32")
        y = np.tanh(2 * x[..., ::-1] + rng.normal(0, 0.1, x.shape)).astype("float32")
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4, drop_remainder=True).repeat()
        histories = [m.fit(data, epochs=3, steps_per_epoch=2, verbose=0).history for m in (one, two)]
        return {"replicas": strategy.num_replicas_in_sync, "one": histories[0], "two": histories[1]}
    finally:
        keras.layers.Dropout.call = dropout_call


def resumes(root: Path, first: list[str], then: list[str]) -> dict:
    """A job stopped after 3 of 6 steps on ``first`` devices, resumed on ``then``."""
    write_dataset(root / "datasets" / "tiny")
    store = ModelStore(root / "models")
    job = f"{len(first)}-then-{len(then)}"
    runs = []
    for devices in (first, then):
        config = TrainConfig(
            dataset="tiny",
            preset="lab",
            image_size=16,
            width=4,
            batch_size=2,
            steps=6,
            checkpoint_every=3,
            publish_every=6,
            sample_every=100,
            seed=1,
            validation_split=0,
            strategy="mirrored" if len(devices) > 1 else "one",
            devices=devices,
        )
        seen = {"steps": 0}

        def stop_after_three(seen=seen, stop=devices is first) -> bool:
            seen["steps"] += 1
            return stop and seen["steps"] >= 3

        result = run_training(
            config,
            data_dir=root,
            job_dir=root / "jobs" / job,
            store=store,
            job_id=job,
            should_interrupt=stop_after_three,
        )
        runs.append(
            {
                "devices": devices,
                "state": result.state,
                "steps": result.steps,
                "steps_run": seen["steps"],
                "published": result.published_versions,
                "losses": result.losses,
            }
        )
    version = runs[-1]["published"][-1]
    generator = store.load(version).generator
    gray = np.linspace(-1, 1, 16 * 16, dtype="float32").reshape(1, 16, 16, 1)
    runs.append({"output_finite": bool(np.isfinite(generator(gray, training=False)).all())})
    return {"job": job, "runs": runs}


if __name__ == "__main__":
    root = Path(sys.argv[1])
    print(
        json.dumps(
            {
                "same_losses": same_losses(),
                "two_then_one": resumes(root / "a", TWO, ["CPU:0"]),
                "one_then_two": resumes(root / "b", ["CPU:0"], TWO),
            }
        )
    )
