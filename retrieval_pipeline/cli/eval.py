"""``eval``: retrieval quality on judged queries, at several dimensions and rerank depths."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..serving.config import at_least
from . import common

NAME = "eval"
HELP = "retrieval quality on judged queries (nDCG, recall, MRR, MAP)"


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, parents=[parent], help=HELP)
    common.dataset_options(p)
    p.add_argument("--queries", default=None, help="queries.jsonl (BEIR) or a TSV id<TAB>text")
    p.add_argument("--qrels", default=None, help="judgements: query-id corpus-id score per line (TSV, TREC) or JSON")
    p.add_argument("--k", type=at_least(1), default=10, help="cut-off of nDCG@k, R@k, RR@k (default 10)")
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
    common.search_knobs(p)
    return p


def run(args: argparse.Namespace, store: Any) -> int:
    from ..evaluate import evaluate

    pipeline = common.make_pipeline(args, store, stored_model=True)
    common.announce(args)
    common.require_points(pipeline)
    dataset = common.dataset(args, judged=True)
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
        dims=common.ints(args.dims, "--dims"),
        rerank_depths=common.ints(args.rerank_depths, "--rerank-depths"),
        search_options=common.search_options(args),
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
    common.output(args, report.to_dict(), report.table())
    return 0
