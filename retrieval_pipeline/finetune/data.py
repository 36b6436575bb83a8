"""Training data for fine-tuning: judged datasets (BEIR, ViDoRe, ``--pairs``), the held-out split, the examples.

Everything is a :class:`~retrieval_pipeline.evaluate.Dataset` (queries, judgements, corpus: the model inputs the
embedder and the reranker take, images and videos included) plus, per query, its negatives (given in a pairs file
or mined, :mod:`.mining`). A pairs file is JSON lines, one judged pair per line::

    {"query": "what does the chart show?", "positive": {"image": "charts/q3.png"}, "negatives": ["..."]}

``query`` / ``positive`` / each negative: a text, or a multimodal object (``text``, ``image``, ``video``: paths
relative to the file, or URLs); ``positives`` (a list) may replace ``positive``; ``query_id`` names the query
(default: its content). Identical documents are one corpus item.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..evaluate import Dataset, _jsonl, load_beir, load_vidore, read_qrels


@dataclass
class TrainingData:
    """A judged dataset split for training: ``train`` and ``held_out`` share the corpus; ``negatives`` (query id
    -> document ids) holds the negatives given or mined for the queries of both."""

    train: Dataset
    held_out: Dataset
    negatives: dict[str, list[str]] = field(default_factory=dict)

    @property
    def corpus(self) -> dict[str, Any]:
        return self.train.corpus


def _content_id(prefix: str, value: Any) -> str:
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{prefix}{digest}"


def _model_input(value: Any, base: Path, where: str) -> Any:
    """A pairs-file field as a model input: a text, or a multimodal object with media paths made absolute."""
    if isinstance(value, str):
        if not value:
            raise InputError(f"{where}: empty text")
        return value
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: expected a text or an object with text / image / video, got {type(value).__name__}")
    unknown = set(value) - {"text", "image", "video", "instruction", "fps", "max_frames"}
    if unknown:
        raise InputError(f"{where}: unknown field(s) {sorted(unknown)}")
    item = dict(value)
    for key in ("image", "video"):
        media = item.get(key)
        if isinstance(media, str):
            item[key] = _media_path(media, base)
        elif isinstance(media, list):
            item[key] = [_media_path(m, base) if isinstance(m, str) else m for m in media]
    if not any(item.get(k) for k in ("text", "image", "video")):
        raise InputError(f"{where}: no text, image or video")
    return item


def _media_path(value: str, base: Path) -> str:
    return value if "://" in value or Path(value).is_absolute() else str(base / value)


def load_pairs(path: str | Path) -> tuple[Dataset, dict[str, list[str]]]:
    """A pairs file (see the module doc) as a dataset and its queries' given negatives."""
    path = Path(path)
    queries: dict[str, Any] = {}
    qrels: dict[str, dict[str, int]] = {}
    corpus: dict[str, Any] = {}
    negatives: dict[str, list[str]] = {}

    def doc_id(value: Any, where: str) -> str:
        item = _model_input(value, path.parent, where)
        did = _content_id("d", item)
        corpus.setdefault(did, item)
        return did

    for n, row in enumerate(_jsonl(path), 1):
        where = f"{path}:{n}"
        if "query" not in row:
            raise InputError(f"{where}: no 'query'")
        query = _model_input(row["query"], path.parent, f"{where} query")
        qid = str(row["query_id"]) if row.get("query_id") is not None else _content_id("q", query)
        queries.setdefault(qid, query)
        positives = row.get("positives", [row["positive"]] if "positive" in row else [])
        if not isinstance(positives, list) or not positives:
            raise InputError(f"{where}: no 'positive' (or a non-empty 'positives' list)")
        for k, value in enumerate(positives):
            qrels.setdefault(qid, {})[doc_id(value, f"{where} positive {k}")] = 1
        given = row.get("negatives", [])
        if not isinstance(given, list):
            raise InputError(f"{where}: 'negatives' must be a list")
        for k, value in enumerate(given):
            did = doc_id(value, f"{where} negative {k}")
            if did not in negatives.setdefault(qid, []):
                negatives[qid].append(did)
    if not qrels:
        raise InputError(f"{path}: no pairs")
    for qid, docs in negatives.items():  # a document judged relevant elsewhere for the same query is no negative
        negatives[qid] = [d for d in docs if qrels.get(qid, {}).get(d, 0) <= 0]
    return Dataset(queries, qrels, corpus, path.stem), negatives


