"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The file's structure is checked as data; then each service's own ``command`` is started here
with the service's ``environment`` (hosts mapped to 127.0.0.1, Redis DB 13, /data to a temporary
folder): redis-server must accept the service's arguments, the API must answer /healthz and its
healthcheck must pass once a model is published, and the worker must connect and stop on the
service's ``stop_signal``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.procs import REDIS_TEST_URL, Proc, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def redis_url() -> str:
    """The tests' Redis DB (tests.procs), emptied before and after; skips without Redis, but fails on
    CI (CI set)."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        message = f"Redis is not reachable at {REDIS_TEST_URL}: {exc}"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{message} (CI is set: the Redis-backed tests must run)")
        pytest.skip(message)
    client.flushdb()
    yield REDIS_TEST_URL
    client.flushdb()
    client.close()


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` substitution."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)


def local_env(service: dict, data_dir: Path, **extra: str) -> dict[str, str]:
    """The service's environment as it would run here: the tests' Redis DB, /data -> data_dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLORIZER_")}
    for key, value in (service.get("environment") or {}).items():
        value = interpolate(str(value), {})
        value = re.sub(r"redis://redis:\d+/\d+", REDIS_TEST_URL, value)
        if value == "/data" or value.startswith("/data/"):
            value = str(data_dir) + value[len("/data") :]
        env[key] = value
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1", PYTHONUNBUFFERED="1", **extra)
    return env


def local_command(service: dict) -> list[str]:
    """The service's command with its program resolved here (the venv's scripts, else PATH)."""
    command = list(service["command"])
    program = BIN / command[0]
    found = str(program) if program.exists() else shutil.which(command[0])
    assert found, f"{command[0]} is not installed here"
    return [found, *command[1:]]


def dockerfile_env() -> dict[str, str]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    env = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(pair.split("=", 1) for pair in line[4:].split()))
    return env


# --- structure -----------------------------------------------------------------------------


def test_api_and_worker_share_the_data_volume_and_wait_for_healthy_redis(compose):
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker", "colorize-worker", "flower"}
    assert services["colorize-worker"]["command"] == ["colorizer", "worker", "--colorize"]
    for name in ("api", "worker", "colorize-worker"):
        assert "data:/data" in services[name]["volumes"], name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert services[name]["image"] == services["api"]["image"]
    assert "data" in compose["volumes"]
    assert any(v.split(":")[0] in compose["volumes"] for v in services["redis"]["volumes"])
    assert services["api"]["ports"] == ["8000:8000"]
    assert services["worker"]["command"] == ["colorizer", "worker"]


def test_services_talk_to_redis_and_pass_the_api_key_through(compose):
    for name in ("api", "worker", "colorize-worker"):
        env = compose["services"][name]["environment"]
        assert env["COLORIZER_BROKER_URL"] == "redis://redis:6379/0"
        assert env["COLORIZER_API_KEY"] == "${COLORIZER_API_KEY:-}"
        assert env["COLORIZER_DATA_DIR"] == "/data"
        assert str(env["TF_FORCE_GPU_ALLOW_GROWTH"]).lower() == "true"


def test_healthchecks_ping_redis_and_probe_readyz_without_curl(compose):
    redis_check = compose["services"]["redis"]["healthcheck"]["test"]
    assert redis_check == ["CMD", "redis-cli", "ping"]
    api_check = compose["services"]["api"]["healthcheck"]["test"]
    assert api_check[:3] == ["CMD", "python", "-c"]
    assert "urllib" in api_check[3] and "/readyz" in api_check[3]
    assert "--appendonly" in compose["services"]["redis"]["command"]


def gpus(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_plain_compose_reserves_no_gpu_and_the_worker_stops_with_a_cold_shutdown(compose):
    # compose refuses to start a service whose device reservation cannot be met
    assert all(not gpus(service) for service in compose["services"].values())
    assert compose["services"]["worker"]["stop_signal"] == "SIGQUIT"


def test_the_gpu_override_gives_the_api_one_gpu_the_worker_all_and_per_gpu_workers_their_own(compose):
    override = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text())["services"]
    nvidia = {"driver": "nvidia", "capabilities": ["gpu"]}
    assert gpus(override["api"]) == [{**nvidia, "count": 1}]
    assert gpus(override["worker"]) == [{**nvidia, "count": "all"}]
    assert gpus(override["colorize-worker"]) == [{**nvidia, "count": 1}]
    per_gpu = sorted(name for name in override if name.startswith("worker-gpu"))
    assert per_gpu == ["worker-gpu0", "worker-gpu1"]
    for index, name in enumerate(per_gpu):
        service = override[name]
        assert service["extends"] == {"file": "docker-compose.yml", "service": "worker"}
        assert service["profiles"] == ["per-gpu"]  # only with --profile per-gpu
        assert gpus(service) == [{**nvidia, "device_ids": [str(index)]}]
    assert set(override) - {"api", "worker", "colorize-worker", *per_gpu} == set()
    assert all(name in compose["services"] for name in ("api", "worker", "colorize-worker"))


def test_flower_is_optional_and_watches_the_services_broker(compose):
    flower = compose["services"]["flower"]
    assert flower["profiles"] == ["monitoring"]
    broker = compose["services"]["worker"]["environment"]["COLORIZER_BROKER_URL"]
    assert f"--broker={broker}" in flower["command"] and flower["command"][0] == "celery"
    assert flower["ports"] == ["5555:5555"]
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"


