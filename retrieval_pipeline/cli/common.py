"""What the commands share: the storage, model and output options every command takes, the option groups several
take (indexing, layout, search, queries, datasets), and opening the store and the pipeline from them."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import UsageError
from ..serving.config import ServerConfig, at_least
from ..settings import DEFAULT_EMBEDDING_MODEL, DEFAULT_GENERATOR_MODEL, DEFAULT_RERANKER_MODEL, PIXELS_PER_TOKEN, env
from ..store import default_db

SERVE_MODELS = ("embed", "rerank", "generate")


def common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("storage")
    g.add_argument("--db", default=env("DB"), help=f"embedded Qdrant Edge folder (default: {default_db()})")
    g.add_argument("--url", default=env("URL"), help="Qdrant server URL (instead of --db)")
    g.add_argument("--api-key", default=env("API_KEY"), help="Qdrant server API key")
    g.add_argument("--collection", default=env("COLLECTION", "default"), help="collection name (default: default)")
    g.add_argument(
        "--indexing-threshold-kb",
        type=int,
        default=None,
        help="embedded store: KB of vectors a segment holds before it gets an HNSW index (default Qdrant's, about "
        "10 MB; or QWEN3VL_RAG_INDEXING_THRESHOLD_KB); set when a collection is created",
    )
    m = p.add_argument_group("models (hub ids or local folders)")
    m.add_argument("--embedding-model", default=env("EMBEDDING_MODEL"), help=f"default: {DEFAULT_EMBEDDING_MODEL}")
    m.add_argument("--reranker-model", default=env("RERANKER_MODEL"), help=f"default: {DEFAULT_RERANKER_MODEL}")
    m.add_argument("--generator-model", default=env("GENERATOR_MODEL"), help=f"default: {DEFAULT_GENERATOR_MODEL}")
    m.add_argument("--device", default=env("DEVICE"), help="cpu, cuda, cuda:N (default: CUDA when present)")
    m.add_argument(
        "--dtype",
        default=env("DTYPE", "auto"),
        help="auto / float32 / bfloat16 / int8 (default auto: bfloat16 on CUDA and on CPUs with native bfloat16, "
        "else float32; float32 gives the reference numbers; int8: quantized linear layers on the CPU, faster and "
        "smaller within a documented bound)",
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


def index_options(p: argparse.ArgumentParser) -> None:
    file_options(p)
    p.add_argument("--dim", type=at_least(1), default=None, help="Matryoshka dimension of the stored vectors")
    p.add_argument("--prune", action="store_true", help="remove the items of files under PATH that no longer exist")
    p.add_argument("--rebuild", action="store_true", help="delete the collection first (e.g. a damaged one)")
    layout_options(p)


def file_options(p: Any) -> None:
    """How files are read into items (``index``, and ``serve --watch``)."""
    p.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    p.add_argument("--include", action="append", default=[], help="glob of files to index (repeatable)")
    p.add_argument("--exclude", action="append", default=[], help="glob of files to leave out (repeatable)")
    p.add_argument("--video-segment", type=float, default=None, help="split videos into segments of N seconds")
    p.add_argument("--chunk-chars", type=at_least(1), default=1200, help="text chunk size in characters")
    p.add_argument(
        "--max-text-mb", type=at_least(1), default=64, help="largest text / Markdown file read, in MB (default 64)"
    )
    p.add_argument(
        "--render-html",
        action="store_true",
        help="also index web pages as Chromium renders them, page by page (scripts run, without any network)",
    )
    p.add_argument(
        "--max-pages",
        type=at_least(1),
        default=1000,
        help="largest document read, in pages (PDF, office; a longer one is refused unrendered; default 1000)",
    )
    p.add_argument("--metadata", default=None, help="JSON object stored with every item (payload 'metadata')")


def ray_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "distributed (Ray Data; pip install 'qwen3-vl-rag[ray]')",
        "read, decode and tokenise on CPU workers, embed on an actor pool, write in batches; the same ids and "
        "vectors as a plain run, which can finish what a --ray run started (and the reverse)",
    )
    g.add_argument("--ray", action="store_true", help="index on Ray Data (a local cluster unless --ray-address)")
    g.add_argument("--ray-address", default=env("RAY_ADDRESS"), help="the Ray cluster to join (e.g. ray://head:10001)")
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


def layout_options(p: argparse.ArgumentParser) -> None:
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
    hybrid_option(p)


def hybrid_option(p: argparse.ArgumentParser) -> None:
    if "--hybrid" not in p._option_string_actions:  # run has both the index and the query options
        p.add_argument(
            "--hybrid",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="BM25 over the text of text chunks and PDF pages, fused with the dense search (default: on)",
        )


def dataset_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation datasets")
    g.add_argument("--beir", default=None, metavar="DIR", help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/")
    g.add_argument("--vidore", default=None, metavar="DIR", help="a ViDoRe / MTEB folder: corpus, queries, qrels")
    g.add_argument("--split", default="test", help="the BEIR qrels split (default test)")


def dataset(args: argparse.Namespace, *, judged: bool = False) -> Any:
    """The dataset that ``--beir`` / ``--vidore`` (and ``--queries`` / ``--qrels``) name, or None. ``judged``: only
    the judged queries."""
    from ..evaluate import Dataset, load_beir, load_vidore, read_qrels, read_queries

    if args.beir and args.vidore:
        raise UsageError("pass --beir or --vidore, not both")
    if args.beir:
        dataset = load_beir(args.beir, args.split, judged=judged)
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


def ints(text: str | None, option: str) -> list[int]:
    if not text:
        return []
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise UsageError(f"{option} takes positive integers, got {text!r}")
    return values


def search_knobs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("vector search (stage one)")
    g.add_argument("--hnsw-ef", type=int, default=None, help="HNSW beam width (default 128; higher: better recall)")
    g.add_argument("--oversampling", type=float, default=None, help="quantized candidates per result before rescoring")
    g.add_argument("--no-rescore", action="store_true", help="quantized (or prefix-only) scores, no rescoring")
    g.add_argument("--prefetch", type=int, default=None, help="funnel candidates taken on the prefix")
    g.add_argument("--exact", action="store_true", help="no index: an exact full scan (slow on big collections)")
    hybrid_option(p)


def search_options(args: argparse.Namespace) -> dict[str, Any]:
    out = {
        "hnsw_ef": getattr(args, "hnsw_ef", None),
        "oversampling": getattr(args, "oversampling", None),
        "rescore": False if getattr(args, "no_rescore", False) else None,
        "prefetch": getattr(args, "prefetch", None),
        "hybrid": getattr(args, "hybrid", None),
        "exact": True if getattr(args, "exact", False) else None,
    }
    return {k: v for k, v in out.items() if v is not None}


def layout(args: argparse.Namespace) -> dict[str, Any]:
    """The layout options given (overrides of the default for the collection's dimension)."""
    out = {
        "quantization": getattr(args, "quantization", None),
        "prefix_dim": getattr(args, "funnel", None),
        "on_disk": getattr(args, "on_disk", None),
        "hybrid": getattr(args, "hybrid", None),
    }
    return {k: v for k, v in out.items() if v is not None}


def score_cut(text: str) -> float:
    """``--min-score``: a finite number between -1 and 1 (a usage error otherwise)."""
    from ..retriever import check_min_score

    try:
        value = float(text)
        check_min_score(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc) if "min_score" in str(exc) else f"not a number: {text!r}") from None
    return value


