"""The neutral room: what the API, the worker and the CLI share and meet at, importing nothing
else of ours: settings (``common.settings``), job records (``common.jobs``), the queue contract
and Celery app factory (``common.queue``). See docs/architecture.md.
"""
