"""PNG encoding on every core: the rows are filtered with PNG's Up filter and cut into bands, each
band is deflated at once by its own zlib-ng compressor, and the pieces are joined into one zlib
stream.

A deflate stream can be cut wherever a compressor flushes: every band but the last ends with a
sync flush (byte-aligned, not the final block), and no back-reference reaches into another band
because each band has a compressor of its own. The stream's Adler-32 is that of all the filtered
rows in order (each band's own, combined). Filtering needs the row above a band's first row,
which is the image's own.

Why these choices, on what the service encodes: the colorizer's answers (gray photographs
colorized by the default model at 1-2 MP, against Pillow at zlib level 1, the service's encoder
before, which tries every filter on every row: 117-141 ms at 2 MP). zlib-ng at level 2 after the
Up filter made files 3-5% smaller than Pillow's, in a quarter of Pillow's time on one core; the
Average and Paeth filters were no smaller at level 2 and cost more (Paeth 45-70 ms in numpy at
2 MP); level 3 is 7% smaller again for 25% more time; the run-length strategy at level 1, faster
by 10%, made answers 10-20% larger than Pillow's (twice as large for a photograph enlarged by
repeating pixels); zlib-ng's level 1 is faster still but 40-57% larger. The standard zlib takes
1.6x zlib-ng's time. zlib-ng and numpy release the GIL, so bands on two cores take about half
the time.
"""

from __future__ import annotations

import struct
from functools import partial

import cv2
import numpy as np
from zlib_ng import zlib_ng as zlib

from models.parallel import band_rows, run_parts

# Pixels a band holds at least (as inference/jpeg.py's bands): smaller images are one piece.
BAND_PIXELS = 1 << 17
SIGNATURE = b"\x89PNG\r\n\x1a\n"  # how every PNG file begins
_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> gray, gray + alpha, RGB, RGBA
_UP = 2  # PNG's filter type: each byte less the byte above it
_LEVEL = 2
_ZLIB_HEADER = b"\x78\x5e"  # deflate, 32 KB window, a fast level
_IDAT_BYTES = 1 << 30


# Rows filtered and handed to the compressor at a time within a band: about 1 MB, so a band's
# temporaries stay small (a 40 MP answer in one go took about 1 GB of them) and in the cache.
_PIECE_BYTES = 1 << 20
_ADLER_BASE = 65521  # the largest prime below 2**16


def rgbx_in_place(rgb: np.ndarray) -> np.ndarray | None:
    """The (H, W, 4) RGBX pixels whose RGB view ``rgb`` is, sharing its memory, when it is the view
    of 4-byte pixels that the colorizer's join returns (``models.pixels.join_chroma``), else None.
    The fourth byte of every pixel must lie in ``rgb``'s own buffer: that is checked, not assumed."""
    base = rgb.base
    if not (
        rgb.ndim == 3
        and rgb.shape[2] == 3
        and rgb.dtype == np.uint8
        and rgb.strides[1:] == (4, 1)
        and isinstance(base, np.ndarray)
        and base.flags.c_contiguous
    ):
        return None
    height, width = rgb.shape[:2]
    stride = rgb.strides[0]
    start = rgb.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    if start < 0 or stride < 4 * width or start + stride * height > base.nbytes:
        return None
    return np.ndarray((height, width, 4), np.uint8, memoryview(base).cast("B"), start, (stride, 4, 1))


def packed_rgb(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` with its pixels packed (C-contiguous): by OpenCV when it is the view of 4-byte pixels
    that the colorizer's join returns (``rgbx_in_place``), where numpy's copy of a view of 3 bytes
    in 4 takes 50x as long (2 MP: 14 against 0.26 ms); otherwise numpy's copy, none if packed."""
    rgbx = rgbx_in_place(rgb)
    if rgbx is not None:
        return cv2.cvtColor(rgbx, cv2.COLOR_RGBA2RGB)
    return np.ascontiguousarray(rgb)


def _filtered(pixels: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows start..stop of ``pixels`` (H, W, C) uint8, each as its filter type byte and its bytes
    less those of the row above (0 above the image)."""
    rows = packed_rgb(pixels[start:stop]).reshape(stop - start, -1)
    out = np.empty((stop - start, rows.shape[1] + 1), np.uint8)
    out[:, 0] = _UP
    above = pixels[start - 1].reshape(1, -1) if start else np.zeros((1, rows.shape[1]), np.uint8)
    np.subtract(rows[:1], above, out=out[:1, 1:])  # modulo 256, as PNG's filters are
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])
    return out


def _deflated(pixels: np.ndarray, start: int, stop: int, last: bool) -> tuple[bytes, int, int]:
    """(raw deflate data, Adler-32, length) of rows start..stop filtered, a piece at a time; the
    data flushed to a byte boundary without ending the stream unless ``last``."""
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15, 9)
    step = max(1, _PIECE_BYTES // (pixels.shape[1] * pixels.shape[2] + 1))
    out, checksum, length = [], 1, 0
    for first in range(start, stop, step):
        piece = _filtered(pixels, first, min(stop, first + step))
        checksum = zlib.adler32(piece, checksum)
        length += piece.nbytes
        out.append(compressor.compress(piece))
    out.append(compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH))
    return b"".join(out), checksum, length


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two pieces of data joined, from each piece's own (started at 1) and the
    second's length: zlib's adler32_combine, which Python's zlib and zlib-ng's do not expose."""
    remainder = second_length % _ADLER_BASE
    low = (first & 0xFFFF) + (second & 0xFFFF) + _ADLER_BASE - 1
    high = remainder * (first & 0xFFFF) + (first >> 16) + (second >> 16) + _ADLER_BASE - remainder
    return (low % _ADLER_BASE) | (high % _ADLER_BASE) << 16


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def encode_png(pixels: np.ndarray, rows: int | None = None) -> bytes:
    """An 8-bit PNG of gray (H, W), gray and alpha (H, W, 2), RGB (H, W, 3) or RGBA (H, W, 4)
    uint8 pixels (rows of any stride), in bands of ``rows`` pixel rows deflated at once
    (``models.parallel.band_rows`` by default). Raises ValueError for pixels it cannot encode."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[2] not in _COLOUR_TYPE or pixels.dtype != np.uint8:
        raise ValueError(f"expected gray, RGB or RGBA uint8 pixels, got {pixels.dtype} {pixels.shape}")
    height, width, channels = pixels.shape
    if not (0 < height < 2**31 and 0 < width < 2**31):
        raise ValueError(f"a PNG has 1 to 2**31 - 1 pixels a side, not {width}x{height}")
    rows = band_rows(height, width, BAND_PIXELS) if rows is None else rows
    starts = range(0, height, rows)
    parts = run_parts(
        [
            partial(_deflated, pixels, start, min(height, start + rows), start + rows >= height)
            for start in starts
        ]
    )
    checksum = parts[0][1]
    for _, band_checksum, length in parts[1:]:
        checksum = adler32_combine(checksum, band_checksum, length)
    stream = [_ZLIB_HEADER, *(deflated for deflated, _, _ in parts), struct.pack(">I", checksum)]
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPE[channels], 0, 0, 0)
    # the stream in IDAT chunks of at most 1 GB (a chunk holds under 2 GB; decoders join them)
    data = b"".join(stream)
    idat = [_chunk(b"IDAT", data[at : at + _IDAT_BYTES]) for at in range(0, len(data), _IDAT_BYTES)]
    return b"".join([SIGNATURE, _chunk(b"IHDR", header), *idat, _chunk(b"IEND", b"")])
