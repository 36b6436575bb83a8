"""Images and videos into any LangChain vector store.

A vector store embeds ``page_content`` only (``embed_documents``), so a document whose metadata names an image or a
video would be stored with the vector of its text. These helpers embed such documents as their image / video with
their text (what :class:`Qwen3VLRerank` also sees), then add the vectors the way the store itself stores them:
``langchain_qdrant.QdrantVectorStore`` (its payload layout), ``InMemoryVectorStore`` (its records), or any store
with ``add_embeddings`` (e.g. FAISS). Another store is refused by name, never filled with text vectors.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document

from .._common import IMAGE_KEY, VIDEO_KEY
from .rerank import document_to_input


def add_images(
    vector_store: Any,
    uris: Sequence[str],
    metadatas: Sequence[dict[str, Any]] | None = None,
    *,
    ids: Sequence[str] | None = None,
    image_key: str = IMAGE_KEY,
) -> list[str]:
    """Images by path / URL, each stored as a document with empty ``page_content`` and its path under
    ``metadata[image_key]``, so the store's searches, retrievers and :class:`Qwen3VLRerank` see it."""
    uris = list(uris)
    metadatas = list(metadatas) if metadatas is not None else [{} for _ in uris]
    if len(metadatas) != len(uris):
        raise ValueError(f"{len(uris)} uris and {len(metadatas)} metadatas: one each")
    documents = [Document(page_content="", metadata={**meta, image_key: uri}) for uri, meta in zip(uris, metadatas)]
    return add_media_documents(vector_store, documents, ids=ids, image_key=image_key)


def add_media_documents(
    vector_store: Any,
    documents: Sequence[Document],
    *,
    ids: Sequence[str] | None = None,
    image_key: str = IMAGE_KEY,
    video_key: str = VIDEO_KEY,
) -> list[str]:
    """Documents whose metadata names an image (``image_key``) or a video (``video_key``), embedded as that media
    with their ``page_content`` (documents without media: as their text) by the store's
    :class:`Qwen3VLEmbeddings`, and added to ``vector_store``. Returns the ids."""
    embeddings = getattr(vector_store, "embeddings", None)
    if not hasattr(embeddings, "embed_multimodal"):
        raise TypeError(
            f"the vector store's embeddings ({type(embeddings).__name__}) cannot embed images or videos: "
            "build the store with Qwen3VLEmbeddings"
        )
    documents = list(documents)
    ids = list(ids) if ids is not None else [d.id or str(uuid.uuid4()) for d in documents]
    if len(ids) != len(documents):
        raise ValueError(f"{len(documents)} documents and {len(ids)} ids: one each")
    vectors = embeddings.embed_multimodal([document_to_input(d, image_key, video_key) for d in documents])
    return add_vectors(vector_store, documents, vectors, ids)


def add_vectors(
    vector_store: Any, documents: Sequence[Document], vectors: Sequence[Sequence[float]], ids: Sequence[str]
) -> list[str]:
    """Documents with vectors computed elsewhere, stored as ``vector_store`` stores its own."""
    from langchain_core.vectorstores import InMemoryVectorStore

    ids = list(ids)
    if hasattr(vector_store, "client") and hasattr(vector_store, "content_payload_key"):  # langchain-qdrant
        from qdrant_client import models

        name = getattr(vector_store, "vector_name", "") or ""
        points = [
            models.PointStruct(
                id=pid,
                vector={name: list(vec)} if name else list(vec),
                payload={
                    vector_store.content_payload_key: doc.page_content,
                    vector_store.metadata_payload_key: doc.metadata,
                },
            )
            for pid, doc, vec in zip(ids, documents, vectors)
        ]
        vector_store.client.upsert(vector_store.collection_name, points=points, wait=True)
    elif isinstance(vector_store, InMemoryVectorStore):
        for pid, doc, vec in zip(ids, documents, vectors):
            record = {"id": pid, "vector": list(vec), "text": doc.page_content, "metadata": doc.metadata}
            vector_store.store[pid] = record
    elif hasattr(vector_store, "add_embeddings"):
        pairs = [(doc.page_content, list(vec)) for doc, vec in zip(documents, vectors)]
        return list(vector_store.add_embeddings(pairs, metadatas=[d.metadata for d in documents], ids=ids))
    else:
        raise TypeError(
            f"{type(vector_store).__name__} takes text only (no way to add precomputed vectors is known for it): "
            "use langchain_qdrant.QdrantVectorStore, InMemoryVectorStore or a store with add_embeddings"
        )
    return ids
