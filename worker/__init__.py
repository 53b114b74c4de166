"""Celery workers: run restoration jobs with the engine, report progress to the job store."""
