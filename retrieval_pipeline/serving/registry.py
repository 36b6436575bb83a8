"""What ``serve --data-dir DIR`` keeps: uploaded files (stored by content hash, never outside ``DIR``) and the
vector stores' registry (SQLite, ``DIR/registry.sqlite3``): stores, their files with status, file batches.

A vector store is a collection: its ``name`` is the collection's name (what keys' globs match), its ``id``
(``vs_...``) names it in the OpenAI API and anywhere a collection is named. Uploaded bytes live at
``DIR/files/<sha256[:2]>/<sha256><.ext>``; that path is the ``source`` of the file's points, so a file's points are
found, replaced and deleted by it. A file's status in a store moves ``in_progress`` -> ``completed`` | ``failed``
only after its points are all written (or all removed); ``in_progress`` rows found at start are indexed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..media.cache import write_atomically

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT NOT NULL, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL,
    blob TEXT NOT NULL, purpose TEXT NOT NULL, owner TEXT NOT NULL, created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stores (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, owner TEXT NOT NULL, created_at INTEGER NOT NULL,
    last_active_at INTEGER NOT NULL, metadata TEXT NOT NULL, options TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS store_files (
    store_id TEXT NOT NULL, file_id TEXT NOT NULL, status TEXT NOT NULL, last_error TEXT,
    attributes TEXT NOT NULL, chunking TEXT NOT NULL, batch_id TEXT, usage_bytes INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (store_id, file_id)
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, store_id TEXT NOT NULL, created_at INTEGER NOT NULL, cancelled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS store_files_status ON store_files (status);
"""

MAX_FILENAME = 255
TOUCH_SECONDS = 60
_EXTENSION = re.compile(r"\.[a-z0-9]{1,10}")


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def safe_filename(name: str | None) -> str:
    """An upload's name as shown back: its last path component, without control characters, at most 255 chars."""
    text = unicodedata.normalize("NFC", str(name or ""))
    text = re.split(r"[\\/]", text)[-1]
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C").strip().strip(".")
    return text[:MAX_FILENAME] or "upload"


def safe_extension(filename: str) -> str:
    """The file name's extension when it is a plain one (``.pdf``), lower-cased; else none."""
    suffix = os.path.splitext(filename)[1].lower()
    return suffix if _EXTENSION.fullmatch(suffix) else ""


