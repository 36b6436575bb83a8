# Shortcuts; each target is one of the commands the README gives.
.PHONY: install test test-fast lint typecheck lock test-latest ci

install:  ## the project with every extra at its tested versions
	pip install -c requirements-lock.txt -e ".[dev]"

test:  ## the whole suite (every real component)
	python -m pytest -q

test-fast:  ## the fast tier: everything not marked slow (no Ray, browser, notebooks or CLI processes)
	python -m pytest -q -m "not slow"

lint:
	ruff check . && ruff format --check .

typecheck:  ## mypy: strict on the light layer, no error beyond .ci/mypy-baseline.txt elsewhere
	python -m pytest -q tests/test_types.py

lock:  ## refresh requirements-lock.txt and tests/clients/requirements.lock (uv pip compile)
	bash .ci/lock

test-latest:  ## a fresh venv with the newest releases the ranges allow, then the suite
	bash .ci/test-latest

ci:  ## what CI runs: a fresh venv from the lock, then the suite
	bash .ci/run
