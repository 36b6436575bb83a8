"""The rules of a run, in one place and pure (it reads nothing and writes nothing): which files a point lists and
each file's fields for it, and which points a file indexed again no longer holds.

Both executors -- one process (:class:`~.indexer.LocalExecutor`) and Ray (:class:`~.distributed.RayExecutor`) --
tell the ledger what happened (a file's items, a file that failed) and apply what it answers, so the two paths
store the same points with the same payloads by construction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Fields = Mapping[str, Any]
# (sources in file order, per-file fields): what a point lists
Listing = tuple[list[str], dict[str, dict[str, Any]]]


@dataclass
class FileRun:
    """One file in a run: the points its items have, whether any part of it failed."""

    source: str
    ids: set[str] = field(default_factory=set)
    failed: bool = False


def listing(
    held: Listing | None, items: Iterable[tuple[str, Fields]], claimed: set[tuple[str, str]], pid: str
) -> Listing:
    """What point ``pid`` lists once ``items`` -- (source, that item's per-file fields), in file order -- hold it.

    ``held``: what it lists now (None: it is new). A file's fields for a point are those of its *first* item with
    that content in the run (a chunk repeated in one file keeps its first place, run after run); ``claimed`` records
    the (source, point) pairs already seen in the run and is updated."""
    sources = list(held[0]) if held else []
    files = {s: dict(f) for s, f in held[1].items()} if held else {}
    for source, fields in items:
        if not source:  # an item given directly comes from no file
            continue
        first = (source, pid) not in claimed
        claimed.add((source, pid))
        if source not in sources:
            sources.append(source)
            files[source] = dict(fields)
        elif first:
            files[source] = dict(fields)
    return sources, files


class Ledger:
    """A run's account of files and points."""

    def __init__(self) -> None:
        self.files: dict[int, FileRun] = {}  # the file's place in the run -> its account
        self._claimed: set[tuple[str, str]] = set()

    def file(self, index: int, source: str) -> FileRun:
        return self.files.setdefault(index, FileRun(source))

    def holds(self, index: int, pid: str) -> None:
        """An item of file ``index`` has the content of point ``pid``."""
        self.files[index].ids.add(pid)

    def fail(self, index: int) -> None:
        """A part of file ``index`` failed: what it held before stays until it indexes again (or is pruned)."""
        self.files[index].failed = True

    def listing(self, pid: str, held: Listing | None, items: Iterable[tuple[str, Fields]]) -> Listing | None:
        """What ``pid`` lists after these items of the run (see :func:`listing`); None when that is what it holds."""
        new = listing(held, items, self._claimed, pid)
        if held is not None and new == (list(held[0]), dict(held[1])):
            return None
        return new

    def finished_sources(self) -> list[str]:
        """The files of the run that did not fail, whose earlier points are to be checked (:meth:`outdated`)."""
        return [run.source for run in self.files.values() if not run.failed]

    def outdated(self, held: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
        """source -> the points it lists (``held``: looked up after the run) that its items no longer have: its old
        content. Files that failed keep everything."""
        runs = {run.source: run for run in self.files.values() if not run.failed}
        out: dict[str, set[str]] = {}
        for source, points in held.items():
            run = runs.get(source)
            stale = set(points) - run.ids if run is not None else set()
            if stale:
                out[source] = stale
        return out
