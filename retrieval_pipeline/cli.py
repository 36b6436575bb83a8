"""``qwen3vl-rag``: index a folder of mixed media, search it, ask questions about it.

    qwen3vl-rag run PATH... QUESTION     index the paths, then answer the question (the main job)
    qwen3vl-rag index PATH...            index files and folders (images, videos, text/Markdown, PDFs)
    qwen3vl-rag search QUERY             two-stage retrieval (--image for an image query, --no-rerank for stage one)
    qwen3vl-rag ask QUESTION             retrieval + a Qwen3-VL answer with its sources
    qwen3vl-rag info                     what the collection holds (points, spec, index)
    qwen3vl-rag optimize                 build the collection's vector index now
    qwen3vl-rag push --to-url URL        copy the collection (same ids, vectors, payloads) to a Qdrant server
    qwen3vl-rag serve [--port 8000]      HTTP API (embeddings, rerank, search, ask) with dynamic batching

Storage: embedded Qdrant Edge under --db (default: the user's data folder), or a Qdrant server with --url.
Models: hub ids or local folders, from the options or QWEN3VL_RAG_{EMBEDDING,RERANKER,GENERATOR}_MODEL.
Exit codes: 0 ok, 1 bad input or failed items, 2 usage, 3 a model cannot be loaded, 4 the store cannot be
reached, 5 the collection is missing, empty or built with another model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .errors import EXIT_FAILED, UsageError, classify
from .serving.config import ServerConfig
from .serving.config import at_least as _at_least
from .settings import DEFAULT_EMBEDDING_MODEL, DEFAULT_GENERATOR_MODEL, DEFAULT_RERANKER_MODEL, ENV
from .settings import env as _env
from .store import default_db

__all__ = ["ENV", "main"]


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("storage")
    g.add_argument("--db", default=_env("DB"), help=f"embedded Qdrant Edge folder (default: {default_db()})")
    g.add_argument("--url", default=_env("URL"), help="Qdrant server URL (instead of --db)")
    g.add_argument("--api-key", default=_env("API_KEY"), help="Qdrant server API key")
    g.add_argument("--collection", default=_env("COLLECTION", "default"), help="collection name (default: default)")
    g.add_argument(
        "--indexing-threshold-kb",
        type=int,
        default=None,
        help="embedded store: KB of vectors a segment holds before it gets an HNSW index (default Qdrant's, about "
        "10 MB; or QWEN3VL_RAG_INDEXING_THRESHOLD_KB); set when a collection is created",
    )
    m = p.add_argument_group("models (hub ids or local folders)")
    m.add_argument("--embedding-model", default=_env("EMBEDDING_MODEL"), help=f"default: {DEFAULT_EMBEDDING_MODEL}")
    m.add_argument("--reranker-model", default=_env("RERANKER_MODEL"), help=f"default: {DEFAULT_RERANKER_MODEL}")
    m.add_argument("--generator-model", default=_env("GENERATOR_MODEL"), help=f"default: {DEFAULT_GENERATOR_MODEL}")
    m.add_argument("--device", default=_env("DEVICE"), help="cpu, cuda, cuda:N (default: CUDA when present)")
    m.add_argument(
        "--dtype",
        default=_env("DTYPE", "auto"),
        help="auto / float32 / bfloat16 (default auto: bfloat16 on CUDA and on CPUs with native bfloat16, else "
        "float32; float32 gives the reference numbers)",
    )
    m.add_argument(
        "--offload",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="only the running stage's model in memory (default: on for a CPU, where each model is loaded for its "
        "stage and dropped after; off for a GPU, where --offload moves the others to the CPU)",
    )
    k = p.add_argument_group("speed / quality (embedder and reranker)")
    k.add_argument(
        "--image-tokens",
        type=int,
        default=None,
        help="most tokens per image or PDF page (default 1800; time per image grows with it, small text needs it)",
    )
    k.add_argument("--video-frames", type=int, default=None, help="most frames sampled per video (default 64)")
    k.add_argument("--video-fps", type=float, default=None, help="frames sampled per second of video (default 1)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log messages")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also the libraries' own messages (transformers' load reports and bars, video decoder logs) and timings",
    )
    return p


def _index_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    p.add_argument("--include", action="append", default=[], help="glob of files to index (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="glob of files to leave out (repeatable)")
    p.add_argument("--video-segment", type=float, default=None, help="split videos into segments of N seconds")
    p.add_argument("--chunk-chars", type=_at_least(1), default=1200, help="text chunk size in characters")
    p.add_argument(
        "--max-text-mb", type=_at_least(1), default=64, help="largest text / Markdown file read, in MB (default 64)"
    )
    p.add_argument("--dim", type=_at_least(1), default=None, help="Matryoshka dimension of the stored vectors")
    p.add_argument("--metadata", default=None, help="JSON object stored with every item (payload 'metadata')")
    p.add_argument("--prune", action="store_true", help="remove the items of files under PATH that no longer exist")
    p.add_argument("--rebuild", action="store_true", help="delete the collection first (e.g. a damaged one)")
    _layout_options(p)


def _ray_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "distributed (Ray Data; pip install 'qwen3-vl-rag[ray]')",
        "read, decode and tokenise on CPU workers, embed on an actor pool, write in batches; the same ids and "
        "vectors as a plain run, which can finish what a --ray run started (and the reverse)",
    )
    g.add_argument("--ray", action="store_true", help="index on Ray Data (a local cluster unless --ray-address)")
    g.add_argument("--ray-address", default=_env("RAY_ADDRESS"), help="the Ray cluster to join (e.g. ray://head:10001)")
    g.add_argument("--ray-actors", default="1", help="embedding actors: N, or MIN-MAX for an autoscaling pool")
    g.add_argument(
        "--ray-gpus-per-actor", type=float, default=0.0, help="GPUs per embedding actor (default 0: CPU actors)"
    )
    g.add_argument(
        "--ray-cpus-per-actor",
        type=float,
        default=None,
        help="CPUs per embedding actor (default 1 beside a GPU, 0.5 for a CPU actor: the read and tokenise tasks "
        "keep the rest)",
    )
    g.add_argument("--ray-batch-size", type=int, default=16, help="items per actor call (default 16)")
    g = p.add_argument_group("a new collection on a Qdrant server or cluster (--url)")
    g.add_argument("--shards", type=int, default=None, help="shard number (spreads writes and storage over nodes)")
    g.add_argument("--replicas", type=int, default=None, help="replication factor")


def _layout_options(p: argparse.ArgumentParser) -> None:
    """How a new collection lays out its vectors (fixed at creation; the default is chosen by dimension)."""
    g = p.add_argument_group(
        "vector layout of a new collection",
        "default: for 1024-d and larger vectors a 256-d int8 funnel with every original on disk, for smaller ones a "
        "float HNSW; BM25 hybrid on. An existing collection keeps its layout (asking for another is an error).",
    )
    g.add_argument("--quantization", choices=("none", "int8", "binary"), default=None, help="of the indexed vector")
    g.add_argument(
        "--funnel",
        type=int,
        default=None,
        metavar="DIMS",
        help="Matryoshka funnel: index this many leading dimensions, rescore on the full vector (0: no funnel)",
    )
    g.add_argument(
        "--on-disk",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the indexed vector's originals on disk (memory-mapped) rather than in RAM",
    )
    _hybrid_option(p)


def _hybrid_option(p: argparse.ArgumentParser) -> None:
    if "--hybrid" not in p._option_string_actions:  # run has both the index and the query options
        p.add_argument(
            "--hybrid",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="BM25 over the text of text chunks and PDF pages, fused with the dense search (default: on)",
        )


def _dataset_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation datasets")
    g.add_argument("--beir", default=None, metavar="DIR", help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    g.add_argument("--vidore", default=None, metavar="DIR", help="a ViDoRe / MTEB folder: corpus, queries, qrels")
    g.add_argument("--split", default="test", help="the BEIR qrels split (default test)")


def _dataset(args: argparse.Namespace) -> Any:
    from .evaluate import Dataset, load_beir, load_vidore, read_qrels, read_queries

    if args.beir and args.vidore:
        raise UsageError("pass --beir or --vidore, not both")
    if args.beir:
        dataset = load_beir(args.beir, args.split, judged=args.command == "eval")
    elif args.vidore:
        dataset = load_vidore(args.vidore)
    else:
        dataset = None
    if getattr(args, "queries", None) or getattr(args, "qrels", None):
        if not (args.queries and args.qrels) and dataset is None:
            raise UsageError("eval needs --queries and --qrels (or --beir / --vidore)")
        queries = read_queries(args.queries) if args.queries else dataset.queries
        qrels = read_qrels(args.qrels) if args.qrels else dataset.qrels
        dataset = Dataset(queries, qrels, dataset.corpus if dataset else {})
    return dataset


def _ints(text: str | None, option: str) -> list[int]:
    if not text:
        return []
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise UsageError(f"{option} takes positive integers, got {text!r}")
    return values


def _search_knobs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("vector search (stage one)")
    g.add_argument("--hnsw-ef", type=int, default=None, help="HNSW beam width (default 128; higher: better recall)")
    g.add_argument("--oversampling", type=float, default=None, help="quantized candidates per result before rescoring")
    g.add_argument("--no-rescore", action="store_true", help="quantized (or prefix-only) scores, no rescoring")
    g.add_argument("--prefetch", type=int, default=None, help="funnel candidates taken on the prefix")
    g.add_argument("--exact", action="store_true", help="no index: an exact full scan (slow on big collections)")
    _hybrid_option(p)


def _search_options(args: argparse.Namespace) -> dict[str, Any]:
    out = {
        "hnsw_ef": getattr(args, "hnsw_ef", None),
        "oversampling": getattr(args, "oversampling", None),
        "rescore": False if getattr(args, "no_rescore", False) else None,
        "prefetch": getattr(args, "prefetch", None),
        "hybrid": getattr(args, "hybrid", None),
        "exact": True if getattr(args, "exact", False) else None,
    }
    return {k: v for k, v in out.items() if v is not None}


def _layout(args: argparse.Namespace) -> dict[str, Any]:
    """The layout options given (overrides of the default for the collection's dimension)."""
    out = {
        "quantization": getattr(args, "quantization", None),
        "prefix_dim": getattr(args, "funnel", None),
        "on_disk": getattr(args, "on_disk", None),
        "hybrid": getattr(args, "hybrid", None),
    }
    return {k: v for k, v in out.items() if v is not None}


def _query_options(p: argparse.ArgumentParser, default_top_k: int) -> None:
    p.add_argument("--image", default=None, help="an image (path or URL) that is part of the query")
    p.add_argument("--top-k", type=_at_least(1), default=default_top_k, help=f"results (default {default_top_k})")
    p.add_argument(
        "--candidates",
        type=_at_least(1),
        default=None,
        help="stage-one candidates to rerank (default 50 on a GPU, 20 on a CPU)",
    )
    p.add_argument(
        "--rerank-budget",
        type=_at_least(0),
        default=-1,
        metavar="TOKENS",
        help="most reranker work per query in text tokens, an image token counting 3, from the best candidates down "
        "(default 6000 on a CPU, about a minute at the 2B size; none on a GPU; 0: none)",
    )
    p.add_argument("--no-rerank", action="store_true", help="stage one only")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="payload filter (repeatable)")
    _search_knobs(p)


