"""Both Qdrant backends behind one interface: Qdrant Edge (embedded) and qdrant-client (local mode here)."""

from __future__ import annotations

from pathlib import Path

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
    model_fingerprint,
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
    assert store.open(SPEC) == SPEC.resolved()
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


def test_comparisons_and_boolean_filters_on_both_backends(store):
    """Ranges, not-equal, in / not-in, floats, and $and / $or / $not nested: the counts a Python scan of the same
    payloads gives, on both backends (the vector-store API's attribute filters come down to these)."""
    store.open(SPEC)
    points = _points(12)
    for p in points:
        p.payload["metadata"]["score"] = p.payload["metadata"]["n"] / 4  # floats: 0.0, 0.25, ...
    store.upsert(points)
    rows = [p.payload for p in points]

    def expect(test) -> int:
        return sum(1 for r in rows if test(r))

    n = lambda r: r["metadata"]["n"]  # noqa: E731
    cases = [
        ({"metadata.n": {"gte": 3, "lt": 7}}, lambda r: 3 <= n(r) < 7),
        ({"metadata.n": {"ne": 4}}, lambda r: n(r) != 4),
        ({"metadata.n": {"in": [1, 2, 11]}}, lambda r: n(r) in (1, 2, 11)),
        ({"modality": {"nin": ["text", "image"]}}, lambda r: r["modality"] == "pdf-page"),
        ({"metadata.score": 0.75}, lambda r: r["metadata"]["score"] == 0.75),
        ({"metadata.score": {"gt": 1.5}}, lambda r: r["metadata"]["score"] > 1.5),
        ({"$or": [{"modality": "image"}, {"metadata.n": {"lte": 1}}]}, lambda r: r["modality"] == "image" or n(r) <= 1),
        (
            {"$and": [{"modality": "text"}, {"$not": {"metadata.n": 0}}], "source": {"ne": "/data/file3"}},
            lambda r: r["modality"] == "text" and n(r) != 0 and r["source"] != "/data/file3",
        ),
    ]
    for flt, test in cases:
        assert store.count(flt) == expect(test), flt
        hits = store.search(points[0].vector, limit=20, filters=flt)
        assert len(hits) == expect(test) and all(test(h.payload) for h in hits), flt
    for bad, why in [
        ({"metadata.n": {"gt": "x"}}, "finite number"),
        ({"metadata.n": {"between": 1}}, "comparison takes"),
        ({"$xor": []}, "unknown filter operator"),
        ({"$or": []}, "non-empty list"),
        ({"metadata.n": {"in": 3}}, "list of values"),
    ]:
        with pytest.raises(ValueError, match=why):
            store.count(bad)
    deep: dict = {"modality": "text"}
    for _ in range(10):
        deep = {"$not": deep}
    with pytest.raises(ValueError, match="nest at most"):
        store.count(deep)


def test_a_staged_collection_replaces_the_old_one_only_when_asked(store):
    """The rebuild path: a sibling collection is filled while the old one keeps its points; replace_with puts the
    new one in place (Edge: a folder rename; a server: recreated and copied)."""
    store.open(SPEC)
    store.upsert(_points(5))
    store.close()
    staged = store.staging()
    other = CollectionSpec(model="tiny", dim=16, instruction=SPEC.instruction)  # a rebuild may change the spec
    staged.open(other)
    rng = np.random.default_rng(1)
    staged.upsert([Point(point_id(f"new-{i}", other), rng.normal(size=16).tolist(), {"text": "new"}) for i in range(3)])
    staged.close()  # (qdrant-client's local mode: one client per folder at a time)
    assert store.count() == 5  # the old collection untouched until replaced
    store.close()
    store.replace_with(staged.collection)
    assert store.count() == 3 and store.open(create=False).dim == 16
    assert {p.payload["text"] for p in store.scroll()} == {"new"}
    store.close()
    again = store.staging()  # nothing of the finished rebuild is left in the sibling's place
    assert not again.exists()
    again.close()


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
    assert again.open(create=False) == SPEC.resolved()  # the spec comes from disk
    assert again.count() == 5
    again.close()


