"""A collection that follows its folders: a reconcile, then file-system events (watchfiles) driving the indexer.

:class:`FolderWatcher` keeps a collection equal to the files under its roots:

* **At start** (and after a burst too large to follow event by event) a *reconcile*: every file under the roots
  whose size, modification time or inode differ from what the watcher last indexed is indexed (only content the
  collection does not hold is embedded), and files that are gone lose their points. Unchanged files are not read,
  so a restart after a day of edits costs the edits, not the corpus.
* **Then events**: created, modified, deleted and moved files and folders. A file is indexed once it is *stable*
  (its size, time and inode unchanged for ``settle_s`` after its last event: a file still being written, copied or
  downloaded waits); editors' swap and temp files and partial downloads are never indexed; ``--include`` /
  ``--exclude`` and hidden names follow the folder walk's rules. A rename or a move adds the new path to the points
  the old one held and then takes the old path off (nothing is embedded again): deletions wait while additions are
  settling, so both halves of a move land in one sync.
* **Faults**: a file that fails is reported and retried with back-off (``retry_s``); a root deleted and created
  again is watched again and reconciled; ``stop()`` (SIGTERM / Ctrl-C in the command line) lets the current sync
  finish. One watcher per collection: a lock file next to its sync state refuses a second one.

What the watcher indexed (path -> size, time, inode, status) is kept in a SQLite file beside the collection (an
embedded folder) or in the cache folder (a server), with the last sync time and the pending changes, which
``info`` and the server's ``/health`` read."""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import StoreError
from ..records import sources_of
from .discover import _match, discover, modality_of
from .options import DEBOUNCE_MS, SETTLE_S, IngestOptions
from .report import Failure, display_path

logger = logging.getLogger(__name__)

# Names that are never indexed while watching: editors' swap, backup and lock files, partial downloads, temp files.
TEMP_PATTERNS = (
    "*~",
    "#*#",
    "*.swp",
    "*.swo",
    "*.swx",
    "*.kate-swp",
    "*.tmp",
    "*.temp",
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "*.opdownload",
    "*.filepart",
    "*.!ut",
    "~$*",
    ".~lock.*#",
    "4913",  # vim's probe file
)

BATCH_FILES = 64  # files indexed per sync (the unit a stop waits for)
MAX_PENDING = 10_000  # more changed paths than this at once: forget them and reconcile (bounded memory)
MAX_HOLD_S = 30.0  # deletions wait for settling additions (a move's other half) at most this long
RETRY_S = (5.0, 600.0)  # a failed file is retried after 5 s, 10 s, 20 s, ... at most 10 minutes apart
TICK_MS = 200  # how often pending files are looked at when no event comes


Signature = tuple[int, int, int, int]  # (size, mtime_ns, inode, ctime_ns)


