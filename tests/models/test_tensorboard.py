"""Each training job's TensorBoard logs (models/tensorboard.py), read back as TensorBoard reads them."""

from __future__ import annotations

from pathlib import Path

from models.config import TrainConfig
from models.store import ModelStore
from models.tensorboard import LOSS_EVERY, TENSORBOARD_DIR
from models.training import run_training


def events(folder: Path) -> dict[str, list[int]]:
    """{tag: [steps]} over every event file under ``folder`` (one per run of the job)."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    tags: dict[str, list[int]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for raw in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(raw.numpy())
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_a_resumed_job_continues_its_curves_with_scores_and_plots(dataset_dir, tmp_path):
    assert LOSS_EVERY == 10  # the steps below are chosen for it
    config = TrainConfig(
        dataset="tiny",
        preset="lab",
        image_size=32,
        width=4,
        batch_size=2,
        steps=12,
        checkpoint_every=4,
        publish_every=6,
        sample_every=6,
        seed=1,
        validation_split=0.3,
    )
    store, job_dir = ModelStore(dataset_dir / "models"), tmp_path / "job"
    asked = []

    def stop_at_5() -> bool:  # asked once after each step
        asked.append(True)
        return len(asked) >= 5

    first = run_training(
        config, data_dir=dataset_dir, job_dir=job_dir, store=store, should_interrupt=stop_at_5
    )
    assert (first.state, first.steps) == ("interrupted", 5)
    second = run_training(config, data_dir=dataset_dir, job_dir=job_dir, store=store)
    assert (second.state, second.steps) == ("succeeded", 12)

    train = events(job_dir / TENSORBOARD_DIR / "train")
    # Keras's callback on the job's step: the resumed run's step 10, not its 5th step from 0
    assert train["batch_g_loss"] == [10] and train["batch_l1"] == [10]
    # each checkpoint interval's losses once, at its last step: the interrupt's, then 4 steps on
    assert train["epoch_g_loss"] == [4, 5, 9, 12]
    assert train["samples"] == [6, 12]
    validation = events(job_dir / TENSORBOARD_DIR / "validation")
    assert validation["ciede2000"] == validation["grayscale_ciede2000"] == [6, 12]
    assert [store.get(v).metadata["step"] for v in second.published_versions] == [6, 12]
