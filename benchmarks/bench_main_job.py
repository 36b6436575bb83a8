"""The README's main job at the released size on this machine: peak memory and time per stage.

    python benchmarks/bench_main_job.py [--size 2B] [--cache /tmp/qwen3vl-realsize] [--runs default,float32,int8]

Runs ``qwen3vl-rag run examples/corpus "What does the revenue chart show?"`` as a user does (a subprocess, default
settings) with a random-weight checkpoint of the released architecture in all three roles (embedder, reranker,
generator), samples the summed resident memory of the process tree every 50 ms, and prints each stage's time and
peak. ``--runs`` picks the runs, side by side: ``default`` (``--dtype auto``), ``float32`` (as on a CPU without
native bfloat16, ``QWEN3VL_RAG_CPU_BF16=0``: ``auto`` picks float32, the case of most laptops) and ``int8``
(``QWEN3VL_RAG_DTYPE=int8``); ``--also-float32`` is ``--runs default,float32``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TINY  # noqa: E402

QUESTION = "What does the revenue chart show?"
# run name -> (title, environment)
RUNS = {
    "default": ("default (--dtype auto)", {}),
    "float32": ("a CPU without native bfloat16 (auto -> float32)", {"QWEN3VL_RAG_CPU_BF16": "0"}),
    "int8": ("--dtype int8", {"QWEN3VL_RAG_DTYPE": "int8"}),
}
GIB = 1024**3


def tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid, pages = int(fields[1]), int(fields[21])
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def run_job(model: Path, env_extra: dict[str, str]) -> tuple[dict, list[tuple[float, int]], float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "QWEN3VL_RAG_EMBEDDING_MODEL": str(model),
            "QWEN3VL_RAG_RERANKER_MODEL": str(model),
            "QWEN3VL_RAG_GENERATOR_MODEL": str(model),
            "QWEN3VL_RAG_DB": str(Path(tmp) / "db"),
            **env_extra,
        }
        cmd = [sys.executable, "-m", "retrieval_pipeline.cli", "run", str(ROOT / "examples" / "corpus"), QUESTION]
        samples: list[tuple[float, int]] = []
        t0 = time.time()
        proc = subprocess.Popen([*cmd, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append((time.time(), tree_rss(proc.pid)))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, err = proc.communicate()
        wall = time.time() - t0
        done.set()
        sampler.join()
        if proc.returncode != 0:
            raise SystemExit(f"the main job failed ({proc.returncode}):\n{err[-4000:]}")
        return json.loads(out), samples, wall


def report(label: str, data: dict, samples: list[tuple[float, int]], wall: float) -> float:
    peak = max(rss for _, rss in samples)
    print(f"\n{label}: wall {wall:.1f} s, peak RSS of the process tree {peak / GIB:.2f} GiB")
    print(f"  {'stage':28} {'seconds':>9} {'peak GiB':>9}")
    for t in data["timings"]:
        inside = [rss for ts, rss in samples if t["start"] <= ts <= t["start"] + t["seconds"]]
        stage_peak = max(inside) / GIB if inside else float("nan")
        print(f"  {t['stage']:28} {t['seconds']:9.1f} {stage_peak:9.2f}")
    index = data["index"]
    print(f"  indexed {index['indexed']} items from {index['files']} files; {len(data['sources'])} sources")
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="2B", choices=["2B", "8B"])
    ap.add_argument("--cache", default="/tmp/qwen3vl-realsize")
    ap.add_argument("--runs", default="default", help="comma-separated from default, float32, int8")
    ap.add_argument("--also-float32", action="store_true")
    args = ap.parse_args()
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if args.also_float32 and "float32" not in runs:
        runs.append("float32")
    unknown = set(runs) - set(RUNS)
    if unknown:
        ap.error(f"--runs: unknown {sorted(unknown)}; choose from {sorted(RUNS)}")
    from retrieval_pipeline.models.runtime import cpu_has_native_bf16
    from retrieval_pipeline.testing import build_random_checkpoint

    model = Path(args.cache) / args.size
    if not (model / "config.json").exists():
        print(f"building the random {args.size} checkpoint in {model} ...", flush=True)
        build_random_checkpoint(model, like=TINY, size=args.size)
    print(f"qwen3vl-rag run examples/corpus {QUESTION!r} with a random Qwen3-VL-{args.size} checkpoint in all three")
    print(f"roles, default settings; {os.cpu_count()} CPUs; native bfloat16: {cpu_has_native_bf16()}")
    peaks = {}
    for run in runs:
        title, env = RUNS[run]
        peaks[run] = report(title, *run_job(model, env))
    print()
    for run, peak in peaks.items():
        print(f"main job peak, {run}: {peak / GIB:.2f} GiB" + (" (target <= 12 GiB)" if run == "default" else ""))
    if "float32" in peaks and "int8" in peaks:
        print(f"int8 / float32 peak: {peaks['int8'] / peaks['float32']:.2f}x (target < 0.5x)")


if __name__ == "__main__":
    main()
