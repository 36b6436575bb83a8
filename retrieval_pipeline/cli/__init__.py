"""``qwen3vl-rag``: index a folder of mixed media, search it, ask questions about it.

    qwen3vl-rag run PATH... QUESTION     index the paths, then answer the question (the main job)
    qwen3vl-rag index PATH...            index files and folders (images, videos, text/Markdown, PDFs)
    qwen3vl-rag search QUERY             two-stage retrieval (--image for an image query, --no-rerank for stage one)
    qwen3vl-rag ask QUESTION             retrieval + a Qwen3-VL answer with its sources
    qwen3vl-rag info                     what the collection holds (points, spec, index)
    qwen3vl-rag optimize                 build the collection's vector index now
    qwen3vl-rag push --to-url URL        copy the collection (same ids, vectors, payloads) to a Qdrant server
    qwen3vl-rag serve [--port 8000]      HTTP API (embeddings, rerank, search, ask) with dynamic batching
    qwen3vl-rag check-engine URL         compare a running engine's numbers with the local models (drift check)
    qwen3vl-rag finetune embedder|reranker --beir DIR --out DIR   adapt a model to judged data (LoRA)

Storage: embedded Qdrant Edge under --db (default: the user's data folder), or a Qdrant server with --url.
Models: hub ids or local folders, from the options or QWEN3VL_RAG_{EMBEDDING,RERANKER,GENERATOR}_MODEL.
Exit codes: 0 ok, 1 bad input or failed items, 2 usage, 3 a model cannot be loaded, 4 the store cannot be
reached, 5 the collection is missing, empty or built with another model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from types import ModuleType

from .. import __version__
from ..errors import EXIT_FAILED, classify
from ..settings import ENV
from . import ask, check_engine, common, eval, finetune, index, info, optimize, push, run, search, serve

__all__ = ["COMMANDS", "ENV", "build_parser", "main"]

# Each command is a module with NAME, HELP, add_parser(subparsers, common options) and run(args, store) -> exit
# code (and optionally check(parser, args) for what argparse alone cannot say, and NEEDS_STORE = False when it
# opens no collection: run gets None); the order is --help's.
COMMANDS: dict[str, ModuleType] = {
    m.NAME: m for m in (run, index, search, ask, eval, finetune, info, optimize, serve, push, check_engine)
}


def build_parser() -> argparse.ArgumentParser:
    parent = common.common_parser()
    parser = argparse.ArgumentParser(
        prog="qwen3vl-rag",
        description="Multimodal RAG on Qwen3-VL-Embedding, Qwen3-VL-Reranker and Qdrant.",
        epilog="Exit codes: 1 failed items / bad input, 2 usage, 3 model, 4 store unreachable, 5 collection.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub, parent)
    return parser


def run_command(args: argparse.Namespace) -> int:
    args.filters = common.filters(getattr(args, "filter", []))  # bad filters fail before anything is opened
    if not getattr(COMMANDS[args.command], "NEEDS_STORE", True):
        return COMMANDS[args.command].run(args, None)
    store = common.open_store_for(args)
    try:
        return COMMANDS[args.command].run(args, store)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check = getattr(COMMANDS[args.command], "check", None)
    if check is not None:
        check(parser, args)
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
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # "N changes detected": the watch prints its own lines
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


def _fail(exc: BaseException, code: int) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return code
