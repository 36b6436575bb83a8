"""The paths app developers take through LlamaIndex and LangChain with these adapters: the frameworks' own components
(IngestionPipeline with worker processes, VectorStoreIndex, query engines that stream, langchain-qdrant and
InMemoryVectorStore), serialisation and pickling, streaming, images in pipelines, image queries and metadata. Every
number is checked against the library's own models."""

from __future__ import annotations

import asyncio
import pickle
import time

import numpy as np
import pytest
from conftest import MEDIA, TINY, load_public
from llama_index.core import Settings
from llama_index.core.llms import MockLLM
from llama_index.core.schema import Document as LIDocument
from llama_index.core.schema import ImageNode, MetadataMode, NodeWithScore, QueryBundle, TextNode

from retrieval_pipeline import InputError, Qwen3VLEmbedder
from retrieval_pipeline.ingest import Indexer
from retrieval_pipeline.integrations.llama_index import Qwen3VLEmbedding, Qwen3VLLLM, Qwen3VLRetriever
from retrieval_pipeline.integrations.llama_index import Qwen3VLRerank as LIRerank
from retrieval_pipeline.models.runtime import UnknownArgumentError
from retrieval_pipeline.retriever import QUERY_INSTRUCTION, TwoStageRetriever
from retrieval_pipeline.store import EdgeStore

SETTINGS = load_public()["settings"]
CHELSEA = str(MEDIA / "chelsea.jpg")
ROCKET = str(MEDIA / "rocket.jpg")
VIDEO = str(MEDIA / "moving_square.mp4")
# settings unlike the defaults, to see that they survive a rebuild
SMALL = {"max_pixels": 65536, "torch_dtype": "float32"}


def close(a, b, tol=1e-5):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max()) < tol


@pytest.fixture(autouse=True)
def no_default_models(monkeypatch):
    monkeypatch.setattr(Settings, "_llm", MockLLM(max_tokens=16), raising=False)


@pytest.fixture(scope="module")
def small_embedder():
    return Qwen3VLEmbedder(str(TINY), **SMALL)


# ---------------------------------------------------------------------------------------------------------------
# construction, serialisation, pickling


def test_the_framework_options_stay_the_framework_s_and_unknown_ones_are_named(embedder):
    emb = Qwen3VLEmbedding(model_name=str(TINY), num_workers=2, embed_batch_size=4, **SMALL)
    assert emb.num_workers == 2 and emb.embed_batch_size == 4
    assert emb.model_kwargs == SMALL and emb.embedder.media.max_pixels == SMALL["max_pixels"]
    with pytest.raises(UnknownArgumentError, match=r"Qwen3VLEmbedding: unknown argument 'top_k'.*embed_batch_size"):
        Qwen3VLEmbedding(model_name=str(TINY), top_k=3)
    with pytest.raises(TypeError, match=r"Qwen3VLEmbedder: unknown argument 'top_k'.*max_pixels"):
        Qwen3VLEmbedder(str(TINY), top_k=3)
    from retrieval_pipeline.integrations.langchain import Qwen3VLEmbeddings

    with pytest.raises(TypeError, match=r"Qwen3VLEmbeddings: unknown argument 'top_k'"):
        Qwen3VLEmbeddings(model_name=str(TINY), top_k=3)
    # from_pretrained's own options and the checkpoint's config keys still pass
    assert Qwen3VLEmbedder(str(TINY), attn_implementation="eager", torch_dtype="float32").hidden_size == 64


def test_llama_index_round_trips_rebuild_the_same_model(small_embedder):
    reference = small_embedder.embed([{"image": CHELSEA}])[0]
    for emb in (
        Qwen3VLEmbedding(model_name=str(TINY), num_workers=2, **SMALL),
        Qwen3VLEmbedding(embedder=small_embedder, num_workers=2),  # settings read from the injected model
    ):
        data = emb.to_dict()
        assert data["model_kwargs"]["max_pixels"] == SMALL["max_pixels"] and data["num_workers"] == 2
        for again in (
            Qwen3VLEmbedding.from_dict(data),
            Qwen3VLEmbedding.from_json(emb.to_json()),
            pickle.loads(pickle.dumps(emb)),
        ):
            assert again.embedder is not small_embedder and again.num_workers == 2
            assert again.embedder.media == small_embedder.media and again.embedder.dtype == small_embedder.dtype
            assert close(again.get_image_embedding_batch([CHELSEA])[0], reference)


