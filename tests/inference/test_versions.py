"""The serving policy in the engine: a label followed wherever it moves, a pinned version, and
``?model=`` naming a label; tiny real generators in a temporary store (refresh() called by hand)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from common.labels import Labels, UnknownLabel
from common.refusals import Refusals
from common.store import DEFAULT_VERSION, GENERATOR_FILE, METADATA_FILE, BrokenVersion, UnknownVersion
from inference.engine import Engine
from inference.errors import NoModelLoaded
from inference.failures import about_the_files
from models.store import ModelStore, export_float16
from tests.apptest import publish_tiny_to, tiny_model


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    default = export_float16(tiny_model({}), tmp_path / "default")
    return ModelStore(tmp_path / "models", default)


def test_a_label_policy_serves_the_default_until_the_label_is_set_then_only_what_it_points_at(store):
    engine = Engine(store, policy="stable")
    publish_tiny_to(store)
    assert engine.refresh() == DEFAULT_VERSION  # a published version does not take the traffic
    assert engine.refresh() is None
    Labels(store.root).set("stable", 1)
    assert engine.refresh() == 1
    publish_tiny_to(store)
    publish_tiny_to(store)  # two jobs publishing: still version 1
    assert engine.refresh() is None and engine.model().version == 1
    Labels(store.root).set("stable", 3)
    assert engine.refresh() == 3
    Labels(store.root).set("stable", 2)  # a rollback moves down
    assert engine.refresh() == 2
    assert engine.describe()["policy"] == "stable"


def test_a_label_moved_to_a_broken_version_keeps_the_served_one(store):
    engine = Engine(store, policy="stable")
    publish_tiny_to(store)
    publish_tiny_to(store)
    Labels(store.root).set("stable", 1)
    assert engine.refresh() == 1
    (store.root / "2" / GENERATOR_FILE).write_bytes(b"broken after the label moved")
    Labels(store.root).set("stable", 2)
    assert engine.refresh() is None
    assert engine.model().version == 1 and 2 in engine.failed_versions()


def test_a_label_policy_without_the_label_or_a_default_says_how_to_set_it(tmp_path):
    store = ModelStore(tmp_path / "models")
    publish_tiny_to(store)
    engine = Engine(store, policy="stable")
    assert engine.refresh() is None
    with pytest.raises(NoModelLoaded, match=r"label 'stable'.*PUT /models/labels/stable"):
        engine.model()


def test_a_pinned_version_is_served_alone_and_a_missing_one_is_named(store):
    engine = Engine(store, policy="2")
    publish_tiny_to(store)
    assert engine.refresh() is None
    with pytest.raises(NoModelLoaded, match=r"version 2 \(COLORIZER_SERVE\) does not exist"):
        engine.model()
    publish_tiny_to(store)
    publish_tiny_to(store)
    assert engine.refresh() == 2 and engine.refresh() is None
    assert Engine(store, policy="default").refresh() == DEFAULT_VERSION


def test_a_request_may_name_a_label_and_gets_the_version_it_points_at(store):
    engine = Engine(store)
    publish_tiny_to(store)
    publish_tiny_to(store)
    engine.refresh()
    Labels(store.root).set("canary", 1)
    assert engine.model("canary").version == 1
    assert engine.model(" canary ").version == 1
    with pytest.raises(UnknownLabel, match="'nightly' does not exist"):
        engine.model("nightly")
    with pytest.raises(UnknownVersion):
        engine.model("Canary")  # not a label name, not a version


# -- refusals shared through the store: replicas refuse the same versions --------------------------


class _FailsOn(ModelStore):
    """A real store whose load() fails for some versions, as on a replica whose hardware or
    TensorFlow cannot load them while another's can."""

    def __init__(self, root: Path, default_dir: Path | None, failing: set):
        super().__init__(root, default_dir)
        self.failing = failing

    def load(self, version):
        if version in self.failing:
            raise BrokenVersion(f"version {version}: out of memory on this replica")
        return super().load(version)