class Registry:
    """The files and vector stores of one data folder (thread-safe; one process at a time)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir).expanduser().resolve()
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.root / "registry.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._touched: dict[str, int] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    def _row(self, sql: str, *args: Any) -> dict[str, Any] | None:
        rows = self._rows(sql, *args)
        return rows[0] if rows else None

    # files -------------------------------------------------------------------------------------------------------
    def blob_path(self, file: dict[str, Any]) -> Path:
        return self.root / file["blob"]

    def add_file(self, filename: str, data: bytes, purpose: str, owner: str) -> dict[str, Any]:
        """Store an upload's bytes (by content hash, written atomically) and register it."""
        name = safe_filename(filename)
        sha = hashlib.sha256(data).hexdigest()
        blob = f"files/{sha[:2]}/{sha}{safe_extension(name)}"
        path = self.root / blob
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, data)
        row = {
            "id": new_id("file-"),
            "filename": name,
            "bytes": len(data),
            "sha256": sha,
            "blob": blob,
            "purpose": purpose,
            "owner": owner,
            "created_at": int(time.time()),
        }
        with self._tx() as db:
            db.execute(
                "INSERT INTO files VALUES (:id, :filename, :bytes, :sha256, :blob, :purpose, :owner, :created_at)", row
            )
        return row

    def file(self, file_id: str) -> dict[str, Any] | None:
        return self._row("SELECT * FROM files WHERE id = ?", file_id)

    def files(self) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM files ORDER BY created_at, rowid")

    def delete_file(self, file_id: str) -> None:
        """Forget a file; its bytes go when no other file holds the same content."""
        with self._tx() as db:
            row = db.execute("SELECT blob FROM files WHERE id = ?", (file_id,)).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))
            shared = db.execute("SELECT 1 FROM files WHERE blob = ? LIMIT 1", (row["blob"],)).fetchone()
        if shared is None:
            (self.root / row["blob"]).unlink(missing_ok=True)

    def stores_of_file(self, file_id: str) -> list[str]:
        return [r["store_id"] for r in self._rows("SELECT store_id FROM store_files WHERE file_id = ?", file_id)]

    # vector stores -----------------------------------------------------------------------------------------------
    def create_store(self, name: str | None, owner: str, metadata: dict[str, Any], options: dict[str, Any]) -> dict:
        store_id = new_id("vs_")
        row = {
            "id": store_id,
            "name": name or store_id,
            "owner": owner,
            "created_at": int(time.time()),
            "last_active_at": int(time.time()),
            "metadata": json.dumps(metadata),
            "options": json.dumps(options),
        }
        with self._tx() as db:
            db.execute(
                "INSERT INTO stores VALUES (:id, :name, :owner, :created_at, :last_active_at, :metadata, :options)",
                row,
            )
        return self._store(row)

    @staticmethod
    def _store(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "metadata": json.loads(row["metadata"]), "options": json.loads(row["options"])}

    def store(self, id_or_name: str) -> dict[str, Any] | None:
        """A vector store by its id, or by its name (the collection's)."""
        row = self._row("SELECT * FROM stores WHERE id = ? OR name = ?", id_or_name, id_or_name)
        return self._store(row) if row else None

    def stores(self) -> list[dict[str, Any]]:
        return [self._store(r) for r in self._rows("SELECT * FROM stores ORDER BY created_at, rowid")]

    def update_store(self, store_id: str, *, name: str | None = None, metadata: dict | None = None) -> None:
        with self._tx() as db:
            if name is not None:
                db.execute("UPDATE stores SET name = ? WHERE id = ?", (name, store_id))
            if metadata is not None:
                db.execute("UPDATE stores SET metadata = ? WHERE id = ?", (json.dumps(metadata), store_id))

    def touch_store(self, store_id: str) -> None:
        """Note a store's use (``last_active_at``), written at most once a minute per store."""
        now = int(time.time())
        if now - self._touched.get(store_id, 0) < TOUCH_SECONDS:
            return
        self._touched[store_id] = now
        with self._tx() as db:
            db.execute("UPDATE stores SET last_active_at = ? WHERE id = ?", (now, store_id))

    def delete_store(self, store_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM store_files WHERE store_id = ?", (store_id,))
            db.execute("DELETE FROM batches WHERE store_id = ?", (store_id,))
            db.execute("DELETE FROM stores WHERE id = ?", (store_id,))

    # a store's files ---------------------------------------------------------------------------------------------
    def attach(
        self,
        store_id: str,
        file_id: str,
        attributes: dict[str, Any],
        chunking: dict[str, Any],
        batch_id: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """(the store's row for the file, whether it is new: a file already in the store keeps its row)."""
        with self._tx() as db:
            old = db.execute(
                "SELECT * FROM store_files WHERE store_id = ? AND file_id = ?", (store_id, file_id)
            ).fetchone()
            if old is not None and old["status"] in ("in_progress", "completed"):
                return self._store_file(dict(old)), False
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM store_files").fetchone()[0]
            db.execute(
                "INSERT OR REPLACE INTO store_files VALUES (?, ?, 'in_progress', NULL, ?, ?, ?, 0, ?, ?)",
                (store_id, file_id, json.dumps(attributes), json.dumps(chunking), batch_id, int(time.time()), seq),
            )
        found = self.store_file(store_id, file_id)
        assert found is not None
        return found, True

    @staticmethod
    def _store_file(row: dict[str, Any]) -> dict[str, Any]:
        return {
            **row,
            "attributes": json.loads(row["attributes"]),
            "chunking": json.loads(row["chunking"]),
            "last_error": json.loads(row["last_error"]) if row["last_error"] else None,
        }

    def store_file(self, store_id: str, file_id: str) -> dict[str, Any] | None:
        row = self._row("SELECT * FROM store_files WHERE store_id = ? AND file_id = ?", store_id, file_id)
        return self._store_file(row) if row else None

    def store_files(
        self, store_id: str, *, status: str | None = None, batch_id: str | None = None
    ) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM store_files WHERE store_id = ?", [store_id]
        if status is not None:
            sql, args = sql + " AND status = ?", [*args, status]
        if batch_id is not None:
            sql, args = sql + " AND batch_id = ?", [*args, batch_id]
        return [self._store_file(r) for r in self._rows(sql + " ORDER BY seq", *args)]

    def finish(
        self, store_id: str, file_id: str, status: str, *, error: dict[str, str] | None = None, usage: int = 0
    ) -> bool:
        """Set a file's outcome in a store (False when it was removed from the store meanwhile)."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE store_files SET status = ?, last_error = ?, usage_bytes = ? "
                "WHERE store_id = ? AND file_id = ? AND status = 'in_progress'",
                (status, json.dumps(error) if error else None, usage, store_id, file_id),
            )
            return cursor.rowcount == 1

    def set_attributes(self, store_id: str, file_id: str, attributes: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE store_files SET attributes = ? WHERE store_id = ? AND file_id = ?",
                (json.dumps(attributes), store_id, file_id),
            )

    def detach(self, store_id: str, file_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM store_files WHERE store_id = ? AND file_id = ?", (store_id, file_id))

    def blob_in_store(self, store_id: str, blob: str, *, other_than: str) -> bool:
        """Whether a file of the store other than ``other_than`` (in progress or done) holds the same content."""
        relative = Path(blob).relative_to(self.root).as_posix() if os.path.isabs(blob) else blob
        row = self._row(
            "SELECT 1 FROM store_files sf JOIN files f ON f.id = sf.file_id WHERE sf.store_id = ? AND f.blob = ? "
            "AND sf.file_id != ? AND sf.status IN ('in_progress', 'completed') LIMIT 1",
            store_id,
            relative,
            other_than,
        )
        return row is not None

    def completed_files(self, store_id: str, blobs: list[str]) -> dict[str, dict[str, Any]]:
        """blob path -> a completed file of the store holding it, for the given blob paths (search hits' sources)."""
        relative = {Path(b).relative_to(self.root).as_posix(): b for b in blobs if b.startswith(str(self.root))}
        if not relative:
            return {}
        marks = ",".join("?" * len(relative))
        rows = self._rows(
            f"SELECT f.* FROM store_files sf JOIN files f ON f.id = sf.file_id WHERE sf.store_id = ? "
            f"AND sf.status = 'completed' AND f.blob IN ({marks}) ORDER BY sf.seq",
            store_id,
            *relative,
        )
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            out.setdefault(relative[row["blob"]], row)
        return out

    def pending(self) -> list[tuple[str, str]]:
        """(store id, file id) of every file still to index, oldest first."""
        rows = self._rows("SELECT store_id, file_id FROM store_files WHERE status = 'in_progress' ORDER BY seq")
        return [(r["store_id"], r["file_id"]) for r in rows]

    def pending_blobs(self, store_id: str) -> list[str]:
        rows = self._rows(
            "SELECT f.blob FROM store_files sf JOIN files f ON f.id = sf.file_id "
            "WHERE sf.store_id = ? AND sf.status = 'in_progress'",
            store_id,
        )
        return [str(self.root / r["blob"]) for r in rows]

    def counts(self, store_id: str, batch_id: str | None = None) -> dict[str, int]:
        sql, args = "SELECT status, COUNT(*) AS n FROM store_files WHERE store_id = ?", [store_id]
        if batch_id is not None:
            sql, args = sql + " AND batch_id = ?", [*args, batch_id]
        found = {r["status"]: r["n"] for r in self._rows(sql + " GROUP BY status", *args)}
        out = {k: found.get(k, 0) for k in ("in_progress", "completed", "failed", "cancelled")}
        out["total"] = sum(out.values())
        return out

    def all_counts(self) -> dict[str, int]:
        rows = self._rows("SELECT status, COUNT(*) AS n FROM store_files GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    def usage(self, store_id: str) -> int:
        row = self._row("SELECT COALESCE(SUM(usage_bytes), 0) AS n FROM store_files WHERE store_id = ?", store_id)
        return int(row["n"]) if row else 0

    # batches -----------------------------------------------------------------------------------------------------
    def create_batch(self, store_id: str) -> dict[str, Any]:
        row = {"id": new_id("vsfb_"), "store_id": store_id, "created_at": int(time.time()), "cancelled": 0}
        with self._tx() as db:
            db.execute("INSERT INTO batches VALUES (:id, :store_id, :created_at, :cancelled)", row)
        return row

    def batch(self, store_id: str, batch_id: str) -> dict[str, Any] | None:
        return self._row("SELECT * FROM batches WHERE id = ? AND store_id = ?", batch_id, store_id)

    def cancel_batch(self, store_id: str, batch_id: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE batches SET cancelled = 1 WHERE id = ?", (batch_id,))
            db.execute(
                "UPDATE store_files SET status = 'cancelled' WHERE store_id = ? AND batch_id = ? "
                "AND status = 'in_progress'",
                (store_id, batch_id),
            )
