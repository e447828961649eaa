"""``/jobs`` in-process (TestClient): the Celery app is a fake that records ``send_task`` (through
``app.dependency_overrides``); the job records, datasets and store are real."""

from __future__ import annotations

import pytest
from kombu.exceptions import OperationalError

from service.deps import get_celery
from tests.apptest import (
    TINY_JOB,
    FakeCelery,
    assert_json_error,
    decoded,
    encode,
    photo,
)

# -- /jobs ---------------------------------------------------------------------------------------


def test_submitting_a_job_queues_it_and_answers_202(client, fake_celery):
    response = client.post("/jobs", json=TINY_JOB)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "queued" and job["config"]["dataset"] == "tiny"
    assert job["config"]["batch_size"] == 1  # the resolved config, defaults included
    [call] = fake_celery.calls
    assert call["name"] == "colorizer.train" and call["queue"] == "training"
    assert call["args"] == [job["id"], job["config"]]

    status = client.get(f"/jobs/{job['id']}")
    assert status.status_code == 200
    assert status.json()["state"] == "queued" and status.json()["progress"]["step"] == 0
    assert [j["id"] for j in client.get("/jobs").json()] == [job["id"]]


def test_submitting_a_job_with_a_missing_dataset_is_422_naming_dataset(client, fake_celery):
    response = client.post("/jobs", json={**TINY_JOB, "dataset": "nowhere"})
    body = assert_json_error(response, 422, "dataset", "nowhere")
    assert body["errors"][0]["loc"] == ["body", "dataset"]
    newline = assert_json_error(
        client.post("/jobs", json={**TINY_JOB, "dataset": TINY_JOB["dataset"] + "\n"}), 422
    )
    assert newline["errors"][0]["loc"] == ["body", "dataset"] and "\n" not in newline["detail"]
    assert fake_celery.calls == [] and client.get("/jobs").json() == []


