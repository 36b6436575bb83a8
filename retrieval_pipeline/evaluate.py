"""Retrieval quality on the user's own data: the standard IR evaluation, run by the pipeline that serves answers.

Inputs are the formats people already have:

* **BEIR** (a folder): ``corpus.jsonl`` (``_id``, ``title``, ``text``, optionally ``image`` / ``video``: a path
  relative to the folder, or a URL), ``queries.jsonl`` (``_id``, ``text``, optionally ``image`` / ``video``),
  ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, with a header line).
* **ViDoRe / MTEB visual documents** (a folder, local files): ``corpus``, ``queries`` and ``qrels``, each as
  ``<name>.parquet``, ``<name>/*.parquet`` or ``<name>.jsonl``. Corpus rows carry ``corpus-id`` and ``image`` (the
  datasets' ``{"bytes", "path"}`` struct, or a path); query rows ``query-id`` and ``query``; qrels rows
  ``query-id``, ``corpus-id``, ``score``.

:func:`index_dataset` ingests such a corpus keeping its ids: every point's payload holds ``metadata.corpus_id``.

**How a judgement finds its item** (the documented rule). A stored point answers to these document ids, most
specific first: its ``metadata.corpus_id`` (a dataset ingested with :func:`index_dataset`); else, for a folder
indexed with ``qwen3vl-rag index``, ``<file>#page=<n>`` (a PDF page, 1-based), ``<file>#chunk=<n>`` (a text chunk,
0-based), ``<file>#t=<start>`` (a video segment, its start in seconds as stored), and ``<file>`` itself, where
``<file>`` is each of the source's absolute path, its path relative to ``root`` (default: the current folder) and
its file name. A ranking lists each document once, at the rank of its best item. A judged id that no stored point
answers to is reported (:attr:`EvalReport.unknown`), never silently dropped.

Metrics come from ``ir_measures`` (trec_eval's definitions through ``pytrec_eval``): nDCG@k, R@k, RR@k (MRR) and
AP (MAP), for stage one as the collection searches it (its layout and search knobs), for exact search at several
Matryoshka dimensions (the stored vectors truncated in memory: a bounded corpus), and with the reranker at several
depths; plus per-query latency of each stage.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .layout import SearchOptions

logger = logging.getLogger(__name__)

METRICS = ("nDCG", "R", "RR", "AP")
# Points loaded into memory for the exact searches at other dimensions (a bounded corpus).
MAX_EXACT_POINTS = 500_000


@dataclass
class Dataset:
    """Queries (id -> model input), judgements (query id -> document id -> grade) and, for ingestion, the corpus
    (id -> model input)."""

    queries: dict[str, Any]
    qrels: dict[str, dict[str, int]]
    corpus: dict[str, Any] = field(default_factory=dict)
    name: str = "dataset"


# ----------------------------------------------------------------------------------------------------------------
# loading


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _jsonl(path: Path, key: str | None = None) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; with ``key``, every row must carry it (a string or an integer id)."""
    rows = []
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{path}:{n}: not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{n}: expected a JSON object")
        if key is not None and not isinstance(row.get(key), (str, int)):
            raise InputError(f"{path}:{n}: the row has no {key!r} (a string id)")
        rows.append(row)
    return rows


def _media(row: Mapping[str, Any], base: Path, text: str | None) -> Any:
    """A corpus or query row as a model input: its text, plus an image / video path (relative to the folder)."""
    item: dict[str, Any] = {}
    if text:
        item["text"] = text
    for key in ("image", "video"):
        value = row.get(key)
        if isinstance(value, str) and value:
            item[key] = value if "://" in value or Path(value).is_absolute() else str(base / value)
    if not item:
        raise InputError(f"row {row.get('_id') or row.get('query-id') or row.get('corpus-id')!r} has no text or media")
    return item["text"] if set(item) == {"text"} else item


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """A TREC / BEIR judgements file: ``query-id corpus-id score`` per line (tabs or spaces; a header line and
    TREC's 4-column ``qid 0 docid rel`` both read), or a JSON object ``{query: {doc: grade}}``."""
    path = Path(path)
    text = _read_text(path)
    qrels: dict[str, dict[str, int]] = {}
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{path}: not JSON ({exc})") from None
        if not isinstance(data, dict) or not all(isinstance(d, dict) for d in data.values()):
            raise InputError(f'{path}: expected {{"query-id": {{"corpus-id": grade}}}}')
        for q, docs in data.items():
            for d, g in docs.items():
                qrels.setdefault(str(q), {})[str(d)] = _grade(g, f"{path}: {q} -> {d}")
    else:
        for n, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if n == 1 and parts[0].lower() in ("query-id", "query_id", "qid", "query"):
                continue  # the header
            if len(parts) == 4:
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise InputError(f"{path}:{n}: expected 'query-id corpus-id score', got {line[:200]!r}")
            qrels.setdefault(parts[0], {})[parts[1]] = _grade(parts[2], f"{path}:{n}")
    if not qrels:
        raise InputError(f"{path}: no judgements")
    return qrels


