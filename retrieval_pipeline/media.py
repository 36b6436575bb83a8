"""Inputs: normalise what a user passes, load and validate the media, fail with a clear error.

An input is a plain ``str`` (text), a ``PIL.Image.Image`` (image) or a multimodal object: a dict with any of
``text`` (str or list of str), ``image`` (one image or a list), ``video`` (a file / URL, a list of frames, or a
list of videos) and optional ``instruction``, ``fps``, ``max_frames``. An empty dict is the model's "NULL" input.

Work happens in two steps so that a bad item is found before any model work:

* :func:`parse_input` checks types and fields, resolves paths (a missing file fails here) and reads image
  headers (a decompression bomb or a non-image fails here) -- cheap, no pixel decoding.
* :func:`load_input` decodes the media into RGB ``PIL`` images / video references that the vision preprocessing
  of the reference (qwen-vl-utils) consumes.

Every failure is an :class:`InputError` naming the item's index, the field and the reason. Nothing is ever
replaced by a placeholder (the reference silently embeds the text "NULL" for an input it cannot load).
"""

from __future__ import annotations

import atexit
import base64
import binascii
import hashlib
import io
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Default request timeout (seconds) for http(s) media.
URL_TIMEOUT = 30.0
# Refuse images above this many pixels before decoding them: Pillow's own decompression-bomb threshold.
MAX_IMAGE_PIXELS = 89_478_485
# Refuse downloads (and raw byte inputs) above this size.
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024

# File extensions that mark a string in a ``video`` list as a frame rather than a video (as the reference does).
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tiff", ".tif", ".svg"}
KNOWN_FIELDS = {"text", "image", "video", "instruction", "fps", "max_frames", "video_start", "video_end"}

ImageLike = str | os.PathLike | bytes | bytearray | memoryview | Image.Image
InputLike = str | Image.Image | dict


class InputError(ValueError):
    """A bad input: names the item (``index``), the ``field`` and the ``reason``."""

    def __init__(self, reason: str, *, index: int | None = None, field: str | None = None, kind: str = "input"):
        self.reason = reason
        self.index = index
        self.field = field
        self.kind = kind
        where = []
        if index is not None:
            where.append(f"{kind} {index}")
        elif kind != "input":
            where.append(kind)
        if field:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)

    def at(self, index: int | str | None = None, field: str | None = None, kind: str | None = None) -> InputError:
        """The same error located at ``index`` / ``field`` (keeps what is already known)."""
        return InputError(
            self.reason,
            index=self.index if self.index is not None else index,
            field=self.field or field,
            kind=kind or self.kind,
        )


class LimitError(InputError):
    """An input (or request) over a resource limit: ``limit`` names the setting, ``value`` what was asked for and
    ``maximum`` the allowed amount. Servers answer 413; the message says which limit and how to change it."""

    def __init__(
        self,
        reason: str,
        *,
        limit: str,
        value: float | int | None = None,
        maximum: float | int | None = None,
        index: int | None = None,
        field: str | None = None,
        kind: str = "input",
    ):
        self.limit = limit
        self.value = value
        self.maximum = maximum
        super().__init__(reason, index=index, field=field, kind=kind)

    def at(self, index: int | str | None = None, field: str | None = None, kind: str | None = None) -> LimitError:
        return LimitError(
            self.reason,
            limit=self.limit,
            value=self.value,
            maximum=self.maximum,
            index=self.index if self.index is not None else index,
            field=self.field or field,
            kind=kind or self.kind,
        )


# --------------------------------------------------------------------------------------------------------------
# Parsed (not yet decoded) inputs


@dataclass(frozen=True)
class ImageSource:
    kind: str  # "path" | "url" | "bytes" | "pil"
    value: Any

    def describe(self) -> str:
        if self.kind in ("path", "url"):
            return str(self.value)
        if self.kind == "bytes":
            return f"<{len(self.value)} bytes>"
        return f"<PIL.Image {self.value.mode} {self.value.size[0]}x{self.value.size[1]}>"


@dataclass(frozen=True)
class VideoFileSource:
    kind: str  # "path" | "url"
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
    """A video file on local disk, read by qwen-vl-utils with ``fps`` / ``max_frames`` sampling."""

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


def parse_inputs(inputs: Sequence[InputLike], **kwargs: Any) -> list[ParsedInput]:
    """Parse a list of inputs; raise :class:`InputError` (with the index) at the first bad one."""
    if isinstance(inputs, (str, dict, Image.Image)) or not isinstance(inputs, Sequence):
        raise InputError(f"expected a list of inputs, got {type(inputs).__name__}")
    if len(inputs) == 0:
        raise InputError("the input list is empty")
    return [parse_input(item, index=i, **kwargs) for i, item in enumerate(inputs)]


