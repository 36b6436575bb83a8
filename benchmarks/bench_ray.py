"""Distributed ingestion (Ray Data) against the single-process path, side by side in one run: items/s of a cold
``index`` of the same folder (model load included: each Ray actor loads its own copy), into a fresh embedded store.

On a CPU machine: the single process (torch on every core) vs Ray with 1 and 2 CPU actors (fractional CPUs; Ray
gives each actor one torch thread). With a GPU (``--device cuda``): the single process on the GPU vs Ray with one
GPU actor, and two actors sharing it (``--gpus-per-actor 0.5``). ``--parity`` first checks that the Ray path's
vectors equal the single-process CPU float32 ones on the tiny checkpoint (on the chosen device).

    python benchmarks/bench_ray.py                      # this machine: 2 CPUs
    python benchmarks/bench_ray.py --device cuda --dtype bfloat16 --hidden 1024 --layers 16 --files 240 --parity
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEDIA, TINY, WORDS, checkpoint  # noqa: E402
from PIL import Image  # noqa: E402

from retrieval_pipeline.ingest import Indexer  # noqa: E402
from retrieval_pipeline.ingest.distributed import EmbedderSpec, RayIndexer, RayOptions  # noqa: E402
from retrieval_pipeline.models.embedder import Qwen3VLEmbedder  # noqa: E402
from retrieval_pipeline.store import EdgeStore  # noqa: E402


def write_corpus(folder: Path, files: int, seed: int = 0) -> Path:
    """``files`` files: two thirds text (1-3 chunks each), one third distinct images of several sizes."""
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(MEDIA.glob("*.jpg")) + sorted(MEDIA.glob("*.png"))]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        if i % 3 == 2:
            img = rng.choice(sources)
            side = rng.choice([160, 256, 384, 512])
            img = img.resize((side, int(side * rng.uniform(0.6, 1.4)))).rotate(rng.randint(0, 359))
            img.save(folder / f"image-{i:05d}.png")
        else:
            words = rng.randint(100, 500)
            (folder / f"note-{i:05d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(words)))
    return folder


def single(model: str, corpus: Path, db: Path, device: str, dtype: str, media: dict) -> tuple[float, object, object]:
    t0 = time.perf_counter()
    embedder = Qwen3VLEmbedder(model, device=device, torch_dtype=dtype, **media)
    store = EdgeStore(db, "bench")
    report = Indexer(embedder, store).index_paths([corpus], show_progress_bar=False)
    seconds = time.perf_counter() - t0
    return seconds, report, store


def distributed(
    model: str, corpus: Path, db: Path, device: str, dtype: str, media: dict, options: RayOptions
) -> tuple[float, object, object]:
    t0 = time.perf_counter()
    embedder = EmbedderSpec(model, device_type=device, torch_dtype=dtype, **media)
    store = EdgeStore(db, "bench")
    report = RayIndexer(embedder, store, ray_options=options).index_paths([corpus], show_progress_bar=False)
    seconds = time.perf_counter() - t0
    return seconds, report, store


def parity(corpus: Path, work: Path, device: str, options: RayOptions) -> dict[str, float]:
    """The Ray path's vectors (tiny checkpoint, float32, actors on ``device``) against the single process's on the
    same device, and against the CPU float32 reference numbers; ids, payloads and reports must be equal."""
    media = {"max_pixels": 65536, "total_pixels": 1048576}
    _, ray_report, ray_store = distributed(str(TINY), corpus, work / "parity-ray", device, "float32", media, options)
    theirs = {p.id: p for p in ray_store.scroll(with_vectors=True)}
    ray_store.close()
    diffs = {}
    for where in dict.fromkeys([device, "cpu"]):
        _, report, store = single(str(TINY), corpus, work / f"parity-{where}", where, "float32", media)
        ours = {p.id: p for p in store.scroll(with_vectors=True)}
        store.close()
        assert set(ours) == set(theirs) and all(ours[i].payload == theirs[i].payload for i in ours), "ids or payloads"
        assert (report.indexed, report.present, len(report.failed)) == (
            ray_report.indexed,
            ray_report.present,
            len(ray_report.failed),
        )
        diffs[where] = max(float(np.abs(np.asarray(ours[i].vector) - np.asarray(theirs[i].vector)).max()) for i in ours)
    return diffs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=90)
    p.add_argument("--hidden", type=int, default=256, help="random checkpoint width (0: the tiny checkpoint)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--image-tokens", type=int, default=256)
    p.add_argument("--actors", default="1,2", help="Ray pool sizes to run")
    p.add_argument("--gpus-per-actor", default=None, help="per pool size, e.g. 1,0.5 (default: 1 each on cuda)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per actor call")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--parity", action="store_true")
    p.add_argument("--cache", default=None, help="folder for the random checkpoint (kept between runs)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    cache = Path(args.cache) if args.cache else work
    model = str(
        TINY if not args.hidden else checkpoint(cache / f"ckpt-{args.hidden}x{args.layers}", args.hidden, args.layers)
    )
    corpus = write_corpus(work / "corpus", args.files)
    media = {"max_pixels": args.image_tokens * 32 * 32}
    gpu = args.device.startswith("cuda")
    sizes = [int(a) for a in args.actors.split(",")]
    gpus = (
        [float(g) for g in args.gpus_per_actor.split(",")]
        if args.gpus_per_actor
        else [1.0 if gpu else 0.0] * len(sizes)
    )
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    results: dict[str, object] = {"files": args.files, "model": f"{args.hidden}x{args.layers}", "device": args.device}
    try:
        if args.parity:
            diffs = parity(corpus, work, args.device, RayOptions(actors=1, gpus_per_actor=1.0 if gpu else 0.0))
            results["parity_max_abs_diff"] = diffs
            for where, diff in diffs.items():
                print(f"parity (tiny, float32): Ray on {args.device} vs one process on {where}: max |diff| {diff:.2e}")
        runs: list[tuple[str, float, int]] = []
        seconds, report, store = single(model, corpus, work / "single", args.device, args.dtype, media)
        store.close()
        items = report.indexed
        runs.append(("single process", seconds, items))
        for n, g in zip(sizes, gpus):
            options = RayOptions(actors=n, gpus_per_actor=g, batch_size=args.batch_size)
            seconds, report, store = distributed(
                model, corpus, work / f"ray-{n}-{g}", args.device, args.dtype, media, options
            )
            store.close()
            assert report.indexed == items, (report.summary(), items)
            kind = f"{g:g} GPU" if g else f"{options.actor_cpus:g} CPU"  # CPU actors always reserve CPUs
            runs.append((f"Ray, {n} actor{'s' if n > 1 else ''} ({kind} each)", seconds, report.indexed))
        base = runs[0][2] / runs[0][1]
        print(
            f"\n{args.files} files, {items} items, checkpoint {results['model']}, {args.device} {args.dtype} "
            f"(cold: model load included)"
        )
        for name, seconds, n in runs:
            print(f"  {name:<34} {seconds:7.1f} s  {n / seconds:7.2f} items/s  {(n / seconds) / base:5.2f}x")
        results["runs"] = [
            {"name": name, "seconds": round(s, 2), "items_per_s": round(n / s, 3)} for name, s, n in runs
        ]
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
