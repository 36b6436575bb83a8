"""What a model is, independent of how it was named: the fingerprint that keys a collection's point ids.

A hub id with a revision, or a local folder hashed by content (config + weights, streamed, cached by path, size
and mtime), so two checkpoints of one architecture with different weights never share a collection's ids. Never
loads torch."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

# Largest safetensors header read by :func:`model_fingerprint` (real ones are a few MB at most).
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# config.json keys that say where / by what the checkpoint was saved, not what it is.
_CONFIG_NOISE = ("_name_or_path", "transformers_version")


def model_fingerprint(model_name_or_path: str, revision: str | None = None) -> str:
    """What a model *is*, independent of how its name was spelled or where its folder lives.

    A local folder: ``local:weights:`` + a hash of its ``config.json`` (minus the keys that record where it was
    saved) and of every weight file's content (streamed; each file's hash is cached on disk by path, size and
    modification time, so a 4 GB checkpoint is read once). Two copies of one checkpoint at different paths get the
    same fingerprint; two checkpoints of one architecture with different weights do not. Anything else is a hub id:
    ``hub:<id>@<revision or main>``."""
    path = Path(os.path.expanduser(str(model_name_or_path)))
    if path.is_dir():
        real = path.resolve()
        return _folder_fingerprint(str(real), _listing(real))
    return f"hub:{model_name_or_path}@{revision or 'main'}"


def legacy_fingerprint(model_name_or_path: str) -> str | None:
    """The fingerprint of collections created before weights were hashed (``local:`` + config and safetensors
    headers, weight files by name and size): such a collection still opens with the same folder. None: not a
    local folder."""
    path = Path(os.path.expanduser(str(model_name_or_path)))
    if not path.is_dir():
        return None
    real = path.resolve()
    return _headers_fingerprint(str(real), _listing(real))


def _listing(real: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        return tuple(
            sorted((p.relative_to(real).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in _model_files(real))
        )
    except OSError:
        return ()


def _model_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and (p.name == "config.json" or _is_weights(p))]


def _is_weights(path: Path) -> bool:
    return path.suffix in (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _config_bytes(file: Path) -> bytes:
    config = json.loads(file.read_text(encoding="utf-8"))
    if isinstance(config, dict):
        for key in _CONFIG_NOISE:
            config.pop(key, None)
    return json.dumps(config, sort_keys=True).encode()


@lru_cache(maxsize=64)
def _folder_fingerprint(folder: str, listing: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256(b"qwen3vl-rag model fingerprint v2\0")
    root = Path(folder)
    for rel, size, mtime in listing:
        file = root / rel
        digest.update(f"{rel}\0".encode())
        try:
            if file.name == "config.json":
                digest.update(_config_bytes(file))
            else:
                digest.update(_content_hash(file, size, mtime).encode())
        except (OSError, ValueError) as exc:  # unreadable: its name and size still count
            digest.update(f"unreadable:{size}:{exc.__class__.__name__}".encode())
    return "local:weights:" + digest.hexdigest()[:32]


# Weight files' content hashes, by resolved path, size and modification time (a file changed in place is hashed
# again). One JSON file under the user's cache folder; a missing or unreadable cache only costs a re-read.
HASH_CACHE_ENV = "QWEN3VL_RAG_HASH_CACHE"
HASH_CHUNK = 8 * 1024 * 1024


def _hash_cache_path() -> Path:
    configured = os.environ.get(HASH_CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qwen3vl-rag" / "weight-hashes.json"


def _content_hash(file: Path, size: int, mtime: int) -> str:
    key = f"{file}\0{size}\0{mtime}"
    cache_path = _hash_cache_path()
    try:
        cache = json.loads(cache_path.read_text())
        known = cache.get(key) if isinstance(cache, dict) else None
        if isinstance(known, str):
            return known
    except (OSError, ValueError):
        cache = {}
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    try:
        cache = cache if isinstance(cache, dict) else {}
        cache = {k: v for k, v in cache.items() if not k.startswith(f"{file}\0")}  # older versions of this file
        cache[key] = value
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f".{cache_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)  # concurrent writers: the last one wins, each file whole
    except OSError as exc:
        logger.debug("weight hash cache %s not written: %s", cache_path, exc)
    return value


@lru_cache(maxsize=64)
def _headers_fingerprint(folder: str, listing: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256(b"qwen3vl-rag model fingerprint v1\0")
    root = Path(folder)
    for rel, size, _mtime in listing:
        file = root / rel
        is_config = file.name == "config.json"
        digest.update(f"{rel}\0{'' if is_config else size}\0".encode())  # a config counts by its content
        try:
            if is_config:
                digest.update(_config_bytes(file))
            elif file.suffix == ".safetensors":
                with open(file, "rb") as fh:
                    head = fh.read(8)
                    (n,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
                    digest.update(fh.read(min(n, MAX_SAFETENSORS_HEADER)))
        except (OSError, ValueError) as exc:  # unreadable: its name and size still count
            digest.update(f"unreadable:{exc.__class__.__name__}".encode())
    return "local:" + digest.hexdigest()[:32]
