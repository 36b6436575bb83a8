"""Shared benchmark helpers: a compute-heavy random checkpoint, a mixed corpus, timing and peak memory."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "parity" / "tiny-qwen3vl"
MEDIA = ROOT / "tests" / "fixtures" / "parity" / "media"
WORDS = (
    "the a report revenue quarter table chart cat dog beach sunset rocket launch coffee cup astronaut space "
    "horse field camera photo page document figure growth market sales image video frame scene person city"
).split()


def checkpoint(folder: Path, hidden_size: int, layers: int) -> Path:
    from retrieval_pipeline.testing import build_random_checkpoint

    if not (folder / "config.json").exists():
        build_random_checkpoint(folder, like=TINY, hidden_size=hidden_size, layers=layers, seed=0)
    return folder


def mixed_corpus(n: int, seed: int = 0) -> list[Any]:
    """Texts of 5-200 words and images of several sizes, shuffled."""
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(MEDIA.glob("*.jpg")) + sorted(MEDIA.glob("*.png"))]
    items: list[Any] = []
    for i in range(n):
        if i % 3 == 2:
            img = rng.choice(sources)
            side = rng.choice([96, 160, 256, 384])
            items.append({"image": img.resize((side, int(side * rng.uniform(0.6, 1.4)))).rotate(rng.randint(0, 359))})
        else:
            items.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 200))))
    return items


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn: Callable[[], Any], *, cuda: bool = False, repeat: int = 2) -> tuple[float, int, Any]:
    """Best of ``repeat`` runs: (seconds, peak memory above the starting point in bytes, result).
    CPU memory: sampled RSS; CUDA: the allocator's peak."""
    runs = [_measure_once(fn, cuda) for _ in range(repeat)]
    return min(r[0] for r in runs), max(r[1] for r in runs), runs[-1][2]


def _measure_once(fn: Callable[[], Any], cuda: bool) -> tuple[float, int, Any]:
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated()
    else:
        start_mem = rss_bytes()
    peak = [start_mem]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    sampler = None if cuda else threading.Thread(target=sample, daemon=True)
    if sampler:
        sampler.start()
    t0 = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    stop.set()
    if sampler:
        sampler.join()
        used = peak[0] - start_mem
    else:
        used = torch.cuda.max_memory_allocated() - start_mem
    return seconds, used, result


def row(name: str, n: int, seconds: float, mem: int, baseline: float | None = None) -> str:
    ratio = f"{(n / seconds) / baseline:6.2f}x" if baseline else "  1.00x"
    return f"  {name:<38} {n / seconds:8.2f} items/s  {ratio}   peak +{mem / 2**20:8.1f} MiB"


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM), in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")
