"""Several devices in one training job (tf.distribute.MirroredStrategy), on the CPU split in two."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from models.config import TrainConfig
from models.device import DeviceError, training_strategy

# Losses of a mirrored run against one device's, same weights and batches (two_devices.py): the
# sums of two half batches against one whole batch differ only in float32 rounding.
LOSS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory) -> dict:
    """tests/models/two_devices.py in its own process (logical devices come before TensorFlow's
    set-up, which this process has long done)."""
    root = tmp_path_factory.mktemp("two-devices")
    done = subprocess.run(
        [sys.executable, "-m", "tests.models.two_devices", str(root)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_replicas_give_one_devices_losses(two_devices):
    runs = two_devices["same_losses"]
    assert runs["replicas"] == 2
    one, two = runs["one"], runs["two"]
    assert set(one) == set(two) == {"g_loss", "d_loss", "l1", "g_gan"}
    for name in one:
        assert len(one[name]) == len(two[name]) == 3
        for a, b in zip(one[name], two[name], strict=True):
            assert b == pytest.approx(a, rel=LOSS_TOLERANCE), (name, one[name], two[name])
    # and the networks learnt: an L1 loss that did not move would match whatever the scaling
    assert one["l1"][-1] < one["l1"][0] and one["g_loss"][-1] < one["g_loss"][0]


@pytest.mark.parametrize("run", ["two_then_one", "one_then_two"])
def test_a_checkpoint_resumes_on_either_number_of_devices(two_devices, run):
    first, then, model = two_devices[run]["runs"]
    assert (first["state"], first["steps"], first["published"]) == ("interrupted", 3, [])
    # the second run trained only the 3 steps left, from the first one's checkpoint
    assert (then["state"], then["steps"], then["steps_run"]) == ("succeeded", 6, 3)
    assert len(then["published"]) == 1 and model["output_finite"]
    assert all(0 < value < 1e3 for value in then["losses"].values()), then["losses"]


def test_one_device_is_no_distribution_at_all():
    import tensorflow as tf

    strategy, devices = training_strategy("auto", None, batch_size=4)
    assert devices == ["CPU:0"] and strategy is tf.distribute.get_strategy()
    strategy, devices = training_strategy("mirrored", ["cpu:0"], batch_size=1)
    assert devices == ["CPU:0"] and strategy.num_replicas_in_sync == 1


def test_a_device_this_process_does_not_see_is_named():
    with pytest.raises(DeviceError, match=r"does not see device\(s\) GPU:1, CPU:3; it sees CPU:0"):
        training_strategy("auto", ["GPU:1", "CPU:3"], batch_size=4)
    with pytest.raises(DeviceError, match="strategy must be one of"):
        training_strategy("parameter_server")


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"strategy": "mirrored", "devices": ["GPU:0", "GPU:1"], "batch_size": 1},
            "cannot be split across 2",
        ),
        ({"strategy": "one", "devices": ["GPU:0", "GPU:1"], "batch_size": 2}, "strategy 'one' trains on one"),
        ({"devices": ["GPU:0", "GPU:0"], "batch_size": 2}, "names a device twice"),
        ({"devices": ["TPU:0"]}, "should match pattern"),
        ({"devices": []}, "at least 1 item"),
        ({"strategy": "ring"}, "'auto', 'one' or 'mirrored'"),
    ],
)
def test_config_refuses_device_settings_that_cannot_work(fields, message):
    with pytest.raises(ValidationError, match=message):
        TrainConfig(dataset="x", steps=1, **fields)


def test_auto_keeps_a_batch_too_small_to_split_on_one_device():
    config = TrainConfig(dataset="x", steps=1, devices=["GPU:0", "GPU:1"], batch_size=1)
    assert config.strategy == "auto"  # accepted: auto trains on GPU:0 alone (training_strategy)
