"""The reranker's shared-prefix key/value cache: the tokens every pair of a call starts with run once.

Every (query, document) pair of one rerank call starts with the same tokens (system prompt, instruction, query).
:func:`shared_prefix_length` finds that prefix, :func:`run_prefix` runs it once and returns its keys/values, and
:func:`forward_suffixes` runs batches of the pairs' own tokens after it. Attention is causal, so the prefix's states
do not depend on what follows: the results equal running each pair whole. The prefix never ends inside an image
or video, and never takes in a document's (same-size images have identical placeholder tokens, not pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .batching import batch_to_device, collate, last_token_states, rope_positions, token_types
from .encoding import Encoded

# Keys and values of every layer of the prefix, each (1, kv heads, prefix length, head dim).
PrefixCache = list[tuple[torch.Tensor, torch.Tensor]]


def shared_prefix_length(items: Sequence[Encoded], query_vision: int, vision_start_id: int, vision_end_id: int) -> int:
    """Length of the token prefix every pair shares, ending before any document image/video and never inside a
    query image/video (vision tokens stand for pixels, which only the query's are known to share)."""
    first = items[0].input_ids
    n = min(len(e) for e in items) - 1  # every pair keeps at least one token of its own
    for enc in items[1:]:
        same = (enc.input_ids[:n] == first[:n]).int()
        n = int(same.cumprod(0).sum())
        if n == 0:
            return 0
    starts = (first[:n] == vision_start_id).nonzero().flatten().tolist()
    ends = (first[:n] == vision_end_id).nonzero().flatten().tolist()
    if len(starts) > query_vision:
        n = starts[query_vision]  # stop before the first document vision block
        starts = starts[:query_vision]
    if len(starts) > len([e for e in ends if e < n]):
        n = starts[-1]  # the prefix would end inside a vision block: stop before it
    return n


def vision_split(enc: Encoded, prefix: int, processor: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split an encoded pair's vision tensors into those of the first ``prefix`` tokens and the rest."""
    merge = processor.image_processor.merge_size**2
    head: dict[str, Any] = {}
    tail: dict[str, Any] = {}
    for pixels_key, grid_key, token_id in (
        ("pixel_values", "image_grid_thw", processor.image_token_id),
        ("pixel_values_videos", "video_grid_thw", processor.video_token_id),
    ):
        grid = getattr(enc, grid_key)
        if grid is None:
            head[pixels_key] = head[grid_key] = tail[pixels_key] = tail[grid_key] = None
            continue
        tokens_in_prefix = int((enc.input_ids[:prefix] == token_id).sum())
        per_item = (grid.prod(-1) // merge).tolist()
        k, seen = 0, 0
        while k < len(per_item) and seen + per_item[k] <= tokens_in_prefix:
            seen += per_item[k]
            k += 1
        patches = int(grid[:k].prod(-1).sum())
        shared = getattr(enc.shared, pixels_key) if enc.shared is not None else None
        if shared is not None and shared.shape[0] == patches:  # the query's patches, kept once per call
            head[pixels_key], tail[pixels_key] = shared, getattr(enc, pixels_key)
            head[grid_key], tail[grid_key] = grid[:k], (grid[k:] if k < len(per_item) else None)
            continue
        pixels = enc.vision(pixels_key)
        head[pixels_key] = pixels[:patches] if k else None
        head[grid_key] = grid[:k] if k else None
        tail[pixels_key] = pixels[patches:] if k < len(per_item) else None
        tail[grid_key] = grid[k:] if k < len(per_item) else None
    return head, tail


def pair_positions(model: torch.nn.Module, enc: Encoded, processor: Any) -> torch.Tensor:
    """Multimodal rotary positions (3, L) of one whole pair."""
    ids = enc.input_ids[None]
    inputs = {
        "input_ids": ids,
        "mm_token_type_ids": token_types(ids, processor.image_token_id, processor.video_token_id),
        "image_grid_thw": enc.image_grid_thw,
        "video_grid_thw": enc.video_grid_thw,
        "attention_mask": torch.ones_like(ids),
    }
    return rope_positions(model, inputs)[:, 0]


@torch.inference_mode()
def run_prefix(
    model: torch.nn.Module, enc: Encoded, prefix: int, processor: Any, device: torch.device, dtype: torch.dtype
) -> PrefixCache:
    """Run the first ``prefix`` tokens of ``enc`` (with their images/videos) and return their keys/values."""
    from transformers import DynamicCache

    head, _ = vision_split(enc, prefix, processor)
    ids = enc.input_ids[None, :prefix]
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "position_ids": pair_positions(model, enc, processor)[:, None, :prefix],
        **head,
    }
    cache = DynamicCache(config=model.config)
    model(**batch_to_device(inputs, device, dtype), cache=cache, use_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def suffix(enc: Encoded, prefix: int, processor: Any) -> Encoded:
    """The tokens of ``enc`` after the prefix, with the images/videos among them."""
    _, tail = vision_split(enc, prefix, processor)
    return Encoded(input_ids=enc.input_ids[prefix:], **tail)


def expand_cache(prefix_cache: PrefixCache, rows: int, config: Any) -> Any:
    """A cache holding the prefix's keys/values once per batch row (expanded views, not copies)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for layer_idx, (keys, values) in enumerate(prefix_cache):
        cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), layer_idx)
    return cache


@torch.inference_mode()
def forward_suffixes(
    model: torch.nn.Module,
    items: Sequence[Encoded],
    prefix: int,
    prefix_cache: PrefixCache,
    processor: Any,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Final hidden states (B, hidden) of the pairs' last tokens, running only their tokens after the prefix."""
    batch = collate(
        [suffix(enc, prefix, processor) for enc in items],
        pad_token_id=pad_id,
        image_token_id=processor.image_token_id,
        video_token_id=processor.video_token_id,
        padding_side="right",
    )
    positions = torch.zeros((3, len(items), batch.input_ids.shape[1]), dtype=torch.long)
    for row, enc in enumerate(items):
        own = pair_positions(model, enc, processor)[:, prefix:]
        positions[:, row, : own.shape[1]] = own
    cache = expand_cache(prefix_cache, len(items), model.config)
    return last_token_states(model, batch, device, dtype, positions=positions, cache=cache)
