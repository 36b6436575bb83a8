"""A million items on one machine: the embedded store's vector layouts, measured side by side.

Vectors come from a fixed generator, so runs compare and no layout can be tuned to it: 400 cluster centres drawn
from a standard normal in 2048-d (``default_rng(7)``), dimension d scaled by ``1/sqrt(1 + d/64)`` (a Matryoshka-
like spectrum: the first dimensions carry most of the variance); an item is a centre (assigned by the same
``default_rng(7)``) plus 0.6 x standard-normal noise with the same scaling (one ``default_rng((7, i))`` per
item), normalised. Queries are drawn the same way (``default_rng((8, j))``). Every tenth item is an ``image``,
the rest ``text``: the filtered query asks for images.

For each layout: recall@10 against exact full-dimension search (computed here in numpy, chunk by chunk, with and
without the filter), the build (upsert, then the HNSW build), query p50 / p95 with and without the filter, resident
memory and disk. Queries and memory run in a separate process that opens only the built store (RSS right after
opening, and after the queries: memory-mapped originals read while rescoring land in its page cache).

    python benchmarks/bench_million.py --size 100000 --layouts float,int8,binary,funnel
    python benchmarks/bench_million.py --size 1000000 --layouts default

``default`` is the layout the project picks for 2048-d vectors (:meth:`VectorLayout.choose`); also
``funnel-float`` (the funnel without quantization). The 256-d prefix alone (exact, in numpy) is reported too: it must
rank clearly worse than the full vector, or the funnel is not being tested.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval_pipeline.layout import VectorLayout  # noqa: E402
from retrieval_pipeline.store import CollectionSpec, EdgeStore, Point  # noqa: E402

DIM = 2048
CENTRES = 400
NOISE = 0.6
PREFIX = 256
CHUNK = 5000
K = 10

LAYOUTS = {
    "float": dict(quantization="none", prefix_dim=0, on_disk=False),
    "int8": dict(quantization="int8", prefix_dim=0, on_disk=True),
    "binary": dict(quantization="binary", prefix_dim=0, on_disk=True),
    "funnel": dict(quantization="int8", prefix_dim=PREFIX, on_disk=True),
    "funnel-float": dict(quantization="none", prefix_dim=PREFIX, on_disk=False),
    "default": {},
}


def scale(dim: int = DIM) -> np.ndarray:
    return (1.0 / np.sqrt(1.0 + np.arange(dim) / 64.0)).astype(np.float32)


class Generator:
    def __init__(self, size: int, queries: int):
        rng = np.random.default_rng(7)
        self.scale = scale()
        self.centres = (rng.standard_normal((CENTRES, DIM)) * self.scale).astype(np.float32)
        self.assign = rng.integers(0, CENTRES, size=size)
        self.query_assign = rng.integers(0, CENTRES, size=queries)
        self.size = size
        self.queries = self._draw(self.query_assign, 8, 0)

    def _draw(self, assign: np.ndarray, seed: int, start: int) -> np.ndarray:
        out = np.empty((len(assign), DIM), dtype=np.float32)
        for k, c in enumerate(assign):
            noise = np.random.default_rng((seed, start + k)).standard_normal(DIM, dtype=np.float32)
            out[k] = self.centres[c] + NOISE * noise * self.scale
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    def chunk(self, start: int, stop: int) -> np.ndarray:
        return self._draw(self.assign[start:stop], 7, start)


def modality(i: int) -> str:
    return "image" if i % 10 == 0 else "text"


def point_uuid(i: int) -> str:
    return f"00000000-0000-0000-0000-{i:012d}"


class TopK:
    """Running top-k (by score) over chunks, per query."""

    def __init__(self, queries: int):
        self.scores = np.full((queries, K), -np.inf, dtype=np.float32)
        self.ids = np.full((queries, K), -1, dtype=np.int64)

    def add(self, scores: np.ndarray, ids: np.ndarray) -> None:
        s = np.concatenate([self.scores, scores], axis=1)
        i = np.concatenate([self.ids, np.broadcast_to(ids, scores.shape)], axis=1)
        top = np.argpartition(-s, K - 1, axis=1)[:, :K]
        self.scores = np.take_along_axis(s, top, 1)
        self.ids = np.take_along_axis(i, top, 1)


def build(layout_name: str, folder: Path, gen: Generator, truth: dict | None, log) -> dict:
    extra = LAYOUTS[layout_name]
    layout = VectorLayout.choose(DIM, hybrid=False, **extra)  # vectors only: no text, so no BM25
    store = EdgeStore(folder, "bench")
    spec = CollectionSpec("bench", DIM, "bench", layout=layout)
    store.open(spec)
    qn = gen.queries
    qp = qn[:, :PREFIX] / np.linalg.norm(qn[:, :PREFIX], axis=1, keepdims=True)
    upsert = 0.0
    t_start = time.perf_counter()
    for start in range(0, gen.size, CHUNK):
        stop = min(gen.size, start + CHUNK)
        vectors = gen.chunk(start, stop)
        ids = np.arange(start, stop)
        if truth is not None:  # exact ground truth, chunk by chunk (full, prefix alone, filtered)
            full = qn @ vectors.T
            truth["full"].add(full, ids)
            pv = vectors[:, :PREFIX] / np.linalg.norm(vectors[:, :PREFIX], axis=1, keepdims=True)
            truth["prefix"].add(qp @ pv.T, ids)
            images = ids % 10 == 0
            truth["filtered"].add(full[:, images], ids[images])
        t0 = time.perf_counter()
        rows = vectors.tolist()
        store.upsert(
            [Point(point_uuid(i), rows[k], {"modality": modality(i)}) for k, i in enumerate(range(start, stop))]
        )
        upsert += time.perf_counter() - t0
        if start // CHUNK % 20 == 0:
            log(f"  {layout_name}: {stop} / {gen.size} upserted ({time.perf_counter() - t_start:.0f} s)")
    t0 = time.perf_counter()
    store.optimize()
    index = time.perf_counter() - t0
    status = store.index_status()
    store.close()
    return {"upsert_s": upsert, "index_s": index, "status": status, "describe": layout.describe(DIM)}


PROBE = r"""
import json, sys, time, numpy as np
sys.path.insert(0, sys.argv[4])
from retrieval_pipeline.store import EdgeStore

