"""LlamaIndex adapters: base-class contracts, equality with the core classes, user-style end-to-end flows."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil

import numpy as np
import pytest
from conftest import MEDIA
from llama_index.core import Settings, SimpleDirectoryReader, StorageContext
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode

from retrieval_pipeline import InputError
from retrieval_pipeline.ingest import Indexer
from retrieval_pipeline.integrations.llama_index import Qwen3VLEmbedding, Qwen3VLRerank, Qwen3VLRetriever
from retrieval_pipeline.retriever import QUERY_INSTRUCTION
from retrieval_pipeline.store import EdgeStore

CHELSEA = str(MEDIA / "chelsea.jpg")
VIDEO = str(MEDIA / "moving_square.mp4")


def close(a, b, tol=1e-5):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max()) < tol


@pytest.fixture(scope="module")
def li_embed(embedder):
    return Qwen3VLEmbedding(embedder=embedder, embed_batch_size=3)


@pytest.fixture(scope="module")
def li_rerank(reranker):
    return Qwen3VLRerank(reranker=reranker, top_n=3)


@pytest.fixture(autouse=True)
def no_default_models(monkeypatch):
    # a test must never fall back to LlamaIndex's default (remote) models
    monkeypatch.setattr(Settings, "_llm", MockLLM(max_tokens=16), raising=False)


# ---------------------------------------------------------------------------------------------------------------
# Qwen3VLEmbedding


def test_embedding_contract_and_identity_with_core(li_embed, embedder):
    assert isinstance(li_embed, MultiModalEmbedding) and isinstance(li_embed, BaseEmbedding)
    assert Qwen3VLEmbedding.class_name() == "Qwen3VLEmbedding"
    assert li_embed.model_name == embedder.model_name_or_path
    assert "query_instruction" in Qwen3VLEmbedding.model_fields
    assert Qwen3VLEmbedding.model_fields["dim"].description
    text = li_embed.get_text_embedding("a cat on a sofa")
    assert close(text, embedder.embed(["a cat on a sofa"])[0])
    query = li_embed.get_query_embedding("a cat")
    assert close(query, embedder.embed(["a cat"], instruction=QUERY_INSTRUCTION)[0])
    assert not close(query, li_embed.get_text_embedding("a cat"), 1e-3)  # distinct query instruction
    # documents' images come in batches (MultiModalVectorStoreIndex), an image query alone (image_to_image_retrieve)
    image = li_embed.get_image_embedding_batch([CHELSEA])[0]
    assert close(image, embedder.embed([{"image": CHELSEA}])[0])
    image_query = li_embed.get_image_embedding(CHELSEA)
    assert close(image_query, embedder.embed([{"image": CHELSEA}], instruction=QUERY_INSTRUCTION)[0])


def test_image_forms(li_embed):
    data = (MEDIA / "chelsea.jpg").read_bytes()
    reference = li_embed.get_image_embedding(CHELSEA)
    assert close(li_embed.get_image_embedding(io.BytesIO(data)), reference)
    assert close(li_embed.get_image_embedding(base64.b64encode(data).decode()), reference)
    assert close(li_embed.get_image_embedding("data:image/jpeg;base64," + base64.b64encode(data).decode()), reference)


def test_batches_honour_embed_batch_size(li_embed, embedder, monkeypatch):
    calls = []
    original = embedder.embed

    def spy(inputs, **kwargs):
        calls.append(len(inputs))
        return original(inputs, **kwargs)

    monkeypatch.setattr(embedder, "embed", spy)
    texts = [f"text number {i}" for i in range(7)]
    batch = li_embed.get_text_embedding_batch(texts)
    assert calls == [3, 3, 1]
    singles = [li_embed.get_text_embedding(t) for t in texts]
    assert close(batch, singles)
    calls.clear()
    images = li_embed.get_image_embedding_batch([CHELSEA, str(MEDIA / "coffee.jpg"), str(MEDIA / "rocket.jpg")] * 2)
    assert calls == [3, 3] and len(images) == 6


def test_async_does_not_block_the_event_loop(li_embed):
    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        texts = [f"async text {i} " * 30 for i in range(12)]
        result = await li_embed.aget_text_embedding_batch(texts)
        q = await li_embed.aget_query_embedding("a query")
        img = await li_embed.aget_image_embedding(CHELSEA)
        done.set()
        await task
        return ticks, result, q, img

    ticks, result, q, img = asyncio.run(main())
    assert ticks > 5  # the loop kept running while the model worked in a thread
    assert len(result) == 12
    assert close(q, li_embed.get_query_embedding("a query"))
    assert close(img, li_embed.get_image_embedding(CHELSEA))


def test_matryoshka_video_mixed_and_nodes(li_embed, embedder):
    small = Qwen3VLEmbedding(embedder=embedder, dim=32)
    vec = small.get_text_embedding("x")
    assert len(vec) == 32 and abs(np.linalg.norm(vec) - 1) < 1e-5
    with pytest.raises(ValueError, match="Matryoshka"):
        Qwen3VLEmbedding(embedder=embedder, dim=1000)
    video = li_embed.get_video_embedding(VIDEO, fps=2.0, max_frames=4)
    assert close(video, embedder.embed([{"video": VIDEO, "fps": 2.0, "max_frames": 4}])[0])
    mixed = li_embed.get_multimodal_embedding({"text": "a cat", "image": CHELSEA})
    assert close(mixed, embedder.embed([{"text": "a cat", "image": CHELSEA}])[0])
    nodes = [ImageNode(image_path=CHELSEA, text="a cat"), TextNode(text="clip", metadata={"video_path": VIDEO})]
    out = li_embed.get_node_embeddings(nodes)
    assert close(out[0], mixed)
    assert close(out[1], embedder.embed([{"text": "clip", "video": VIDEO}])[0])


# ---------------------------------------------------------------------------------------------------------------
# Qwen3VLRerank


def _nodes(media_server):
    data = (MEDIA / "coffee.jpg").read_bytes()
    return [
        NodeWithScore(node=TextNode(text="A cat sleeps on a red sofa.", id_="t1"), score=0.9),
        NodeWithScore(node=ImageNode(image_path=CHELSEA, id_="i1"), score=0.8),
        NodeWithScore(node=ImageNode(image=base64.b64encode(data).decode(), id_="i2"), score=0.7),
        NodeWithScore(node=ImageNode(image_url=f"{media_server}/rocket.jpg", id_="i3"), score=0.6),
        NodeWithScore(node=TextNode(text="a clip", metadata={"video_path": VIDEO}, id_="v1"), score=0.5),
    ]


def test_rerank_scores_equal_core_and_keep_first_stage_score(li_rerank, reranker, media_server):
    assert isinstance(li_rerank, BaseNodePostprocessor) and Qwen3VLRerank.class_name() == "Qwen3VLRerank"
    nodes = _nodes(media_server)
    docs = [
        {"text": "A cat sleeps on a red sofa."},
        {"image": CHELSEA},
        {"image": str(MEDIA / "coffee.jpg")},
        {"image": str(MEDIA / "rocket.jpg")},
        {"text": "a clip", "video": VIDEO},
    ]
    expected = reranker.score("a cat", docs)
    keep_all = Qwen3VLRerank(reranker=reranker, top_n=None)
    out = keep_all.postprocess_nodes(nodes, query_str="a cat")
    by_id = {n.node.node_id: n.score for n in out}
    for node, score in zip(["t1", "i1", "i2", "i3", "v1"], expected):
        assert by_id[node] == pytest.approx(score, abs=1e-6)
    assert [n.score for n in out] == sorted(expected, reverse=True)
    assert out[0].node.metadata["retrieval_score"] in (0.9, 0.8, 0.7, 0.6, 0.5)
    top = li_rerank.postprocess_nodes(_nodes(media_server), query_bundle=QueryBundle("a cat"))
    assert [n.node.node_id for n in top] == [n.node.node_id for n in out[:3]]


def test_rerank_one_batched_pass_and_async(li_rerank, reranker, media_server, monkeypatch):
    calls = []
    original = reranker.score

    def spy(query, documents, **kwargs):
        calls.append(len(documents))
        return original(query, documents, **kwargs)

    monkeypatch.setattr(reranker, "score", spy)
    sync = li_rerank.postprocess_nodes(_nodes(media_server), query_str="a cat")
    assert calls == [5]
    result = asyncio.run(li_rerank.apostprocess_nodes(_nodes(media_server), query_str="a cat"))
    assert [n.node.node_id for n in result] == [n.node.node_id for n in sync]


def test_rerank_image_query(li_rerank, reranker, media_server):
    bundle = QueryBundle("this cat", image_path=CHELSEA)
    out = Qwen3VLRerank(reranker=reranker, top_n=None).postprocess_nodes(_nodes(media_server)[:2], bundle)
    expected = reranker.score(
        {"text": "this cat", "image": CHELSEA}, [{"text": "A cat sleeps on a red sofa."}, {"image": CHELSEA}]
    )
    assert sorted(n.score for n in out) == pytest.approx(sorted(expected), abs=1e-6)


def test_rerank_errors_name_the_node(li_rerank):
    nodes = [
        NodeWithScore(node=TextNode(text="fine", id_="ok"), score=1.0),
        NodeWithScore(node=ImageNode(image_path="/no/such/image.png", id_="broken-node"), score=0.5),
    ]
    with pytest.raises(InputError, match="node broken-node, field 'image': file not found"):
        li_rerank.postprocess_nodes(nodes, query_str="q")
    empty = [NodeWithScore(node=TextNode(text="", id_="empty-node"), score=1.0)]
    with pytest.raises(InputError, match="node empty-node: no text, image or video"):
        li_rerank.postprocess_nodes(empty, query_str="q")
    assert li_rerank.postprocess_nodes([], query_str="q") == []


BAD_MIN_SCORES = (float("nan"), float("inf"), 2.0, -1.5, "0.5")


def _between(scores, i):
    """A cut-off strictly between the ``i``-th and the next of ``scores`` (best first)."""
    assert scores[i] > scores[i + 1], scores
    return (scores[i] + scores[i + 1]) / 2


def test_rerank_min_score_keeps_the_nodes_at_or_above_it(reranker):
    def nodes():
        texts = ["A cat sleeps on a red sofa.", "A kitten plays.", "Rockets launch in spring.", "Quarterly revenue."]
        return [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.5) for i, t in enumerate(texts)]

    every = Qwen3VLRerank(reranker=reranker, top_n=None).postprocess_nodes(nodes(), query_str="a cat")
    scores = [n.score for n in every]
    ids = [n.node.node_id for n in every]
    cut = _between(scores, 1)
    kept = Qwen3VLRerank(reranker=reranker, top_n=None, min_score=cut).postprocess_nodes(nodes(), query_str="a cat")
    assert [n.node.node_id for n in kept] == ids[:2] and all(n.score >= cut for n in kept)
    at = Qwen3VLRerank(reranker=reranker, top_n=None, min_score=scores[1])  # a node scoring exactly it stays
    assert [n.node.node_id for n in at.postprocess_nodes(nodes(), query_str="a cat")] == ids[:2]
    one = Qwen3VLRerank(reranker=reranker, top_n=1, min_score=cut)  # the cut first, then top_n
    assert [n.node.node_id for n in one.postprocess_nodes(nodes(), query_str="a cat")] == ids[:1]
    above = Qwen3VLRerank(reranker=reranker, min_score=float(np.nextafter(scores[0], 2)))
    assert above.postprocess_nodes(nodes(), query_str="a cat") == []
    alias = Qwen3VLRerank(reranker=reranker, top_n=None, similarity_cutoff=cut)  # SimilarityPostprocessor's name
    assert alias.min_score == cut
    assert [n.node.node_id for n in alias.postprocess_nodes(nodes(), query_str="a cat")] == ids[:2]
    with pytest.raises(ValueError, match="not both"):
        Qwen3VLRerank(reranker=reranker, min_score=cut, similarity_cutoff=cut)
    for bad in BAD_MIN_SCORES:
        with pytest.raises(ValueError, match="min_score must be"):
            Qwen3VLRerank(reranker=reranker, min_score=bad)
        with pytest.raises(ValueError, match="min_score must be"):
            Qwen3VLRerank(reranker=reranker, similarity_cutoff=bad)


# ---------------------------------------------------------------------------------------------------------------
# End to end, as a user writes it


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg", "rocket.jpg"):
        shutil.copy(MEDIA / name, d / name)
    (d / "cats.md").write_text("# Cats\n\nThe office cat sleeps on the red sofa every afternoon.")
    (d / "rockets.txt").write_text("The rocket launch slipped to the spring because of the engine tests.")
    return d


def test_multimodal_vector_store_index_on_qdrant(li_embed, li_rerank, folder, tmp_path):
    import qdrant_client
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    client = qdrant_client.QdrantClient(path=str(tmp_path / "qdrant"))
    text_store = QdrantVectorStore(client=client, collection_name="text_collection")
    image_store = QdrantVectorStore(client=client, collection_name="image_collection")
    storage_context = StorageContext.from_defaults(vector_store=text_store, image_store=image_store)
    documents = SimpleDirectoryReader(str(folder)).load_data()
    index = MultiModalVectorStoreIndex.from_documents(
        documents, storage_context=storage_context, embed_model=li_embed, image_embed_model=li_embed
    )
    assert client.count("text_collection").count == 2 and client.count("image_collection").count == 3

    retriever = index.as_retriever(similarity_top_k=2, image_similarity_top_k=2)
    nodes = retriever.retrieve("a cat on a sofa")
    assert len(nodes) == 4 and sum(isinstance(n.node, ImageNode) for n in nodes) == 2
    reranked = li_rerank.postprocess_nodes(nodes, query_str="a cat on a sofa")
    assert len(reranked) == 3 and all("retrieval_score" in n.node.metadata for n in reranked)

    engine = index.as_query_engine(
        llm=MockLLM(max_tokens=8), similarity_top_k=2, image_similarity_top_k=2, node_postprocessors=[li_rerank]
    )
    response = engine.query("Where does the cat sleep?")
    assert len(response.source_nodes) == 3
    assert response.source_nodes[0].score >= response.source_nodes[-1].score
    client.close()


def test_native_retriever_in_a_query_engine(embedder, reranker, folder, tmp_path):
    store = EdgeStore(tmp_path / "edge", "docs")
    Indexer(embedder, store).index_paths([folder], show_progress_bar=False)
    retriever = Qwen3VLRetriever(embedder, store, reranker, top_k=3)
    nodes = retriever.retrieve("a cat on a sofa")
    assert len(nodes) == 3
    assert all(n.node.metadata["rerank_score"] == n.score for n in nodes)
    images = [n for n in nodes if isinstance(n.node, ImageNode)]
    assert all(n.node.image_path for n in images)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=8))
    response = engine.query("Where does the cat sleep?")
    assert [n.node.node_id for n in response.source_nodes] == [n.node.node_id for n in nodes]
    async_nodes = asyncio.run(retriever.aretrieve("a cat on a sofa"))
    assert [n.node.node_id for n in async_nodes] == [n.node.node_id for n in nodes]
    store.close()


@pytest.fixture(scope="module")
def text_store(embedder, tmp_path_factory):
    store = EdgeStore(tmp_path_factory.mktemp("edge") / "db", "notes")
    Indexer(embedder, store).index_items(["a cat on a red sofa", "a dog on a beach", "a rocket launch", "revenue"])
    yield store
    store.close()


@pytest.mark.parametrize("reranked", [True, False])
def test_retriever_min_score_keeps_the_nodes_at_or_above_it(embedder, reranker, text_store, reranked):
    """The core retriever's rule: the rerank score when reranked (``metadata["rerank_score"]``), else the cosine."""
    models = (embedder, text_store, reranker if reranked else None)
    every = Qwen3VLRetriever(*models, top_k=4).retrieve("a cat")
    assert len(every) == 4
    if reranked:
        assert all(n.node.metadata["rerank_score"] == n.score for n in every)
    scores = [n.score for n in every]
    ids = [n.node.node_id for n in every]
    cut = _between(scores, 1)
    kept = Qwen3VLRetriever(*models, top_k=4, min_score=cut).retrieve("a cat")
    assert [n.node.node_id for n in kept] == ids[:2] and all(n.score >= cut for n in kept)
    at = Qwen3VLRetriever(*models, top_k=4, min_score=scores[2])  # a node scoring exactly it stays
    assert [n.node.node_id for n in at.retrieve("a cat")] == ids[:3]
    assert [n.node.node_id for n in Qwen3VLRetriever(*models, top_k=1, min_score=cut).retrieve("a cat")] == ids[:1]
    assert asyncio.run(Qwen3VLRetriever(*models, min_score=float(np.nextafter(scores[0], 2))).aretrieve("a cat")) == []
    for bad in BAD_MIN_SCORES:
        with pytest.raises(ValueError, match="min_score must be"):
            Qwen3VLRetriever(*models, min_score=bad)


