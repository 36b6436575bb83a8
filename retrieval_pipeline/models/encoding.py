"""From a loaded input to model-ready token ids and pixels: chat conversation, vision preprocessing, processor.

The conversation layout and the vision preprocessing are exactly the reference's (QwenLM/Qwen3-VL-Embedding,
``src/models``): content items carry the pixel budgets, qwen-vl-utils resizes and samples, and the checkpoint's
processor expands the vision placeholders. Each item is encoded on its own (no padding here); batching pads
them later, so the token ids of an item never depend on what it is batched with.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import unicodedata
from dataclasses import dataclass
from typing import Any

import torch

from ..media import InputError, LimitError, LoadedInput, ParsedInput, VideoFile
from .vision import fetch_vision, vision_tokens

# Qwen3-VL vision: 16-pixel patches, merged 2x2 -> one token per 32x32 pixels.
IMAGE_PATCH_SIZE = 16
IMAGE_FACTOR = IMAGE_PATCH_SIZE * 2
MIN_PIXELS = 4 * IMAGE_FACTOR * IMAGE_FACTOR  # at least 4 tokens per image
MAX_PIXELS = 1800 * IMAGE_FACTOR * IMAGE_FACTOR  # at most 1800 tokens per image
FRAME_MAX_PIXELS = 768 * IMAGE_FACTOR * IMAGE_FACTOR  # at most 768 tokens per video frame
TOTAL_PIXELS = 10 * FRAME_MAX_PIXELS  # budget of a whole frame-list video
FPS = 1.0
MAX_FRAMES = 64
NULL_TEXT = "NULL"  # the model's documented content for an empty input

RERANK_SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)


@dataclass(frozen=True)
class MediaSettings:
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    total_pixels: int = TOTAL_PIXELS
    fps: float = FPS
    max_frames: int = MAX_FRAMES

    def __post_init__(self) -> None:
        for name in ("min_pixels", "max_pixels", "total_pixels", "max_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_pixels < self.min_pixels:
            raise ValueError(f"max_pixels ({self.max_pixels}) must be >= min_pixels ({self.min_pixels})")
        if not 0 < self.fps < float("inf"):
            raise ValueError(f"fps must be a positive finite number, got {self.fps!r}")


@dataclass
class SharedVision:
    """Vision patches that lead several encoded items -- a rerank query's images and videos -- kept once instead
    of once per (query, document) pair (a full-size query image is ~44 MB of patches)."""

    pixel_values: torch.Tensor | None
    pixel_values_videos: torch.Tensor | None
    key: bytes


@dataclass
class Encoded:
    """One item, tokenised: ids plus the vision tensors its placeholder tokens stand for."""

    input_ids: torch.Tensor  # (L,) int64
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None  # (n_images, 3)
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None  # (n_videos, 3)
    key: bytes = b""
    shared: SharedVision | None = None  # patches that come before pixel_values / pixel_values_videos

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of this item's own tensors (shared patches not counted)."""
        tensors = (
            self.input_ids,
            self.pixel_values,
            self.image_grid_thw,
            self.pixel_values_videos,
            self.video_grid_thw,
        )
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def vision(self, name: str) -> torch.Tensor | None:
        """All of ``pixel_values`` or ``pixel_values_videos``: the shared leading patches, then the item's own."""
        own = getattr(self, name)
        head = getattr(self.shared, name) if self.shared is not None else None
        if head is None:
            return own
        return head if own is None else torch.cat([head, own])

    def share_leading(self, n_images: int, n_videos: int, shared: SharedVision | None) -> SharedVision | None:
        """Move the patches of the first ``n_images`` images and ``n_videos`` videos into ``shared`` (made from this
        item's own patches when None) and keep only the rest here. Returns the shared patches."""
        if not (n_images or n_videos):
            return shared
        cut = {}
        for name, grid, n in (
            ("pixel_values", self.image_grid_thw, n_images),
            ("pixel_values_videos", self.video_grid_thw, n_videos),
        ):
            cut[name] = int(grid[:n].prod(-1).sum()) if n and grid is not None else 0
        if shared is None:
            heads = {name: getattr(self, name)[:k].clone() if k else None for name, k in cut.items()}
            digest = hashlib.blake2b(digest_size=20)
            for t in heads.values():
                digest.update(_tensor_bytes(t))
            shared = SharedVision(heads["pixel_values"], heads["pixel_values_videos"], digest.digest())
        for name, k in cut.items():
            head = getattr(shared, name)
            if (head.shape[0] if head is not None else 0) != k:
                raise AssertionError(f"shared {name} of {k} patches expected")
            if k:
                own = getattr(self, name)
                setattr(self, name, own[k:].clone() if own.shape[0] > k else None)
        self.shared = shared
        return shared

    def compute_key(self) -> bytes:
        digest = hashlib.blake2b(digest_size=20)
        digest.update(self.shared.key if self.shared is not None else b"-")
        for tensor in (
            self.input_ids,
            self.pixel_values,
            self.image_grid_thw,
            self.pixel_values_videos,
            self.video_grid_thw,
        ):
            digest.update(_tensor_bytes(tensor))
        self.key = digest.digest()
        return self.key


