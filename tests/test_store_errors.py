"""A store that cannot be used is one error, whatever the backend and the operation: a Qdrant Edge folder held by
another process, a damaged one, an engine that fails mid-run and an unreachable server each give a
:class:`StoreError` (exit code 4, HTTP 503) from every operation, never a raw engine exception."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval_pipeline.errors import classify
from retrieval_pipeline.store import (
    CollectionSpec,
    EdgeStore,
    Point,
    ServerStore,
    StoreError,
    VectorStore,
    open_store,
    point_id,
)

SPEC = CollectionSpec(model="tiny", dim=8, instruction="Represent the user's input.")
POINTS = [
    Point(
        point_id(f"c{i}", SPEC), np.random.default_rng(i).normal(size=8).tolist(), {"modality": "text", "source": "/a"}
    )
    for i in range(6)
]
PID = POINTS[0].id

# Every operation of the interface, as (name, call). Each one must raise StoreError on a broken store.
OPERATIONS = {
    "open": lambda s: s.open(create=False),
    "open_with_spec": lambda s: s.open(SPEC),
    "upsert": lambda s: s.upsert(POINTS[:2]),
    "existing": lambda s: s.existing([PID]),
    "retrieve": lambda s: s.retrieve([PID]),
    "search": lambda s: s.search([0.1] * 8, limit=3),
    "search_filtered": lambda s: s.search([0.1] * 8, limit=3, filters={"modality": "text"}),
    "count": lambda s: s.count(),
    "scroll": lambda s: list(s.scroll(with_vectors=True)),
    "delete": lambda s: s.delete({"modality": "text"}),
    "delete_ids": lambda s: s.delete_ids([PID]),
    "set_payload": lambda s: s.set_payload(PID, {"x": 1}),
    "remove_source": lambda s: s.remove_source("/a"),
    "info": lambda s: s.info(),
    "verify": lambda s: s.verify(),
}
# Operations on a store that is already open (open() itself answers from memory then).
OPEN_OPERATIONS = {k: v for k, v in OPERATIONS.items() if not k.startswith("open")}


def _assert_store_error(exc_info: pytest.ExceptionInfo, match: str) -> None:
    assert isinstance(exc_info.value, StoreError), exc_info.value
    assert match in str(exc_info.value), str(exc_info.value)
    kind = classify(exc_info.value)
    assert kind is not None and (kind.exit_code, kind.http_status) == (4, 503)


def _fill(root: Path) -> None:
    store = EdgeStore(root, "c")
    store.open(SPEC)
    store.upsert(POINTS)
    store.close()


_HOLD = """
import sys
from retrieval_pipeline.store import EdgeStore  # torch-free: starts in a fraction of a second
store = EdgeStore(sys.argv[1], "c")
store.open(create=False)
print("holding", flush=True)
sys.stdin.read()  # until the test closes our stdin
store.close()
"""


@pytest.fixture(scope="module")
def locked_db(tmp_path_factory):
    """A store another process holds open for the whole module."""
    root = tmp_path_factory.mktemp("locked")
    _fill(root)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert holder.stdout.readline().strip() == b"holding", holder.stderr.read().decode()
    yield root
    holder.stdin.close()
    holder.wait(timeout=60)


@pytest.mark.parametrize("operation", [*OPERATIONS, "drop"])
def test_a_folder_another_process_holds_is_a_store_error_from_every_operation(locked_db, operation):
    store = EdgeStore(locked_db, "c")
    with pytest.raises(StoreError) as exc_info:
        if operation == "drop":
            store.drop()  # --rebuild refuses too: deleting a folder in use would break the other process
        else:
            OPERATIONS[operation](store)
    _assert_store_error(exc_info, "another process has it open")
    store.close()
    assert (locked_db / "c" / "collection.json").exists()


def _truncate(folder: Path, suffix: str) -> None:
    [path] = [p for p in folder.rglob("*") if p.is_file() and p.as_posix().endswith(suffix)]
    with open(path, "r+b") as fh:
        fh.truncate(0)


@pytest.fixture(scope="module")
def damaged_dbs(tmp_path_factory):
    """Damaged copies, made once: the shard's files (the engine panics while loading) and ``collection.json``."""
    roots = {}
    for kind in ("shard", "collection.json"):
        root = tmp_path_factory.mktemp(f"damaged-{kind}")
        _fill(root)
        if kind == "shard":
            _truncate(root / "c" / "shard", "vectors/status.dat")
        else:
            (root / "c" / "collection.json").write_text("{")
        roots[kind] = root
    return roots


