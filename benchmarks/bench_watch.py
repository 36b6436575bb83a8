"""A watched folder (``index --watch`` / ``serve --watch``): how soon a change is searchable, and what a restart
costs, side by side in one run.

1. **Change -> searchable**: files created, modified, renamed and deleted one at a time under a watcher on a
   thread; each latency runs from the file-system call until a search of the collection shows the change (p50 and
   max of ``--changes`` of each kind), with the default settle time (1 s) or ``--settle``.
2. **Restart**: ``--files`` texts and ``--pdfs`` PDFs of ``--pages`` pages indexed, ``--changed`` of the texts
   changed while nothing watched, then the same
   folder brought up to date two ways: a watcher's reconcile (reads only the changed files) and
   ``index --prune`` (reads every file again; embeds only the changed ones too). Printed: seconds of each, their
   ratio, and the items each embedded (equal: nothing is embedded again that did not change).
3. **A burst**: ``--burst`` files written at once into the watched folder; seconds until all are searchable, the
   number of syncs, and the watcher process's peak RSS growth.

    python benchmarks/bench_watch.py [--files 400] [--pdfs 20] [--pages 5] [--changed 10] [--changes 5]
        [--burst 1000] [--settle 1.0] [--embedding-model PATH] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TINY, WORDS, rss_bytes  # noqa: E402

from retrieval_pipeline import Qwen3VLEmbedder  # noqa: E402
from retrieval_pipeline.ingest import Indexer  # noqa: E402
from retrieval_pipeline.records import sources_of  # noqa: E402
from retrieval_pipeline.store import EdgeStore  # noqa: E402


def text(i: int, salt: str = "") -> str:
    words = [WORDS[(i * 7 + k * 13) % len(WORDS)] for k in range(40)]
    return f"Note {i}{salt}: " + " ".join(words)


def sources(store: EdgeStore) -> set[str]:
    return {s for p in store.scroll(with_vectors=False) for s in sources_of(p.payload)}


def until(condition, timeout: float = 300.0, start: float | None = None) -> float:
    """Seconds from ``start`` (now) until ``condition()`` holds."""
    start = time.perf_counter() if start is None else start
    while not condition():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the change did not show")
        time.sleep(0.02)
    return time.perf_counter() - start


def cycle(store: EdgeStore, folder: Path, i: int) -> dict[str, float]:
    """One file created, modified, renamed and deleted: the seconds until each shows in the collection."""
    path, moved = folder / f"f{i}.txt", folder / f"g{i}.txt"

    def changed() -> bool:
        return any(
            str(path) in sources_of(p.payload) and "changed" in p.payload.get("text", "")
            for p in store.scroll(with_vectors=False)
        )

    out = {}
    start = time.perf_counter()
    path.write_text(text(i))
    out["create"] = until(lambda: str(path) in sources(store), start=start)
    start = time.perf_counter()
    path.write_text(text(i, " changed"))
    out["modify"] = until(changed, start=start)
    start = time.perf_counter()
    path.rename(moved)
    out["rename"] = until(lambda: str(moved) in sources(store) and str(path) not in sources(store), start=start)
    start = time.perf_counter()
    moved.unlink()
    out["delete"] = until(lambda: str(moved) not in sources(store), start=start)
    return out


def latencies(embedder, root: Path, args) -> None:
    folder = root / "live"
    folder.mkdir()
    store = EdgeStore(root / "db-live", "live")
    indexer = Indexer(embedder, store)
    watcher = indexer.watch([folder], settle_s=args.settle)
    watcher.start()
    until(lambda: watcher.last_sync is not None)
    found: dict[str, list[float]] = {"create": [], "modify": [], "rename": [], "delete": []}
    for i in range(args.changes):
        for kind, seconds in cycle(store, folder, i).items():
            found[kind].append(seconds)
    watcher.close()
    store.close()
    print(f"change -> searchable (settle {args.settle:g} s, {args.changes} of each):")
    for kind, seconds in found.items():
        print(f"  {kind:<7} p50 {statistics.median(seconds):5.2f} s   max {max(seconds):5.2f} s")


def restart(embedder, root: Path, args) -> None:
    folder = root / "corpus"
    folder.mkdir()
    from retrieval_pipeline.testing import make_text_pdf

    for i in range(args.files):
        (folder / f"n{i:05d}.txt").write_text(text(i))
    for i in range(args.pdfs):  # documents: a run that reads them renders every page again
        make_text_pdf(folder / f"d{i:03d}.pdf", [text(i * 10 + k, " page") for k in range(args.pages)])
    store = EdgeStore(root / "db-restart", "restart")
    indexer = Indexer(embedder, store)
    with indexer.watch([folder]) as watcher:
        next(iter(watcher))
    store.close()  # flushed: the copy is the same state for the plain index run
    shutil.copytree(root / "db-restart", root / "db-restart-copy")
    store = EdgeStore(root / "db-restart", "restart")
    indexer = Indexer(embedder, store)
    for i in range(args.changed):
        (folder / f"n{i:05d}.txt").write_text(text(i, " edited while nothing watched"))
    start = time.perf_counter()
    with indexer.watch([folder]) as watcher:
        reconcile = next(iter(watcher))
    watch_s = time.perf_counter() - start
    store.close()
    other = EdgeStore(root / "db-restart-copy", "restart")
    start = time.perf_counter()
    plain = Indexer(embedder, other).index_paths([folder], prune=True, show_progress_bar=False)
    index_s = time.perf_counter() - start
    other.close()
    print(
        f"restart after {args.changed} of {args.files} texts and {args.pdfs} PDFs of {args.pages} pages changed "
        "while stopped:"
    )
    read = len(reconcile.updated) + len(reconcile.added)
    print(f"  watch reconcile  {watch_s:6.2f} s  ({reconcile.indexed} items embedded, {read} files read)")
    print(f"  index --prune    {index_s:6.2f} s  ({plain.indexed} items embedded, {plain.files} files read)")
    print(f"  reconcile is {index_s / watch_s:.1f}x faster")


def burst(embedder, root: Path, args) -> None:
    folder = root / "burst"
    folder.mkdir()
    store = EdgeStore(root / "db-burst", "burst")
    syncs: list = []
    watcher = Indexer(embedder, store).watch([folder], settle_s=args.settle, on_report=syncs.append)
    watcher.start()
    until(lambda: watcher.last_sync is not None)
    before = rss_bytes()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    for i in range(args.burst):
        (folder / f"b{i:05d}.txt").write_text(text(i, " burst"))
    after_last = until(lambda: sum(len(r.added) for r in syncs) >= args.burst)
    total = time.perf_counter() - start
    stop.set()
    sampler.join()
    watcher.close()
    store.close()
    print(
        f"burst of {args.burst} files: all searchable {total:.1f} s after the first write, "
        f"{after_last:.1f} s after the last"
    )
    print(f"  {len(syncs)} syncs; RSS grew {(peak[0] - before) / 2**20:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--pdfs", type=int, default=20)
    parser.add_argument("--pages", type=int, default=5)
    parser.add_argument("--changed", type=int, default=10)
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--embedding-model", default=str(TINY))
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    embedder = Qwen3VLEmbedder(args.embedding_model, torch_dtype=args.dtype, device="cpu")
    root = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    try:
        print(f"model {Path(args.embedding_model).name}, {os.cpu_count()} cores")
        latencies(embedder, root, args)
        restart(embedder, root, args)
        burst(embedder, root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
