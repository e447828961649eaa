"""Synthetic photographs made on the fly, for the tests and the benchmarks (plain numpy: no pytest,
no fixtures, no environment set-up, so bench/ can import it)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image


def make_photo(width: int, height: int, seed: int) -> np.ndarray:
    """A colourful synthetic 'photograph': smooth sky-like gradient over a green band, with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([80 + 60 * y / height, 140 + 60 * y / height, np.full_like(y, 230)], -1)
    ground = np.stack([60 + 40 * x / width, 150 + 50 * np.sin(x / 7), 50 + 0 * x], -1)
    horizon = height * (0.4 + 0.2 * rng.random())
    img = np.where((y > horizon)[..., None], ground, sky)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dataset(folder: Path, count: int = 6, size: tuple[int, int] = (72, 56)) -> Path:
    """A folder of colour JPEG/PNG photographs for tiny training runs."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = Image.fromarray(make_photo(size[0] + 4 * i, size[1], seed=i))
        img.save(folder / (f"photo{i}.jpg" if i % 2 else f"photo{i}.png"))
    return folder


def adobe_rgb_like_profile() -> bytes:
    """An ICC v2 matrix/TRC monitor profile with Adobe RGB (1998)'s primaries and gamma 2.2."""
    gamma = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(2.2 * 256))
    colorants = ((0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087), (0.14919, 0.06322, 0.74457))
    return matrix_profile(b"Adobe RGB-like test profile", colorants, gamma)


def srgb_like_profile() -> bytes:
    """An ICC v2 sRGB profile as cameras and scanners embed one: sRGB's primaries adapted to D50 at
    the 16.16 precision of the file, and its tone curve sampled at 1024 points (LittleCMS's own
    sRGB profile is a parametric curve)."""
    v = np.linspace(0.0, 1.0, 1024)
    linear = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    curve = b"curv\0\0\0\0" + struct.pack(">I", 1024) + np.round(linear * 65535).astype(">u2").tobytes()
    colorants = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))
    return matrix_profile(b"sRGB-like test profile", colorants, curve)


def matrix_profile(name: bytes, colorants: tuple, curve: bytes) -> bytes:
    """An ICC v2 matrix/TRC monitor profile: the XYZ (D50) of full red, green and blue and one
    ``curve`` tag body for all three channels.

    Pillow's ImageCms only creates sRGB, Lab and XYZ profiles, so this one is written byte by
    byte (header, tag table, XYZ and curve tags); the tests check ImageCms reads it back.
    """

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + s15(x) + s15(y) + s15(z)

    # ASCII name with its NUL, then empty Unicode (8 bytes) and ScriptCode (3 + 67) descriptions
    description = b"desc\0\0\0\0" + struct.pack(">I", len(name) + 1) + name + b"\0" * (1 + 8 + 3 + 67)
    tags = [
        (b"desc", description),
        (b"cprt", b"text\0\0\0\0public domain\0"),
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        *(
            (kind, xyz(*colorant))
            for kind, colorant in zip((b"rXYZ", b"gXYZ", b"bXYZ"), colorants, strict=True)
        ),
        *((kind, curve) for kind in (b"rTRC", b"gTRC", b"bTRC")),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body + b"\0" * (-len(body) % 4)
    size = offset + len(data)
    header = (
        struct.pack(">I", size)
        + b"\0" * 4
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 24
        + struct.pack(">I", 0)
        + s15(0.9642)
        + s15(1.0)
        + s15(0.8249)
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data
