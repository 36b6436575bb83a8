"""LlamaIndex nodes and query bundles <-> the core's inputs and hits (what the models see, what retrieval returns)."""

from __future__ import annotations

import base64
from typing import Any

from llama_index.core.schema import BaseNode, ImageNode, MetadataMode, NodeWithScore, QueryBundle, TextNode

from retrieval_pipeline import InputError
from retrieval_pipeline.retriever import Hit

from .._common import LEGACY_VIDEO_KEY, VIDEO_KEY, hit_metadata, media_input

RETRIEVAL_SCORE_KEY = "retrieval_score"  # the first-stage score a reranker keeps in node metadata


def _node_image(node: BaseNode) -> Any:
    if isinstance(node, ImageNode):
        if node.image:
            return base64.b64decode(node.image)
        image = node.image_path or node.image_url
        return str(image) if image is not None else None
    resource = getattr(node, "image_resource", None)
    if resource is None:
        return None
    if resource.data:
        return base64.b64decode(resource.data)
    image = resource.path or resource.url
    return str(image) if image is not None else None


def _node_video(node: BaseNode, video_key: str) -> Any:
    metadata = node.metadata or {}
    video = metadata.get(video_key)
    if video is None:
        video = metadata.get(LEGACY_VIDEO_KEY)
    resource = getattr(node, "video_resource", None)
    if video is None and resource is not None and (resource.path or resource.url):
        video = str(resource.path or resource.url)
    return video


# Metadata of retrieved nodes that is bookkeeping, not content: kept from the LLM's prompt (LlamaIndex shows a node's
# metadata to the LLM unless it is excluded). Their embedding text excludes every stored field: it is the text the
# collection embedded.
HIDDEN_FROM_LLM = ("vector_score", "rerank_score", RETRIEVAL_SCORE_KEY, "content_hash", "sources", "files", "span")
HIDDEN_FROM_LLM += ("chunk", "duration", LEGACY_VIDEO_KEY)


def node_text(node: BaseNode, video_key: str = VIDEO_KEY) -> str:
    """A node's text as LlamaIndex embeds it (``MetadataMode.EMBED``: with the metadata it does not exclude), less
    the keys naming its video: the video itself is part of the input."""
    media = [k for k in (video_key, LEGACY_VIDEO_KEY) if k in node.metadata]
    hidden = [k for k in media if k not in node.excluded_embed_metadata_keys]
    if hidden:
        node = node.model_copy(update={"excluded_embed_metadata_keys": [*node.excluded_embed_metadata_keys, *hidden]})
    return node.get_content(metadata_mode=MetadataMode.EMBED)


def node_media(node: BaseNode, video_key: str = VIDEO_KEY) -> bool:
    """Whether the node has an image or a video (else it is text, and LlamaIndex's text path embeds it)."""
    return _node_image(node) is not None or _node_video(node, video_key) is not None


def node_to_input(node: BaseNode, video_key: str = VIDEO_KEY) -> dict[str, Any]:
    """What the Qwen3-VL models see for a LlamaIndex node: its text as LlamaIndex embeds it (:func:`node_text`),
    plus its image or video -- the same for the embedding and the reranker, as LlamaIndex's own rerankers do.

    Images: ``ImageNode.image`` (base64), ``image_path``, ``image_url``, or a ``Node``'s ``image_resource``.
    Videos: a path / URL in ``node.metadata[video_key]`` (or the older key ``"video_path"``), or a ``Node``'s
    ``video_resource``.
    """
    item = media_input(node_text(node, video_key), _node_image(node), _node_video(node, video_key))
    if not item:
        raise InputError(f"no text, image or video to rank ({type(node).__name__})", index=node.node_id, kind="node")
    return item


def query_to_input(query_bundle: QueryBundle) -> Any:
    """A query bundle as the core's query: its text, with its image when it has one (an image query may have no
    text)."""
    if getattr(query_bundle, "image_path", None):
        return media_input(query_bundle.query_str, query_bundle.image_path)
    return query_bundle.query_str


def hit_to_node(hit: Hit) -> NodeWithScore:
    """Images become ImageNodes (image_path); PDF pages carry their text and page; videos their path under
    ``metadata["video"]`` (and ``"video_path"``, the older key)."""
    metadata = hit_metadata(hit)
    if hit.rerank_score is not None:
        metadata["rerank_score"] = hit.rerank_score
    if hit.modality == "video":
        metadata[VIDEO_KEY] = metadata[LEGACY_VIDEO_KEY] = hit.source
    hidden = {
        "excluded_embed_metadata_keys": list(metadata),  # embedded (and reranked) as the collection embedded it
        "excluded_llm_metadata_keys": [k for k in metadata if k in HIDDEN_FROM_LLM],
    }
    if hit.modality == "image":
        node: TextNode = ImageNode(id_=hit.id, image_path=hit.source, text=hit.text, metadata=metadata, **hidden)
    else:
        node = TextNode(id_=hit.id, text=hit.text, metadata=metadata, **hidden)
    return NodeWithScore(node=node, score=hit.score)