def signature(path: str | os.PathLike[str]) -> Signature | None:
    """What says a file changed: its size, modification time, inode (an atomic save makes a new inode) and change
    time (a write that restores the old modification time, ``touch -r`` / ``rsync -t``, still moves it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def gone(path: str | os.PathLike[str]) -> bool:
    """Whether nothing is at ``path`` any more. A path that cannot be looked at (a folder on the way that may not be
    entered) is not gone: its file may well be there."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def utf8_name(path: str | os.PathLike[str]) -> bool:
    """Whether a path can be stored (the collection and the sync state keep names as UTF-8 text)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class WatchError(StoreError):
    """The collection is watched already (by another process, or another watcher in this one): exit 4 / 503."""


@dataclass
class SyncReport:
    """One sync: what changed in the collection and what it cost."""

    kind: str  # "reconcile" (a full comparison of folders and collection) or "change" (events)
    at: float = 0.0  # when it ended (seconds since the epoch)
    added: list[str] = field(default_factory=list)  # files new to the collection
    updated: list[str] = field(default_factory=list)  # files indexed again (changed, moved in, retried)
    removed: list[str] = field(default_factory=list)  # files gone: their points deleted or detached
    failed: list[Failure] = field(default_factory=list)
    indexed: int = 0  # items embedded (new content)
    present: int = 0  # items whose content the collection held already (not embedded again)
    deleted: int = 0  # points deleted (their content is in no file any more)
    pending: int = 0  # changes waiting (settling, or behind this sync)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed or self.failed)

    @property
    def ok(self) -> bool:
        """False when files failed and none was synced: the sync did nothing useful."""
        return not (self.failed and not (self.added or self.updated or self.removed))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["at"] = _iso(self.at)
        return out

    def summary(self) -> str:
        stamp = datetime.fromtimestamp(self.at).strftime("%H:%M:%S")
        text = (
            f"{stamp} {self.kind}: {len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} removed, "
            f"{len(self.failed)} failed ({self.indexed} items embedded, {self.present} already held, "
            f"{self.deleted} deleted; {self.seconds:.1f} s"
        )
        text += f"; {self.pending} pending)" if self.pending else ")"
        return text + "".join(f"\n  failed  {f.source}: {f.reason}" for f in self.failed)


def _iso(at: float | None) -> str | None:
    return None if not at else datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------------------------------------------
# where a collection's sync state lives


def state_path(store: Any) -> Path:
    """The sync-state file of ``store``'s collection: beside an embedded folder (or qdrant-client's local one),
    else in the cache folder, named by the server's address and the collection."""
    collection = store.collection
    try:
        address = store.address()
    except (ValueError, NotImplementedError, AttributeError):
        address = None
    folder = getattr(address, "root", None) or getattr(address, "path", None)
    if folder:
        return Path(folder) / f".{collection}.sync.sqlite"
    from ..settings import cache_dir

    where = getattr(address, "url", None) or getattr(store, "location", "") or ""
    digest = hashlib.sha256(str(where).encode()).hexdigest()[:16]
    return cache_dir() / "sync" / f"{digest}-{collection}.sqlite"


