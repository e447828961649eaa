"""common.store: the model store's layout, listing and atomic publishing, without TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.store import DEFAULT_VERSION, METADATA_FILE, BrokenVersion, UnknownVersion, VersionStore


def _write_weights(folder: Path) -> None:
    (folder / "generator.weights.npz").write_bytes(b"weights")


def test_versions_are_published_whole_listed_in_order_and_read_back(tmp_path: Path):
    store = VersionStore(tmp_path / "models")
    assert store.versions() == [] and store.latest() is None and not store.has_default()
    assert store.publish_files(_write_weights, {"preset": "lab"}) == 1
    assert store.publish_files(_write_weights, {"preset": "seed"}) == 2
    (store.root / "notes").mkdir()  # not a version: ignored
    assert store.versions() == [1, 2]
    assert [(i.version, i.metadata["preset"]) for i in store.list()] == [(1, "lab"), (2, "seed")]
    latest = store.latest()
    assert latest.version == 2 and latest.metadata["version"] == 2 and "created_at" in latest.metadata
    assert (latest.path / "generator.weights.npz").read_bytes() == b"weights"
    assert not list(store.root.glob(".tmp-*"))  # nothing left half-written
    with pytest.raises(UnknownVersion):
        store.get(3)
    (store.root / "2" / METADATA_FILE).write_text("{not json")
    assert "unreadable" in store.list()[1].metadata["error"]
    with pytest.raises(BrokenVersion):
        store.get(2)


def test_a_publisher_that_fails_leaves_no_version_behind(tmp_path: Path):
    store = VersionStore(tmp_path / "models")

    def broken(folder: Path) -> None:
        (folder / "generator.keras").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.publish_files(broken, {})
    assert store.versions() == [] and not list(store.root.glob(".tmp-*"))


def test_the_default_is_the_folder_the_store_is_given(tmp_path: Path):
    default = tmp_path / "shipped"
    default.mkdir()
    (default / METADATA_FILE).write_text(json.dumps({"preset": "lab"}))
    store = VersionStore(tmp_path / "models", default)
    assert store.has_default() and DEFAULT_VERSION == "default"
    reason = store.public_reason(BrokenVersion(f"{default}: cannot load"))
    assert reason == "the default model: cannot load"  # answers carry no server paths
    assert not VersionStore(tmp_path / "models", tmp_path / "missing").has_default()


def test_listing_the_store_imports_neither_tensorflow_nor_keras(tmp_path: Path):
    code = (
        "import sys; from common.store import VersionStore;"
        f"VersionStore({str(tmp_path)!r}).list();"
        "print(sorted(m for m in ('tensorflow', 'keras', 'models') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
