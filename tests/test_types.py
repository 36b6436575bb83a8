"""Type checking (mypy, at the locked version, configured in pyproject.toml): the light layer is strictly typed (the
flags of ``--strict``, per module); everything else may have no type error that is not already in
``.ci/mypy-baseline.txt`` (fixing one shrinks the baseline: ``python tests/test_types.py --update``). One mypy run
serves both checks."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / ".ci" / "mypy-baseline.txt"

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def strict_modules() -> list[str]:
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    return [m for o in config["overrides"] if o.get("disallow_untyped_defs") for m in o["module"]]


def mypy(*args: str) -> list[str]:
    """mypy's error lines, without line numbers (they move with every edit)."""
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    if run.returncode not in (0, 1):
        raise RuntimeError(f"mypy did not run: {run.stderr or run.stdout}")
    lines = [re.sub(r"^([^:]+):\d+(:\d+)?: ", r"\1: ", line) for line in run.stdout.splitlines()]
    return sorted(line for line in lines if ": error: " in line)


@pytest.fixture(scope="module")
def errors() -> list[str]:
    return mypy()


def module_of(line: str) -> str:
    path = line.split(":", 1)[0].removesuffix(".py").removesuffix("/__init__")
    return path.replace("/", ".")


def test_the_light_layer_is_strictly_typed(errors):
    strict = strict_modules()
    assert len(strict) >= 10
    assert [e for e in errors if module_of(e) in strict] == []


def test_no_type_error_beyond_the_baseline(errors):
    new = Counter(errors) - Counter(BASELINE.read_text().splitlines())  # one more of a known error is new too
    assert not new, "type errors that are not in .ci/mypy-baseline.txt:\n" + "\n".join(sorted(new.elements()))


if __name__ == "__main__":  # python tests/test_types.py --update: the baseline becomes today's errors
    if sys.argv[1:] == ["--update"]:
        BASELINE.write_text("\n".join(mypy()) + "\n")
        print(f"{BASELINE}: {len(BASELINE.read_text().splitlines())} errors")
