"""Openly licensed colour photographs from Debian packages, for the default model's recipe.

Each ``Source`` (``recipe.catalogue``) names a package and a file pattern inside it, or inside a
Qt resource bundle (``.rcc``) that the package ships (GCompris keeps its photographs in those).
``collect`` fetches the packages (``apt-get download``, ``dpkg-deb -x``; Debian or Ubuntu only),
extracts the matching files, looks up each one's author and licence in the package's
machine-readable ``debian/copyright`` (python-debian), and drops what cannot teach colour: drawings, near-gray
photographs, ones too small, and duplicates (the same picture at another size or crop).
Cut-outs on a transparent background (Scratch's photographs of people, Tux Paint's stamps) are
pasted onto a training scene so that they become ordinary photographs.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import logging
import os
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from models.data import colour_spread, is_near_gray
from recipe.catalogue import PICTURES, SOURCES, Source

log = logging.getLogger(__name__)

# Photographs whose short side is below this are too small to crop a 128 px training view from.
MIN_SHORT_SIDE = 160
# A cut-out is pasted onto a scene of this side, filling most of its height.
CUTOUT_CANVAS = 256
MIN_CUTOUT_SIDE = 90
# Two pictures whose 64-bit difference hashes differ in at most this many bits are one picture.
DUPLICATE_BITS = 6
# A drawing has large areas of one exact colour (``flat_share``); a photographed person cut out
# (even as a palette GIF) has little: cartoons measured 0.21-0.85, photographs 0.04-0.12. A whole
# photograph's smooth sky or bokeh can be flat too (0.3-0.6 seen), so scenes only fail far above
# that, and the few drawn scenes among the sources are excluded by name (looked at).
DRAWING_FLAT_SHARE = {"cut-out": 0.2, "scene": 0.7}


# --- Qt resource bundles ------------------------------------------------------------------------


def read_rcc(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(path, contents) of every file in a Qt resource bundle (``rcc`` binary format 1-3).

    Raises ValueError for data that is not such a bundle, or uses zstd compression.
    """
    if data[:4] != b"qres":
        raise ValueError("not a Qt resource bundle")
    version, tree, payload, names = struct.unpack(">4I", data[4:20])
    node_size = 14 if version == 1 else 22  # format 2 added a modification time to each node

    def name(offset: int) -> str:
        (length,) = struct.unpack(">H", data[names + offset : names + offset + 2])
        return data[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        base = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", data[base : base + 6])
        path = f"{prefix}/{name(name_offset)}" if index else ""
        if flags & 2:  # a directory: its children are count nodes from first
            count, first = struct.unpack(">II", data[base + 6 : base + 14])
            stack.extend((child, path) for child in range(first, first + count))
            continue
        (offset,) = struct.unpack(">I", data[base + 10 : base + 14])
        (size,) = struct.unpack(">I", data[payload + offset : payload + offset + 4])
        blob = data[payload + offset + 4 : payload + offset + 4 + size]
        if flags & 4:
            raise ValueError(f"{path}: zstd-compressed resources are not supported")
        if flags & 1:  # qCompress: a 4-byte length, then zlib
            blob = zlib.decompress(blob[4:])
        yield path.lstrip("/"), blob


# --- Checks on a picture --------------------------------------------------------------------------


def flat_share(rgb: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Share of (masked) pixels equal to both their right and lower neighbours: large areas of one
    exact colour, as drawings have. A photograph's noise, grain and dithering keep it small."""
    same = np.all(rgb[:-1, :-1] == rgb[1:, :-1], axis=-1) & np.all(rgb[:-1, :-1] == rgb[:-1, 1:], axis=-1)
    if mask is not None:
        inner = mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:]
        return float(same[inner].mean()) if inner.any() else 1.0
    return float(same.mean())


def difference_hash(rgb: np.ndarray) -> int:
    """A 64-bit difference hash of the picture's lightness (the same picture at another size or in
    another format hashes within a few bits)."""
    small = np.asarray(Image.fromarray(rgb).convert("L").resize((9, 8), Image.Resampling.BOX), np.int16)
    return int.from_bytes(np.packbits(small[:, 1:] > small[:, :-1]).tobytes(), "big")


def _hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


# --- Fetching -------------------------------------------------------------------------------------


@dataclass
class Candidate:
    name: str  # unique, readable: <package>/<path inside the package or bundle>
    package: str
    path: str
    data: bytes
    source: Source


def _download(packages: list[str], debs: Path) -> None:
    missing = [p for p in packages if not any(debs.glob(f"{p}_*.deb"))]
    if missing:
        if shutil.which("apt-get") is None:
            raise RuntimeError("the recipe fetches photographs with apt-get: run it on Debian or Ubuntu")
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)


