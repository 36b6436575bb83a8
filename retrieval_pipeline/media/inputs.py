"""Inputs: normalise what a user passes, load and validate the media, fail with a clear error.

An input is a plain ``str`` (text), a ``PIL.Image.Image`` (image) or a multimodal object: a dict with any of
``text`` (str or list of str), ``image`` (one image or a list), ``video`` (a file / URL, a list of frames, or a
list of videos) and optional ``instruction``, ``fps``, ``max_frames``. An empty dict is the model's "NULL" input for
the reference-compatible ``process()`` calls only; everywhere else an input with nothing to embed is refused.

Work happens in two steps so that a bad item is found before any model work:

* :func:`parse_input` checks types and fields, resolves paths (a missing file fails here) and reads image
  headers (a decompression bomb or a non-image fails here) -- cheap, no pixel decoding.
* :func:`load_input` decodes the media into RGB ``PIL`` images / video references that the vision preprocessing
  of the reference (qwen-vl-utils) consumes.

Every failure is an :class:`InputError` naming the item's index, the field and the reason. Nothing is ever
replaced by a placeholder (the reference silently embeds the text "NULL" for an input it cannot load).
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .. import observe
from ..errors import InputError, LimitError
from .downloads import download_video, fetch_url, video_from_data_uri
from .limits import MAX_DOWNLOAD_BYTES, MAX_IMAGE_PIXELS, URL_TIMEOUT

# File extensions that mark a string in a ``video`` list as a frame rather than a video (as the reference does).
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tiff", ".tif", ".svg"}
KNOWN_FIELDS = {"text", "image", "video", "instruction", "fps", "max_frames", "video_start", "video_end"}

ImageLike = str | os.PathLike | bytes | bytearray | memoryview | Image.Image
InputLike = str | Image.Image | dict


@dataclass(frozen=True)
class InputLimits:
    """Bounds on what inputs may ask for, checked from structure and headers before anything is decoded.

    ``None`` is no bound. The library's default bounds only the pixels of one image (decompression bombs); the
    server applies :data:`SERVER_LIMITS`. Each refusal is a :class:`LimitError` naming the setting.
    """

    max_text_chars: int | None = None  # characters of one input's texts and instruction together
    max_images_per_item: int | None = None
    max_videos_per_item: int | None = None
    max_frames_per_video: int | None = None  # frames listed in one frame-list video, before thinning
    max_image_pixels: int = MAX_IMAGE_PIXELS  # pixels of one stored image or frame (decoded size)
    max_request_pixels: int | None = None  # stored pixels of every image and frame of one call
    max_rerank_tokens: int | None = None  # estimated tokens a rerank call runs (see Qwen3VLReranker.prepare)

    def check_item(self, parsed: ParsedInput) -> None:
        """Per-input bounds (raise :class:`LimitError` without an index; the caller locates it)."""
        chars = sum(len(t) for t in parsed.texts) + len(parsed.instruction or "")
        _bound("max_text_chars", chars, self.max_text_chars, "characters of text", "text")
        _bound("max_images_per_item", len(parsed.images), self.max_images_per_item, "images", "image")
        _bound("max_videos_per_item", len(parsed.videos), self.max_videos_per_item, "videos", "video")
        for video in parsed.videos:
            if isinstance(video, FramesSource):
                _bound("max_frames_per_video", len(video.frames), self.max_frames_per_video, "frames", "video")

    def check_call(self, parsed: Sequence[ParsedInput]) -> None:
        """Bounds over a whole call: the stored pixels of the images and frames whose size is known."""
        if self.max_request_pixels is None:
            return
        total = sum(source_pixels(p) for p in parsed)
        _bound("max_request_pixels", total, self.max_request_pixels, "pixels of images and frames", None, "call")


# What `serve` accepts by default (each has a flag; see the README's "Limits and security").
SERVER_LIMITS = InputLimits(
    max_text_chars=100_000,  # ~25k tokens of prose: far past what max_length keeps
    max_images_per_item=16,
    max_videos_per_item=2,
    max_frames_per_video=256,
    max_image_pixels=25_000_000,  # 5000 x 5000; the model sees at most max_pixels (1.8 M) of it
    max_request_pixels=64_000_000,
    max_rerank_tokens=400_000,
)


def _bound(name: str, value: int, maximum: int | None, what: str, field: str | None, kind: str = "input") -> None:
    if maximum is not None and value > maximum:
        raise LimitError(
            f"{value} {what} exceed the limit of {maximum} ({name})",
            limit=name,
            value=value,
            maximum=maximum,
            field=field,
            kind=kind,
        )


def source_pixels(parsed: ParsedInput) -> int:
    """Stored pixels of an input's images and frames whose header was read (URLs count once fetched)."""
    total = sum(s.size[0] * s.size[1] for s in parsed.images if s.size)
    for video in parsed.videos:
        if isinstance(video, FramesSource):
            total += sum(f.size[0] * f.size[1] for f in video.frames if f.size)
    return total


