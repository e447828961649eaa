"""Fuzz the whole OpenAPI schema with schemathesis against a real uvicorn server.

Bounded: a few dozen generated requests per operation, no deadline per example. Every answer
must be below 500, and its status code, content type and body must be ones the schema declares.
The server is real (its own process, the embedded broker, a tiny published model), so a
generated job or dataset really goes through the code that would handle it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.photos import write_dataset
from tests.procs import Proc, colorizer, colorizer_env, free_port, wait_for

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory) -> Iterator[schemathesis.BaseSchema]:
    from keras.utils import set_random_seed

    from models.networks import build_generator
    from models.store import ModelStore

    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    write_dataset(data_dir / "datasets" / "tiny")
    set_random_seed(3)
    ModelStore(data_dir / "models").publish(
        build_generator(32, 1, 2, width=4), {"preset": "lab", "image_size": 32}
    )
    port = free_port()
    api = Proc(colorizer("serve", "--port", str(port)), colorizer_env(data_dir), data_dir.parent / "api.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base_url}/readyz").status_code == 200, 180, "the API ready", (api,))
        yield schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        log = api.log()
        assert "Traceback" not in log, log[-4000:]
    finally:
        api.stop()


def _fuzz(operation, checks: list, statuses: set[int]) -> None:
    """Run ``operation``'s generated requests through ``checks``; collect the status codes seen."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same examples on every run: a failure here is reproducible
        database=None,
    )
    def fuzz(case) -> None:
        statuses.add(case.call_and_validate(checks=checks, timeout=60).status_code)

    fuzz()


# schemathesis's own pytest integration (schema.parametrize / from_fixture) needs a pytest internal
# that pytest 9.2 removed, so each operation runs as a plain Hypothesis test here.
def test_no_generated_request_gets_a_server_error_or_an_undeclared_answer(api_schema):
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    statuses: dict[str, set[int]] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {"POST /colorize", "GET /models", "POST /jobs", "GET /jobs/{job_id}"} <= {
        f"{op.method.upper()} {op.path}" for op in operations
    }
    for operation in operations:
        _fuzz(operation, checks, statuses.setdefault(f"{operation.method.upper()} {operation.path}", set()))
    # every operation was really exercised, and the fuzzing reached past input validation somewhere
    assert all(statuses.values()), statuses
    assert any(200 <= code < 300 for codes in statuses.values() for code in codes), statuses


def test_the_schema_gives_examples_and_describes_every_job_status_field(tmp_path):
    from fastapi.testclient import TestClient

    from common.settings import Settings
    from models.config import TrainConfig
    from service.app import create_app
    from service.schemas import JobStatus, ModelsResponse

    schema = TestClient(create_app(Settings(data_dir=tmp_path / "data"))).get("/openapi.json").json()
    components = schema["components"]["schemas"]
    job_body = schema["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    request = components[job_body["$ref"].rsplit("/", 1)[-1]]
    assert request["examples"] and all(TrainConfig(**example) for example in request["examples"])
    for name, model in (("JobStatus", JobStatus), ("ModelsResponse", ModelsResponse)):
        assert components[name]["examples"], name
        for example in components[name]["examples"]:
            model(**example)  # the examples are valid answers
    for name in ("JobStatus", "JobProgress", "TrainConfig"):
        undescribed = [f for f, spec in components[name]["properties"].items() if not spec.get("description")]
        assert undescribed == [], name