def test_submitting_a_job_whose_dataset_symlink_escapes_is_422(client, fake_celery, settings, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (settings.datasets_dir / "sneaky").symlink_to(outside)
    response = client.post("/jobs", json={**TINY_JOB, "dataset": "sneaky"})
    body = assert_json_error(response, 422, "outside")
    assert body["errors"][0]["loc"] == ["body", "dataset"]
    assert fake_celery.calls == []


def test_submitting_a_job_with_a_bad_field_is_422_naming_the_field(client, fake_celery):
    response = client.post("/jobs", json={**TINY_JOB, "batch_size": 0, "colour": "blue", "seed": 2**32})
    body = assert_json_error(response, 422, "batch_size", "colour", "seed")
    assert {tuple(e["loc"]) for e in body["errors"]} == {
        ("body", "batch_size"),
        ("body", "colour"),
        ("body", "seed"),  # numpy's seeds stop at 2**32 - 1: the worker would fail it at its first step
    }
    assert fake_celery.calls == []


def test_true_or_false_for_a_number_is_422_not_one_or_zero(client, fake_celery):
    # pydantic's lax mode takes true for 1: "steps": true was a one-step job that published a version
    response = client.post("/jobs", json={**TINY_JOB, "steps": True, "l1_weight": False, "init_from": True})
    body = assert_json_error(response, 422, "steps takes a number, not true", "l1_weight")
    assert {tuple(e["loc"]) for e in body["errors"]} == {
        ("body", "steps"),
        ("body", "l1_weight"),
        ("body", "init_from"),
    }
    label = client.put("/models/labels/canary", json={"version": True})
    assert_json_error(label, 422, "version takes a version number")
    assert client.get("/models/labels").json()["labels"] == {}
    # a truth value where the config takes one is still fine
    assert client.post("/jobs", json={**TINY_JOB, "train_encoder": False}).status_code == 202
    assert len(fake_celery.calls) == 1


def test_a_422_echoes_a_bad_value_json_can_hold_and_only_so_much_of_it(client, fake_celery):
    # Python's JSON parser takes NaN and Infinity, which JSON text (the answer) cannot hold
    headers = {"content-type": "application/json"}
    nan = client.post("/jobs", content='{"dataset": "tiny", "steps": NaN, "x": -Infinity}', headers=headers)
    body = assert_json_error(nan, 422, "steps")
    assert {e["loc"][-1]: e["input"] for e in body["errors"]} == {"steps": "nan", "x": "-inf"}
    label = client.put("/models/labels/canary", content='{"version": 1e400}', headers=headers)
    assert_json_error(label, 422, "version")
    big = client.post("/jobs", json={**TINY_JOB, "pad": "x" * 1_000_000})
    body = assert_json_error(big, 422, "pad")
    assert len(big.content) < 2000 and body["errors"][0]["input"].endswith("(1000002 characters)")
    assert fake_celery.calls == []


def test_a_mistyped_job_field_is_answered_with_the_name_it_probably_meant(client, fake_celery):
    response = client.post("/jobs", json={**TINY_JOB, "stpes": 4, "l1weight": 10, "colour": "blue"})
    body = assert_json_error(response, 422, "stpes", "did you mean 'steps'?", "did you mean 'l1_weight'?")
    assert "colour" in body["detail"] and "the fields are dataset, preset" in body["detail"]
    assert fake_celery.calls == []


def test_submitting_a_job_from_a_missing_version_is_422_naming_init_from(client, fake_celery):
    response = client.post("/jobs", json={**TINY_JOB, "init_from": 42})
    body = assert_json_error(response, 422, "init_from")
    assert body["errors"][0]["loc"] == ["body", "init_from"]
    assert client.post("/jobs", json={**TINY_JOB, "init_from": 1}).status_code == 202


def test_submitting_a_job_with_the_broker_down_is_503_and_the_job_failed(client):
    fake = FakeCelery(error=OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused."))
    client.app.dependency_overrides[get_celery] = lambda: fake
    response = client.post("/jobs", json=TINY_JOB)
    body = assert_json_error(response, 503, "broker")
    job_id = body["job"]["id"]
    record = client.get(f"/jobs/{job_id}").json()
    assert record["state"] == "failed" and "Connection refused" in record["error"]
    assert record["finished_at"] is not None


def test_cancelling_a_queued_job_cancels_it(client, fake_celery):
    job_id = client.post("/jobs", json=TINY_JOB).json()["id"]
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert client.get(f"/jobs/{job_id}").json()["state"] == "cancelled"


def test_cancelling_a_running_job_is_accepted_and_leaves_it_to_stop(client, fake_celery):
    job_id = client.post("/jobs", json=TINY_JOB).json()["id"]
    client.app.state.job_store.update(job_id, state="running")
    response = client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 202
    assert response.json()["state"] == "running"
    assert client.app.state.job_store.cancel_requested(job_id)


def test_a_job_whose_losses_diverged_still_reads_as_json(client, fake_celery):
    job_id = client.post("/jobs", json=TINY_JOB).json()["id"]
    client.app.state.job_store.update(
        job_id, state="running", losses={"g": float("nan"), "d": 0.5}, eta_seconds=float("inf")
    )
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json()["losses"] == {"g": None, "d": 0.5} and response.json()["eta_seconds"] is None
    assert client.get("/jobs").json()[0]["losses"]["g"] is None


def test_a_job_cancelled_before_its_first_sample_is_not_told_to_try_again(client, fake_celery):
    job_id = client.post("/jobs", json=TINY_JOB).json()["id"]
    assert client.post(f"/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    body = assert_json_error(client.get(f"/jobs/{job_id}/samples/latest"), 404, "cancelled", "no sample")
    assert "try again" not in body["detail"]


def test_latest_sample_is_404_until_one_is_written(client, fake_celery, settings):
    job_id = client.post("/jobs", json=TINY_JOB).json()["id"]
    assert_json_error(client.get(f"/jobs/{job_id}/samples/latest"), 404, "no sample yet")

    samples = settings.jobs_dir / job_id / "samples"
    samples.mkdir(parents=True)
    (samples / "plot_000001.png").write_bytes(encode(photo(30, 20)))
    response = client.get(f"/jobs/{job_id}/samples/latest")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert decoded(response).size == (30, 20)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/jobs/0123456789abcdef0123456789abcdef"),
        ("GET", "/jobs/not-a-job-id"),
        ("POST", "/jobs/0123456789abcdef0123456789abcdef/cancel"),
        ("GET", "/jobs/0123456789abcdef0123456789abcdef/samples/latest"),
    ],
)
def test_unknown_job_is_404_json(client, method, path):
    assert_json_error(client.request(method, path), 404, "does not exist")
