"""The labels over HTTP (TestClient, real tiny generators in a temporary store): moving and deleting
them needs the API key, bad names and versions are 4xx that change nothing, and a server whose
policy is a label follows it."""

from __future__ import annotations

from common.labels import LABELS_FILE, Labels
from common.store import GENERATOR_FILE
from tests.apptest import assert_json_error, changed, encode, photo, publish_tiny, wait_for

KEY = {"X-API-Key": "s3cret"}


def test_a_label_is_moved_listed_used_by_colorize_and_deleted(settings, start):
    keyed = changed(settings, api_key="s3cret")
    publish_tiny(keyed)
    publish_tiny(keyed)
    client = start(keyed)
    wait_for(lambda: client.get("/readyz").status_code == 200, what="ready")
    assert client.get("/models/labels").json() == {"policy": "latest", "labels": {}}

    assert_json_error(client.put("/models/labels/stable", json={"version": 1}), 401, "API key")
    moved = client.put("/models/labels/stable", json={"version": 1}, headers=KEY)
    assert moved.status_code == 200 and moved.json() == {"label": "stable", "version": 1, "previous": None}
    again = client.put("/models/labels/stable", json={"version": "2"}, headers=KEY)
    assert again.json() == {"label": "stable", "version": 2, "previous": 1}
    assert client.get("/models/labels").json()["labels"] == {"stable": 2}
    listing = client.get("/models").json()
    assert listing["labels"] == {"stable": 2} and listing["policy"] == "latest"
    assert [v["labels"] for v in listing["versions"]] == [[], ["stable"]]

    colorized = client.post("/colorize?model=stable", content=encode(photo()))
    assert colorized.status_code == 200 and colorized.headers["X-Model-Version"] == "2"
    assert_json_error(client.post("/colorize?model=nightly", content=encode(photo())), 404, "'nightly'")

    assert_json_error(client.delete("/models/labels/stable"), 401)
    assert client.delete("/models/labels/stable", headers=KEY).status_code == 204
    assert_json_error(client.delete("/models/labels/stable", headers=KEY), 404, "does not exist")
    assert client.get("/models/labels").json()["labels"] == {}


def test_bad_label_names_and_versions_are_4xx_and_change_nothing(settings, start):
    publish_tiny(settings)
    publish_tiny(settings)
    client = start(settings)
    wait_for(lambda: client.get("/readyz").status_code == 200, what="ready")
    assert client.put("/models/labels/stable", json={"version": 1}).status_code == 200
    before = (settings.models_dir / LABELS_FILE).read_bytes()

    for name in ("7", "Stable", "latest", "default", "a.b", "x" * 41):
        body = assert_json_error(
            client.put(f"/models/labels/{name}", json={"version": 1}), 422, "cannot name"
        )
        assert body["errors"][0]["loc"] == ["path", "name"]
    assert client.put("/models/labels/..%2Fescape", json={"version": 1}).status_code in (404, 422)
    for version in (9, "9", 0, "latest", "stable", -1):
        body = assert_json_error(client.put("/models/labels/stable", json={"version": version}), 422)
        assert body["errors"][0]["loc"] == ["body", "version"], body
    assert_json_error(client.put("/models/labels/stable", json={"version": 1, "x": 1}), 422)
    assert_json_error(client.put("/models/labels/stable", json={"version": "default"}), 422, "no default")

    broken = settings.models_dir / "3"
    broken.mkdir()
    (broken / "metadata.json").write_text('{"preset": "lab", "image_size": 32}')
    (broken / GENERATOR_FILE).write_bytes(b"not a keras archive")
    assert_json_error(client.put("/models/labels/stable", json={"version": 3}), 409, "cannot be loaded")
    assert (settings.models_dir / LABELS_FILE).read_bytes() == before  # nothing changed
    assert_json_error(client.delete("/models/labels/Stable"), 422, "cannot name")


def test_a_server_following_a_label_switches_when_it_moves_and_ignores_new_versions(settings, start):
    following = changed(settings, serve="stable")
    publish_tiny(following)
    client = start(following)
    # no default is installed in these tests: once set up, it says what is missing
    wait_for(lambda: "label 'stable'" in (client.get("/readyz").json()["detail"] or ""), what="the reason")
    assert_json_error(client.get("/readyz"), 503, "label 'stable'", "PUT /models/labels/stable")
    Labels(following.models_dir).set("stable", 1)
    wait_for(lambda: client.get("/readyz").status_code == 200, what="label followed")
    publish_tiny(following)
    publish_tiny(following)
    assert client.put("/models/labels/stable", json={"version": 3}).status_code == 200
    wait_for(lambda: client.get("/readyz").json().get("model_version") == 3, what="label moved to 3")
    assert client.get("/models").json()["served"] == 3
    wait_for(  # this replica's report in the store, written after each look
        lambda: (
            [(r["served"], r["policy"]) for r in client.get("/models").json()["replicas"]] == [(3, "stable")]
        ),
        what="the replica's report",
    )
    (settings.models_dir / LABELS_FILE).write_text("{broken")
    assert_json_error(client.get("/models/labels"), 503, "labels cannot be read")
    assert client.get("/models").status_code == 200
    assert client.post("/colorize", content=encode(photo())).headers["X-Model-Version"] == "3"  # it stays
