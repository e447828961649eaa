"""Host buffers shared with TensorFlow without copies: 64-byte aligned numpy arrays handed to
compiled functions as DLPack tensors that share their memory, and a host tensor's values read back
as numpy without a copy (``models.pixels``' loops, ``models.serving``'s batched model calls)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Buffers handed to compiled functions are allocated here, aligned, and passed as DLPack tensors
# that share their memory: TensorFlow copies a numpy array it is given (1 ms for the 10 MB a 2 MP
# gray photograph's join reads; 2.2 ms for a batch of eight 256x256 model inputs), and XLA's CPU
# loops crash outright on a buffer that is not aligned, so ``shared_tensor`` checks.
ALIGN = 64  # bytes


def aligned_empty(rows: int, dtype: type, channels: int = 1) -> np.ndarray:
    """An uninitialised C-contiguous (rows,) or (rows, channels) array whose data is 64-byte aligned."""
    itemsize = np.dtype(dtype).itemsize
    size = rows * channels * itemsize
    raw = np.empty(size + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    array = raw[start : start + size].view(dtype)
    return array if channels == 1 else array.reshape(rows, channels)


def is_aligned(array: np.ndarray) -> bool:
    """Whether ``array`` can be shared with TensorFlow: C-contiguous and 64-byte aligned."""
    return bool(array.flags.c_contiguous) and array.ctypes.data % ALIGN == 0


def shared_tensor(array: np.ndarray) -> tf.Tensor:
    """A tensor sharing ``array``'s memory (no copy); ``array`` is from ``aligned_empty``."""
    if not is_aligned(array):
        raise ValueError("an array shared with TensorFlow must be C-contiguous and 64-byte aligned")
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


DLPACK_CPU = 1  # DLPack's device type for host memory


def host_array(tensor: tf.Tensor) -> np.ndarray:
    """A tensor's values as numpy: its own memory, read-only, when it is in host memory (``.numpy()``
    copies: 0.3 ms for a 2 MP photograph's pixels); a copy from a GPU's or another device's."""
    if tensor.__dlpack_device__()[0] != DLPACK_CPU:
        return tensor.numpy()
    return np.from_dlpack(tensor)
