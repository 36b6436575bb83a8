"""The adapters as clients of a running ``serve`` (``base_url=``): the same numbers as the local models (1e-5) and
the same errors, without loading a model in the client process."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MEDIA, LiveServer

from retrieval_pipeline import InputError
from retrieval_pipeline.client import RemoteEmbedder, RemoteReranker
from retrieval_pipeline.errors import ModelLoadError
from retrieval_pipeline.pipeline import RAGPipeline
from retrieval_pipeline.retriever import TwoStageRetriever
from retrieval_pipeline.serving import create_app
from retrieval_pipeline.store import EdgeStore

TOL = 1e-5
TEXTS = ["a cat on a sofa", "quarterly revenue table"]


@pytest.fixture(scope="module")
def url(embedder, reranker):
    with LiveServer(create_app(embedder=embedder, reranker=reranker)) as base:
        yield base


def test_langchain_adapters_through_the_server(url, embedder, reranker):
    from langchain_core.documents import Document

    from retrieval_pipeline.integrations.langchain import Qwen3VLEmbeddings, Qwen3VLRerank

    remote = Qwen3VLEmbeddings(base_url=url)
    assert isinstance(remote.embedder, RemoteEmbedder)
    assert np.abs(np.array(remote.embed_documents(TEXTS)) - embedder.embed(TEXTS)).max() < TOL
    query = embedder.embed(["a cat"], instruction=remote.query_instruction)[0]
    assert np.abs(np.array(remote.embed_query("a cat")) - query).max() < TOL
    image = str(MEDIA / "chelsea.jpg")  # a local file: sent as a data URI
    assert np.abs(np.array(remote.embed_image([image])) - embedder.embed([{"image": image}])).max() < TOL
    short = Qwen3VLEmbeddings(base_url=url, dim=16)
    assert np.abs(np.array(short.embed_documents(TEXTS)) - embedder.embed(TEXTS, dim=16)).max() < TOL

    docs = [Document(page_content=t) for t in TEXTS + ["a dog"]]
    ranked = Qwen3VLRerank(base_url=url, top_n=3).compress_documents(docs, "a cat")
    expected = reranker.score("a cat", TEXTS + ["a dog"])
    for doc in ranked:
        i = [d.page_content for d in docs].index(doc.page_content)
        assert abs(doc.metadata["relevance_score"] - expected[i]) < TOL


def test_llama_index_adapters_through_the_server(url, embedder, reranker):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from retrieval_pipeline.integrations.llama_index import Qwen3VLEmbedding, Qwen3VLRerank

    remote = Qwen3VLEmbedding(base_url=url)
    got = np.array(remote.get_text_embedding_batch(TEXTS))
    assert np.abs(got - embedder.embed(TEXTS, instruction=remote.document_instruction)).max() < TOL
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in TEXTS]
    out = Qwen3VLRerank(base_url=url, top_n=2).postprocess_nodes(nodes, query_bundle=QueryBundle("a cat"))
    expected = dict(zip(TEXTS, reranker.score("a cat", TEXTS)))
    for n in out:
        assert abs(n.score - expected[n.node.get_content()]) < TOL


def test_two_stage_retrieval_through_the_server_equals_local(url, embedder, reranker, tmp_path):
    from helpers.cli import CORPUS

    store = EdgeStore(tmp_path / "db", "docs")
    RAGPipeline(store, embedder=embedder).index([CORPUS], show_progress_bar=False)
    local = TwoStageRetriever(embedder, store, reranker).retrieve("revenue chart", top_k=4)
    remote = TwoStageRetriever(RemoteEmbedder(url), store, RemoteReranker(url)).retrieve("revenue chart", top_k=4)
    assert [h.id for h in remote] == [h.id for h in local]  # the collection opens: the model is the same
    assert np.abs(np.array([h.score for h in remote]) - [h.score for h in local]).max() < TOL
    store.close()


def test_the_same_errors(url, embedder):
    remote = RemoteEmbedder(url)
    bad = [TEXTS[0], {"image": "data:image/png;base64,bm90IGFuIGltYWdl"}]
    with pytest.raises(InputError) as local_error:
        embedder.embed(bad)
    with pytest.raises(InputError) as remote_error:
        remote.embed(bad)
    assert remote_error.value.index == local_error.value.index == 1
    with pytest.raises(ValueError, match="Matryoshka range"):
        remote.check_dim(10_000)
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        RemoteEmbedder("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="base_url= uses the server's model"):
        from retrieval_pipeline.integrations.langchain import Qwen3VLEmbeddings

        Qwen3VLEmbeddings(base_url=url, device="cpu")
