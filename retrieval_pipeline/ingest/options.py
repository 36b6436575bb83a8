"""How files are read into items (chunking, PDF pages, video segments, include / exclude, size limits)."""

from __future__ import annotations

from dataclasses import dataclass

from ..media.pdf import PDF_DPI

# Text chunks: about a page of prose each, overlapping so a sentence cut at a border is whole in one of them.
CHUNK_CHARS = 1200


CHUNK_OVERLAP = 200


# Largest text / Markdown file read (the whole file is decoded and chunked in memory: a 1 GB log took 2.9 GB and
# hours); `index --max-text-mb` changes it.
MAX_TEXT_BYTES = 64 * 1024 * 1024


# Largest document read, in pages (a PDF, an office document once converted): a larger one is refused before any
# page is rendered; `index --max-pages` changes it.
MAX_PAGES = 1000


# Watching folders (``--watch``): events gathered this long before they are looked at; a file unchanged this long
# after its last event is stable (indexed).
DEBOUNCE_MS = 300


SETTLE_S = 1.0


@dataclass(frozen=True)
class IngestOptions:
    recursive: bool = True
    include: tuple[str, ...] = ()  # glob patterns on file names or relative paths; empty = every supported file
    exclude: tuple[str, ...] = ()
    chunk_chars: int = CHUNK_CHARS
    chunk_overlap: int = CHUNK_OVERLAP
    video_segment_seconds: float | None = None  # None: a video is one item
    pdf_dpi: int = PDF_DPI
    pdf_max_pixels: int | None = None  # None: the embedder's max_pixels (else PDF_MAX_PIXELS)
    max_text_bytes: int = MAX_TEXT_BYTES  # a text / Markdown file larger than this is refused, not read
    max_pages: int = MAX_PAGES  # a document of more pages is refused, not rendered
    render_html: bool = False  # web pages also as Chromium renders them (pages of images), besides their text

    def __post_init__(self) -> None:
        if self.max_text_bytes < 1:
            raise ValueError("max_text_bytes must be positive")
        if self.max_pages < 1:
            raise ValueError("max_pages must be positive")
        if self.chunk_chars < 1 or not 0 <= self.chunk_overlap < self.chunk_chars:
            raise ValueError("need chunk_chars >= 1 and 0 <= chunk_overlap < chunk_chars")
        if self.video_segment_seconds is not None and self.video_segment_seconds <= 0:
            raise ValueError("video_segment_seconds must be positive")
        if self.pdf_dpi <= 0 or (self.pdf_max_pixels is not None and self.pdf_max_pixels < 1):
            raise ValueError("pdf_dpi and pdf_max_pixels must be positive")