def test_a_version_one_replica_refuses_is_refused_by_the_others_until_its_files_change(store):
    publish_tiny_to(store)
    publish_tiny_to(store)
    serving = Engine(store)  # a replica that loaded version 2 before the other refused it
    assert serving.refresh() == 2
    refusing = Engine(_FailsOn(store.root, store.default_dir, {2}))
    assert refusing.refresh() == 1  # it cannot load 2, and says so in the store
    assert "out of memory on this replica" in Refusals(store.root).read()["2"]["reason"]

    assert serving.refresh() == 1  # the first replica stops serving 2 too
    fresh = Engine(store)
    assert fresh.refresh() == 1  # and a new one never serves it
    assert "refused by" in fresh.failed_versions()[2]
    with pytest.raises(BrokenVersion, match="out of memory"):
        fresh.model(2)

    # published again (new files): every replica tries it again
    time.sleep(0.01)
    (store.root / "2" / METADATA_FILE).touch()
    assert fresh.refresh() == 2 and serving.refresh() == 2
    assert "2" not in Refusals(store.root).read()


def test_a_pinned_replica_stops_serving_a_version_another_refused(store):
    publish_tiny_to(store)
    pinned = Engine(store, policy="1")
    assert pinned.refresh() == 1
    Engine(_FailsOn(store.root, store.default_dir, {1}), policy="1").refresh()
    assert pinned.refresh() is None and not pinned.ready
    with pytest.raises(NoModelLoaded, match="cannot be loaded"):
        pinned.model()


def test_the_watcher_reports_what_it_serves_in_the_store_and_withdraws_at_stop(store):
    from common.serving import ServingReports

    publish_tiny_to(store)
    engine = Engine(store, policy="latest", reload_interval=0.05)
    engine.start()
    reports = ServingReports(store.root)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and [r.get("served") for r in reports.live()] != [1]:
        time.sleep(0.05)
    (report,) = reports.live()
    assert (
        report["served"] == 1
        and report["policy"] == "latest"
        and report["replica"] == engine.reporter.replica
    )
    engine.stop()
    assert reports.live() == []


class _OutOfMemoryOn(_FailsOn):
    """load() fails for lack of memory: about this replica, not about the files."""

    def load(self, version):
        if version in self.failing:
            try:
                raise MemoryError("no room for another generator")
            except MemoryError as exc:
                raise BrokenVersion(f"version {version}: cannot load generator.keras: {exc}") from exc
        return ModelStore.load(self, version)


def test_only_failures_about_the_files_are_shared(store):
    publish_tiny_to(store)
    publish_tiny_to(store)
    short_of_memory = Engine(_OutOfMemoryOn(store.root, store.default_dir, {2}))
    assert short_of_memory.refresh() == 1 and 2 in short_of_memory.failed_versions()
    assert Refusals(store.root).read() == {}  # nobody else refuses version 2
    assert Engine(store).refresh() == 2
    assert not about_the_files(RuntimeError("fails on a test image"))
    assert about_the_files(BrokenVersion("metadata.json is not JSON"))


def test_a_withdrawn_refusal_is_tried_again_by_the_replica_that_made_it(store):
    publish_tiny_to(store)
    publish_tiny_to(store)
    failing = {2}
    refusing = Engine(_FailsOn(store.root, store.default_dir, failing))
    assert refusing.refresh() == 1 and "2" in Refusals(store.root).read()
    failing.clear()  # whatever it was is fixed
    assert Refusals(store.root).forget(2)  # colorizer models retry 2
    assert refusing.refresh() == 2


def test_a_new_label_follower_waits_rather_than_serve_the_default_when_the_labels_are_unreadable(store):
    publish_tiny_to(store)
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / "labels.json").write_text("{damaged")
    engine = Engine(store, policy="stable")
    assert engine.refresh() is None and not engine.ready
    with pytest.raises(NoModelLoaded, match="labels.json cannot be read"):
        engine.model()
    (store.root / "labels.json").write_text('{"stable": 1}')
    assert engine.refresh() == 1
