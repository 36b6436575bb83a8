# Shortcuts; each target is one of the commands the README gives.
.PHONY: install test lock test-latest ci

install:  ## the project with every extra at its tested versions
	pip install -c requirements-lock.txt -e ".[dev]"

test:
	python -m pytest -q

lock:  ## refresh requirements-lock.txt and tests/clients/requirements.lock (uv pip compile)
	bash .ci/lock

test-latest:  ## a fresh venv with the newest releases the ranges allow, then the suite
	bash .ci/test-latest

ci:  ## what CI runs: a fresh venv from the lock, then the suite
	bash .ci/run
