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
    same fingerprint; two checkpoints of one architecture with different weights do not. A folder of LoRA adapters
    (``adapter_config.json`` without ``config.json``: ``qwen3vl-rag finetune --keep-adapters``, which transformers
    loads on top of the base model it names) is what its adapters and their settings are on top of what its base
    is. Anything else is a hub id: ``hub:<id>@<revision or main>``."""
    return _fingerprint(str(model_name_or_path), revision, ())


def _fingerprint(model_name_or_path: str, revision: str | None, seen: tuple[Path, ...]) -> str:
    path = Path(os.path.expanduser(model_name_or_path))
    if path.is_dir():
        real = path.resolve()
        folder = _folder_fingerprint(str(real), _listing(real))
        base = _adapter_base(real)
        if base is None or real in seen or len(seen) > 8:  # a chain of adapters that loops: the folder alone
            return folder
        digest = hashlib.sha256(f"qwen3vl-rag adapters\0{folder}\0".encode())
        digest.update(_adapter_settings(real / ADAPTER_CONFIG))
        digest.update(_fingerprint(base, _adapter_revision(real / ADAPTER_CONFIG), (*seen, real)).encode())
        return "local:weights:" + digest.hexdigest()[:32]
    return f"hub:{model_name_or_path}@{revision or 'main'}"


ADAPTER_CONFIG = "adapter_config.json"
# adapter_config.json keys that say where the base model is or what saved it, not what the adapters are.
_ADAPTER_NOISE = ("base_model_name_or_path", "revision", "peft_version", "inference_mode")


def _adapter_config(file: Path) -> dict[str, object] | None:
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _adapter_base(folder: Path) -> str | None:
    """The base model a folder of adapters names (None: not such a folder)."""
    if (folder / "config.json").exists():
        return None
    config = _adapter_config(folder / ADAPTER_CONFIG)
    base = config.get("base_model_name_or_path") if config else None
    return base if isinstance(base, str) and base else None


def _adapter_revision(file: Path) -> str | None:
    config = _adapter_config(file) or {}
    revision = config.get("revision")
    return revision if isinstance(revision, str) and revision else None


def _adapter_settings(file: Path) -> bytes:
    config = _adapter_config(file) or {}
    return json.dumps({k: v for k, v in config.items() if k not in _ADAPTER_NOISE}, sort_keys=True).encode()


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
