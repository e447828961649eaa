"""Dataset naming, shared by the API (uploads, job submission) and the worker (training): a dataset
is a plain folder name under the data directory's ``datasets/``, holding colour photographs."""

from __future__ import annotations

from pathlib import Path

# What counts as a photograph in a dataset folder (recursive), by file suffix.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})

# Written by POST /datasets at the top of a dataset folder (service/datasets.py): not a photograph.
DATASET_MANIFEST = "dataset.json"


class DatasetError(ValueError):
    """The dataset cannot be used; the message says why in words a person can act on."""


def resolve_dataset(datasets_dir: Path, name: str) -> Path:
    """The folder of dataset ``name`` inside ``datasets_dir``; raises DatasetError if it is missing
    or resolves outside ``datasets_dir`` (``..``, absolute paths, symlinks out). The messages name
    no server path: they reach API clients and job records."""
    root = Path(datasets_dir).resolve()
    if not name or Path(name).is_absolute() or "/" in name or "\\" in name or name in (".", ".."):
        raise DatasetError(f"dataset {name!r} is not a plain folder name")
    folder = (root / name).resolve()
    if folder.parent != root:
        raise DatasetError(f"dataset {name!r} points outside the datasets directory")
    if not folder.is_dir():
        raise DatasetError(
            f"dataset {name!r} does not exist: put a folder of colour images at datasets/{name} "
            "in the data directory first"
        )
    return folder
