"""The shipped default model's recipe (``make default-model``): fetching openly licensed photographs
from Debian packages (``recipe.photo_sources``), training and choosing candidates, calibrating and
exporting (``recipe.default_model``). Outside the importable ML core: it runs apt-get and writes
the docs. See MODEL_CARD.md.
"""