def test_dockerfile_builds_one_non_root_image_that_serves_by_default():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert 'CMD ["colorizer", "serve"]' in text
    assert "pip install --no-deps ." in text
    env = dockerfile_env()
    assert env["COLORIZER_DATA_DIR"] == "/data"
    assert env["COLORIZER_HOST"] == "0.0.0.0"
    assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "var" in ignored


def test_the_image_copies_every_package_the_project_installs():
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = sorted(
        path.parent.name
        for pattern in patterns["include"]
        for path in REPO.glob(f"{pattern.rstrip('*')}/__init__.py")
    )
    assert {"cli", "common", "models", "service", "worker"} <= set(packages)
    text = (REPO / "Dockerfile").read_text()
    for package in packages:
        assert re.search(rf"^COPY {package} \./{package}$", text, re.M), package


def test_compose_interpolation_and_mapping_used_by_these_tests():
    service = {"environment": {"A": "${COLORIZER_API_KEY:-}", "B": "redis://redis:6379/0", "C": "/data"}}
    env = local_env(service, Path("/tmp/x"))
    assert (env["A"], env["B"], env["C"]) == ("", REDIS_TEST_URL, "/tmp/x")
    assert interpolate("${X:-dflt}", {"X": "set"}) == "set"


# --- the services' own commands, run here --------------------------------------------------


@pytest.mark.integration
def test_redis_service_command_is_accepted_by_redis_server(compose, tmp_path):
    import redis

    command = local_command(compose["services"]["redis"])
    port = free_port()
    proc = Proc([*command, "--port", str(port), "--dir", str(tmp_path), "--save", ""], {}, tmp_path / "r.log")
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)

    def pong() -> bool:
        try:
            return client.ping()
        except redis.exceptions.ConnectionError:
            return False

    try:
        wait_for(pong, 20, "redis-server PING", (proc,))
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert (tmp_path / "appendonlydir").is_dir()  # --appendonly took effect in --dir
    finally:
        client.close()
        proc.stop()
    assert proc.popen.returncode == 0, proc.log()


@pytest.mark.integration
def test_api_service_command_answers_healthz_and_its_healthcheck_tracks_readiness(
    compose, tmp_path, redis_url
):
    api = compose["services"]["api"]
    port = free_port()
    data_dir = tmp_path / "data"
    env = local_env(
        api, data_dir, COLORIZER_HOST="127.0.0.1", COLORIZER_PORT=str(port), COLORIZER_RELOAD_INTERVAL="0.3"
    )
    assert env["COLORIZER_BROKER_URL"] == redis_url and env["COLORIZER_API_KEY"] == ""
    check = api["healthcheck"]["test"][1:]
    check = [sys.executable, *check[1:-1], check[-1].replace("127.0.0.1:8000", f"127.0.0.1:{port}")]

    proc = Proc(local_command(api), env, tmp_path / "api.log")
    try:
        body = wait_for(
            lambda: (
                (r := httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)).status_code == 200
                and r.json()
            ),
            60,
            "API /healthz",
            (proc,),
        )
        assert body
        # A checker probing with HEAD gets GET's status and headers, and no body.
        got, head = (httpx.request(m, f"http://127.0.0.1:{port}/healthz", timeout=5) for m in ("GET", "HEAD"))
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
        # No model yet: not ready, so the container's healthcheck must fail.
        assert subprocess.run(check, capture_output=True, timeout=30).returncode != 0
        # No API key configured: the compose passthrough's empty value means "no key".
        assert httpx.get(f"http://127.0.0.1:{port}/jobs", timeout=5).status_code == 200

        from models.networks import build_generator
        from models.store import ModelStore

        ModelStore(data_dir / "models").publish(
            build_generator(32, 1, 2, width=4), {"preset": "lab", "image_size": 32}
        )
        wait_for(
            lambda: subprocess.run(check, capture_output=True, timeout=30).returncode == 0,
            90,
            "the healthcheck to pass once a model is loaded",
            (proc,),
        )
    finally:
        proc.stop()


@pytest.mark.integration
def test_worker_service_command_connects_and_stops_on_its_stop_signal(compose, tmp_path, redis_url):
    worker = compose["services"]["worker"]
    env = local_env(worker, tmp_path / "data")
    assert env["COLORIZER_BROKER_URL"] == redis_url
    proc = Proc(local_command(worker), env, tmp_path / "worker.log")
    try:
        wait_for(lambda: " ready." in proc.log(), 60, "worker ready", (proc,))
        ping = subprocess.run(
            # with a destination, inspect returns as soon as that node answers
            [
                str(BIN / "celery"),
                "-A",
                "worker.celery_app",
                "inspect",
                "ping",
                "--timeout",
                "20",
                "--destination",
                f"celery@{socket.gethostname()}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "pong" in ping.stdout
        # The worker's parent never loads TensorFlow (its pool children fork from it).
        assert "tensorflow" not in Path(f"/proc/{proc.popen.pid}/maps").read_text()

        stop_signal = getattr(signal, worker["stop_signal"])
        grace = int(re.match(r"(\d+)s$", worker["stop_grace_period"]).group(1))
        started = time.monotonic()
        proc.popen.send_signal(stop_signal)
        proc.popen.wait(grace)
        assert time.monotonic() - started < grace
    finally:
        proc.stop()


def test_make_run_installs_the_service_without_the_development_tools(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    venv = tmp_path / "venv"  # not created: `make -n` only prints what it would run

    def plan(target: str) -> str:
        done = subprocess.run(
            ["make", "-n", "-C", str(repo), target, f"VENV={venv}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    run = plan("run")
    assert "pip install -e ." in run and "[dev]" not in run
    assert f"{venv}/bin/colorizer up" in run
    assert "pip install -e '.[dev]'" in plan("test")
