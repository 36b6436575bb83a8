"""``info``: what the collection holds (points, spec, layout, index), a quick check that it reads back, and -- for a
collection that follows folders -- whether a watcher holds it, its last sync and the changes pending."""

from __future__ import annotations

import argparse
from typing import Any

from . import common

NAME = "info"
HELP = "what the collection holds"


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return sub.add_parser(NAME, parents=[parent], help=HELP)


def run(args: argparse.Namespace, store: Any) -> int:
    store.open(create=False)
    info = {**store.info(), "verified": store.verify()}  # a damaged store is a StoreError (exit 4)
    from ..ingest.watch import read_state

    sync = read_state(store)
    if sync is not None:  # the collection follows folders (index --watch / serve --watch)
        info["watch"] = sync
    common.output(args, info, "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0