# --------------------------------------------------------------------------------------------------------------
# Parsed (not yet decoded) inputs


@dataclass(frozen=True)
class ImageSource:
    kind: str  # "path" | "url" | "bytes" | "pil"
    value: Any
    size: tuple[int, int] | None = None  # (width, height) from the header; None until a URL is fetched

    def describe(self) -> str:
        if self.kind in ("path", "url"):
            return str(self.value)
        if self.kind == "bytes":
            return f"<{len(self.value)} bytes>"
        return f"<PIL.Image {self.value.mode} {self.value.size[0]}x{self.value.size[1]}>"


@dataclass(frozen=True)
class VideoFileSource:
    kind: str  # "path" | "url" | "data" (a data:video/...;base64 URI)
    value: str


@dataclass(frozen=True)
class FramesSource:
    frames: tuple[ImageSource, ...]


@dataclass
class ParsedInput:
    texts: list[str] = field(default_factory=list)
    images: list[ImageSource] = field(default_factory=list)
    videos: list[VideoFileSource | FramesSource] = field(default_factory=list)
    instruction: str | None = None
    fps: float | None = None
    max_frames: int | None = None
    video_start: float | None = None  # seconds; a segment of each video file
    video_end: float | None = None

    @property
    def is_empty(self) -> bool:
        return not (self.texts or self.images or self.videos)


@dataclass
class VideoFile:
    """A video file on local disk, read with qwen-vl-utils' ``fps`` / ``max_frames`` sampling, frame by frame
    (:mod:`retrieval_pipeline.media.video`)."""

    path: str


@dataclass
class LoadedInput:
    texts: list[str]
    images: list[Image.Image]
    videos: list[VideoFile | list[Image.Image]]
    instruction: str | None
    fps: float | None
    max_frames: int | None
    video_start: float | None = None
    video_end: float | None = None


# --------------------------------------------------------------------------------------------------------------
# Parsing


def parse_inputs(inputs: Sequence[InputLike], *, limits: InputLimits | None = None, **kwargs: Any) -> list[ParsedInput]:
    """Parse a list of inputs; raise :class:`InputError` (with the index) at the first bad one. ``limits``
    bounds each input and the whole call (:class:`LimitError`)."""
    if isinstance(inputs, (str, dict, Image.Image)) or not isinstance(inputs, Sequence):
        raise InputError(f"expected a list of inputs, got {type(inputs).__name__}")
    if len(inputs) == 0:
        raise InputError("the input list is empty")
    parsed = [parse_input(item, index=i, limits=limits, **kwargs) for i, item in enumerate(inputs)]
    if limits is not None:
        limits.check_call(parsed)
    return parsed


