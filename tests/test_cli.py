"""The ``colorizer`` command: help, settings errors, colorize, train, and ``up``'s process care."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from service.cli import main
from service.settings import get_settings
from tests.conftest import make_photo, write_dataset
from tests.procs import Proc, colorizer, free_port, wait_for

COMMANDS = ("serve", "worker", "up", "train", "colorize", "evaluate", "default-model")


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """COLORIZER_DATA_DIR=<tmp>/data for in-process CLI calls (the cached settings are reset)."""
    for key in list(os.environ):
        if key.startswith("COLORIZER_"):
            monkeypatch.delenv(key)
    data = tmp_path / "data"
    monkeypatch.setenv("COLORIZER_DATA_DIR", str(data))
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


def publish_tiny_model(data_dir: Path) -> int:
    from models.networks import build_generator
    from models.store import ModelStore

    generator = build_generator(32, 1, 2, width=4)
    return ModelStore(data_dir / "models").publish(generator, {"preset": "lab", "image_size": 32})


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
        "from service.cli import main\n"
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


# --- colorize ------------------------------------------------------------------------------


def test_colorize_writes_every_readable_image_and_skips_the_rest(data_dir, tmp_path):
    version = publish_tiny_model(data_dir)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(make_photo(50, 40, seed=1)).convert("L").save(photos / "a.png")
    Image.fromarray(make_photo(30, 70, seed=2)).save(photos / "b.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "notes.txt").write_text("not an image; not picked up from a folder")
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(make_photo(20, 20, seed=3)).save(other / "a.webp")  # same stem as a.png
    out_dir = tmp_path / "out"

    result = CliRunner().invoke(main, ["colorize", str(photos), str(other / "a.webp"), "--out", str(out_dir)])

    assert result.exit_code == 1, result.output  # one file was skipped
    assert "skipped" in result.output and "broken.jpg" in result.output
    assert f"colorized 3 of 4 file(s) into {out_dir} with model version {version}" in result.output
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == ["a-1.png", "a.png", "b.png"]
    sizes = {name: Image.open(out_dir / name).size for name in written}
    assert sizes == {"a.png": (50, 40), "b.png": (30, 70), "a-1.png": (20, 20)}
    assert all(Image.open(out_dir / name).mode == "RGB" for name in written)


def test_colorize_keeps_the_input_luminance_and_honours_format(data_dir, tmp_path):
    publish_tiny_model(data_dir)
    gray = make_photo(40, 40, seed=4)
    Image.fromarray(gray).convert("L").save(tmp_path / "g.png")
    result = CliRunner().invoke(
        main, ["colorize", str(tmp_path / "g.png"), "-o", str(tmp_path / "o"), "--format", "jpeg"]
    )
    assert result.exit_code == 0, result.output
    out = Image.open(tmp_path / "o" / "g.jpg")
    assert out.format == "JPEG" and out.size == (40, 40)
    lum_in = np.asarray(Image.open(tmp_path / "g.png"), dtype=float)
    lum_out = np.asarray(out.convert("L"), dtype=float)
    assert np.abs(lum_in - lum_out).mean() < 6  # colour added, luminance kept (JPEG loses a little)


def test_colorize_without_a_model_says_how_to_get_one(data_dir, tmp_path):
    Image.fromarray(make_photo(20, 20, seed=5)).save(tmp_path / "x.png")
    result = CliRunner().invoke(main, ["colorize", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "no model in" in result.output and "colorizer train" in result.output


def test_colorize_rejects_an_unknown_version_and_a_bad_render_size(data_dir, tmp_path):
    publish_tiny_model(data_dir)
    Image.fromarray(make_photo(20, 20, seed=6)).save(tmp_path / "x.png")
    args = ["colorize", str(tmp_path / "x.png"), "--out", str(tmp_path / "o")]
    unknown = CliRunner().invoke(main, [*args, "--model", "7"])
    assert unknown.exit_code == 1 and "model version 7 does not exist" in unknown.output
    bad_size = CliRunner().invoke(main, [*args, "--render-size", "33"])
    assert bad_size.exit_code == 2 and "--render-size" in bad_size.output
    assert not (tmp_path / "o").exists()


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
    from models.jobs import JobStore
    from models.store import ModelStore

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


# --- up ------------------------------------------------------------------------------------


def start_up(tmp_path: Path, name: str) -> tuple[Proc, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLORIZER_")}
    env.update(
        COLORIZER_DATA_DIR=str(tmp_path / "data"),
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="-1",
        PYTHONUNBUFFERED="1",
    )
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
    up, port = start_up(tmp_path, "up")
    children: dict[int, str] = {}
    try:
        children = wait_for_both(up, port)
        assert "sqla+sqlite:///" in up.log()  # the worker is on the embedded SQLite broker
        assert (tmp_path / "data" / "broker.sqlite").exists()
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
