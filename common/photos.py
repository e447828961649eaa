"""The file formats a photograph is read in, everywhere: uploads, datasets, evaluation folders."""

from __future__ import annotations

# What Pillow may identify a file as (``Image.open(..., formats=PHOTO_FORMATS)``), tried in this
# order: raster formats it decodes itself. Never EPS (Pillow renders PostScript by running
# Ghostscript on the file: an upload or a dataset's "photo.jpg" would run as a program wherever
# Ghostscript is installed), nor the formats it can only identify (WMF, BUFR, GRIB, HDF5, ...).
PHOTO_FORMATS = (
    "JPEG",  # and MPO, the multi-picture JPEG of some cameras
    "PNG",  # and APNG
    "WEBP",
    "GIF",
    "TIFF",
    "BMP",
    "DIB",
    "ICO",
    "PPM",
    "PSD",
    "JPEG2000",
    "AVIF",
    "QOI",
    "PCX",
    "SGI",
    "TGA",  # last: it has no signature, so it is what Pillow tries when nothing else matched
)
