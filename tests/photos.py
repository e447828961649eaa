"""Synthetic photographs made on the fly, for the tests and the benchmarks (plain numpy: no pytest,
no fixtures, no environment set-up, so bench/ can import it)."""

from __future__ import annotations

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
