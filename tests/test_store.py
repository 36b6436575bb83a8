"""Both Qdrant backends behind one interface: Qdrant Edge (embedded) and qdrant-client (local mode here)."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval_pipeline.store import (
    CollectionMismatchError,
    CollectionNotFoundError,
    CollectionSpec,
    EdgeStore,
    Point,
    ServerStore,
    StoreError,
    point_id,
)

SPEC = CollectionSpec(model="tiny", dim=8, instruction="Represent the user's input.")


def make_store(kind: str, tmp_path, collection: str = "docs"):
    if kind == "edge":
        return EdgeStore(tmp_path / "edge", collection)
    return ServerStore(path=str(tmp_path / "local"), collection=collection)


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    s = make_store(request.param, tmp_path)
    yield s
    s.close()


def _points(n: int, seed: int = 0) -> list[Point]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        modality = ["text", "image", "pdf-page"][i % 3]
        out.append(
            Point(
                point_id(f"content-{i}", SPEC),
                rng.normal(size=8).tolist(),
                {"modality": modality, "source": f"/data/file{i % 4}", "text": f"item {i}", "metadata": {"n": i}},
            )
        )
    return out


def test_open_creates_and_checks_the_spec(store):
    with pytest.raises(CollectionNotFoundError):
        store.open(create=False)
    assert not store.exists()
    assert store.open(SPEC) == SPEC
    assert store.exists()
    other_dim = CollectionSpec(model="tiny", dim=16, instruction=SPEC.instruction)
    with pytest.raises(CollectionMismatchError, match="8-d vectors of 'tiny'"):
        store.open(other_dim)
    with pytest.raises(CollectionMismatchError, match="other"):
        store.open(CollectionSpec(model="other", dim=8, instruction=SPEC.instruction))


def test_upsert_search_count_filters_delete(store):
    store.open(SPEC)
    points = _points(12)
    store.upsert(points)
    assert store.count() == 12
    store.upsert(points[:5])  # idempotent: same ids
    assert store.count() == 12
    assert store.existing([points[0].id, point_id("never stored", SPEC)]) == {points[0].id}

    hits = store.search(points[4].vector, limit=3)
    assert hits[0].id == points[4].id and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].payload["text"] == "item 4"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    images = store.search(points[4].vector, limit=20, filters={"modality": "image"})
    assert images and all(h.payload["modality"] == "image" for h in images)
    assert store.count({"modality": ["image", "pdf-page"]}) == 8
    assert store.count({"metadata.n": 3}) == 1
    with pytest.raises(ValueError, match="filter"):
        store.count({"modality": {"nested": 1}})

    assert store.delete_source("/data/file1") == 3
    assert store.count() == 9
    assert store.count({"source": "/data/file1"}) == 0
    with pytest.raises(ValueError, match="needs a filter"):
        store.delete({})


def test_scroll_returns_everything(store):
    store.open(SPEC)
    points = _points(30)
    store.upsert(points)
    seen = {p.id: p for p in store.scroll(page=7)}
    assert set(seen) == {p.id for p in points}
    original = {p.id: np.asarray(p.vector) for p in points}
    for pid, p in seen.items():
        a, b = np.asarray(p.vector), original[pid]
        # cosine collections store normalised vectors
        assert np.allclose(a, b / np.linalg.norm(b), atol=1e-5)


def test_info(store):
    store.open(SPEC)
    store.upsert(_points(4))
    info = store.info()
    assert info["points"] == 4 and info["spec"]["dim"] == 8 and info["collection"] == "docs"


def test_edge_store_persists_across_reopen(tmp_path):
    first = EdgeStore(tmp_path / "db", "c")
    first.open(SPEC)
    first.upsert(_points(5))
    first.close()
    again = EdgeStore(tmp_path / "db", "c")
    assert again.open(create=False) == SPEC  # the spec comes from disk
    assert again.count() == 5
    again.close()


def test_push_from_edge_to_server_keeps_ids_and_payloads(tmp_path):
    edge = EdgeStore(tmp_path / "db", "c")
    edge.open(SPEC)
    points = _points(9)
    edge.upsert(points)
    server = ServerStore(path=str(tmp_path / "server"), collection="c")
    assert edge.push_to(server) == 9
    assert server.open(create=False) == SPEC
    assert server.count() == 9
    hit = server.search(points[2].vector, limit=1)[0]
    assert hit.id == points[2].id and hit.payload == points[2].payload
    edge.close()
    server.close()


def test_unreachable_server_is_a_store_error():
    store = ServerStore("http://127.0.0.1:9", "c", timeout=2)
    with pytest.raises(StoreError, match="127.0.0.1:9"):
        store.open(SPEC)


def test_invalid_collection_name(tmp_path):
    with pytest.raises(ValueError, match="invalid collection name"):
        EdgeStore(tmp_path, "../escape")


def test_edge_store_in_use_by_another_process(tmp_path):
    import subprocess
    import sys

    store = EdgeStore(tmp_path / "db", "c")
    store.open(SPEC)
    code = (
        "from retrieval_pipeline.store import EdgeStore, StoreError\n"
        f"s = EdgeStore({str(tmp_path / 'db')!r}, 'c')\n"
        "try:\n    s.open(create=False)\nexcept StoreError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    store.close()
    assert "another process has it open" in out