@pytest.mark.parametrize("damage", ["shard", "collection.json"])
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_damaged_folder_is_a_store_error_from_every_operation(damaged_dbs, damage, operation):
    store = EdgeStore(damaged_dbs[damage], "c")
    with pytest.raises(StoreError) as exc_info:
        OPERATIONS[operation](store)
    _assert_store_error(exc_info, "is damaged")
    assert "--rebuild" in str(exc_info.value)
    store.close()


class _Broken:
    """An engine (or client) whose every call fails the way native code does."""

    def __init__(self, error: type[BaseException]):
        self.error = error
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        def fail(*args, **kwargs):
            self.calls.append(name)
            raise self.error(f"{name}: the engine failed")

        return fail


class PanicException(BaseException):  # what pyo3 raises for a Rust panic: not an Exception
    pass


@pytest.mark.parametrize("backend", ["edge", "server"])
@pytest.mark.parametrize("operation", list(OPEN_OPERATIONS))
def test_an_engine_failing_mid_run_is_a_store_error_from_every_operation(tmp_path, backend, operation):
    if backend == "edge":
        store: VectorStore = EdgeStore(tmp_path / "db", "c")
        attribute, broken = "_shard", _Broken(PanicException)
    else:
        store = ServerStore(path=str(tmp_path / "local"), collection="c")
        attribute, broken = "client", _Broken(ConnectionError)
    store.open(SPEC)
    store.upsert(POINTS)
    real = getattr(store, attribute)
    setattr(store, attribute, broken)
    with pytest.raises(StoreError) as exc_info:
        OPEN_OPERATIONS[operation](store)
    _assert_store_error(exc_info, "failed")
    assert broken.calls, "the operation never reached the engine"
    store.close()  # closing a broken store logs, never raises
    setattr(store, attribute, real)
    store.close()


@pytest.fixture(scope="module")
def unreachable():
    return open_store(url="http://127.0.0.1:9", collection="c", timeout=2)


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_an_unreachable_server_is_the_same_store_error_from_every_operation(unreachable, operation):
    with pytest.raises(StoreError) as exc_info:
        OPERATIONS[operation](unreachable)
    _assert_store_error(exc_info, "127.0.0.1:9")


def test_open_store_is_the_front_door(tmp_path, monkeypatch):
    edge = open_store(db=tmp_path / "db", collection="docs")
    assert isinstance(edge, EdgeStore) and edge.folder == tmp_path / "db" / "docs"
    assert open_store(tmp_path / "db").collection == "default"  # db is the first argument
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert Path(open_store().location) == tmp_path / "data" / "qwen3vl-rag" / "default"
    server = open_store(url="http://127.0.0.1:9", collection="docs", api_key="k", timeout=2)
    assert isinstance(server, ServerStore) and server.location == "http://127.0.0.1:9 / docs"
    with pytest.raises(ValueError, match="not both"):
        open_store(db=tmp_path, url="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="api_key"):
        open_store(db=tmp_path, api_key="k")
    # the same code on either backend
    for store in (edge, ServerStore(path=str(tmp_path / "local"), collection="docs")):
        with store:
            store.open(SPEC)
            store.upsert(POINTS)
            assert store.count() == len(POINTS) and store.info()["points"] == len(POINTS)
    assert not os.path.exists(tmp_path / "data")  # open_store() opened nothing