def test_qwen3vl_llm_multimodal_query_engine(li_embed, li_rerank, generator, folder, tmp_path):
    import qdrant_client
    from llama_index.core.llms import ChatMessage, ImageBlock, TextBlock
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    from retrieval_pipeline.integrations.llama_index import Qwen3VLLLM

    llm = Qwen3VLLLM(generator=generator, max_new_tokens=8)
    assert llm.metadata.is_chat_model and Qwen3VLLLM.class_name() == "Qwen3VLLLM"
    reply = llm.chat([ChatMessage(role="user", blocks=[TextBlock(text="What is this?"), ImageBlock(path=CHELSEA)])])
    assert isinstance(reply.message.content, str)
    assert isinstance(llm.complete("Say hi").text, str)

    client = qdrant_client.QdrantClient(path=str(tmp_path / "qdrant"))
    storage_context = StorageContext.from_defaults(
        vector_store=QdrantVectorStore(client=client, collection_name="text"),
        image_store=QdrantVectorStore(client=client, collection_name="images"),
    )
    index = MultiModalVectorStoreIndex.from_documents(
        SimpleDirectoryReader(str(folder)).load_data(),
        storage_context=storage_context,
        embed_model=li_embed,
        image_embed_model=li_embed,
    )
    engine = RetrieverQueryEngine.from_args(
        retriever=index.as_retriever(similarity_top_k=2, image_similarity_top_k=2),
        llm=llm,
        multimodal=True,
        node_postprocessors=[li_rerank],
    )
    response = engine.query("Where does the cat sleep?")
    assert isinstance(response.response, str) and len(response.source_nodes) == 3
    client.close()


