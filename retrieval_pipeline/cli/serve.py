"""``serve``: the HTTP API over the pipeline's models and collection, with the operator's limits."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import UsageError
from ..serving.config import ServerConfig
from ..settings import ENV
from . import common

NAME = "serve"
HELP = "HTTP API: embeddings, rerank, search, ask"


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, parents=[parent], help=HELP)
    common.serve_options(p)
    g = p.add_argument_group(
        "folder watch",
        "--watch PATH...: the served collection follows these folders (reconciled at start, then every change "
        "indexed or removed while serving); the other options say how files are read, as for index",
    )
    g.add_argument("--watch", nargs="+", default=None, metavar="PATH", help="folders (or files) to keep in sync")
    common.file_options(g)
    common.watch_options(g)
    return p


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Auth is never switched off by accident: an empty token is refused, and so is no token on a host other
    than loopback unless --no-auth says so."""
    if args.token is not None and not args.token.strip():
        parser.error(f"--token (or {ENV}SERVER_TOKEN) is empty: pass a real token, or leave it unset")
    loopback = args.host in ("127.0.0.1", "localhost", "::1") or args.host.startswith("127.")
    if args.token is None and args.keys is None and not loopback and not args.no_auth:
        parser.error(f"--host {args.host} without --token or --keys: pass one, or --no-auth to serve without auth")
    if args.keys is not None:
        from ..serving.keys import KeyFileError, KeyRing

        try:
            KeyRing(args.keys)  # a bad keys file is said at start (exit 2), not as a 401 for every key
        except KeyFileError as exc:
            parser.error(f"--keys: {exc}")


def run(args: argparse.Namespace, store: Any) -> int:
    if args.watch:
        from ..ingest.watch import check_not_watched

        check_not_watched(store)  # said as such, before the collection's own lock says "in use"
    models = common.serve_models(args.models)
    pipeline = common.make_pipeline(args, store, models=models, stored_model=True, server=True)
    common.announce(args)
    return serve_pipeline(args, pipeline)


def serve_pipeline(args: argparse.Namespace, pipeline: Any) -> int:
    """``serve``: the HTTP API over the pipeline's models and collection, with the operator's limits."""
    from ..serving import create_app, serve

    try:
        config = ServerConfig.from_cli_args(args)
    except ValueError as exc:  # a flag's value
        raise UsageError(str(exc)) from None
    models = common.serve_models(args.models)
    if "embed" in models and pipeline.store.exists():
        # opened now: a store another process holds (a running `index`) is said at start (exit 4), not answered
        # with a 503 on every request behind a /health that says ok
        pipeline.store.open(create=False)
    watcher = None
    if args.watch:
        if "embed" not in models:
            raise UsageError("--watch indexes into the served collection, which needs 'embed' in --models")
        from ..ingest.watch import FolderWatcher
        from .index import ingest_options

        options, metadata = ingest_options(args)
        watcher = FolderWatcher(
            pipeline.indexer(),
            args.watch,
            options=options,
            metadata=metadata,
            debounce_ms=args.debounce_ms,
            settle_s=args.settle,
            on_report=lambda report: (
                print(report.summary(), file=sys.stderr, flush=True) if not (args.quiet or args.json) else None
            ),
        )
        watcher.open()  # a collection watched already is said at start (exit 4), before the port is taken
    if "embed" not in models:  # a rerank-only server: no collection to search
        if "generate" in models:
            raise UsageError("--models: 'generate' answers from a search of the collection, which needs 'embed'")
        app = create_app(reranker=pipeline.reranker, config=config)
    else:
        if "generate" in models:
            pipeline.generator  # loaded now: the memory is known at start, and a bad model fails here  # noqa: B018
        app = create_app(pipeline=pipeline, config=config, watcher=watcher)
    try:
        serve(app, host=args.host, port=args.port)
    finally:
        if watcher is not None:
            watcher.close()
    return 0