def test_every_adapter_pickles_with_its_settings(reranker, generator):
    from retrieval_pipeline.integrations.langchain import ChatQwen3VL, Qwen3VLEmbeddings
    from retrieval_pipeline.integrations.langchain import Qwen3VLRerank as LCRerank

    rr = LIRerank(reranker=reranker, top_n=2)
    again = pickle.loads(pickle.dumps(rr))
    assert again.top_n == 2 and again.reranker.media == reranker.media
    assert again.reranker.score("a cat", ["a cat", "a rocket"]) == pytest.approx(
        reranker.score("a cat", ["a cat", "a rocket"]), abs=1e-5
    )
    lc = pickle.loads(pickle.dumps(LCRerank(reranker=reranker, top_n=1)))
    assert lc.top_n == 1 and lc.reranker.media == reranker.media
    emb = pickle.loads(pickle.dumps(Qwen3VLEmbeddings(model_name=str(TINY), dim=32, **SMALL)))
    assert emb.dim == 32 and close(emb.embed_query("a cat"), Qwen3VLEmbedder(str(TINY), **SMALL).embed(
        ["a cat"], instruction=QUERY_INSTRUCTION, dim=32)[0])  # fmt: skip
    for llm in (Qwen3VLLLM(generator=generator, max_new_tokens=5), ChatQwen3VL(generator=generator, max_tokens=5)):
        again = pickle.loads(pickle.dumps(llm))
        assert again.max_new_tokens == 5 and again.model == str(TINY)


def test_an_adapter_that_cannot_rebuild_says_so(tmp_path):
    emb = Qwen3VLEmbedding(model_name=str(TINY))
    state = pickle.dumps(emb)
    emb.model_name = str(tmp_path / "gone")  # as if unpickled where the checkpoint is not
    with pytest.raises(Exception, match="gone"):
        pickle.loads(pickle.dumps(emb))
    assert pickle.loads(state).embedder is not None


# ---------------------------------------------------------------------------------------------------------------
# images and videos through LlamaIndex's generic paths
@pytest.mark.slow
def test_ingestion_pipeline_with_worker_processes_gives_the_library_s_numbers(small_embedder):
    from llama_index.core.ingestion import IngestionPipeline

    texts = ["The cat sleeps on the red sofa.", "A rocket leaves the launch pad.", "Coffee in a white cup."]
    docs = [LIDocument(text=t, id_=f"doc-{i}", metadata={"n": i}) for i, t in enumerate(texts)]
    emb = Qwen3VLEmbedding(embedder=small_embedder)
    # (no text splitter here: LlamaIndex's splitters fetch a tiktoken file in each worker, and this machine is
    # offline)
    pipeline = IngestionPipeline(transformations=[emb])
    nodes = pipeline.run(documents=docs, num_workers=2)  # each worker process unpickles and rebuilds the model
    assert len(nodes) == 3
    for node in nodes:
        expected = small_embedder.embed([node.get_content(metadata_mode=MetadataMode.EMBED)])[0]
        assert close(node.embedding, expected)


def test_image_and_video_nodes_are_embedded_as_their_media_in_a_pipeline_and_kept_by_the_index(small_embedder):
    from llama_index.core import VectorStoreIndex
    from llama_index.core.ingestion import IngestionPipeline

    emb = Qwen3VLEmbedding(embedder=small_embedder)
    nodes = [
        ImageNode(image_path=CHELSEA, id_="cat", metadata={"file_name": "chelsea.jpg"}),  # as a reader makes it
        ImageNode(image_path=ROCKET, text="a rocket", id_="rocket"),
        TextNode(text="a moving square", metadata={"video": VIDEO}, id_="clip"),
        TextNode(text="a cup of coffee", id_="coffee"),
    ]
    out = {n.node_id: n for n in IngestionPipeline(transformations=[emb]).run(nodes=nodes)}
    # the text LlamaIndex embeds for a node (MetadataMode.EMBED), with the node's image or video
    cat = small_embedder.embed([{"image": CHELSEA, "text": "file_name: chelsea.jpg"}])[0]
    assert close(out["cat"].embedding, cat)
    assert close(out["rocket"].embedding, small_embedder.embed([{"image": ROCKET, "text": "a rocket"}])[0])
    assert close(out["clip"].embedding, small_embedder.embed([{"video": VIDEO, "text": "a moving square"}])[0])
    assert close(out["coffee"].embedding, small_embedder.embed(["a cup of coffee"])[0])
    index = VectorStoreIndex(list(out.values()), embed_model=emb)  # keeps the vectors the pipeline made
    assert all(close(index.vector_store.get(i), out[i].embedding) for i in out)
    query = QueryBundle(query_str="", embedding=emb.get_image_embedding(CHELSEA))  # an image query's vector
    hits = index.as_retriever(similarity_top_k=1).retrieve(query)
    assert hits and hits[0].node.node_id == "cat"
    # LlamaIndex's text path with no text (an image's text, through get_text_embedding): refused, with the way out
    with pytest.raises(InputError, match="text 1: empty text.*IngestionPipeline"):
        emb.get_text_embedding_batch(["a cat", ""])


