"""Files and given inputs -> items: what is embedded, its content key (identity) and the record to store.

What is hashed is what is embedded: images, text and PDFs are read once, the bytes read are hashed and the same
bytes are decoded; a video (decoded from its path by the video reader) is hashed through one open handle and its
(inode, size, mtime, ctime) are checked again after it was embedded -- a video that changed meanwhile fails and is
indexed by the next run."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from ..media import MAX_DOWNLOAD_BYTES, InputError, parse_input
from ..media.browser import rendered_pdf
from ..media.containers import MAX_DEPTH, Budget, Member, read_mail, store_bytes, zip_members
from ..media.documents import PAGE_TEXT_CHARS
from ..media.office import converted_pdf, is_spreadsheet
from ..media.pdf import PDF_DPI, PDF_MAX_PIXELS, PDFIUM_LOCK, render_page
from ..media.text import decode_text
from ..media.web import MAX_PAGE_IMAGES, MHTML_EXTENSIONS, read_html, read_mhtml
from ..records import Record
from ..settings import PIXELS_PER_TOKEN
from ..store import CollectionSpec, point_id
from .discover import modality_of
from .options import CHUNK_CHARS, CHUNK_OVERLAP, IngestOptions
from .report import ItemFailure, _reason, display_path

# The progress bar's guess of an office document's pages before it is converted (bytes per page).
OFFICE_BYTES_PER_PAGE = 30_000


@dataclass
class Item:
    """One item to embed: ``content_key`` (identity), the embedder ``input`` and the ``record`` to store.

    ``verify`` (optional) is called after the item was embedded and before it is stored: it raises
    :class:`InputError` when the file the item was read from changed meanwhile."""

    content_key: str
    input: Any
    record: Record
    verify: Callable[[], None] | None = None
    file: int | None = field(default=None, repr=False)  # the file's place in the run (None: given directly)
    seq: int = 0  # the item's place in its file


def work_estimate(path: Path, options: IngestOptions, media: Any = None) -> int:
    """Roughly how many model tokens a file will cost (for the progress bar's time estimate: an image is worth
    hundreds of text lines). Reads headers only; a file it cannot read counts as one token."""
    max_tokens = max(1, int(getattr(media, "max_pixels", 0) or PDF_MAX_PIXELS) // PIXELS_PER_TOKEN)
    video_tokens = max(1, int(getattr(media, "total_pixels", 0) or 10 * 768 * PIXELS_PER_TOKEN) // PIXELS_PER_TOKEN)
    try:
        modality = modality_of(path)
        if modality == "text":
            return max(1, path.stat().st_size // 3)
        if modality == "image":
            with Image.open(path) as img:
                return max(1, min(img.width * img.height // PIXELS_PER_TOKEN, max_tokens))
        if modality == "pdf":
            import pypdfium2 as pdfium

            with PDFIUM_LOCK:
                pdf = pdfium.PdfDocument(str(path))
                try:
                    return len(pdf) * max_tokens
                finally:
                    pdf.close()
        if modality == "office":  # pages are known after conversion only: a guess from the size
            return max(1, path.stat().st_size // OFFICE_BYTES_PER_PAGE) * max_tokens
        if modality in ("web", "mail", "archive"):  # text and markup, attachments and entries: by size
            return max(1, path.stat().st_size // 3)
        if modality == "video":
            if options.video_segment_seconds:
                from ..media.video import probe

                duration = probe(os.fspath(path)).duration or options.video_segment_seconds
                return video_tokens * max(1, int(duration // options.video_segment_seconds) + 1)
            return video_tokens
    except Exception:  # noqa: BLE001 - an estimate only: the file's real failure is reported when it is read
        return 1
    return 1


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_file(path: Path, limit: int | None = None) -> bytes:
    """The file's bytes, read once (what is hashed is what is decoded). Empty files are an error."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if limit is not None and size > limit:
            raise InputError(f"file too large: {size} bytes (limit {limit})")
        data = fh.read() if limit is None else fh.read(limit + 1)
    if not data:
        raise InputError("empty file (0 bytes)")
    if limit is not None and len(data) > limit:
        raise InputError(f"file too large: more than {limit} bytes (limit {limit})")
    return data


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_open_file(path: Path) -> tuple[str, tuple[int, ...]]:
    """(sha256, stamp) of a file read through one handle; refuses a file that changed while it was read."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        before = _stamp(os.fstat(fh.fileno()))
        if before[2] == 0:
            raise InputError("empty file (0 bytes)")
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
        if _stamp(os.fstat(fh.fileno())) != before:
            raise InputError("the file changed while it was being read (index it again)")
    return digest.hexdigest(), before


def _unchanged(path: Path, stamp: tuple[int, ...]) -> Callable[[], None]:
    def verify() -> None:
        try:
            now = _stamp(os.stat(path))
        except OSError:
            now = ()
        if now != stamp:
            raise InputError("the file changed while it was being indexed (index it again)")

    return verify


def chunk_text(text: str, size: int = CHUNK_CHARS, overlap: int = CHUNK_OVERLAP) -> list[tuple[int, int]]:
    """Character spans of overlapping chunks, cut at whitespace where possible."""
    spans: list[tuple[int, int]] = []
    n = len(text)
    start = 0
    while start < n:
        while start < n and text[start].isspace():
            start += 1
        if start >= n:
            break
        end = min(n, start + size)
        if end < n:
            cut = max(text.rfind("\n\n", start + size // 2, end), text.rfind(" ", start + size // 2, end))
            if cut > start:
                end = cut
        spans.append((start, end))
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        space = text.find(" ", nxt, end)
        start = space + 1 if space != -1 else nxt
    return spans


def read_file(
    path: Path, options: IngestOptions, metadata: Mapping[str, Any], spec: CollectionSpec
) -> Iterator[tuple[int, Item | ItemFailure, str]]:
    """A file's items in order, as (place in the file, item, point id). A part that fails on its own (a PDF page)
    is a :class:`ItemFailure` and the rest goes on; the file failing while it is read (``MemoryError``, ``OSError``,
    ``UnicodeError``, ...) ends it with a :class:`ItemFailure` naming the file, after the items read before."""
    units = items_of_file(path, options, metadata)
    seq = 0
    while True:
        try:
            unit = next(units)
            pid = "" if isinstance(unit, ItemFailure) else point_id(unit.content_key, spec)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - this file only
            units.close()
            yield seq, ItemFailure(display_path(path), _reason(exc)), ""
            return
        yield seq, unit, pid
        seq += 1


def items_of_file(
    path: Path, options: IngestOptions, metadata: Mapping[str, Any]
) -> Generator[Item | ItemFailure, None, None]:
    """The items of one file. Raises :class:`InputError` (or OSError, MemoryError, ...) when it cannot be read."""
    kind = modality_of(path)
    source = os.fspath(path)
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("the file name is not valid UTF-8 (the store keeps names as UTF-8 text): rename it") from None
    base = Record("", source=source, file_name=path.name, metadata=dict(metadata))
    if kind is None:
        raise InputError(f"unsupported file type {path.suffix or '(none)'!r}")
    if kind == "video":  # decoded from its path by the video reader
        yield from _video_items(path, options, base)
        return
    data = _read_file(path, options.max_text_bytes if kind == "text" else MAX_DOWNLOAD_BYTES)
    yield from _items_of_bytes(path.name, data, base, options, folder=path.parent, budget=Budget())


def _items_of_bytes(
    name: str,
    data: bytes,
    base: Record,
    options: IngestOptions,
    *,
    folder: Path | None = None,
    member: str | None = None,
    depth: int = 0,
    budget: Budget | None = None,
) -> Iterator[Item | ItemFailure]:
    """The items of a file's bytes (the file itself, or one of its members: ``member`` says where). ``folder``:
    where the file lies on disk (a web page's images are read from beside it); None for a member. ``budget``: what
    the archives of the whole file may still inflate."""
    budget = budget or Budget()
    kind = modality_of(Path(name))
    base = replace(base, member=member)
    if kind == "image":
        digest = hashlib.sha256(data).hexdigest()
        yield Item(file_content_key(digest), {"image": data}, replace(base, modality="image"))
    elif kind == "text":
        if len(data) > options.max_text_bytes:
            raise InputError(f"text too large: {len(data)} bytes (limit {options.max_text_bytes})")
        text, encoding = decode_text(data)
        yield from _text_items(text, replace(base, encoding=encoding), options)
    elif kind == "pdf":
        yield from _page_items(data, hashlib.sha256(data).hexdigest(), base, options)
    elif kind == "office":
        digest = hashlib.sha256(data).hexdigest()
        pdf = converted_pdf(data, Path(name).suffix, digest).read_bytes()
        yield from _page_items(pdf, digest, base, options, sheets=is_spreadsheet(name))
    elif kind == "video":  # a video inside a mail or an archive: the decoder reads it from the cache
        digest = hashlib.sha256(data).hexdigest()
        cached = store_bytes(data, Path(name).suffix.lower())
        yield from _video_items(cached, options, base, digest=digest)
    elif kind == "web":
        yield from _web_items(name, data, base, options, folder, depth, budget)
    elif kind == "mail":
        mail = read_mail(data)
        headed = replace(base, metadata={**mail.headers, **(base.metadata or {})})
        text = "\n".join(f"{k.capitalize()}: {v}" for k, v in mail.headers.items() if k != "date")
        if mail.body:
            text += "\n\n" + mail.body
        yield from _text_items(text, headed, options)
        for problem in mail.problems:  # reported against the mail; what could be read is indexed
            yield ItemFailure(display_path(headed.describe(chunk=False)), problem)
        yield from _member_items(mail.members, headed, options, member, depth, budget)
    elif kind == "archive":
        entries = zip_members(data, budget, wanted=lambda n: modality_of(Path(n)) is not None)
        yield from _member_items(entries, base, options, member, depth, budget)
    else:
        where = display_path(base.describe(chunk=False))
        yield ItemFailure(where, f"unsupported file type {Path(name).suffix or '(none)'!r}", skipped=True)


def _text_items(text: str, base: Record, options: IngestOptions) -> Iterator[Item]:
    for i, (a, b) in enumerate(chunk_text(text, options.chunk_chars, options.chunk_overlap)):
        chunk = text[a:b]
        key = hashlib.sha256(chunk.encode()).hexdigest()
        yield Item(f"text:{key}", {"text": chunk}, replace(base, modality="text", text=chunk, chunk=i, span=[a, b]))


def _page_items(
    pdf: bytes, digest: str, base: Record, options: IngestOptions, *, sheets: bool = False
) -> Iterator[Item | ItemFailure]:
    """A PDF's pages (an office document's: ``digest`` is the document's, not its PDF's), each with its text layer
    (at most PAGE_TEXT_CHARS) and, for a spreadsheet, the sheet the page shows."""
    max_pixels = options.pdf_max_pixels or PDF_MAX_PIXELS
    names = sheet_names(pdf) if sheets else {}
    rendered = render_pdf(pdf, options.pdf_dpi, max_pixels=max_pixels, skip_bad_pages=True, max_pages=options.max_pages)
    for page_number, image, text in rendered:
        sheet = next((names[p] for p in sorted(names, reverse=True) if p <= page_number), None)
        record = replace(base, modality="pdf-page", text=text[:PAGE_TEXT_CHARS], page=page_number, sheet=sheet)
        if image is None:  # this page failed (text holds the reason); the others go on
            yield ItemFailure(display_path(record.describe(chunk=False)), text)
            continue
        yield Item(file_content_key(digest, page=page_number), {"image": image}, record)


def _web_items(
    name: str,
    data: bytes,
    base: Record,
    options: IngestOptions,
    folder: Path | None,
    depth: int,
    budget: Budget,
) -> Iterator[Item | ItemFailure]:
    """A web page's main text (chunked, the title first), then its images as members (those past the limit
    reported as skipped), then -- with ``render_html`` -- the page as Chromium prints it."""
    where = display_path(base.describe(chunk=False))
    if Path(name).suffix.lower() in MHTML_EXTENSIONS:
        html, parts, left_out = read_mhtml(data)
        images = [Member(f"part={n}", n, b) for n, b in parts]
        page = read_html(html, None)
    else:
        html = data
        page = read_html(data, None if base.member else folder)
        images = [Member(i.step, i.name, i.data, i.error, i.path) for i in page.images]
        left_out = page.left_out
    text = page.text if not page.title or page.text.startswith(page.title) else f"{page.title}\n\n{page.text}"
    yield from _text_items(text, base, options)
    yield from _member_items(images, base, options, base.member, depth, budget)
    if left_out:
        yield ItemFailure(where, f"{left_out} more images than the {MAX_PAGE_IMAGES} read", skipped=True)
    if options.render_html:  # the page as a reader sees it: Chromium's print, page by page (scripts run, offline)
        digest = hashlib.sha256(data).hexdigest()
        pdf = rendered_pdf(html, None if base.member else folder, digest).read_bytes()
        yield from _page_items(pdf, digest, base, options)


def _member_items(
    members: Iterable[Member],
    base: Record,
    options: IngestOptions,
    member: str | None,
    depth: int,
    budget: Budget,
) -> Iterator[Item | ItemFailure]:
    """The items of a container's members, each under its member path; a member that cannot be read fails alone."""
    for part in members:
        path = f"{member}#{part.step}" if member else part.step
        where = display_path(f"{base.source}#{path}")
        if part.skipped:
            yield ItemFailure(where, part.error or "not read", skipped=True)
            continue
        if part.data is None and part.path is None:
            yield ItemFailure(where, part.error or "unreadable")
            continue
        if depth + 1 > MAX_DEPTH:
            yield ItemFailure(where, f"nested more than {MAX_DEPTH} deep (mail and archives inside each other)")
            continue
        try:
            data = part.read() or b""
            if not data:
                yield ItemFailure(where, "empty (0 bytes)")
                continue
            yield from _items_of_bytes(part.name, data, base, options, member=path, depth=depth + 1, budget=budget)
        except Exception as exc:  # noqa: BLE001 - this member only; the container's other members go on
            yield ItemFailure(where, _reason(exc))


