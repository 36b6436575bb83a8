"""``serve``: the HTTP API over the pipeline's models and collection, with the operator's limits."""

from __future__ import annotations

import argparse
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