class SyncState:
    """What a watcher indexed, per file, and its last sync (SQLite, WAL): the watcher writes it, ``info`` and the
    server read it."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if readonly:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._create()
        except sqlite3.DatabaseError as exc:  # damaged: what it knew is only a shortcut, the folder is re-read
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            logger.warning("the sync state %s is unreadable (%s): set aside as %s; every file is read again",
                           self.path, exc, aside.name)  # fmt: skip
            self.db.close()
            for suffix in ("", "-wal", "-shm"):
                extra = Path(str(self.path) + suffix)
                if extra.exists():
                    extra.replace(Path(str(aside) + suffix))
            self._create()

    def _create(self) -> None:
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS files (source TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
            " ino INTEGER, ctime_ns INTEGER, status TEXT NOT NULL, error TEXT, attempts INTEGER NOT NULL DEFAULT 0,"
            " retry_at REAL)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def get(self, source: str) -> tuple[Signature | None, str, int, float | None] | None:
        """(signature, status, attempts, retry_at) of a file, None when the watcher never indexed it."""
        with self._lock:
            row = self.db.execute(
                "SELECT size, mtime_ns, ino, ctime_ns, status, attempts, retry_at FROM files WHERE source = ?",
                (source,),
            ).fetchone()
        if row is None:
            return None
        sig = None if row[0] is None else (int(row[0]), int(row[1]), int(row[2]), int(row[3]))
        return sig, str(row[4]), int(row[5]), row[6]

    def under(self, path: str) -> list[str]:
        """The files recorded at ``path`` or below it."""
        prefix = path.rstrip(os.sep) + os.sep
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._lock:
            rows = self.db.execute(
                "SELECT source FROM files WHERE source = ? OR source LIKE ? ESCAPE '\\'", (path, like)
            ).fetchall()
        return [r[0] for r in rows]

    def record(
        self,
        source: str,
        sig: Signature | None,
        status: str,
        *,
        error: str | None = None,
        attempts: int = 0,
        retry_at: float | None = None,
    ) -> None:
        size, mtime, ino, ctime = sig if sig is not None else (None, None, None, None)
        with self._lock:
            self.db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (source, size, mtime, ino, ctime, status, error, attempts, retry_at),
            )

    def adopt(self, sources: Sequence[str]) -> None:
        """Files the collection holds that the watcher did not index (an earlier ``index``): known, not verified."""
        with self._lock:
            self.db.executemany(
                "INSERT OR IGNORE INTO files (source, status) VALUES (?, 'indexed')", [(s,) for s in sources]
            )

    def forget(self, source: str) -> None:
        with self._lock:
            self.db.execute("DELETE FROM files WHERE source = ?", (source,))

    def due(self, now: float) -> list[str]:
        """Failed files whose next try is due."""
        with self._lock:
            rows = self.db.execute(
                "SELECT source FROM files WHERE status = 'failed' AND retry_at <= ?", (now,)
            ).fetchall()
        return [r[0] for r in rows]

    def set_meta(self, **values: Any) -> None:
        with self._lock:
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, None if v is None else str(v)) for k, v in values.items()],
            )

    def summary(self) -> dict[str, Any]:
        """Last sync, pending changes, files by status, and whether a watcher holds the collection now."""
        with self._lock:
            meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
            counts = dict(self.db.execute("SELECT status, COUNT(*) FROM files GROUP BY status").fetchall())
        last = float(meta["last_sync"]) if meta.get("last_sync") else None
        return {
            "watching": _held(self.path),
            "paths": [p for p in (meta.get("paths") or "").split("\n") if p],
            "last_sync": _iso(last),
            "pending": int(meta.get("pending") or 0),
            "files": int(sum(counts.values())),
            "failing": int(counts.get("failed", 0)),
            "totals": {k: int(meta.get(f"total_{k}") or 0) for k in ("added", "updated", "removed", "failed")},
        }


def read_state(store: Any) -> dict[str, Any] | None:
    """The sync summary of ``store``'s collection (:meth:`SyncState.summary`), None when it was never watched."""
    path = state_path(store)
    if not path.exists():
        return None
    state = SyncState(path, readonly=True)
    try:
        return state.summary()
    except sqlite3.Error:
        return None
    finally:
        state.close()


def _watched(collection: str, holder: str) -> WatchError:
    return WatchError(
        f"collection {collection!r} is watched already ({holder or 'another process'}): one watcher per "
        "collection; stop it first, or watch into another collection (--collection)"
    )


def check_not_watched(store: Any) -> None:
    """Raise :class:`WatchError` when a watcher holds ``store``'s collection (said before the collection itself is
    opened, whose own lock would give a vaguer message)."""
    state = state_path(store)
    if _held(state):
        raise _watched(store.collection, _lock_path(state).read_text().strip())


def _lock_path(state: Path) -> Path:
    return state.with_name(state.name + ".lock")


def _held(state: Path) -> bool:
    """Whether a watcher holds the lock of this state file now."""
    path = _lock_path(state)
    if not path.exists():
        return False
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False


# ----------------------------------------------------------------------------------------------------------------
# the watcher


@dataclass
class _Pending:
    last_event: float
    sig: Signature | None = None
    seen_at: float = 0.0


