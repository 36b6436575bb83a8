"""End to end on tiny checkpoints, on both store backends: ingestion, two-stage retrieval, generation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import MEDIA, TINY

from retrieval_pipeline import InputError
from retrieval_pipeline.ingest import Indexer, IndexReport, IngestOptions, chunk_text
from retrieval_pipeline.models.generator import Answer, Qwen3VLGenerator
from retrieval_pipeline.pipeline import RAGPipeline
from retrieval_pipeline.records import item_for
from retrieval_pipeline.retriever import TwoStageRetriever
from retrieval_pipeline.store import CollectionMismatchError, EdgeStore, ServerStore
from retrieval_pipeline.testing import make_text_pdf

NOTES = (
    "Revenue grew twelve percent in the third quarter, driven by the cloud business. "
    "Costs stayed flat, so the operating margin rose.\n\n" + "The office cat sleeps on the red sofa. " * 40
)


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(MEDIA / "chelsea.jpg", folder / "chelsea.jpg")
    shutil.copy(MEDIA / "report_page.png", folder / "sub" / "report_page.png")
    shutil.copy(MEDIA / "moving_square.mp4", folder / "clip.mp4")
    (folder / "notes.md").write_text(NOTES)
    make_text_pdf(folder / "report.pdf", ["Quarterly revenue by region.", "Outlook for next year: growth."])
    return folder


def make_store(kind, tmp_path, collection="docs"):
    return (
        EdgeStore(tmp_path / "db", collection)
        if kind == "edge"
        else ServerStore(path=str(tmp_path / "qdrant-local"), collection=collection)
    )


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    s = make_store(request.param, tmp_path)
    yield s
    s.close()


def test_index_folder_every_modality(embedder, store, corpus):
    report = Indexer(embedder, store).index_paths([corpus], show_progress_bar=False)
    assert report.failed == [] and report.skipped == []
    assert report.files == 5
    n_chunks = len(chunk_text(NOTES))
    assert n_chunks >= 2
    assert report.indexed == 1 + 1 + 1 + n_chunks + 2
    assert store.count({"modality": "image"}) == 2
    assert store.count({"modality": "video"}) == 1
    assert store.count({"modality": "text"}) == n_chunks
    assert store.count({"modality": "pdf-page"}) == 2
    pages = {
        p.payload["page"]: p.payload for p in store.scroll(with_vectors=False) if p.payload["modality"] == "pdf-page"
    }
    assert pages[1]["text"] == "Quarterly revenue by region."
    assert pages[2]["text"] == "Outlook for next year: growth."
    assert store.info()["spec"]["model"] == str(TINY)


def test_search_finds_each_item_by_its_own_content(embedder, store, corpus):
    indexer = Indexer(embedder, store)
    indexer.index_paths([corpus], show_progress_bar=False)
    # the query instruction = the document instruction: the stored item's own vector comes back first
    retriever = TwoStageRetriever(embedder, store, query_instruction=indexer.instruction)
    for point in store.scroll(with_vectors=False):
        item = item_for(point.payload)
        hits = retriever.retrieve(item, top_k=3, search_options={"hybrid": False})  # the dense search alone
        assert hits[0].id == point.id, point.payload["modality"]
        assert hits[0].vector_score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].rank == 1 and hits[0].rerank_score is None
        # hybrid (the default): the item's words also search the BM25 vectors; the fused list still holds it
        fused = retriever.retrieve(item, top_k=3)
        assert point.id in [h.id for h in fused]
        if not point.payload.get("text"):  # no words: the dense search alone, cosine scores
            assert fused[0].id == point.id and fused[0].vector_score == pytest.approx(1.0, abs=1e-4)


def test_rerank_reorders_with_the_reranker_scores(embedder, reranker, store, corpus):
    Indexer(embedder, store).index_paths([corpus], show_progress_bar=False)
    retriever = TwoStageRetriever(embedder, store, reranker, candidates=20)
    query = "the revenue chart"
    stage_one = retriever.retrieve(query, top_k=20, rerank=False)
    hits = retriever.retrieve(query, top_k=20)
    assert len(hits) == len(stage_one) == store.count()
    scores = [h.rerank_score for h in hits]
    assert scores == sorted(scores, reverse=True)
    direct = reranker.score(query, [h.item for h in hits])
    assert np.allclose(scores, direct, atol=1e-6)
    by_id = {h.id: h.vector_score for h in stage_one}
    assert all(by_id[h.id] == pytest.approx(h.vector_score) for h in hits)  # first-stage score kept
    assert [h.id for h in hits] != [h.id for h in stage_one]  # the reranker changed the order
    top = retriever.retrieve(query, top_k=2)
    assert [h.id for h in top] == [h.id for h in hits[:2]]
    # min_score (issue 29): a cut on the score each hit is ranked by -- the rerank score, else the cosine
    cut = (scores[2] + scores[3]) / 2
    kept = retriever.retrieve(query, top_k=20, min_score=cut)
    assert [h.id for h in kept] == [h.id for h in hits[:3]] and all(h.rerank_score >= cut for h in kept)
    assert scores[0] < 1.0 and retriever.retrieve(query, top_k=20, min_score=float(np.nextafter(scores[0], 2))) == []
    vector_cut = sorted(h.vector_score for h in stage_one)[-2]
    assert [h.id for h in retriever.retrieve(query, top_k=20, rerank=False, min_score=vector_cut)] == [
        h.id for h in stage_one[:2]
    ]
    for bad in (float("nan"), 1.5, "0.5"):
        with pytest.raises(ValueError, match="min_score"):
            retriever.retrieve(query, top_k=2, min_score=bad)


def test_filters(embedder, store, corpus):
    Indexer(embedder, store).index_paths([corpus], metadata={"team": "finance"}, show_progress_bar=False)
    retriever = TwoStageRetriever(embedder, store)
    hits = retriever.retrieve("a picture", top_k=10, filters={"modality": "image"})
    assert len(hits) == 2 and {h.modality for h in hits} == {"image"}
    hits = retriever.retrieve("pages", top_k=10, filters={"modality": ["pdf-page", "video"]})
    assert {h.modality for h in hits} == {"pdf-page", "video"}
    assert retriever.retrieve("x", top_k=10, filters={"metadata.team": "finance"})
    assert retriever.retrieve("x", top_k=10, filters={"metadata.team": "legal"}) == []
    assert store.delete_source(str((corpus / "report.pdf").resolve())) == 2
    assert store.count({"modality": "pdf-page"}) == 0


def test_index_twice_is_idempotent(embedder, store, corpus):
    indexer = Indexer(embedder, store)
    first = indexer.index_paths([corpus], show_progress_bar=False)
    count = store.count()
    second = indexer.index_paths([corpus], show_progress_bar=False)
    assert store.count() == count
    assert second.indexed == 0 and second.present == first.indexed


def test_interrupted_ingestion_resumes_without_duplicates(embedder, tmp_path, corpus, monkeypatch):
    calls = []
    original = embedder.embed

    def dying_embed(inputs, **kwargs):
        calls.append(len(inputs))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process is killed during the third group
        return original(inputs, **kwargs)

    store = EdgeStore(tmp_path / "db", "docs")
    monkeypatch.setattr(embedder, "embed", dying_embed)
    with pytest.raises(KeyboardInterrupt):
        Indexer(embedder, store, group_size=2).index_paths([corpus], show_progress_bar=False)
    partial = store.count()
    assert partial == 4
    store.close()
    monkeypatch.setattr(embedder, "embed", original)

    reopened = EdgeStore(tmp_path / "db", "docs")  # a new process: everything from disk
    embedded = []
    monkeypatch.setattr(embedder, "embed", lambda inputs, **kw: embedded.append(len(inputs)) or original(inputs, **kw))
    report = Indexer(embedder, reopened, group_size=2).index_paths([corpus], show_progress_bar=False)
    total = 3 + len(chunk_text(NOTES)) + 2
    assert reopened.count() == total
    assert report.present == partial and report.indexed == total - partial
    assert sum(embedded) == total - partial  # nothing stored was embedded again
    reopened.close()


def test_corrupt_and_unsupported_files_are_reported(embedder, store, corpus):
    (corpus / "broken.jpg").write_bytes(b"not a jpeg at all")
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (corpus / "broken.mp4").write_bytes(b"\x00" * 64)
    (corpus / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))  # decodes (issue 28): indexed
    (corpus / "binary.txt").write_bytes(bytes(range(256)) * 4)  # no encoding explains it
    (corpus / "data.xyz").write_text("?")
    report = Indexer(embedder, store).index_paths([corpus, corpus / "missing.png"], show_progress_bar=False)
    failed = {f.source.rsplit("/", 1)[-1]: f.reason for f in report.failed}
    assert set(failed) == {"broken.jpg", "broken.pdf", "broken.mp4", "binary.txt", "missing.png"}
    assert "not a readable image" in failed["broken.jpg"]
    assert "PDF" in failed["broken.pdf"]
    assert "video" in failed["broken.mp4"]
    assert "binary data, not text" in failed["binary.txt"]
    assert [s.source.rsplit("/", 1)[-1] for s in report.skipped] == ["data.xyz"]
    assert report.indexed == 3 + len(chunk_text(NOTES)) + 2 + 1  # every good file is in
    assert isinstance(report, IndexReport) and "failed" in report.summary()


def test_dimension_and_model_mismatch(embedder, tmp_path, corpus):
    store = EdgeStore(tmp_path / "db", "docs")
    Indexer(embedder, store, dim=32).index_paths([corpus / "notes.md"], show_progress_bar=False)
    assert store.spec.dim == 32
    with pytest.raises(CollectionMismatchError, match="32-d"):
        Indexer(embedder, store, dim=64).index_paths([corpus / "notes.md"], show_progress_bar=False)
    store.close()
    fresh = EdgeStore(tmp_path / "db", "docs")
    fresh.open(create=False)

    class OtherModel:
        model_name_or_path = "someone/else"

    with pytest.raises(CollectionMismatchError, match="someone/else"):
        TwoStageRetriever(OtherModel(), fresh).retrieve("x")
    hits = TwoStageRetriever(embedder, fresh).retrieve("revenue", top_k=1)  # dim 32 queries on a dim-32 store
    assert len(hits) == 1
    fresh.close()


def test_video_segments(embedder, tmp_path, corpus):
    store = EdgeStore(tmp_path / "db", "docs")
    options = IngestOptions(video_segment_seconds=1.0)
    report = Indexer(embedder, store).index_paths([corpus / "clip.mp4"], options=options, show_progress_bar=False)
    assert report.indexed == 3 and report.failed == []
    segments = sorted(p.payload["segment"] for p in store.scroll(with_vectors=False))
    assert segments == [[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]]
    vectors = [np.asarray(p.vector) for p in store.scroll()]
    assert not np.allclose(vectors[0], vectors[1], atol=1e-4)  # different frames, different vectors
    store.close()


def test_chunking_overlaps_and_covers_text():
    text = " ".join(f"word{i}" for i in range(2000))
    spans = chunk_text(text, 500, 100)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (a1, b1), (a2, _) in zip(spans, spans[1:]):
        assert a2 < b1 and b1 - a2 <= 100  # overlapping, by at most the overlap
        assert b1 - a1 <= 500
        assert text[a2 - 1] == " "  # chunks start at a word
    assert chunk_text("   ", 10, 2) == []


def test_generator_and_pipeline_answer(embedder, reranker, tmp_path, corpus):
    generator = Qwen3VLGenerator(str(TINY), max_new_tokens=8)
    store = EdgeStore(tmp_path / "db", "docs")
    pipeline = RAGPipeline(store, embedder=embedder, reranker=reranker, generator=generator)
    pipeline.index([corpus], show_progress_bar=False)
    answer = pipeline.ask("What does the revenue chart show?", top_k=3)
    assert isinstance(answer, Answer) and isinstance(answer.text, str)
    assert len(answer.sources) == 3 and [h.rank for h in answer.sources] == [1, 2, 3]
    conversation = generator.conversation("q", answer.sources)
    content = conversation[1]["content"]
    assert content[-2:] == [{"text": "Question: "}, {"text": "q"}] and content[0]["text"].startswith("[1] ")
    assert any(part is answer.sources[0].item for part in content)
    reply = generator.chat([{"role": "user", "content": ["Describe this.", {"image": str(MEDIA / "chelsea.jpg")}]}])
    assert isinstance(reply, str)
    with pytest.raises(InputError, match="message part 0.1"):
        generator.chat([{"role": "user", "content": ["x", {"image": "/missing.png"}]}])

    seen = {}

    def my_llm(question, hits):
        seen["hits"] = hits
        return f"answer to {question!r} from {len(hits)} items"

    custom = RAGPipeline(store, embedder=embedder, reranker=reranker, generator=my_llm)
    answer = custom.ask("what is in the picture?", image=str(MEDIA / "chelsea.jpg"), top_k=2)
    assert answer.text == "answer to 'what is in the picture?' from 2 items"
    assert seen["hits"] == answer.sources
    store.close()
