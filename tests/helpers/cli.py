"""Running ``qwen3vl-rag``: as a user does (a real process) or in the test's own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "examples" / "corpus"


def cli(*args: str, env: dict | None = None, db: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    if db is not None:
        full_env["QWEN3VL_RAG_DB"] = str(db)
    return subprocess.run(
        [sys.executable, "-m", "retrieval_pipeline.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


def main_here(capsys, monkeypatch, *args: str, db: Path | None = None) -> tuple[int, str, str]:
    """``qwen3vl-rag ARGS`` in this process (exit code, stdout, stderr): for behaviour where the process boundary
    is not the point (usage errors, messages); the main job and signals run as real processes above."""
    from retrieval_pipeline.cli import main

    if db is not None:
        monkeypatch.setenv("QWEN3VL_RAG_DB", str(db))
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
