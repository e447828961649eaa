"""Faults in-process: a full or read-only model store, torn checkpoints, interrupted runs, job
leases and the recovery of jobs nobody trains. (The same faults with real processes: test_faults.)"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from common.jobs import JobStore
from common.settings import Settings
from common.store import UnknownVersion, parse_version
from models.networks import build_generator
from models.store import ModelStore
from models.training import run_training
from tests.models.test_training import tiny_config
from worker import recovery
from worker.tasks import run_job

TINY = {
    "dataset": "tiny",
    "image_size": 32,
    "steps": 4,
    "batch_size": 2,
    "width": 4,
    "sample_every": 100,
    "publish_every": 2,
    "checkpoint_every": 2,
    "seed": 3,
}
LAB = {"preset": "lab", "image_size": 32}


def no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def leftovers(store: ModelStore) -> list[str]:
    """Anything in the store's folder besides whole versions."""
    if not store.root.exists():
        return []
    return sorted(p.name for p in store.root.iterdir() if not p.name.isdigit())


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` on a read-only bind mount (so even root cannot write), or a skip if that is not
    possible here; chmod is no substitute when the tests run as root."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        remount = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remount.stderr.decode().strip()}")
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# -- 4: the model store when the disk is full or read-only ---------------------------------------


@pytest.mark.parametrize("where", ["generator.save", "os.rename"])
def test_publish_on_a_full_disk_fails_and_leaves_no_partial_version(tmp_path, monkeypatch, where):
    store = ModelStore(tmp_path / "models")
    generator = build_generator(32, 1, 2, width=4)
    assert store.publish(generator, LAB) == 1
    if where == "os.rename":
        monkeypatch.setattr("common.store.os.rename", no_space)
    else:
        monkeypatch.setattr(type(generator), "save", no_space)
    with pytest.raises(OSError) as err:
        store.publish(generator, LAB)
    assert err.value.errno == errno.ENOSPC
    assert store.versions() == [1] and leftovers(store) == []
    monkeypatch.undo()
    assert store.publish(generator, LAB) == 2  # the next publish, with space again, is whole


def test_publish_to_a_read_only_store_fails_and_leaves_nothing(tmp_path):
    store = ModelStore(tmp_path / "models")
    generator = build_generator(32, 1, 2, width=4)
    assert store.publish(generator, LAB) == 1
    with read_only(store.root):
        with pytest.raises(OSError) as err:
            store.publish(generator, LAB)
        assert err.value.errno == errno.EROFS
        assert store.versions() == [1] and leftovers(store) == []


def test_a_publisher_killed_mid_publish_leaves_a_temp_dir_the_next_publish_removes(tmp_path):
    store = ModelStore(tmp_path / "models")
    stale = store.root / ".tmp-deadbeef-x"
    fresh = store.root / ".tmp-cafebabe-y"  # maybe another publisher at work right now: kept
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "generator.keras").write_bytes(b"half a file")
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    assert store.publish(build_generator(32, 1, 2, width=4), LAB) == 1
    assert not stale.exists() and fresh.exists()


def test_version_numbers_are_positive_ascii_digits_only():
    assert [parse_version(t) for t in ("1", "12", "007")] == [1, 12, 7]
    for text in ("²", "١٢", "１", "0", "", "-1", "+1", " 1", "1.0", "1\n", "9" * 19, None, 3):
        assert parse_version(text) is None, text


def test_names_in_the_store_that_are_not_versions_are_ignored_with_one_log_line(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="models.store")
    store = ModelStore(tmp_path / "models")
    for name in ("²", "١", "１", "0", "notes"):
        (store.root / name).mkdir(parents=True)
    (store.root / "4").write_text("a file where a version folder would be")
    generator = build_generator(32, 1, 2, width=4)
    assert store.publish(generator, LAB) == 1
    assert store.publish(generator, LAB) == 2
    assert [info.version for info in store.list()] == [1, 2] and store.latest().version == 2
    with pytest.raises(UnknownVersion):
        store.load("１")
    ignored = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ignoring")]
    assert len(ignored) == 6 and all("ASCII digits" in m for m in ignored)


def test_a_published_version_is_readable_by_other_users(tmp_path):
    store = ModelStore(tmp_path / "models")
    version = store.publish(build_generator(32, 1, 2, width=4), LAB)
    assert (store.root / str(version)).stat().st_mode & 0o777 == 0o755
    for child in (store.root / str(version)).iterdir():
        assert child.stat().st_mode & 0o044 == 0o044, child


def test_a_job_whose_publish_hits_a_full_disk_fails_naming_the_store(dataset_dir, monkeypatch):
    settings = Settings(data_dir=dataset_dir)
    jobs = JobStore(settings.jobs_dir)
    job_id = jobs.create(TINY)["id"]
    monkeypatch.setattr("common.store.os.rename", no_space)
    outcome = run_job(settings, job_id, TINY)
    record = jobs.get(job_id)
    assert outcome["state"] == record["state"] == "failed"
    assert f"model store at {settings.models_dir}" in record["error"]
    assert "No space left on device" in record["error"] and "step 2" in record["error"]
    store = ModelStore(settings.models_dir)
    assert store.versions() == [] and leftovers(store) == []
    assert record["published_versions"] == [] and record["finished_at"] is not None


# -- checkpoints: a shutdown loses nothing, a torn checkpoint falls back, no step published twice --


def test_an_interrupted_run_checkpoints_its_step_and_resumes_exactly_there(dataset_dir, tmp_path):
    store, job_dir = ModelStore(dataset_dir / "models"), tmp_path / "job"
    config = tiny_config(steps=9, checkpoint_every=4, publish_every=2)
    seen: list[int] = []
    first = run_training(
        config,
        data_dir=dataset_dir,
        job_dir=job_dir,
        store=store,
        job_id="j",
        on_progress=lambda p: seen.append(p["step"]),
        should_interrupt=lambda: bool(seen) and seen[-1] >= 5,
    )
    # Asked after step 5 was reported, it stops after step 6: between two checkpoint intervals.
    assert first.state == "interrupted" and first.steps == 6
    assert sorted(p.name for p in (job_dir / "backup").iterdir()) == ["step-000000004", "step-000000006"]
    steps: list[int] = []
    second = run_training(
        config,
        data_dir=dataset_dir,
        job_dir=job_dir,
        store=store,
        job_id="j",
        on_progress=lambda p: steps.append(p["step"]),
    )
    assert steps[0] == 7 and second.state == "succeeded" and second.steps == 9
    assert [store.get(v).metadata["step"] for v in store.versions()] == [2, 4, 6, 8, 9]
    assert not (job_dir / "backup").exists()


def test_a_torn_checkpoint_or_a_lost_ledger_write_costs_no_duplicate_version(dataset_dir, tmp_path):
    store, job_dir = ModelStore(dataset_dir / "models"), tmp_path / "job"

    def crash_at_7(progress):
        if progress["step"] == 7:
            raise RuntimeError("worker died")

    config = tiny_config(steps=9, publish_every=3)
    with pytest.raises(RuntimeError):
        run_training(
            config, data_dir=dataset_dir, job_dir=job_dir, store=store, job_id="j", on_progress=crash_at_7
        )
    assert store.versions() == [1, 2]  # steps 3 and 6
    # Killed while writing the step-6 checkpoint, and between the step-6 publish and its ledger write:
    (job_dir / "backup" / "step-000000006" / "checkpoint.weights.h5").write_bytes(b"\x89HDF\r\n torn")
    (job_dir / "published.json").write_text('{"3": 1}')
    steps: list[int] = []
    result = run_training(
        config,
        data_dir=dataset_dir,
        job_dir=job_dir,
        store=store,
        job_id="j",
        on_progress=lambda p: steps.append(p["step"]),
    )
    assert steps[0] == 5  # from the step-4 checkpoint
    assert result.state == "succeeded" and result.steps == 9
    assert result.published_versions == [1, 2, 3]  # step 6 not again
    assert [store.get(v).metadata["step"] for v in store.versions()] == [3, 6, 9]


# -- the lease: one trainer per job; the kernel frees it when the trainer dies --------------------


def test_a_job_lease_is_exclusive_and_freed_when_its_holder_is_killed(tmp_path):
    jobs = JobStore(tmp_path / "jobs")
    job_id = jobs.create({})["id"]
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from common.jobs import JobStore\n"
            f"lease = JobStore({str(jobs.root)!r}).claim({job_id!r})\n"
            "print('held' if lease else 'refused', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert jobs.is_claimed(job_id)
        assert jobs.claim(job_id, wait=0.2) is None
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert not jobs.is_claimed(job_id)
        with jobs.claim(job_id) as lease:
            assert lease.held and jobs.is_claimed(job_id)
        assert not jobs.is_claimed(job_id)
    finally:
        holder.kill()
        holder.wait(10)


def test_a_child_forked_while_a_record_is_written_holds_no_lock_of_it(tmp_path):
    """The Celery worker forks pool children from one thread while its recovery thread writes job
    records: a child must not inherit a record's lock (it would hold it for as long as it lives,
    and the job's next record update, its own included, would wait for ever)."""
    jobs = JobStore(tmp_path / "jobs")
    job_id = jobs.create({})["id"]
    inside = threading.Event()

    def slow_change(record):
        inside.set()
        time.sleep(0.5)  # the fork below is asked for meanwhile
        return {"marked": True}

    writer = threading.Thread(target=jobs.modify, args=(job_id, slow_change))
    writer.start()
    assert inside.wait(10)
    pid = os.fork()
    if pid == 0:  # the child keeps whatever it inherited for a while, then leaves without cleanup
        time.sleep(3)
        os._exit(0)
    try:
        writer.join(10)
        fd = os.open(jobs.job_dir(job_id) / ".record.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the child holds it
        finally:
            os.close(fd)
        assert jobs.get(job_id)["marked"] and os.waitpid(pid, os.WNOHANG) == (0, 0)  # child alive
    finally:
        os.waitpid(pid, 0)


def test_a_second_delivery_of_a_job_in_training_steps_aside(dataset_dir):
    settings = Settings(data_dir=dataset_dir)
    jobs = JobStore(settings.jobs_dir)
    job_id = jobs.create(TINY)["id"]
    jobs.update(job_id, state="running", attempts=1)
    with jobs.claim(job_id):
        before = jobs.get(job_id)
        assert run_job(settings, job_id, TINY)["state"] == "duplicate"
        assert jobs.get(job_id) == before


def test_clean_interruptions_do_not_count_as_deaths(dataset_dir):
    settings = Settings(data_dir=dataset_dir)
    jobs = JobStore(settings.jobs_dir)
    job_id = jobs.create(TINY)["id"]
    jobs.update(job_id, state="queued", attempts=5, interruptions=4)  # one death, four shutdowns
    run_job(settings, job_id, {**TINY, "dataset": "gone"})  # fails fast, after the attempt check
    record = jobs.get(job_id)
    assert record["attempts"] == 6 and "dataset 'gone' does not exist" in record["error"]
    jobs.update(job_id, state="running", attempts=5, interruptions=2)  # three deaths: enough
    run_job(settings, job_id, TINY)
    assert "started 3 times and its worker died each time" in jobs.get(job_id)["error"]


# -- recovery: started jobs nobody trains are re-queued once --------------------------------------


class FakeApp:
    def __init__(self, error: Exception | None = None):
        self.sent: list[list] = []
        self.error = error

    def send_task(self, name, args=None, **options):
        if self.error is not None:
            raise self.error
        assert options["ignore_result"] is True
        self.sent.append(args)


def test_recovery_requeues_each_orphaned_job_once(tmp_path):
    jobs = JobStore(tmp_path / "jobs")

    def job(**fields) -> str:
        job_id = jobs.create(TINY)["id"]
        jobs.update(job_id, **fields)
        return job_id

    killed = job(state="running", attempts=1, claimed_at=time.time())
    interrupted = job(state="queued", attempts=2, interruptions=1)
    job(state="queued")  # never started: its message is still in the queue
    job(state="succeeded", attempts=1)
    job(state="running", attempts=1, origin="cli")  # colorizer train, killed: not for a worker
    training = job(state="running", attempts=1)

    with jobs.claim(training):
        app = FakeApp(ConnectionError("broker down"))
        assert recovery.requeue_orphans(app, jobs, requeue_after=3600) == []
        assert jobs.get(killed).get("requeued_at") is None  # to be retried

        app = FakeApp()
        assert sorted(recovery.requeue_orphans(app, jobs, requeue_after=3600)) == sorted(
            [killed, interrupted]
        )
        assert sorted(args[0] for args in app.sent) == sorted([killed, interrupted])
        assert app.sent[0][1] == TINY
        assert recovery.requeue_orphans(app, jobs, requeue_after=3600) == []  # already pending
        # A re-queued message that never arrives (lost with a Redis without persistence):
        assert sorted(recovery.requeue_orphans(app, jobs, requeue_after=0)) == sorted([killed, interrupted])


# -- a broker that is down: POST /jobs answers 503 at once -----------------------------------------


def test_submitting_with_redis_down_answers_503_within_seconds(dataset_dir):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.procs import free_port

    settings = Settings(
        data_dir=dataset_dir, broker_url=f"redis://127.0.0.1:{free_port()}/0"
    )  # nothing there
    with TestClient(create_app(settings)) as client:
        started = time.monotonic()
        response = client.post("/jobs", json=TINY)
        elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert "broker" in response.json()["detail"] and response.json()["job"]["state"] == "failed"
