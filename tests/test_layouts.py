"""Vector layouts at scale: quantization, the Matryoshka funnel, BM25 hybrid, the layout recorded in the spec.

Qdrant Edge quantizes and builds its HNSW graph only in optimized segments above the indexing threshold: every
test here creates its collection with the threshold lowered (1 KB) and builds the index, so what is measured is
the quantized / indexed search, not a plain scan. qdrant-client's local mode (the server backend's tests) ignores
quantization and the optimizer: there the configuration objects sent to a server are checked, and the searches
(named vectors, prefetch, RRF) run for real.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.cli import main_here

from retrieval_pipeline.errors import CollectionMismatchError
from retrieval_pipeline.layout import LEGACY, SearchOptions, VectorLayout, query_plan
from retrieval_pipeline.store import (
    FORMAT,
    CollectionSpec,
    EdgeStore,
    Point,
    ServerStore,
    point_id,
)
from retrieval_pipeline.store.server import bulk_load_diff, server_collection_config, server_query

DIM = 64
N = 3000


def clustered(n: int, dim: int, seed: int = 3) -> np.ndarray:
    """Unit vectors around 30 centres, with a Matryoshka-like spectrum (the leading dimensions carry most)."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(1.0 + np.arange(dim) / 8.0)
    centres = rng.standard_normal((30, dim)) * scale
    x = centres[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, dim)) * scale
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def near(vectors: np.ndarray, n: int, seed: int = 11) -> np.ndarray:
    """Queries close to stored items (as real queries are to their answers): an item plus a little noise."""
    rng = np.random.default_rng(seed)
    q = vectors[rng.integers(0, len(vectors), n)] + 0.02 * rng.standard_normal((n, vectors.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def spec_for(layout: VectorLayout, dim: int = DIM) -> CollectionSpec:
    return CollectionSpec("tiny", dim, "i", layout=layout)


def build(tmp_path, layout: VectorLayout, vectors: np.ndarray, texts: list[str] | None = None) -> EdgeStore:
    store = EdgeStore(tmp_path / layout_name(layout), "c", indexing_threshold_kb=1)
    spec = spec_for(layout, vectors.shape[1])
    store.open(spec)
    points = [
        Point(
            point_id(str(i), spec),
            v.tolist(),
            {"modality": "image" if i % 10 == 0 else "text", "text": texts[i] if texts else "", "i": i},
        )
        for i, v in enumerate(vectors)
    ]
    for start in range(0, len(points), 500):
        store.upsert(points[start : start + 500])
    assert store.build_index()
    return store


def layout_name(layout: VectorLayout) -> str:
    return f"{layout.quantization}-{layout.prefix_dim}-{int(layout.hybrid)}-{int(layout.on_disk)}"


def ids(hits) -> list[int]:
    return [h.payload["i"] for h in hits]


QUANTIZED = [  # binary codes are for high dimensions (1 bit each): 512-d here, 64-d for the others
    (VectorLayout(quantization="int8", hybrid=False, on_disk=True), DIM),
    (VectorLayout(quantization="binary", hybrid=False, on_disk=True), 512),
    (VectorLayout(quantization="int8", prefix_dim=32, hybrid=False, on_disk=True), DIM),
]


@pytest.mark.parametrize(("layout", "dim"), QUANTIZED, ids=["int8", "binary", "funnel-int8"])
def test_quantized_layouts_are_active_and_rescoring_restores_exact_search(tmp_path, layout, dim):
    vectors = clustered(N, dim)
    store = build(tmp_path, layout, vectors)
    status = store.index_status()
    indexed = status["vectors"]["prefix" if layout.prefix_dim else "dense"]
    assert indexed["indexed"] == indexed["held"] == N
    assert layout.quantization in indexed["kind"]
    queries = near(vectors, 20)
    # one bit per dimension ranks coarsely (benchmarks/bench_million.py): binary needs many more candidates
    oversampling = {"oversampling": 40.0} if layout.quantization == "binary" else {}
    differs = 0
    for q in queries:
        exact = store.search(q.tolist(), limit=5, options={"exact": True})
        rescored = store.search(q.tolist(), limit=5, options=oversampling)
        raw = store.search(q.tolist(), limit=5, options={"rescore": False})
        assert ids(rescored) == ids(exact)  # rescoring on the originals: the exact top hits, in order
        assert [h.score for h in rescored] == pytest.approx([h.score for h in exact], abs=1e-5)
        # without rescoring the scores are the quantized ones (or the prefix's): not the exact cosine
        differs += any(abs(a.score - b.score) > 1e-3 for a, b in zip(raw, exact))
    assert differs >= 15, f"only {differs} of 20 searches without rescoring differ from exact search"
    store.close()


def test_funnel_runs_two_stages_prefix_then_full_vector(tmp_path):
    """A crafted case: the document that matches the query's first 4 dimensions best is wrong on the rest; the
    prefix alone ranks it first, the second stage (the full vector) puts the right one first."""
    dim, prefix = 16, 4
    rng = np.random.default_rng(0)
    query = np.array([1, 0, 0, 0] + [1] * 12, dtype=np.float32)
    decoy = np.array([1, 0, 0, 0] + [-1] * 12, dtype=np.float32)  # perfect prefix, opposite elsewhere
    right = np.array([0.9, 0.3, 0, 0] + [1] * 12, dtype=np.float32)  # slightly worse prefix, right overall
    noise = rng.standard_normal((600, dim)).astype(np.float32)
    noise[:, :prefix] -= 3.0  # far from the query in the prefix too
    vectors = np.vstack([decoy, right, noise])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    layout = VectorLayout(quantization="none", prefix_dim=prefix, hybrid=False)
    store = build(tmp_path, layout, vectors)
    assert store.explain(limit=2) == ["prefix[4] -> 200", "dense[16] -> 2"]
    assert ids(store.search(query.tolist(), limit=2, options={"rescore": False}))[0] == 0  # stage one alone
    assert ids(store.search(query.tolist(), limit=2))[0] == 1  # both stages: the full vector ranks it first
    # a prefetch too shallow to hold the right document cannot be fixed by the second stage
    assert 1 not in ids(store.search(query.tolist(), limit=1, options={"prefetch": 1}))
    status = store.index_status()
    assert status["vectors"]["dense"]["held"] == status["vectors"]["prefix"]["held"] == len(vectors)
    assert "no graph" in status["vectors"]["dense"]["kind"]
    store.close()


PARTS = "The replacement valve carries part number XK-4471-B and fits the 2019 pump."


def test_hybrid_finds_an_exact_term_that_dense_search_misses(tmp_path):
    vectors = clustered(400, DIM)
    texts = [f"maintenance note {i} about pumps and general upkeep" for i in range(400)]
    texts[123] = PARTS
    store = build(tmp_path, VectorLayout(hybrid=True), vectors, texts)
    query = (-vectors[123] + 0.01).tolist()  # as far from the part's vector as it gets: dense search misses it
    dense = store.search(query, limit=5, text="XK-4471-B", options={"hybrid": False})
    assert 123 not in ids(dense)
    hybrid = store.search(query, limit=5, text="XK-4471-B")
    assert 123 in ids(hybrid)
    assert store.explain(limit=5, text="XK-4471-B")[-1].startswith("rrf")
    assert store.search(query, limit=5, text="") == store.search(query, limit=5)  # no words: dense alone
    status = store.index_status()
    assert status["vectors"]["bm25"]["held"] == 400 and status["vectors"]["bm25"]["indexed"] == 400
    store.close()


def test_hybrid_prefetches_both_lists_deeper_than_the_answer(tmp_path):
    """Issue 28: cut to ``top_k`` each, the dense and BM25 lists tie their first items in RRF (a coin toss); prefetched
    deeper, an item that both lists find (its exact part number, fairly close in meaning) comes first at every
    ``top_k``, for every one of twelve such items."""
    vectors = clustered(400, DIM)
    texts = [f"maintenance note {i} about pumps and general upkeep" for i in range(400)]
    targets = list(range(20, 380, 30))
    for t in targets:
        texts[t] = f"The replacement valve carries part number QZ{t}X7 and fits the 2019 pump."
    store = build(tmp_path, VectorLayout(hybrid=True), vectors, texts)
    assert store.explain(limit=3, text="XK-4471-B")[-3:] == ["dense[64] -> 50", "bm25[2] -> 50", "rrf(k=60) -> 3"]
    for t in targets:
        # a query vector between another item and the target, for which the target is 5th to 40th in the dense list
        for weight in np.linspace(0.0, 1.0, 201):
            q = (1 - weight) * vectors[(t + 7) % 400] + weight * vectors[t]
            q /= np.linalg.norm(q)
            if 5 <= int(np.sum(vectors @ q > vectors[t] @ q)) < 40:
                break
        else:
            pytest.fail(f"no query with item {t} between 5th and 40th in the dense list")
        assert t not in ids(store.search(q.tolist(), limit=3, options={"hybrid": False}))
        for top_k in (1, 3, 10):
            assert ids(store.search(q.tolist(), limit=top_k, text=f"QZ{t}X7"))[0] == t, (t, top_k)
    store.close()


@pytest.mark.slow
def test_hybrid_through_the_cli_on_a_real_corpus(tmp_path, models_env, capsys, monkeypatch):
    """End to end with the tiny model, the command in this process: a text that only BM25 can single out (an
    invented part number) is found."""
    for key, value in models_env.items():
        monkeypatch.setenv(key, value)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"note{i}.txt").write_text(f"Routine maintenance log {i}: the pumps were checked and cleaned.")
    (corpus / "parts.txt").write_text(PARTS)
    db = tmp_path / "db"
    code, _, err = main_here(capsys, monkeypatch, "index", str(corpus), db=db)
    assert code == 0, err
    assert "BM25 hybrid" in err and "the default for" in err  # the CLI says what it chose
    args = ("search", "XK-4471-B", "--no-rerank", "--top-k", "3", "--json")
    code, out, err = main_here(capsys, monkeypatch, *args, db=db)
    assert code == 0, err
    assert "parts.txt" in [r["source"].rsplit("/", 1)[-1] for r in json.loads(out)]
    info = json.loads(main_here(capsys, monkeypatch, "info", "--json", db=db)[1])
    assert info["spec"]["layout"]["hybrid"] and "rrf" in info["search"]
    # a layout asked for that is not the collection's is refused, naming the difference
    code, _, err = main_here(capsys, monkeypatch, "index", str(corpus), "--no-hybrid", db=db)
    assert code != 0 and "hybrid True (asked: False)" in err


def test_a_collection_refuses_another_layout_and_old_collections_keep_working(tmp_path):
    store = EdgeStore(tmp_path / "db", "c")
    store.open(spec_for(VectorLayout(quantization="int8", hybrid=False)))
    store.close()
    again = EdgeStore(tmp_path / "db", "c")
    with pytest.raises(CollectionMismatchError, match="quantization 'int8' \\(asked: 'binary'\\)"):
        again.open(spec_for(VectorLayout(quantization="binary", hybrid=False)))
    assert again.open(spec_for(None)).layout.quantization == "int8"  # no layout asked: the collection's own
    again.close()

    # a collection written before layouts: no "layout" in collection.json, one unnamed vector
    old = EdgeStore(tmp_path / "db", "old")
    old.open(CollectionSpec("tiny", DIM, "i", format=1))
    vectors = clustered(50, DIM)
    old.upsert([Point(point_id(str(i), old.spec), v.tolist(), {"i": i}) for i, v in enumerate(vectors)])
    old.close()
    meta = json.loads((tmp_path / "db" / "old" / "collection.json").read_text())
    assert meta["format"] == 1 and meta["layout"] == LEGACY.to_dict()
    meta.pop("layout")  # exactly what an older version wrote
    (tmp_path / "db" / "old" / "collection.json").write_text(json.dumps(meta))
    reopened = EdgeStore(tmp_path / "db", "old")
    spec = reopened.open(CollectionSpec("tiny", DIM, "i"))
    assert spec.layout == LEGACY and not spec.vectors.named
    assert ids(reopened.search(vectors[7].tolist(), limit=1, text="anything")) == [7]  # no BM25: dense alone
    assert len(reopened._vectors([point_id("7", spec)])[point_id("7", spec)]) == DIM
    with pytest.raises(ValueError, match="no BM25"):
        reopened.search(vectors[7].tolist(), limit=1, options={"hybrid": True})
    reopened.close()
    assert FORMAT == 2


def test_default_layout_follows_the_dimension_and_options_override_it():
    assert VectorLayout.choose(2048) == VectorLayout(quantization="int8", prefix_dim=256, hybrid=True, on_disk=True)
    assert VectorLayout.choose(64) == VectorLayout(quantization="none", prefix_dim=0, hybrid=True, on_disk=False)
    assert VectorLayout.choose(2048, prefix_dim=0, quantization="binary").prefix_dim == 0
    with pytest.raises(ValueError, match="shorter than the vectors"):
        VectorLayout.choose(128, prefix_dim=256)
    with pytest.raises(ValueError, match="quantization"):
        VectorLayout(quantization="int4")
    with pytest.raises(ValueError, match="oversampling"):
        SearchOptions(oversampling=0.5)
    with pytest.raises(ValueError, match="unknown search options"):
        SearchOptions.from_mapping({"ef": 3})


def test_server_backend_configuration_objects():
    """What a real server is sent: local mode accepts these and ignores quantization, m and on_disk."""
    from qdrant_client import models

    funnel = spec_for(VectorLayout.choose(2048), 2048)
    config = server_collection_config(funnel, shard_number=6, replication_factor=2)
    dense, prefix = config["vectors_config"]["dense"], config["vectors_config"]["prefix"]
    assert dense.size == 2048 and dense.on_disk and dense.hnsw_config.m == 0 and dense.quantization_config is None
    assert prefix.size == 256 and prefix.on_disk
    assert (
        prefix.quantization_config.scalar.type == models.ScalarType.INT8
        and prefix.quantization_config.scalar.always_ram
    )
    assert config["sparse_vectors_config"]["bm25"].modifier == models.Modifier.IDF
    assert config["shard_number"] == 6 and config["replication_factor"] == 2 and config["hnsw_config"].m == 16
    assert config["metadata"]["layout"]["prefix_dim"] == 256
    binary = server_collection_config(spec_for(VectorLayout(quantization="binary", hybrid=False), 2048))
    codes = binary["vectors_config"]["dense"].quantization_config.binary
    assert codes.always_ram and codes.query_encoding == models.BinaryQuantizationQueryEncoding.SCALAR8BITS
    assert binary["sparse_vectors_config"] is None
    legacy = server_collection_config(CollectionSpec("tiny", 8, "i", format=1).resolved())
    assert isinstance(legacy["vectors_config"], models.VectorParams)  # unnamed, as before layouts
    assert bulk_load_diff(True)["hnsw_config"].m == 0 and bulk_load_diff(False, 24)["hnsw_config"].m == 24

    plan = query_plan(funnel.layout, [0.1] * 2048, 20, SearchOptions(hnsw_ef=64, oversampling=3.0), text="XK-4471")
    request = server_query(plan, None)
    assert isinstance(request["query"], models.RrfQuery)
    funnel_stage, keyword = request["prefetch"]
    assert funnel_stage.using == "dense" and keyword.using == "bm25" and keyword.query.indices
    first = funnel_stage.prefetch[0]
    assert first.using == "prefix" and len(first.query) == 256 and first.limit == 400  # 20 per result
    assert first.params.hnsw_ef == 64 and first.params.quantization.oversampling == 3.0
    assert first.params.quantization.rescore is False  # the full vector rescores next


def test_server_backend_runs_the_layout_and_push_copies_it(tmp_path):
    vectors = clustered(300, DIM)
    texts = [f"note {i}" for i in range(300)]
    texts[42] = PARTS
    edge = build(tmp_path, VectorLayout(quantization="int8", prefix_dim=16, hybrid=True, on_disk=True), vectors, texts)
    server = ServerStore(path=str(tmp_path / "local"), collection="pushed")
    assert edge.push_to(server) == 300
    assert server.spec.layout == edge.spec.layout
    stored = server.client.get_collection("pushed").config.params
    assert set(stored.vectors) == {"dense", "prefix"} and set(stored.sparse_vectors) == {"bm25"}
    query = (-vectors[42] + 0.01).tolist()
    assert 42 in ids(server.search(query, limit=5, text="XK-4471-B"))
    assert 42 not in ids(server.search(query, limit=5, text="XK-4471-B", options={"hybrid": False}))
    assert ids(server.search(vectors[5].tolist(), limit=3)) == ids(edge.search(vectors[5].tolist(), limit=3))
    # a layout given at push time replaces the source's
    other = ServerStore(path=str(tmp_path / "local2"), collection="float")
    edge.push_to(other, layout=VectorLayout(hybrid=False))
    assert set(other.client.get_collection("float").config.params.vectors) == {"dense"}
    for s in (edge, server, other):
        s.close()
