"""Distributed ingestion on Ray Data now lives in :mod:`retrieval_pipeline.ingest.distributed`; this module keeps
the import path of version 0.2 working."""

from .ingest.distributed import (
    EmbedActor,
    EmbedderSpec,
    RayIndexer,
    RayOptions,
    RemoteEmbedder,  # the 0.2 name of EmbedderSpec
    StoreOwner,
    init_ray,
    parse_actors,
)

__all__ = [
    "EmbedActor",
    "EmbedderSpec",
    "RayIndexer",
    "RayOptions",
    "RemoteEmbedder",
    "StoreOwner",
    "init_ray",
    "parse_actors",
]