def _grade(value: Any, where: str) -> int:
    """A relevance grade: an integer trec_eval can hold."""
    if isinstance(value, float) and not value.is_integer():  # int() would read 1.5 as 1
        raise InputError(f"{where}: the grade {value!r} is not an integer")
    try:
        grade = int(value)  # 2, 2.0, "2" -- a string "1.5" fails here
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{where}: the grade {value!r} is not an integer") from None
    if isinstance(value, bool) or not -(2**31) < grade < 2**31:
        raise InputError(f"{where}: the grade {value!r} is out of range")
    return grade


def read_queries(path: str | Path) -> dict[str, Any]:
    """``queries.jsonl`` (BEIR: ``_id``, ``text``, optionally ``image`` / ``video``) or a TSV ``id<TAB>text``."""
    path = Path(path)
    if path.suffix == ".tsv":
        out = {}
        for line in _read_text(path).splitlines():
            qid, sep, text = line.partition("\t")
            if sep and qid != "query-id":
                out[qid] = text
    else:
        out = {str(r["_id"]): _media(r, path.parent, r.get("text")) for r in _jsonl(path, "_id")}
    if not out:
        raise InputError(f"{path}: no queries")
    return out


def load_beir(folder: str | Path, split: str = "test", *, judged: bool = True) -> Dataset:
    """A BEIR folder; ``judged=False`` (indexing) needs only its corpus."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/)")
    corpus = {}
    if not judged:
        if not (folder / "corpus.jsonl").is_file():
            raise InputError(f"{folder}: no corpus.jsonl")
        return Dataset({}, {}, _beir_corpus(folder / "corpus.jsonl"), folder.name)
    if (folder / "corpus.jsonl").exists():
        corpus = _beir_corpus(folder / "corpus.jsonl")
    qrels_file = folder / "qrels" / f"{split}.tsv"
    if not qrels_file.exists():
        found = sorted((folder / "qrels").glob("*.tsv"))
        if not found:
            raise InputError(f"{folder}: no qrels/{split}.tsv (a BEIR folder has qrels/<split>.tsv)")
        qrels_file = found[0]
    return Dataset(read_queries(folder / "queries.jsonl"), read_qrels(qrels_file), corpus, folder.name)


def _beir_corpus(path: Path) -> dict[str, Any]:
    corpus = {}
    for n, r in enumerate(_jsonl(path, "_id"), 1):
        parts = [r.get("title"), r.get("text")]
        for name, value in zip(("title", "text"), parts):
            if value is not None and not isinstance(value, str):
                raise InputError(f"{path}: row {n} ({r['_id']!r}): {name} must be a string, got {type(value).__name__}")
        corpus[str(r["_id"])] = _media(r, path.parent, " ".join(t for t in parts if t))
    return corpus


def _table(folder: Path, name: str) -> list[dict[str, Any]]:
    candidates = [folder / f"{name}.parquet", *sorted((folder / name).glob("*.parquet"))] if folder.exists() else []
    parquet = [p for p in candidates if p.is_file()]
    if parquet:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError("reading parquet needs pyarrow: pip install 'qwen3-vl-rag[eval]'") from None
        rows: list[dict[str, Any]] = []
        for p in parquet:
            rows.extend(pq.read_table(p).to_pylist())
        return rows
    if (folder / f"{name}.jsonl").exists():
        return _jsonl(folder / f"{name}.jsonl")
    raise InputError(f"{folder}: no {name}.parquet, {name}/*.parquet or {name}.jsonl")


def load_vidore(folder: str | Path, cache: str | Path | None = None) -> Dataset:
    """A ViDoRe / MTEB visual-document retrieval set from local files. Images stored inline (``{"bytes": ...}``) are
    written once under ``cache`` (default ``<folder>/.images``), named by their content's hash, so the corpus can be
    indexed by path, again and again with the same ids."""
    folder = Path(folder).expanduser().resolve()  # once: every path below is absolute
    cache = Path(cache).expanduser().resolve() if cache is not None else folder / ".images"
    corpus: dict[str, Any] = {}
    for where, row in _rows(folder, "corpus"):
        cid = _id(row, "corpus-id", where)
        image = _vidore_image(row.get("image"), cache, where)
        corpus[cid] = {"image": image if Path(image).is_absolute() else str(folder / image)}
    queries = {}
    for where, row in _rows(folder, "queries"):
        text = row.get("query")
        if not isinstance(text, str) or not text:
            raise InputError(f"{where}: no 'query' text")
        queries[_id(row, "query-id", where)] = text
    qrels: dict[str, dict[str, int]] = {}
    for where, row in _rows(folder, "qrels"):
        score = row.get("score", 1)
        grade = _grade(score, where) if score is not None else None
        if grade is None:
            raise InputError(f"{where}: the score is null (leave it out for 1, or give an integer grade)")
        qrels.setdefault(_id(row, "query-id", where), {})[_id(row, "corpus-id", where)] = grade
    return Dataset(queries, qrels, corpus, folder.name)


def _rows(folder: Path, name: str) -> list[tuple[str, dict[str, Any]]]:
    """A table's rows, each with where it is (``<folder>/<table> row N``) for error messages."""
    rows = _table(folder, name)
    out = []
    for n, row in enumerate(rows, 1):
        where = f"{folder / name} row {n}"
        if not isinstance(row, Mapping):
            raise InputError(f"{where}: expected an object, got {type(row).__name__}")
        out.append((where, dict(row)))
    return out


