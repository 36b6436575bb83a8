"""Fine-tuning speed and memory: optimizer steps per second and peak memory per configuration.

    python benchmarks/bench_finetune.py                      # the tiny checkpoint: embedder / reranker, dtypes, GC
    python benchmarks/bench_finetune.py --realsize           # also a random-weight Qwen3-VL-2B (true size and speed)
    python benchmarks/bench_finetune.py --realsize --only-realsize --steps 2 --dtypes bfloat16

Each configuration runs in a fresh process (``--one``) on the synthetic judged dataset of
``retrieval_pipeline.testing.write_synthetic_beir`` (short texts), without held-out evaluation, for a fixed number
of optimizer steps after one warm-up step: steps/s, the resident memory once the model is loaded, and the peak
resident memory while training (on a GPU: the peak of allocated GPU memory too). Random weights give true memory
and speed, not quality. The 2B checkpoint is built once under ``--cache`` (as bench_cpu_realsize.py does).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TINY, peak_mib  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def one(kind: str, model: str, dtype: str, checkpointing: bool, batch: int, steps: int, device: str | None) -> dict:
    """One configuration in this process: load, one warm-up step, then ``steps`` timed steps."""
    import torch

    from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker
    from retrieval_pipeline.finetune import FinetuneConfig, finetune_embedder, finetune_reranker, load_training_data
    from retrieval_pipeline.testing import write_synthetic_beir

    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    dataset = write_synthetic_beir(work / "data", categories=8, docs_per_category=2, train_queries_per_category=4)
    cls = Qwen3VLEmbedder if kind == "embedder" else Qwen3VLReranker
    t0 = time.perf_counter()
    loaded = cls(model, torch_dtype=dtype, device=device)
    load_s = time.perf_counter() - t0
    loaded_mib = rss_mib()
    reset_peak()
    cuda = loaded.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(step: int, info: Any) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    config = FinetuneConfig(
        batch_size=batch,
        max_steps=steps + 1,
        eval_every=0,
        checkpoint_every=0,
        gradient_checkpointing=checkpointing,
        negatives=1,
        random_negatives=True,
        lora_r=16,
    )
    data = load_training_data(beir=dataset, split="train", eval_split=0.0)
    train = finetune_embedder if kind == "embedder" else finetune_reranker
    last[0] = time.perf_counter()
    train(loaded, data, work / "out", config, show_progress_bar=False, callback=tick)
    timed = times[1:]  # the first step warms up (allocations, kernels)
    out = {
        "kind": kind,
        "model": Path(model).name,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "device": loaded.device.type,
        "checkpointing": checkpointing,
        "batch": batch,
        "steps": len(timed),
        "steps_per_s": len(timed) / sum(timed),
        "load_s": load_s,
        "loaded_mib": loaded_mib,
        "train_peak_mib": peak_mib(),
    }
    if cuda:
        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--realsize", action="store_true", help="also the random-weight 2B checkpoint")
    ap.add_argument("--only-realsize", action="store_true")
    ap.add_argument("--cache", default="/tmp/qwen3vl-realsize")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 tiny, 2 real size)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--one", nargs=6, metavar=("KIND", "MODEL", "DTYPE", "GC", "BATCH", "STEPS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.one:
        kind, model, dtype, gc, batch, steps = args.one
        print(json.dumps(one(kind, model, dtype, gc == "1", int(batch), int(steps), args.device)))
        return
    dtypes = args.dtypes.split(",")
    configs: list[tuple[str, str, str, bool, int, int]] = []
    if not args.only_realsize:
        steps = args.steps or 20
        for kind in ("embedder", "reranker"):
            for dtype in dtypes:
                for gc in (True, False):
                    configs.append((kind, str(TINY), dtype, gc, 8, steps))
    if args.realsize or args.only_realsize:
        from retrieval_pipeline.testing import build_random_checkpoint

        model = Path(args.cache) / "2B"
        if not (model / "config.json").exists():
            print(f"building the random 2B checkpoint in {model} ...", file=sys.stderr)
            build_random_checkpoint(model, like=TINY, size="2B")
        steps = args.steps or 2
        for kind in ("embedder", "reranker"):
            for dtype in dtypes:
                configs.append((kind, str(model), dtype, True, 2, steps))
    print(
        f"{'kind':<9} {'model':<13} {'dtype':<9} {'dev':<4} {'GC':<3} {'batch':>5} {'steps/s':>9} "
        f"{'loaded MiB':>11} {'train peak MiB':>15} {'GPU peak MiB':>13}"
    )
    for kind, model, dtype, gc, batch, steps in configs:
        cmd = [sys.executable, __file__, "--one", kind, model, dtype, "1" if gc else "0", str(batch), str(steps)]
        if args.device:
            cmd += ["--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{kind:<9} {Path(model).name:<13} {dtype:<9} failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        gpu = f"{r['gpu_peak_mib']:13.0f}" if "gpu_peak_mib" in r else f"{'-':>13}"
        print(
            f"{r['kind']:<9} {r['model']:<13} {r['dtype']:<9} {r['device']:<4} "
            f"{'on' if r['checkpointing'] else 'off':<3} "
            f"{r['batch']:>5} {r['steps_per_s']:9.3f} {r['loaded_mib']:11.0f} {r['train_peak_mib']:15.0f} {gpu}",
            flush=True,
        )


if __name__ == "__main__":
    main()