def load_training_data(
    *,
    beir: str | Path | None = None,
    vidore: str | Path | None = None,
    pairs: str | Path | None = None,
    split: str | None = None,
    eval_split: str | float | None = 0.2,
    seed: int = 0,
) -> TrainingData:
    """Load one judged dataset and hold part of it out.

    ``split``: a BEIR folder's training judgements (``qrels/<split>.tsv``; default ``train`` when there is one, else
    the folder's only split). ``eval_split``: a fraction of the judged queries held out (drawn with ``seed``), or
    the name of another BEIR qrels split (``dev``, ``test``); its queries are left out of training."""
    given = [x for x in (beir, vidore, pairs) if x]
    if len(given) != 1:
        raise InputError("give one dataset: a BEIR folder, a ViDoRe folder or a pairs file")
    negatives: dict[str, list[str]] = {}
    if beir:
        folder = Path(beir)
        if split is None:
            split = "train" if (folder / "qrels" / "train.tsv").exists() else "test"
        dataset = load_beir(folder, split)
    elif vidore:
        dataset = load_vidore(vidore)
    else:
        assert pairs is not None
        dataset, negatives = load_pairs(pairs)
    fraction = _fraction(eval_split)
    if fraction is None and eval_split is not None:
        if not beir:
            raise InputError(f"--eval-split {eval_split!r}: a named split needs a BEIR folder; give a fraction")
        qrels_file = Path(beir) / "qrels" / f"{eval_split}.tsv"
        if not qrels_file.exists():
            raise InputError(f"{beir}: no qrels/{eval_split}.tsv for --eval-split")
        held_qrels = read_qrels(qrels_file)
        unknown = [q for q in held_qrels if q not in dataset.queries]
        if unknown:
            raise InputError(f"{qrels_file}: judged queries not in queries.jsonl: {', '.join(unknown[:5])}")
        train_qrels = {q: d for q, d in dataset.qrels.items() if q not in held_qrels}
        train, held = _with_qrels(dataset, train_qrels), _with_qrels(dataset, held_qrels)
    else:
        train, held = split_dataset(dataset, fraction or 0.0, seed=seed)
    if not train.qrels:
        raise InputError(f"{dataset.name}: no judged queries left to train on")
    return TrainingData(train, held, negatives)


def _fraction(value: str | float | None) -> float | None:
    if value is None:
        return None
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        return None
    if not 0.0 <= fraction < 1.0:
        raise InputError(f"--eval-split {value!r}: a fraction of the queries must be in [0, 1)")
    return fraction


def _with_qrels(dataset: Dataset, qrels: Mapping[str, Mapping[str, int]]) -> Dataset:
    return Dataset(
        {q: dataset.queries[q] for q in qrels if q in dataset.queries},
        {q: dict(d) for q, d in qrels.items() if q in dataset.queries},
        dataset.corpus,
        dataset.name,
    )


def split_dataset(dataset: Dataset, fraction: float, *, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, held out): ``fraction`` of the judged queries (at least one when the fraction is not 0, and never
    all of them) drawn with ``seed``; both keep the whole corpus."""
    judged = sorted(q for q in dataset.qrels if q in dataset.queries)
    if not judged:
        raise InputError(f"{dataset.name}: no judged queries (the judgements name no query of the dataset)")
    n_held = 0 if fraction <= 0 else min(len(judged) - 1, max(1, round(len(judged) * fraction)))
    order = list(judged)
    random.Random(seed).shuffle(order)
    held = set(order[:n_held])
    train_qrels = {q: dataset.qrels[q] for q in judged if q not in held}
    held_qrels = {q: dataset.qrels[q] for q in judged if q in held}
    return _with_qrels(dataset, train_qrels), _with_qrels(dataset, held_qrels)


def positives(qrels: Mapping[str, int]) -> list[str]:
    """The documents judged relevant (grade > 0), in judgement order."""
    return [d for d, g in qrels.items() if g > 0]


def embedder_examples(dataset: Dataset) -> list[tuple[str, str]]:
    """One (query id, relevant document id) example per judged relevant pair whose document is in the corpus."""
    return [(q, d) for q in sorted(dataset.qrels) for d in positives(dataset.qrels[q]) if d in dataset.corpus]


def reranker_examples(dataset: Dataset, negatives: Mapping[str, Sequence[str]]) -> list[tuple[str, str, float]]:
    """(query id, document id, label): every judged pair (relevant: 1, judged irrelevant: 0) and the negatives."""
    out: list[tuple[str, str, float]] = []
    for q in sorted(dataset.qrels):
        seen = set()
        for d, g in dataset.qrels[q].items():
            if d in dataset.corpus:
                out.append((q, d, 1.0 if g > 0 else 0.0))
                seen.add(d)
        out += [(q, d, 0.0) for d in negatives.get(q, []) if d not in seen and d in dataset.corpus]
    return out
