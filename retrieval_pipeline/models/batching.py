"""Batching: length-sorted packing under a token budget, padding, moving to the device, the batched run.

Sorting by length before batching keeps padding (wasted compute) small; the token budget bounds memory by
``max_batch_tokens`` rather than by the number of inputs; identical items (same key) run once and results go back
to input order by key (:func:`run_batched`). Also the multimodal rotary positions and last-token pooling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from .encoding import Encoded

T = TypeVar("T")


def plan_batches(
    lengths: Sequence[int], *, batch_size: int, max_batch_tokens: int, max_padding: float = 1.0
) -> list[list[int]]:
    """Indices grouped into batches: longest first, each batch at most ``batch_size`` items and
    ``max_batch_tokens`` padded tokens (an item longer than the budget gets a batch of its own), and at most a
    ``max_padding`` fraction of its padded tokens being padding (padding is compute spent on nothing)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be >= 1, got {max_batch_tokens}")
    if not 0.0 <= max_padding <= 1.0:
        raise ValueError(f"max_padding must be within [0, 1], got {max_padding}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = real = 0
    for i in order:
        # Sorted descending, so the first item of a batch is its longest: padded size = count * longest.
        if current:
            padded = (len(current) + 1) * longest
            if (
                len(current) >= batch_size
                or padded > max_batch_tokens
                or padded - (real + lengths[i]) > max_padding * padded
            ):
                batches.append(current)
                current = []
        if not current:
            longest, real = lengths[i], 0
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


# Inputs are decoded and encoded a window at a time, so host memory does not grow with the list: at most this many
# items, or this many bytes of token ids and pixel patches (a full-size image is ~44 MB of patches).
WINDOW_ITEMS = 256
WINDOW_BYTES = 256 * 1024 * 1024


def windows(
    n: int, encode: Callable[[int], Encoded], *, max_items: int | None = None, max_bytes: int | None = None
) -> Iterator[dict[int, Encoded]]:
    """``encode(i)`` for i in 0..n-1, handed over in windows of at most ``max_items`` items and (past the first
    item) ``max_bytes`` bytes of tensors, so a list of page images never holds all their patches at once."""
    max_items = max_items or WINDOW_ITEMS
    max_bytes = max_bytes or WINDOW_BYTES
    window: dict[int, Encoded] = {}
    size = 0
    for i in range(n):
        enc = encode(i)
        window[i] = enc
        size += enc.nbytes
        if len(window) >= max_items or size >= max_bytes:
            yield window
            window, size = {}, 0
    if window:
        yield window


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    mm_token_type_ids: torch.Tensor  # (B, L): 0 text, 1 image, 2 video
    lengths: torch.Tensor  # (B,)
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    pixel_values_videos: torch.Tensor | None
    video_grid_thw: torch.Tensor | None

    def model_inputs(self) -> dict[str, torch.Tensor | None]:
        """The model's keyword arguments (still on the CPU; see :func:`batch_to_device`)."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "mm_token_type_ids": self.mm_token_type_ids,
            "pixel_values": self.pixel_values,
            "image_grid_thw": self.image_grid_thw,
            "pixel_values_videos": self.pixel_values_videos,
            "video_grid_thw": self.video_grid_thw,
        }


def batch_to_device(
    batch_or_tensors: Batch | Mapping[str, torch.Tensor | None], device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor | None]:
    """Model inputs on ``device``: pixels (the floating-point tensors) in the model's ``dtype``, token ids, masks,
    grids and positions as they are; ``None`` stays ``None``."""
    tensors = batch_or_tensors.model_inputs() if isinstance(batch_or_tensors, Batch) else batch_or_tensors
    return {
        name: None if t is None else t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
        for name, t in tensors.items()
    }


def token_types(input_ids: torch.Tensor, image_token_id: int, video_token_id: int) -> torch.Tensor:
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == image_token_id] = 1
    types[input_ids == video_token_id] = 2
    return types


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [t for t in tensors if t is not None]
    return torch.cat(present, dim=0) if present else None


def collate(
    items: Sequence[Encoded],
    *,
    pad_token_id: int,
    image_token_id: int,
    video_token_id: int,
    padding_side: str = "right",
) -> Batch:
    """Pad token ids to one length and concatenate the vision tensors in batch order."""
    lengths = torch.tensor([len(e) for e in items], dtype=torch.long)
    width = int(lengths.max())
    input_ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, enc in enumerate(items):
        n = len(enc)
        cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, cols] = enc.input_ids
        attention_mask[row, cols] = 1
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        mm_token_type_ids=token_types(input_ids, image_token_id, video_token_id) * attention_mask.int(),
        lengths=lengths,
        pixel_values=_cat([e.vision("pixel_values") for e in items]),
        image_grid_thw=_cat([e.image_grid_thw for e in items]),
        pixel_values_videos=_cat([e.vision("pixel_values_videos") for e in items]),
        video_grid_thw=_cat([e.video_grid_thw for e in items]),
    )


def rope_positions(model: torch.nn.Module, inputs: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """3-D multimodal rotary positions (3, B, L) computed over the real tokens of each row, so padding on
    either side leaves every item's positions exactly as when it runs alone."""
    positions, _ = model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        video_grid_thw=inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    return positions


def last_token_states(
    model: torch.nn.Module,
    batch: Batch,
    device: torch.device,
    dtype: torch.dtype,
    *,
    positions: torch.Tensor | None = None,
    cache: Any = None,
) -> torch.Tensor:
    """Run a right-padded batch and return each row's final hidden state at its last real token, (B, hidden).

    Right padding + causal attention: a real token never attends to the pads that follow it, so the padding
    mask is left out and attention takes the fused causal kernel (measured ~2x faster than a masked one on CPU
    for 1.8k-token rows). Positions come from the real tokens only, so results equal running each row alone.
    With ``cache`` (a shared prefix's keys/values), the rows continue after the cached tokens.
    """
    inputs = batch_to_device(batch, device, dtype)
    if positions is None:
        positions = rope_positions(model, inputs)
    inputs["attention_mask"] = None
    hidden = model(
        **inputs, position_ids=positions.to(device), cache=cache, use_cache=cache is not None
    ).last_hidden_state
    last = (batch.lengths - 1).to(device)
    return hidden[torch.arange(hidden.shape[0], device=device), last]


def distinct(items: Sequence[Encoded], done: Mapping[bytes, Any] | None = None) -> list[Encoded]:
    """The first item of each key (computed when missing), in order, leaving out keys already in ``done``."""
    first: dict[bytes, Encoded] = {}
    for enc in items:
        if not enc.key:
            enc.compute_key()
        if done is None or enc.key not in done:
            first.setdefault(enc.key, enc)
    return list(first.values())


def run_batched(
    items: Sequence[Encoded],
    forward: Callable[[list[Encoded]], Sequence[T]],
    *,
    batch_size: int,
    max_batch_tokens: int,
    max_padding: float,
    length: Callable[[Encoded], int] = len,
    done: dict[bytes, T] | None = None,
    bar: Any = None,
) -> dict[bytes, T]:
    """Run ``forward`` over the distinct items (by key) not yet in ``done``, in batches cut by :func:`plan_batches`
    from ``length(item)``; returns ``done`` (key -> result) with their results added. ``bar`` (a tqdm) advances
    by one per item, duplicates included."""
    done = {} if done is None else done
    unique = distinct(items, done)
    plan = plan_batches(
        [length(e) for e in unique], batch_size=batch_size, max_batch_tokens=max_batch_tokens, max_padding=max_padding
    )
    for batch in plan:
        group = [unique[j] for j in batch]
        for enc, result in zip(group, forward(group)):
            done[enc.key] = result
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.update(len(items) - len(unique))  # duplicates count as done too
    return done
