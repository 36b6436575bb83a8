"""``optimize``: build the collection's vector index now (the embedded engine builds it only when asked)."""

from __future__ import annotations

import argparse
from typing import Any

from . import common

NAME = "optimize"
HELP = "build the collection's vector index now"


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return sub.add_parser(NAME, parents=[parent], help=HELP)


def run(args: argparse.Namespace, store: Any) -> int:
    store.open(create=False)
    if hasattr(store, "optimize"):
        store.optimize()
    status = store.index_status()
    common.output(args, status, "\n".join(f"{k}: {v}" for k, v in status.items()))
    return 0
