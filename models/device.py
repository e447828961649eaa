"""Where TensorFlow runs: the GPU when one is visible and allowed, else the CPU.

TensorFlow is imported inside the function so that importing this module stays cheap.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

log = logging.getLogger(__name__)

CPU = "CPU:0"
GPU = "GPU:0"
PREFERENCES = ("auto", "cpu", "gpu")


# XLA's CPU compiler vectorises for 256-bit registers unless told otherwise. With 512-bit vectors
# the per-pixel colour loops of models/colorize.py run about 1.5x faster on an AMD EPYC Zen 5 (the
# 2 MP join: 3.5 -> 2.3 ms) and 1.8x faster on an Intel Xeon with AMX (gray 8.8 -> 4.9 ms, colour
# 8.0 -> 5.0 ms; 2026-12-05). AMD parts with AVX-512 get it, and Intel parts with AMX (Sapphire
# Rapids and later, which barely lower their clock for 512-bit work); Intel's AVX-512 parts before
# Ice Lake slow their clock for it (why LLVM prefers 256), and Ice Lake itself was never measured
# here. XLA reads XLA_FLAGS once, when it compiles its first program, and an unknown flag there
# aborts the process: it is set only with the TensorFlow checked to know it
# (tests/inference/test_engine.py runs XLA with it in a subprocess).
XLA_WIDE_VECTORS = "--xla_cpu_prefer_vector_width=512"
_WIDE_VECTOR_FLAGS = {"AuthenticAMD": {"avx512f"}, "GenuineIntel": {"avx512f", "amx_tile"}}  # by vendor
_WIDE_VECTORS_TENSORFLOW = (2, 21)


def tensorflow_version() -> tuple[int, int]:
    """(major, minor) of the installed TensorFlow, read without importing it; (0, 0) if unknown."""
    from importlib import metadata

    try:
        major, minor = metadata.version("tensorflow").split(".")[:2]
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return 0, 0


def prefer_wide_vectors(
    vendor: str | None = None,
    flags: set[str] | None = None,
    tensorflow: tuple[int, int] | None = None,
    environ: MutableMapping[str, str] = os.environ,
) -> bool:
    """Add ``XLA_WIDE_VECTORS`` to XLA_FLAGS on a CPU of ``_WIDE_VECTOR_FLAGS`` with a TensorFlow
    whose XLA is known to take it (``vendor``, ``flags``, ``tensorflow``: this machine's by default),
    unless XLA_FLAGS already sets a vector width (``--xla_cpu_prefer_vector_width=256`` there opts
    out, ``=512`` opts in elsewhere). Returns whether it added it."""
    current = environ.get("XLA_FLAGS", "")
    if "xla_cpu_prefer_vector_width" in current:
        return False
    needed = _WIDE_VECTOR_FLAGS.get(cpu_vendor() if vendor is None else vendor)
    if needed is None or not needed <= (cpu_flags() if flags is None else flags):
        return False
    if (tensorflow_version() if tensorflow is None else tensorflow) < _WIDE_VECTORS_TENSORFLOW:
        return False
    environ["XLA_FLAGS"] = f"{current} {XLA_WIDE_VECTORS}".strip()
    return True


# What TensorFlow's C++ side prints on every start of a machine like this one, none of it a fault:
# lines written before its logging is set up (so TF_CPP_MIN_LOG_LEVEL cannot hide them), and the
# CUDA probe's error where no NVIDIA driver exists at all.
_NORMAL_START = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning: Could not find TensorRT"
)
_NO_DRIVER_PROBE = re.compile(r"failed call to cuInit")


def no_nvidia_driver() -> bool:
    """True when this machine has no NVIDIA driver loaded (no /proc/driver/nvidia)."""
    return not os.path.exists("/proc/driver/nvidia")


@contextmanager
def quiet_tensorflow_start() -> Iterator[None]:
    """Hold back what TensorFlow writes to file descriptor 2 meanwhile, and pass on all of it but
    the normal start-up lines (``_NORMAL_START``; the failed CUDA probe too, where there is no
    NVIDIA driver). Anything else, a real error included, reaches stderr unchanged afterwards.

    Use it around ``import tensorflow`` and the first device listing, from one thread at a time.
    """
    drop = _NORMAL_START.pattern + (f"|{_NO_DRIVER_PROBE.pattern}" if no_nvidia_driver() else "")
    dropped = re.compile(drop)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not dropped.search(line))
            if kept:
                os.write(2, kept.encode())


def configure_tensorflow(preference: str = "auto") -> str:
    """Set up TensorFlow's devices and return the one to place inference on ("GPU:0" or "CPU:0").

    Every visible GPU gets memory growth, so one process does not grab all of its memory.
    ``preference`` is "auto" (GPU when visible), "gpu" (same, with a warning when there is none) or
    "cpu" (GPUs are hidden from this process). Never fails for lack of a GPU: it falls back to the
    CPU. Raises ValueError for an unknown preference.
    """
    if preference not in PREFERENCES:
        raise ValueError(f"device preference must be one of {', '.join(PREFERENCES)}, got {preference!r}")
    prefer_wide_vectors()
    with quiet_tensorflow_start():
        import tensorflow as tf

        try:
            gpus = tf.config.list_physical_devices("GPU")
        except Exception as exc:  # a broken CUDA install must not stop a CPU service
            log.warning("cannot list GPUs (%s); running on the CPU", exc)
            gpus = []
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # only settable before TensorFlow initialises the GPU
            log.warning("cannot enable memory growth on %s: %s", getattr(gpu, "name", gpu), exc)

    if preference == "cpu":
        if gpus:
            try:
                tf.config.set_visible_devices([], "GPU")
            except RuntimeError as exc:  # already initialised: placement with tf.device still holds
                log.warning("cannot hide the GPUs (%s); inference is still placed on the CPU", exc)
        log.info("TensorFlow device: %s (requested cpu)", CPU)
        return CPU
    if gpus:
        log.info("TensorFlow device: %s (%d GPU(s) visible)", GPU, len(gpus))
        return GPU
    if preference == "gpu":
        log.warning("device 'gpu' was requested but TensorFlow sees no GPU; running on the CPU")
    log.info("TensorFlow device: %s", CPU)
    return CPU


# -- several devices in one training job ------------------------------------------------------------

STRATEGIES = ("auto", "one", "mirrored")


class DeviceError(ValueError):
    """A training job asks for devices this worker cannot give it; the sentence says which."""


def visible_devices(kind: str | None = None) -> list[str]:
    """The logical devices TensorFlow sees here, named as a job names them ("CPU:0", "GPU:1")."""
    import tensorflow as tf

    return [d.name.removeprefix("/device:") for d in tf.config.list_logical_devices(kind)]


@functools.cache
def _mirrored(devices: tuple[str, ...]):
    """One MirroredStrategy per set of devices for the life of the process: a second one over the same
    devices numbers its collective operations from the same keys as the first, and the next job's
    batch normalisation sums then collide with the last job's ("Shape mismatch in the collective
    instance"). A worker runs many jobs in one process."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(devices=[f"/{d}" for d in devices])


def training_strategy(strategy: str = "auto", devices: list[str] | None = None, batch_size: int = 1):
    """The ``tf.distribute`` strategy a training job runs under, and the devices it uses.

    ``devices`` default to every GPU this process sees, else the CPU. ``strategy`` "mirrored" is a
    ``MirroredStrategy`` over them (each step's batch split across the devices, gradients summed);
    "one" uses the first; "auto" is mirrored when there is more than one device and the batch can be
    split across them, else one. One device that TensorFlow would pick anyway is the default
    strategy (no distribution at all), any other a ``OneDeviceStrategy``.

    Raises DeviceError for a device this process does not see, or a batch too small to split.
    """
    import tensorflow as tf

    if strategy not in STRATEGIES:
        raise DeviceError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    seen, gpus = visible_devices(), visible_devices("GPU")
    if devices is None:
        devices = gpus or [CPU]
    missing = [d for d in devices if d.upper() not in seen]
    if missing:
        raise DeviceError(
            f"this worker does not see device(s) {', '.join(missing)}; it sees {', '.join(seen)} "
            "(CUDA_VISIBLE_DEVICES decides which GPUs a worker sees)"
        )
    devices = [d.upper() for d in devices]
    if strategy == "auto":
        strategy = "mirrored" if 1 < len(devices) <= batch_size else "one"
        if len(devices) > batch_size:
            log.warning(
                "batch_size %d is too small to split across %d devices: training on %s alone",
                batch_size,
                len(devices),
                devices[0],
            )
    if strategy == "mirrored":
        if batch_size < len(devices):
            raise DeviceError(
                f"batch_size {batch_size} cannot be split across {len(devices)} devices: "
                "give a batch_size of at least one photograph per device"
            )
        log.info("training on %d devices with MirroredStrategy: %s", len(devices), ", ".join(devices))
        return _mirrored(tuple(devices)), devices
    default = GPU if gpus else CPU
    if devices[0] == default:
        return tf.distribute.get_strategy(), devices[:1]
    log.info("training on %s", devices[0])
    return tf.distribute.OneDeviceStrategy(f"/{devices[0]}"), devices[:1]


# -- precision -----------------------------------------------------------------------------------

INFERENCE_PRECISIONS = ("auto", "float32", "bfloat16")
TRAINING_PRECISIONS = ("auto", "float32", "mixed")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA, or the older DNNL_MAX_CPU_ISA) under which its
# kernels still use bfloat16 instructions; with a lower cap (AVX2, AVX512_CORE_VNNI, ...)
# TensorFlow's and OpenVINO's oneDNN kernels emulate bfloat16 whatever the CPU has. A user sets the
# cap to keep to what every machine of a fleet has; a benchmark sets it to stand in for an older CPU.
_ONEDNN_BF16_CAPS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16")


