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
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from qwen_vl_utils import vision_process as qvu
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvf

from ..errors import InputError, LimitError

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
