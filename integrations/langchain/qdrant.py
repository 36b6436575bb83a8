"""Images into a ``langchain_qdrant.QdrantVectorStore`` through ``embed_image`` (path kept in metadata)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any


def add_images(
    vector_store: Any,
    uris: Sequence[str],
    metadatas: Sequence[dict[str, Any]] | None = None,
    *,
    ids: Sequence[str] | None = None,
    image_key: str = "image",
) -> list[str]:
    """Embed images with the store's :class:`Qwen3VLEmbeddings` and upsert them in the store's own payload
    layout (``page_content`` empty, the image path under ``metadata[image_key]``), so the store's searches,
    retrievers and :class:`Qwen3VLRerank` see them like any document."""
    from qdrant_client import models

    embeddings = vector_store.embeddings
    if not hasattr(embeddings, "embed_image"):
        raise TypeError(f"the vector store's embeddings ({type(embeddings).__name__}) cannot embed images")
    uris = list(uris)
    metadatas = list(metadatas) if metadatas is not None else [{} for _ in uris]
    ids = list(ids) if ids is not None else [str(uuid.uuid4()) for _ in uris]
    if not len(uris) == len(metadatas) == len(ids):
        raise ValueError("uris, metadatas and ids must have the same length")
    vectors = embeddings.embed_image(uris)
    vector_name = getattr(vector_store, "vector_name", "") or ""
    points = [
        models.PointStruct(
            id=pid,
            vector={vector_name: vec} if vector_name else vec,
            payload={
                vector_store.content_payload_key: "",
                vector_store.metadata_payload_key: {**meta, image_key: uri},
            },
        )
        for pid, uri, meta, vec in zip(ids, uris, metadatas, vectors)
    ]
    vector_store.client.upsert(vector_store.collection_name, points=points, wait=True)
    return ids
