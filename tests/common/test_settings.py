"""The one settings object: defaults, environment, and errors that name the bad field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("COLORIZER_"):
            monkeypatch.delenv(key)


def error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


def test_defaults_use_var_and_the_embedded_sqlite_broker():
    settings = Settings()
    assert settings.data_dir == Path("var")
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.api_key is None
    assert settings.visibility_timeout == 86_400
    assert settings.uses_embedded_broker
    data = Path("var").resolve()
    assert settings.effective_broker_url == f"sqla+sqlite:///{data / 'broker.sqlite'}"
    assert settings.effective_result_backend == f"db+sqlite:///{data / 'results.sqlite'}"
    assert settings.models_dir == Path("var/models") and settings.jobs_dir == Path("var/jobs")


def test_environment_variables_are_read_with_the_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("COLORIZER_PORT", "9001")
    monkeypatch.setenv("COLORIZER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLORIZER_BROKER_URL", "redis://127.0.0.1:6379/13")
    monkeypatch.setenv("COLORIZER_API_KEY", "s3cret")
    settings = Settings()
    assert settings.port == 9001
    assert settings.data_dir == tmp_path
    assert not settings.uses_embedded_broker
    # With a Redis broker and no explicit backend, results go to the same Redis.
    assert settings.effective_result_backend == "redis://127.0.0.1:6379/13"
    assert settings.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_explicit_result_backend_wins():
    settings = Settings(broker_url="redis://h:6379/0", result_backend="db+postgresql://u@h/results")
    assert settings.effective_result_backend == "db+postgresql://u@h/results"


@pytest.mark.parametrize("port", ["0", "65536", "eighty"])
def test_bad_port_is_rejected_naming_the_field(monkeypatch, port):
    monkeypatch.setenv("COLORIZER_PORT", port)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert error_fields(info.value) == {"port"}


def test_bad_broker_url_is_rejected_naming_the_field():
    with pytest.raises(ValidationError) as info:
        Settings(broker_url="mysql://localhost/queue")
    assert error_fields(info.value) == {"broker_url"}
    assert "unsupported broker URL" in str(info.value)


def test_bad_result_backend_is_rejected_naming_the_field():
    with pytest.raises(ValidationError) as info:
        Settings(result_backend="localhost:6379")
    assert error_fields(info.value) == {"result_backend"}


def test_data_dir_that_is_a_file_is_rejected_naming_the_field(tmp_path):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    with pytest.raises(ValidationError) as info:
        Settings(data_dir=a_file)
    assert error_fields(info.value) == {"data_dir"}
    assert "is not a directory" in str(info.value)


def test_several_errors_are_reported_together(monkeypatch):
    monkeypatch.setenv("COLORIZER_PORT", "-1")
    monkeypatch.setenv("COLORIZER_VISIBILITY_TIMEOUT", "5")
    monkeypatch.setenv("COLORIZER_LOG_LEVEL", "loud")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert error_fields(info.value) == {"port", "visibility_timeout", "log_level"}


def test_empty_values_mean_unset(monkeypatch):
    # docker-compose passes ${COLORIZER_API_KEY:-} as an empty string.
    monkeypatch.setenv("COLORIZER_API_KEY", "")
    monkeypatch.setenv("COLORIZER_BROKER_URL", "")
    monkeypatch.setenv("COLORIZER_RESULT_BACKEND", "")
    settings = Settings()
    assert settings.api_key is None
    assert settings.uses_embedded_broker
    assert settings.effective_result_backend.startswith("db+sqlite:///")


def test_ensure_dirs_creates_the_layout(tmp_path):
    settings = Settings(data_dir=tmp_path / "new")
    settings.ensure_dirs()
    assert all(p.is_dir() for p in (settings.models_dir, settings.datasets_dir, settings.jobs_dir))
    settings.ensure_dirs()  # idempotent
