"""The ``dip`` command and the process plumbing behind ``dip serve``.

``cli`` (argument parsing, subcommands), ``redis_server`` (a private Redis
with append-only persistence), ``supervisor`` (runs and restarts Redis, the
worker and the API), ``process`` (spawning and stopping children).
"""
