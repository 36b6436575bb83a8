"""Ingestion: files and folders -> items -> vectors -> Qdrant, idempotent and resumable.

A file becomes one or more items (units): an image; a video (whole, or fixed-length segments); text and
Markdown in overlapping chunks; a PDF's pages, each rendered to an image (visual-document retrieval) with the
page's extracted text in the payload. Every unit's point id derives from its content and the model +
dimension, so indexing twice stores nothing new, and a run that was killed half way, started again, embeds only
what is missing.

Work is attributed file by file: anything that fails while reading, hashing, decoding, rendering, embedding or
storing one file's items (``MemoryError`` and odd file names included) is reported against that file, and the run
goes on; units are still embedded in groups across files for speed, and a group that fails is retried item by item
so that only the bad item's file is blamed.

What is hashed is what is embedded: images, text and PDFs are read once, the bytes read are hashed and the same
bytes are decoded; a video (decoded from its path by the video reader) is hashed through one open handle and its
(inode, size, mtime, ctime) are checked again after it was embedded -- a video that changed meanwhile fails and is
indexed by the next run.

A point lists every file that holds its content (``sources``; ``source`` is the first). When a file is indexed
again, the points that no longer come from it lose it (and are deleted when no other file holds them), so a
changed file's old text or image does not linger; ``prune`` does the same for files that are gone.
"""

from __future__ import annotations

from ..media.pdf import PDF_DPI, PDF_MAX_PIXELS, PDF_RENDER_PIXELS_CAP, PDF_RENDER_SIDE_CAP, pdf_render_scale
from .discover import PDF_EXTENSIONS, TEXT_EXTENSIONS, VIDEO_EXTENSIONS, discover, modality_of
from .indexer import BULK_LOAD_FILES, GROUP_SIZE, Indexer, dtype_name, embed_isolating
from .items import (
    Item,
    chunk_text,
    file_content_key,
    file_digest,
    indexed_file_hash,
    item_for_input,
    items_of_file,
    render_pdf,
    video_duration,
    work_estimate,
)
from .options import CHUNK_CHARS, CHUNK_OVERLAP, MAX_TEXT_BYTES, IngestOptions
from .report import Failure, IndexReport, ItemFailure, display_path

# version 0.2's names
Unit = Item
UnitFailure = ItemFailure
units_for_file = items_of_file
unit_for_item = item_for_input

__all__ = [
    "BULK_LOAD_FILES",
    "CHUNK_CHARS",
    "CHUNK_OVERLAP",
    "GROUP_SIZE",
    "MAX_TEXT_BYTES",
    "PDF_DPI",
    "PDF_EXTENSIONS",
    "PDF_MAX_PIXELS",
    "PDF_RENDER_PIXELS_CAP",
    "PDF_RENDER_SIDE_CAP",
    "TEXT_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Failure",
    "IndexReport",
    "Indexer",
    "IngestOptions",
    "Item",
    "ItemFailure",
    "chunk_text",
    "discover",
    "display_path",
    "dtype_name",
    "embed_isolating",
    "file_content_key",
    "file_digest",
    "indexed_file_hash",
    "modality_of",
    "pdf_render_scale",
    "render_pdf",
    "item_for_input",
    "items_of_file",
    "video_duration",
    "work_estimate",
]
