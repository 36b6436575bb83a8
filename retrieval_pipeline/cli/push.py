"""``push --to-url URL``: every point, with its layout, into a Qdrant server's collection."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import UsageError
from . import common

NAME = "push"
HELP = "copy the collection to a Qdrant server"


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, parents=[parent], help=HELP)
    p.add_argument("--to-url", required=True)
    p.add_argument("--to-api-key", default=None)
    p.add_argument("--to-collection", default=None)
    common.layout_options(p)  # default: the layout of the collection pushed
    # the target's (dest names of their own: the source store is opened without them)
    p.add_argument("--shards", dest="to_shards", type=int, default=None)
    p.add_argument("--replicas", dest="to_replicas", type=int, default=None)
    return p


def run(args: argparse.Namespace, store: Any) -> int:
    """``push``: every point, with its layout, into a Qdrant server's collection."""
    from dataclasses import replace

    from ..store import ServerStore

    if not str(args.to_url).startswith(("http://", "https://")):
        raise UsageError(
            f"--to-url takes a Qdrant server's URL (http://host:6333 or https://...), got {args.to_url!r}; "
            "to copy into a folder, index there with --db"
        )
    target = ServerStore(
        args.to_url,
        args.to_collection or args.collection,
        api_key=args.to_api_key,
        shard_number=args.to_shards,
        replication_factor=args.to_replicas,
    )
    spec = store.open(create=False)
    layout = replace(spec.vectors, **common.layout(args)) if common.layout(args) else None
    if layout is not None:
        layout.check(spec.dim)
    n = store.push_to(target, layout=layout)
    common.output(args, {"pushed": n, "to": target.location}, f"pushed {n} points to {target.location}")
    return 0
