"""Type checking (mypy, at the locked version): the light layer is strictly typed; everything else may have no
type error that is not already in ``.ci/mypy-baseline.txt`` (fixing one shrinks the baseline:
``python tests/test_types.py --update``)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / ".ci" / "mypy-baseline.txt"
STRICT = ["errors", "settings", "ranking", "layout", "records"]  # the light layer: no torch, strict types

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


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


def test_the_light_layer_is_strictly_typed():
    assert mypy("--strict", *(f"retrieval_pipeline/{m}.py" for m in STRICT)) == []


def test_no_type_error_beyond_the_baseline():
    new = Counter(mypy()) - Counter(BASELINE.read_text().splitlines())  # one more of a known error is new too
    assert not new, "type errors that are not in .ci/mypy-baseline.txt:\n" + "\n".join(sorted(new.elements()))


if __name__ == "__main__":  # python tests/test_types.py --update: the baseline becomes today's errors
    if sys.argv[1:] == ["--update"]:
        BASELINE.write_text("\n".join(mypy()) + "\n")
        print(f"{BASELINE}: {len(BASELINE.read_text().splitlines())} errors")