# ---------------------------------------------------------------------------------------------------------------
# Framework events, one vocabulary


def test_rerank_emits_llama_index_reranking_events(reranker, media_server):
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent

    class Collect(BaseEventHandler):
        events: list = []

        @classmethod
        def class_name(cls) -> str:
            return "Collect"

        def handle(self, event, **kwargs) -> None:
            self.events.append(event)

    debug = LlamaDebugHandler()
    rerank = Qwen3VLRerank(reranker=reranker, top_n=2, callback_manager=CallbackManager([debug]))
    handler = Collect(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        out = rerank.postprocess_nodes(_nodes(media_server), query_str="a cat")
        asyncio.run(rerank.apostprocess_nodes(_nodes(media_server), query_str="a cat"))
    finally:
        root.event_handlers.remove(handler)
    starts = [e for e in handler.events if isinstance(e, ReRankStartEvent)]
    ends = [e for e in handler.events if isinstance(e, ReRankEndEvent)]
    assert len(starts) == len(ends) == 2
    assert starts[0].top_n == 2 and starts[0].model_name == reranker.model_name_or_path
    assert starts[0].query.query_str == "a cat" and len(starts[0].nodes) == 5
    assert [n.node.node_id for n in ends[0].nodes] == [n.node.node_id for n in out]
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 2
    start, end = pairs[0]
    assert start.payload[EventPayload.QUERY_STR] == "a cat" and start.payload[EventPayload.TOP_K] == 2
    assert start.payload[EventPayload.MODEL_NAME] == reranker.model_name_or_path
    assert [n.node.node_id for n in end.payload[EventPayload.NODES]] == [n.node.node_id for n in out]


def test_deprecated_names_keep_working(embedder, reranker, generator):
    from retrieval_pipeline.integrations.llama_index import Qwen3VLLLM

    with pytest.warns(DeprecationWarning, match="'text_instruction' is deprecated, use 'document_instruction'"):
        old = Qwen3VLEmbedding(embedder=embedder, text_instruction="Represent the passage.")
    assert old.document_instruction == "Represent the passage."
    with pytest.warns(DeprecationWarning):
        assert old.text_instruction == "Represent the passage."
    assert close(old.get_text_embedding("a cat"), embedder.embed(["a cat"], instruction="Represent the passage.")[0])
    with pytest.warns(DeprecationWarning, match="'video_metadata_key' is deprecated, use 'video_key'"):
        custom = Qwen3VLRerank(reranker=reranker, video_metadata_key="clip")
    assert custom.video_key == "clip"
    with pytest.warns(DeprecationWarning, match="'core_kwargs' is deprecated, use 'model_kwargs'"):
        with pytest.raises(ValueError, match="either embedder"):
            Qwen3VLEmbedding(embedder=embedder, core_kwargs={"max_pixels": 1000})
    with pytest.raises(ValueError, match="either reranker"):
        Qwen3VLRerank(reranker=reranker, device="cpu")
    with pytest.raises(ValueError, match="either generator"):
        Qwen3VLLLM(generator=generator, device="cpu")
    assert Qwen3VLLLM(generator=generator).model == generator.model_name_or_path


def test_video_key_is_video_and_the_old_key_is_still_read(li_embed, embedder):
    expected = embedder.embed([{"text": "clip", "video": VIDEO}])[0]
    for key in ("video", "video_path"):
        assert close(li_embed.get_node_embeddings([TextNode(text="clip", metadata={key: VIDEO})])[0], expected)


def test_defaults_come_from_the_core():
    from retrieval_pipeline import pipeline
    from retrieval_pipeline.integrations.llama_index import embeddings, llm, rerank

    assert embeddings.DEFAULT_MODEL == pipeline.DEFAULT_EMBEDDING_MODEL
    assert rerank.DEFAULT_MODEL == pipeline.DEFAULT_RERANKER_MODEL
    assert llm.DEFAULT_MODEL == pipeline.DEFAULT_GENERATOR_MODEL
