"""Hard negatives: the documents a model ranks high for a query that are not judged relevant to it.

From an indexed collection (:func:`mine_from_collection`: the query embedded with the collection's model, searched
the way the collection searches, each hit mapped to its document id by the rule ``eval`` uses) or, for a bounded
corpus, in memory (:func:`mine_in_memory`: exact cosine over the dataset's corpus). Judged positives -- by any of
the ids a stored point answers to -- are never negatives.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluate import Dataset, document_keys
from ..records import item_for
from ..retriever import QUERY_INSTRUCTION

logger = logging.getLogger(__name__)

# Most corpus items embedded for in-memory mining (beyond it, index the corpus and mine from the collection).
MAX_MEMORY_CORPUS = 50_000


def _query_text(query: Any) -> str | None:
    if isinstance(query, str):
        return query
    if isinstance(query, Mapping) and isinstance(query.get("text"), str):
        return str(query["text"])
    return None


def mine_from_collection(
    embedder: Any,
    store: Any,
    queries: Mapping[str, Any],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    per_query: int,
    corpus: dict[str, Any],
    query_instruction: str = QUERY_INSTRUCTION,
    root: str | Path | None = None,
) -> dict[str, list[str]]:
    """Up to ``per_query`` negatives per judged query, best-ranked first, searched in ``store`` (an indexed
    collection of ``embedder``'s model). A hit's document id is the one the judgements use for it; a hit the
    dataset's ``corpus`` does not hold is added to it (its stored item: text, image, page or segment)."""
    if per_query <= 0:
        return {}
    spec = store.open(create=False)
    base = Path(root) if root is not None else None
    out: dict[str, list[str]] = {}
    judged_ids = {d for docs in qrels.values() for d in docs}
    for qid in sorted(qrels):
        if qid not in queries:
            continue
        relevant = {d for d, g in qrels[qid].items() if g > 0}
        vector = embedder.embed([queries[qid]], instruction=query_instruction, dim=spec.dim)[0]
        hits = store.search(vector.tolist(), limit=per_query + len(relevant) + 5, text=_query_text(queries[qid]))
        found: list[str] = []
        for hit in hits:
            keys = document_keys(hit.payload, base)
            if not keys or relevant.intersection(keys):
                continue
            doc = next((k for k in keys if k in judged_ids or k in corpus), keys[0])
            if doc in found:
                continue
            if doc not in corpus:
                corpus[doc] = item_for(hit.payload)
            found.append(doc)
            if len(found) >= per_query:
                break
        out[qid] = found
    return out


def mine_in_memory(
    embedder: Any,
    dataset: Dataset,
    *,
    per_query: int,
    query_instruction: str = QUERY_INSTRUCTION,
    document_instruction: str | None = None,
    queries: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> dict[str, list[str]]:
    """Up to ``per_query`` negatives per judged query (or per query of ``queries``): the corpus documents
    ``embedder`` ranks highest by cosine that are not judged relevant."""
    if per_query <= 0:
        return {}
    ids = list(dataset.corpus)
    if len(ids) > MAX_MEMORY_CORPUS:
        raise ValueError(
            f"the corpus holds {len(ids)} items, more than {MAX_MEMORY_CORPUS} mined in memory: index it and mine "
            "from the collection (--collection)"
        )
    wanted = [q for q in (queries if queries is not None else sorted(dataset.qrels)) if q in dataset.queries]
    if not ids or not wanted:
        return {}
    docs = embedder.embed([dataset.corpus[i] for i in ids], instruction=document_instruction, batch_size=batch_size)
    vectors = embedder.embed([dataset.queries[q] for q in wanted], instruction=query_instruction)
    scores = np.asarray(vectors, dtype=np.float32) @ np.asarray(docs, dtype=np.float32).T
    out: dict[str, list[str]] = {}
    for row, qid in enumerate(wanted):
        relevant = {d for d, g in dataset.qrels.get(qid, {}).items() if g > 0}
        order = np.argsort(-scores[row], kind="stable")
        out[qid] = [ids[j] for j in order if ids[j] not in relevant][:per_query]
    return out


def random_negatives(dataset: Dataset, *, per_query: int, seed: int = 0) -> dict[str, list[str]]:
    """Up to ``per_query`` documents per judged query drawn at random (with ``seed``) among those not judged
    relevant: negatives without a model."""
    rng = np.random.default_rng(seed)
    ids = sorted(dataset.corpus)
    out: dict[str, list[str]] = {}
    for qid in sorted(dataset.qrels):
        relevant = {d for d, g in dataset.qrels[qid].items() if g > 0}
        pool = [d for d in ids if d not in relevant]
        take = min(per_query, len(pool))
        out[qid] = [pool[int(j)] for j in rng.choice(len(pool), size=take, replace=False)] if take else []
    return out