def sheet_names(pdf: bytes) -> dict[int, str]:
    """First page -> sheet name, from the bookmarks LibreOffice writes for a spreadsheet's sheets."""
    import pypdfium2 as pdfium

    names: dict[int, str] = {}
    with PDFIUM_LOCK:
        try:
            doc = pdfium.PdfDocument(pdf)
        except Exception:  # noqa: BLE001 - render_pdf reports an unreadable PDF
            return names
        try:
            for bookmark in doc.get_toc(max_depth=1):
                dest = bookmark.get_dest()
                index = dest.get_index() if dest is not None else None
                if index is not None and index + 1 not in names:
                    names[index + 1] = bookmark.get_title()
        except Exception:  # noqa: BLE001 - no usable outline: pages without sheet names
            names = {}
        finally:
            doc.close()
    return names


def file_content_key(digest: str, *, page: int | None = None, segment: Sequence[float] | None = None) -> str:
    """The content key of an item read from a file whose bytes hash to ``digest``: the file, one page of it or
    one segment of it. (A point's ``content_hash`` is the SHA-256 of this key: the server checks with it that a
    file it shows is still the one indexed.)"""
    if page is not None:
        return f"{digest}:page={page}"
    if segment:
        return f"{digest}:{segment[0]:.3f}-{segment[1]:.3f}"
    return digest


