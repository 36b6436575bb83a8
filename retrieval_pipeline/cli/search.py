"""``search QUERY``: two-stage retrieval (``--image`` for an image in the query, ``--no-rerank`` for stage one)."""

from __future__ import annotations

import argparse
from typing import Any

from . import common

NAME = "search"
HELP = "two-stage retrieval"


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, parents=[parent], help=HELP)
    p.add_argument("query")
    common.query_options(p, 5)
    return p


def run(args: argparse.Namespace, store: Any) -> int:
    pipeline = common.make_pipeline(args, store, stored_model=True)
    common.announce(args)
    common.require_points(pipeline)
    query = common.query_input(args, args.query)
    hits = pipeline.search(
        query, top_k=args.top_k, filters=args.filters, rerank=not args.no_rerank, min_score=args.min_score
    )
    common.output(args, [h.to_dict() for h in hits], common.hits_text(hits))
    return 0