def onednn_isa_cap() -> str:
    """The instruction-set cap oneDNN runs under ("ALL" when none is set), upper case."""
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()


def _onednn_allows_bf16() -> bool:
    cap = onednn_isa_cap()
    return cap == "ALL" or cap in _ONEDNN_BF16_CAPS or cap.startswith("AVX10")


def _cpuinfo_field(names: tuple[str, ...], cpuinfo: str) -> str:
    """The value of the first line of /proc/cpuinfo named one of ``names`` ("" where missing)."""
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith(names):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is missing)."""
    return set(_cpuinfo_field(("flags", "Features"), cpuinfo).split())


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's vendor_id ("AuthenticAMD", "GenuineIntel"; "" where Linux does not say)."""
    return _cpuinfo_field(("vendor_id",), cpuinfo)


def bfloat16_supported(device: str) -> bool:
    """Whether ``device`` computes bfloat16 natively: AVX512_BF16 or AMX on a CPU (and oneDNN not
    capped below them, ``onednn_isa_cap``), compute capability 8.0 (Ampere) or newer on a GPU.
    Emulated bfloat16 is slower than float32."""
    if device.upper().startswith("GPU"):
        import tensorflow as tf

        try:
            gpus = tf.config.list_physical_devices("GPU")
            index = int(device.rpartition(":")[2] or 0)
            details = tf.config.experimental.get_device_details(gpus[index])
        except Exception as exc:  # no such GPU, or a driver that cannot say
            log.info("cannot read the GPU's compute capability (%s); assuming no bfloat16", exc)
            return False
        return tuple(details.get("compute_capability") or (0, 0)) >= (8, 0)
    return _onednn_allows_bf16() and any(flag in cpu_flags() for flag in _CPU_BF16_FLAGS)


