"""The checks and the ranking rule shared by the local models and the HTTP client, without loading torch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def check_matryoshka_dim(dim: Any, hidden_size: int) -> int | None:
    """``dim`` as an int when it is a Matryoshka dimension (1..hidden_size); None stays None; else ValueError."""
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= hidden_size:
        raise ValueError(
            f"dim={dim!r} is outside this model's Matryoshka range: pass an int from 1 to {hidden_size} "
            "(or None for the full dimension)"
        )
    return int(dim)


def check_top_k(top_k: Any) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")


def rank_scores(scores: Sequence[float], top_k: int | None = None) -> list[tuple[int, float]]:
    """``(document index, score)`` best first (equal scores: the earlier document first), the ``top_k`` best (all
    when ``None``): the order of :meth:`Qwen3VLReranker.rerank`, for scores from :meth:`~Qwen3VLReranker.score` or
    :meth:`~Qwen3VLReranker.score_prepared`."""
    ranked = sorted(enumerate(scores), key=lambda pair: (-pair[1], pair[0]))
    return ranked[:top_k] if top_k is not None else ranked
