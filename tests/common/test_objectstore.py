"""The model store in an S3-compatible bucket (common.objectstore), against a real S3 server that the
tests start on loopback (moto's, which keeps S3's conditional writes): two machines' store folders
following one bucket."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from common.labels import Labels, prune_versions
from common.objectstore import CLAIM, COMPLETE, MIRRORED, follow, mirror_of, parse_url
from common.store import METADATA_FILE, VersionStore
from tests.conftest import s3_client as client

pytestmark = pytest.mark.integration


@pytest.fixture
def machines(tmp_path, s3_server, bucket):
    """Two machines' store folders following ``bucket``: (store a, store b)."""
    stores = []
    for name in ("a", "b"):
        root = tmp_path / name / "models"
        follow(bucket, root, client(s3_server))
        stores.append(VersionStore(root))
    yield stores
    for store in stores:
        follow(None, store.root)


def publish(store: VersionStore, note: str) -> int:
    return store.publish_files(lambda folder: (folder / "generator.keras").write_text(note), {"note": note})


def test_a_version_published_on_one_machine_is_listed_and_read_on_the_other(machines):
    a, b = machines
    assert publish(a, "first") == 1
    mirror_of(b.root).sync(force=True)
    assert b.versions() == [1]
    info = b.get(1)
    assert info.metadata["note"] == "first" and info.metadata["version"] == 1
    assert (info.path / "generator.keras").read_text() == "first" and (info.path / MIRRORED).exists()
    # and b's own publish takes the next number, which a sees
    assert publish(b, "second") == 2
    assert a.get(2).metadata["note"] == "second"  # a version not here yet is looked for in the bucket


def test_a_version_is_visible_only_once_complete_and_a_claimed_number_is_never_reused(
    machines, s3_server, bucket
):
    a, b = machines
    name, prefix = parse_url(bucket)
    s3 = client(s3_server)
    # a publisher killed mid-upload: its number claimed, a file up, no .complete
    s3.put_object(Bucket=name, Key=f"{prefix}/1/{CLAIM}", Body=b"")
    s3.put_object(Bucket=name, Key=f"{prefix}/1/{METADATA_FILE}", Body=json.dumps({"version": 1}).encode())
    mirror_of(b.root).sync(force=True)
    assert b.versions() == []
    assert publish(a, "whole") == 2
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=name, Prefix=f"{prefix}/2/")["Contents"]}
    assert keys == {f"{prefix}/2/{n}" for n in (CLAIM, COMPLETE, METADATA_FILE, "generator.keras")}
    mirror_of(b.root).sync(force=True)
    assert b.versions() == [2]


def test_machines_publishing_at_once_never_share_a_number(machines):
    a, b = machines
    numbers: list[int] = []
    lock = threading.Lock()

    def publish_three(store: VersionStore, who: str) -> None:
        for i in range(3):
            number = publish(store, f"{who}{i}")
            with lock:
                numbers.append(number)

    threads = [
        threading.Thread(target=publish_three, args=(store, who)) for store, who in ((a, "a"), (b, "b"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(numbers) == list(range(1, 7))
    for store in (a, b):
        mirror_of(store.root).sync(force=True)
        assert store.versions() == list(range(1, 7))
    notes = {b.get(n).metadata["note"] for n in range(1, 7)}
    assert notes == {"a0", "a1", "a2", "b0", "b1", "b2"}


def test_labels_set_on_one_machine_are_read_on_the_other_and_concurrent_changes_all_land(machines):
    a, b = machines
    for note in ("one", "two"):
        publish(a, note)
    Labels(a.root).set("stable", 1)
    mirror_of(b.root).sync(force=True)
    assert Labels(b.root).get("stable") == 1

    def label(store: VersionStore, names: list[str]) -> None:
        for name in names:
            Labels(store.root).set(name, 2)

    threads = [
        threading.Thread(target=label, args=(a, [f"a{i}" for i in range(4)])),
        threading.Thread(target=label, args=(b, [f"b{i}" for i in range(4)])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for store in (a, b):
        mirror_of(store.root).sync(force=True)
        labels = Labels(store.root).read()
        assert labels == {"stable": 1, **{f"{w}{i}": 2 for w in "ab" for i in range(4)}}, labels
    assert Labels(b.root).remove("stable") == 1
    mirror_of(a.root).sync(force=True)
    assert "stable" not in Labels(a.root).read()


def test_retention_on_one_machine_removes_the_version_everywhere_but_not_a_local_one(
    machines, s3_server, bucket
):
    a, b = machines
    for note in ("old", "older", "new"):
        publish(a, note)
    mirror_of(b.root).sync(force=True)
    assert b.versions() == [1, 2, 3]
    local_only = b.root / "9"  # published in b's folder before it followed the bucket
    local_only.mkdir()
    (local_only / METADATA_FILE).write_text("{}")
    assert prune_versions(a, keep=1) == [1, 2]
    name, prefix = parse_url(bucket)
    keys = {
        item["Key"]
        for item in client(s3_server).list_objects_v2(Bucket=name, Prefix=f"{prefix}/1/")["Contents"]
    }
    assert keys == {f"{prefix}/1/{CLAIM}"}  # hidden, files gone, the number kept taken
    mirror_of(b.root).sync(force=True)
    assert b.versions() == [3, 9]
    assert publish(a, "next") == 4  # never 1 or 2 again


def test_an_unreachable_bucket_is_logged_and_the_folder_keeps_serving(tmp_path, caplog):
    root = tmp_path / "models"
    store = VersionStore(root)
    assert publish(store, "before") == 1
    follow("s3://models-nowhere/x", root, client("http://127.0.0.1:9"))  # nothing listens there
    try:
        with caplog.at_level(logging.WARNING):
            assert store.versions() == [1]
        assert "cannot follow the model store s3://models-nowhere/x" in caplog.text
        with pytest.raises(OSError, match="cannot list the versions in s3://models-nowhere/x"):
            publish(store, "after")
        assert store.versions() == [1]
    finally:
        follow(None, root)


@pytest.mark.parametrize("url", ["s3://", "s3://A_B/x", "http://bucket/x", "s3://ab"])
def test_a_bad_bucket_url_is_refused_by_the_settings(url, tmp_path):
    from pydantic import ValidationError

    from common.settings import Settings

    with pytest.raises(ValidationError, match="is not an s3://bucket/prefix URL"):
        Settings(data_dir=tmp_path, model_store_url=url)
    assert (
        Settings(data_dir=tmp_path, model_store_url="s3://my-bucket/a/b/").model_store_url
        == "s3://my-bucket/a/b/"
    )
    assert parse_url("s3://my-bucket/a/b/") == ("my-bucket", "a/b")
    assert parse_url("s3://my-bucket") == ("my-bucket", "")


def test_following_is_per_folder(tmp_path, bucket, s3_server):
    root = tmp_path / "m"
    assert mirror_of(root) is None
    mirror = follow(bucket, root, client(s3_server))
    assert mirror_of(Path(str(root) + "/")) is mirror
    follow(None, root)
    assert mirror_of(root) is None