def indexed_file_hash(payload: Mapping[str, Any], digest: str) -> str:
    """What ``content_hash`` a point read from a file whose bytes hash to ``digest`` has."""
    page = payload.get("page") if payload.get("modality") == "pdf-page" else None
    segment = payload.get("segment") if payload.get("modality") == "video" else None
    return hashlib.sha256(file_content_key(digest, page=page, segment=segment).encode()).hexdigest()


def _video_items(path: Path, options: IngestOptions, base: Record, *, digest: str | None = None) -> Iterator[Item]:
    """A video as one unit, or as fixed-length segments (``video_segment_seconds``). ``digest``: a video extracted
    from a mail or an archive into the cache (its bytes already hashed; nothing to verify afterwards)."""
    source = os.fspath(path)
    verify: Callable[[], None] | None = None
    if digest is None:
        digest, stamp = _hash_open_file(path)
        verify = _unchanged(path, stamp)
    duration = video_duration(path)
    step = options.video_segment_seconds
    if step is None or duration <= step:
        record = replace(base, modality="video", duration=duration)
        yield Item(file_content_key(digest), {"video": source}, record, verify)
        return
    start = 0.0
    while start < duration:
        end = min(duration, start + step)
        if end - start < min(1.0, step):  # a sliver at the end joins nothing; too short to sample
            break
        segment = {"video": source, "video_start": start, "video_end": end}
        record = replace(base, modality="video", segment=[start, end], duration=duration)
        yield Item(file_content_key(digest, segment=(start, end)), segment, record, verify)
        start = end


