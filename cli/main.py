"""The ``colorizer`` command group, its settings and its logging; each command lives in a module of
its own (``cli/__init__.py`` registers them).

Heavy imports (TensorFlow, uvicorn, Celery) happen inside the commands that need them, so
``colorizer --help`` answers at once. Every command reads the same ``COLORIZER_*`` settings as
the API and the worker.
"""

from __future__ import annotations

import logging
import os

import click
from pydantic import ValidationError

from common.objectstore import follow
from common.settings import Settings, get_settings

log = logging.getLogger("colorizer.cli")


def load_settings() -> Settings:
    """The settings from the environment; a readable error naming each bad variable otherwise."""
    try:
        settings = get_settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(p) for p in error.get("loc", ()))
            name = f"COLORIZER_{field.upper()}" if field else "settings"
            lines.append(f"  {name}: {error.get('msg', 'invalid')}")
        raise click.ClickException("invalid settings:\n" + "\n".join(lines)) from None
    follow(settings.model_store_url, settings.models_dir)  # the model store in a bucket, if set
    return settings


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="colorizer")
def main() -> None:
    """Colorize grayscale photographs with a pix2pix GAN, and train new models.

    Settings come from COLORIZER_* environment variables (see the README); with none set,
    everything lives in ./var and the job queue is an embedded SQLite broker.
    """
    # TensorFlow's C++ INFO and WARNING lines (XLA start-up, oneDNN, ...) are not for the person
    # reading the service's log; its errors still show. Set the variable to 0 to see them all.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
