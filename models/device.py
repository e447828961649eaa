"""Where TensorFlow runs: the GPU when one is visible and allowed, else the CPU.

TensorFlow is imported inside the function so that importing this module stays cheap.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

CPU = "CPU:0"
GPU = "GPU:0"
PREFERENCES = ("auto", "cpu", "gpu")


def configure_tensorflow(preference: str = "auto") -> str:
    """Set up TensorFlow's devices and return the one to place inference on ("GPU:0" or "CPU:0").

    Every visible GPU gets memory growth, so one process does not grab all of its memory.
    ``preference`` is "auto" (GPU when visible), "gpu" (same, with a warning when there is none) or
    "cpu" (GPUs are hidden from this process). Never fails for lack of a GPU: it falls back to the
    CPU. Raises ValueError for an unknown preference.
    """
    if preference not in PREFERENCES:
        raise ValueError(f"device preference must be one of {', '.join(PREFERENCES)}, got {preference!r}")
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
