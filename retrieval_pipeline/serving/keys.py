"""Who may do what: API keys per collection (``serve --keys FILE``), their roles and request rates.

The file (JSON, or TOML with the same fields) names each key by the SHA-256 of its secret, never the secret::

    {"keys": [{"name": "team-a", "sha256": "<hex digest of the key>", "collections": ["alpha", "shared-*"],
               "role": "read", "rpm": 600}]}

* ``collections``: names or globs (``fnmatch``, case-sensitive) of the collections the key may use; a collection
  outside them is answered as if it did not exist (404), on every route.
* ``role``: ``read`` (search, ask, chat, items, embeddings, rerank), ``write`` (also upload and delete files),
  ``admin`` (also create and drop collections, and read ``/metrics``).
* ``rpm``: requests per minute (a token bucket of that size, refilled continuously); past it 429 + ``Retry-After``.

The file is read again when it changes (checked at most once a second); a changed file that does not parse keeps
the previous keys and logs why. ``--token`` is the shortcut for one admin key on every collection.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 1.0
KEY_FIELDS = {"name", "sha256", "collections", "role", "rpm"}
RESERVED_NAMES = frozenset({"admin", "anonymous"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}")


class Role(IntEnum):
    """What a key may do; each role may do what the ones below it may."""

    READ = 1
    WRITE = 2
    ADMIN = 3


@dataclass(frozen=True)
class Principal:
    """The caller of one request: its key's name (what metrics and logs show), role and collections."""

    name: str
    role: Role
    collections: tuple[str, ...] = ("*",)
    rpm: int | None = None
    digest: str = field(default="", repr=False)

    def may_use(self, collection: str) -> bool:
        return any(fnmatch.fnmatchcase(collection, pattern) for pattern in self.collections)

    def can(self, role: Role) -> bool:
        return self.role >= role


ANONYMOUS = Principal("anonymous", Role.ADMIN)  # a server without auth (loopback, or --no-auth)
TOKEN_ADMIN = Principal("admin", Role.ADMIN)  # --token


def digest(secret: str) -> str:
    """The hex SHA-256 of a key's secret: what the keys file holds."""
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyFileError(ValueError):
    """The keys file does not say what it must."""


def parse_keys(text: str, where: str) -> tuple[Principal, ...]:
    """The keys a keys file's text names (JSON, or TOML when ``where`` ends in ``.toml``)."""
    try:
        if where.endswith(".toml"):
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10: tomli when installed, else JSON only
                try:
                    import tomli as tomllib  # type: ignore[no-redef]
                except ModuleNotFoundError:
                    raise KeyFileError(f"{where}: TOML keys files need Python 3.11+ (or tomli); use JSON") from None
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise KeyFileError(f"{where}: not valid {'TOML' if where.endswith('.toml') else 'JSON'} ({exc})") from None
    if not isinstance(data, Mapping) or set(data) != {"keys"} or not isinstance(data["keys"], list):
        raise KeyFileError(f'{where}: expected {{"keys": [{{"name", "sha256", "collections", "role", "rpm"}}, ...]}}')
    keys: list[Principal] = []
    for n, entry in enumerate(data["keys"]):
        keys.append(_key(entry, f"{where}: keys[{n}]"))
    for what in ("name", "digest"):
        seen: set[str] = set()
        for key in keys:
            value = getattr(key, what)
            if value in seen:
                raise KeyFileError(f"{where}: two keys with the same {'sha256' if what == 'digest' else what}")
            seen.add(value)
    return tuple(keys)


def _key(entry: Any, where: str) -> Principal:
    if not isinstance(entry, Mapping):
        raise KeyFileError(f"{where}: expected an object")
    unknown = set(entry) - KEY_FIELDS
    if unknown:
        raise KeyFileError(f"{where}: unknown field(s) {sorted(unknown)} (fields: {sorted(KEY_FIELDS)})")
    name, sha, collections, role = (entry.get(k) for k in ("name", "sha256", "collections", "role"))
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise KeyFileError(f"{where}: name must be 1-64 letters, digits or _.:@- (got {name!r})")
    if name in RESERVED_NAMES:  # what --token and a server without auth are called (files are owned by name)
        raise KeyFileError(f"{where}: the name {name!r} is reserved; choose another")
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha.lower()):
        raise KeyFileError(f"{where} ({name}): sha256 must be the 64-hex-digit SHA-256 of the key")
    if (
        not isinstance(collections, list)
        or not collections
        or not all(isinstance(c, str) and c.strip() for c in collections)
    ):
        raise KeyFileError(f"{where} ({name}): collections must be a non-empty list of names or globs")
    if role not in ("read", "write", "admin"):
        raise KeyFileError(f"{where} ({name}): role must be 'read', 'write' or 'admin' (got {role!r})")
    rpm = entry.get("rpm")
    if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int) or rpm < 1):
        raise KeyFileError(f"{where} ({name}): rpm must be a positive integer (requests per minute) or absent")
    return Principal(name, Role[role.upper()], tuple(collections), rpm, sha.lower())


class KeyRing:
    """The keys of ``serve --keys FILE``, read again when the file changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self.keys: tuple[Principal, ...] = ()
        self.reloads = 0
        self._load(first=True)

    def _file_stamp(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _load(self, *, first: bool = False) -> None:
        try:
            stamp = self._file_stamp()
            keys = parse_keys(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, UnicodeDecodeError, KeyFileError) as exc:
            if first:
                raise KeyFileError(str(exc) if isinstance(exc, KeyFileError) else f"{self.path}: {exc}") from None
            logger.error("keys file not reloaded, the previous keys stay in force: %s", exc)
            try:
                self._stamp = self._file_stamp()  # not read again until it changes again
            except OSError:
                pass
            return
        self.keys, self._stamp = keys, stamp
        if not first:
            self.reloads += 1
            logger.info("keys file reloaded: %d keys (%s)", len(keys), ", ".join(k.name for k in keys))

    def refresh(self) -> None:
        """Read the file again if it changed (checked at most every :data:`RELOAD_CHECK_SECONDS`)."""
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return
        with self._lock:
            self._checked = now
            try:
                changed = self._file_stamp() != self._stamp
            except OSError:
                changed = False  # deleted or unreadable for a moment (an editor's save): keep the keys
            if changed:
                self._load()

    def find(self, secret: str) -> Principal | None:
        """The key whose digest is the secret's (every key compared, each in constant time)."""
        self.refresh()
        wanted = digest(secret).encode()
        found = None
        for key in self.keys:
            if hmac.compare_digest(wanted, key.digest.encode()):
                found = key
        return found


class RateLimits:
    """A token bucket per key name: ``rpm`` requests a minute, refilled continuously."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, monotonic time)
        self._lock = threading.Lock()

    def take(self, key: Principal) -> float | None:
        """None when the request may go; else the seconds until it could."""
        if not key.rpm:
            return None
        rate = key.rpm / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(key.name, (float(key.rpm), now))
            tokens = min(float(key.rpm), tokens + (now - then) * rate)
            if tokens >= 1.0:
                self._buckets[key.name] = (tokens - 1.0, now)
                return None
            self._buckets[key.name] = (tokens, now)
            return (1.0 - tokens) / rate


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def visible(names: Iterable[str], key: Principal) -> list[str]:
    """The names among ``names`` that ``key`` may see."""
    return [n for n in names if key.may_use(n)]
