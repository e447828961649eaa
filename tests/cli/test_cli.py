"""The ``colorizer`` command: help, settings errors, train, and ``up``'s process care (``colorize``
has tests/cli/test_colorize_folder.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cli import main
from models.store import ModelStore
from tests.photos import write_dataset
from tests.procs import Proc, colorizer, free_port, wait_for

COMMANDS = ("serve", "worker", "up", "train", "colorize", "evaluate", "default-model", "models")


def child_pids(pid: int) -> dict[int, str]:
    """Direct children of ``pid`` with their command lines (from /proc)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                children[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return children


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_groups(pids) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# --- fast checks ---------------------------------------------------------------------------


def test_help_lists_every_command_without_importing_heavy_modules():
    code = (
        "import sys\n"
        "from cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
        "print('HEAVY', sorted(m for m in ('tensorflow', 'keras', 'celery', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    for command in COMMANDS:
        assert f"  {command} " in out.stdout


def test_installed_script_answers_help():
    script = Path(sys.executable).parent / "colorizer"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Usage: colorizer" in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: main {command}" in result.output


def test_invalid_settings_are_reported_with_the_variable_name(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLORIZER_")}
    env.update(COLORIZER_PORT="0", COLORIZER_BROKER_URL="mysql://nope", COLORIZER_DATA_DIR=str(tmp_path))
    out = subprocess.run(colorizer("serve"), env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "COLORIZER_PORT" in out.stderr and "COLORIZER_BROKER_URL" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_colorize_worker_needs_a_shared_broker(data_dir):
    result = CliRunner().invoke(main, ["worker", "--colorize"])
    assert result.exit_code == 2
    assert "set COLORIZER_BROKER_URL" in result.output and "the API colorizes batches itself" in result.output


def test_a_colorize_worker_is_one_process_of_threads_on_the_colorize_queue():
    from cli.processes import colorize_worker_argv

    argv = colorize_worker_argv("info", 16)
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert options["--queues"] == "colorize" and options["--pool"] == "threads"
    assert options["--concurrency"] == "16" and options["--prefetch-multiplier"] == "1"
    assert options["--hostname"].startswith("colorize-") and options["--hostname"].endswith("@%h")
    assert colorize_worker_argv("info", 16, "painter@%h")[-1] == "painter@%h"


# --- train ---------------------------------------------------------------------------------


def test_train_on_a_folder_publishes_into_the_settings_model_store(data_dir, tmp_path):
    folder = write_dataset(tmp_path / "my photos")
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--dataset",
            str(folder),
            "--steps",
            "2",
            "--image-size",
            "32",
            "--width",
            "4",
            "--batch-size",
            "2",
            "--checkpoint-every",
            "2",
            "--publish-every",
            "1000",
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "succeeded; published versions: [1]" in result.output
    assert "\x1b[" not in result.output  # not a terminal: Keras's plain lines, no cursor or colour codes
    from common.jobs import JobStore

    assert ModelStore(data_dir / "models").versions() == [1]
    (record,) = JobStore(data_dir / "jobs").list()
    assert record["state"] == "succeeded" and record["published_versions"] == [1]
    assert record["config"]["dataset"] == "my_photos"


def test_train_rejects_invalid_options_before_creating_a_job(data_dir, tmp_path):
    folder = write_dataset(tmp_path / "photos", count=2)
    result = CliRunner().invoke(
        main, ["train", "--dataset", str(folder), "--steps", "2", "--image-size", "30"]
    )
    assert result.exit_code == 2
    assert "image_size" in result.output
    assert not (data_dir / "jobs").exists() or not any((data_dir / "jobs").iterdir())
    missing = CliRunner().invoke(main, ["train", "--dataset", "nowhere", "--steps", "2"])
    assert missing.exit_code == 2 and "neither a folder nor a dataset" in missing.output


def test_train_takes_every_field_a_training_job_takes(data_dir, tmp_path):
    from common.jobs import JobStore
    from models.config import TrainConfig

    command = main.commands["train"]
    options = {name for param in command.params for name in param.opts}
    assert {f"--{field.replace('_', '-')}" for field in TrainConfig.model_fields} <= options
    folder = write_dataset(tmp_path / "photos", count=2)
    wrong = CliRunner().invoke(
        main, ["train", "--dataset", str(folder), "--steps", "2", "--precision", "half"]
    )
    assert wrong.exit_code == 2 and "'half' is not one of 'auto', 'float32', 'mixed'" in wrong.output
    result = CliRunner().invoke(
        main,
        ["train", "--dataset", str(folder), "--steps", "1", "--image-size", "32", "--width", "4"]
        + ["--max-seconds", "600", "--decoder", "resize", "--precision", "float32", "--init-from", "default"],
    )
    # init_from "default" reaches the job (no default model in tests: the job fails saying so)
    (record,) = JobStore(data_dir / "jobs").list()
    assert record["config"]["max_seconds"] == 600 and record["config"]["decoder"] == "resize"
    assert record["config"]["init_from"] == "default", result.output


# --- up ------------------------------------------------------------------------------------


def start_up(tmp_path: Path, name: str, as_a_user_would: bool = False) -> tuple[Proc, int]:
    """``colorizer up`` on ``tmp_path/data``; ``as_a_user_would``: without the tests' TensorFlow
    variables (TF_CPP_MIN_LOG_LEVEL, CUDA_VISIBLE_DEVICES), as README's commands run it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLORIZER_", "TF_CPP", "CUDA_"))}
    env.update(COLORIZER_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    if not as_a_user_would:
        env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    port = free_port()
    return Proc(colorizer("up", "--port", str(port), "--grace", "5"), env, tmp_path / f"{name}.log"), port


def wait_for_both(up: Proc, port: int) -> dict[int, str]:
    wait_for(
        lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200,
        60,
        "API /healthz",
        (up,),
    )
    wait_for(lambda: " ready." in up.log(), 60, "worker ready", (up,))
    children = child_pids(up.popen.pid)
    assert len(children) == 2, children
    return children


@pytest.mark.integration
def test_up_runs_api_and_worker_on_the_embedded_broker_and_ctrl_c_stops_both(tmp_path):
    from models.networks import build_generator

    ModelStore(tmp_path / "data" / "models").publish(
        build_generator(32, 1, 2, width=4), {"preset": "lab", "image_size": 32}
    )
    up, port = start_up(tmp_path, "up", as_a_user_would=True)
    children: dict[int, str] = {}
    try:
        children = wait_for_both(up, port)
        assert "sqla+sqlite:///" in up.log()  # the worker is on the embedded SQLite broker
        assert (tmp_path / "data" / "broker.sqlite").exists()
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200,
            60,
            "version 1 served",
            (up,),
        )
        # The log says what is served, and nothing alarming that is normal on a CPU-only machine
        log = up.log()
        assert "now serving model version 1" in log
        for noise in ("cuInit", "absl::InitializeLog", "oneDNN custom operations", "superuser privileges"):
            assert noise not in log, (noise, log[-3000:])
        up.popen.send_signal(signal.SIGINT)
        assert up.popen.wait(30) == 0, up.log()[-3000:]
        assert not any(alive(pid) for pid in children), children
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        up.stop()
        kill_groups(children)


@pytest.mark.integration
def test_up_stops_the_api_and_fails_when_the_worker_dies(tmp_path):
    up, port = start_up(tmp_path, "up-dies")
    children: dict[int, str] = {}
    try:
        children = wait_for_both(up, port)
        (worker_pid,) = [pid for pid, cmd in children.items() if cmd.rstrip().endswith("worker")]
        (api_pid,) = [pid for pid in children if pid != worker_pid]
        started = time.monotonic()
        os.killpg(worker_pid, signal.SIGKILL)
        code = up.popen.wait(30)
        assert code != 0
        assert "worker exited" in up.log()
        assert not alive(api_pid)
        assert time.monotonic() - started < 20
    finally:
        up.stop()
        kill_groups(children)
