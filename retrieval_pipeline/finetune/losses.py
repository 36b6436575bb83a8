"""The training objectives, on the quantities inference uses.

* Embedder: InfoNCE over in-batch negatives (and mined hard negatives) with a temperature, on the L2-normalised
  last-token states -- the embeddings -- and, for Matryoshka, the same loss on each prefix the user will search at
  (truncated first, then normalised, as :func:`~retrieval_pipeline.models.embedder.truncate_and_normalize` does).
* Reranker: binary cross-entropy on the yes-minus-no logit ``h_last . (W[yes] - W[no])``, whose sigmoid is the
  rerank score.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def info_nce(
    queries: torch.Tensor,
    documents: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 0.05,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of each query's positive among all ``documents``: ``queries`` (B, H) and ``documents``
    (N, H) L2-normalised; ``targets`` (B,) the column of each query's positive; ``exclude`` (B, N) bool marks the
    other documents judged relevant to a query (neither its positive nor a negative)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = queries @ documents.T / temperature
    if exclude is not None:
        exclude = exclude.clone()
        exclude[torch.arange(len(targets)), targets] = False  # never the positive itself
        logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, targets)


def matryoshka_info_nce(
    queries: torch.Tensor,
    documents: torch.Tensor,
    targets: torch.Tensor,
    *,
    dims: Sequence[int] | None = None,
    temperature: float = 0.05,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`info_nce` on raw (un-normalised) embeddings, averaged over the full dimension and each of ``dims``
    (each prefix truncated, then normalised)."""
    full = int(queries.shape[-1])
    chosen = sorted({int(d) for d in (dims or []) if 0 < int(d) < full} | {full})
    losses = [
        info_nce(
            F.normalize(queries[:, :d].float(), dim=-1),
            F.normalize(documents[:, :d].float(), dim=-1),
            targets,
            temperature=temperature,
            exclude=exclude,
        )
        for d in chosen
    ]
    return torch.stack(losses).mean()


def yes_no_bce(logits: torch.Tensor, labels: torch.Tensor, *, pos_weight: float | None = None) -> torch.Tensor:
    """Binary cross-entropy of the yes-minus-no logits against 0/1 labels (``pos_weight``: weight of a relevant
    pair, e.g. the negatives per positive)."""
    weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float32, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)
