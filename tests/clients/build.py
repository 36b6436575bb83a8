"""Build the virtual environment of the client packages whose pins clash with the project's (``.client-venv`` at
the repository root, from ``tests/clients/requirements.lock``: the tested versions of what ``requirements.in`` asks
for, resolved by ``.ci/lock``); rebuilt when that file changes. ``.ci/run`` calls
it; the tests call it too when the environment is missing, so none of them is ever skipped."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).with_name("requirements.lock")
VENV = Path(os.environ.get("QWEN3VL_RAG_CLIENT_VENV", ROOT / ".client-venv"))


def python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def build() -> Path:
    """The client environment's Python, built or rebuilt when needed."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = VENV / "requirements.sha256"
    if python().exists() and stamp.exists() and stamp.read_text() == digest:
        return python()
    if VENV.exists():
        shutil.rmtree(VENV)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python()), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(python()), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(digest)
    return python()


if __name__ == "__main__":
    print(build())
