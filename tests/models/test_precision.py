"""Precision choices: bfloat16 serving where the hardware has it, mixed-precision training steps."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf
from pydantic import ValidationError

import models.device
from models.callbacks import float32_generator
from models.config import TrainConfig
from models.device import bfloat16_supported, inference_precision, training_policy
from models.training import build_pix2pix


def tiny_config(**overrides) -> TrainConfig:
    values = dict(dataset="tiny", image_size=32, steps=2, batch_size=2, width=4, seed=1)
    return TrainConfig(**{**values, **overrides})


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(models.device, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


@pytest.fixture
def plain_cpu(monkeypatch):
    monkeypatch.setattr(models.device, "cpu_flags", lambda: {"sse4_2", "avx2"})


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\n"
    )
    assert {"avx2", "avx512_bf16"} <= models.device.cpu_flags(str(cpuinfo))
    assert models.device.cpu_vendor(str(cpuinfo)) == "AuthenticAMD"
    assert models.device.cpu_flags(str(tmp_path / "missing")) == set()
    assert models.device.cpu_vendor(str(tmp_path / "missing")) == ""


def test_auto_inference_precision_is_bfloat16_only_on_a_cpu_with_it(bf16_cpu):
    assert inference_precision("auto", "CPU:0") == "bfloat16"
    assert inference_precision("float32", "CPU:0") == "float32"


@pytest.mark.parametrize(
    ("variable", "cap", "native"),
    [
        ("ONEDNN_MAX_CPU_ISA", "AVX2", False),
        ("ONEDNN_MAX_CPU_ISA", "avx512_core_vnni", False),
        ("DNNL_MAX_CPU_ISA", "AVX512_CORE", False),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", True),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", True),
        ("ONEDNN_MAX_CPU_ISA", "AVX10_1_512", True),
        ("ONEDNN_MAX_CPU_ISA", "ALL", True),
    ],
)
def test_a_onednn_instruction_cap_below_bfloat16_means_no_native_bfloat16(
    bf16_cpu, monkeypatch, variable, cap, native
):
    monkeypatch.setenv(variable, cap)
    assert models.device.onednn_isa_cap() == cap.upper()
    assert bfloat16_supported("CPU:0") is native
    assert inference_precision("auto", "CPU:0") == ("bfloat16" if native else "float32")


def test_auto_inference_precision_is_float32_on_a_cpu_without_bfloat16(plain_cpu, caplog):
    assert inference_precision("auto", "CPU:0") == "float32"
    assert inference_precision("bfloat16", "CPU:0") == "bfloat16"  # asked for: honoured, with a warning
    assert "no native bfloat16" in caplog.text
    with pytest.raises(ValueError, match="float16"):
        inference_precision("float16", "CPU:0")


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_gpu_bfloat16_needs_compute_capability_8(capability, expected):
    gpu = SimpleNamespace(name="/physical_device:GPU:0")
    with (
        mock.patch.object(tf.config, "list_physical_devices", return_value=[gpu]),
        mock.patch.object(
            tf.config.experimental, "get_device_details", return_value={"compute_capability": capability}
        ),
    ):
        assert bfloat16_supported("GPU:0") is expected
        assert inference_precision("auto", "GPU:0") == ("bfloat16" if expected else "float32")


def test_training_policy_per_device(bf16_cpu):
    assert training_policy("float32", "GPU:0") == "float32"
    assert training_policy("auto", "GPU:0") == "mixed_float16"
    assert training_policy("mixed", "CPU:0") == "mixed_bfloat16"


def test_training_policy_falls_back_to_float32_without_bfloat16(plain_cpu):
    assert training_policy("auto", "CPU:0") == "float32"
    assert training_policy("mixed", "CPU:0") == "float32"


def test_train_config_precision_defaults_to_float32_and_is_checked():
    assert tiny_config().precision == "float32"  # a seeded run stays repeatable
    assert tiny_config(precision="mixed").precision == "mixed"
    with pytest.raises(ValidationError, match="precision"):
        tiny_config(precision="float16")


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    source = rng.uniform(-1, 1, (2, 32, 32, 1)).astype(np.float32)
    target = rng.uniform(-1, 1, (2, 32, 32, 2)).astype(np.float32)
    return tf.constant(source), tf.constant(target)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_a_training_step_runs_and_changes_both_networks(policy):
    keras.utils.set_random_seed(0)
    model = build_pix2pix(tiny_config(), policy=policy)
    compute = "float32" if policy == "float32" else policy.removeprefix("mixed_")
    assert model.generator.get_layer("enc1_conv").compute_dtype == compute
    assert model.generator.output.dtype == "float32"  # the output layer stays float32
    is_scaled = isinstance(model.g_optimizer, keras.optimizers.LossScaleOptimizer)
    assert is_scaled == (policy == "mixed_float16")
    g_before = [w.copy() for w in model.generator.get_weights()]
    d_before = [w.copy() for w in model.discriminator.get_weights()]
    logs = model.train_step(_batch())
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert all(w.dtype == np.float32 for w in model.generator.get_weights())  # variables stay float32
    changed_g = sum(
        not np.array_equal(a, b) for a, b in zip(g_before, model.generator.get_weights(), strict=True)
    )
    changed_d = sum(
        not np.array_equal(a, b) for a, b in zip(d_before, model.discriminator.get_weights(), strict=True)
    )
    assert changed_g > 0 and changed_d > 0


def test_a_mixed_generator_is_published_as_float32_with_the_same_weights():
    keras.utils.set_random_seed(0)
    model = build_pix2pix(tiny_config(), policy="mixed_bfloat16")
    model.train_step(_batch())
    plain = float32_generator(model.generator)
    assert plain is not model.generator
    assert {layer.dtype_policy.name for layer in plain.layers} == {"float32"}
    assert all(
        np.array_equal(a, b) for a, b in zip(plain.get_weights(), model.generator.get_weights(), strict=True)
    )
    f32 = build_pix2pix(tiny_config(), policy="float32").generator
    assert float32_generator(f32) is f32
