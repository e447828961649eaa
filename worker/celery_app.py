"""The worker's Celery app (``celery -A worker.celery_app worker``): ``common.queue``'s app with the
worker's task modules, built from the environment (``COLORIZER_*``) on first use."""

from __future__ import annotations

from typing import Any

from common.queue import ColorizerCelery, create_celery
from common.settings import get_settings

TASK_MODULES = ("worker.tasks", "worker.recovery", "worker.colorize")

_app: ColorizerCelery | None = None


def __getattr__(name: str) -> Any:
    """``app`` (``celery`` too, as Celery's ``-A`` looks for either), built on first use: importing
    this module creates no app, reads no environment and touches no disk."""
    global _app
    if name in ("app", "celery"):
        if _app is None:
            _app = create_celery(get_settings(), include=TASK_MODULES)
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