def parse_input(obj: InputLike, *, index: int | None = None, check_files: bool = True) -> ParsedInput:
    """Check one input's structure and resolve its media sources (no decoding)."""
    try:
        return _parse(obj, check_files=check_files)
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
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
            raise InputError(f"expected a positive number, got {fps!r}", field="fps")
        parsed.fps = float(fps)
    max_frames = obj.get("max_frames")
    if max_frames is not None:
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
            raise InputError(f"expected a positive int, got {max_frames!r}", field="max_frames")
        parsed.max_frames = max_frames
    for name in ("video_start", "video_end"):
        value = obj.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InputError(f"expected a number of seconds >= 0, got {value!r}", field=name)
            setattr(parsed, name, float(value))
    if parsed.video_start is not None and parsed.video_end is not None and parsed.video_end <= parsed.video_start:
        raise InputError(
            f"video_end ({parsed.video_end}) must be after video_start ({parsed.video_start})", field="video_end"
        )
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


def _looks_like_frame(value: Any) -> bool:
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
        if _looks_like_frame(video[0]):
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
        return ImageSource("pil", value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if not data:
            raise InputError("empty image bytes")
        _check_bytes_size(len(data))
        if check_files:
            _open_image_header(io.BytesIO(data), "<bytes>")
        return ImageSource("bytes", data)
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if text.startswith(("http://", "https://")):
            return ImageSource("url", text)
        if text.startswith("data:"):
            data = _decode_data_uri(text)
            if check_files:
                _open_image_header(io.BytesIO(data), "<data URI>")
            return ImageSource("bytes", data)
        if not text.strip():
            raise InputError("empty image path")
        path = _resolve_local(text)
        if check_files:
            _check_file(path)
            _open_image_header(path, str(path))
        return ImageSource("path", str(path.resolve()))
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


def _decode_data_uri(text: str) -> bytes:
    header, sep, payload = text.partition(",")
    if not sep:
        raise InputError("malformed data URI (no ',')")
    if not header.startswith("data:image"):
        raise InputError(f"data URI is not an image ({header[:40]!r})")
    if ";base64" not in header:
        raise InputError("only base64 data URIs are supported")
    try:
        data = base64.b64decode(payload, validate=True)
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
    except Image.DecompressionBombError as exc:
        raise InputError(f"image refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise InputError(f"not a readable image: {name}") from None
    except OSError as exc:
        raise InputError(f"cannot read image {name}: {exc}") from None
    _check_pixels(width, height, name)
    return width, height


def _check_pixels(width: int, height: int, name: str) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"image too large: {name} is {width}x{height} = {width * height} pixels "
            f"(limit {MAX_IMAGE_PIXELS}); downscale it first"
        )
    if width == 0 or height == 0:
        raise InputError(f"image has no pixels: {name} is {width}x{height}")


def _probe_video(path: str) -> None:
    """Open a video file and check it has frames (header and index only)."""
    try:
        import decord
    except ImportError as exc:  # pragma: no cover - decord is a declared dependency
        raise InputError(f"reading video files needs decord ({exc})") from None
    try:
        reader = decord.VideoReader(path)
        frames = len(reader)
        fps = reader.get_avg_fps()
    except Exception as exc:  # decord raises its own DECORDError / RuntimeError
        raise InputError(f"unreadable video {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if frames == 0:
        raise InputError(f"video has no frames: {path}")
    if not fps or fps <= 0:
        raise InputError(f"video has no frame rate: {path}")


# --------------------------------------------------------------------------------------------------------------
# Loading


def load_input(
    parsed: ParsedInput,
    *,
    index: int | None = None,
    default_max_frames: int | None = None,
    timeout: float = URL_TIMEOUT,
) -> LoadedInput:
    """Decode the media of one parsed input. ``default_max_frames`` thins frame-list videos."""
    try:
        images = [_located(_load_image_src, src, timeout, field="image") for src in parsed.images]
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


def _load_image_src(src: ImageSource, timeout: float) -> Image.Image:
    if src.kind == "pil":
        img = src.value
        _check_pixels(img.size[0], img.size[1], src.describe())
        return to_rgb(_apply_exif(img))
    if src.kind == "path":
        _check_file(Path(src.value))
        return decode_image(Path(src.value), src.value)
    if src.kind == "bytes":
        return decode_image(io.BytesIO(src.value), src.describe())
    if src.kind == "url":
        return decode_image(io.BytesIO(fetch_url(src.value, timeout)), src.value)
    raise AssertionError(src.kind)


def decode_image(source: Any, name: str) -> Image.Image:
    """Decode an image file or buffer to RGB (EXIF orientation applied; bombs refused before decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                _check_pixels(img.size[0], img.size[1], name)
                img.load()
                img = _apply_exif(img)
                return to_rgb(img)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"image refused as a decompression bomb: {exc}") from None
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
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


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
        path = _download_video(src.value, timeout)
    else:
        path = src.value
        _check_file(Path(path))
    _probe_video(path)
    return VideoFile(path)


def same_size_frames(frames: list[Image.Image]) -> list[Image.Image]:
    """Frames of a video must share one size: resize the others to the first frame's size (never drop)."""
    width, height = frames[0].size
    return [f if f.size == (width, height) else f.resize((width, height), Image.Resampling.BICUBIC) for f in frames]


def fetch_url(url: str, timeout: float) -> bytes:
    """GET ``url`` under the current :class:`~retrieval_pipeline.netfetch.FetchPolicy`: checked addresses, no
    proxies, a total deadline of at most ``timeout`` seconds, a byte cap; every failure is an :class:`InputError`."""
    from .netfetch import fetch

    return fetch(url, timeout=timeout)


# Videos from URLs are read from disk: a per-process cache folder, at most VIDEO_CACHE_BYTES (least recently used
# files evicted, except those used in the last VIDEO_CACHE_PIN seconds), removed at exit (``serve`` also on SIGTERM).
VIDEO_CACHE_BYTES = 1024 * 1024 * 1024
VIDEO_CACHE_PIN = 600.0
_download_dir: str | None = None
_download_lock = threading.Lock()
_download_files: dict[str, tuple[str, int, float]] = {}  # url key -> (path, size, last use), oldest use first


def video_container(head: bytes) -> str:
    """The file suffix of a self-contained video container recognised by its first bytes, else InputError.
    Playlists (HLS ``#EXTM3U``, DASH XML), concat lists and anything else that can name other files are refused."""
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return ".mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return ".mkv"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return ".avi"
    raise InputError(
        "not a self-contained video file (MP4/MOV, WebM/Matroska or AVI); playlists and other formats are refused"
    )


def _download_video(url: str, timeout: float) -> str:
    """Download a video URL once per process into the bounded cache; the container is checked before the body."""
    from .netfetch import fetch

    global _download_dir
    key = hashlib.sha256(url.encode()).hexdigest()[:32]
    with _download_lock:
        hit = _download_files.pop(key, None)
        if hit is not None and os.path.exists(hit[0]):
            _download_files[key] = (hit[0], hit[1], time.monotonic())
            return hit[0]
    data = fetch(url, timeout=timeout, head_check=video_container)
    suffix = video_container(data[:64])
    with _download_lock:
        if _download_dir is None or not os.path.isdir(_download_dir):
            _download_dir = tempfile.mkdtemp(prefix=f"qwen3vl-rag-videos-{os.getpid()}-")
            atexit.register(cleanup_downloads)
        _make_room(len(data))
        path = os.path.join(_download_dir, key + suffix)
        tmp = path + ".part"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        _download_files[key] = (path, len(data), time.monotonic())
    return path


def _make_room(size: int) -> None:
    """Evict least recently used videos until ``size`` more bytes fit (caller holds the lock)."""
    total = sum(entry[1] for entry in _download_files.values())
    now = time.monotonic()
    for key, (path, used_size, used_at) in list(_download_files.items()):
        if total + size <= VIDEO_CACHE_BYTES:
            break
        if now - used_at < VIDEO_CACHE_PIN:
            continue  # possibly still being decoded
        del _download_files[key]
        total -= used_size
        try:
            os.remove(path)
        except OSError:
            pass
    if total + size > VIDEO_CACHE_BYTES:
        raise LimitError(
            f"the video download cache is full ({total} of {VIDEO_CACHE_BYTES} bytes in use); try again later",
            limit="video_cache_bytes",
            value=total + size,
            maximum=VIDEO_CACHE_BYTES,
        )


def video_cache_dir() -> str | None:
    """The folder of downloaded videos of this process (None before the first download)."""
    return _download_dir


def cleanup_downloads() -> None:
    """Remove the video download cache (registered with atexit; ``serve`` also calls it on SIGTERM)."""
    global _download_dir
    with _download_lock:
        if _download_dir is not None:
            shutil.rmtree(_download_dir, ignore_errors=True)
        _download_dir = None
        _download_files.clear()