def parse_input(
    obj: InputLike,
    *,
    index: int | None = None,
    check_files: bool = True,
    limits: InputLimits | None = None,
    allow_empty: bool = False,
) -> ParsedInput:
    """Check one input's structure and resolve its media sources (no decoding); ``limits`` bounds it.

    An input with no text, image or video is refused, unless ``allow_empty`` (the reference scripts' ``process``
    calls, where ``{}`` is the model's "NULL" input); a field given without a value (``{"image": None}``,
    ``{"text": []}``) is refused either way."""
    try:
        parsed = _parse(obj, check_files=check_files)
        if parsed.is_empty and not allow_empty:
            raise InputError(
                "empty input: no text, image or video (give at least one; only the reference-compatible process() "
                "calls take {} as the model's NULL input)"
            )
        if limits is not None:
            limits.check_item(parsed)
            for src in parsed.images:
                if src.size:
                    _check_pixels(src.size[0], src.size[1], src.describe(), limits.max_image_pixels)
        return parsed
    except InputError as exc:
        raise exc.at(index) from None


def _parse(obj: InputLike, *, check_files: bool) -> ParsedInput:
    if isinstance(obj, str):
        check_text(obj, "text")
        return ParsedInput(texts=[obj])
    if isinstance(obj, Image.Image):
        return ParsedInput(images=[_image_source(obj, check_files)])
    if not isinstance(obj, dict):
        raise InputError(
            f"unsupported input type {type(obj).__name__}; pass a str (text), a PIL.Image.Image or a dict "
            "with 'text' / 'image' / 'video'"
        )
    unknown = set(obj) - KNOWN_FIELDS
    if unknown:
        raise InputError(f"unknown field(s) {sorted(unknown)}; known fields are {sorted(KNOWN_FIELDS)}")
    parsed = ParsedInput()
    text = obj.get("text")
    if text is not None:
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise InputError(f"expected a str or a list of str, got {_type_name(text)}", field="text")
        for t in texts:
            check_text(t, "text")
        parsed.texts = list(texts)
    image = obj.get("image")
    if image is not None:
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        parsed.images = [_located(_image_source, img, check_files, field="image") for img in images]
    video = obj.get("video")
    if video is not None:
        parsed.videos = [_located(_video_source, v, check_files, field="video") for v in _split_videos(video)]
    instruction = obj.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise InputError(f"expected a str, got {_type_name(instruction)}", field="instruction")
    if instruction is not None:
        check_text(instruction, "instruction")
    parsed.instruction = instruction
    fps = obj.get("fps")
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < float("inf"):
            raise InputError(f"expected a finite positive number, got {fps!r}", field="fps")
        parsed.fps = float(fps)
    max_frames = obj.get("max_frames")
    if max_frames is not None:
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
            raise InputError(f"expected a positive int, got {max_frames!r}", field="max_frames")
        if max_frames < 2 and any(isinstance(v, VideoFileSource) for v in parsed.videos):
            raise InputError(
                f"a video file needs max_frames >= 2 (the model reads video frames in pairs), got {max_frames}",
                field="max_frames",
            )
        parsed.max_frames = max_frames
    for name in ("video_start", "video_end"):
        value = obj.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise InputError(f"expected a number of seconds >= 0 (finite), got {value!r}", field=name)
            setattr(parsed, name, float(value))
    if parsed.video_start is not None and parsed.video_end is not None and parsed.video_end <= parsed.video_start:
        raise InputError(
            f"video_end ({parsed.video_end}) must be after video_start ({parsed.video_start})", field="video_end"
        )
    for name, values in (("text", parsed.texts), ("image", parsed.images), ("video", parsed.videos)):
        if name in obj and not values:
            raise InputError(f"no value ({obj[name]!r}): give one, or leave the field out", field=name)
    if check_files and parsed.video_start is not None:
        from .video import check_segment

        for video in parsed.videos:
            if isinstance(video, VideoFileSource) and video.kind == "path":  # a URL is checked once fetched
                check_segment(_probe_video(video.value), parsed.video_start, parsed.video_end)
    return parsed


