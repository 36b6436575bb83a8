"""``ask QUESTION``: retrieval and a Qwen3-VL answer with its sources."""

from __future__ import annotations

import argparse
from typing import Any

from . import common

NAME = "ask"
HELP = "retrieval + generated answer"


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, parents=[parent], help=HELP)
    p.add_argument("question")
    common.query_options(p, 3)
    p.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")
    return p


def run(args: argparse.Namespace, store: Any) -> int:
    pipeline = common.make_pipeline(args, store, stored_model=True)
    common.announce(args)
    common.require_points(pipeline)
    answer = pipeline.ask(
        args.question,
        image=args.image,
        top_k=args.top_k,
        filters=args.filters,
        rerank=not args.no_rerank,
        min_score=args.min_score,
    )
    common.output(args, answer.to_dict(), f"{answer.text}\n\nSources:\n{common.hits_text(answer.sources)}")
    return 0
