"""The one PDF page renderer (indexing, previews, the reranker's page images), with the lock every use of pdfium
holds and the bounds a page is rendered within (decided from the page size the document declares, before
rendering)."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..settings import PIXELS_PER_TOKEN

# PDF pages are rendered at this resolution at most ...
PDF_DPI = 144
# ... and at most at the embedder's pixel budget (it downsizes every image to ``max_pixels`` anyway; rendering
# beyond that only costs memory): the scale is chosen from the page size read from the document before rendering.
PDF_MAX_PIXELS = 1800 * PIXELS_PER_TOKEN
# Hard caps on one rendered page, whatever ``max_pixels`` says: pixels (64 MiB as RGBA) and pixels per side.
PDF_RENDER_PIXELS_CAP = 4096 * 4096
# pdfium is not thread-safe (two renders at once corrupt its heap and kill the process): every use of it in this
# package, ingestion, reranking and the server's thumbnails alike, holds this lock.
PDFIUM_LOCK = threading.RLock()
PDF_RENDER_SIDE_CAP = 32768


def pdf_render_scale(
    width_pt: float, height_pt: float, dpi: float = PDF_DPI, max_pixels: int = PDF_MAX_PIXELS, page: int = 0
) -> float:
    """The scale (pixels per PDF point) to render a page at: ``dpi`` at most, and at most about ``max_pixels``
    pixels (never above :data:`PDF_RENDER_PIXELS_CAP`, nor :data:`PDF_RENDER_SIDE_CAP` pixels on a side), from the
    page size the document declares -- a 1 KB PDF with a 14,400 pt page renders as small as any other page."""
    where = f"page {page}: " if page else ""
    if not (math.isfinite(width_pt) and math.isfinite(height_pt) and width_pt > 0 and height_pt > 0):
        raise InputError(f"{where}invalid page size {width_pt!r} x {height_pt!r} pt")
    budget = min(max_pixels, PDF_RENDER_PIXELS_CAP)
    scale = min(dpi / 72, math.sqrt(budget / (width_pt * height_pt)), PDF_RENDER_SIDE_CAP / max(width_pt, height_pt))
    if width_pt * scale < 1 or height_pt * scale < 1:
        raise InputError(f"{where}page of {width_pt:g} x {height_pt:g} pt is too elongated to render")
    return scale


def render_pdf_page(path: str | Path, page_number: int, dpi: int = PDF_DPI, *, max_pixels: int = PDF_MAX_PIXELS) -> Any:
    """One page (1-based) of the PDF at ``path`` as a PIL image, rendered at :func:`pdf_render_scale`. A file that
    pdfium cannot read is an :class:`InputError` (the reranker skips such a hit; a thumbnail gets a placeholder)."""
    import pypdfium2 as pdfium

    shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    with PDFIUM_LOCK:
        try:
            pdf = pdfium.PdfDocument(str(path))
        except Exception as exc:  # PdfiumError: corrupt, truncated, encrypted
            raise InputError(f"unreadable PDF {shown}: {exc}") from None
        try:
            if not 1 <= page_number <= len(pdf):
                raise InputError(f"{shown} has no page {page_number}")
            return render_page(pdf, page_number - 1, dpi, max_pixels)[0]
        finally:
            pdf.close()


def render_page(pdf: Any, index: int, dpi: int, max_pixels: int, *, with_text: bool = False) -> tuple[Any, str]:
    """The one page renderer (indexing, previews, the reranker's page images): page ``index`` (0-based) of an
    open ``pypdfium2.PdfDocument`` at :func:`pdf_render_scale`, as an RGB PIL image, with the page's text when
    asked. The caller holds :data:`PDFIUM_LOCK`."""
    width_pt, height_pt = pdf.get_page_size(index)
    scale = pdf_render_scale(width_pt, height_pt, dpi, max_pixels, page=index + 1)
    page = pdf[index]
    try:
        image = page.render(scale=scale).to_pil().convert("RGB")
        text = ""
        if with_text:
            textpage = page.get_textpage()
            text = textpage.get_text_bounded().replace("\r\n", "\n").strip()
            textpage.close()
    finally:
        page.close()
    return image, text
