"""``colorizer models``: labels and retention from the command line, on the store the API reads."""

from __future__ import annotations

from click.testing import CliRunner

from cli import main
from common.labels import Labels
from common.settings import get_settings
from models.store import GENERATOR_FILE, METADATA_FILE, ModelStore
from tests.apptest import publish_tiny_to


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["models", *args])
    return result.exit_code, result.output


def test_labels_are_moved_listed_and_deleted_from_the_command_line(data_dir):
    store = ModelStore(data_dir / "models")
    publish_tiny_to(store)
    publish_tiny_to(store)
    assert run("label", "stable", "1") == (0, "label 'stable' -> version 1\n")
    assert run("label", "stable", "2") == (0, "label 'stable' -> version 2 (was 1)\n")
    assert Labels(store.root).read() == {"stable": 2}
    code, listing = run("list")
    assert code == 0 and "policy (COLORIZER_SERVE): latest" in listing
    assert [line.split() for line in listing.splitlines()[1:]] == [["1"], ["2", "stable"]]
    assert run("unlabel", "stable") == (0, "label 'stable' deleted (it pointed at version 2)\n")


def test_bad_labels_and_versions_fail_with_a_sentence_and_change_nothing(data_dir):
    store = ModelStore(data_dir / "models")
    publish_tiny_to(store)
    broken = store.root / "2"
    broken.mkdir()
    (broken / METADATA_FILE).write_text('{"preset": "lab", "image_size": 32}')
    (broken / GENERATOR_FILE).write_bytes(b"not a keras archive")
    for args, words in [
        (("label", "7", "1"), "cannot name a label"),
        (("label", "../x", "1"), "cannot name a label"),
        (("label", "stable", "9"), "does not exist"),
        (("label", "stable", "x"), "does not exist"),
        (("label", "stable", "2"), "generator.keras"),
        (("unlabel", "stable"), "'stable' does not exist"),
    ]:
        code, output = run(*args)
        assert code == 1 and words in output, (args, output)
    assert Labels(store.root).read() == {}


def test_prune_keeps_the_newest_the_labelled_and_the_pinned(data_dir, monkeypatch):
    store = ModelStore(data_dir / "models")
    for _ in range(6):
        publish_tiny_to(store)
    Labels(store.root).set("stable", 1)
    code, output = run("prune")
    assert code == 1 and "--keep N" in output  # COLORIZER_KEEP_VERSIONS is 0: keep everything
    monkeypatch.setenv("COLORIZER_SERVE", "3")
    get_settings.cache_clear()
    assert run("prune", "--keep", "2") == (0, "deleted versions [2, 4]\n")
    assert store.versions() == [1, 3, 5, 6]
    assert run("prune", "--keep", "2") == (0, "nothing to delete\n")


def test_retry_forgets_a_refusal_shared_through_the_store(data_dir):
    from common.refusals import Refusals

    store = ModelStore(data_dir / "models")
    publish_tiny_to(store)
    Refusals(store.root).record(1, (1, None, 2), "out of memory")
    code, listing = run("list")
    assert code == 0 and listing.splitlines()[1].split() == ["1"]  # refused.json is not a version
    assert run("retry", "1") == (0, "version 1 will be tried again\n")
    assert Refusals(store.root).read() == {}
    code, output = run("retry", "1")
    assert code == 1 and "no replica refused version 1" in output
