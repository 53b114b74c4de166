"""The REST job API (FastAPI). Never imports torch: jobs go to workers by task name."""