def inference_precision(preference: str, device: str) -> str:
    """The serving precision, "float32" or "bfloat16", on ``device``; raises ValueError for an unknown
    preference.

    "auto" picks bfloat16 where the hardware has it; "bfloat16" is honoured even where it is
    emulated (with a warning), since someone asked for it.
    """
    if preference not in INFERENCE_PRECISIONS:
        raise ValueError(
            f"inference precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {preference!r}"
        )
    supported = bfloat16_supported(device)
    if preference == "auto":
        return "bfloat16" if supported else "float32"
    if preference == "bfloat16" and not supported:
        log.warning(
            "bfloat16 inference was requested but %s has no native bfloat16: it is emulated, slower "
            "than float32, and a photograph's colours may then differ by a few levels with the "
            "batch it runs in",
            device,
        )
    return preference


def training_policy(preference: str, device: str) -> str:
    """The Keras dtype policy for training on ``device``: "float32", "mixed_float16" or "mixed_bfloat16".

    "auto" and "mixed": mixed_float16 on a GPU (with loss scaling in Pix2Pix), mixed_bfloat16 on a
    CPU with native bfloat16; "auto" falls back to float32 elsewhere, "mixed" too (with a warning).
    Raises ValueError for an unknown preference.
    """
    if preference not in TRAINING_PRECISIONS:
        raise ValueError(
            f"training precision must be one of {', '.join(TRAINING_PRECISIONS)}, got {preference!r}"
        )
    if preference == "float32":
        return "float32"
    if device.upper().startswith("GPU"):
        return "mixed_float16"
    if bfloat16_supported(device):
        return "mixed_bfloat16"
    if preference == "mixed":
        log.warning("mixed precision was requested but the CPU has no native bfloat16; training in float32")
    return "float32"
