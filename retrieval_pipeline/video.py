"""Video files: header checks, the reference's frame plan, frame-by-frame decoding and a token budget.

The reference (QwenLM/Qwen3-VL-Embedding) hands a video file to qwen-vl-utils with ``fps`` / ``max_frames`` only.
qwen-vl-utils (decord backend) then decodes every sampled frame at full resolution in one batch before resizing,
and gives a file no total pixel budget: a 4K clip takes gigabytes, and anything longer than ~20 s at 720p makes
more vision tokens than ``max_length`` holds. This module replaces that path for video *files* (frame-list videos
still go through qwen-vl-utils unchanged):

* :func:`probe` reads the header (PyAV for the frame size, decord for the frame count and rate, exactly the
  numbers qwen-vl-utils samples from) and refuses absurd inputs with a :class:`LimitError` before decoding.
* :func:`plan_video` computes the frame indices and the target size with qwen-vl-utils' own helpers
  (``calculate_video_frame_range``, ``smart_nframes``, ``smart_resize``) and its per-frame pixel formula.
* :func:`read_video` decodes the planned frames a few at a time (a fresh decord reader per chunk: decord decodes
  ahead into an unbounded queue) and resizes each frame at once with the same torchvision call: the tensor equals
  qwen-vl-utils' ``fetch_video`` output exactly (tested), at a fraction of the memory.
  Frames above :data:`DECODER_SCALE_PIXELS` (larger than 4K) are scaled by the decoder first, to twice the target
  size: only those pixels differ (slightly) from the reference, which needs gigabytes for them.
* :func:`fetch_vision` is ``process_vision_info`` for one conversation plus a token budget: when the reference's
  plan would not fit ``max_length``, the video files get a ``total_pixels`` budget (smaller frames, down to
  qwen-vl-utils' per-frame minimum, then fewer frames) so that the whole sequence fits. When the reference's plan
  fits, nothing changes.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from qwen_vl_utils import vision_process as qvu
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf

from .media import InputError, LimitError

logger = logging.getLogger(__name__)

IMAGE_PATCH_SIZE = 16  # Qwen3-VL: 16-pixel patches, merged 2x2 -> one token per 32x32 pixels
FACTOR = IMAGE_PATCH_SIZE * qvu.SPATIAL_MERGE_SIZE
PIXELS_PER_TOKEN = FACTOR * FACTOR

# Header limits, checked before any frame is decoded.
MAX_VIDEO_FRAME_PIXELS = 8192 * 4320  # DCI 8K
MAX_VIDEO_FRAMES = 1_000_000  # ~9 h at 30 fps
MAX_VIDEO_SECONDS = 24 * 3600.0
# Frames larger than this (above 4K DCI) are scaled down by the decoder before the exact resize.
DECODER_SCALE_PIXELS = 4096 * 2160
# Decoded (pre-resize) frames held at once.
CHUNK_BYTES = 64 * 1024 * 1024
DECODER_THREADS = 1  # frame threads of each reader: more threads decode further ahead (memory), not faster here
BACKEND = "decord"
# Without processor truncation (the reranker), a sequence is cut only past its max_length + 5 tokens (it keeps the
# last 5): up to there the reference runs unchanged.
UNTRUNCATED_SLACK = 5


@dataclass(frozen=True)
class VideoHeader:
    path: str
    width: int
    height: int
    frames: int  # decord's frame count: what qwen-vl-utils samples from
    fps: float  # decord's average frame rate

    @property
    def duration(self) -> float:
        return self.frames / self.fps


@dataclass(frozen=True)
class VideoPlan:
    """What will be read from one video file: frame indices and the size each frame is resized to."""

    header: VideoHeader
    ele: dict[str, Any]  # the qwen-vl-utils content item that yields exactly this plan
    indices: list[int]
    segment_frames: int  # qwen-vl-utils' total_num_frames (frames in the video_start..video_end segment)
    height: int
    width: int
    reference: bool = True  # False: a token budget changed the reference's plan

    @property
    def nframes(self) -> int:
        return len(self.indices)

    def metadata(self) -> dict[str, Any]:
        return {
            "fps": self.header.fps,
            "frames_indices": list(self.indices),
            "total_num_frames": self.segment_frames,
            "video_backend": BACKEND,
        }


# --------------------------------------------------------------------------------------------------------------
# Header


def probe(path: str) -> VideoHeader:
    """Read and check a video file's header (no frame is decoded). Raises :class:`InputError`/:class:`LimitError`."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise InputError(f"cannot read video {path}: {exc.strerror or exc}") from None
    header, claimed_frames, claimed_seconds = _read_header(path, stat.st_mtime_ns, stat.st_size, stat.st_ino)
    pixels = header.width * header.height
    _check_limit(
        "max_video_frame_pixels", pixels, MAX_VIDEO_FRAME_PIXELS, f"pixels per frame ({header.width}x{header.height})"
    )
    _check_limit("max_video_frames", max(claimed_frames, header.frames), MAX_VIDEO_FRAMES, "frames")
    _check_limit("max_video_seconds", max(claimed_seconds, header.duration), MAX_VIDEO_SECONDS, "seconds")
    return header


