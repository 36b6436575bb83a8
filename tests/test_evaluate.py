"""`qwen3vl-rag eval`: the IR metrics on judged queries, checked against values computed here by hand.

The tiny checkpoints are random: the numbers prove the machinery (loading, id mapping, metrics, reranking depth,
outputs), not the model's quality."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from helpers.cli import CORPUS, main_here

from retrieval_pipeline.errors import InputError
from retrieval_pipeline.evaluate import (
    Dataset,
    document_keys,
    evaluate,
    index_dataset,
    load_beir,
    load_vidore,
    read_qrels,
    read_queries,
)
from retrieval_pipeline.ingest import Indexer
from retrieval_pipeline.retriever import TwoStageRetriever
from retrieval_pipeline.store import EdgeStore

ROOT = Path(__file__).resolve().parents[1]
BEIR = ROOT / "examples" / "eval"


# --- the metrics, written out here (trec_eval's definitions: linear gain, rel > 0 is relevant) ---------------------


def ndcg(ranking, rel, k):
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    ideal = sorted((g for g in rel.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg


def recall(ranking, rel, k):
    relevant = {d for d, g in rel.items() if g > 0}
    return len(relevant & set(ranking[:k])) / len(relevant)


def rr(ranking, rel, k):
    return next((1 / (i + 1) for i, d in enumerate(ranking[:k]) if rel.get(d, 0) > 0), 0.0)


def ap(ranking, rel):
    relevant = {d for d, g in rel.items() if g > 0}
    hits, total = 0, 0.0
    for i, d in enumerate(ranking):
        if d in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / len(relevant)


@pytest.fixture()
def beir_store(embedder, tmp_path):
    store = EdgeStore(tmp_path / "db", "beir")
    report = index_dataset(Indexer(embedder, store), load_beir(BEIR), show_progress_bar=False)
    assert report.indexed == 10 and not report.failed
    yield store
    store.close()


def test_metrics_equal_the_definitions_and_reranking_moves_them_as_judged(embedder, reranker, beir_store):
    dataset = load_beir(BEIR)
    retriever = TwoStageRetriever(embedder, beir_store, reranker)
    with pytest.raises(ValueError, match="each must be a Matryoshka dimension from 1 to the collection's 64"):
        evaluate(retriever, dataset, k=5, dims=[16, 999], show_progress_bar=False)  # was dropped silently
    report = evaluate(retriever, dataset, k=5, dims=[16, 32], rerank_depths=[3, 10], show_progress_bar=False)
    configs = [r["config"] for r in report.rows]
    assert configs == ["stage one", "exact 16-d", "exact 32-d", "exact 64-d", "rerank top-3", "rerank top-10"]
    assert not report.unknown and not report.unjudged
    for row in report.rows:
        by_hand = {"nDCG@5": [], "R@5": [], "RR@5": [], "AP": []}
        for qid, data in report.per_query.items():
            ranking, rel = data["rankings"][row["config"]], dataset.qrels[qid]
            full = data["rankings"][row["config"]]
            by_hand["nDCG@5"].append(ndcg(ranking, rel, 5))
            by_hand["R@5"].append(recall(ranking, rel, 5))
            by_hand["RR@5"].append(rr(ranking, rel, 5))
            assert data["metrics"][row["config"]]["nDCG@5"] == pytest.approx(ndcg(ranking, rel, 5), abs=1e-6)
            assert data["metrics"][row["config"]]["RR@5"] == pytest.approx(rr(ranking, rel, 5), abs=1e-6)
            by_hand["AP"].append(data["metrics"][row["config"]]["AP"])
            if all(d in full for d in rel):  # every relevant document within the shown ranking: AP is exact here
                assert data["metrics"][row["config"]]["AP"] == pytest.approx(ap(full, rel), abs=1e-6)
        for name, values in by_hand.items():
            assert row[name] == pytest.approx(sum(values) / len(values), abs=1e-6), (row["config"], name)

    # the reranked rows are stage one's candidates ordered by the reranker's own scores, and the metrics follow
    for qid, data in report.per_query.items():
        stage_one = data["rankings"]["stage one"]
        query = dataset.queries[qid]
        docs = [dataset.corpus[d] for d in stage_one[:3]]
        scores = reranker.score(query, docs)
        expected = [stage_one[i] for i in sorted(range(len(docs)), key=lambda i: -scores[i])] + stage_one[3:]
        assert data["rankings"]["rerank top-3"] == expected[:5]
        assert data["metrics"]["rerank top-3"]["nDCG@5"] == pytest.approx(
            ndcg(expected, dataset.qrels[qid], 5), abs=1e-5
        )
    moved = [q for q, d in report.per_query.items() if d["rankings"]["rerank top-3"] != d["rankings"]["stage one"]]
    assert moved, "the reranker reordered nothing: the test proves nothing"
    assert report.latency_ms["rerank"]["mean"] > 0 and report.latency_ms["embed query"]["mean"] > 0


def test_a_judgement_naming_nothing_is_reported(embedder, beir_store):
    dataset = load_beir(BEIR)
    dataset.qrels["q1"]["d-does-not-exist"] = 1
    dataset.queries["q-extra"] = "a query nobody judged"
    report = evaluate(TwoStageRetriever(embedder, beir_store), dataset, show_progress_bar=False)
    assert report.unknown == [("q1", "d-does-not-exist")]
    assert report.unjudged == ["q-extra"]
    assert "1 judgements name nothing in the collection: q1->d-does-not-exist" in report.table()
    assert report.to_dict()["unknown_judgements"] == [{"query_id": "q1", "doc_id": "d-does-not-exist"}]
    assert [r["config"] for r in report.rows] == ["stage one", "exact 64-d"]  # no reranker: stage one alone


def test_folder_indexed_items_answer_to_file_page_and_chunk_ids(tmp_path):
    base = {"source": "/data/docs/report.pdf", "page": 2, "modality": "pdf-page"}
    assert document_keys(base, Path("/data")) == [
        "/data/docs/report.pdf#page=2",
        "docs/report.pdf#page=2",
        "report.pdf#page=2",
        "/data/docs/report.pdf",
        "docs/report.pdf",
        "report.pdf",
    ]
    assert document_keys({"source": "/v/clip.mp4", "segment": [10.0, 20.0]})[0] == "/v/clip.mp4#t=10"
    assert document_keys({"source": "/t/notes.md", "chunk": 0})[0] == "/t/notes.md#chunk=0"
    assert document_keys({"source": "/x.jpg", "metadata": {"corpus_id": "doc-7"}}) == ["doc-7"]


@pytest.mark.slow
def test_cli_eval_on_a_folder_and_every_output(tmp_path, models_env, corpus_db, capsys, monkeypatch):
    """The command in this process: its tables, files, JSON and usage errors are the point."""
    for key, value in models_env.items():
        monkeypatch.setenv(key, value)
    db = corpus_db  # the example corpus, indexed by `qwen3vl-rag index` once per session
    (tmp_path / "queries.jsonl").write_text(
        "\n".join(json.dumps(q) for q in [{"_id": "a", "text": "a cat"}, {"_id": "b", "text": "revenue by quarter"}])
    )
    (tmp_path / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\na\tchelsea.jpg\t1\nb\tannual_report.pdf#page=1\t2\nb\tnotes.md\t1\nb\tgone.pdf\t1\n"
    )
    plot, per_query = tmp_path / "quality.png", tmp_path / "per_query.jsonl"
    args = ["eval", "--queries", str(tmp_path / "queries.jsonl"), "--qrels", str(tmp_path / "qrels.tsv")]
    args += ["--dims", "16,32", "--rerank-depths", "2,5", "--plot", str(plot), "--per-query", str(per_query)]
    code, out, err = main_here(capsys, monkeypatch, *args, db=db)
    assert code == 0, err
    assert "| stage one |" in out and "| exact 16-d |" in out and "| rerank top-5 |" in out
    assert "b->gone.pdf" in out  # the judgement that names nothing is reported
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(line) for line in per_query.read_text().splitlines()]
    assert {x["query_id"] for x in lines} == {"a", "b"} and "rerank top-2" in lines[0]["metrics"]
    as_json = json.loads(main_here(capsys, monkeypatch, *args, "--json", db=db)[1])
    assert {r["config"] for r in as_json["rows"]} >= {"stage one", "exact 32-d", "rerank top-2"}
    assert as_json["unknown_judgements"] == [{"query_id": "b", "doc_id": "gone.pdf"}]
    assert set(as_json["latency_ms"]) == {"embed query", "vector search", "exact search", "rerank"}
    code, _, err = main_here(capsys, monkeypatch, "eval", "--queries", str(tmp_path / "queries.jsonl"), db=db)
    assert code != 0 and "eval needs --queries and --qrels" in err
    for extra, message in (
        (["--k", "0"], "--k: must be at least 1"),
        (["--plot", "/no/such/dir/x.png"], "does not exist"),
        (["--per-query", str(tmp_path)], "is a folder; give a file name"),
    ):
        code, _, err = main_here(capsys, monkeypatch, *args[:5], *extra, db=db)
        assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.slow
def test_vidore_parquet_layout_and_beir_cli(tmp_path, models_env, capsys, monkeypatch):
    """The commands in this process (what they index and report is the point)."""
    import pyarrow as pa  # a dev dependency (the [eval] extra)
    import pyarrow.parquet as pq

    folder = tmp_path / "vidore"
    (folder / "corpus").mkdir(parents=True)
    images = [ROOT / "examples" / "corpus" / n for n in ("chelsea.jpg", "rocket.jpg", "report_page.png")]
    corpus = pa.table(
        {
            "corpus-id": ["c0", "c1", "c2"],
            "image": [{"bytes": p.read_bytes(), "path": p.name} for p in images],
        }
    )
    pq.write_table(corpus, folder / "corpus" / "test-00000.parquet")
    pq.write_table(pa.table({"query-id": ["q0", "q1"], "query": ["a cat", "a rocket"]}), folder / "queries.parquet")
    pq.write_table(
        pa.table({"query-id": ["q0", "q1"], "corpus-id": ["c0", "c1"], "score": [1, 1]}), folder / "qrels.parquet"
    )
    dataset = load_vidore(folder)
    assert set(dataset.corpus) == {"c0", "c1", "c2"} and dataset.qrels == {"q0": {"c0": 1}, "q1": {"c1": 1}}
    assert Path(dataset.corpus["c0"]["image"]).read_bytes() == images[0].read_bytes()
    assert load_vidore(folder).corpus == dataset.corpus  # inline images are named by content: the same paths
    db = tmp_path / "db"
    for key, value in models_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # by a relative path, twice: the same 3 points (not 3 more each run), no failures
        code, out, err = main_here(capsys, monkeypatch, "index", "--vidore", "vidore", "--json", db=db)
        assert code == 0, err
        assert json.loads(out)["failed"] == []
    assert json.loads(out)["present"] == 3 and len(list((folder / ".images").iterdir())) == 3
    code, out, err = main_here(capsys, monkeypatch, "eval", "--vidore", str(folder), "--no-rerank", "--json", db=db)
    assert code == 0, err
    assert json.loads(out)["unknown_judgements"] == []

    beir = tmp_path / "beir"
    shutil.copytree(BEIR, beir)
    for line in (beir / "corpus.jsonl").read_text().splitlines():  # relative media paths resolve from the folder
        row = json.loads(line)
        if "image" in row:
            shutil.copy(BEIR / row["image"], beir / Path(row["image"]).name)
    (beir / "corpus.jsonl").write_text((beir / "corpus.jsonl").read_text().replace("../corpus/", ""))
    assert main_here(capsys, monkeypatch, "index", "--beir", str(beir), "-q", db=tmp_path / "db2")[0] == 0
    code, out, _ = main_here(
        capsys, monkeypatch, "eval", "--beir", str(beir), "--rerank-depths", "3", db=tmp_path / "db2"
    )
    assert code == 0 and "| rerank top-3 |" in out


def test_qrels_formats(tmp_path):
    (tmp_path / "trec.txt").write_text("q1 0 d1 1\nq1 0 d2 0\nq2 0 d3 2\n")
    assert read_qrels(tmp_path / "trec.txt") == {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    (tmp_path / "q.json").write_text(json.dumps({"q1": {"d1": 1}}))
    assert read_qrels(tmp_path / "q.json") == {"q1": {"d1": 1}}
    (tmp_path / "bad.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(InputError, match="expected 'query-id corpus-id score'"):
        read_qrels(tmp_path / "bad.tsv")
    # hostile or broken judgement files: a clear error naming the file, never a traceback or NaN metrics
    cases = {
        "only.tsv": ("q1\tnotes.md\n", "expected 'query-id corpus-id score'"),  # a lone malformed line is no header
        "empty.tsv": ("", "no judgements"),
        "big.tsv": ("q1 notes.md 99999999999999999999999999\n", "out of range"),
        "list.json": ('{"q1": ["a"]}', "expected"),
        "grade.json": ('{"q1": {"a": "high"}}', "not an integer"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=message):
            read_qrels(tmp_path / name)
    with pytest.raises(InputError, match="cannot read"):
        read_qrels(tmp_path / "missing.tsv")
    with pytest.raises(InputError, match="cannot read"):
        read_qrels(tmp_path)  # a folder
    (tmp_path / "noid.jsonl").write_text('{"text": "a query without an id"}\n')
    with pytest.raises(InputError, match="noid.jsonl:1: the row has no '_id'"):
        read_queries(tmp_path / "noid.jsonl")
    (tmp_path / "none.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no queries"):
        read_queries(tmp_path / "none.jsonl")
    assert Dataset({}, {}).corpus == {}


def test_malformed_dataset_rows_are_one_clear_error_naming_file_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def vidore(corpus, queries, qrels):
        folder = tmp_path / f"v{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        pq.write_table(pa.table(corpus), folder / "corpus.parquet")
        pq.write_table(pa.table(queries), folder / "queries.parquet")
        pq.write_table(pa.table(qrels), folder / "qrels.parquet")
        return folder

    image = {"bytes": (CORPUS / "chelsea.jpg").read_bytes(), "path": "c.jpg"}
    good_corpus, good_queries = {"corpus-id": ["c0"], "image": [image]}, {"query-id": ["q0"], "query": ["a cat"]}
    good_qrels = {"query-id": ["q0"], "corpus-id": ["c0"], "score": [1]}
    for tables, said in (
        (({"image": [image]}, good_queries, good_qrels), "corpus row 1: no 'corpus-id'"),
        ((good_corpus, {"query-id": ["q0"]}, good_qrels), "queries row 1: no 'query' text"),
        ((good_corpus, good_queries, {"query-id": ["q0"], "corpus-id": ["c0"], "score": [None]}), "score is null"),
        ((good_corpus, good_queries, {"query-id": ["q0"], "corpus-id": ["c0"], "score": [1.5]}), "not an integer"),
    ):
        with pytest.raises(InputError, match=said):
            load_vidore(vidore(*tables))
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": ["a", "list"], "text": "t"}) + "\n")
    with pytest.raises(InputError, match=r"corpus.jsonl: row 1 \('d1'\): title must be a string, got list"):
        load_beir(beir, judged=False)
