"""What the inference room raises, as plain exceptions with a sentence for the person.

The API maps each to an HTTP status (``service.errors``), the CLI prints the sentence, a batch
writes it into its manifest. ``ImageRejected`` and ``BadRenderSize`` are ValueErrors: a caller
that only knows "bad input" can catch that.
"""

from __future__ import annotations


class ImageRejected(ValueError):
    """A photograph that is not colorized: the message says why and what to send instead."""


class EmptyImage(ImageRejected):
    """No bytes at all."""


class DamagedImage(ImageRejected):
    """A damaged header or truncated pixel data."""


class NotAnImage(ImageRejected):
    """Bytes Pillow cannot read as an image, or an image mode the colorizer cannot take."""


class ImageTooLarge(ImageRejected):
    """More pixels than allowed (checked from the header, before decoding)."""


class ImageTooSmall(ImageRejected):
    """A side shorter than allowed."""


class CannotEncode(ImageRejected):
    """The result cannot be written in the asked-for format (a WebP side over 16383 px, ...)."""


class BadRenderSize(ValueError):
    """A render size the model cannot run at, or larger than allowed (``value``)."""

    def __init__(self, message: str, value: int | None = None):
        super().__init__(message)
        self.value = value


class BadHints(ValueError):
    """Colour hints that cannot be used (malformed, outside the photograph, or sent to a model without
    hint inputs): the message names the point. ``location`` says where the request carried them
    ("body": a multipart field or a batch manifest; "query")."""

    def __init__(self, message: str, value: str | None = None, location: str = "body"):
        super().__init__(message)
        self.value = value
        self.location = location


class NoModelLoaded(RuntimeError):
    """The engine has no model to serve yet (empty store, or still loading)."""

    def __init__(self, reason: str | None = None):
        super().__init__(
            reason
            or "no model is loaded yet: publish a model version (train one with POST /jobs) and retry; "
            "GET /readyz says when one is served"
        )


class EngineBusy(RuntimeError):
    """The inference queue is full: come back after ``retry_after`` seconds."""

    def __init__(self, queued: int, retry_after: int = 1):
        super().__init__(
            f"the server is busy: {queued} photographs are already waiting for the model "
            f"(COLORIZER_MAX_QUEUE); retry in {retry_after} s"
        )
        self.queued = queued
        self.retry_after = retry_after
