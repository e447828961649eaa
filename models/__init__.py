"""The ML core: networks, the Pix2Pix model, colour spaces, data, training and the model store.

Importable without FastAPI or Celery. TensorFlow is imported lazily by the modules that need it,
so the metadata helpers stay cheap to import.
"""
