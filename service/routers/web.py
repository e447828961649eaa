"""The web page: GET / answers index.html, GET /static/<file> its script, styles and nothing else.

No build step: the files in service/static/ are served as they are, except that the page's
references to them get a ``?v=<content hash>`` so a browser may keep each version for a year and
still fetches a changed file at once. A request without the current hash is answered with
``no-cache`` (revalidated by ETag), so an old or hand-typed URL never pins stale code.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from service.errors import ApiError

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# Hashed URLs change whenever their file does, so they may be cached for good.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

# src="static/app.js", href="static/style.css": relative, so the page also works behind a path prefix.
_ASSET_REFERENCE = re.compile(r'(?P<attr>(?:src|href)=")(?P<url>static/(?P<name>[\w.-]+))"')

router = APIRouter(tags=["web"], include_in_schema=False)
_static_files = StaticFiles(directory=STATIC_DIR, check_dir=False)


def asset_hash(name: str) -> str:
    """The first 12 hex digits of the SHA-256 of static file ``name``; raises OSError if unreadable."""
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]


def render_index() -> str:
    """index.html with each ``static/<file>`` reference given its content hash (``?v=...``)."""
    html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return _ASSET_REFERENCE.sub(lambda m: f'{m["attr"]}{m["url"]}?v={asset_hash(m["name"])}"', html)


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    """The web page: colorize a photograph, follow training jobs, compare published versions."""
    return HTMLResponse(render_index(), headers={"Cache-Control": REVALIDATE})


@router.get("/static/{path:path}")
async def static_file(path: str, request: Request, v: str | None = None) -> Response:
    """A file of service/static/ (never a folder or anything outside it); 404 otherwise."""
    try:
        response = await _static_files.get_response(path, request.scope)
    except StarletteHTTPException as exc:
        if exc.status_code == 404:
            raise ApiError(404, f"no static file {path!r}; the page is at /") from None
        raise
    current = v is not None and "/" not in path and v == await anyio.to_thread.run_sync(asset_hash, path)
    response.headers["Cache-Control"] = IMMUTABLE if current else REVALIDATE
    return response
