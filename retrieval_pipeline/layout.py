"""How a collection lays out its vectors, and how one search runs over that layout.

A :class:`VectorLayout` is chosen when a collection is created and recorded in its spec (``collection.json``, or
the collection metadata on a server); it never changes for that collection:

* ``quantization``: ``none`` | ``int8`` (scalar, 4x smaller) | ``binary`` (1 bit per dimension, 32x smaller) on the
  vector the HNSW index searches; the originals stay on disk for rescoring.
* ``prefix_dim`` (the Matryoshka funnel): the model is Matryoshka-trained, so the first ``prefix_dim`` components
  of a vector rank almost like the whole. The collection stores that prefix as the indexed named vector ``prefix``
  and the full vector ``dense`` on disk without an index; a search prefetches candidates on the prefix and
  rescores them on the full vector, both stages inside Qdrant (Query API prefetch).
* ``hybrid``: the text of text chunks and PDF pages is also stored as a BM25 sparse vector ``bm25`` (Qdrant's IDF
  modifier); a text query fuses the dense and the BM25 candidate lists inside Qdrant (reciprocal rank fusion).
* ``on_disk``: the originals of the indexed vector live on disk (memory-mapped, read when rescoring) instead of RAM.

:func:`query_plan` turns a query (its vector, its text) and :class:`SearchOptions` into a :class:`QueryNode` tree
(prefetches, fusion) once, for both backends; each backend only translates the tree into its native request.

Collections created before layouts existed hold one unnamed dense vector: their spec has no ``layout`` key, and
they open as :data:`LEGACY` (float HNSW, no funnel, no BM25) and keep working unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any

# Named vectors of a collection with a layout.
DENSE = "dense"
PREFIX = "prefix"
SPARSE = "bm25"
QUANTIZATIONS = ("none", "int8", "binary")

# The default layout, picked from benchmarks/bench_million.py (see the README's scale table): vectors of at least
# FUNNEL_MIN_DIM dimensions (the released 2B / 8B models: 2048 / 4096) get the funnel with an int8-quantized
# FUNNEL_PREFIX-d prefix and every original on disk; smaller ones (a Matryoshka --dim, test models) a float HNSW.
FUNNEL_MIN_DIM = 1024
FUNNEL_PREFIX = 256
# Funnel: candidates prefetched on the prefix per result asked for (and at least FUNNEL_MIN_PREFETCH). Measured at a
# million 2048-d items (benchmarks/bench_million.py), top 10: 100 candidates give recall@10 0.945, 200 give 0.981
# (p95 8.6 ms), 300 give 0.988 (p95 10.9 ms); the HNSW beam width barely matters (ef 256: 0.947).
FUNNEL_PREFETCH_FACTOR = 20
FUNNEL_MIN_PREFETCH = 200
# Hybrid: the dense and the BM25 lists are each this deep (at least; FUSION_PREFETCH_FACTOR per result asked for)
# before reciprocal rank fusion. Cut to ``limit`` each, an item only BM25 finds ties with the dense list's first
# and the fused order is a coin toss; deeper lists let an item found by both rise above one found by either.
FUSION_MIN_PREFETCH = 50
FUSION_PREFETCH_FACTOR = 4
# Quantized search without a funnel: candidates fetched on the quantized vectors per result, then rescored.
# (binary: 8, measured at 100k 2048-d items: recall@10 0.56 at 4, 0.77 at 8 -- one bit per dimension ranks coarsely)
DEFAULT_OVERSAMPLING = {"int8": 2.0, "binary": 8.0}
# Reciprocal rank fusion constant (the usual 60: a rank's weight 1 / (60 + rank)).
RRF_K = 60


@dataclass(frozen=True)
class VectorLayout:
    """What vectors a collection stores and which one its index searches (see the module doc)."""

    quantization: str = "none"
    prefix_dim: int = 0
    hybrid: bool = True
    on_disk: bool = False
    named: bool = True  # False: a collection from before layouts (one unnamed dense vector)

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {self.quantization!r}")
        if not isinstance(self.prefix_dim, int) or self.prefix_dim < 0:
            raise ValueError(
                f"the funnel's prefix size must be a positive number of dimensions, got {self.prefix_dim!r}"
            )

    @classmethod
    def choose(
        cls,
        dim: int,
        *,
        quantization: str | None = None,
        prefix_dim: int | None = None,
        hybrid: bool | None = None,
        on_disk: bool | None = None,
    ) -> VectorLayout:
        """The default layout for ``dim``-d vectors, with the options given overriding it one by one."""
        big = dim >= FUNNEL_MIN_DIM
        layout = cls(
            quantization=quantization if quantization is not None else ("int8" if big else "none"),
            prefix_dim=prefix_dim if prefix_dim is not None else (FUNNEL_PREFIX if big else 0),
            hybrid=True if hybrid is None else hybrid,
            on_disk=on_disk if on_disk is not None else big,
        )
        layout.check(dim)
        return layout

    def check(self, dim: int) -> None:
        if self.prefix_dim and self.prefix_dim >= dim:
            raise ValueError(
                f"the funnel's prefix ({self.prefix_dim}-d) must be shorter than the vectors ({dim}-d); "
                "use --funnel 0 for none"
            )

    @property
    def index_vector(self) -> str | None:
        """The vector the HNSW index searches (None: the unnamed vector of a legacy collection)."""
        if not self.named:
            return None
        return PREFIX if self.prefix_dim else DENSE

    @property
    def dense_name(self) -> str | None:
        return DENSE if self.named else None

    def describe(self, dim: int) -> str:
        if not self.named:
            return f"{dim}-d float HNSW (a collection from before layouts)"
        quant = "" if self.quantization == "none" else f"{self.quantization} "
        where = ", originals on disk" if self.on_disk else ""
        if self.prefix_dim:
            text = f"funnel: {self.prefix_dim}-d {quant}HNSW prefix, rescored on the {dim}-d vector on disk{where}"
        else:
            text = f"{dim}-d {quant or 'float '}HNSW{where}"
        return text + (" + BM25 hybrid" if self.hybrid else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> VectorLayout:
        if not isinstance(data, Mapping):
            raise ValueError(f"layout: expected a JSON object, got {data!r}")
        known = {"quantization", "prefix_dim", "hybrid", "on_disk", "named"}
        return cls(**{k: v for k, v in data.items() if k in known})

    def differences(self, other: VectorLayout) -> list[str]:
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k} {theirs[k]!r} (asked: {mine[k]!r})" for k in mine if mine[k] != theirs[k]]


# The layout of a collection whose spec has no ``layout`` (created before layouts): one unnamed float vector.
LEGACY = VectorLayout(hybrid=False, named=False)


@dataclass(frozen=True)
class SearchOptions:
    """Search-time knobs (None: the collection's default).

    ``hnsw_ef``: the HNSW beam width (higher: better recall, slower). ``oversampling``: with quantization, how many
    times more candidates the quantized vectors return before rescoring. ``rescore``: rescore those candidates on
    the original vectors (off: quantized scores, faster, less exact). ``prefetch``: funnel candidates taken on the
    prefix. ``hybrid``: fuse BM25 (None: on when the collection has it and the query has text). ``exact``: no
    index, a full scan (the ground truth)."""

    hnsw_ef: int | None = None
    oversampling: float | None = None
    rescore: bool | None = None
    prefetch: int | None = None
    hybrid: bool | None = None
    exact: bool | None = None

    def __post_init__(self) -> None:
        for name in ("hnsw_ef", "prefetch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.oversampling is not None and not (
            isinstance(self.oversampling, (int, float)) and 1.0 <= float(self.oversampling) <= 100.0
        ):
            raise ValueError(f"oversampling must be a number from 1 to 100, got {self.oversampling!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> SearchOptions:
        if not data:
            return cls()
        known = {"hnsw_ef", "oversampling", "rescore", "prefetch", "hybrid", "exact"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown search options {sorted(unknown)}: expected some of {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if v is not None})

    def merged(self, defaults: SearchOptions) -> SearchOptions:
        """These options, with the unset ones taken from ``defaults``."""
        return replace(defaults, **{k: v for k, v in asdict(self).items() if v is not None})


@dataclass
class SparseQuery:
    indices: list[int]
    values: list[float]


@dataclass
class QueryNode:
    """One stage of a search: nearest neighbours of ``vector`` on the named vector ``using`` (``fusion``: reciprocal
    rank fusion of the ``prefetch`` stages), ``limit`` results, over the candidates of ``prefetch`` if any."""

    limit: int
    using: str | None = None
    vector: list[float] | SparseQuery | None = None
    fusion: bool = False
    prefetch: list[QueryNode] = field(default_factory=list)
    hnsw_ef: int | None = None
    exact: bool = False
    rescore: bool | None = None
    oversampling: float | None = None
    ignore_quantization: bool = False

    @property
    def quantized(self) -> bool:
        return self.rescore is not None or self.oversampling is not None or self.ignore_quantization

    def stages(self) -> list[str]:
        """A readable account of the plan, leaves first (what runs before what)."""
        out = [s for p in self.prefetch for s in p.stages()]
        if self.fusion:
            out.append(f"rrf(k={RRF_K}) -> {self.limit}")
        else:
            size = len(self.vector.indices) if isinstance(self.vector, SparseQuery) else len(self.vector or [])
            out.append(f"{self.using or 'vector'}[{size}] -> {self.limit}")
        return out


@lru_cache(maxsize=1)
def bm25() -> Any:
    """The BM25 model both backends use (Qdrant Edge's, multilingual tokenizer): the same sparse vectors whether the
    collection is embedded or on a server (the server applies the IDF at search time, as the engine does)."""
    import qdrant_edge as qe

    return qe.Bm25(qe.Bm25Config(tokenizer=qe.TokenizerType.Multilingual))


def document_sparse(text: str) -> SparseQuery | None:
    """The BM25 vector of a stored text (None when it has no indexable term)."""
    if not text or not text.strip():
        return None
    vec = bm25().embed_document(text)
    return SparseQuery(list(vec.indices), list(vec.values)) if vec.indices else None


def query_sparse(text: str) -> SparseQuery | None:
    if not text or not text.strip():
        return None
    vec = bm25().embed_query(text)
    return SparseQuery(list(vec.indices), list(vec.values)) if vec.indices else None


def query_plan(
    layout: VectorLayout,
    vector: list[float],
    limit: int,
    options: SearchOptions,
    text: str | None = None,
) -> QueryNode:
    """The stages one search runs inside Qdrant for ``layout`` (see the module doc)."""
    if options.hybrid and not layout.hybrid:
        raise ValueError(
            "this collection has no BM25 vectors (it was created without --hybrid): search it without hybrid"
        )
    use_hybrid = layout.hybrid if options.hybrid is None else options.hybrid
    sparse = query_sparse(text) if use_hybrid and text else None
    final = limit
    if sparse is not None:  # each list deeper than the answer: fusion must see enough of both (see FUSION_*)
        limit = max(limit, FUSION_MIN_PREFETCH, FUSION_PREFETCH_FACTOR * limit)
    exact = bool(options.exact)
    quant = layout.quantization != "none" and not exact
    rescore = options.rescore
    oversampling = options.oversampling
    if quant and oversampling is None:
        oversampling = DEFAULT_OVERSAMPLING[layout.quantization]
    if exact:  # the ground truth: every full vector compared, no index, no quantized codes, no funnel
        dense = QueryNode(limit=limit, using=layout.dense_name, vector=vector, exact=True, ignore_quantization=True)
    elif layout.prefix_dim:
        depth = options.prefetch or max(FUNNEL_MIN_PREFETCH, FUNNEL_PREFETCH_FACTOR * final)
        # The prefix stage ranks on the quantized prefix; its candidates are rescored on the full vector next,
        # so rescoring the prefix itself would only repeat work (unless asked for).
        first = QueryNode(
            limit=max(depth, limit),
            using=PREFIX,
            vector=vector[: layout.prefix_dim],
            hnsw_ef=options.hnsw_ef,
            exact=exact,
            rescore=(rescore if rescore is not None else False) if quant else None,
            oversampling=oversampling if quant else None,
        )
        dense = QueryNode(limit=limit, using=DENSE, vector=vector, prefetch=[first])
        if rescore is False:  # the funnel without its second stage: the prefix ranking alone
            dense = replace(first, limit=limit)
    else:
        dense = QueryNode(
            limit=limit,
            using=layout.dense_name,
            vector=vector,
            hnsw_ef=options.hnsw_ef,
            exact=exact,
            rescore=(rescore if rescore is not None else True) if quant else None,
            oversampling=oversampling if quant else None,
        )
    if sparse is None:
        return dense
    keyword = QueryNode(limit=limit, using=SPARSE, vector=sparse)
    return QueryNode(limit=final, fusion=True, prefetch=[dense, keyword])