def _package_version(debs: Path, package: str) -> str:
    deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
    return deb.name.split("_")[1].replace("%3a", ":")


def _candidates(unpacked: Path, source: Source) -> Iterator[Candidate]:
    if source.rcc is not None:
        files = read_rcc((unpacked / source.rcc).read_bytes())
        prefix = f"{source.package}/{PurePosixPath(source.rcc).stem}/"
    else:
        files = ((str(p.relative_to(unpacked)), None) for p in sorted(unpacked.glob(source.pattern)))
        prefix = f"{source.package}/"
    for path, data in files:
        if not fnmatch.fnmatch(path, source.pattern) or not fnmatch.fnmatch(path.lower(), "*.*"):
            continue
        if not any(fnmatch.fnmatch(path.lower(), p) for p in PICTURES):
            continue
        if any(fnmatch.fnmatch(path, p) for p in source.exclude):
            continue
        if data is None:
            data = (unpacked / path).read_bytes()
        yield Candidate(prefix + path, source.package, path, data, source)


def _copyright(copyright_file: Path):
    """The parsed debian/copyright, or None where it is not machine-readable (then each of the
    package's sources must give its ``credit`` by hand)."""
    from debian.copyright import Copyright, NotMachineReadableError

    with open(copyright_file, encoding="utf-8") as fh:
        try:
            return Copyright(fh, strict=False)
        except NotMachineReadableError:
            return None


