"""Media from URLs and data URIs: fetched under the current fetch policy; videos kept in a bounded per-process
cache folder on disk (the decoders read files), removed at exit."""

from __future__ import annotations

import atexit
import base64
import binascii
import hashlib
import os
import shutil
import tempfile
import threading
import time

from ..errors import InputError, LimitError
from .fetch import current_policy, fetch


def fetch_url(url: str, timeout: float) -> bytes:
    """GET ``url`` under the current :class:`~retrieval_pipeline.media.fetch.FetchPolicy`: checked addresses, no
    proxies, a total deadline of at most ``timeout`` seconds, a byte cap; every failure is an :class:`InputError`."""
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


def download_video(url: str, timeout: float) -> str:
    """Download a video URL once per process into the bounded cache; the container is checked before the body."""
    global _download_dir
    # keyed by the fetch policy too: a video cached by a permissive caller (the library, ingestion) is never served
    # to a request whose policy would not have fetched it
    key = hashlib.sha256(f"{current_policy()!r}\n{url}".encode()).hexdigest()[:32]
    with _download_lock:
        hit = _download_files.pop(key, None)
        if hit is not None and os.path.exists(hit[0]):
            _download_files[key] = (hit[0], hit[1], time.monotonic())
            return hit[0]
    data = fetch(url, timeout=timeout, head_check=video_container)
    return _cache_video(key, data)


def video_from_data_uri(uri: str) -> str:
    """A ``data:video/...;base64,`` URI's video, stored once in the bounded download cache (a remote client's
    local file, e.g. :class:`~retrieval_pipeline.client.RemoteReranker`); its container is checked first."""
    header, _, payload = uri.partition(",")
    if ";base64" not in header:
        raise InputError("a video data URI must be base64 encoded (data:video/mp4;base64,...)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InputError("the video data URI is not valid base64") from None
    video_container(data[:64])
    key = "data-" + hashlib.sha256(data).hexdigest()[:32]
    with _download_lock:
        hit = _download_files.get(key)
        if hit is not None and os.path.exists(hit[0]):
            _download_files[key] = (hit[0], hit[1], time.monotonic())
            return hit[0]
    return _cache_video(key, data)


def _cache_video(key: str, data: bytes) -> str:
    global _download_dir
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