def _id(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise InputError(f"{where}: no {key!r} (a string or integer id)")
    return str(value)


def _vidore_image(image: Any, cache: Path, where: str) -> str:
    """A corpus row's image as a path: inline bytes are written to ``cache`` under their SHA-256 (the same file on
    every run; Python's ``hash`` is randomised per process)."""
    if isinstance(image, Mapping):
        data = image.get("bytes")
        if isinstance(data, str):
            data = base64.b64decode(data)
        if data:
            cache.mkdir(parents=True, exist_ok=True)
            target = cache / f"{hashlib.sha256(data).hexdigest()[:32]}.img"
            if not target.exists():
                partial = target.with_name(f".{target.name}.{os.getpid()}")
                partial.write_bytes(data)
                os.replace(partial, target)  # never a half-written image under the final name
            return str(target)
        image = image.get("path")
    if not isinstance(image, str) or not image:
        raise InputError(f"{where}: the row has no image")
    return image


def index_dataset(indexer: Any, dataset: Dataset, *, show_progress_bar: bool = True) -> Any:
    """Index a dataset's corpus keeping its ids (payload ``metadata.corpus_id``); returns the index report."""
    ids = list(dataset.corpus)
    report, _ = indexer.index_items(
        [dataset.corpus[i] for i in ids], per_item=[{"corpus_id": i} for i in ids], show_progress_bar=show_progress_bar
    )
    return report


# ----------------------------------------------------------------------------------------------------------------
# document ids of stored points


def document_keys(payload: Mapping[str, Any], root: Path | None = None) -> list[str]:
    """The document ids a stored point answers to, most specific first (see the module doc)."""
    metadata = payload.get("metadata") or {}
    if isinstance(metadata, Mapping) and metadata.get("corpus_id") is not None:
        return [str(metadata["corpus_id"])]
    source = str(payload.get("source") or "")
    if not source:
        return []
    names = [source]
    if "://" not in source:
        path = Path(source)
        base = (root or Path.cwd()).resolve()
        try:
            names.append(path.resolve().relative_to(base).as_posix())
        except ValueError:
            pass
        names.append(path.name)
    names = list(dict.fromkeys(names))
    fragment = None
    if payload.get("page") is not None:
        fragment = f"page={payload['page']}"
    elif payload.get("chunk") is not None:
        fragment = f"chunk={payload['chunk']}"
    elif payload.get("segment"):
        fragment = f"t={_seconds(payload['segment'][0])}"
    specific = [f"{n}#{fragment}" for n in names] if fragment else []
    return specific + names


def _seconds(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


# ----------------------------------------------------------------------------------------------------------------
# the evaluation


@dataclass
class EvalReport:
    """Aggregate metrics per configuration (``rows``), per-query metrics and rankings, latencies, the judged ids
    that name nothing in the collection, and the queries without judgements."""

    k: int
    rows: list[dict[str, Any]]
    per_query: dict[str, dict[str, Any]]
    latency_ms: dict[str, dict[str, float]]
    unknown: list[tuple[str, str]]
    unjudged: list[str]
    collection: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "rows": self.rows,
            "latency_ms": self.latency_ms,
            "unknown_judgements": [{"query_id": q, "doc_id": d} for q, d in self.unknown],
            "unjudged_queries": self.unjudged,
            "collection": self.collection,
        }

    def table(self) -> str:
        names = [f"nDCG@{self.k}", f"R@{self.k}", f"RR@{self.k}", "AP"]
        lines = [
            f"| configuration | cost | {' | '.join(names)} | ms / query |",
            "|---|---|" + "---|" * (len(names) + 1),
        ]
        for row in self.rows:
            values = " | ".join(f"{row[n]:.3f}" for n in names)
            lines.append(f"| {row['config']} | {row['cost']} | {values} | {row['ms']:.1f} |")
        notes = []
        if self.unknown:
            shown = ", ".join(f"{q}->{d}" for q, d in self.unknown[:5])
            notes.append(f"{len(self.unknown)} judgements name nothing in the collection: {shown}")
        if self.unjudged:
            notes.append(f"{len(self.unjudged)} queries have no judgements and were left out")
        return "\n".join(lines + notes)

    def plot(self, path: str | Path) -> Path:
        """Quality against cost: nDCG@k by Matryoshka dimension (exact search) and by rerank depth."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        metric = f"nDCG@{self.k}"
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        dims = [r for r in self.rows if r["kind"] == "exact"]
        reranked = [r for r in self.rows if r["kind"] in ("stage one", "rerank")]
        axes[0].plot([r["dim"] for r in dims], [r[metric] for r in dims], marker="o")
        axes[0].set_xscale("log", base=2)
        axes[0].set_xlabel("dimension (exact search on truncated vectors)")
        axes[0].set_ylabel(metric)
        axes[0].set_title("Matryoshka dimension")
        axes[1].plot([r.get("depth", 0) for r in reranked], [r[metric] for r in reranked], marker="o")
        axes[1].set_xlabel("rerank depth (0: stage one alone)")
        axes[1].set_ylabel(metric)
        axes[1].set_title("rerank depth")
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def write_per_query(self, path: str | Path) -> Path:
        path = Path(path)
        with open(path, "w", encoding="utf-8") as fh:
            for qid, data in self.per_query.items():
                fh.write(json.dumps({"query_id": qid, **data}) + "\n")
        return path


def _measures(k: int) -> list[Any]:
    try:
        import ir_measures
    except ImportError:
        raise InputError("evaluation needs ir-measures: pip install 'qwen3-vl-rag[eval]'") from None
    return [ir_measures.nDCG @ k, ir_measures.R @ k, ir_measures.RR @ k, ir_measures.AP]


def score(qrels: Mapping[str, Mapping[str, int]], rankings: Mapping[str, Sequence[str]], k: int) -> tuple[dict, dict]:
    """Aggregate and per-query metrics of ``rankings`` (query id -> document ids, best first) by ``ir_measures``."""
    import ir_measures

    measures = _measures(k)
    judged = [ir_measures.Qrel(q, d, int(g)) for q, docs in qrels.items() for d, g in docs.items()]
    run = [
        ir_measures.ScoredDoc(q, d, float(len(docs) - rank))
        for q, docs in rankings.items()
        for rank, d in enumerate(docs)
    ]
    aggregate = {str(m): float(v) for m, v in ir_measures.calc_aggregate(measures, judged, run).items()}
    per_query: dict[str, dict[str, float]] = {q: {str(m): 0.0 for m in measures} for q in rankings}
    for metric in ir_measures.iter_calc(measures, judged, run):
        per_query.setdefault(metric.query_id, {})[str(metric.measure)] = float(metric.value)
    for name in (str(m) for m in measures):
        aggregate.setdefault(name, 0.0)
    return aggregate, per_query


def _dedupe(docs: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(d for d in docs if d))


@dataclass
class _Collection:
    """Every stored point: its id, the document id it ranks as, and its vector (for exact search)."""

    ids: list[str]
    doc_of: dict[str, str]
    matrix: np.ndarray
    unknown: list[tuple[str, str]]
    _norms: dict[int, np.ndarray] = field(default_factory=dict)

    def norms(self, dim: int) -> np.ndarray:
        """Row norms over the first ``dim`` components, computed once per evaluation (not per query)."""
        if dim not in self._norms:
            norms = np.linalg.norm(self.matrix[:, :dim], axis=1)
            norms[norms == 0] = 1.0
            self._norms[dim] = norms
        return self._norms[dim]


def _collection(store: Any, dataset: Dataset, dim: int, root: Path | None) -> _Collection:
    ids, keys, vectors = [], [], []
    for point in store.scroll(with_vectors=True):
        ids.append(point.id)
        keys.append(document_keys(point.payload, root))
        vectors.append(point.vector)
        if len(ids) > MAX_EXACT_POINTS:
            raise ValueError(f"the collection holds more than {MAX_EXACT_POINTS} points: evaluate on a bounded corpus")
    universe = {key for ks in keys for key in ks}
    unknown = [(q, d) for q, docs in dataset.qrels.items() for d in docs if d not in universe]
    judged = {d for docs in dataset.qrels.values() for d in docs}
    # a point ranks as the id the judgements use for it (else its most specific one)
    doc_of = {pid: next((key for key in ks if key in judged), ks[0] if ks else pid) for pid, ks in zip(ids, keys)}
    matrix = np.asarray(vectors, dtype=np.float32) if vectors else np.zeros((0, dim), np.float32)
    return _Collection(ids, doc_of, matrix, unknown)


def evaluate(
    retriever: Any,
    dataset: Dataset,
    *,
    k: int = 10,
    dims: Sequence[int] | None = None,
    rerank_depths: Sequence[int] = (10, 20, 50),
    search_options: SearchOptions | Mapping[str, Any] | None = None,
    root: str | Path | None = None,
    show_progress_bar: bool = True,
) -> EvalReport:
    """Evaluate ``retriever`` (a :class:`~retrieval_pipeline.retriever.TwoStageRetriever`: its embedder, store and,
    when it has one, reranker) on ``dataset``'s queries and judgements. See the module doc for what is measured."""
    from tqdm.auto import tqdm

    if k < 1:
        raise ValueError(f"k must be a positive cut-off, got {k}")
    store = retriever.store
    # the collection's spec, checked against the embedder: queries embedded by another model (the base model of a
    # fine-tuned collection, say) would be scored against vectors they are not comparable with
    spec = retriever._spec(retriever.embedder) if hasattr(retriever, "_spec") else store.open(create=False)
    depths = sorted({int(d) for d in rerank_depths if int(d) > 0}) if retriever.reranker is not None else []
    asked = [int(d) for d in (dims or [])]
    if any(not 1 <= d <= spec.dim for d in asked):
        raise ValueError(
            f"--dims {','.join(map(str, asked))}: each must be a Matryoshka dimension from 1 to the collection's "
            f"{spec.dim}"
        )
    dims = sorted({*asked, spec.dim})
    collection = _collection(store, dataset, spec.dim, Path(root) if root is not None else None)
    options = (
        search_options if isinstance(search_options, SearchOptions) else SearchOptions.from_mapping(search_options)
    )
    run = _Run(retriever, spec.dim, dims, depths, max([k, *depths]), options.merged(retriever.search_options))
    queries = {q: v for q, v in dataset.queries.items() if q in dataset.qrels}
    rankings = {
        qid: run.query(query, collection)
        for qid, query in tqdm(queries.items(), desc="evaluating", disable=not show_progress_bar)
    }
    rows, per_query = _score_rows(rankings, dataset, k, run, spec.vectors.describe(spec.dim))
    latency = {
        name: {"mean": 1000 * float(np.mean(v)) if v else 0.0, "p95": 1000 * float(np.percentile(v, 95)) if v else 0.0}
        for name, v in run.timings.items()
    }
    for q, d in collection.unknown[:20]:
        logger.warning("judgement %s -> %s names nothing in collection %r", q, d, store.collection)
    unjudged = [q for q in dataset.queries if q not in dataset.qrels]
    info = {"collection": store.collection, "points": len(collection.ids), "dim": spec.dim}
    info["layout"] = spec.vectors.describe(spec.dim)
    return EvalReport(k, rows, per_query, latency, collection.unknown, unjudged, info)


class _Run:
    """The rankings of one query under every configuration, and the time each stage took."""

    def __init__(
        self, retriever: Any, dim: int, dims: list[int], depths: list[int], depth: int, options: SearchOptions
    ):
        self.retriever = retriever
        self.dim = dim
        self.dims = dims
        self.depths = depths
        self.depth = depth
        self.options = options
        self.timings: dict[str, list[float]] = {
            "embed query": [],
            "vector search": [],
            "exact search": [],
            "rerank": [],
        }
        self._embedder = retriever.embedder

    def _timed(self, stage: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[stage].append(time.perf_counter() - t0)
        return out

    def query(self, query: Any, collection: _Collection) -> dict[str, list[str]]:
        r = self.retriever
        vector = self._timed(
            "embed query", self._embedder.embed, [query], instruction=r.query_instruction, dim=self.dim
        )
        vector = vector[0]
        text = query if isinstance(query, str) else (query.get("text") if isinstance(query, Mapping) else None)
        hits = self._timed(
            "vector search", r.store.search, vector.tolist(), limit=self.depth, text=text, options=self.options
        )
        doc_of = collection.doc_of
        out = {"stage one": _dedupe(doc_of[h.id] for h in hits)}
        t0 = time.perf_counter()
        for d in self.dims:
            out[f"exact {d}-d"] = _dedupe(doc_of[collection.ids[i]] for i in _exact(collection, vector, d, self.depth))
        self.timings["exact search"].append(time.perf_counter() - t0)
        if self.depths and hits:
            out.update(self._reranked(query, hits, doc_of))
        return out

    def _reranked(self, query: Any, hits: list[Any], doc_of: dict[str, str]) -> dict[str, list[str]]:
        """Rerank the deepest candidate list once, the way the retriever does (a candidate whose source cannot be
        read anymore, or that the rerank budget leaves out, keeps no score and goes after the scored ones); a
        shallower depth orders its own top by the same scores."""
        from .retriever import Hit

        candidates = [Hit(h.id, h.score, h.score, None, h.payload) for h in hits[: self.depths[-1]]]
        scored = self._timed("rerank", self.retriever.rerank_hits, query, list(candidates), at_least=1)
        score = {h.id: h.rerank_score for h in scored}
        out = {}
        for d in self.depths:
            top = candidates[:d]
            ranked = sorted(top, key=lambda h: (score.get(h.id) is None, -(score.get(h.id) or 0.0)))
            reranked = [h.id for h in ranked] + [h.id for h in hits[d:]]
            out[f"rerank top-{d}"] = _dedupe(doc_of[i] for i in reranked)
        return out


def _score_rows(
    rankings: dict[str, dict[str, list[str]]], dataset: Dataset, k: int, run: _Run, layout: str
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    ms = {name: 1000 * float(np.mean(v)) if v else 0.0 for name, v in run.timings.items()}
    configs = ["stage one", *[f"exact {d}-d" for d in run.dims], *[f"rerank top-{d}" for d in run.depths]]
    per_query: dict[str, dict[str, Any]] = {q: {"metrics": {}, "rankings": {}} for q in rankings}
    rows = []
    for config in configs:
        runs = {q: r[config][: run.depth] for q, r in rankings.items() if config in r}
        aggregate, by_query = score({q: dataset.qrels[q] for q in runs}, runs, k)
        row: dict[str, Any] = {"config": config, **aggregate}
        if config == "stage one":
            row.update(kind="stage one", depth=0, cost=layout, ms=ms["embed query"] + ms["vector search"])
        elif config.startswith("exact"):
            dim = int(config.split()[1].removesuffix("-d"))
            exact_ms = ms["exact search"] / len(run.dims)
            row.update(kind="exact", dim=dim, cost=f"{dim} dims", ms=ms["embed query"] + exact_ms)
        else:
            d = int(config.rsplit("-", 1)[1])
            rerank_ms = ms["rerank"] / max(1, run.depths[-1]) * d
            row.update(
                kind="rerank", depth=d, cost=f"{d} reranked", ms=ms["embed query"] + ms["vector search"] + rerank_ms
            )
        rows.append(row)
        for q, values in by_query.items():
            per_query[q]["metrics"][config] = values
            per_query[q]["rankings"][config] = runs[q][:k]
    for q in per_query:
        per_query[q]["relevant"] = dataset.qrels[q]
    return rows, per_query


def _exact(collection: _Collection, query: np.ndarray, dim: int, depth: int) -> list[int]:
    """The ``depth`` nearest rows by cosine over the first ``dim`` components (Matryoshka truncation)."""
    if not len(collection.matrix):
        return []
    q = np.asarray(query, dtype=np.float32)[:dim]
    q = q / (np.linalg.norm(q) or 1.0)
    scores = (collection.matrix[:, :dim] @ q) / collection.norms(dim)
    top = min(depth, len(scores))
    best = np.argpartition(-scores, top - 1)[:top]
    return [int(i) for i in best[np.argsort(-scores[best], kind="stable")]]