def _tensor_bytes(tensor: torch.Tensor | None) -> bytes:
    if tensor is None:
        return b"-"
    t = tensor.detach().cpu().contiguous()
    head = str((t.dtype, tuple(t.shape))).encode()
    return head + (t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def image_tokens(width: int, height: int, media: MediaSettings, processor: Any = None) -> int:
    """Tokens an image of this stored size becomes: qwen-vl-utils' resize, then, given the ``processor``, its own
    expansion of the image placeholder (exact); without one, one token per 32x32 pixels plus the vision start/end
    tokens (an estimate)."""
    from qwen_vl_utils.vision_process import smart_resize

    try:
        h, w = smart_resize(
            height, width, factor=IMAGE_FACTOR, min_pixels=media.min_pixels, max_pixels=media.max_pixels
        )
    except ValueError as exc:  # an aspect ratio over 200
        raise InputError(f"image of {width}x{height} pixels: {exc}") from None
    if processor is not None:
        return vision_tokens(processor).image(h, w).tokens
    return h * w // (IMAGE_FACTOR * IMAGE_FACTOR) + 2


def estimate_tokens(parsed: ParsedInput, media: MediaSettings) -> int:
    """Tokens an input will take, from its structure and headers (before anything is decoded): images exactly
    when their size is known (else at ``max_pixels``), a video at its pixel budget, text at 3 characters a token
    (prose averages about 4)."""
    return estimate_text_tokens(parsed) + estimate_vision_tokens(parsed, media)


def estimate_text_tokens(parsed: ParsedInput) -> int:
    """Text tokens at 3 characters a token (see :func:`estimate_tokens`)."""
    return sum(len(t) // 3 + 1 for t in parsed.texts)


def estimate_vision_tokens(parsed: ParsedInput, media: MediaSettings) -> int:
    """Image and video tokens from the headers (see :func:`estimate_tokens`)."""
    tokens = 0
    for src in parsed.images:
        tokens += image_tokens(*src.size, media) if src.size else media.max_pixels // (IMAGE_FACTOR * IMAGE_FACTOR)
    return tokens + len(parsed.videos) * (media.total_pixels // (IMAGE_FACTOR * IMAGE_FACTOR) + 2)


def check_image_budget(parsed: ParsedInput, media: MediaSettings, max_length: int, processor: Any = None) -> None:
    """An input whose images alone need more than ``max_length`` tokens would fail after decoding them all (its
    vision tokens cannot be truncated): refuse it from the headers, before any pixel is decoded."""
    needed = sum(image_tokens(*src.size, media, processor) for src in parsed.images if src.size)
    if needed > max_length:
        raise LimitError(
            f"its {len(parsed.images)} images need {needed} tokens, more than max_length ({max_length}); send fewer "
            "or smaller images, or lower max_pixels",
            limit="max_length",
            value=needed,
            maximum=max_length,
            field="image",
        )


def with_punctuation(instruction: str) -> str:
    """The reference ends an embedding instruction with punctuation ('.' when missing)."""
    instruction = instruction.strip()
    if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
        instruction += "."
    return instruction


def content_items(item: LoadedInput, media: MediaSettings) -> list[dict[str, Any]]:
    """User-turn content: videos, then images, then texts (the reference's order); "NULL" when empty."""
    if not (item.texts or item.images or item.videos):
        return [{"type": "text", "text": NULL_TEXT}]
    content: list[dict[str, Any]] = []
    for video in item.videos:
        if isinstance(video, VideoFile):
            entry = {
                "type": "video",
                "video": video.path,
                "fps": item.fps or media.fps,
                "max_frames": item.max_frames or media.max_frames,
            }
            if item.video_start is not None:
                entry["video_start"] = item.video_start
            if item.video_end is not None:
                entry["video_end"] = item.video_end
            content.append(entry)
        else:
            content.append({"type": "video", "video": video, "total_pixels": media.total_pixels})
    for image in item.images:
        content.append(
            {"type": "image", "image": image, "min_pixels": media.min_pixels, "max_pixels": media.max_pixels}
        )
    for text in item.texts:
        content.append({"type": "text", "text": text})
    return content


def embedding_conversation(item: LoadedInput, media: MediaSettings, instruction: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": [{"type": "text", "text": with_punctuation(instruction)}]},
        {"role": "user", "content": content_items(item, media)},
    ]


def rerank_conversation(
    query: list[dict[str, Any]], document: list[dict[str, Any]], instruction: str
) -> list[dict[str, Any]]:
    """``query`` / ``document``: :func:`content_items` of each side."""
    content = [{"type": "text", "text": "<Instruct>: " + instruction}, {"type": "text", "text": "<Query>:"}]
    content += query
    content.append({"type": "text", "text": "\n<Document>:"})
    content += document
    return [
        {"role": "system", "content": [{"type": "text", "text": RERANK_SYSTEM_PROMPT}]},
        {"role": "user", "content": content},
    ]


def encode_conversation(
    processor: Any,
    conversation: list[dict[str, Any]],
    *,
    max_length: int | None,
    truncation: bool,
    text_budget: int | None = None,
    leading: tuple[SharedVision, torch.Tensor] | None = None,
) -> Encoded:
    """Chat template + qwen-vl-utils + processor on one conversation (as the reference does on a batch).

    ``leading``: the conversation's first images were encoded once beforehand (a rerank query's), and appear in
    it as ``{"type": "tokens"}`` items: their patches and grids (shared, not copied) lead this item's own.

    User text is tokenised as text (see :func:`tokenize_texts_as_text`): a document that quotes ``<|im_end|>`` or
    ``<|image_pad|>`` cannot forge the prompt's structure or its vision slots. ``text_budget`` (tokens) bounds the
    characters of each text that are tokenised at all (:data:`CHARS_PER_TOKEN_BOUND` per token): the tail past
    that could only be truncated away.
    """
    texts: list[str | list[int]] = []
    marked = _mark_texts(conversation, texts, _sentinel(processor)[0], text_budget)
    text = processor.apply_chat_template([marked], add_generation_prompt=True, tokenize=False)
    has_video = any(item.get("type") == "video" for turn in conversation for item in turn["content"])
    with VIDEO_SLOTS if has_video else contextlib.nullcontext():
        return _encode_marked(processor, conversation, texts, text, max_length, truncation, text_budget, leading)


# Conversations with videos are encoded at most this many at a time per process: their decoded frames and patches
# are the largest transient memory (up to ~0.6 GiB for a video within max_length), and threads preparing
# concurrent requests would otherwise multiply it.
VIDEO_SLOTS = threading.BoundedSemaphore(2)


def _encode_marked(
    processor: Any,
    conversation: list[dict[str, Any]],
    texts: list[str | list[int]],
    text: Any,
    max_length: int | None,
    truncation: bool,
    text_budget: int | None,
    leading: tuple[SharedVision, torch.Tensor] | None,
) -> Encoded:
    try:
        # qwen-vl-utils' process_vision_info, with video files read frame by frame and given a pixel budget when
        # the reference's plan would overflow the sequence (the embedder's max_length; the reranker's, which it
        # passes as text_budget). See retrieval_pipeline.models.vision.
        images, videos, video_kwargs = fetch_vision(
            conversation,
            processor,
            token_limit=max_length if max_length is not None else text_budget,
            truncation=truncation,
            prompt_ids=lambda: tokenize_texts_as_text(processor, processor.tokenizer(text)["input_ids"][0], texts),
        )
    except InputError:
        raise
    except Exception as exc:  # qwen-vl-utils: aspect ratio > 200, unreadable video, ...
        raise InputError(f"vision preprocessing failed: {exc}") from None
    video_metadata = None
    if videos is not None:
        videos, video_metadata = (list(x) for x in zip(*videos))
    kwargs: dict[str, Any] = {"truncation": False}
    if videos is not None and hasattr(processor.video_processor, "cap_pixels_per_frame"):
        # qwen-vl-utils already sized the frames (do_resize=False): the processor's own per-frame cap, which only
        # acts when it resizes, is off, as in the reference (saying so explicitly silences its warning).
        kwargs["cap_pixels_per_frame"] = False
    out = processor(
        text=text,
        images=images,
        videos=videos,
        video_metadata=video_metadata,
        padding=False,
        do_resize=False,
        return_tensors="pt",
        **kwargs,
        **video_kwargs,
    )
    ids = tokenize_texts_as_text(processor, out["input_ids"][0].tolist(), texts)
    if truncation and max_length is not None and len(ids) > max_length:
        ids = ids[:max_length]  # the processor's truncation=True: keep the first max_length tokens
    enc = Encoded(
        input_ids=torch.tensor(ids, dtype=torch.long),
        pixel_values=out.get("pixel_values"),
        image_grid_thw=out.get("image_grid_thw"),
        pixel_values_videos=out.get("pixel_values_videos"),
        video_grid_thw=out.get("video_grid_thw"),
    )
    if leading is not None:
        shared, grids = leading
        enc.shared = shared
        own = enc.image_grid_thw
        enc.image_grid_thw = grids if own is None else torch.cat([grids, own])
    check_vision_tokens(enc, processor)
    return enc


# A text longer than this many characters per token of budget cannot fit: its tail is never tokenised. (Qwen's
# byte-level BPE tokens average about 4 characters of prose; 64 leaves room for long runs of spaces or symbols.)
CHARS_PER_TOKEN_BOUND = 64
# Special tokens that stand in for user texts while the template and the processor run (none of them occurs in a
# Qwen3-VL prompt of this project; the first the checkpoint's tokenizer knows is used).
SENTINEL_CANDIDATES = ("<|box_start|>", "<|object_ref_start|>", "<|quad_start|>", "<|box_end|>")


def _sentinel(processor: Any) -> tuple[str, int, Any]:
    """(sentinel token, its id, a private copy of the tokenizer that encodes special-token strings as text)."""
    cached = getattr(processor, "_rag_text_tokenizer", None)
    if cached is not None:
        return cached
    import tokenizers

    tokenizer = processor.tokenizer
    special = set(tokenizer.all_special_ids)
    vocab = tokenizer.get_vocab()
    for token in SENTINEL_CANDIDATES:
        if vocab.get(token) in special:
            break
    else:  # pragma: no cover - every Qwen3-VL tokenizer has them
        raise ValueError("the tokenizer has none of the special tokens used to mark user text")
    # A copy of the backend: `split_special_tokens=True` on the shared tokenizer flips a flag that concurrent
    # calls (the processor's own) would see.
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.encode_special_tokens = True
    cached = (token, vocab[token], backend)
    processor._rag_text_tokenizer = cached
    return cached


def _mark_texts(
    conversation: list[dict[str, Any]], texts: list[str | list[int]], sentinel: str, text_budget: int | None
) -> list[dict[str, Any]]:
    """The conversation with every text item -- and every already-tokenised ``{"type": "tokens", "ids"}`` item --
    replaced by ``sentinel``; their texts (or id lists) are appended to ``texts``."""
    limit = None if text_budget is None else max(1, text_budget) * CHARS_PER_TOKEN_BOUND
    marked = []
    for turn in conversation:
        content = []
        for item in turn["content"]:
            if item.get("type") == "text":
                text = item["text"]
                texts.append(text if limit is None or len(text) <= limit else text[:limit])
                item = {"type": "text", "text": sentinel}
            elif item.get("type") == "tokens":
                texts.append(list(item["ids"]))
                item = {"type": "text", "text": sentinel}
            content.append(item)
        marked.append({**turn, "content": content})
    return marked


def tokenize_texts_as_text(processor: Any, ids: list[int], texts: list[str | list[int]]) -> list[int]:
    """Put the user texts back in place of their sentinels, tokenised as text.

    The tokenizer splits a prompt at special tokens and tokenises each stretch between them on its own. Each
    stretch that holds sentinels is decoded, the texts are put in, and it is tokenised again with special-token
    strings read as plain text. For a text without such strings the ids are exactly the reference's (the
    stretches are the same); with them, ``<|im_end|>`` in a document is characters, counted against the limits.
    An id list (an already-encoded vision block, which starts and ends with special tokens) goes in as it is.
    """
    sentinel, sentinel_id, backend = _sentinel(processor)
    special = set(processor.tokenizer.all_special_ids) - {sentinel_id}
    out: list[int] = []
    stretch: list[int] = []
    next_text = iter(texts)

    def flush() -> None:
        if sentinel_id not in stretch:
            out.extend(stretch)
        else:
            pieces: list[str] = []
            run: list[int] = []
            for t in stretch:
                if t == sentinel_id:
                    pieces.append(backend.decode(run, skip_special_tokens=False))
                    run = []
                    item = next(next_text)
                    if isinstance(item, str):
                        pieces.append(item)
                    else:  # ids bounded by special tokens: the text on either side is tokenised apart
                        encode_pieces(pieces)
                        out.extend(item)
                else:
                    run.append(t)
            pieces.append(backend.decode(run, skip_special_tokens=False))
            encode_pieces(pieces)
        stretch.clear()

    def encode_pieces(pieces: list[str]) -> None:
        text = "".join(pieces)
        pieces.clear()
        if not text:
            return
        try:
            out.extend(backend.encode(text, add_special_tokens=False).ids)
        except Exception as exc:  # not valid Unicode (a lone surrogate), ...
            raise InputError(f"text cannot be tokenised: {exc}", field="text") from None

    for t in ids:
        if t in special:
            flush()
            out.append(t)
        else:
            stretch.append(t)
    flush()
    return out


def encode_images_once(processor: Any, images: list[Any]) -> tuple[SharedVision, torch.Tensor, list[list[int]]]:
    """Images already sized by qwen-vl-utils -> (their patches, kept once; their grids; each one's token block
    ``<|vision_start|> <|image_pad|> x n <|vision_end|>``): what the processor makes of them inside any prompt."""
    out = processor.image_processor(images=images, do_resize=False, return_tensors="pt")
    pixels, grids = out["pixel_values"], out["image_grid_thw"]
    merge = processor.image_processor.merge_size**2
    blocks = [
        [processor.vision_start_token_id]
        + [processor.image_token_id] * int(g.prod() // merge)
        + [processor.vision_end_token_id]
        for g in grids
    ]
    shared = SharedVision(pixels, None, b"")
    digest = hashlib.blake2b(digest_size=20)
    digest.update(_tensor_bytes(pixels))
    digest.update(_tensor_bytes(grids))
    shared.key = digest.digest()
    return shared, grids, blocks


def check_vision_tokens(enc: Encoded, processor: Any) -> None:
    """Truncation must never cut into an image or a video: a clear error instead of a model crash."""
    merge = processor.image_processor.merge_size**2
    for grid, token, kind in (
        (enc.image_grid_thw, processor.image_token_id, "image"),
        (enc.video_grid_thw, processor.video_token_id, "video"),
    ):
        expected = 0 if grid is None else int((grid.prod(-1) // merge).sum())
        found = int((enc.input_ids == token).sum())
        if found != expected:
            raise InputError(
                f"input is longer than max_length: its {kind} tokens were truncated ({found} of {expected} "
                "kept); raise max_length or lower max_pixels / total_pixels / max_frames"
            )


def truncate_keep_special(ids: list[int], max_length: int, special_ids: set[int]) -> list[int]:
    """The reranker's truncation: keep every special token, drop the non-special ones past the budget."""
    if len(ids) <= max_length:
        return ids
    budget = max_length - sum(1 for t in ids if t in special_ids)
    out = []
    for t in ids:
        if t in special_ids:
            out.append(t)
        elif budget > 0:
            out.append(t)
            budget -= 1
    return out
