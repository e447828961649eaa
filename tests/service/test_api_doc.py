"""docs/api.md lists exactly the routes the app serves, and for each the statuses it can answer."""

from __future__ import annotations

import re
from pathlib import Path

from service.app import create_app

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
ROW = re.compile(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/[^`]*)` \|.*\| ([^|]*) \|$")


def _documented() -> dict[tuple[str, str], str]:
    rows = {}
    for line in API_DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            method, path, answers = match.groups()
            assert (method, path) not in rows, f"{method} {path} is documented twice"
            rows[(method, path)] = answers
    return rows


def test_the_api_doc_lists_every_route_the_app_serves_and_no_other(tmp_path, monkeypatch):
    monkeypatch.setenv("COLORIZER_DATA_DIR", str(tmp_path))
    spec = create_app().openapi()
    served = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    documented = _documented()
    assert served - set(documented) == set(), "routes missing from docs/api.md"
    assert set(documented) - served == set(), "docs/api.md documents routes the app does not serve"


def test_every_error_status_the_app_declares_is_in_the_api_doc(tmp_path, monkeypatch):
    monkeypatch.setenv("COLORIZER_DATA_DIR", str(tmp_path))
    spec = create_app().openapi()
    documented = _documented()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            answers = documented[(method.upper(), path)]
            named = set(re.findall(r"\b([1-5]\d\d)\b", answers))
            # FastAPI declares a 422 on every route with a parameter, even an optional header's;
            # the doc names it only where a request can actually fail validation.
            declared = {code for code in op["responses"] if not (code == "422" and "422" not in named)}
            missing = sorted(declared - named)
            assert not missing, f"{method.upper()} {path}: {missing} not in docs/api.md"