def test_a_pipeline_writes_media_nodes_into_llama_index_s_qdrant_store(small_embedder):
    import qdrant_client
    from llama_index.core import VectorStoreIndex
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    emb = Qwen3VLEmbedding(embedder=small_embedder)
    client = qdrant_client.QdrantClient(":memory:")
    store = QdrantVectorStore(client=client, collection_name="media")
    nodes = [
        ImageNode(image_path=CHELSEA, text="a cat", id_="5c6e2f7a-0000-4000-8000-000000000001"),
        ImageNode(image_path=ROCKET, text="a rocket", id_="5c6e2f7a-0000-4000-8000-000000000002"),
        TextNode(text="a cup of coffee", id_="5c6e2f7a-0000-4000-8000-000000000003"),
    ]
    IngestionPipeline(transformations=[emb], vector_store=store).run(nodes=nodes)
    (stored,) = client.retrieve("media", ["5c6e2f7a-0000-4000-8000-000000000001"], with_vectors=True)
    assert close(stored.vector, small_embedder.embed([{"image": CHELSEA, "text": "a cat"}])[0])
    index = VectorStoreIndex.from_vector_store(store, embed_model=emb)
    query = QueryBundle(query_str="", embedding=emb.get_image_embedding(ROCKET))
    (hit,) = index.as_retriever(similarity_top_k=1).retrieve(query)
    assert hit.node.node_id.endswith("0002")
    client.close()


def test_image_queries_take_the_query_instruction_everywhere(embedder, reranker, tmp_path):
    from llama_index.core.indices import MultiModalVectorStoreIndex

    from retrieval_pipeline.integrations.langchain import Qwen3VLEmbeddings
    from retrieval_pipeline.integrations.langchain import Qwen3VLRetriever as LCRetriever

    query = embedder.embed([{"image": CHELSEA}], instruction=QUERY_INSTRUCTION)[0]
    li = Qwen3VLEmbedding(embedder=embedder)
    assert close(li.get_image_embedding(CHELSEA), query)
    assert close(Qwen3VLEmbeddings(embedder=embedder).embed_image_query(CHELSEA), query)
    # MultiModalVectorStoreIndex.image_to_image_retrieve: documents' images with the document instruction, the
    # query image with the query instruction; the score is their cosine
    nodes = [ImageNode(image_path=p, metadata={"file_path": p}) for p in (CHELSEA, ROCKET)]  # as a reader's
    index = MultiModalVectorStoreIndex(nodes, embed_model=li, image_embed_model=li)
    hits = index.as_retriever(image_similarity_top_k=2).image_to_image_retrieve(CHELSEA)
    document = embedder.embed([{"image": CHELSEA}])[0]
    assert hits[0].node.image_path == CHELSEA and hits[0].score == pytest.approx(float(query @ document), abs=1e-5)
    # both retrievers over a collection: the same hits as the core pipeline for the same image query
    store = EdgeStore(tmp_path / "db", "media")
    Indexer(embedder, store).index_items([{"image": CHELSEA}, {"image": ROCKET}, "a cup of coffee"])
    core = TwoStageRetriever(embedder, store, reranker).retrieve({"image": CHELSEA}, top_k=2)
    li_hits = Qwen3VLRetriever(embedder, store, reranker, top_k=2).retrieve(QueryBundle("", image_path=CHELSEA))
    lc_docs = LCRetriever(embedder=embedder, store=store, reranker=reranker, k=2).invoke({"image": CHELSEA})
    assert [h.node.node_id for h in li_hits] == [h.id for h in core]
    assert [h.score for h in li_hits] == pytest.approx([h.score for h in core], abs=1e-5)
    assert [d.metadata["relevance_score"] for d in lc_docs] == pytest.approx([h.score for h in core], abs=1e-5)
    store.close()