def _serve_options(p: argparse.ArgumentParser) -> None:
    _search_knobs(p)  # the server's defaults; a request's search_options override them
    p.add_argument(
        "--models",
        default=_env("SERVE_MODELS", "embed,rerank,generate"),
        help="the models to load, comma-separated from embed, rerank, generate (default all three; e.g. "
        "'embed,rerank' leaves /v1/ask and chat out and saves the generator's memory)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-auth", action="store_true", help="serve without a token on a non-loopback --host")
    p.add_argument(
        "--max-prompt-tokens",
        type=_at_least(256),
        default=8192,
        help="tokens of a chat / ask prompt, conversation and retrieved context together; a conversation over it "
        "is refused (413), the context gets what it leaves (default 8192)",
    )
    ServerConfig.add_cli_args(p)  # every limit, timeout and permission, declared once in ServerConfig
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="qwen3vl-rag",
        description="Multimodal RAG on Qwen3-VL-Embedding, Qwen3-VL-Reranker and Qdrant.",
        epilog="Exit codes: 1 failed items / bad input, 2 usage, 3 model, 4 store unreachable, 5 collection.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", parents=[common], help="index PATH... then answer QUESTION (the main job)")
    p.add_argument("args", nargs="+", metavar="PATH... QUESTION")
    _index_options(p)
    _query_options(p, 3)
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")
    p = sub.add_parser("index", parents=[common], help="index files and folders (or a BEIR / ViDoRe corpus)")
    p.add_argument("paths", nargs="*")
    _index_options(p)
    _dataset_options(p)
    _ray_options(p)
    p = sub.add_parser("search", parents=[common], help="two-stage retrieval")
    p.add_argument("query")
    _query_options(p, 5)
    p = sub.add_parser("ask", parents=[common], help="retrieval + generated answer")
    p.add_argument("question")
    _query_options(p, 3)
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")
    p = sub.add_parser("eval", parents=[common], help="retrieval quality on judged queries (nDCG, recall, MRR, MAP)")
    _dataset_options(p)
    p.add_argument("--queries", default=None, help="queries.jsonl (BEIR) or a TSV id<TAB>text")
    p.add_argument("--qrels", default=None, help="judgements: query-id corpus-id score per line (TSV, TREC) or JSON")
    p.add_argument("--k", type=_at_least(1), default=10, help="cut-off of nDCG@k, R@k, RR@k (default 10)")
    p.add_argument("--dims", default=None, help="Matryoshka dimensions to compare by exact search, e.g. 64,128,256")
    p.add_argument(
        "--rerank-depths", default="10,20,50", help="rerank the best N stage-one candidates (default 10,20,50)"
    )
    p.add_argument("--no-rerank", action="store_true", help="stage one only")
    p.add_argument("--plot", default=None, metavar="PNG", help="write quality against cost to this PNG")
    p.add_argument(
        "--per-query", default=None, metavar="FILE", help="write per-query metrics and rankings (JSON lines)"
    )
    p.add_argument("--root", default=None, help="folder that relative file ids in the judgements start from")
    _search_knobs(p)
    sub.add_parser("info", parents=[common], help="what the collection holds")
    sub.add_parser("optimize", parents=[common], help="build the collection's vector index now")
    p = sub.add_parser("serve", parents=[common], help="HTTP API: embeddings, rerank, search, ask")
    _serve_options(p)
    p = sub.add_parser("push", parents=[common], help="copy the collection to a Qdrant server")
    p.add_argument("--to-url", required=True)
    p.add_argument("--to-api-key", default=None)
    p.add_argument("--to-collection", default=None)
    _layout_options(p)  # default: the layout of the collection pushed
    p.add_argument("--shards", type=int, default=None)
    p.add_argument("--replicas", type=int, default=None)
    return parser


