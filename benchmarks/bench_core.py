"""Embedder and reranker throughput and peak memory, measured side by side in one run.

Embedding a mixed corpus (texts of 5-200 words, images of several sizes):
  (a) one input at a time, (b) one padded batch of everything (what the reference scripts do),
  (c) the batched path (length-sorted, token budget), also on a corpus twice as large (memory stays flat).
Reranking one query against mixed documents:
  (a) one pair at a time (the reference), (b) batched whole pairs, (c) batched with the shared prefix cached.

A random Qwen3-VL checkpoint scaled up so that compute dominates (default hidden 512, 16 layers) is built once
under ~/.cache/qwen3vl-rag-bench. Usage:

    python benchmarks/bench_core.py                      # CPU, float32
    python benchmarks/bench_core.py --device cuda --dtype bfloat16 --hidden 2048 --layers 28
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import checkpoint, measure, mixed_corpus, row  # noqa: E402

from retrieval_pipeline import Qwen3VLEmbedder, Qwen3VLReranker  # noqa: E402
from retrieval_pipeline.media import load_input, parse_input  # noqa: E402
from retrieval_pipeline.models.encoding import content_items, rerank_conversation  # noqa: E402

QUERY = "Which figure shows the quarterly revenue growth of the company in the sales market?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=48, help="corpus size for embedding")
    parser.add_argument("--docs", type=int, default=32, help="documents per rerank query")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-pixels", type=int, default=256 * 32 * 32)
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/qwen3vl-rag-bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    ckpt = checkpoint(Path(args.cache) / f"h{args.hidden}-l{args.layers}", args.hidden, args.layers)
    common = dict(device=args.device, torch_dtype=args.dtype, max_pixels=args.max_pixels, batch_size=args.batch_size)
    embedder = Qwen3VLEmbedder(str(ckpt), **common)
    cuda = embedder.device.type == "cuda"
    print(
        f"device {embedder.device} ({torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'}),"
        f" dtype {embedder.dtype}, checkpoint hidden {args.hidden} x {args.layers} layers"
    )

    budget, padding = embedder.max_batch_tokens, embedder.max_padding
    corpus = mixed_corpus(args.items)
    embedder.embed(corpus[:4])  # warm-up
    n = len(corpus)
    print(f"\nEmbedding {n} mixed items (texts 5-200 words, images 96-384 px):")
    t_one, m_one, one = measure(lambda: np.concatenate([embedder.embed([x]) for x in corpus]), cuda=cuda)
    # no budget, no padding cap: everything in one padded forward pass
    embedder.max_batch_tokens, embedder.max_padding = 10**9, 1.0
    t_pad, m_pad, pad = measure(lambda: embedder.embed(corpus, batch_size=n), cuda=cuda)
    embedder.max_batch_tokens, embedder.max_padding = budget, padding
    t_bat, m_bat, bat = measure(lambda: embedder.embed(corpus), cuda=cuda)
    base = n / t_one
    print(row("(a) one at a time", n, t_one, m_one))
    print(row("(b) one padded batch (reference)", n, t_pad, m_pad, base))
    print(row(f"(c) batched (batch_size={args.batch_size})", n, t_bat, m_bat, base))
    corpus2 = mixed_corpus(2 * n, seed=1)
    t_bat2, m_bat2, _ = measure(lambda: embedder.embed(corpus2, show_progress_bar=False), cuda=cuda)
    print(row(f"(c) batched, {2 * n} items", 2 * n, t_bat2, m_bat2, base))
    print(
        f"  batched vs one-at-a-time {t_one / t_bat:.2f}x, vs one padded batch {t_pad / t_bat:.2f}x; "
        f"max |diff| batched-vs-single {np.abs(bat - one).max():.1e}, padded-vs-single {np.abs(pad - one).max():.1e}"
    )
    embedder.model = None  # free the weights before loading the reranker
    if cuda:
        torch.cuda.empty_cache()

    reranker = Qwen3VLReranker(str(ckpt), **common)
    docs = mixed_corpus(args.docs, seed=2)
    reranker.score(QUERY, docs[:3])  # warm-up
    m = len(docs)
    print(f"\nReranking 1 query x {m} mixed documents:")
    t_pair, m_pair, s_pair = measure(lambda: [reranker.score(QUERY, [d])[0] for d in docs], cuda=cuda)
    reranker.share_prefix = False
    t_whole, m_whole, s_whole = measure(lambda: reranker.score(QUERY, docs), cuda=cuda)
    reranker.share_prefix = True
    t_pref, m_pref, s_pref = measure(lambda: reranker.score(QUERY, docs), cuda=cuda)
    base = m / t_pair
    print(row("(a) one pair at a time (reference)", m, t_pair, m_pair))
    print(row("(b) batched whole pairs", m, t_whole, m_whole, base))
    print(row("(c) batched, shared prefix cached", m, t_pref, m_pref, base))
    query_content = content_items(load_input(parse_input(QUERY)), reranker.media)
    pairs = [
        reranker._encode_pair(
            rerank_conversation(
                query_content, content_items(load_input(parse_input(d)), reranker.media), reranker.default_instruction
            )
        )
        for d in docs
    ]
    lengths = [len(p) for p in pairs]
    prefix = reranker._shared_prefix(pairs, 0)
    print(
        f"  shared-prefix vs per-pair {t_pair / t_pref:.2f}x; pair length mean {np.mean(lengths):.0f} tokens, "
        f"shared prefix {prefix} tokens; max |diff| {np.abs(np.array(s_pref) - s_pair).max():.1e} "
        f"(whole-batched {np.abs(np.array(s_whole) - s_pair).max():.1e})"
    )


if __name__ == "__main__":
    main()
