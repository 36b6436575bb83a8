"""Pages of any document the project renders -- a PDF, an office document (through its cached PDF), either one
inside a mail or an archive -- and where the words of a query are on a page (its text layer's boxes)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .pdf import PDF_DPI, PDF_MAX_PIXELS, PDFIUM_LOCK, render_pdf_page

# A page's text kept with its point (BM25, snippets, the generator's context): at most this many characters.
PAGE_TEXT_CHARS = 20_000
# Highlights: at most this many query terms, and this many boxes per term on one page.
MAX_HIGHLIGHT_TERMS = 16
MAX_BOXES_PER_TERM = 64
# Words too common to be worth a box.
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were what when where "
    "which who why will with how do does did can could should would about into than then there these those".split()
)


def document_pdf(source: str | Path, member: str | None = None) -> Path:
    """The PDF file whose pages a ``pdf-page`` point numbers: the file itself, an office document's converted PDF
    (cached), or a PDF / office member extracted from its mail or archive (cached)."""
    from .containers import extracted, split_member
    from .office import converted_pdf, is_office

    if member:
        # the member's bytes are extracted once per version of its file (not inflated again for every thumbnail),
        # into a cache file named by their SHA-256, which is also what its conversion is cached by
        copy = extracted(source, member)
        name = split_member(member)[-1].partition("=")[2]
        if is_office(name):
            return converted_pdf(copy.read_bytes(), Path(name).suffix, copy.stem)
        if is_web(name):
            return _rendered(name, copy.read_bytes(), None)
        return copy
    if is_office(str(source)):
        return converted_pdf(Path(source).read_bytes(), Path(source).suffix)
    if is_web(str(source)):
        return _rendered(str(source), Path(source).read_bytes(), Path(source).parent)
    return Path(source)


def is_web(name: str) -> bool:
    from .web import HTML_EXTENSIONS, MHTML_EXTENSIONS

    return Path(name).suffix.lower() in HTML_EXTENSIONS | MHTML_EXTENSIONS


def _rendered(name: str, data: bytes, folder: Path | None) -> Path:
    """A web page's pages (``index --render-html``): its rendered PDF, from the cache or rendered again. The cache
    is keyed by the page file's own SHA-256 (an MHTML file's, though its HTML part is what is rendered)."""
    import hashlib

    from .browser import rendered_pdf
    from .web import MHTML_EXTENSIONS, read_mhtml

    digest = hashlib.sha256(data).hexdigest()
    if Path(name).suffix.lower() in MHTML_EXTENSIONS:
        data, folder = read_mhtml(data)[0], None
    return rendered_pdf(data, folder, digest)


def render_document_page(
    source: str | Path,
    page: int,
    dpi: int = PDF_DPI,
    *,
    member: str | None = None,
    max_pixels: int = PDF_MAX_PIXELS,
) -> Any:
    """Page ``page`` (1-based) of the document as a PIL image (see :func:`document_pdf`)."""
    return render_pdf_page(document_pdf(source, member), page, dpi, max_pixels=max_pixels)


def query_terms(query: str) -> list[str]:
    """The words of a query worth highlighting: unique (case-insensitively), in order, stopwords left out."""
    seen: set[str] = set()
    terms = []
    for word in re.findall(r"\w[\w\-./]*\w|\w", query or ""):
        key = word.casefold()
        if key in seen or key in STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        seen.add(key)
        terms.append(word)
    return terms[:MAX_HIGHLIGHT_TERMS]


def page_highlights(pdf_path: str | Path, page: int, terms: list[str]) -> list[dict[str, Any]]:
    """Where each of ``terms`` is on page ``page`` (1-based) of the PDF: ``[{"term": ..., "boxes": [[x0, y0, x1,
    y1], ...]}]`` in page-relative coordinates (0..1, origin top-left), for the terms found (case-insensitive).
    A page without a text layer (a scan) has none."""
    import pypdfium2 as pdfium

    out: list[dict[str, Any]] = []
    if not terms:
        return out
    with PDFIUM_LOCK:
        pdf = pdfium.PdfDocument(str(pdf_path))
        try:
            if not 1 <= page <= len(pdf):
                return out
            pdf_page = pdf[page - 1]
            textpage = pdf_page.get_textpage()
            try:
                left, bottom, right, top = pdf_page.get_bbox()
                width, height = (right - left) or 1.0, (top - bottom) or 1.0
                for term in terms:
                    boxes: list[list[float]] = []
                    searcher = textpage.search(term, match_case=False, match_whole_word=False)
                    try:
                        while len(boxes) < MAX_BOXES_PER_TERM:
                            found = searcher.get_next()
                            if found is None:
                                break
                            start, count = found
                            for i in range(textpage.count_rects(start, count)):
                                x0, y0, x1, y1 = textpage.get_rect(i)
                                boxes.append(
                                    [
                                        _unit((x0 - left) / width),
                                        _unit((top - y1) / height),
                                        _unit((x1 - left) / width),
                                        _unit((top - y0) / height),
                                    ]
                                )
                    finally:
                        searcher.close()
                    if boxes:
                        out.append({"term": term, "boxes": boxes[:MAX_BOXES_PER_TERM]})
            finally:
                textpage.close()
                pdf_page.close()
        finally:
            pdf.close()
    return out


def _unit(value: float) -> float:
    return round(min(1.0, max(0.0, value)), 4)


def snippet(text: str, query: str, chars: int = 240) -> str:
    """The part of ``text`` around the first query term it contains (its start when none), about ``chars`` long."""
    if not text:
        return ""
    lowered = text.casefold()
    positions = [lowered.find(t.casefold()) for t in query_terms(query)]
    hits = [p for p in positions if p >= 0]
    if not hits:
        return " ".join(text[:chars].split())
    first = min(hits)
    start = max(0, first - chars // 3)
    if start:
        space = text.find(" ", start, first)
        start = space + 1 if space != -1 else start
    piece = " ".join(text[start : start + chars].split())
    return ("… " if start else "") + piece + (" …" if start + chars < len(text) else "")