def spdx_credit(text: str) -> tuple[str, str]:
    """(author, licence) from a REUSE sidecar's ``SPDX-FileCopyrightText`` and
    ``SPDX-License-Identifier`` lines."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.lstrip("# ").partition(":")
        if key in ("SPDX-FileCopyrightText", "SPDX-License-Identifier") and value.strip():
            fields.setdefault(key, []).append(value.strip())
    authors = fields.get("SPDX-FileCopyrightText", ["unknown"])
    return " and ".join(authors), " AND ".join(fields.get("SPDX-License-Identifier", ["unknown"]))


def _credit_of(cand: Candidate, copyright: Any, unpacked: Path) -> tuple[str, str]:
    source = cand.source
    if source.credit is not None:
        return source.credit
    if source.spdx_sidecar and source.rcc is None:
        sidecar = unpacked / f"{cand.path}.license"
        if sidecar.is_file():
            return spdx_credit(sidecar.read_text(encoding="utf-8"))
    if copyright is None:
        raise RuntimeError(f"{cand.package}: debian/copyright is not machine-readable; give a credit")
    return credit(copyright, cand.path, source.strip, source.upstream)


def upright(image: Image.Image, path: str, rotate: tuple[tuple[str, int], ...]) -> Image.Image:
    """``image`` turned clockwise by the degrees of the first ``rotate`` pattern ``path`` matches."""
    turns = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}
    for pattern, degrees in rotate:
        if fnmatch.fnmatch(path, pattern):
            return image.transpose(turns[degrees % 360]) if degrees % 360 else image
    return image


def credit(copyright: Any, path: str, strip: str, prefix: str = "") -> tuple[str, str]:
    """(author, licence) of ``path`` from a parsed debian/copyright: the paragraph that matches
    the upstream path (``prefix`` + ``path`` less ``strip``; trying .jpg/.png/.svg for a converted
    .webp); its first copyright line."""
    upstream = prefix + (path[len(strip) :] if path.startswith(strip) else path)
    stem = str(PurePosixPath(upstream).with_suffix(""))
    paragraph = None
    for candidate in (upstream, *(stem + ext for ext in (".jpg", ".png", ".svg", ".jpeg"))):
        paragraph = copyright.find_files_paragraph(candidate)
        if paragraph is not None and paragraph.files != ("*",):
            break
    if paragraph is None:
        return "unknown", "unknown"
    lines = [line.strip() for line in (paragraph.copyright or "").splitlines() if line.strip()]
    author = lines[0] if lines else "unknown"
    if len(lines) > 1:
        author += f" and {len(lines) - 1} others (debian/copyright)"
    return author, paragraph.license.synopsis if paragraph.license else "unknown"


def _decode(data: bytes) -> Image.Image | None:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return ImageOps.exif_transpose(image)
    except Exception:  # Pillow raises many types for damaged files
        return None


def _cutout(image: Image.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """(RGB, opaque mask) of a transparent cut-out cropped to its opaque pixels, or None."""
    rgba = np.asarray(image.convert("RGBA"))
    mask = rgba[..., 3] >= 128
    if mask.mean() > 0.97 or not mask.any():
        return None  # not a cut-out
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return rgba[box][..., :3], mask[box]


def paste_on_scene(rgb: np.ndarray, mask: np.ndarray, scene: np.ndarray, seed: int) -> np.ndarray:
    """The cut-out scaled to 60-90% of a ``CUTOUT_CANVAS`` square cropped from ``scene``, at a
    random place, with its edge softened by one pixel."""
    rng = np.random.default_rng(seed)
    side = CUTOUT_CANVAS
    short = min(scene.shape[:2])
    top, left = rng.integers(0, scene.shape[0] - short + 1), rng.integers(0, scene.shape[1] - short + 1)
    canvas = Image.fromarray(scene[top : top + short, left : left + short]).resize(
        (side, side), Image.LANCZOS
    )
    scale = side * rng.uniform(0.6, 0.9) / max(rgb.shape[:2])
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    person = Image.fromarray(rgb).resize(size, Image.LANCZOS)
    alpha = Image.fromarray((mask * 255).astype(np.uint8)).resize(size, Image.LANCZOS)
    x = int(rng.integers(0, side - size[0] + 1))
    y = int(rng.integers(max(0, side - size[1] - side // 8), side - size[1] + 1))
    canvas.paste(person, (x, y), alpha)
    return np.asarray(canvas)


@dataclass
class Collected:
    """The kept photographs (``photos``: manifest entries) and why the others were dropped."""

    photos: list[dict[str, Any]]
    skipped: Counter


def unpack(workdir: Path, packages: list[str]) -> Path:
    """Download (once) and unpack ``packages`` under ``workdir``; returns the unpacked tree, and
    copies each package's debian/copyright to ``workdir/licenses/``."""
    debs = workdir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    _download(packages, debs)
    unpacked = workdir / "unpacked"
    licences = workdir / "licenses"
    licences.mkdir(parents=True, exist_ok=True)

    def extract(package: str) -> None:
        deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)

    for package in packages:
        extract(package)
        doc = unpacked / "usr/share/doc" / package
        if doc.is_symlink() and not doc.exists():
            # its documentation folder is another package's (gimp-help-en's is gimp-help-common's,
            # which it depends on): that package's debian/copyright covers it
            owner = Path(os.readlink(doc)).name
            _download([owner], debs)
            extract(owner)
        shutil.copy(doc / "copyright", licences / f"{package}.copyright")
    return unpacked


