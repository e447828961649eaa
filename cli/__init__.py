"""The ``colorizer`` command line: ``main`` with one module per command (see ``cli.main``)."""

from cli import colorize, default_model, evaluate, models, processes, train  # noqa: F401  (registers the commands)
from cli.main import main

__all__ = ["main"]
