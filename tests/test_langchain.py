"""LangChain adapters: the standard suites from langchain-tests, equality with the core classes, user-style chains."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
from conftest import MEDIA, TINY
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnablePassthrough
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from integrations.langchain import Qwen3VLEmbeddings, Qwen3VLRerank, Qwen3VLRetriever, add_images
from retrieval_pipeline import InputError
from retrieval_pipeline.ingest import Indexer
from retrieval_pipeline.retriever import QUERY_INSTRUCTION
from retrieval_pipeline.store import EdgeStore

CHELSEA = str(MEDIA / "chelsea.jpg")
VIDEO = str(MEDIA / "moving_square.mp4")
SETTINGS = {"max_pixels": 65536, "total_pixels": 1048576}


def close(a, b, tol=1e-5):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max()) < tol


# ---------------------------------------------------------------------------------------------------------------
# LangChain's standard suites, on the tiny checkpoint


class TestQwen3VLEmbeddingsStandardUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return Qwen3VLEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model_name": str(TINY), **SETTINGS}

    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return {"QWEN3VL_RAG_EMBEDDING_MODEL": str(TINY)}, dict(SETTINGS), {"model_name": str(TINY)}


class TestQwen3VLEmbeddingsStandardIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return Qwen3VLEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model_name": str(TINY), **SETTINGS}


# ---------------------------------------------------------------------------------------------------------------
# Qwen3VLEmbeddings


@pytest.fixture(scope="module")
def lc_embed(embedder):
    return Qwen3VLEmbeddings(embedder=embedder, batch_size=3)


@pytest.fixture(scope="module")
def lc_rerank(reranker):
    return Qwen3VLRerank(reranker=reranker, top_n=3)


def test_embeddings_equal_core(lc_embed, embedder):
    docs = lc_embed.embed_documents(["a cat", "a dog on a beach"])
    assert close(docs, embedder.embed(["a cat", "a dog on a beach"]))
    query = lc_embed.embed_query("a cat")
    assert close(query, embedder.embed(["a cat"], instruction=QUERY_INSTRUCTION)[0])
    assert not close(query, docs[0], 1e-3)
    assert close(lc_embed.embed_image([CHELSEA])[0], embedder.embed([{"image": CHELSEA}])[0])
    assert close(
        lc_embed.embed_video([VIDEO], fps=2.0, max_frames=4)[0],
        embedder.embed([{"video": VIDEO, "fps": 2.0, "max_frames": 4}])[0],
    )
    mixed = {"text": "a cat", "image": CHELSEA}
    assert close(lc_embed.embed_multimodal([mixed])[0], embedder.embed([mixed])[0])
    assert close(
        lc_embed.embed_multimodal([mixed], query=True)[0], embedder.embed([mixed], instruction=QUERY_INSTRUCTION)[0]
    )
    assert close(asyncio.run(lc_embed.aembed_query("a cat")), query)
    assert lc_embed.embed_documents([]) == []


def test_embeddings_options(embedder):
    small = Qwen3VLEmbeddings(embedder=embedder, dim=16)
    assert len(small.embed_query("x")) == 16
    with pytest.raises(ValueError, match="Matryoshka"):
        Qwen3VLEmbeddings(embedder=embedder, dim=10_000)
    with pytest.raises(ValueError, match="either embedder"):
        Qwen3VLEmbeddings(embedder=embedder, max_pixels=1000)
    loaded = Qwen3VLEmbeddings(model_name=str(TINY), max_pixels=65536, device="cpu")
    assert loaded.model_kwargs == {"max_pixels": 65536, "device": "cpu"}
    assert loaded.embedder.media.max_pixels == 65536


# ---------------------------------------------------------------------------------------------------------------
# Qwen3VLRerank


def _documents():
    return [
        Document(page_content="A cat sleeps on a red sofa.", id="t1"),
        Document(page_content="", metadata={"image": CHELSEA}, id="i1"),
        Document(page_content="a photo", metadata={"image": str(MEDIA / "coffee.jpg")}, id="i2"),
        Document(page_content="a clip", metadata={"video": VIDEO}, id="v1"),
        Document(page_content="Rockets launch in spring.", id="t2"),
    ]


def test_rerank_scores_equal_core(lc_rerank, reranker):
    assert isinstance(lc_rerank, BaseDocumentCompressor)
    docs = _documents()
    expected = reranker.score(
        "a cat",
        [
            {"text": "A cat sleeps on a red sofa."},
            {"image": CHELSEA},
            {"text": "a photo", "image": str(MEDIA / "coffee.jpg")},
            {"text": "a clip", "video": VIDEO},
            {"text": "Rockets launch in spring."},
        ],
    )
    out = Qwen3VLRerank(reranker=reranker, top_n=None).compress_documents(docs, "a cat")
    assert len(out) == 5
    by_id = {d.id: d.metadata["relevance_score"] for d in out}
    for doc_id, score in zip(["t1", "i1", "i2", "v1", "t2"], expected):
        assert by_id[doc_id] == pytest.approx(score, abs=1e-6)
    top = lc_rerank.compress_documents(docs, "a cat")
    assert [d.id for d in top] == [d.id for d in out[:3]]
    assert "relevance_score" not in docs[0].metadata  # inputs are not modified
    assert [d.id for d in asyncio.run(lc_rerank.acompress_documents(docs, "a cat"))] == [d.id for d in top]


def test_rerank_custom_keys_and_errors(reranker):
    custom = Qwen3VLRerank(reranker=reranker, image_key="img_path", top_n=None)
    doc = Document(page_content="", metadata={"img_path": CHELSEA}, id="x")
    assert len(custom.compress_documents([doc], "cat")) == 1
    bad = [Document(page_content="ok", id="a"), Document(page_content="", metadata={"img_path": "/nope.png"}, id="b")]
    with pytest.raises(InputError, match="document b, field 'image': file not found"):
        custom.compress_documents(bad, "q")
    with pytest.raises(InputError, match="document empty: no page_content"):
        custom.compress_documents([Document(page_content="", id="empty")], "q")
    assert custom.compress_documents([], "q") == []


# ---------------------------------------------------------------------------------------------------------------
# End to end, as a user wires it


def format_docs(docs):
    return "\n\n".join(d.page_content or f"[image {d.metadata.get('image')}]" for d in docs)


def test_qdrant_vector_store_compression_retriever_and_lcel(lc_embed, lc_rerank, tmp_path):
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient
    from qdrant_client.models import Distance, VectorParams

    client = QdrantClient(path=str(tmp_path / "qdrant"))
    client.create_collection("docs", vectors_config=VectorParams(size=64, distance=Distance.COSINE))
    store = QdrantVectorStore(client=client, collection_name="docs", embedding=lc_embed)
    store.add_texts(
        ["The office cat sleeps on the red sofa.", "Revenue grew in the third quarter.", "The rocket launch slipped."],
        metadatas=[{"kind": "note"}] * 3,
    )
    images = [CHELSEA, str(MEDIA / "coffee.jpg"), str(MEDIA / "rocket.jpg")]
    add_images(store, images, [{"kind": "photo"}] * 3)
    assert client.count("docs").count == 6
    found = store.similarity_search("a cat", k=6)
    assert {d.metadata.get("image") for d in found if d.metadata.get("image")} == set(images)

    retriever = ContextualCompressionRetriever(
        base_compressor=lc_rerank, base_retriever=store.as_retriever(search_kwargs={"k": 6})
    )
    docs = retriever.invoke("a cat on a sofa")
    assert len(docs) == 3
    scores = [d.metadata["relevance_score"] for d in docs]
    assert scores == sorted(scores, reverse=True)

    prompt = ChatPromptTemplate.from_messages([("system", "Context:\n{context}"), ("human", "{question}")])
    llm = FakeListChatModel(responses=["The cat sleeps on the red sofa."])
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()
    assert chain.invoke("Where does the cat sleep?") == "The cat sleeps on the red sofa."
    client.close()


def test_native_retriever_in_an_lcel_chain(embedder, reranker, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(MEDIA / "chelsea.jpg", folder / "chelsea.jpg")
    (folder / "cats.md").write_text("The office cat sleeps on the red sofa.")
    (folder / "rockets.txt").write_text("The rocket launch slipped to the spring.")
    store = EdgeStore(tmp_path / "edge", "docs")
    Indexer(embedder, store).index_paths([folder], show_progress_bar=False)
    retriever = Qwen3VLRetriever(embedder=embedder, store=store, reranker=reranker, top_k=2)
    assert isinstance(retriever, BaseRetriever)
    docs = retriever.invoke("a cat")
    assert len(docs) == 2 and all("relevance_score" in d.metadata for d in docs)
    assert all(d.metadata.get("image") for d in docs if d.metadata["modality"] == "image")
    assert [d.id for d in asyncio.run(retriever.ainvoke("a cat"))] == [d.id for d in docs]
    prompt = ChatPromptTemplate.from_messages([("system", "{context}"), ("human", "{question}")])
    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | prompt
        | FakeListChatModel(responses=["ok"])
        | StrOutputParser()
    )
    assert chain.invoke("a cat") == "ok"
    store.close()


def test_chat_model_sees_images(generator):
    from langchain_core.messages import HumanMessage, SystemMessage

    from integrations.langchain import ChatQwen3VL

    chat = ChatQwen3VL(generator=generator, max_new_tokens=8)
    message = HumanMessage(
        content=[
            {"type": "text", "text": "What is in the picture?"},
            {"type": "image_url", "image_url": {"url": CHELSEA}},
        ]
    )
    reply = chat.invoke([SystemMessage(content="Be brief."), message])
    assert isinstance(reply.content, str)
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | chat | StrOutputParser()
    assert isinstance(chain.invoke({"question": "hi"}), str)
    with pytest.raises(ValueError, match="unsupported message content block"):
        chat.invoke([HumanMessage(content=[{"type": "audio", "data": "x"}])])


def test_retrievers_default_to_the_cli_store(embedder, tmp_path, monkeypatch):
    from integrations.llama_index import Qwen3VLRetriever as LlamaIndexRetriever
    from retrieval_pipeline.store import default_db

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    store = EdgeStore(default_db(), "default")  # where `qwen3vl-rag index` puts things
    Indexer(embedder, store).index_items(["a cat on a sofa", "a rocket"])
    store.close()
    langchain_retriever = Qwen3VLRetriever(embedder=embedder, top_k=1)
    assert langchain_retriever.store.location == str(tmp_path / "qwen3vl-rag" / "default")
    assert langchain_retriever.invoke("cat")[0].page_content in ("a cat on a sofa", "a rocket")
    langchain_retriever.store.close()
    llama_retriever = LlamaIndexRetriever(embedder, top_k=1)
    assert len(llama_retriever.retrieve("cat")) == 1
    llama_retriever.pipeline.store.close()