def collect(
    workdir: Path,
    out_dir: Path,
    sources: list[Source] = SOURCES,
    scene_ok: Callable[[str], bool] = lambda name: True,
) -> Collected:
    """Fetch, extract and check every source's pictures; write the kept ones to ``out_dir`` as
    ``<name>.png`` (names flattened) and return the manifest and the skip counts. Cut-outs are
    pasted onto scenes among the kept photographs of sources that offer scenes (``Source.scene``)
    for which ``scene_ok(name)`` is true (keep validation photographs out of training that way)."""
    packages = sorted({s.package for s in sources})
    unpacked = unpack(workdir, packages)
    licences, debs = workdir / "licenses", workdir / "debs"
    copyrights = {p: _copyright(licences / f"{p}.copyright") for p in packages}
    versions = {p: _package_version(debs, p) for p in packages}

    skipped: Counter = Counter()
    kept: list[tuple[Candidate, np.ndarray, int]] = []
    cutouts: list[tuple[Candidate, np.ndarray, np.ndarray]] = []
    for source in sources:
        for cand in _candidates(unpacked, source):
            image = _decode(cand.data)
            if image is None:
                skipped["unreadable"] += 1
                continue
            image = upright(image, cand.path, source.rotate)
            if source.cutout:
                cut = _cutout(image)
                if cut is None or max(cut[0].shape[:2]) < MIN_CUTOUT_SIDE:
                    skipped["cut-out too small or not transparent"] += 1
                    continue
                if flat_share(cut[0], cut[1]) > DRAWING_FLAT_SHARE["cut-out"]:
                    skipped["drawing"] += 1
                    continue
                if is_near_gray(cut[0][cut[1]][None]):
                    skipped["nearly gray"] += 1
                    continue
                cutouts.append((cand, *cut))
                continue
            rgb = np.asarray(image.convert("RGB"))
            if min(rgb.shape[:2]) < MIN_SHORT_SIDE:
                skipped[f"smaller than {MIN_SHORT_SIDE} px"] += 1
                continue
            if flat_share(rgb) > DRAWING_FLAT_SHARE["scene"]:
                skipped["drawing"] += 1
                continue
            if is_near_gray(rgb):
                skipped["nearly gray"] += 1
                continue
            kept.append((cand, rgb, difference_hash(rgb)))

    # Duplicates: keep the largest of each group of near-identical hashes.
    kept.sort(key=lambda item: -item[1].size)
    unique: list[tuple[Candidate, np.ndarray, int]] = []
    for item in kept:
        if any(_hamming(item[2], other[2]) <= DUPLICATE_BITS for other in unique):
            skipped["duplicate"] += 1
            continue
        unique.append(item)
    unique.sort(key=lambda item: item[0].name)

    out_dir.mkdir(parents=True, exist_ok=True)
    photos = []

    def add(cand: Candidate, rgb: np.ndarray, kind: str) -> None:
        file = flat_name(cand.name) + ".png"
        Image.fromarray(rgb).save(out_dir / file, optimize=False, compress_level=1)
        author, licence = _credit_of(cand, copyrights[cand.package], unpacked)
        photos.append(
            {
                "name": cand.name,
                "file": file,
                "package": cand.package,
                "version": versions[cand.package],
                "path": cand.path if cand.source.rcc is None else f"{cand.source.rcc}:{cand.path}",
                "sha256": hashlib.sha256(cand.data).hexdigest(),
                "author": author,
                "license": licence,
                "kind": kind,
                "size": [int(rgb.shape[1]), int(rgb.shape[0])],
                "colour_spread": round(colour_spread(rgb), 2),
            }
        )

    for cand, rgb, _ in unique:
        add(cand, rgb, "photograph")
    # Cut-outs on scenes of the kept photographs (chosen by a hash of the cut-out's name, so the
    # composite is the same at every run, and as long as the sources that offer scenes are).
    scenes = [rgb for cand, rgb, _ in unique if cand.source.scene and scene_ok(cand.name)]
    for cand, rgb, mask in sorted(cutouts, key=lambda c: c[0].name):
        seed = int(hashlib.sha1(cand.name.encode()).hexdigest()[:8], 16)
        add(cand, paste_on_scene(rgb, mask, scenes[seed % len(scenes)], seed), "cut-out on a scene")
    log.info("kept %d photographs (%d cut-outs); skipped %s", len(photos), len(cutouts), dict(skipped))
    return Collected(photos, skipped)


def flat_name(name: str) -> str:
    """A manifest name as one file name (``a/b/c.jpg`` -> ``a__b__c``)."""
    return str(PurePosixPath(name).with_suffix("")).replace("/", "__")