_STDERR_LOCK = threading.Lock()


@contextmanager
def native_stderr_to_log() -> Iterator[None]:
    """What C/C++ code writes straight to file descriptor 2 inside the block (decord prints its errors there,
    beside the exception it raises) goes to this module's logger (INFO: ``--verbose`` shows it), not the terminal.
    Blocks run one at a time (file descriptor 2 is the process's)."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as captured:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable stderr (embedded interpreters): nothing to redirect
            yield
            return
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read(64 * 1024).decode("utf-8", "replace").strip()
            if text:
                logger.info("video decoder: %s", text)


@lru_cache(maxsize=64)
def _read_header(path: str, _mtime: int, _size: int, _inode: int) -> tuple[VideoHeader, int, float]:
    """(header, frames and seconds the container claims). Cached per file version; limits are checked by the
    caller. decord's frame count comes from its packet index (no decoding); it is read only when the container's
    own header passes the limits."""
    import av
    import decord

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InputError(f"video has no frames (no video stream): {path}")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            claimed_frames = int(stream.frames or 0)
            claimed_seconds = container.duration / 1e6 if container.duration else 0.0
    except InputError:
        raise
    except Exception as exc:  # PyAV's FFmpegError family, or anything a broken container raises
        raise InputError(f"unreadable video {path}: {_first_line(exc)}") from None
    if width <= 0 or height <= 0:
        raise InputError(f"video has no frame size: {path}")
    _check_limit(
        "max_video_frame_pixels", width * height, MAX_VIDEO_FRAME_PIXELS, f"pixels per frame ({width}x{height})"
    )
    _check_limit("max_video_frames", claimed_frames, MAX_VIDEO_FRAMES, "frames")
    _check_limit("max_video_seconds", claimed_seconds, MAX_VIDEO_SECONDS, "seconds")
    try:
        with native_stderr_to_log():
            reader = decord.VideoReader(path, num_threads=DECODER_THREADS)
        frames, fps = len(reader), float(reader.get_avg_fps())
        del reader
    except Exception as exc:  # decord raises its own DECORDError / RuntimeError
        raise InputError(f"unreadable video {path}: {_first_line(exc)}") from None
    if frames <= 0:
        raise InputError(f"video has no frames: {path}")
    if not math.isfinite(fps) or fps <= 0:
        raise InputError(f"video has no frame rate: {path}")
    header = VideoHeader(path=path, width=width, height=height, frames=frames, fps=fps)
    return header, claimed_frames, claimed_seconds


def _check_limit(name: str, value: float, maximum: float, what: str) -> None:
    if value > maximum:
        shown = f"{value:.0f}" if isinstance(value, float) else str(value)
        raise LimitError(
            f"video too large: {shown} {what} exceed the limit of {maximum:.0f} ({name})",
            limit=name,
            value=value,
            maximum=maximum,
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else repr(exc)


# --------------------------------------------------------------------------------------------------------------
# Plan: exactly qwen-vl-utils' choices (decord backend + fetch_video's sizing)


def check_segment(header: VideoHeader, video_start: float | None, video_end: float | None) -> None:
    """A ``video_start`` at or past the end is an error naming the field (qwen-vl-utils fails obscurely)."""
    if video_start is not None and video_start >= header.duration:
        raise InputError(
            f"video_start ({video_start:g} s) is at or past the end of the video ({header.duration:.2f} s)",
            field="video_start",
        )


def plan_video(header: VideoHeader, ele: dict[str, Any]) -> VideoPlan:
    """Frame indices and target size for ``ele`` (a qwen-vl-utils video item), as qwen-vl-utils computes them."""
    check_segment(header, ele.get("video_start"), ele.get("video_end"))
    max_frames = ele.get("max_frames")
    if max_frames is not None and max_frames < qvu.FRAME_FACTOR:
        raise InputError(
            f"max_frames must be at least {qvu.FRAME_FACTOR} for a video file (the model reads frames in pairs), "
            f"got {max_frames}",
            field="max_frames",
        )
    try:
        start, end, segment = qvu.calculate_video_frame_range(ele, header.frames, header.fps)
    except ValueError:
        name = "video_end" if ele.get("video_end") is not None else "video_start"
        raise InputError(
            f"the segment video_start={ele.get('video_start')} .. video_end={ele.get('video_end')} holds fewer than "
            f"2 frames of this {header.duration:.2f} s video",
            field=name,
        ) from None
    try:
        nframes = qvu.smart_nframes(ele, total_frames=segment, video_fps=header.fps)
    except ValueError:
        raise InputError(
            f"the video has {segment} frame(s); at least {qvu.FRAME_FACTOR} are needed", field="video"
        ) from None
    indices = torch.linspace(start, end, nframes).round().long().tolist()
    height, width = target_size(header.height, header.width, nframes, ele)
    return VideoPlan(header, dict(ele), indices, segment, height, width)


def target_size(height: int, width: int, nframes: int, ele: dict[str, Any]) -> tuple[int, int]:
    """``fetch_video``'s per-frame pixel budget and ``smart_resize`` call, line for line."""
    frame_min = qvu.VIDEO_MIN_TOKEN_NUM * PIXELS_PER_TOKEN
    frame_max = qvu.VIDEO_MAX_TOKEN_NUM * PIXELS_PER_TOKEN
    min_pixels = ele.get("min_pixels", frame_min)
    total_pixels = ele.get("total_pixels", qvu.MODEL_SEQ_LEN * PIXELS_PER_TOKEN * 0.9)
    max_pixels = max(min(frame_max, total_pixels / nframes * qvu.FRAME_FACTOR), int(min_pixels * 1.05))
    max_pixels = min(ele.get("max_pixels", max_pixels), max_pixels)
    try:
        if "resized_height" in ele and "resized_width" in ele:
            return qvu.smart_resize(ele["resized_height"], ele["resized_width"], factor=FACTOR)
        return qvu.smart_resize(height, width, factor=FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as exc:  # aspect ratio above 200
        raise InputError(f"video frames of {width}x{height}: {exc}", field="video") from None


# --------------------------------------------------------------------------------------------------------------
# Decoding


def decode_size(plan: VideoPlan) -> tuple[int, int] | None:
    """(height, width) to ask the decoder for, or None for the native size (identical pixels to the reference)."""
    h, w = plan.header.height, plan.header.width
    if h * w <= DECODER_SCALE_PIXELS:
        return None
    scale = min(1.0, 2 * plan.height / h, 2 * plan.width / w)
    scale = max(scale, plan.height / h, plan.width / w)  # never below the target size
    return max(2, round(h * scale / 2) * 2), max(2, round(w * scale / 2) * 2)


def read_video(plan: VideoPlan) -> torch.Tensor:
    """The planned frames as a float32 (T, C, H, W) tensor, decoded a few at a time, each resized at once.

    decord decodes ahead on a background thread into an unbounded queue of full-size RGB frames (a slow consumer
    makes it hold hundreds of them), so each chunk of at most :data:`CHUNK_BYTES` of frames gets its own reader,
    closed before its frames are resized."""
    import decord

    size = decode_size(plan)
    kwargs = {} if size is None else {"height": size[0], "width": size[1]}
    height, width = size or (plan.header.height, plan.header.width)
    if size is not None:
        logger.info(
            "video %s: %dx%d frames decoded at %dx%d before resizing to %dx%d",
            plan.header.path,
            plan.header.width,
            plan.header.height,
            width,
            height,
            plan.width,
            plan.height,
        )
    per_chunk = max(1, CHUNK_BYTES // (height * width * 3))
    out = torch.empty((plan.nframes, 3, plan.height, plan.width), dtype=torch.float32)
    for first in range(0, plan.nframes, per_chunk):
        chunk = plan.indices[first : first + per_chunk]
        try:
            with native_stderr_to_log():
                reader = decord.VideoReader(plan.header.path, num_threads=DECODER_THREADS, **kwargs)
            try:
                frames = reader.get_batch(chunk).asnumpy()
            finally:
                del reader  # stops its decoding thread and frees the frames it queued
        except Exception as exc:  # decord's DECORDError / RuntimeError
            raise InputError(
                f"cannot decode frames {chunk[0]}..{chunk[-1]} of {plan.header.path}: {_first_line(exc)}",
                field="video",
            ) from None
        for j in range(len(chunk)):
            # qwen-vl-utils' calls (torch.tensor + permute, then resize), on a batch of one frame: the same pixels.
            frame = torch.tensor(frames[j : j + 1]).permute(0, 3, 1, 2)
            out[first + j] = tvf.resize(
                frame, [plan.height, plan.width], interpolation=InterpolationMode.BICUBIC, antialias=True
            ).float()[0]
        del frames
    return out


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
