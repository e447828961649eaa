"""Version labels, the serving policy and retention, on a real store folder (no TensorFlow)."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path

import pytest

from common.labels import (
    LABELS_FILE,
    BadLabel,
    Labels,
    LabelsUnreadable,
    Policy,
    UnknownLabel,
    check_label,
    parse_policy,
    prune_versions,
)
from common.settings import Settings
from common.store import DEFAULT_VERSION, UnknownVersion, VersionStore


def publish(store: VersionStore, count: int) -> list[int]:
    return [store.publish_files(lambda folder: (folder / "x").write_text("x"), {}) for _ in range(count)]


@pytest.fixture
def store(tmp_path: Path) -> VersionStore:
    return VersionStore(tmp_path / "models")


@pytest.mark.parametrize("name", ["stable", "canary", "a", "release-2", "v2_rc1"])
def test_label_names_are_lower_case_words_starting_with_a_letter(name):
    assert check_label(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "7",
        "07",
        "1e3",
        "Stable",
        "../x",
        "a/b",
        "a\\b",
        ".hidden",
        "",
        "latest",
        "default",
        "x" * 41,
        3,
        None,
    ],
)
def test_names_that_look_like_numbers_paths_or_reserved_words_are_refused(name):
    with pytest.raises(BadLabel, match="cannot name a label"):
        check_label(name)


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("latest", Policy("latest")),
        (" Latest ", Policy("latest")),
        ("7", Policy("version", 7)),
        ("default", Policy("version", DEFAULT_VERSION)),
        ("stable", Policy("label", "stable")),
    ],
)
def test_the_serving_policy_is_latest_a_pinned_version_or_a_label(text, policy):
    assert parse_policy(text) == policy
    assert Settings(serve=text).policy == policy


@pytest.mark.parametrize("text", ["0", "-1", "../models", "a b", "７"])
def test_a_bad_serving_policy_stops_the_settings_naming_the_variable(text):
    with pytest.raises(ValueError, match="serve"):
        Settings(serve=text)


def test_labels_are_set_moved_read_and_removed(store):
    publish(store, 3)
    labels = Labels(store.root)
    assert labels.read() == {}
    assert labels.set("stable", 1) is None
    assert labels.set("canary", "3") is None
    assert labels.set("stable", 2) == 1  # moved: the previous version comes back
    assert labels.set("fallback", DEFAULT_VERSION) is None
    assert labels.read() == {"canary": 3, "fallback": DEFAULT_VERSION, "stable": 2}
    assert json.loads((store.root / LABELS_FILE).read_text()) == {
        "canary": 3,
        "fallback": "default",
        "stable": 2,
    }
    assert labels.remove("canary") == 3
    with pytest.raises(UnknownLabel, match="'canary' does not exist"):
        labels.get("canary")
    with pytest.raises(UnknownLabel):
        labels.remove("canary")
    assert Labels(store.root).read() == {"fallback": DEFAULT_VERSION, "stable": 2}  # another reader


def test_a_label_cannot_point_at_a_missing_version_and_nothing_changes(store):
    publish(store, 1)
    labels = Labels(store.root)
    labels.set("stable", 1)
    for missing in (2, "9", 0, "x", -1):
        with pytest.raises(UnknownVersion):
            labels.set("stable", missing)
    with pytest.raises(BadLabel):
        labels.set("7", 1)
    assert labels.read() == {"stable": 1}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"stable": "x"}', '{"7": 1}', '{"ok": 0}'])
def test_an_unreadable_labels_file_is_reported_not_taken_for_no_labels(store, content):
    store.root.mkdir(parents=True)
    (store.root / LABELS_FILE).write_text(content)
    with pytest.raises(LabelsUnreadable, match=LABELS_FILE):
        Labels(store.root).read()


def test_the_labels_file_is_not_mistaken_for_a_version(store, caplog):
    publish(store, 2)
    Labels(store.root).set("stable", 1)
    with caplog.at_level(logging.WARNING):
        assert store.versions() == [1, 2]
    assert "labels.json" not in caplog.text


def _move_labels(root: str, worker: int, rounds: int) -> None:
    labels = Labels(root)
    for step in range(rounds):
        labels.set(f"w{worker}", 1 + (step % 2))
        labels.set("shared", 1 + (step % 2))


def test_labels_moved_by_many_processes_at_once_are_all_kept(store):
    publish(store, 2)
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_move_labels, args=(str(store.root), i, 25)) for i in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    # every writer's label survived every other writer's read-modify-write
    assert set(Labels(store.root).read()) == {"w0", "w1", "w2", "w3", "shared"}
    assert not list(store.root.glob(".tmp-*"))


def test_retention_keeps_the_newest_the_labelled_and_the_pinned(store):
    publish(store, 8)
    Labels(store.root).set("stable", 2)
    Labels(store.root).set("old", DEFAULT_VERSION)
    assert prune_versions(store, keep=3, protected=[4]) == [1, 3, 5]
    assert store.versions() == [2, 4, 6, 7, 8]
    assert not [p for p in store.root.iterdir() if p.name.startswith(".trash-")]
    assert prune_versions(store, keep=3, protected=[4]) == []  # nothing more to do
    with pytest.raises(ValueError):
        prune_versions(store, keep=0)


def test_a_version_left_half_deleted_by_a_killed_pruner_is_cleared_at_the_next_publish(store):
    publish(store, 1)
    leftover = store.root / ".trash-1-deadbeef"
    leftover.mkdir()
    (leftover / "x").write_text("x")
    publish(store, 1)
    assert not leftover.exists() and store.versions() == [1, 2]


def test_shared_refusals_apply_to_the_files_refused_and_a_damaged_file_is_no_refusal(store, caplog):
    from common.refusals import Refusals

    publish(store, 1)
    refusals = Refusals(store.root)
    refusals.record(1, (5, None, 6), "bad weights")
    assert "bad weights (refused by " in refusals.get(1, (5, None, 6))
    assert refusals.get(1, (5, None, 7)) is None  # the files changed since
    assert store.versions() == [1]
    (store.root / "refused.json").write_text("{damaged")
    with caplog.at_level(logging.WARNING):
        assert refusals.read() == {} and refusals.get(1, (5, None, 6)) is None
    assert "refused.json cannot be read" in caplog.text


def test_retention_never_deletes_what_a_live_replica_serves_or_loads(store):
    from common.serving import ServingReports

    publish(store, 6)
    reports = ServingReports(store.root)
    reports.report("api-a", 1, None, "latest")
    reports.report("api-b", 2, 3, "stable")
    gone = store.root / ".serving" / "api-gone.json"
    gone.write_text(json.dumps({"replica": "api-gone", "served": 4, "loading": None, "at": 0}))  # stale
    assert sorted(r["replica"] for r in reports.live()) == ["api-a", "api-b"]
    assert reports.in_use() == {1, 2, 3}
    assert prune_versions(store, keep=1) == [4, 5]
    assert store.versions() == [1, 2, 3, 6]
    reports.remove("api-b")
    assert reports.in_use() == {1}


def test_a_label_moves_only_from_the_version_a_decision_was_taken_on(store):
    publish(store, 3)
    labels = Labels(store.root)
    assert labels.move_if("stable", None, 1)  # unset, as expected
    assert not labels.move_if("stable", None, 2)  # someone set it meanwhile
    assert labels.move_if("stable", 1, 3) and labels.get("stable") == 3
    assert not labels.move_if("stable", 1, 2) and labels.get("stable") == 3  # not backwards
    with pytest.raises(UnknownVersion):
        labels.move_if("stable", 3, 9)


def test_a_serving_report_that_cannot_be_read_is_no_replica(store):
    from common.serving import ServingReports

    reports = ServingReports(store.root)
    reports.report("api-a", 1, None, "latest")
    (reports.folder / "api-b.json").write_text('{"served": 2, "at": "yesterday"}')
    (reports.folder / "api-c.json").write_text("[1, 2]")
    (reports.folder / "api-d.json").write_text("{torn")
    assert [r["replica"] for r in reports.live()] == ["api-a"] and reports.in_use() == {1}


def test_retention_forgets_the_refusals_of_the_versions_it_deletes(store):
    from common.refusals import Refusals

    publish(store, 3)
    Refusals(store.root).record(1, (1,), "bad")
    Refusals(store.root).record(3, (1,), "bad")
    assert prune_versions(store, keep=1) == [1, 2]
    assert set(Refusals(store.root).read()) == {"3"}
