"""Media, before any model sees it: what a user passes is parsed and checked (:mod:`.inputs`), images decoded
(:mod:`.inputs`), videos probed, planned and decoded (:mod:`.video`), URLs fetched under an SSRF-safe policy
(:mod:`.fetch`) and downloads kept in a bounded cache (:mod:`.downloads`), each against the bounds in
:mod:`.limits`. No model code lives here (the token budget of a conversation's vision parts is
:mod:`retrieval_pipeline.models.vision`); importing this package does not load torch.

The names below were ``retrieval_pipeline.media``'s before it became a package and stay importable from here."""

from __future__ import annotations

from ..errors import InputError, LimitError
from .downloads import cleanup_downloads, download_video, fetch_url, video_cache_dir, video_container
from .inputs import (
    IMAGE_EXTENSIONS,
    KNOWN_FIELDS,
    SERVER_LIMITS,
    FramesSource,
    ImageLike,
    ImageSource,
    InputLike,
    InputLimits,
    LoadedInput,
    ParsedInput,
    VideoFile,
    VideoFileSource,
    check_text,
    decode_image,
    load_input,
    looks_like_frame,
    parse_input,
    parse_inputs,
    same_size_frames,
    source_pixels,
    to_rgb,
)
from .limits import MAX_DOWNLOAD_BYTES, MAX_IMAGE_PIXELS, URL_TIMEOUT

__all__ = [
    "IMAGE_EXTENSIONS",
    "KNOWN_FIELDS",
    "MAX_DOWNLOAD_BYTES",
    "MAX_IMAGE_PIXELS",
    "SERVER_LIMITS",
    "URL_TIMEOUT",
    "FramesSource",
    "ImageLike",
    "ImageSource",
    "InputError",
    "InputLike",
    "InputLimits",
    "LimitError",
    "LoadedInput",
    "ParsedInput",
    "VideoFile",
    "VideoFileSource",
    "check_text",
    "cleanup_downloads",
    "decode_image",
    "download_video",
    "fetch_url",
    "load_input",
    "looks_like_frame",
    "parse_input",
    "parse_inputs",
    "same_size_frames",
    "source_pixels",
    "to_rgb",
    "video_cache_dir",
    "video_container",
]