def check_text(text: str, field: str = "text") -> str:
    """Text must be valid Unicode. A lone UTF-16 surrogate (``"\\ud800"`` is valid JSON) cannot be tokenised; it is
    refused with its position rather than silently replaced, since replacing it would embed a different text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        raise InputError(
            f"not valid Unicode text: lone surrogate U+{ord(char):04X} at character {exc.start} (a broken UTF-16 "
            "pair; fix the encoding of the source, or replace it, e.g. text.encode('utf-8', 'replace').decode())",
            field=field,
        ) from None
    return text


def _located(fn, value, check_files: bool, *, field: str):
    try:
        return fn(value, check_files)
    except InputError as exc:
        raise exc.at(field=field) from None


def _type_name(value: Any) -> str:
    return type(value).__name__


def looks_like_frame(value: Any) -> bool:
    if isinstance(value, (Image.Image, bytes, bytearray, memoryview)):
        return True
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if text.startswith("data:image"):
            return True
        path = urlparse(text).path if text.startswith(("http://", "https://", "file://")) else text
        return os.path.splitext(path.lower())[1] in IMAGE_EXTENSIONS
    return False


def _split_videos(video: Any) -> list[Any]:
    """One video or a list of videos (same rule as the reference: a list of frames is one video)."""
    if isinstance(video, (str, os.PathLike)):
        return [video]
    if isinstance(video, (list, tuple)):
        if len(video) == 0:
            raise InputError("a video needs at least one frame (got an empty list)", field="video")
        if looks_like_frame(video[0]):
            return [list(video)]
        return list(video)
    raise InputError(
        f"expected a video file path / URL, a list of frames or a list of videos, got {_type_name(video)}",
        field="video",
    )


def _resolve_local(text: str) -> Path:
    if text.startswith("file://"):
        text = unquote(urlparse(text).path)
    return Path(text).expanduser()


def _image_source(value: Any, check_files: bool) -> ImageSource:
    if isinstance(value, Image.Image):
        return ImageSource("pil", value, value.size)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if not data:
            raise InputError("empty image bytes")
        _check_bytes_size(len(data))
        size = _open_image_header(io.BytesIO(data), "<bytes>") if check_files else None
        return ImageSource("bytes", data, size)
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if text.startswith(("http://", "https://")):
            return ImageSource("url", text)
        if text.startswith("data:"):
            data = decode_data_uri(text)
            size = _open_image_header(io.BytesIO(data), "<data URI>") if check_files else None
            return ImageSource("bytes", data, size)
        if not text.strip():
            raise InputError("empty image path")
        path = _resolve_local(text)
        size = None
        if check_files:
            _check_file(path)
            size = _open_image_header(path, str(path))
        return ImageSource("path", str(path.resolve()), size)
    raise InputError(
        f"unsupported image type {_type_name(value)}; pass a path, a file:// or http(s):// URL, a data URI, "
        "bytes or a PIL.Image.Image"
    )


def _video_source(value: Any, check_files: bool) -> VideoFileSource | FramesSource:
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise InputError("a video needs at least one frame (got an empty list)")
        return FramesSource(tuple(_image_source(frame, check_files) for frame in value))
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if text.startswith(("http://", "https://")):
            return VideoFileSource("url", text)
        if text.startswith("data:video/"):
            return VideoFileSource("data", text)
        if not text.strip():
            raise InputError("empty video path")
        path = _resolve_local(text)
        if check_files:
            _check_file(path)
            _probe_video(str(path))
        return VideoFileSource("path", str(path.resolve()))
    raise InputError(
        f"unsupported video type {_type_name(value)}; pass a file path, an http(s):// URL or a list of frames"
    )


def _check_file(path: Path) -> None:
    try:
        exists, is_file = path.exists(), path.is_file()
    except (OSError, ValueError) as exc:  # a name too long to be a path, a NUL byte, ...
        raise InputError(f"not a usable file path ({exc.__class__.__name__}): {str(path)[:80]}...") from None
    if not exists:
        raise InputError(f"file not found: {path}")
    if not is_file:
        raise InputError(f"not a file: {path}")


def _check_bytes_size(size: int) -> None:
    if size > MAX_DOWNLOAD_BYTES:
        raise InputError(f"media too large: {size} bytes (limit {MAX_DOWNLOAD_BYTES})")


def decode_data_uri(text: str, *, strict: bool = True) -> bytes:
    """The bytes of a base64 image ``data:`` URI, within MAX_DOWNLOAD_BYTES. ``strict``: only base64 characters
    (an input given to the API); else line breaks and spaces in it are skipped (as web pages write them)."""
    header, sep, payload = text.partition(",")
    if not sep:
        raise InputError("malformed data URI (no ',')")
    if not header.startswith("data:image"):
        raise InputError(f"data URI is not an image ({header[:40]!r})")
    if ";base64" not in header:
        raise InputError("only base64 data URIs are supported")
    try:
        data = base64.b64decode(payload, validate=strict)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"invalid base64 in data URI: {exc}") from None
    if not data:
        raise InputError("empty data URI")
    _check_bytes_size(len(data))
    return data


def _open_image_header(source: Any, name: str) -> tuple[int, int]:
    """Read the header only: format and size. Refuses non-images and decompression bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
    except Image.DecompressionBombError:  # Pillow refuses to open images past twice its own bound: over ours too
        raise _over_pillow_bound(name) from None
    except UnidentifiedImageError:
        raise InputError(f"not a readable image: {name}") from None
    except OSError as exc:
        raise InputError(f"cannot read image {name}: {exc}") from None
    _check_pixels(width, height, name)
    return width, height


