"""The FastAPI application, its settings, the inference engine and the `colorizer` CLI."""