def rss():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out

baseline = rss()  # the interpreter and the imports (the package imports torch)
store = EdgeStore(sys.argv[1], "bench")
store.open(create=False)
opened = rss()
queries = np.load(sys.argv[2])
options = json.loads(sys.argv[3])
found, filtered, lat, lat_f = [], [], [], []
for q in queries[:5]:
    store.search(q.tolist(), limit=10, options=options)
for q in queries:
    v = q.tolist()
    t0 = time.perf_counter(); hits = store.search(v, limit=10, options=options); lat.append(time.perf_counter() - t0)
    found.append([int(h.id[-12:]) for h in hits])
    t0 = time.perf_counter(); hits = store.search(v, limit=10, filters={"modality": "image"}, options=options)
    lat_f.append(time.perf_counter() - t0)
    filtered.append([int(h.id[-12:]) for h in hits])
after = rss()
print(json.dumps({"found": found, "filtered": filtered, "lat": lat, "lat_f": lat_f, "opened": opened, "after": after,
                  "baseline": baseline}))
"""


def probe(folder: Path, queries_file: Path, options: dict) -> dict:
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(folder), str(queries_file), json.dumps(options), root],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"the query process failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth)]))


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--layouts", default="float,int8,binary,funnel")
    ap.add_argument("--dir", default=None, help="where the stores are built (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the built stores")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="JSON",
        help="more search options to measure on each layout, e.g. '{\"prefetch\": 200}' (repeatable)",
    )
    ap.add_argument(
        "--reuse", action="store_true", help="with --dir and --keep: probe stores built by an earlier run again"
    )
    args = ap.parse_args()

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    names = [n.strip() for n in args.layouts.split(",") if n.strip()]
    unknown = set(names) - set(LAYOUTS)
    if unknown:
        raise SystemExit(f"unknown layouts {sorted(unknown)}; choose from {sorted(LAYOUTS)}")
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-million-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    gen = Generator(args.size, args.queries)
    log(f"generator ready ({time.perf_counter() - t0:.1f} s); building {names} at {args.size} x {DIM}-d in {root}")
    queries_file = root / "queries.npy"
    np.save(queries_file, gen.queries)
    truth_file = root / "truth.npz"
    truth = None
    if args.reuse and truth_file.exists():
        saved = np.load(truth_file)
        truth = {k: TopK(args.queries) for k in ("full", "prefix", "filtered")}
        for k in truth:
            truth[k].ids = saved[k]
    rows = []
    for name in names:
        folder = root / name
        record = folder / "built.json"
        if args.reuse and record.exists() and truth is not None:
            built = json.loads(record.read_text())
            log(f"  {name}: reusing the store built earlier")
        else:
            shutil.rmtree(folder, ignore_errors=True)
            fresh = None
            if truth is None:
                fresh = truth = {
                    "full": TopK(args.queries),
                    "prefix": TopK(args.queries),
                    "filtered": TopK(args.queries),
                }
            built = build(name, folder, gen, fresh, log)
            if fresh is not None:
                np.savez(truth_file, **{k: v.ids for k, v in truth.items()})
            record.write_text(json.dumps(built))
        log(f"  {name}: upsert {built['upsert_s']:.0f} s, index {built['index_s']:.0f} s; probing")
        runs = [("", {})]
        if LAYOUTS[name].get("quantization", "int8") != "none" or name == "default":
            runs.append((" (no rescore)", {"rescore": False}))
        for extra in args.also:
            options = json.loads(extra)
            runs.append((" (" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")", options))
        for suffix, options in runs:
            measured = probe(folder, queries_file, options)
            lat = np.array(measured["lat"]) * 1000
            lat_f = np.array(measured["lat_f"]) * 1000
            rows.append(
                {
                    "layout": name + suffix,
                    "describe": built["describe"],
                    "recall@10": recall(measured["found"], truth["full"].ids),
                    "recall@10 filtered": recall(measured["filtered"], truth["filtered"].ids),
                    "p50 ms": float(np.percentile(lat, 50)),
                    "p95 ms": float(np.percentile(lat, 95)),
                    "p50 ms filtered": float(np.percentile(lat_f, 50)),
                    "p95 ms filtered": float(np.percentile(lat_f, 95)),
                    "upsert s": built["upsert_s"],
                    "index s": built["index_s"],
                    "rss opened GiB": (measured["opened"]["VmRSS"] - measured["baseline"]["VmRSS"]) / 2**30,
                    "rss after queries GiB": (measured["after"]["VmRSS"] - measured["baseline"]["VmRSS"]) / 2**30,
                    "process rss GiB": measured["after"]["VmRSS"] / 2**30,
                    "peak rss GiB": measured["after"]["VmHWM"] / 2**30,
                    "disk GiB": built["status"]["disk_bytes"] / 2**30,
                    "indexed": built["status"]["vectors"],
                }
            )
            log(json.dumps(rows[-1]))
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    prefix_recall = recall(truth["prefix"].ids.tolist(), truth["full"].ids)
    print(f"\n{args.size:,} x {DIM}-d vectors, {args.queries} queries, top-10; {os.cpu_count()} cores (this machine)")
    print("store RSS: the query process's resident memory above its baseline after the imports (Python + torch)")
    print(
        f"256-d prefix alone (exact): recall@10 {prefix_recall:.3f}"
        + ("  (> 0.9: the funnel is NOT tested)" if prefix_recall > 0.9 else "")
    )
    print(
        "| layout | recall@10 | filtered | p50 / p95 ms | filtered p50 / p95 ms | build (upsert + index) "
        "| store RSS open / after queries | disk |"
    )
    print("|" + "---|" * 8)
    for r in rows:
        print(
            f"| {r['layout']} | {r['recall@10']:.3f} | {r['recall@10 filtered']:.3f} | "
            f"{r['p50 ms']:.1f} / {r['p95 ms']:.1f} | {r['p50 ms filtered']:.1f} / {r['p95 ms filtered']:.1f} | "
            f"{(r['upsert s'] + r['index s']) / 60:.1f} min ({r['upsert s']:.0f} + {r['index s']:.0f} s) | "
            f"{r['rss opened GiB']:.2f} / {r['rss after queries GiB']:.2f} GiB | {r['disk GiB']:.2f} GiB |"
        )
    print("\nlayouts: " + "; ".join(f"{r['layout']}: {r['describe']}" for r in rows if "(" not in r["layout"]))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"size": args.size, "prefix_recall": prefix_recall, "rows": rows}, indent=1)
        )
    if not args.keep and not args.dir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
