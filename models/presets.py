"""Model presets, one registry by name (junyanz `find_model_using_name` style)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 1024

# How a generator's decoder upsamples (models.networks.up_conv); versions and jobs that name none
# have the report's.
REPORT_DECODER = "transpose"
DECODERS = (REPORT_DECODER, "resize")
# What a generator's encoder is (models.networks.build_generator): the report's U-Net trained from
# scratch, or MobileNetV2 with ImageNet weights (models.backbones); versions that name none: the former.
REPORT_ENCODER = "unet"
MOBILENET_V2 = "mobilenet_v2"
ENCODERS = (REPORT_ENCODER, MOBILENET_V2)
# MobileNetV2 halves the side five times: it runs on any side that is a multiple of this.
MOBILENET_V2_STRIDE = 32


def levels_for(image_size: int) -> int:
    """Number of stride-2 levels for a square image; raises ValueError unless a power of two."""
    if image_size < MIN_IMAGE_SIZE or image_size > MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    depth = int(round(math.log2(image_size)))
    if 2**depth != image_size:
        raise ValueError(f"image_size must be a power of two, got {image_size}")
    return depth


@dataclass(frozen=True)
class Preset:
    """What a generator takes and gives.

    ``space`` is ``"rgb"`` (grayscale RGB in, RGB out, as the report) or ``"lab"`` (L in, ab out).
    """

    name: str
    space: Literal["rgb", "lab"]
    in_channels: int
    out_channels: int
    image_size: int
    width: int
    description: str


PRESETS: dict[str, Preset] = {
    "seed": Preset(
        name="seed",
        space="rgb",
        in_channels=3,
        out_channels=3,
        image_size=256,
        width=64,
        description="The project report exactly: grayscale RGB in, RGB out, 256x256, width 64.",
    ),
    "lab": Preset(
        name="lab",
        space="lab",
        in_channels=1,
        out_channels=2,
        image_size=256,
        width=64,
        description="Lab colorization: L channel in, ab chroma out (pix2pix 'colorization' mode).",
    ),
}

DEFAULT_PRESET = "lab"


def get_preset(name: str) -> Preset:
    """The preset called ``name``; raises KeyError naming the known presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
