"""``run PATH... QUESTION``: the main job -- index the paths, then answer the question from them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import UsageError
from . import common
from .index import index_paths

NAME = "run"
HELP = "index PATH... then answer QUESTION (the main job)"


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, parents=[parent], help=HELP)
    p.add_argument("args", nargs="+", metavar="PATH... QUESTION")
    common.index_options(p)
    common.query_options(p, 3)
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")
    return p


def run(args: argparse.Namespace, store: Any) -> int:
    if len(args.args) < 2:
        raise UsageError("run needs at least one PATH and a QUESTION")
    *paths, question = args.args
    pipeline = common.make_pipeline(args, store, new_layout=True)
    common.announce(args)
    report = index_paths(args, pipeline, paths)
    if not args.json:
        print(report.summary(), file=sys.stderr)
    answer = pipeline.ask(
        question,
        image=args.image,
        top_k=args.top_k,
        filters=args.filters,
        rerank=not args.no_rerank,
        min_score=args.min_score,
    )
    data = {"index": report.to_dict(), **answer.to_dict(), "timings": common.timings(pipeline)}
    common.output(args, data, f"{answer.text}\n\nSources:\n{common.hits_text(answer.sources)}")
    return 0