def test_push_from_edge_to_server_keeps_ids_and_payloads(tmp_path):
    edge = EdgeStore(tmp_path / "db", "c")
    edge.open(SPEC)
    points = _points(9)
    edge.upsert(points)
    server = ServerStore(path=str(tmp_path / "server"), collection="c")
    assert edge.push_to(server) == 9
    assert server.open(create=False) == SPEC.resolved()
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


@pytest.mark.slow
@pytest.mark.subprocess
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


# --- payload sources, model identity, layout versions, damaged stores, concurrent creation ---------------------


def test_sources_remove_source_and_drop(store):
    store.open(SPEC)
    shared = Point(point_id("shared", SPEC), [1.0] * 8, {"source": "/a", "sources": ["/a", "/b"], "modality": "text"})
    only_a = Point(point_id("only-a", SPEC), [0.5] * 8, {"source": "/a", "sources": ["/a"], "modality": "text"})
    legacy = Point(point_id("legacy", SPEC), [0.2] * 8, {"source": "/a", "modality": "text"})  # before `sources`
    store.upsert([shared, only_a, legacy])
    assert set(store.points_of_source("/a")) == {shared.id, only_a.id, legacy.id}
    assert set(store.points_of_source("/b")) == {shared.id}
    assert store.remove_source("/a") == (1, 2)  # the shared point keeps /b; the others go
    assert store.retrieve([shared.id, only_a.id]) == {shared.id: {**shared.payload, "source": "/b", "sources": ["/b"]}}
    assert store.count() == 1
    store.drop()
    assert not store.exists()
    with pytest.raises(CollectionNotFoundError):
        store.open(create=False)


def _tiny_copy(tmp_path, name="copy"):
    import shutil

    from conftest import TINY

    return Path(shutil.copytree(TINY, tmp_path / name / "tiny-qwen3vl"))


def test_model_fingerprint_is_what_the_model_is(tmp_path, monkeypatch):
    import json

    from conftest import TINY

    copy = _tiny_copy(tmp_path)
    config = json.loads((copy / "config.json").read_text())
    config["_name_or_path"] = "/somewhere/else"  # where it was saved is not what it is
    (copy / "config.json").write_text(json.dumps(config, indent=4))
    fingerprint = model_fingerprint(str(TINY))
    assert fingerprint.startswith("local:")
    assert model_fingerprint(str(copy)) == fingerprint
    monkeypatch.chdir(TINY.parent)
    assert model_fingerprint("tiny-qwen3vl") == fingerprint  # a relative spelling
    assert model_fingerprint("./tiny-qwen3vl/") == fingerprint
    other = _tiny_copy(tmp_path, "other")
    config["text_config"]["rms_norm_eps"] = 1e-5 if config["text_config"].get("rms_norm_eps") != 1e-5 else 1e-6
    (other / "config.json").write_text(json.dumps(config))
    assert model_fingerprint(str(other)) != fingerprint
    assert model_fingerprint("Qwen/Qwen3-VL-Embedding-2B") == "hub:Qwen/Qwen3-VL-Embedding-2B@main"
    assert model_fingerprint("Qwen/Qwen3-VL-Embedding-2B", "abc123").endswith("@abc123")
    # the same model under two spellings: same spec identity, same point ids
    a = CollectionSpec(str(TINY), 8, "i")
    b = CollectionSpec(str(copy), 8, "i")
    assert a.model_id == b.model_id and point_id("k", a) == point_id("k", b)
    b.check(a, "c")  # accepted
    with pytest.raises(CollectionMismatchError):
        CollectionSpec(str(other), 8, "i").check(a, "c")


def _with_changed_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    (weights,) = folder.glob("*.safetensors")
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01  # same names, shapes, dtypes and file size: other numbers
    save_file(tensors, str(weights), metadata={"format": "pt"})