# ---------------------------------------------------------------------------------------------------------------
# metadata


def test_the_reranker_ranks_what_the_embedding_saw_and_hides_its_score_from_prompts(reranker):
    node = TextNode(text="The cat sleeps on the sofa.", metadata={"author": "Ann", "video": VIDEO})
    rr = LIRerank(reranker=reranker, top_n=1)
    (out,) = rr.postprocess_nodes([NodeWithScore(node=node, score=0.5)], query_str="a cat")
    seen = "author: Ann\n\nThe cat sleeps on the sofa."  # MetadataMode.EMBED, the video key not as text
    assert out.score == pytest.approx(reranker.score("a cat", [{"text": seen, "video": VIDEO}])[0], abs=1e-5)
    assert out.node.metadata["retrieval_score"] == 0.5
    for mode in (MetadataMode.LLM, MetadataMode.EMBED):
        assert "retrieval_score" not in out.node.get_content(metadata_mode=mode)
    assert "author: Ann" in out.node.get_content(metadata_mode=MetadataMode.LLM)


def test_retrieved_nodes_embed_and_rerank_as_stored_and_show_the_llm_no_bookkeeping(embedder, reranker, tmp_path):
    store = EdgeStore(tmp_path / "db", "notes")
    Indexer(embedder, store).index_items(["a cat on a sofa", "a rocket"], metadata={"team": "blue"})
    (hit,) = Qwen3VLRetriever(embedder, store, reranker, top_k=1).retrieve("a cat")
    assert hit.node.get_content(metadata_mode=MetadataMode.EMBED) == "a cat on a sofa"
    llm_view = hit.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "team" in llm_view and "vector_score" not in llm_view and "content_hash" not in llm_view
    # a second reranker over these nodes scores the stored text: the pipeline's own rerank score
    (again,) = LIRerank(reranker=reranker, top_n=1).postprocess_nodes([hit], query_str="a cat")
    assert again.score == pytest.approx(hit.score, abs=1e-5)
    store.close()


# ---------------------------------------------------------------------------------------------------------------
# streaming


def _chat_messages():
    from llama_index.core.llms import ChatMessage, ImageBlock, TextBlock

    return [ChatMessage(role="user", blocks=[TextBlock(text="What is in this picture?"), ImageBlock(path=CHELSEA)])]


def test_llama_index_streaming_equals_the_answer_images_included(generator):
    llm = Qwen3VLLLM(generator=generator, max_new_tokens=8)
    messages = _chat_messages()
    answer = llm.chat(messages).message.content
    pieces = list(llm.stream_chat(messages))
    assert len(pieces) > 1 and "".join(p.delta for p in pieces) == answer == pieces[-1].message.content
    completion = llm.complete("Say hi").text
    assert "".join(p.delta for p in llm.stream_complete("Say hi")) == completion

    async def run():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        text = (await llm.achat(messages)).message.content
        streamed = [p async for p in await llm.astream_chat(messages)]
        done = "".join([p.delta async for p in await llm.astream_complete("Say hi")])
        ticker.cancel()
        return text, streamed, done, ticks

    text, streamed, done, ticks = asyncio.run(run())
    assert text == answer and "".join(p.delta for p in streamed) == answer and done == completion
    assert ticks > 5  # the loop kept running while the model generated


def test_a_streaming_query_engine_answers_what_the_plain_one_does(embedder, reranker, generator, tmp_path):
    from llama_index.core.query_engine import RetrieverQueryEngine

    store = EdgeStore(tmp_path / "db", "notes")
    Indexer(embedder, store).index_items(["The cat sleeps on the red sofa.", "A rocket on the pad."])
    retriever = Qwen3VLRetriever(embedder, store, reranker, top_k=1)
    llm = Qwen3VLLLM(generator=generator, max_new_tokens=8)
    plain = RetrieverQueryEngine.from_args(retriever, llm=llm).query("Where does the cat sleep?")
    streaming = RetrieverQueryEngine.from_args(retriever, llm=llm, streaming=True).query("Where does the cat sleep?")
    assert "".join(streaming.response_gen) == plain.response
    store.close()