def query_options(p: argparse.ArgumentParser, default_top_k: int) -> None:
    p.add_argument("--image", default=None, help="an image (path or URL) that is part of the query")
    p.add_argument("--top-k", type=at_least(1), default=default_top_k, help=f"results (default {default_top_k})")
    p.add_argument(
        "--candidates",
        type=at_least(1),
        default=None,
        help="stage-one candidates to rerank (default 50 on a GPU, 20 on a CPU)",
    )
    p.add_argument(
        "--rerank-budget",
        type=at_least(0),
        default=-1,
        metavar="TOKENS",
        help="most reranker work per query in text tokens, an image token counting 3, from the best candidates down "
        "(default 6000 on a CPU, about a minute at the 2B size; none on a GPU; 0: none)",
    )
    p.add_argument("--no-rerank", action="store_true", help="stage one only")
    p.add_argument(
        "--min-score",
        type=score_cut,
        default=None,
        help="only hits scoring at least this: the rerank score (0..1, the probability of 'yes'), or the cosine "
        "with --no-rerank (pick it with eval: see the README)",
    )
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE", help="payload filter (repeatable)")
    search_knobs(p)


def serve_options(p: argparse.ArgumentParser) -> None:
    search_knobs(p)  # the server's defaults; a request's search_options override them
    p.add_argument(
        "--models",
        default=env("SERVE_MODELS", "embed,rerank,generate"),
        help="the models to load, comma-separated from embed, rerank, generate (default all three; e.g. "
        "'embed,rerank' leaves /v1/ask and chat out and saves the generator's memory)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-auth", action="store_true", help="serve without a token on a non-loopback --host")
    p.add_argument(
        "--max-prompt-tokens",
        type=at_least(256),
        default=8192,
        help="tokens of a chat / ask prompt, conversation and retrieved context together; a conversation over it "
        "is refused (413), the context gets what it leaves (default 8192)",
    )
    ServerConfig.add_cli_args(p)  # every limit, timeout and permission, declared once in ServerConfig
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")


