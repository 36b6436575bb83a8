"""LlamaIndex nodes and query bundles <-> the core's inputs and hits (what the models see, what retrieval returns)."""

from __future__ import annotations

import base64
from typing import Any

from llama_index.core.schema import BaseNode, ImageNode, MetadataMode, NodeWithScore, QueryBundle, TextNode

from retrieval_pipeline import InputError
from retrieval_pipeline.retriever import Hit

from .._common import LEGACY_VIDEO_KEY, VIDEO_KEY, hit_metadata, media_input


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


def node_to_input(node: BaseNode, video_key: str = VIDEO_KEY) -> dict[str, Any]:
    """What the Qwen3-VL models see for a LlamaIndex node: its text, plus its image or video.

    Images: ``ImageNode.image`` (base64), ``image_path``, ``image_url``, or a ``Node``'s ``image_resource``.
    Videos: a path / URL in ``node.metadata[video_key]`` (or the older key ``"video_path"``), or a ``Node``'s
    ``video_resource``.
    """
    text = node.get_content(metadata_mode=MetadataMode.NONE)
    item = media_input(text, _node_image(node), _node_video(node, video_key))
    if not item:
        raise InputError(f"no text, image or video to rank ({type(node).__name__})", index=node.node_id, kind="node")
    return item


def query_to_input(query_bundle: QueryBundle) -> Any:
    """A query bundle as the core's query: its text, with its image when it has one."""
    if getattr(query_bundle, "image_path", None):
        return {"text": query_bundle.query_str, "image": query_bundle.image_path}
    return query_bundle.query_str


def hit_to_node(hit: Hit) -> NodeWithScore:
    """Images become ImageNodes (image_path); PDF pages carry their text and page; videos their path under
    ``metadata["video"]`` (and ``"video_path"``, the older key)."""
    metadata = hit_metadata(hit)
    if hit.rerank_score is not None:
        metadata["rerank_score"] = hit.rerank_score
    if hit.modality == "image":
        node: TextNode = ImageNode(id_=hit.id, image_path=hit.source, text=hit.text, metadata=metadata)
    else:
        if hit.modality == "video":
            metadata[VIDEO_KEY] = metadata[LEGACY_VIDEO_KEY] = hit.source
        node = TextNode(id_=hit.id, text=hit.text, metadata=metadata)
    return NodeWithScore(node=node, score=hit.score)
