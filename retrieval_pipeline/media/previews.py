"""What a person sees of an item: a thumbnail or a bounded full view of an image, a rendered PDF page or a video's
poster frame, and a neutral placeholder card when the source is gone. Every file is read through the same checked
decoders as ingestion (a file swapped for a decompression bomb since indexing is refused before decoding)."""

from __future__ import annotations

import io
import os
from functools import lru_cache
from typing import Any

# What a full view shows of a large image, at most (pixels; aspect kept).
MEDIA_PIXELS = 16 * 1024 * 1024


def jpeg(image: Any, side: int) -> bytes:
    image = image.convert("RGB")
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=82)
    return out.getvalue()


def png(image: Any) -> bytes:
    out = io.BytesIO()
    bounded(image.convert("RGB")).save(out, format="PNG")
    return out.getvalue()


def bounded(image: Any) -> Any:
    """At most :data:`MEDIA_PIXELS` pixels (aspect kept): what a page shows of a large image."""
    pixels = image.size[0] * image.size[1]
    if pixels > MEDIA_PIXELS:
        scale = (MEDIA_PIXELS / pixels) ** 0.5
        image.thumbnail((max(1, int(image.size[0] * scale)), max(1, int(image.size[1] * scale))))
    return image


@lru_cache(maxsize=8)
def placeholder(side: int, modality: str) -> bytes:
    """A neutral grey card with the modality's name: what a grid shows when the source is gone."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side * 3 // 4), (224, 224, 228))
    draw = ImageDraw.Draw(image)
    draw.rectangle([4, 4, image.width - 5, image.height - 5], outline=(160, 160, 168), width=2)
    draw.text((14, image.height // 2 - 6), f"{modality}: unavailable", fill=(90, 90, 96))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


def poster_frame(path: str, start: float) -> Any:
    """The frame at ``start`` seconds (a video segment's poster), decoded alone after the header checks."""
    import decord
    from PIL import Image

    from .video import native_stderr_to_log, probe

    header = probe(path)  # size / length limits first: a hostile file is refused before decoding
    with native_stderr_to_log():
        reader = decord.VideoReader(path, num_threads=1)
        index = min(max(0, int(start * header.fps)), max(0, len(reader) - 1))
        frame = reader[index].asnumpy()
    return Image.fromarray(frame)


def visual(
    modality: str | None, path: str, *, page: int = 1, start: float = 0.0, full: bool, member: str | None = None
) -> Any:
    """An item as a PIL image (None for text): the image, the rendered page (1-based ``page`` of a PDF or an office
    document), the poster frame at ``start`` seconds. ``member``: the item is inside the file at ``path`` (a mail's
    attachment, an archive's entry). ``full``: the viewer's size, else a thumbnail's."""
    from .containers import extracted
    from .documents import render_document_page
    from .inputs import decode_image

    if modality == "pdf-page":
        return render_document_page(path, page, dpi=144 if full else 48, member=member)
    if member and modality in ("image", "video"):
        path = str(extracted(path, member))
    if modality == "image":
        # the ingestion decoder: a file swapped for a decompression bomb since indexing is refused before decoding;
        # a large JPEG is decoded at a reduced scale (what is shown is at most MEDIA_PIXELS anyway)
        return decode_image(path, os.path.basename(path), draft_pixels=MEDIA_PIXELS)
    if modality == "video":
        return poster_frame(path, start)
    return None