def test_checkpoints_with_other_weights_have_other_fingerprints(tmp_path, monkeypatch):
    """Same architecture, same config, same tensor layout and file sizes, different weights: a different model
    (its vectors are not the first one's, so its collection is not the first one's either)."""
    monkeypatch.setenv("QWEN3VL_RAG_HASH_CACHE", str(tmp_path / "hashes.json"))
    first, second = _tiny_copy(tmp_path, "a"), _tiny_copy(tmp_path, "b")
    assert model_fingerprint(str(first)) == model_fingerprint(str(second))
    _with_changed_weights(second)
    assert model_fingerprint(str(second)).startswith("local:weights:")
    assert model_fingerprint(str(second)) != model_fingerprint(str(first))
    with pytest.raises(CollectionMismatchError, match="cannot be used with"):
        CollectionSpec(str(second), 8, "i").check(CollectionSpec(str(first), 8, "i"), "docs")
    # indexing with the second into the first one's collection is refused (it used to report "already present")
    from retrieval_pipeline import Qwen3VLEmbedder
    from retrieval_pipeline.ingest import Indexer

    store = EdgeStore(tmp_path / "db", "docs")
    report, _ = Indexer(Qwen3VLEmbedder(str(first)), store).index_items(["a cat on a sofa"])
    assert report.indexed == 1
    with pytest.raises(CollectionMismatchError):
        Indexer(Qwen3VLEmbedder(str(second)), store).index_items(["a cat on a sofa"])
    store.close()
    # each weight file is read once: its hash is cached by path, size and modification time
    import json

    cache = json.loads((tmp_path / "hashes.json").read_text())
    assert len(cache) == 2 and all(len(v) == 64 for v in cache.values())


def test_a_collection_made_before_weights_were_hashed_still_opens(tmp_path):
    """Collections record the fingerprint of their time (config and safetensors headers): the same folder still
    opens them, with their point ids (what that fingerprint did not see, it cannot tell apart)."""
    import json
    from dataclasses import replace

    from conftest import TINY

    from retrieval_pipeline.store import legacy_fingerprint

    old = replace(CollectionSpec(str(TINY), 8, "i"), model_id=legacy_fingerprint(str(TINY)))
    assert old.model_id.startswith("local:") and not old.model_id.startswith("local:weights:")
    store = EdgeStore(tmp_path / "db", "old")
    store.open(old)
    store.close()
    reopened = EdgeStore(tmp_path / "db", "old")
    assert reopened.open(CollectionSpec(str(TINY), 8, "i")).model_id == old.model_id  # ids keep their scheme
    reopened.close()
    other = _tiny_copy(tmp_path, "other")  # what the old fingerprint saw (the config) still tells models apart
    config = json.loads((other / "config.json").read_text())
    config["text_config"]["rms_norm_eps"] = 1e-3
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(CollectionMismatchError):
        EdgeStore(tmp_path / "db", "old").open(CollectionSpec(str(other), 8, "i"))


def test_collection_json_has_a_format_and_old_layouts_still_open(tmp_path):
    import json
    import uuid

    from retrieval_pipeline.store import FORMAT, POINT_NAMESPACE

    new = EdgeStore(tmp_path / "db", "new")
    new.open(SPEC)
    new.close()
    meta = json.loads((tmp_path / "db" / "new" / "collection.json").read_text())
    assert meta["format"] == FORMAT >= 1 and meta["model_id"] == "hub:tiny@main" and "model_id" in meta["id_scheme"]

    # a collection written before layouts had a version: ids derive from the model string as typed
    old_spec = CollectionSpec(model="some/model", dim=8, instruction="i", format=0)
    old = EdgeStore(tmp_path / "db", "old")
    old.open(old_spec)
    legacy_id = str(uuid.uuid5(POINT_NAMESPACE, "some/model|8|content-0"))
    assert point_id("content-0", old_spec) == legacy_id
    old.upsert([Point(legacy_id, [1.0] * 8, {"source": "/x", "modality": "text"})])
    old.close()
    path = tmp_path / "db" / "old" / "collection.json"
    path.write_text(json.dumps({"model": "some/model", "dim": 8, "instruction": "i", "distance": "cosine"}))
    reopened = EdgeStore(tmp_path / "db", "old")
    stored = reopened.open(CollectionSpec(model="some/model", dim=8, instruction="i"))
    assert stored.format == 0 and stored.model_id is None
    assert reopened.existing([point_id("content-0", stored)]) == {legacy_id}  # the old id scheme is kept
    reopened.close()

    path.write_text(json.dumps({**meta, "format": FORMAT + 1}))
    with pytest.raises(CollectionMismatchError, match="newer"):
        EdgeStore(tmp_path / "db", "old").open(create=False)

    # an empty (or otherwise unreadable) collection.json was a raw JSONDecodeError
    for text in ("", "{", "[]", json.dumps({"dim": 8})):
        path.write_text(text)
        with pytest.raises(StoreError, match="collection.json"):
            EdgeStore(tmp_path / "db", "old").open(create=False)