def watch_options(p: argparse.ArgumentParser) -> None:
    """How ``index --watch`` and ``serve --watch`` follow folders."""
    from ..ingest.options import DEBOUNCE_MS, SETTLE_S

    p.add_argument(
        "--settle",
        type=float,
        default=SETTLE_S,
        metavar="SECONDS",
        help=f"with --watch: a file is indexed once unchanged this long (still being written: it waits; "
        f"default {SETTLE_S:g})",
    )
    p.add_argument(
        "--debounce-ms",
        type=at_least(1),
        default=DEBOUNCE_MS,
        help=f"with --watch: file-system events gathered this long before they are looked at (default {DEBOUNCE_MS})",
    )


@contextlib.contextmanager
def stop_on_signals(stop: Any) -> Iterator[None]:
    """While inside: the first Ctrl-C or SIGTERM calls ``stop()`` (the work under way finishes, then the command
    ends normally); a second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        print("stopping after the sync under way (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
        stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def filters(items: list[str]) -> dict[str, Any]:
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


def open_store_for(args: argparse.Namespace) -> Any:
    from ..store import open_store

    if args.url:  # --url wins over --db (or QWEN3VL_RAG_DB)
        creation = {
            "shard_number": getattr(args, "shards", None),
            "replication_factor": getattr(args, "replicas", None),
        }
        return open_store(url=args.url, api_key=args.api_key, collection=args.collection, **creation)
    return open_store(db=args.db, collection=args.collection, indexing_threshold_kb=args.indexing_threshold_kb)


def serve_models(value: str) -> set[str]:
    models = {m.strip() for m in value.split(",") if m.strip()}
    unknown = models - set(SERVE_MODELS)
    if unknown or not models:
        raise UsageError(f"--models takes a comma-separated subset of {', '.join(SERVE_MODELS)}, got {value!r}")
    return models


def make_pipeline(
    args: argparse.Namespace,
    store: Any,
    *,
    models: set[str] | frozenset[str] = frozenset(SERVE_MODELS),
    stored_model: bool = False,
    server: bool = False,
    new_layout: bool = False,
) -> Any:
    """The pipeline the options describe, on ``store``. ``models``: the ones to load (lazily). ``stored_model``:
    with no ``--embedding-model``, the collection's own model when it exists. ``server``: a server keeps what it
    serves loaded (``--offload`` only moves models off a GPU). ``new_layout``: the layout options apply (a command
    that may create the collection)."""
    from ..pipeline import ModelSpec, RAGPipeline, RetrievalSettings

    embedding = args.embedding_model
    if embedding is None:
        embedding = None if stored_model and store.exists() else DEFAULT_EMBEDDING_MODEL
    generator = getattr(args, "generator_model", None) or DEFAULT_GENERATOR_MODEL
    offload = args.offload
    if server:  # a server keeps what it serves loaded; --offload only moves models off a GPU
        offload = bool(offload) and model_device(args).type == "cuda"
    media = media_options(args)
    retrieval = RetrievalSettings(
        dim=getattr(args, "dim", None),
        candidates=getattr(args, "candidates", None),
        rerank_budget=getattr(args, "rerank_budget", -1) or None,
        search=search_options(args),
        layout=layout(args) if new_layout else None,
    )
    reranker = args.reranker_model or DEFAULT_RERANKER_MODEL
    return RAGPipeline(
        store,
        # a ModelSpec without a name: the model the collection was built with
        embedding=ModelSpec(embedding, options=media) if "embed" in models else None,
        reranking=ModelSpec(reranker, options=media) if "rerank" in models else None,
        generation=ModelSpec(generator, options=generator_options(args)) if "generate" in models else None,
        retrieval=retrieval,
        device=args.device,
        torch_dtype=args.dtype,
        offload=offload,
    )


def generator_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {"max_new_tokens": getattr(args, "max_new_tokens", 256)}
    if getattr(args, "max_prompt_tokens", None) is not None:
        options["max_prompt_tokens"] = args.max_prompt_tokens
    return options


def media_options(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.image_tokens is not None:
        if args.image_tokens < 4:
            raise UsageError(f"--image-tokens must be >= 4, got {args.image_tokens}")
        out["max_pixels"] = args.image_tokens * PIXELS_PER_TOKEN
    if args.video_frames is not None:
        out["max_frames"] = args.video_frames
    if args.video_fps is not None:
        out["fps"] = args.video_fps
    return out


def model_device(args: argparse.Namespace) -> Any:
    from ..models.runtime import resolve_device

    return resolve_device(args.device)


def announce(args: argparse.Namespace) -> None:
    """Say on stderr where the models run and in which dtype (``--dtype auto`` depends on the hardware)."""
    if args.quiet or args.json:
        return
    from ..models.runtime import cpu_has_native_bf16, quantization_of, resolve_dtype

    device = model_device(args)
    dtype = quantization_of(args.dtype) or str(resolve_dtype(args.dtype, device)).removeprefix("torch.")
    why = ""
    if str(args.dtype).lower() == "auto" and device.type == "cpu":
        why = (
            " (native on this CPU)"
            if cpu_has_native_bf16()
            # int8 is not chosen for the user: its measured fidelity at the released size misses its bound
            else " (this CPU has no native bfloat16; --dtype int8 runs 2-4x faster in half the memory, at lower "
            "fidelity: see the README)"
        )
    note = "; --dtype float32 gives the reference numbers" if dtype != "float32" and device.type == "cpu" else ""
    print(f"models: {device.type}, {dtype}{why}{note}", file=sys.stderr)


def output(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def timings(pipeline: Any) -> list[dict[str, Any]]:
    return [{"stage": stage, "start": start, "seconds": round(sec, 3)} for stage, start, sec in pipeline.timings]


def hits_text(hits: list[Any]) -> str:
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


def query_input(args: argparse.Namespace, text: str) -> Any:
    return {"text": text, "image": args.image} if args.image else text


def require_points(pipeline: Any) -> None:
    from ..errors import CollectionNotFoundError

    if pipeline.store.count() == 0:
        raise CollectionNotFoundError(f"collection {pipeline.store.collection!r} is empty: index something first")
