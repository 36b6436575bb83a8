"""``process_vision_info`` for one conversation, with a token budget for video files: what the chat template's
vision placeholders expand to, counted with the processor's own functions, and the plans that make a long video fit
``max_length`` (see :mod:`retrieval_pipeline.media.video` for decoding)."""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from qwen_vl_utils import vision_process as qvu

from ..errors import InputError
from ..media.video import (
    IMAGE_PATCH_SIZE,
    PIXELS_PER_TOKEN,
    VideoPlan,
    plan_video,
    probe,
    read_video,
)

logger = logging.getLogger(__name__)

# Without processor truncation (the reranker), a sequence is cut only past its max_length + 5 tokens (it keeps the
# last 5): up to there the reference runs unchanged.
UNTRUNCATED_SLACK = 5


# --------------------------------------------------------------------------------------------------------------
# process_vision_info for one conversation, with a token budget for video files


@dataclass
class _Block:
    """One vision placeholder of the chat text and what it expands to."""

    kind: str  # "image" | "frames" | "file"
    tokens: int = 0  # tokens the placeholder's three tokens become
    tail: int = 0  # of them, tokens after its last pad
    plan: VideoPlan | None = None
    value: Any = None  # the fetched image / (tensor, metadata)


def fetch_vision(
    conversation: list[dict[str, Any]],
    processor: Any,
    *,
    token_limit: int | None,
    truncation: bool,
    prompt_ids: Callable[[], list[int]] | list[int] | None = None,
) -> tuple[list[Any] | None, list[Any] | None, dict[str, Any]]:
    """What ``process_vision_info([conversation], image_patch_size=16, return_video_kwargs=True,
    return_video_metadata=True)`` returns, with video files read by :func:`read_video`.

    ``token_limit``: the sequence length the encoded conversation must fit. With ``truncation`` (the embedder) the
    reference fails only when vision tokens fall past it (text after them is cut); without (the reranker) any
    excess past ``token_limit + UNTRUNCATED_SLACK`` is. Only then do video files get a pixel budget
    (:func:`budget_plans`). ``prompt_ids``: the prompt's ids before vision expansion (or a function computing
    them; default: the chat template tokenised as the processor does)."""
    infos = qvu.extract_vision_info([conversation])
    blocks: list[_Block] = []
    for info in infos:
        if "image" in info or "image_url" in info:
            image = qvu.fetch_image(info, image_patch_size=IMAGE_PATCH_SIZE)
            blocks.append(_Block("image", value=image))
        elif "video" in info and isinstance(info["video"], str):
            header = probe(_local_path(info["video"]))
            blocks.append(_Block("file", plan=plan_video(header, _qvu_item(info))))
        elif "video" in info:
            video, _fps = qvu.fetch_video(
                info, image_patch_size=IMAGE_PATCH_SIZE, return_video_sample_fps=True, return_video_metadata=True
            )
            blocks.append(_Block("frames", value=video))
        else:
            raise ValueError("image, image_url or video should in content.")
    if token_limit is not None and any(b.kind == "file" for b in blocks):
        if prompt_ids is None:
            text = processor.apply_chat_template([conversation], add_generation_prompt=True, tokenize=False)
            ids = processor.tokenizer(text)["input_ids"][0]
        else:
            ids = prompt_ids() if callable(prompt_ids) else prompt_ids
        budget_plans(processor, blocks, list(ids), token_limit=token_limit, truncation=truncation)
    images = [b.value for b in blocks if b.kind == "image"]
    videos = []
    for b in blocks:
        if b.kind == "file":
            videos.append((read_video(b.plan), b.plan.metadata()))
        elif b.kind == "frames":
            videos.append(b.value)
    return images or None, videos or None, {"do_sample_frames": False}


def _local_path(video: str) -> str:
    return video[len("file://") :] if video.startswith("file://") else video


def _qvu_item(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if k != "type"}


@dataclass(frozen=True)
class Expansion:
    """What one vision placeholder of the chat text (vision start, pad, vision end) becomes in the processor's
    input ids."""

    tokens: int  # its length
    tail: int  # tokens after its last pad token (truncation that cuts these keeps every pad)