def _damage(folder, name: str, keep: float) -> None:
    import os

    matches = [p for p in folder.rglob("*") if p.is_file() and p.as_posix().endswith(name)]
    assert matches, name
    with open(matches[0], "r+b") as fh:
        fh.truncate(int(os.path.getsize(matches[0]) * keep))


@pytest.mark.parametrize(
    "name, keep",
    [
        ("mutable_id_tracker.mappings", 0.5),  # points silently lost: the count disagrees with the last close
        ("vectors/chunk_0.mmap", 0.0),  # vectors gone: reading them back fails
        ("payload_storage/page_0.dat", 0.0),  # payloads gone
        ("vectors/status.dat", 0.0),  # the engine panics while loading
    ],
)
def test_damaged_edge_store_is_a_store_error(tmp_path, name, keep):
    store = EdgeStore(tmp_path / "db", "c")
    store.open(SPEC)
    points = _points(600)
    for start in range(0, 600, 100):
        store.upsert(points[start : start + 100])
    store.close()
    EdgeStore(tmp_path / "db", "c").close()  # a second clean open/close, as after a few runs
    _damage(tmp_path / "db" / "c" / "shard", name, keep)
    damaged = EdgeStore(tmp_path / "db", "c")
    with pytest.raises(StoreError, match=r"is damaged .*--rebuild"):
        damaged.open(create=False)
        damaged.verify()
    damaged.close()
    damaged.drop()  # the way out: rebuild from scratch
    fresh = EdgeStore(tmp_path / "db", "c")
    fresh.open(SPEC)
    fresh.upsert(points[:3])
    assert fresh.verify() == {"points": 3, "sampled": 3}
    fresh.close()


_CREATE = """
import os, sys, time
import retrieval_pipeline.store as store_module  # torch-free: starts in a fraction of a second
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
store = store_module.EdgeStore(sys.argv[1], "c")
try:
    store.open(store_module.CollectionSpec("tiny", 8, "i"))
    time.sleep(0.3)
    print("created-or-opened")
except store_module.StoreError as exc:
    print("store-error:", exc)
finally:
    store.close()
"""


@pytest.mark.slow
def test_concurrent_creation_of_a_new_db_never_crashes(tmp_path):
    import subprocess
    import sys

    for round_ in range(3):
        db, go = tmp_path / f"db{round_}", tmp_path / f"go{round_}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CREATE, str(db), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(3)
        ]
        for p in procs:
            assert p.stdout.readline().strip() == b"ready"
        go.touch()  # all at once
        outs = [(p.communicate(timeout=120), p.returncode) for p in procs]
        for (out, err), code in outs:
            assert code == 0 and "Traceback" not in err.decode(), err.decode()
            assert out.decode().startswith(("created-or-opened", "store-error:")), out
        assert any(out.decode().startswith("created-or-opened") for (out, _), _ in outs)
        store = EdgeStore(db, "c")
        assert store.open(create=False).dim == 8 and store.verify()["points"] == 0
        store.close()


def test_a_second_store_object_in_this_process_is_named_as_such(tmp_path):
    first, second = EdgeStore(tmp_path / "db", "docs"), EdgeStore(tmp_path / "db", "docs")
    first.open(SPEC)
    with pytest.raises(StoreError, match="another store object of this process has it open"):
        second.open(SPEC)
    first.close()
    assert second.open(SPEC) == first.spec  # free once the first is closed
    with pytest.raises(ValueError, match="the list of values is empty"):
        second.search([0.0] * 8, limit=1, filters={"modality": []})
    second.close()