def _filters(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--filter expects KEY=VALUE, got {item!r}")
        values = [_scalar(v) for v in value.split(",")]
        out[key] = values if len(values) > 1 else values[0]
    return out


def _scalar(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return text


def _store(args: argparse.Namespace) -> Any:
    from .store import open_store

    if args.url:  # --url wins over --db (or QWEN3VL_RAG_DB)
        creation = {
            "shard_number": getattr(args, "shards", None),
            "replication_factor": getattr(args, "replicas", None),
        }
        if args.command == "push":
            creation = {}  # push's --shards / --replicas are the target's
        return open_store(url=args.url, api_key=args.api_key, collection=args.collection, **creation)
    return open_store(db=args.db, collection=args.collection, indexing_threshold_kb=args.indexing_threshold_kb)


SERVE_MODELS = ("embed", "rerank", "generate")


def _serve_models(value: str) -> set[str]:
    models = {m.strip() for m in value.split(",") if m.strip()}
    unknown = models - set(SERVE_MODELS)
    if unknown or not models:
        raise UsageError(f"--models takes a comma-separated subset of {', '.join(SERVE_MODELS)}, got {value!r}")
    return models


def _pipeline(args: argparse.Namespace, store: Any) -> Any:
    from .pipeline import DEFAULT_EMBEDDING_MODEL, DEFAULT_GENERATOR_MODEL, DEFAULT_RERANKER_MODEL, RAGPipeline

    models = _serve_models(args.models) if args.command == "serve" else set(SERVE_MODELS)
    embedding = args.embedding_model
    if embedding is None:
        embedding = (
            None if args.command in ("search", "ask", "serve", "eval") and store.exists() else DEFAULT_EMBEDDING_MODEL
        )
    generator = getattr(args, "generator_model", None) or DEFAULT_GENERATOR_MODEL
    offload = args.offload
    if args.command == "serve":  # a server keeps what it serves loaded; --offload only moves models off a GPU
        offload = bool(offload) and _device(args).type == "cuda"
    return RAGPipeline(
        store,
        embedding_model=embedding if "embed" in models else None,
        reranker_model=(args.reranker_model or DEFAULT_RERANKER_MODEL) if "rerank" in models else None,
        generator=generator if "generate" in models else None,
        device=args.device,
        torch_dtype=args.dtype,
        dim=getattr(args, "dim", None),
        candidates=getattr(args, "candidates", None),
        rerank_budget=getattr(args, "rerank_budget", -1) or None,
        media_options=_media_options(args),
        offload=offload,
        generator_options=_generator_options(args),
        layout=_layout(args) if args.command in ("index", "run") else None,
        search_options=_search_options(args),
    )


def _generator_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {"max_new_tokens": getattr(args, "max_new_tokens", 256)}
    if getattr(args, "max_prompt_tokens", None) is not None:
        options["max_prompt_tokens"] = args.max_prompt_tokens
    return options


def _media_options(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.image_tokens is not None:
        if args.image_tokens < 4:
            raise UsageError(f"--image-tokens must be >= 4, got {args.image_tokens}")
        out["max_pixels"] = args.image_tokens * 32 * 32
    if args.video_frames is not None:
        out["max_frames"] = args.video_frames
    if args.video_fps is not None:
        out["fps"] = args.video_fps
    return out


def _device(args: argparse.Namespace) -> Any:
    from .models.runtime import resolve_device

    return resolve_device(args.device)


def _announce(args: argparse.Namespace) -> None:
    """Say on stderr where the models run and in which dtype (``--dtype auto`` depends on the hardware)."""
    if args.quiet or args.json:
        return
    from .models.runtime import cpu_has_native_bf16, resolve_dtype

    device = _device(args)
    dtype = str(resolve_dtype(args.dtype, device)).removeprefix("torch.")
    why = ""
    if str(args.dtype).lower() == "auto" and device.type == "cpu":
        why = " (native on this CPU)" if cpu_has_native_bf16() else " (this CPU has no native bfloat16)"
    note = "; --dtype float32 gives the reference numbers" if dtype != "float32" and device.type == "cpu" else ""
    print(f"models: {device.type}, {dtype}{why}{note}", file=sys.stderr)


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _timings(pipeline: Any) -> list[dict[str, Any]]:
    return [{"stage": stage, "start": start, "seconds": round(sec, 3)} for stage, start, sec in pipeline.timings]


def _hits_text(hits: list[Any]) -> str:
    if not hits:
        return "no results"
    lines = []
    for h in hits:
        rerank = f" rerank {h.rerank_score:.4f}" if h.rerank_score is not None else ""
        lines.append(f"{h.rank:>2}. {h.score:.4f} [{h.modality}] {h.describe()}  (vector {h.vector_score:.4f}{rerank})")
        snippet = " ".join(h.text.split())[:160]
        if snippet:
            lines.append(f"    {snippet}")
    return "\n".join(lines)


def _index_command(args: argparse.Namespace, pipeline: Any) -> Any:
    """``index PATH...`` or ``index --beir / --vidore DIR`` (a dataset's corpus, its ids kept)."""
    dataset = _dataset(args)
    if dataset is None:
        if not args.paths:
            raise UsageError("index needs PATH... (or --beir / --vidore DIR)")
        return _do_index(args, pipeline, args.paths)
    from .evaluate import index_dataset

    if args.paths:
        raise UsageError("index a dataset (--beir / --vidore) or PATH..., one per run")
    if args.ray:
        raise UsageError("--ray indexes files and folders (PATH...); index a dataset's corpus without it")
    if not dataset.corpus:
        raise ValueError("the dataset has no corpus to index")
    return index_dataset(pipeline.indexer(), dataset, show_progress_bar=not (args.quiet or args.json))


def _eval(args: argparse.Namespace, pipeline: Any) -> int:
    from .evaluate import evaluate

    dataset = _dataset(args)
    if dataset is None:
        raise UsageError("eval needs --queries and --qrels (or --beir / --vidore DIR)")
    for option, value in (("--plot", args.plot), ("--per-query", args.per_query)):
        if not value:
            continue
        target = Path(value).expanduser().resolve()
        if not target.parent.is_dir():
            raise UsageError(f"{option}: the folder of {value} does not exist")  # before the evaluation runs
        if target.is_dir():
            raise UsageError(f"{option}: {value} is a folder; give a file name")
    report = evaluate(
        pipeline.retriever(rerank=not args.no_rerank),
        dataset,
        k=args.k,
        dims=_ints(args.dims, "--dims"),
        rerank_depths=_ints(args.rerank_depths, "--rerank-depths"),
        search_options=_search_options(args),
        root=args.root,
        show_progress_bar=not (args.quiet or args.json),
    )
    try:
        if args.plot:
            report.plot(args.plot)
        if args.per_query:
            report.write_per_query(args.per_query)
    except OSError as exc:
        raise ValueError(f"cannot write the results: {exc}") from None
    _print(args, report.to_dict(), report.table())
    return 0


def _do_index(args: argparse.Namespace, pipeline: Any, paths: list[str]) -> Any:
    from .ingest import IngestOptions

    try:
        metadata = json.loads(args.metadata) if args.metadata else None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f'--metadata is not valid JSON ({exc}); give a JSON object, e.g. \'{{"team": "x"}}\''
        ) from None
    if metadata is not None and not isinstance(metadata, dict):
        raise UsageError("--metadata must be a JSON object")
    options = IngestOptions(
        recursive=not args.no_recursive,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        video_segment_seconds=args.video_segment,
        chunk_chars=args.chunk_chars,
        chunk_overlap=min(200, args.chunk_chars // 4),
        max_text_bytes=args.max_text_mb * 1024 * 1024,
    )
    ray_options = None
    if getattr(args, "ray", False):  # checked before --rebuild deletes anything
        from .ingest.distributed import RayOptions, parse_actors

        try:
            ray_options = RayOptions(
                address=args.ray_address,
                actors=parse_actors(args.ray_actors),
                gpus_per_actor=args.ray_gpus_per_actor,
                cpus_per_actor=args.ray_cpus_per_actor,
                batch_size=args.ray_batch_size,
            )
        except ValueError as exc:  # a --ray-* value: a usage error
            raise UsageError(str(exc)) from None
    if args.rebuild:
        report = _rebuild(args, pipeline, paths, options, metadata, ray_options)
        new = True
    else:
        new = not pipeline.store.exists()
        report = _run_index(args, pipeline, paths, options, metadata, ray_options)
    spec = pipeline.store.spec
    if new and spec is not None and not (args.quiet or args.json):
        chosen = "as asked" if _layout(args) else f"the default for {spec.dim}-d vectors"
        print(
            f"collection {pipeline.store.collection!r}: {spec.vectors.describe(spec.dim)} ({chosen})", file=sys.stderr
        )
    return report


def _run_index(
    args: argparse.Namespace, pipeline: Any, paths: list[str], options: Any, metadata: Any, ray_options: Any
) -> Any:
    show = not (args.quiet or args.json)
    if ray_options is not None:
        with pipeline.timed("index"):
            return pipeline.ray_indexer(ray_options).index_paths(
                paths, options=options, metadata=metadata, show_progress_bar=show, prune=args.prune
            )
    return pipeline.index(paths, options=options, metadata=metadata, show_progress_bar=show, prune=args.prune)


def _rebuild(
    args: argparse.Namespace, pipeline: Any, paths: list[str], options: Any, metadata: Any, ray_options: Any
) -> Any:
    """``--rebuild``: index into a sibling collection and put it in place of the old one only when the run
    succeeded (something indexed, nothing raised). Any failure (a model that does not load, a path that does not
    exist, Ctrl-C, a store error) leaves the old collection as it was."""
    log = logging.getLogger(__name__)
    original = pipeline.store
    original.close()
    staged = original.staging()
    pipeline.store = staged
    try:
        report = _run_index(args, pipeline, paths, options, metadata, ray_options)
    except BaseException:
        pipeline.store = original
        _discard(staged)
        log.warning("rebuild of collection %r abandoned: it is left as it was", original.collection)
        raise
    pipeline.store = original
    staged.close()
    if not report.ok:
        _discard(staged)
        log.warning(
            "rebuild of collection %r abandoned (nothing was indexed): it is left as it was", original.collection
        )
        return report
    original.replace_with(staged.collection)
    log.warning("rebuilt collection %r", original.collection)
    return report


def _discard(staged: Any) -> None:
    try:
        staged.drop()
    except Exception as exc:  # noqa: BLE001 - the old collection is intact; the leftover is deleted next time
        logging.getLogger(__name__).warning("could not delete %s: %s", staged.location, exc)


def _query(args: argparse.Namespace, text: str) -> Any:
    return {"text": text, "image": args.image} if args.image else text


def _require_points(pipeline: Any) -> None:
    from .errors import CollectionNotFoundError

    if pipeline.store.count() == 0:
        raise CollectionNotFoundError(f"collection {pipeline.store.collection!r} is empty: index something first")


def _push(args: argparse.Namespace, store: Any) -> int:
    """``push``: every point, with its layout, into a Qdrant server's collection."""
    from dataclasses import replace

    from .store import ServerStore

    if not str(args.to_url).startswith(("http://", "https://")):
        raise UsageError(
            f"--to-url takes a Qdrant server's URL (http://host:6333 or https://...), got {args.to_url!r}; "
            "to copy into a folder, index there with --db"
        )
    target = ServerStore(
        args.to_url,
        args.to_collection or args.collection,
        api_key=args.to_api_key,
        shard_number=args.shards,
        replication_factor=args.replicas,
    )
    spec = store.open(create=False)
    layout = replace(spec.vectors, **_layout(args)) if _layout(args) else None
    if layout is not None:
        layout.check(spec.dim)
    n = store.push_to(target, layout=layout)
    _print(args, {"pushed": n, "to": target.location}, f"pushed {n} points to {target.location}")
    return 0


def run_command(args: argparse.Namespace) -> int:
    args.filters = _filters(getattr(args, "filter", []))  # bad filters fail before anything is opened
    store = _store(args)
    try:
        if args.command == "info":
            store.open(create=False)
            info = {**store.info(), "verified": store.verify()}  # a damaged store is a StoreError (exit 4)
            _print(args, info, "\n".join(f"{k}: {v}" for k, v in info.items()))
            return 0
        if args.command == "optimize":
            store.open(create=False)
            if hasattr(store, "optimize"):
                store.optimize()
            status = store.index_status()
            _print(args, status, "\n".join(f"{k}: {v}" for k, v in status.items()))
            return 0
        if args.command == "push":
            return _push(args, store)
        pipeline = _pipeline(args, store)
        _announce(args)
        if args.command == "serve":
            return _serve(args, pipeline)
        if args.command == "index":
            report = _index_command(args, pipeline)
            _print(args, report.to_dict(), report.summary())
            return 0 if report.ok else EXIT_FAILED  # everything failed: not a success
        if args.command == "run":
            if len(args.args) < 2:
                raise UsageError("run needs at least one PATH and a QUESTION")
            *paths, question = args.args
            report = _do_index(args, pipeline, paths)
            if not args.json:
                print(report.summary(), file=sys.stderr)
            answer = pipeline.ask(
                question, image=args.image, top_k=args.top_k, filters=args.filters, rerank=not args.no_rerank
            )
            data = {"index": report.to_dict(), **answer.to_dict(), "timings": _timings(pipeline)}
            _print(args, data, f"{answer.text}\n\nSources:\n{_hits_text(answer.sources)}")
            return 0
        _require_points(pipeline)
        if args.command == "eval":
            return _eval(args, pipeline)
        if args.command == "search":
            hits = pipeline.search(
                _query(args, args.query), top_k=args.top_k, filters=args.filters, rerank=not args.no_rerank
            )
            _print(args, [h.to_dict() for h in hits], _hits_text(hits))
            return 0
        if args.command == "ask":
            answer = pipeline.ask(
                args.question,
                image=args.image,
                top_k=args.top_k,
                filters=args.filters,
                rerank=not args.no_rerank,
            )
            _print(args, answer.to_dict(), f"{answer.text}\n\nSources:\n{_hits_text(answer.sources)}")
            return 0
        raise AssertionError(args.command)
    finally:
        store.close()


def _server_config(args: argparse.Namespace) -> Any:
    return ServerConfig.from_cli_args(args)


def _serve(args: argparse.Namespace, pipeline: Any) -> int:
    """``serve``: the HTTP API over the pipeline's models and collection, with the operator's limits."""
    from .serving import create_app, serve

    try:
        config = _server_config(args)
    except ValueError as exc:  # a flag's value
        raise UsageError(str(exc)) from None
    models = _serve_models(args.models)
    if "embed" in models and pipeline.store.exists():
        # opened now: a store another process holds (a running `index`) is said at start (exit 4), not answered
        # with a 503 on every request behind a /health that says ok
        pipeline.store.open(create=False)
    if "embed" not in models:  # a rerank-only server: no collection to search
        if "generate" in models:
            raise UsageError("--models: 'generate' answers from a search of the collection, which needs 'embed'")
        app = create_app(reranker=pipeline.reranker, config=config)
    else:
        if "generate" in models:
            pipeline.generator  # loaded now: the memory is known at start, and a bad model fails here  # noqa: B018
        app = create_app(pipeline=pipeline, config=config)
    serve(app, host=args.host, port=args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        _check_serve_args(parser, args)
    quiet = args.quiet or args.json
    configure_output(quiet=quiet, verbose=args.verbose and not quiet)
    try:
        return run_command(args)
    except KeyboardInterrupt:
        return _fail(RuntimeError("interrupted (what was indexed is kept; run again to resume)"), EXIT_FAILED)
    except Exception as exc:
        kind = classify(exc)  # the one table of exit codes (retrieval_pipeline.errors)
        if kind is None:
            raise
        return _fail(exc, kind.exit_code)


def configure_output(*, quiet: bool, verbose: bool) -> None:
    """What reaches the terminal. Default: this project's progress, warnings and results; the libraries' load
    reports, weight-loading bars and the video decoders' C-level logs are silenced (they are expected noise for
    these checkpoints). ``verbose``: all of it, and this project's info messages (stage timings). ``quiet``:
    errors only."""
    level = logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=logging.WARNING if not quiet else logging.ERROR, format="%(levelname)s: %(message)s")
    logging.getLogger("retrieval_pipeline").setLevel(level)
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR" if quiet else "WARNING")  # --ray: no per-stage INFO lines
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # "Loading weights" bars; hub downloads keep their own bars
    except ImportError:  # pragma: no cover
        pass
    for module, quiet_level in (("av.logging", "PANIC"), ("decord.logging", "QUIET")):
        try:
            lib = __import__(module, fromlist=["set_level"])
            lib.set_level(getattr(lib, quiet_level))
        except (ImportError, AttributeError):  # pragma: no cover - the decoder is not installed
            pass


def _check_serve_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Auth is never switched off by accident: an empty token is refused, and so is no token on a host other
    than loopback unless --no-auth says so."""
    if args.token is not None and not args.token.strip():
        parser.error(f"--token (or {ENV}SERVER_TOKEN) is empty: pass a real token, or leave it unset")
    loopback = args.host in ("127.0.0.1", "localhost", "::1") or args.host.startswith("127.")
    if args.token is None and not loopback and not args.no_auth:
        parser.error(f"--host {args.host} without --token: pass a token, or --no-auth to serve without one")


def _fail(exc: BaseException, code: int) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