class VisionTokens:
    """Exact token counts of vision placeholders, computed by the installed processor itself: its
    ``replace_image_token`` / ``replace_video_token`` build the replacement text for a grid, its
    ``get_text_with_replacements`` rewrites the chat template's placeholder with it (transformers 5.25 began to drop
    the outer vision start/end around a video's frames there), and its tokenizer counts the result. Only the grid is
    computed here: frames already at their final size (``do_resize=False``) give (frame pairs, height / patch,
    width / patch), as the processor's ``patchify`` does. A transformers release that changes the expansion changes
    these counts with it (tests/test_video.py compares them with the processor's output)."""

    CACHE_ENTRIES = 4096

    def __init__(self, processor: Any):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        video = processor.video_processor
        self.temporal = video.temporal_patch_size
        self.video_patch = video.patch_size
        self.image_patch = processor.image_processor.patch_size
        self._cache: dict[tuple, Expansion] = {}  # cleared at CACHE_ENTRIES (a server sees endless frame plans)

    def image(self, height: int, width: int) -> Expansion:
        """An image already resized to ``height`` x ``width`` pixels."""
        grid = (1, height // self.image_patch, width // self.image_patch)
        key = ("image", grid)
        found = self._cache.get(key)
        if found is None:
            text = self.processor.replace_image_token({"image_grid_thw": torch.tensor([grid])}, 0)
            found = self._remember(key, self._expand(self.processor.image_token, images=[text]))
        return found

    def video(self, nframes: int, height: int, width: int, indices: list[int], fps: float) -> Expansion:
        """``nframes`` frames already resized to ``height`` x ``width``, sampled at ``indices`` of a ``fps`` video."""
        from transformers.video_utils import VideoMetadata

        grid = (-(-nframes // self.temporal), height // self.video_patch, width // self.video_patch)
        key = ("video", grid, tuple(indices), float(fps))
        found = self._cache.get(key)
        if found is None:
            metadata = VideoMetadata(total_num_frames=nframes, fps=fps, frames_indices=list(indices))
            inputs = {"video_grid_thw": torch.tensor([grid]), "video_metadata": [metadata]}
            text = self.processor.replace_video_token(inputs, 0)
            found = self._remember(key, self._expand(self.processor.video_token, videos=[text]))
        return found

    def _remember(self, key: tuple, expansion: Expansion) -> Expansion:
        if len(self._cache) >= self.CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = expansion
        return expansion

    def plan(self, plan: VideoPlan) -> Expansion:
        return self.video(plan.nframes, plan.height, plan.width, plan.indices, plan.header.fps)

    def _expand(self, pad: str, images: list[str] | None = None, videos: list[str] | None = None) -> Expansion:
        p = self.processor
        placeholder = p.vision_start_token + pad + p.vision_end_token
        (text,), _ = p.get_text_with_replacements([placeholder], images or [], videos or [])
        # A pad is a special token (one token wherever it stands): each run of pads is tokenised as one and the
        # rest added, which keeps this fast for tens of thousands of pads.
        runs = re.compile(f"(?:{re.escape(pad)})+")
        short = runs.sub(pad, text)
        ids = self.tokenizer(short, add_special_tokens=False)["input_ids"]
        pad_id = self.tokenizer.convert_tokens_to_ids(pad)
        last = max((i for i, t in enumerate(ids) if t == pad_id), default=len(ids) - 1)
        tokens = len(ids) + text.count(pad) - short.count(pad)
        return Expansion(tokens=tokens, tail=len(ids) - 1 - last)


_COUNTERS: weakref.WeakKeyDictionary[Any, VisionTokens] = weakref.WeakKeyDictionary()
_COUNTERS_LOCK = threading.Lock()


def vision_tokens(processor: Any) -> VisionTokens:
    """The processor's :class:`VisionTokens` (one per processor while it lives: its counts are cached)."""
    with _COUNTERS_LOCK:
        counter = _COUNTERS.get(processor)
        if counter is None:
            counter = _COUNTERS[processor] = VisionTokens(processor)
    return counter


def budget_plans(
    processor: Any,
    blocks: list[_Block],
    prompt_ids: list[int],
    *,
    token_limit: int,
    truncation: bool,
) -> None:
    """Replace the reference plans of video files by budgeted ones when the reference would overflow.

    ``prompt_ids``: the chat prompt's token ids before the processor expands the vision placeholders (each
    placeholder is three tokens: vision start, image/video pad, vision end)."""
    counter = vision_tokens(processor)
    pad_ids = {processor.image_token_id, processor.video_token_id}
    pads = [i for i, t in enumerate(prompt_ids) if t in pad_ids]
    if len(pads) != len(blocks) or not all(_is_placeholder(processor, prompt_ids, i) for i in pads):
        logger.warning("video budget skipped: %d vision placeholders for %d items", len(pads), len(blocks))
        return
    for b in blocks:
        if b.kind == "image":
            expansion = counter.image(b.value.size[1], b.value.size[0])
        elif b.kind == "frames":
            video, meta = b.value
            expansion = counter.video(
                video.shape[0], video.shape[2], video.shape[3], meta["frames_indices"], meta["fps"]
            )
        else:
            expansion = counter.plan(b.plan)
        b.tokens, b.tail = expansion.tokens, expansion.tail
    # Text tokens of the whole prompt, and of the part up to the end of the last vision placeholder.
    text_all = len(prompt_ids) - 3 * len(blocks)
    text_head = pads[-1] + 2 - 3 * len(blocks)
    files = [b for b in blocks if b.kind == "file"]
    fixed = sum(b.tokens for b in blocks if b.kind != "file")
    total = text_all + fixed + sum(b.tokens for b in files)
    if truncation:
        # Processor truncation keeps the first token_limit tokens: the reference fails when a pad token of the last
        # vision block is cut (what follows its last pad, e.g. vision end tokens, may be cut).
        last_pad = text_head + fixed + sum(b.tokens for b in files) - blocks[-1].tail
        fits = last_pad <= token_limit
    else:
        fits = total <= token_limit + UNTRUNCATED_SLACK
    if fits:
        return
    available = token_limit - text_all - fixed
    if truncation and available < _smallest(files, counter):
        available = token_limit - text_head - fixed  # the text after the videos will be truncated
    if available < _smallest(files, counter):
        raise InputError(
            f"max_length ({token_limit}) leaves {max(available, 0)} tokens for {len(files)} video file(s) after the "
            "text and images, too few for even 2 small frames each; raise max_length or shorten the text",
            field="video",
        )
    # Water-filling: a video whose reference plan fits an equal share keeps it; the others share the rest equally.
    pending = list(files)
    while True:
        share = available // len(pending)
        keep = [b for b in pending if b.tokens <= share]
        if not keep:
            break
        available -= sum(b.tokens for b in keep)
        pending = [b for b in pending if b.tokens > share]
        if not pending:
            return
    for b in pending:
        reference_tokens = b.tokens
        b.plan = budget_plan(b.plan, share, counter)
        b.tokens = counter.plan(b.plan).tokens
        logger.info(
            "video %s: reference plan (%d tokens) over max_length %d; budgeted to %d frames of %dx%d (%d tokens)",
            b.plan.header.path,
            reference_tokens,
            token_limit,
            b.plan.nframes,
            b.plan.width,
            b.plan.height,
            b.tokens,
        )


def _smallest(files: list[_Block], counter: VisionTokens) -> int:
    return sum(counter.plan(_two_frame_plan(b.plan)).tokens for b in files)


def _is_placeholder(processor: Any, ids: list[int], pad: int) -> bool:
    """The chat template wrote this pad as the three-token placeholder whose expansion :class:`VisionTokens`
    counts."""
    start, end = processor.vision_start_token_id, processor.vision_end_token_id
    return 0 < pad < len(ids) - 1 and ids[pad - 1] == start and ids[pad + 1] == end


def _two_frame_plan(plan: VideoPlan) -> VideoPlan:
    ele = dict(plan.ele, max_frames=qvu.FRAME_FACTOR, total_pixels=1)
    return _replan(plan, ele)


def _replan(plan: VideoPlan, ele: dict[str, Any]) -> VideoPlan:
    new = plan_video(plan.header, ele)
    return VideoPlan(new.header, new.ele, new.indices, new.segment_frames, new.height, new.width, reference=False)


def budget_plan(plan: VideoPlan, tokens: int, counter: VisionTokens) -> VideoPlan:
    """The largest plan for this video within ``tokens``: every frame of the reference plan with a ``total_pixels``
    budget (qwen-vl-utils' frame-list rule: per frame ``total_pixels / nframes * 2``, at least its per-frame minimum),
    and when even the minimum frame size is too large, fewer frames (``max_frames`` lowered two at a time)."""
    for nframes in range(plan.nframes, 1, -qvu.FRAME_FACTOR):
        ele = dict(plan.ele, max_frames=nframes) if nframes < plan.nframes else dict(plan.ele)
        probe_plan = _replan(plan, dict(ele, total_pixels=1))  # indices for this frame count, smallest frames
        overhead = counter.video(probe_plan.nframes, 0, 0, probe_plan.indices, plan.header.fps).tokens
        vision = tokens - overhead
        if vision <= 0:
            continue
        total_pixels = vision * PIXELS_PER_TOKEN
        for _ in range(8):  # smart_resize floors to the budget; the loop only guards rounding
            candidate = _replan(plan, dict(ele, total_pixels=total_pixels))
            if counter.plan(candidate).tokens <= tokens:
                return candidate
            total_pixels -= PIXELS_PER_TOKEN * max(1, candidate.nframes // qvu.FRAME_FACTOR)
            if total_pixels <= 0:
                break
    raise InputError(f"no frame plan of this video fits {tokens} tokens", field="video")
