# `make serve` and `make test` work on a fresh clone: they build .venv first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: venv browser serve cluster test bench bench-check clean

venv: $(STAMP)

# Reinstalls when pyproject.toml changes. torch first, pinned, so that pip keeps
# the CPU build instead of resolving a CUDA one for the project's requirement.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install torch==2.13.0
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $@

serve: venv
	$(VENV)/bin/dip serve

# Several hosts on one machine: Redis with a sentinel, an S3 server, the API and two workers.
cluster: venv
	$(VENV)/bin/dip cluster --workers 2

# The web page's tests drive Debian's chromium through its chromedriver (tests/browser):
# installed with apt when missing, never downloaded by the tests.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium chromium-driver; \
	fi

# Two processes, each taking whole files (their module fixtures, a started service, stay shared).
test: venv browser
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile

# The real-size quality guard (one 256 px default run against NL-means): minutes, so apart.
bench-check: venv
	$(VENV)/bin/python -m pytest -q -m bench tests/bench

bench: venv
	$(VENV)/bin/python benchmarks/quality.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
