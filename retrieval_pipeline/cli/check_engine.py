"""``check-engine URL``: does a running engine (vLLM, Infinity, a Cohere-style server, this project's ``serve``)
give the local models' numbers? Sends the built-in probe set of :mod:`retrieval_pipeline.drift`, prints each
probe's cosine / score difference against the bounds and a verdict. Exit 0 within bounds, 1 drift, 2 usage, 3 the
engine cannot be reached or answers a probe with an error (or a local model cannot be loaded). Opens no store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import EXIT_FAILED, ModelLoadError, UsageError
from ..settings import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL, env
from . import common

NAME = "check-engine"
HELP = "compare a running engine's embeddings and rerank scores with the local models (drift check)"
NEEDS_STORE = False  # the command line opens no collection for it
HIDDEN = {"db", "url", "collection", "indexing_threshold_kb", "generator_model", "offload"}  # mean nothing here


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    # a parent of its own (the shared one's option objects must not change): --api-key is the engine's key here,
    # and the options that mean nothing to this command are hidden
    own = common.common_parser()
    for action in own._actions:
        if action.dest in HIDDEN:
            action.help = argparse.SUPPRESS
    p = sub.add_parser(
        NAME,
        parents=[own],
        help=HELP,
        conflict_handler="resolve",
        description="Send the built-in probe set (texts in several languages, an image, an image with text, a "
        "video, a PDF page; rerank pairs of every modality mix) to URL and compare its answers with the local "
        "models' (--embedding-model / --reranker-model, float32 unless --dtype says otherwise). Exit 0 within "
        "bounds, 1 drift, 2 usage, 3 the engine cannot be reached or answers an error.",
    )
    p.add_argument("engine", metavar="URL", help="the engine's base URL (http://host:8000, with or without /v1)")
    p.add_argument("--api-key", default=env("ENGINE_API_KEY"), help="the engine's bearer token")
    p.add_argument("--model", default=None, help="the model name sent in every request (vLLM's served name)")
    p.add_argument(
        "--dialect",
        choices=("openai", "vllm", "cohere"),
        default=None,
        help="openai (this project's server: multimodal objects, the instruction field), vllm (messages, the "
        "instruction as system message; /rerank), cohere (/v2/embed, /v2/rerank); default: detected",
    )
    p.add_argument("--only", choices=("embed", "rerank"), default=None, help="compare one side only")
    p.add_argument(
        "--tolerance",
        default="float32",
        help="bounds: float32 (default: 1 - cosine <= 1e-4, |score diff| <= 1e-3), bfloat16 (5e-3, 5e-2) for a "
        "bfloat16 engine, or a factor that widens the float32 ones",
    )
    p.add_argument("--max-cosine-distance", type=float, default=None, help="the embedding bound (1 - cosine)")
    p.add_argument("--max-score-diff", type=float, default=None, help="the rerank bound (|score difference|)")
    p.add_argument("--skip", action="append", default=[], metavar="GLOB", help="leave out probes (repeatable)")
    p.add_argument("--no-matryoshka", action="store_true", help="no probes at a truncated dimension")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    return p


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not str(args.engine).startswith(("http://", "https://")):
        parser.error(f"URL must be an http:// or https:// address, got {args.engine!r}")
    try:
        args.bounds = bounds(args)
    except UsageError as exc:
        parser.error(str(exc))
    if args.timeout <= 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")


def bounds(args: argparse.Namespace) -> Any:
    """--tolerance, then the explicit bounds over it."""
    from dataclasses import replace

    from ..drift import tolerance

    chosen = tolerance(args.tolerance)
    for option, field, value in (
        ("--max-cosine-distance", "cosine_distance", args.max_cosine_distance),
        ("--max-score-diff", "score", args.max_score_diff),
    ):
        if value is not None:
            if not value >= 0:
                raise UsageError(f"{option} must be >= 0, got {value}")
            chosen = replace(chosen, **{field: value})
    return chosen


def run(args: argparse.Namespace, store: Any) -> int:
    """``check-engine``: the probes, the comparison, the table (or JSON) and the verdict's exit code."""
    from ..drift import check_engine

    dtype = "float32" if str(args.dtype).lower() == "auto" else args.dtype  # the reference numbers
    media = common.media_options(args)
    embedder = reranker = None
    if args.only != "rerank":
        embedder = _loader(args, "embedding", args.embedding_model or DEFAULT_EMBEDDING_MODEL, dtype, media)
    if args.only != "embed":
        reranker = _loader(args, "reranker", args.reranker_model or DEFAULT_RERANKER_MODEL, dtype, media)
    report = check_engine(
        args.engine,
        embedder=embedder,
        reranker=reranker,
        dialect=args.dialect,
        api_key=args.api_key,
        model=args.model,
        bounds=getattr(args, "bounds", None) or bounds(args),
        skip=args.skip,
        matryoshka=not args.no_matryoshka,
        timeout=args.timeout,
    )
    common.output(args, report.to_dict(), report.table())
    return 0 if report.ok else EXIT_FAILED


def _loader(args: argparse.Namespace, what: str, name: str, dtype: str, media: dict[str, Any]) -> Any:
    """The local model, loaded when the engine turns out to serve its side."""

    def load() -> Any:
        from ..models.embedder import Qwen3VLEmbedder
        from ..models.reranker import Qwen3VLReranker

        factory: Any = Qwen3VLEmbedder if what == "embedding" else Qwen3VLReranker
        if not (args.quiet or args.json):
            print(f"local {what} model: {name} ({dtype})", file=sys.stderr)
        try:
            return factory(name, device=args.device, torch_dtype=dtype, **media)
        except (OSError, ValueError) as exc:
            where = "a local folder" if Path(name).exists() else "a hub id or a local folder"
            raise ModelLoadError(f"cannot load the {what} model {name!r} ({where}): {exc}") from None

    return load
