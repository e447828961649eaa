"""The colorize workers' sender (common.fanout) on its edge cases, with a stand-in for Celery: the
real thing runs in tests/system/test_scale_out.py."""

from __future__ import annotations

import time
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

from common import fanout
from common.fanout import RemoteColorizer, RemoteFailed, decode_photo, encode_photo
from common.queue import COLORIZE_QUEUE, COLORIZE_TASK


class FakeCelery:
    """send_task, control.ping/inspect and the result states the sender reads."""

    def __init__(self):
        self.sent: list[dict] = []
        self.states: dict[str, tuple[str, object]] = {}  # task id -> (state, result or info)
        self.forgotten: list[str] = []
        self.alive: set[str] = set()
        self.colorize_workers: list[str] = []
        self.revoked: list[str] = []
        self.control = self

    def send_task(self, name, kwargs=None, queue=None, task_id=None, expires=None):
        assert (name, queue) == (COLORIZE_TASK, COLORIZE_QUEUE) and expires > 0
        self.sent.append({"id": task_id, **kwargs})

    def ping(self, destination, timeout, limit):
        return [{name: {"ok": "pong"}} for name in destination if name in self.alive]

    def revoke(self, task_ids):
        self.revoked.extend(task_ids)

    def inspect(self, timeout):
        return self

    def active_queues(self):
        return {name: [{"name": COLORIZE_QUEUE}] for name in self.colorize_workers}


@pytest.fixture
def app(monkeypatch) -> FakeCelery:
    celery = FakeCelery()

    class FakeResult:
        def __init__(self, task_id, app):
            self.id = task_id
            self.state, value = celery.states.get(task_id, ("PENDING", None))
            self.result = self.info = value

        def forget(self):
            celery.forgotten.append(self.id)

    monkeypatch.setattr(fanout, "AsyncResult", FakeResult)
    monkeypatch.setattr(fanout, "PING_TTL_S", 0.0)
    monkeypatch.setattr(fanout, "WORKERS_TTL_S", 0.0)
    return celery


def sender(app, **options) -> RemoteColorizer:
    return RemoteColorizer(app, **{"stall_seconds": 0.2, "queue_seconds": 0.5, "poll": 0.01, **options})


def submit(remote: RemoteColorizer):
    return remote.submit(b"\x89PNG photo", version=3, image_format="png", render_size=64, hints=[{"x": 1}])


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_an_answer_settles_the_photograph_and_leaves_nothing_in_the_backend(app):
    remote = sender(app)
    future = submit(remote)
    (message,) = app.sent
    assert decode_photo(message["photo"]) == b"\x89PNG photo"
    assert (message["version"], message["image_format"], message["render_size"]) == (3, "png", 64)
    assert message["hints"] == [{"x": 1}]
    answer = {"data": encode_photo(b"out"), "model_version": 3, "worker": "w1@host"}
    app.states[message["id"]] = ("SUCCESS", answer)
    assert future.result(5) == answer
    assert app.forgotten == [message["id"]]


def test_a_photograph_started_by_a_worker_that_died_is_sent_again_and_a_busy_one_is_waited_for(app):
    app.alive = {"busy@host"}
    remote = sender(app, queue_seconds=30)
    busy, orphan = submit(remote), submit(remote)
    app.states[app.sent[0]["id"]] = ("STARTED", {"hostname": "busy@host", "pid": 1})
    app.states[app.sent[1]["id"]] = ("STARTED", {"hostname": "dead@host", "pid": 2})
    wait_until(lambda: len(app.sent) == 3)
    time.sleep(0.5)  # the busy worker's photograph, started long ago too, is not sent again
    assert len(app.sent) == 3 and not busy.done()
    again = app.sent[2]
    assert again["photo"] == app.sent[1]["photo"] and again["id"] != app.sent[1]["id"]
    app.states[again["id"]] = ("SUCCESS", {"data": encode_photo(b"x"), "worker": "other@host"})
    assert orphan.result(5)["worker"] == "other@host"
    app.states[app.sent[0]["id"]] = ("SUCCESS", {"data": encode_photo(b"y"), "worker": "busy@host"})
    assert busy.result(5)["worker"] == "busy@host"


def test_a_worker_is_believed_dead_only_after_missing_pings_in_a_row(app):
    remote = sender(app)
    assert [remote.alive("slow@host") for _ in range(fanout.PING_MISSES)][-1] is False
    app.alive = {"slow@host"}
    assert remote.alive("slow@host")  # it answers again: its misses are forgotten
    app.alive = set()
    assert remote.alive("slow@host"), "one missed ping (a starved worker) is not death"


def test_a_photograph_sent_again_takes_whichever_answer_comes_first_and_revokes_the_rest(app):
    remote = sender(app, queue_seconds=30)
    future = submit(remote)
    first = app.sent[0]["id"]
    app.states[first] = ("STARTED", {"hostname": "slow@host"})
    wait_until(lambda: len(app.sent) == 2)  # slow@host missed its pings: sent again
    again = app.sent[1]["id"]
    app.states[again] = ("STARTED", {"hostname": "other@host"})
    app.states[first] = ("SUCCESS", {"data": encode_photo(b"x"), "worker": "slow@host"})
    assert future.result(5)["worker"] == "slow@host"
    assert app.forgotten == [first] and sorted(app.revoked) == sorted([first, again])


def test_sent_again_at_most_resends_times_then_the_sentence_says_so(app):
    remote = sender(app, resends=1)
    future = submit(remote)
    app.states[app.sent[0]["id"]] = ("STARTED", {"hostname": "dead@host"})
    wait_until(lambda: len(app.sent) == 2)
    app.states[app.sent[1]["id"]] = ("STARTED", {"hostname": "dead2@host"})
    with pytest.raises(RemoteFailed, match="sent 2 times and its worker dead2@host stopped answering"):
        future.result(5)
    assert len(app.sent) == 2


def test_a_photograph_nobody_starts_is_sent_again_while_workers_answer_else_it_fails(app):
    app.colorize_workers = ["w1@host"]
    remote = sender(app, resends=1)
    future = submit(remote)
    wait_until(lambda: len(app.sent) == 2)  # taken, perhaps, by a worker that died before starting it
    app.colorize_workers = []
    with pytest.raises(RemoteFailed, match=r"no colorize worker took the photograph in 0.5 s"):
        future.result(5)


def test_a_failed_task_fails_the_photograph_and_close_fails_the_rest(app):
    remote = sender(app, queue_seconds=60)
    failed, waiting = submit(remote), submit(remote)
    app.states[app.sent[0]["id"]] = ("FAILURE", RuntimeError("TensorFlow would not start"))
    with pytest.raises(RemoteFailed, match="TensorFlow would not start"):
        failed.result(5)
    with pytest.raises(FutureTimeout):
        waiting.result(0.1)
    remote.close()
    with pytest.raises(RemoteFailed, match="stopping"):
        waiting.result(5)
    with pytest.raises(RemoteFailed, match="closed"):
        submit(remote)


def test_workers_are_those_consuming_the_colorize_queue(app):
    app.colorize_workers = ["b@host", "a@host"]
    assert sender(app).workers() == ["a@host", "b@host"]
