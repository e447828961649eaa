"""The training worker: the Celery app (``worker.celery_app``) and its one task (``worker.tasks``).

It talks to the API only through files on the shared data volume (job records, the model store)
and the Celery broker / result backend. TensorFlow is imported inside the task body only.
"""