def test_an_async_consumer_that_stops_early_stops_the_generation(generator):
    llm = Qwen3VLLLM(generator=generator, max_new_tokens=64)

    async def first_piece():
        stream = await llm.astream_complete("Count to ten")
        async for piece in stream:
            await stream.aclose()
            return piece

    started = time.monotonic()
    assert asyncio.run(first_piece()).delta
    assert generator._lock.acquire(timeout=30)  # the generation ended: the model is free again
    generator._lock.release()
    assert time.monotonic() - started < 30


def test_langchain_streaming_equals_the_answer_images_included(generator):
    from langchain_core.messages import HumanMessage

    from retrieval_pipeline.integrations.langchain import ChatQwen3VL

    chat = ChatQwen3VL(generator=generator, max_tokens=8)
    message = HumanMessage(content=[{"type": "text", "text": "What is this?"}, {"type": "image", "url": CHELSEA}])
    answer = chat.invoke([message]).content
    chunks = list(chat.stream([message]))
    assert len(chunks) > 2 and "".join(c.content for c in chunks) == answer

    async def run():
        return "".join([c.content async for c in chat.astream([message])])

    assert asyncio.run(run()) == answer
    tokens = []
    from langchain_core.callbacks import BaseCallbackHandler

    class Collect(BaseCallbackHandler):
        def on_llm_new_token(self, token, **kwargs):
            tokens.append(token)

    streamed = ChatQwen3VL(generator=generator, max_tokens=8, streaming=True).invoke(
        [message], config={"callbacks": [Collect()]}
    )
    assert streamed.content == answer and "".join(tokens) == answer and len(tokens) > 1


# ---------------------------------------------------------------------------------------------------------------
# LangChain: images and videos into any vector store


@pytest.mark.parametrize("kind", ["in-memory", "qdrant"])
def test_media_documents_go_into_any_vector_store_as_their_media(embedder, reranker, kind):
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from retrieval_pipeline.integrations.langchain import (
        Qwen3VLEmbeddings,
        Qwen3VLRerank,
        add_images,
        add_media_documents,
    )

    emb = Qwen3VLEmbeddings(embedder=embedder)
    if kind == "qdrant":
        from langchain_qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient, models

        client = QdrantClient(":memory:")
        client.create_collection("docs", vectors_config=models.VectorParams(size=64, distance=models.Distance.COSINE))
        store = QdrantVectorStore(client=client, collection_name="docs", embedding=emb)
    else:
        store = InMemoryVectorStore(embedding=emb)
    store.add_texts(["a cup of coffee"])
    add_images(store, [CHELSEA], [{"title": "cat"}])
    add_media_documents(store, [Document(page_content="a moving square", metadata={"video": VIDEO})])
    by_vector = store.similarity_search_with_score_by_vector(emb.embed_image_query(CHELSEA), k=3)
    (top, score), *_ = by_vector
    assert top.metadata["image"] == CHELSEA and top.metadata["title"] == "cat"
    query = embedder.embed([{"image": CHELSEA}], instruction=QUERY_INSTRUCTION)[0]
    assert score == pytest.approx(float(query @ embedder.embed([{"image": CHELSEA}])[0]), abs=1e-4)
    video = next(d for d, _ in by_vector if "video" in d.metadata)
    assert video.page_content == "a moving square"
    ranked = Qwen3VLRerank(reranker=reranker, top_n=3).compress_documents([d for d, _ in by_vector], "a cat")
    scores = reranker.score("a cat", [{"image": CHELSEA}, {"text": "a moving square", "video": VIDEO}])
    got = {d.metadata.get("image") or d.metadata.get("video"): d.metadata["relevance_score"] for d in ranked}
    assert got[CHELSEA] == pytest.approx(scores[0], abs=1e-5) and got[VIDEO] == pytest.approx(scores[1], abs=1e-5)


def test_a_store_that_takes_text_only_is_refused_by_name(embedder):
    from langchain_core.vectorstores import VectorStore

    from retrieval_pipeline.integrations.langchain import Qwen3VLEmbeddings, add_images

    class TextOnly(VectorStore):
        def __init__(self, embedding):
            self.embedding = embedding

        @property
        def embeddings(self):
            return self.embedding

        def add_texts(self, texts, metadatas=None, **kwargs):
            raise AssertionError("text vectors for images")

        def similarity_search(self, query, k=4, **kwargs):
            return []

        @classmethod
        def from_texts(cls, texts, embedding, metadatas=None, **kwargs):
            return cls(embedding)

    with pytest.raises(TypeError, match="TextOnly takes text only"):
        add_images(TextOnly(Qwen3VLEmbeddings(embedder=embedder)), [CHELSEA])