class FolderWatcher:
    """Keeps ``indexer``'s collection equal to the files under ``paths`` (see the module's text).

    Use it as a context manager (it holds the collection's watch lock) and iterate over it: the first report is the
    reconcile, then one per sync until :meth:`stop`::

        with indexer.watch(["~/notes"]) as watcher:
            for report in watcher:
                print(report.summary())

    ``writer``: a factory of the context the watcher holds while it writes (the server's per-collection lock).
    ``on_report``: called with every :class:`SyncReport` that changed something."""

    def __init__(
        self,
        indexer: Any,
        paths: Sequence[str | os.PathLike[str]],
        *,
        options: IngestOptions | None = None,
        metadata: dict[str, Any] | None = None,
        debounce_ms: int = DEBOUNCE_MS,
        settle_s: float = SETTLE_S,
        batch_files: int = BATCH_FILES,
        max_pending: int = MAX_PENDING,
        retry_s: tuple[float, float] = RETRY_S,
        writer: Callable[[], AbstractContextManager[Any]] | None = None,
        on_report: Callable[[SyncReport], None] | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        if not paths:
            raise ValueError("watch needs at least one folder or file")
        if settle_s < 0 or debounce_ms < 1 or batch_files < 1 or max_pending < 1:
            raise ValueError("need settle_s >= 0, debounce_ms >= 1, batch_files >= 1 and max_pending >= 1")
        self.indexer = indexer
        self.roots = [Path(p).expanduser().resolve() for p in paths]
        self.options = indexer._options(options)
        self.metadata = dict(metadata or {})
        self.debounce_ms, self.settle_s = debounce_ms, settle_s
        self.batch_files, self.max_pending = batch_files, max_pending
        self.retry_s = retry_s
        self.writer = writer or nullcontext
        self.on_report = on_report
        self.show_progress_bar = show_progress_bar
        self.state: SyncState | None = None
        self._lock_file: Any = None
        self._stop = threading.Event()
        self._pending: dict[Path, _Pending] = {}
        self._deleted: dict[Path, float] = {}
        self._folders: dict[Path, float] = {}  # folders created or moved in: walked once settled
        self._rescan = False
        self._started = 0.0
        self.last_sync: float | None = None
        self.totals = {"added": 0, "updated": 0, "removed": 0, "failed": 0}
        self.thread: threading.Thread | None = None
        self._busy = False  # a sync under way (set when it starts, cleared once it is reported)
        self.error: str | None = None  # why the watcher thread ended, when it died
        self._devices: dict[Path, int] = {}  # each root's file system when last reconciled (unmounted: not deleted)
        self._left = 0  # files a stopped reconcile did not reach

    # -- lifetime ---------------------------------------------------------------------------------------------------

    def __enter__(self) -> FolderWatcher:
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> None:
        """Take the collection's watch lock (:class:`WatchError` when another watcher holds it) and its state."""
        if self.state is not None:
            return
        path = state_path(self.indexer.store)
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(_lock_path(path), "a+")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            raise _watched(self.indexer.store.collection, holder) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._lock_file = fh
        try:
            self.indexer._open()  # the collection exists from here on (created with the indexer's spec if new)
            self.state = SyncState(path)
        except BaseException:
            self._unlock()
            raise
        self.state.set_meta(paths="\n".join(map(str, self.roots)), pending=0)
        self._started = time.time()

    def close(self) -> None:
        self.stop()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()
        if self.state is not None:
            self.state.set_meta(pending=self.pending)
            self.state.close()
            self.state = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def stop(self) -> None:
        """End the watch after the sync under way (a thread-safe flag)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> threading.Thread:
        """Watch on a thread of its own (the server): reports go to ``on_report`` and the log."""
        self.open()

        def loop() -> None:
            try:
                for _ in self:
                    pass
            except Exception as exc:  # noqa: BLE001 - a watcher that dies says so; the server keeps serving
                self.error = f"{type(exc).__name__}: {exc}"
                logger.exception("the folder watcher stopped")

        self.thread = threading.Thread(target=loop, name="folder-watch", daemon=True)
        self.thread.start()
        return self.thread

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._deleted) + len(self._folders) + (1 if self._rescan else 0) + self._left

    @property
    def idle(self) -> bool:
        """Nothing pending and no sync under way (every change seen so far is in the collection and reported)."""
        return not self._busy and self.pending == 0

    def status(self) -> dict[str, Any]:
        """What ``/health`` and the page show: the roots, last sync, pending changes and totals."""
        alive = self.thread is None or self.thread.is_alive()
        return {
            "watching": self.state is not None and not self.stopping and alive and self.error is None,
            "error": self.error,
            "paths": [str(r) for r in self.roots],
            "started": _iso(self._started),
            "last_sync": _iso(self.last_sync or 0),
            "pending": self.pending,
            "totals": dict(self.totals),
        }

    # -- the loop ---------------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[SyncReport]:
        return self.changes()

    def changes(self) -> Iterator[SyncReport]:
        """The reconcile's report, then one per sync that changed something, until :meth:`stop`. The reconcile runs
        once the file-system watch has started, so a change made while it runs is synced after it, not lost."""
        import watchfiles

        self.open()
        reconciled = False
        while not self.stopping:
            live = self._roots_now()
            targets = sorted({r if r.is_dir() else r.parent for r, there in live.items() if there is not None})
            if not targets:  # every root is gone (deleted, unmounted): sync what is pending, wait for one to be back
                if not reconciled:
                    reconciled = True
                    yield self._emit(self.reconcile())
                self._stop.wait(TICK_MS / 1000)
                report = self._step()
                if report is not None:
                    yield self._emit(report)
                self._came_back(live)
                continue
            stream = watchfiles.watch(
                *targets,
                debounce=self.debounce_ms,
                step=50,
                rust_timeout=TICK_MS,
                yield_on_timeout=True,
                stop_event=self._stop,
                recursive=self.options.recursive,
                ignore_permission_denied=True,
                raise_interrupt=False,
            )
            while not self.stopping:
                try:
                    changes = next(stream)
                except StopIteration:
                    break
                except RuntimeError as exc:  # the watch itself failed (a name it cannot decode, a lost folder)
                    logger.warning("the file-system watch failed (%s): watching again after a reconcile", exc)
                    self._rescan = True
                    self._stop.wait(1.0)
                    break
                self._take(changes)
                if not reconciled:  # the watch runs from its first answer on: nothing after the reconcile is missed
                    reconciled = True
                    yield self._emit(self.reconcile())
                report = self._step()
                if report is not None:
                    yield self._emit(report)
                now_live = self._roots_now()
                replaced = any(ch[0].name == "deleted" and Path(ch[1]) in live for ch in changes)
                if now_live != live or replaced:
                    self._came_back(live)
                    if replaced and all(there is not None for there in now_live.values()):
                        self._rescan = True  # deleted and made again between two looks
                    break  # watch again: a root deleted and made again (or mounted again) is new to the kernel
            stream.close()

    def _roots_now(self) -> dict[Path, int | None]:
        """Each root's file system (device), None when it does not exist."""
        out: dict[Path, int | None] = {}
        for root in self.roots:
            try:
                out[root] = root.stat().st_dev
            except OSError:
                out[root] = None
        return out

    def _came_back(self, before: dict[Path, int | None]) -> None:
        """Roots that exist again, or whose disk is mounted again, are walked (reconciled) at the next step; roots
        that are gone are deletions (their files' own events may not have come before the watch ended). A root whose
        disk went away (another file system there now) is left as it is until it is back."""
        now = time.monotonic()
        for root, device in before.items():
            current = self._roots_now()[root]
            recorded = self._devices.get(root)
            if device is None and current is not None:
                self._rescan = True
            elif device is not None and current is None:
                self._deleted.setdefault(root, now)
            elif recorded is not None and current != recorded and device == recorded:
                logger.warning("%s is on another disk now (unmounted?): left as it is until its disk is back", root)
            elif recorded is not None and current == recorded and device != recorded:
                self._rescan = True

    def _unmounted(self, path: Path) -> bool:
        """Whether ``path`` lies under a root whose disk is not the one it was reconciled on."""
        root = self._root_of(path)
        if root is None or root not in self._devices:
            return False
        try:
            return root.stat().st_dev != self._devices[root]
        except OSError:
            return False

    def _emit(self, report: SyncReport) -> SyncReport:
        report.pending = self.pending
        report.at = time.time()
        self.last_sync = report.at
        for key in ("added", "updated", "removed"):
            self.totals[key] += len(getattr(report, key))
        self.totals["failed"] += len(report.failed)
        if self.state is not None:
            self.state.set_meta(
                last_sync=report.at, pending=report.pending, **{f"total_{k}": v for k, v in self.totals.items()}
            )
        if report.changed:
            logger.info("%s", report.summary())
            if self.on_report is not None:
                self.on_report(report)
        self._busy = False  # reported: idle again (when nothing is pending)
        return report

    # -- events -----------------------------------------------------------------------------------------------------

    def _root_of(self, path: Path) -> Path | None:
        for root in self.roots:
            if path == root or root in path.parents:
                return root
        return None

    def selected(self, path: Path) -> bool:
        """Whether a file at ``path`` is one the watch indexes (the walk's rules, plus no temp names)."""
        root = self._root_of(path)
        if root is None or not utf8_name(path):
            return False
        if path == root:  # a file given as a root
            return modality_of(path) is not None and not _temporary(path.name)
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or _temporary(path.name):
            return False
        if not self.options.recursive and len(rel.parts) > 1:
            return False
        if modality_of(path) is None:
            return False
        name, rel_text = path.name, rel.as_posix()
        if self.options.include and not any(_match(name, rel_text, g) for g in self.options.include):
            return False
        return not any(_match(name, rel_text, g) for g in self.options.exclude)

    def _take(self, changes: set[tuple[Any, str]]) -> None:
        """Note the changes. What a path *is now* decides (a set of changes has no order: deleted and made again in
        one batch is a change, not a deletion)."""
        now = time.monotonic()
        for change, raw in changes:
            path = Path(raw)
            root = self._root_of(path)
            if root is None or (path != root and any(p.startswith(".") for p in path.relative_to(root).parts)):
                continue
            if gone(path):
                self._pending.pop(path, None)
                self._deleted[path] = now
            elif path.is_dir():
                if self.state is not None and self.state.get(os.fspath(path)) is not None:
                    self._deleted[path] = now  # a file the watch held is a folder now: its points go
                else:
                    self._deleted.pop(path, None)
                if change.name == "added" or path.is_symlink():
                    self._folders[path] = now  # walked once settled (a link: by a reconcile, the walk's rules)
            elif self.selected(path):
                self._deleted.pop(path, None)
                held = self._pending.get(path)
                if held is None:
                    self._pending[path] = _Pending(now)
                else:
                    held.last_event = now
            elif self.state is not None and self.state.get(os.fspath(path)) is not None:
                self._deleted[path] = now  # a file the watch held that it no longer selects (renamed to a temp name)
        if len(self._pending) + len(self._deleted) + len(self._folders) > self.max_pending:
            logger.warning("more than %d changes at once: reconciling instead of following them", self.max_pending)
            self._pending.clear()
            self._deleted.clear()
            self._folders.clear()
            self._rescan = True

    def _step(self) -> SyncReport | None:
        """One sync of what is ready (stable files, settled deletions, retries due), if anything is."""
        assert self.state is not None
        if self._rescan:
            self._rescan = False
            self._pending.clear()
            self._deleted.clear()
            self._folders.clear()
            return self.reconcile()
        now = time.monotonic()
        for folder, at in list(self._folders.items()):
            if now - at >= self.settle_s:
                del self._folders[folder]
                if folder.is_symlink():  # a link to a folder: indexed under it only if the walk would (no loops)
                    self._rescan = True
                    continue
                files, _, _ = discover([folder], self.options) if folder.is_dir() else ([], [], [])
                for f in files:
                    f = folder / f.relative_to(folder.resolve())  # the folder's own path (the walk resolves it)
                    if self.selected(f) and f not in self._pending:
                        self._pending[f] = _Pending(at)
        for source in self.state.due(time.time()):
            path = Path(source)
            if path not in self._pending and not gone(path):
                self._pending[path] = _Pending(now - self.settle_s)
        ready: list[tuple[Path, Signature]] = []
        settling = False
        for path, held in list(self._pending.items()):
            sig = signature(path)
            if sig is None:  # gone meanwhile
                del self._pending[path]
                self._deleted[path] = now
                continue
            if sig != held.sig:
                held.sig, held.seen_at = sig, now
                settling = True
                continue
            if now - max(held.last_event, held.seen_at) < self.settle_s:
                settling = True
                continue
            known = self.state.get(str(path))
            if known is not None and known[0] == sig and known[1] in ("indexed", "empty"):
                del self._pending[path]  # touched without change (same size, time and inode)
                continue
            ready.append((path, sig))
        for path in [p for p in self._deleted if self._unmounted(p)]:
            del self._deleted[path]  # the disk went away, the files did not: kept until it is back
        deletions = [
            p
            for p, at in self._deleted.items()
            if now - at >= self.settle_s and (not settling or now - at >= MAX_HOLD_S)
        ]
        if not ready and not deletions:
            return None
        ready = ready[: self.batch_files]
        for path, _ in ready:
            del self._pending[path]
        for path in deletions:
            del self._deleted[path]
        return self._sync("change", ready, [str(p) for p in deletions])

    # -- syncing ----------------------------------------------------------------------------------------------------

    def reconcile(self) -> SyncReport:
        """Compare every root with the collection: index files new or changed since the watcher last indexed them,
        take off their points the files the walk no longer finds there (deleted, renamed, excluded since, reached
        only through a link the walk skips, replaced by a folder). Roots that do not exist are left alone (an
        unmounted disk is not a deletion), and so is what lies under a folder that cannot be listed (reported)."""
        assert self.state is not None
        started = time.perf_counter()
        report = SyncReport("reconcile")
        roots = [r for r in self.roots if r.exists()]
        for root in self.roots:
            if root not in roots:
                logger.warning("%s does not exist: left as it is in the collection until it is back", root)
        self._devices = {r: r.stat().st_dev for r in roots}
        files, _, skipped = discover(roots, self.options)
        unlisted = [f.source for f in skipped if f.reason.startswith("cannot list")]
        report.failed.extend(f for f in skipped if f.reason.startswith("cannot list"))
        on_disk: dict[str, Path] = {}
        for f in files:
            if not utf8_name(f):
                reason = "the file name is not valid UTF-8 (names are stored as UTF-8 text): rename it"
                report.failed.append(Failure(display_path(f), reason))
            elif self.selected(f):
                on_disk[os.fspath(f)] = f
        held = self._held_sources(roots)
        self.state.adopt(sorted(held - {s for s in held if self.state.get(s) is not None}))
        changed: list[tuple[Path, Signature]] = []
        now = time.time()
        for source, path in on_disk.items():
            sig = signature(path)
            if sig is None:
                continue
            known = self.state.get(source)
            if known is not None and known[0] == sig:
                if known[1] in ("indexed", "empty") and (known[1] == "empty" or source in held):
                    continue
                if known[1] == "failed" and (known[3] or 0) > now:
                    continue  # its next try is later
            changed.append((path, sig))

        def kept(source: str) -> bool:  # under a folder the walk could not list: unknown, not gone
            return any(source == u or source.startswith(u.rstrip(os.sep) + os.sep) for u in unlisted)

        leaving = [
            s for root in roots for s in self.state.under(str(root)) if s not in on_disk and not kept(s)
        ]  # fmt: skip
        bar = tqdm(total=len(changed), desc="syncing", unit="file", disable=not (self.show_progress_bar and changed))
        self._left = 0
        for start in range(0, max(len(changed), 1), self.batch_files):
            batch = changed[start : start + self.batch_files]
            last = start + self.batch_files >= len(changed)
            part = self._sync("reconcile", batch, leaving if last else [], exact=True)
            _merge(report, part)
            bar.update(len(batch))
            if self.stopping and not last:
                self._left = len(changed) - start - len(batch)
                logger.warning("stopped during the reconcile: %d files are synced at the next start", self._left)
                break
        bar.close()
        report.seconds = time.perf_counter() - started
        return report

    def _present(self, source: str) -> bool:
        """Whether ``source`` is a file the watch selects (or cannot be looked at: then it is kept)."""
        try:
            st = os.stat(source)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:
            return True
        return stat.S_ISREG(st.st_mode) and self.selected(Path(source))

    def _held_sources(self, roots: list[Path]) -> set[str]:
        """The sources the collection lists at or under ``roots`` (one scroll over the payloads)."""
        store = self.indexer.store
        if store.count() == 0:
            return set()
        prefixes = [(str(r), str(r).rstrip(os.sep) + os.sep) for r in roots]
        found: set[str] = set()
        for point in store.scroll(with_vectors=False):
            for source in sources_of(point.payload):
                if any(source == base or source.startswith(prefix) for base, prefix in prefixes):
                    found.add(source)
        return found

    def _sync(
        self, kind: str, files: list[tuple[Path, Signature]], leaving: list[str], *, exact: bool = False
    ) -> SyncReport:
        """Index ``files`` and take the files at or under ``leaving`` off their points, holding the writer: additions
        first, so a moved file's points gain its new path before they lose the old one. A file under ``leaving`` that
        is a selected file again (made again meanwhile) keeps its points, unless ``exact`` (the reconcile's list:
        what the walk does not select, wherever it is)."""
        assert self.state is not None
        self._busy = True
        report = SyncReport(kind)
        started = time.perf_counter()
        store = self.indexer.store
        with self.writer():
            if files:
                before = {os.fspath(p): self.state.get(os.fspath(p)) for p, _ in files}
                run = self.indexer.index_files(
                    [p for p, _ in files], options=self.options, metadata=self.metadata, show_progress_bar=False
                )
                report.indexed, report.present = run.indexed, run.present
                failed = set(run.failed_files)
                holding = store.points_of_sources([os.fspath(p) for p, _ in files if os.fspath(p) not in failed])
                leaving = list(leaving)
                for path, sig in files:
                    source = os.fspath(path)
                    known = before[source]
                    if source in failed and gone(source):  # deleted while it was read: a deletion
                        leaving.append(source)
                        continue
                    if source in failed:
                        reasons = [f for f in run.failed if _names(f.source, source)]
                        attempts = (known[2] if known is not None and known[1] == "failed" else 0) + 1
                        delay = min(self.retry_s[1], self.retry_s[0] * 2 ** (attempts - 1))
                        text = "; ".join(f.reason for f in reasons) or "failed"
                        self.state.record(
                            source, sig, "failed", error=text, attempts=attempts, retry_at=time.time() + delay
                        )
                        report.failed.extend(reasons or [Failure(display_path(source), text)])
                        continue
                    self.state.record(source, sig, "indexed" if source in holding else "empty")
                    (report.added if known is None else report.updated).append(display_path(source))
            for gone_path in leaving:
                # the reconcile names each file; an event's path may be a folder: what the watch held under it goes
                below = [] if exact else self.state.under(gone_path)
                for source in sorted(set(below) | {gone_path}):
                    if not exact and self._present(source):  # made again meanwhile: its event indexes it
                        continue
                    detached, deleted = store.remove_source(source)
                    known = self.state.get(source)
                    self.state.forget(source)
                    if detached or deleted or known is not None:
                        report.removed.append(display_path(source))
                        report.deleted += deleted
            if leaving:
                store.flush()
        report.seconds = time.perf_counter() - started
        return report


def _names(where: str, source: str) -> bool:
    """Whether a failure's ``where`` is about file ``source`` (the file, or a part of it)."""
    shown = display_path(source)
    return where == shown or where.startswith((shown + " ", shown + "#"))


def _merge(total: SyncReport, part: SyncReport) -> None:
    for key in ("added", "updated", "removed", "failed"):
        getattr(total, key).extend(getattr(part, key))
    total.indexed += part.indexed
    total.present += part.present
    total.deleted += part.deleted


def _temporary(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in TEMP_PATTERNS)
