"""Files the project can make again, kept under :func:`~retrieval_pipeline.settings.cache_dir`: office documents'
and rendered web pages' PDFs (``documents/``), members extracted from mail and archives (``members/``). Each is
named by the SHA-256 of what it was made from and written atomically, so processes sharing the cache never read
half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..settings import cache_dir


def cache_path(kind: str, name: str) -> Path:
    """``<cache>/<kind>/<name>``."""
    return cache_dir() / kind / name


def write_atomically(target: Path, data: bytes) -> Path:
    """``data`` at ``target``, written to a temporary file beside it and renamed over it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def cached_or_made(target: Path, make: Callable[[], bytes]) -> Path:
    """``target`` when the cache holds it (not empty), else what ``make`` returns, written there first."""
    if target.is_file() and target.stat().st_size > 0:
        return target
    return write_atomically(target, make())
