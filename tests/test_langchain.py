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
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
)
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests

from retrieval_pipeline import InputError
from retrieval_pipeline.ingest import Indexer
from retrieval_pipeline.integrations.langchain import (
    ChatQwen3VL,
    Qwen3VLEmbeddings,
    Qwen3VLRerank,
    Qwen3VLRetriever,
    add_images,
)
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


@pytest.fixture(scope="module")
def indexed_store(embedder, tmp_path_factory):
    store = EdgeStore(tmp_path_factory.mktemp("edge") / "db", "docs")
    texts = ["a cat on a red sofa", "a dog on a beach", "a rocket launch", "quarterly revenue", "a cup of coffee"]
    Indexer(embedder, store).index_items(texts)
    yield store
    store.close()


class TestQwen3VLRetrieverStandardIntegration(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _models(self, embedder, reranker, indexed_store):
        self._params = {"embedder": embedder, "reranker": reranker, "store": indexed_store}

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return Qwen3VLRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return self._params

    @property
    def retriever_query_example(self) -> str:
        return "a cat"


# A local model: no network client, so no `timeout` / `max_retries` / `api_key` among its standard parameters.
LOCAL_CHAT_PARAMS = {"temperature": 0, "max_tokens": 8, "stop": []}


class _ChatQwen3VLCapabilities:
    """What the chat model supports, declared once for both standard chat suites."""

    @pytest.fixture(autouse=True)
    def _shared_generator(self, generator):
        self._generator = generator  # one loaded tiny model for every test (construction stays cheap)

    @property
    def chat_model_class(self) -> type[ChatQwen3VL]:
        return ChatQwen3VL

    @property
    def chat_model_params(self) -> dict:
        return {"generator": self._generator, "max_new_tokens": 8}

    @property
    def standard_chat_model_params(self) -> dict:
        return dict(LOCAL_CHAT_PARAMS)

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return False  # the core generator returns text only

    @property
    def supports_model_override(self) -> bool:
        return False  # one loaded checkpoint per instance


class TestChatQwen3VLStandardUnit(_ChatQwen3VLCapabilities, ChatModelUnitTests):
    @property
    def init_from_env_params(self) -> tuple[dict, dict, dict]:
        return {"QWEN3VL_RAG_GENERATOR_MODEL": str(TINY)}, {"max_tokens": 8}, {"model": str(TINY)}


class TestChatQwen3VLStandardIntegration(_ChatQwen3VLCapabilities, ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _offline_image(self, monkeypatch):
        # the suite downloads its test image; serve a local one so the test runs offline
        import httpx
        from langchain_tests.integration_tests import chat_models

        image = (MEDIA / "chelsea.jpg").read_bytes()
        monkeypatch.setattr(chat_models.httpx, "get", lambda *a, **k: httpx.Response(200, content=image))


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


def test_a_single_string_or_empty_object_is_refused(lc_embed):
    """embed_documents("hello") used to embed five one-letter texts; an empty object is refused by the core."""
    with pytest.raises(TypeError, match="wrap it in a list"):
        lc_embed.embed_documents("hello")
    with pytest.raises(TypeError, match="wrap it in a list"):
        lc_embed.embed_multimodal({"text": "one object"})
    with pytest.raises(InputError, match="empty input") as info:
        lc_embed.embed_multimodal(["fine", {}])
    assert info.value.index == 1


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


BAD_MIN_SCORES = (float("nan"), float("inf"), 2.0, -1.5)


def _between(scores, i):
    """A cut-off strictly between the ``i``-th and the next of ``scores`` (best first)."""
    assert scores[i] > scores[i + 1], scores
    return (scores[i] + scores[i + 1]) / 2


def test_rerank_min_score_keeps_the_documents_at_or_above_it(reranker):
    texts = ["A cat sleeps on a red sofa.", "A kitten plays.", "Rockets launch in spring.", "Quarterly revenue."]
    docs = [Document(page_content=t, id=f"d{i}") for i, t in enumerate(texts)]
    every = Qwen3VLRerank(reranker=reranker, top_n=None).compress_documents(docs, "a cat")
    scores = [d.metadata["relevance_score"] for d in every]
    ids = [d.id for d in every]
    cut = _between(scores, 1)
    kept = Qwen3VLRerank(reranker=reranker, top_n=None, min_score=cut).compress_documents(docs, "a cat")
    assert [d.id for d in kept] == ids[:2] and all(d.metadata["relevance_score"] >= cut for d in kept)
    at = Qwen3VLRerank(reranker=reranker, top_n=None, min_score=scores[1])  # a document scoring exactly it stays
    assert [d.id for d in at.compress_documents(docs, "a cat")] == ids[:2]
    one = Qwen3VLRerank(reranker=reranker, top_n=1, min_score=cut)  # the cut first, then top_n
    assert [d.id for d in asyncio.run(one.acompress_documents(docs, "a cat"))] == ids[:1]
    above = Qwen3VLRerank(reranker=reranker, min_score=float(np.nextafter(scores[0], 2)))
    assert above.compress_documents(docs, "a cat") == []
    for bad in BAD_MIN_SCORES:
        with pytest.raises(ValueError, match="min_score must be"):
            Qwen3VLRerank(reranker=reranker, min_score=bad)


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
    retriever = Qwen3VLRetriever(embedder=embedder, store=store, reranker=reranker, k=2)
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

    from retrieval_pipeline.integrations.langchain import ChatQwen3VL

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
    from retrieval_pipeline.integrations.llama_index import Qwen3VLRetriever as LlamaIndexRetriever
    from retrieval_pipeline.store import default_db

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    store = EdgeStore(default_db(), "default")  # where `qwen3vl-rag index` puts things
    Indexer(embedder, store).index_items(["a cat on a sofa", "a rocket"])
    store.close()
    langchain_retriever = Qwen3VLRetriever(embedder=embedder, k=1)
    assert langchain_retriever.store.location == str(tmp_path / "qwen3vl-rag" / "default")
    assert langchain_retriever.invoke("cat")[0].page_content in ("a cat on a sofa", "a rocket")
    langchain_retriever.store.close()
    llama_retriever = LlamaIndexRetriever(embedder, top_k=1)
    assert len(llama_retriever.retrieve("cat")) == 1
    llama_retriever.pipeline.store.close()


# ---------------------------------------------------------------------------------------------------------------
# One vocabulary: canonical names, deprecated aliases that keep working, the core's defaults


def test_retriever_takes_k_and_top_k_still_works(embedder, indexed_store):
    with pytest.warns(DeprecationWarning, match="'top_k' is deprecated, use 'k'"):
        old = Qwen3VLRetriever(embedder=embedder, store=indexed_store, top_k=2)
    assert old.k == 2 and len(old.invoke("a cat")) == 2
    with pytest.warns(DeprecationWarning):
        assert old.top_k == 2
    with pytest.warns(DeprecationWarning):
        old.top_k = 3
    assert old.k == 3 and len(old.invoke("a cat")) == 3
    assert len(old.invoke("a cat", k=1)) == 1
    for bad in (0, -1, True):  # k=0 used to give the default 3 silently
        with pytest.raises(ValueError, match="k must be a positive int"):
            old.invoke("a cat", k=bad)
    with pytest.raises(ValueError, match="pass 'k' only"):
        Qwen3VLRetriever(embedder=embedder, store=indexed_store, top_k=2, k=3)


@pytest.mark.parametrize("reranked", [True, False])
def test_retriever_min_score_keeps_the_documents_at_or_above_it(embedder, reranker, indexed_store, reranked):
    """The core retriever's rule: the rerank score when reranked (``metadata["relevance_score"]``), else the
    cosine; set on the retriever or per call."""
    models = {"embedder": embedder, "store": indexed_store, "reranker": reranker if reranked else None}
    every = Qwen3VLRetriever(**models, k=5).invoke("a cat")
    assert len(every) == 5
    if reranked:
        assert all(d.metadata["relevance_score"] == d.metadata["score"] for d in every)
    scores = [d.metadata["score"] for d in every]
    ids = [d.id for d in every]
    cut = _between(scores, 1)
    kept = Qwen3VLRetriever(**models, k=5, min_score=cut).invoke("a cat")
    assert [d.id for d in kept] == ids[:2] and all(d.metadata["score"] >= cut for d in kept)
    retriever = Qwen3VLRetriever(**models, k=5)
    assert [d.id for d in retriever.invoke("a cat", min_score=cut)] == ids[:2]  # per call
    assert [d.id for d in asyncio.run(retriever.ainvoke("a cat", min_score=scores[2]))] == ids[:3]  # at it: kept
    assert [d.id for d in retriever.invoke("a cat", k=1, min_score=cut)] == ids[:1]
    assert Qwen3VLRetriever(**models, min_score=float(np.nextafter(scores[0], 2))).invoke("a cat") == []
    for bad in BAD_MIN_SCORES:
        with pytest.raises(ValueError, match="min_score must be"):
            Qwen3VLRetriever(**models, min_score=bad)
        with pytest.raises(ValueError, match="min_score must be"):
            retriever.invoke("a cat", min_score=bad)


def test_deprecated_adapter_names_keep_working(embedder, reranker):
    with pytest.warns(DeprecationWarning, match="'text_instruction' is deprecated, use 'document_instruction'"):
        old = Qwen3VLEmbeddings(embedder=embedder, text_instruction="Represent the passage.")
    assert old.document_instruction == "Represent the passage."
    assert close(old.embed_documents(["a cat"]), embedder.embed(["a cat"], instruction="Represent the passage."))
    with pytest.warns(DeprecationWarning, match="'core_kwargs' is deprecated, use 'model_kwargs'"):
        with pytest.raises(ValueError, match="either embedder"):
            Qwen3VLEmbeddings(embedder=embedder, core_kwargs={"max_pixels": 1000})
    with pytest.raises(ValueError, match="either reranker"):
        Qwen3VLRerank(reranker=reranker, device="cpu")


def test_injected_models_name_themselves_and_defaults_come_from_the_core(embedder, reranker, generator):
    from retrieval_pipeline import pipeline
    from retrieval_pipeline.integrations import _common
    from retrieval_pipeline.integrations.langchain import chat_model, embeddings, rerank

    assert embeddings.DEFAULT_MODEL == pipeline.DEFAULT_EMBEDDING_MODEL == _common.DEFAULT_MODELS["embedding"]
    assert rerank.DEFAULT_MODEL == pipeline.DEFAULT_RERANKER_MODEL
    assert chat_model.DEFAULT_MODEL == pipeline.DEFAULT_GENERATOR_MODEL
    assert Qwen3VLEmbeddings(embedder=embedder).model_name == embedder.model_name_or_path
    assert Qwen3VLRerank(reranker=reranker).model == reranker.model_name_or_path
    assert ChatQwen3VL(generator=generator).model == generator.model_name_or_path


def test_chat_model_options(generator):
    chat = ChatQwen3VL(generator=generator, max_tokens=3)  # LangChain's standard name of max_new_tokens
    assert chat.max_new_tokens == 3
    assert chat._get_ls_params()["ls_max_tokens"] == 3
    assert ChatQwen3VL(generator=generator, max_new_tokens=4).max_new_tokens == 4
    with pytest.raises(ValueError, match="either generator"):
        ChatQwen3VL(generator=generator, device="cpu")
    with pytest.raises(ValueError, match="decodes greedily"):
        ChatQwen3VL(generator=generator, temperature=0.7)
    reply = chat.invoke("hi")
    chunks = list(chat.stream("hi"))
    assert "".join(c.content for c in chunks) == reply.content  # greedy: the same reply, token by token
    assert chunks[-1].chunk_position == "last"
    assert ChatQwen3VL(generator=generator, stop=[reply.content[1:]]).invoke("hi").content == reply.content[:1]


def test_both_retrievers_open_an_indexed_folder_with_from_path(embedder, tmp_path):
    from retrieval_pipeline.integrations.llama_index import Qwen3VLRetriever as LlamaIndexRetriever

    store = EdgeStore(tmp_path / "edge", "notes")
    Indexer(embedder, store).index_items(["a cat on a sofa", "a rocket", "a cup of coffee"])
    store.close()
    lc = Qwen3VLRetriever.from_path(
        tmp_path / "edge", embedding_model=str(TINY), reranker_model=str(TINY), k=2, collection="notes"
    )
    docs = lc.invoke("a cat")
    assert len(docs) == 2 and all("relevance_score" in d.metadata for d in docs)
    lc.store.close()
    li = LlamaIndexRetriever.from_path(tmp_path / "edge", embedding_model=str(TINY), collection="notes", top_k=3)
    assert len(li.retrieve("a cat")) == 3
    li.pipeline.store.close()