def _render_page(pdf: Any, index: int, dpi: int, max_pixels: int) -> tuple[Image.Image, str]:
    with PDFIUM_LOCK:
        return render_page(pdf, index, dpi, max_pixels, with_text=True)


def video_duration(path: Path) -> float:
    import decord

    from ..media.video import native_stderr_to_log

    try:
        with native_stderr_to_log():
            reader = decord.VideoReader(str(path))
        frames, fps = len(reader), reader.get_avg_fps()
    except Exception as exc:
        raise InputError(f"unreadable video: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    if frames == 0 or not fps:
        raise InputError("video has no frames")
    return frames / fps


def render_pdf(
    source: str | Path | bytes,
    dpi: int = PDF_DPI,
    *,
    max_pixels: int = PDF_MAX_PIXELS,
    skip_bad_pages: bool = False,
    max_pages: int | None = None,
) -> Iterator[tuple[int, Image.Image | None, str]]:
    """(1-based page number, page image, page text) for each page, rendered lazily at :func:`pdf_render_scale`.

    ``source`` is a path or the file's bytes. A page that cannot be rendered raises, or with ``skip_bad_pages``
    comes as ``(page number, None, the reason)`` and the next pages follow. A document of more than ``max_pages``
    pages is refused before any page is rendered."""
    import pypdfium2 as pdfium

    with PDFIUM_LOCK:  # held for each pdfium call, never across a yield (see PDFIUM_LOCK)
        try:
            pdf = pdfium.PdfDocument(source if isinstance(source, bytes) else str(source))
        except Exception as exc:  # pdfium raises PdfiumError for corrupt / encrypted files
            raise InputError(f"unreadable PDF: {exc}") from None
        pages = len(pdf)
    try:
        if pages == 0:
            raise InputError("PDF has no pages")
        if max_pages is not None and pages > max_pages:
            raise InputError(f"document has {pages} pages (limit {max_pages}; index --max-pages raises it)")
        for index in range(pages):
            try:
                image, text = _render_page(pdf, index, dpi, max_pixels)
            except Exception as exc:  # noqa: BLE001 - this page only: a damaged page object, a page too large
                if not skip_bad_pages:
                    raise
                yield index + 1, None, _reason(exc)
                continue
            yield index + 1, image, text
    finally:
        with PDFIUM_LOCK:
            pdf.close()


def item_for_input(item: Any, metadata: Mapping[str, Any] | None = None) -> Item:
    """A unit for an item given directly (str or a multimodal dict with paths / URLs): API and integrations."""
    parse_input(item)  # structural check, clear error
    if isinstance(item, str):
        item = {"text": item}
    if not isinstance(item, dict):
        raise InputError(f"items to index must be str or dict (JSON-storable), got {type(item).__name__}")
    kinds = [k for k in ("text", "image", "video") if item.get(k) is not None]
    modality = kinds[0] if len(kinds) == 1 else "mixed"
    try:
        canonical = json.dumps(item, sort_keys=True)
    except TypeError:
        raise InputError("items to index must be JSON-storable (paths or URLs, not PIL images)") from None
    parts = [canonical]
    for key in ("image", "video"):
        for ref in _refs(item.get(key)):
            if isinstance(ref, str) and os.path.isfile(ref):
                parts.append(file_digest(Path(ref)))
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()
    text = item.get("text")
    record = Record(
        modality,
        source=_first_ref(item) or "",
        text=" ".join(text) if isinstance(text, list) else (text or ""),
        metadata=dict(metadata or {}),
    )
    if modality == "mixed" or set(item) - {"text", "image", "video"} or isinstance(item.get(kinds[0]), list):
        record.modality = "mixed"
        record.item = item
    return Item(f"item:{key}", item, record)


def _refs(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return [value]


def _first_ref(item: Mapping[str, Any]) -> str | None:
    for key in ("image", "video"):
        refs = _refs(item.get(key))
        if refs and isinstance(refs[0], str):
            return refs[0]
    return None


def _where(unit: Item, pid: str) -> str:
    return display_path(unit.record.describe(chunk=False)) if unit.record.source else f"item {pid}"
