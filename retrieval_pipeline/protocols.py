"""The contracts the pipeline's parts are written against, instead of ``Any``: what an embedder, a reranker and a
generator must offer. The models in :mod:`retrieval_pipeline.models` satisfy them, and so does anything a user
brings that has these members (a remote model over HTTP, a wrapper, a test double built on a real model).
Never loads torch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class EmbedderInfo(Protocol):
    """What an index needs to know of its embedding model (what Ray actors load is described by this alone)."""

    @property
    def model_name_or_path(self) -> str: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def default_instruction(self) -> str | None: ...  # None: the model (or server) applies its own


@runtime_checkable
class Embedder(EmbedderInfo, Protocol):
    """A model that embeds inputs (text, images, videos, mixtures) into one space, in input order."""

    def embed(self, inputs: Sequence[Any], *, instruction: str | None = None, dim: int | None = None) -> Any:
        """One vector per input (an array of shape ``(len(inputs), dim)``)."""
        ...


@runtime_checkable
class Reranker(Protocol):
    """A model that scores (query, document) pairs of any modalities: higher is more relevant."""

    @property
    def model_name_or_path(self) -> str: ...

    def score(self, query: Any, documents: Sequence[Any], *, instruction: str | None = None) -> list[float]:
        """One relevance score per document, in document order."""
        ...


@runtime_checkable
class AnswerFunction(Protocol):
    """A generator as the pipeline calls it: the question and the retrieved hits -> the answer's text."""

    def __call__(self, question: str, hits: Sequence[Any]) -> str: ...