def _over_pillow_bound(name: str) -> LimitError:
    over = 2 * (Image.MAX_IMAGE_PIXELS or MAX_IMAGE_PIXELS)
    return LimitError(
        f"image too large: {name} has more than {over} pixels (limit {MAX_IMAGE_PIXELS} at most, "
        "max_image_pixels); downscale it first",
        limit="max_image_pixels",
        value=over + 1,
        maximum=MAX_IMAGE_PIXELS,
    )


def _check_pixels(width: int, height: int, name: str, maximum: int = MAX_IMAGE_PIXELS) -> None:
    if width * height > maximum:
        raise LimitError(
            f"image too large: {name} is {width}x{height} = {width * height} pixels "
            f"(limit {maximum}, max_image_pixels); downscale it first",
            limit="max_image_pixels",
            value=width * height,
            maximum=maximum,
        )
    if width == 0 or height == 0:
        raise InputError(f"image has no pixels: {name} is {width}x{height}")


def _probe_video(path: str):
    """Read a video file's header (frame size, frame count, rate; no frame is decoded) and check it against the
    video limits (:mod:`retrieval_pipeline.media.video`). Returns its :class:`.video.VideoHeader`."""
    from .video import probe

    return probe(path)


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_input(
    parsed: ParsedInput,
    *,
    index: int | None = None,
    default_max_frames: int | None = None,
    timeout: float = URL_TIMEOUT,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> LoadedInput:
    """Decode the media of one parsed input. ``default_max_frames`` thins frame-list videos; an image over
    ``max_image_pixels`` (known once a URL is fetched) is refused before it is decoded."""
    try:
        load_image = functools.partial(_load_image_src, max_pixels=max_image_pixels)
        images = [_located(load_image, src, timeout, field="image") for src in parsed.images]
        max_frames = parsed.max_frames or default_max_frames
        videos = [_located(_load_video_src, (src, max_frames), timeout, field="video") for src in parsed.videos]
    except InputError as exc:
        raise exc.at(index) from None
    return LoadedInput(
        texts=list(parsed.texts),
        images=images,
        videos=videos,
        instruction=parsed.instruction,
        fps=parsed.fps,
        max_frames=parsed.max_frames,
        video_start=parsed.video_start,
        video_end=parsed.video_end,
    )


def _load_image_src(src: ImageSource, timeout: float, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    if src.kind == "pil":
        img = src.value
        _check_pixels(img.size[0], img.size[1], src.describe(), max_pixels)
        return to_rgb(_apply_exif(img))
    if src.kind == "path":
        _check_file(Path(src.value))
        return decode_image(Path(src.value), src.value, max_pixels)
    if src.kind == "bytes":
        return decode_image(io.BytesIO(src.value), src.describe(), max_pixels)
    if src.kind == "url":
        return decode_image(io.BytesIO(fetch_url(src.value, timeout)), src.value, max_pixels)
    raise AssertionError(src.kind)


def decode_image(
    source: Any, name: str, max_pixels: int = MAX_IMAGE_PIXELS, *, draft_pixels: int | None = None
) -> Image.Image:
    """Decode an image file or buffer to RGB (EXIF orientation applied; bombs refused before decoding).
    ``draft_pixels``: a JPEG larger than that is decoded at a reduced scale (1/2 to 1/8, the decoder's own), for
    display: a fraction of the memory and time."""
    try:
        with observe.stage("decode"), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                _check_pixels(img.size[0], img.size[1], name, max_pixels)
                if draft_pixels is not None and img.size[0] * img.size[1] > draft_pixels:
                    scale = (draft_pixels / (img.size[0] * img.size[1])) ** 0.5
                    img.draft("RGB", (max(1, int(img.size[0] * scale)), max(1, int(img.size[1] * scale))))
                img.load()
                img = _apply_exif(img)
                return to_rgb(img)
    except InputError:
        raise
    except Image.DecompressionBombError:  # Pillow refuses to open images past twice its own bound: over ours too
        raise _over_pillow_bound(name) from None
    except UnidentifiedImageError:
        raise InputError(f"not a readable image: {name}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"corrupt or truncated image {name}: {exc}") from None


def _apply_exif(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose the image
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to RGB the way the reference does it (alpha composited on white), plus 16-bit and float modes
    scaled to 8 bits instead of clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(img)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


# Rows converted at a time from 16/32-bit images: a float64 copy of a whole 80-megapixel scan is 650 MB.
_CONVERT_ROWS = 256


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float greyscale scaled to 8 bits (not clipped), a band of rows at a time."""
    arr = np.asarray(img)  # the image's own depth: 2 or 4 bytes per pixel
    top = 65535.0 if img.mode.startswith("I;16") or float(arr.max(initial=0)) > 255 else 255.0
    out = np.empty(arr.shape, dtype=np.uint8)
    for start in range(0, arr.shape[0], _CONVERT_ROWS):
        band = arr[start : start + _CONVERT_ROWS].astype(np.float64)
        out[start : start + _CONVERT_ROWS] = np.clip(np.round(band / top * 255.0), 0, 255)
    del arr
    return Image.fromarray(out, mode="L").convert("RGB")


def _load_video_src(arg: tuple[VideoFileSource | FramesSource, int | None], timeout: float):
    src, max_frames = arg
    if isinstance(src, FramesSource):
        frames = list(src.frames)
        if max_frames is not None and len(frames) > max_frames:
            # The reference thins a frame list to max_frames evenly spaced frames before loading it.
            keep = np.linspace(0, len(frames) - 1, max_frames, dtype=int).tolist()
            frames = [frames[i] for i in keep]
        images = []
        for i, frame in enumerate(frames):
            try:
                images.append(_load_image_src(frame, timeout))
            except InputError as exc:
                raise InputError(f"frame {i}: {exc.reason}") from None
        return same_size_frames(images)
    if src.kind == "url":
        path = download_video(src.value, timeout)
    elif src.kind == "data":
        path = video_from_data_uri(src.value)
    else:
        path = src.value
        _check_file(Path(path))
    _probe_video(path)
    return VideoFile(path)


def same_size_frames(frames: list[Image.Image]) -> list[Image.Image]:
    """Frames of a video must share one size: resize the others to the first frame's size (never drop)."""
    width, height = frames[0].size
    return [f if f.size == (width, height) else f.resize((width, height), Image.Resampling.BICUBIC) for f in frames]
