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

import collections
import contextlib
import fnmatch
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from .layout import VectorLayout
from .media import IMAGE_EXTENSIONS, MAX_DOWNLOAD_BYTES, InputError, parse_input
from .records import (  # noqa: F401 - pdf_render_scale and the PDF constants are part of this module's API
    PDF_DPI,
    PDF_MAX_PIXELS,
    PDF_RENDER_PIXELS_CAP,
    PDF_RENDER_SIDE_CAP,
    PDFIUM_LOCK,
    Record,
    pdf_render_scale,
    render_page,
    sources_of,
    sources_update,
)
from .store import CollectionSpec, Point, StoreError, VectorStore, model_fingerprint, point_id

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg"}
TEXT_EXTENSIONS = {".txt", ".md", ".markdown", ".rst", ".text"}
PDF_EXTENSIONS = {".pdf"}
# Text chunks: about a page of prose each, overlapping so a sentence cut at a border is whole in one of them.
CHUNK_CHARS = 1200
CHUNK_OVERLAP = 200
# Runs over at least this many files upload in the store's bulk-load mode (a server defers its HNSW build).
BULK_LOAD_FILES = 1000
# Units embedded and upserted together (also the unit of resumption after an interruption).
GROUP_SIZE = 32


@dataclass
class Unit:
    """One item to embed: ``content_key`` (identity), the embedder ``input`` and the ``record`` to store.

    ``verify`` (optional) is called after the item was embedded and before it is stored: it raises
    :class:`InputError` when the file the item was read from changed meanwhile."""

    content_key: str
    input: Any
    record: Record
    verify: Callable[[], None] | None = None
    file: _FileState | None = field(default=None, repr=False)
    seq: int = 0  # the unit's place in its file


@dataclass
class Failure:
    source: str
    reason: str


@dataclass
class UnitFailure:
    """A part of a file that failed on its own (a PDF page that cannot be rendered): reported under ``where``
    while the file's other parts are indexed."""

    where: str
    reason: str


@dataclass
class IndexReport:
    indexed: int = 0
    present: int = 0
    failed: list[Failure] = field(default_factory=list)
    skipped: list[Failure] = field(default_factory=list)
    files: int = 0
    replaced: int = 0  # points that changed files no longer hold (deleted, or kept for their other sources)
    pruned: int = 0  # points deleted by ``prune`` (their files are gone)
    pruned_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ok(self) -> bool:
        """False when something failed and nothing was indexed or found present: the run did nothing useful."""
        return not (self.failed and not self.indexed and not self.present)

    def summary(self) -> str:
        text = (
            f"{self.indexed} items indexed, {self.present} already present, "
            f"{len(self.failed)} failed, {len(self.skipped)} skipped"
        )
        if self.files:  # items given directly (a dataset's corpus) come from no file
            text = f"{self.files} files: {text}"
        if self.replaced:
            text += f", {self.replaced} outdated items replaced"
        if self.pruned or self.pruned_files:
            text += f", {self.pruned} items of {len(self.pruned_files)} removed files pruned"
        lines = [text] + [f"  failed  {f.source}: {f.reason}" for f in self.failed]
        lines += [f"  skipped {f.source}: {f.reason}" for f in self.skipped]
        lines += [f"  pruned  {name}" for name in self.pruned_files]
        return "\n".join(lines)


@dataclass
class _FileState:
    """One file's progress through a run: its point ids, its units still in flight, whether it failed."""

    path: Path
    source: str
    index: int = 0  # the file's place in the run
    ids: set[str] = field(default_factory=set)
    claimed: set[str] = field(default_factory=set)  # points whose per-file fields this file has set in this run
    units: int = 0
    pending: int = 0
    done: bool = False
    failed: bool = False
    finished: bool = False

    @property
    def label(self) -> str:
        return display_path(self.source)


# Largest text / Markdown file read (the whole file is decoded and chunked in memory: a 1 GB log took 2.9 GB and
# hours); `index --max-text-mb` changes it.
MAX_TEXT_BYTES = 64 * 1024 * 1024


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

    def __post_init__(self) -> None:
        if self.max_text_bytes < 1:
            raise ValueError("max_text_bytes must be positive")
        if self.chunk_chars < 1 or not 0 <= self.chunk_overlap < self.chunk_chars:
            raise ValueError("need chunk_chars >= 1 and 0 <= chunk_overlap < chunk_chars")
        if self.video_segment_seconds is not None and self.video_segment_seconds <= 0:
            raise ValueError("video_segment_seconds must be positive")
        if self.pdf_dpi <= 0 or (self.pdf_max_pixels is not None and self.pdf_max_pixels < 1):
            raise ValueError("pdf_dpi and pdf_max_pixels must be positive")


def display_path(path: str | os.PathLike) -> str:
    """A file name that can be printed and stored as UTF-8 (undecodable bytes shown as ``\\xNN``)."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def modality_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in TEXT_EXTENSIONS:
        return "text"
    if suffix in PDF_EXTENSIONS:
        return "pdf"
    return None


def _progress(done: int, files: int, report: IndexReport) -> str:
    return f"{done}/{files} files, {report.indexed} indexed, {report.present} present, {len(report.failed)} failed"


def work_estimate(path: Path, options: IngestOptions, media: Any = None) -> int:
    """Roughly how many model tokens a file will cost (for the progress bar's time estimate: an image is worth
    hundreds of text lines). Reads headers only; a file it cannot read counts as one token."""
    max_tokens = max(1, int(getattr(media, "max_pixels", 0) or PDF_MAX_PIXELS) // 1024)
    video_tokens = max(1, int(getattr(media, "total_pixels", 0) or 10 * 768 * 1024) // 1024)
    try:
        modality = modality_of(path)
        if modality == "text":
            return max(1, path.stat().st_size // 3)
        if modality == "image":
            with Image.open(path) as img:
                return max(1, min(img.width * img.height // 1024, max_tokens))
        if modality == "pdf":
            import pypdfium2 as pdfium

            with PDFIUM_LOCK:
                pdf = pdfium.PdfDocument(str(path))
                try:
                    return len(pdf) * max_tokens
                finally:
                    pdf.close()
        if modality == "video":
            if options.video_segment_seconds:
                from .media.video import probe

                duration = probe(os.fspath(path)).duration or options.video_segment_seconds
                return video_tokens * max(1, int(duration // options.video_segment_seconds) + 1)
            return video_tokens
    except Exception:  # noqa: BLE001 - an estimate only: the file's real failure is reported when it is read
        return 1
    return 1


def discover(paths: Sequence[str | Path], options: IngestOptions) -> tuple[list[Path], list[Failure], list[Failure]]:
    """(files under ``paths``, sorted and de-duplicated; missing paths as failures; skipped links).

    Symbolic links are followed, to files and to folders alike, and a file found through a link is indexed under
    the link's path (the folder's own name for it: deleting the link and ``--prune`` removes it). A link to a folder
    the walk has already entered (a loop, or a second way to the same folder) is skipped and reported, as is a
    dangling link. The root paths given are resolved; nothing below them is."""
    files: list[Path] = []
    missing: list[Failure] = []
    skipped: list[Failure] = []
    for raw in paths:
        given = Path(raw).expanduser()
        try:
            if given.is_file():
                files.append(given.resolve())
            elif given.is_dir():
                _walk(given.resolve(), options, files, skipped)
            elif given.is_symlink():
                missing.append(Failure(display_path(given), "a link to nothing (its target does not exist)"))
            else:
                missing.append(Failure(display_path(given), "no such file or folder"))
        except OSError as exc:  # a name longer than the system allows, a folder we may not enter, ...
            missing.append(Failure(display_path(given), exc.strerror or str(exc)))
    seen: set[Path] = set()
    unique = [f for f in files if not (f in seen or seen.add(f))]
    return unique, missing, skipped


def _walk(root: Path, options: IngestOptions, files: list[Path], skipped: list[Failure]) -> None:
    """Files under ``root`` (hidden ones left out; ``include`` / ``exclude`` on the name or the relative path),
    following links with a guard: each real folder is entered once."""
    entered: dict[tuple[int, int], Path] = {}
    found: list[Path] = []
    # Folders reached without a link are entered first, links to folders after them: a folder is indexed under its
    # own path, and a link that leads to it (or to an ancestor: a loop) is the one skipped.
    real, linked = collections.deque([root]), collections.deque()
    while real or linked:
        folder = real.popleft() if real else linked.popleft()
        st = folder.stat()
        first = entered.get((st.st_dev, st.st_ino))
        if first is not None:  # a link loop, or a second way to one folder
            skipped.append(Failure(display_path(folder), f"the same folder as {display_path(first)}, indexed once"))
            continue
        entered[(st.st_dev, st.st_ino)] = folder
        try:
            children = sorted(folder.iterdir())
        except OSError as exc:
            skipped.append(Failure(display_path(folder), f"cannot list the folder: {exc.strerror or exc}"))
            continue
        for child in children:
            rel = child.relative_to(root)
            if any(part.startswith(".") for part in rel.parts):
                continue
            try:
                _visit(child, rel, options, found, real, linked, skipped)
            except OSError as exc:  # this entry only (a path longer than the system allows, ...)
                skipped.append(Failure(display_path(child), exc.strerror or str(exc)))
    files.extend(sorted(found))


def _visit(
    child: Path,
    rel: Path,
    options: IngestOptions,
    found: list[Path],
    real: collections.deque,
    linked: collections.deque,
    skipped: list[Failure],
) -> None:
    """One folder entry: a folder to walk (by a link: after the others), a file to index, or a dangling link."""
    if child.is_dir():
        if options.recursive:
            (linked if child.is_symlink() else real).append(child)
    elif child.is_file():
        name, rel_text = child.name, rel.as_posix()
        if options.include and not any(_match(name, rel_text, g) for g in options.include):
            return
        if not any(_match(name, rel_text, g) for g in options.exclude):
            found.append(child)
    elif child.is_symlink():
        skipped.append(Failure(display_path(child), "a link to nothing (its target does not exist)"))


def _match(name: str, rel: str, pattern: str) -> bool:
    return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(rel, pattern)


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


def units_for_file(path: Path, options: IngestOptions, metadata: Mapping[str, Any]) -> Iterator[Unit]:
    """The items of one file. Raises :class:`InputError` (or OSError, MemoryError, ...) when it cannot be read."""
    modality = modality_of(path)
    source = os.fspath(path)
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("the file name is not valid UTF-8 (the store keeps names as UTF-8 text): rename it") from None
    base = Record("", source=source, file_name=path.name, metadata=dict(metadata))
    if modality == "image":
        data = _read_file(path, MAX_DOWNLOAD_BYTES)
        digest = hashlib.sha256(data).hexdigest()
        yield Unit(file_content_key(digest), {"image": data}, replace(base, modality="image"))
    elif modality == "text":
        text = _decode_text(_read_file(path, options.max_text_bytes))
        for i, (a, b) in enumerate(chunk_text(text, options.chunk_chars, options.chunk_overlap)):
            chunk = text[a:b]
            key = hashlib.sha256(chunk.encode()).hexdigest()
            record = replace(base, modality="text", text=chunk, chunk=i, span=[a, b])
            yield Unit(f"text:{key}", {"text": chunk}, record)
    elif modality == "video":
        yield from _video_units(path, options, base)
    elif modality == "pdf":
        data = _read_file(path)
        digest = hashlib.sha256(data).hexdigest()
        max_pixels = options.pdf_max_pixels or PDF_MAX_PIXELS
        for page_number, image, text in render_pdf(data, options.pdf_dpi, max_pixels=max_pixels, skip_bad_pages=True):
            record = replace(base, modality="pdf-page", text=text, page=page_number)
            if image is None:  # this page failed (text holds the reason); the others go on
                yield UnitFailure(display_path(record.describe(chunk=False)), text)
                continue
            yield Unit(file_content_key(digest, page=page_number), {"image": image}, record)
    else:
        raise InputError(f"unsupported file type {path.suffix or '(none)'!r}")


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


def _video_units(path: Path, options: IngestOptions, base: Record) -> Iterator[Unit]:
    """A video as one unit, or as fixed-length segments (``video_segment_seconds``)."""
    source = base.source
    digest, stamp = _hash_open_file(path)
    verify = _unchanged(path, stamp)
    duration = video_duration(path)
    step = options.video_segment_seconds
    if step is None or duration <= step:
        record = replace(base, modality="video", duration=duration)
        yield Unit(file_content_key(digest), {"video": source}, record, verify)
        return
    start = 0.0
    while start < duration:
        end = min(duration, start + step)
        if end - start < min(1.0, step):  # a sliver at the end joins nothing; too short to sample
            break
        segment = {"video": source, "video_start": start, "video_end": end}
        record = replace(base, modality="video", segment=[start, end], duration=duration)
        yield Unit(file_content_key(digest, segment=(start, end)), segment, record, verify)
        start = end


def _decode_text(data: bytes) -> str:
    """UTF-8 text; a byte order mark at the start (Windows editors write one) is not part of it."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text") from None


def _read_text(path: Path) -> str:
    return _decode_text(path.read_bytes())


def _render_page(pdf: Any, index: int, dpi: int, max_pixels: int) -> tuple[Image.Image, str]:
    with PDFIUM_LOCK:
        return render_page(pdf, index, dpi, max_pixels, with_text=True)


def video_duration(path: Path) -> float:
    import decord

    from .media.video import native_stderr_to_log

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
    source: str | Path | bytes, dpi: int = PDF_DPI, *, max_pixels: int = PDF_MAX_PIXELS, skip_bad_pages: bool = False
) -> Iterator[tuple[int, Image.Image | None, str]]:
    """(1-based page number, page image, page text) for each page, rendered lazily at :func:`pdf_render_scale`.

    ``source`` is a path or the file's bytes. A page that cannot be rendered raises, or with ``skip_bad_pages``
    comes as ``(page number, None, the reason)`` and the next pages follow."""
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


def unit_for_item(item: Any, metadata: Mapping[str, Any] | None = None) -> Unit:
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
    return Unit(f"item:{key}", item, record)


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


# ---------------------------------------------------------------------------------------------------------------


def dtype_name(dtype: Any) -> str | None:
    """``torch.bfloat16`` -> ``"bfloat16"`` (None stays None)."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


class Indexer:
    """Embeds units in groups and upserts them; skips what the store already holds; attributes every failure to
    its file; keeps each point's list of sources right (changed files lose their old points)."""

    def __init__(
        self,
        embedder: Any,
        store: VectorStore,
        *,
        dim: int | None = None,
        instruction: str | None = None,
        group_size: int = GROUP_SIZE,
        layout: VectorLayout | Mapping[str, Any] | None = None,
    ):
        self.embedder = embedder
        self.store = store
        self._order: dict[int, tuple[int, int]] = {}  # a run's failures -> (file, unit) to list them in file order
        self._stale: list[tuple[_FileState, set[str]]] = []  # a run's outdated points, taken off at its end
        from .ranking import check_matryoshka_dim

        # checked before any collection is created with it (0, negative or over the model's size is an error)
        self.dim = check_matryoshka_dim(dim, embedder.hidden_size) or embedder.hidden_size
        self.instruction = instruction or embedder.default_instruction
        self.group_size = group_size
        name = str(embedder.model_name_or_path)
        local = Path(name).expanduser()
        self.spec = CollectionSpec(
            model=str(local.resolve()) if local.is_dir() else name,  # a folder: loadable from any directory
            dim=self.dim,
            instruction=self.instruction,
            model_id=getattr(embedder, "model_id", None)
            or model_fingerprint(name, getattr(embedder, "revision", None)),
            dtype=dtype_name(getattr(embedder, "dtype", None)),
            # a new collection's layout: as given, or the default for the dimension with the given overrides
            layout=VectorLayout.choose(self.dim, **layout)
            if isinstance(layout, Mapping) and layout
            else layout or None,
        )

    def _open(self) -> CollectionSpec:
        # The collection's own spec: an existing collection keeps the id scheme it was created with.
        mine = self.spec.dtype
        self.spec = self.store.open(self.spec)
        if mine and self.spec.dtype and mine != self.spec.dtype:
            logger.warning(
                "collection %r holds %s vectors; these are computed in %s (--dtype %s for the same numbers)",
                self.store.collection,
                self.spec.dtype,
                mine,
                self.spec.dtype,
            )
        return self.spec

    def _max_pixels(self) -> int:
        media = getattr(self.embedder, "media", None)
        value = getattr(media, "max_pixels", None)
        return int(value) if isinstance(value, int) and value > 0 else PDF_MAX_PIXELS

    def _options(self, options: IngestOptions | None) -> IngestOptions:
        options = options or IngestOptions()
        return replace(options, pdf_max_pixels=self._max_pixels()) if options.pdf_max_pixels is None else options

    @staticmethod
    def _plan(paths: Sequence[str | Path], options: IngestOptions) -> tuple[IndexReport, list[Path]]:
        """The run's report so far (missing paths failed, unsupported files skipped) and the files to index."""
        files, missing, links = discover(paths, options)
        report = IndexReport(files=len(files), failed=list(missing), skipped=list(links))
        supported = []
        for f in files:
            if modality_of(f) is None:
                report.skipped.append(Failure(display_path(f), f"unsupported file type {f.suffix or '(none)'!r}"))
            else:
                supported.append(f)
        return report, supported

    def index_paths(
        self,
        paths: Sequence[str | Path],
        *,
        options: IngestOptions | None = None,
        metadata: Mapping[str, Any] | None = None,
        show_progress_bar: bool = True,
        prune: bool = False,
    ) -> IndexReport:
        """Index files and folders. ``prune``: afterwards, remove the points of files under ``paths`` that no
        longer exist (deleted or renamed files)."""
        options = self._options(options)
        self._open()
        report, supported = self._plan(paths, options)
        missing = list(report.failed)
        costs = [work_estimate(f, options, getattr(self.embedder, "media", None)) for f in supported]
        bar = tqdm(
            total=sum(costs),
            desc="indexing",
            unit="tok",
            unit_scale=True,
            disable=not show_progress_bar,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining} left{postfix}]",
        )
        pending: list[Unit] = []
        self._order: dict[int, tuple[int, int]] = {}
        self._stale: list[tuple[_FileState, set[str]]] = []
        bulk = contextlib.ExitStack()
        if len(supported) >= BULK_LOAD_FILES:  # a server builds its graph once, after the upload
            bulk.enter_context(self.store.bulk_load())
        with bulk:
            self._index_files(supported, costs, options, metadata, report, bar, pending)
        self._remove_outdated(report)
        bar.close()
        # failures in file order (those of reading come as they happen, those of embedding when a group runs)
        failed = report.failed[len(missing) :]
        failed.sort(key=lambda f: self._order.get(id(f), (len(supported), 0)))
        report.failed[len(missing) :] = failed
        if prune:
            self.prune(paths, report)
        if report.indexed:
            self.store.build_index()  # the embedded engine indexes only when asked
        return report

    def _index_files(
        self,
        supported: list[Path],
        costs: list[int],
        options: IngestOptions,
        metadata: Mapping[str, Any] | None,
        report: IndexReport,
        bar: Any,
        pending: list[Unit],
    ) -> None:
        for n, (path, cost) in enumerate(zip(supported, costs), 1):
            state = _FileState(path, os.fspath(path), index=n - 1)
            units = units_for_file(path, options, metadata or {})
            while True:
                try:
                    unit = next(units)
                    pid = "" if isinstance(unit, UnitFailure) else point_id(unit.content_key, self.spec)
                except StopIteration:
                    break
                except Exception as exc:  # this file only: MemoryError, TypeError, UnicodeError, OSError, ...
                    self._fail(state, None, _reason(exc), report, state.units)
                    units.close()
                    break
                if isinstance(unit, UnitFailure):  # one part of the file (a PDF page); the rest goes on
                    self._fail(state, unit.where, unit.reason, report, state.units)
                    state.units += 1
                    continue
                unit.file, unit.seq = state, state.units
                state.units += 1
                state.ids.add(pid)
                state.pending += 1
                pending.append(unit)
                if len(pending) >= self.group_size:  # outside the try: a group's failures are not this file's
                    group, pending = pending, []
                    self._flush(group, report)
            state.done = True
            self._finish(state, report)
            bar.update(cost)
            bar.set_postfix_str(_progress(n, len(supported), report), refresh=False)
        group, pending = pending, []
        self._flush(group, report)
        bar.set_postfix_str(_progress(len(supported), len(supported), report), refresh=False)  # the real counts

    def prune(self, roots: Sequence[str | Path], report: IndexReport | None = None) -> IndexReport:
        """Take the files under ``roots`` that no longer exist off their points (a point no other file holds is
        deleted). Roots that do not exist themselves are left alone (an unmounted disk is not a deletion)."""
        report = report if report is not None else IndexReport()
        if self.store.spec is None:
            self._open()
        bases = [Path(r).expanduser().resolve() for r in roots if Path(r).expanduser().exists()]
        prefixes = [(str(b), str(b).rstrip(os.sep) + os.sep) for b in bases]
        gone: dict[str, None] = {}
        for point in self.store.scroll(with_vectors=False):
            for source in sources_of(point.payload):
                if source in gone or not any(source == b or source.startswith(p) for b, p in prefixes):
                    continue
                if not os.path.lexists(source):
                    gone[source] = None
        for source in sorted(gone):
            _, deleted = self.store.remove_source(source)
            report.pruned += deleted
            report.pruned_files.append(display_path(source))
            logger.info("pruned %s (%d points deleted)", display_path(source), deleted)
        return report

    def index_items(
        self,
        items: Iterable[Any],
        *,
        metadata: Mapping[str, Any] | None = None,
        per_item: Sequence[Mapping[str, Any]] | None = None,
        show_progress_bar: bool = False,
    ) -> tuple[IndexReport, list[str | None]]:
        """Index items given directly; returns the report and each item's point id (None where it failed).

        ``per_item``: metadata of each item (merged over ``metadata``), part of its identity: the same content under
        two dataset ids is two points (:func:`~retrieval_pipeline.evaluate.index_dataset`)."""
        self._open()
        report = IndexReport()
        ids: list[str | None] = []
        units: list[Unit] = []
        for n, item in enumerate(items):
            own = per_item[n] if per_item is not None else None
            try:
                unit = unit_for_item(item, {**(metadata or {}), **(own or {})})
            except InputError as exc:
                report.failed.append(Failure(f"item {n}", exc.reason))
                ids.append(None)
                continue
            if own:
                unit.content_key += "|" + json.dumps(own, sort_keys=True, default=str)
            units.append(unit)
            ids.append(point_id(unit.content_key, self.spec))
        bar = tqdm(total=len(units), desc="indexing", unit="item", disable=not show_progress_bar)
        for start in range(0, len(units), self.group_size):
            self._flush(units[start : start + self.group_size], report)
            bar.update(len(units[start : start + self.group_size]))
        bar.close()
        if report.indexed:
            self.store.build_index()
        stored = self.store.existing({i for i in ids if i is not None})
        return report, [i if i in stored else None for i in ids]

    # ----------------------------------------------------------------------------------------------------------

    def _fail(
        self, state: _FileState | None, where: str | None, reason: str, report: IndexReport, seq: int = 0
    ) -> None:
        label = where or (state.label if state is not None else "?")
        failure = Failure(label, reason)
        report.failed.append(failure)
        logger.warning("skipping %s: %s", label, reason)
        if state is not None:
            state.failed = True
            self._order[id(failure)] = (state.index, seq)

    def _finish(self, state: _FileState, report: IndexReport) -> None:
        """When all of a file's units are stored: its old points that it no longer holds lose it."""
        if state.finished or not state.done or state.pending:
            return
        state.finished = True
        if state.failed:
            return  # what it held before stays until it indexes again (or is pruned)
        held = self.store.points_of_source(state.source)
        stale = set(held) - state.ids
        if stale:  # taken off at the end of the run: a later file may hold the same content (moved, not gone)
            self._stale.append((state, stale))

    def _remove_outdated(self, report: IndexReport) -> None:
        for state, stale in self._stale:
            detached, deleted = self.store.remove_source(state.source, stale)
            report.replaced += detached + deleted
            logger.info("%s changed: %d outdated points removed", state.label, detached + deleted)
        self._stale = []

    def _flush(self, units: list[Unit], report: IndexReport) -> None:
        if not units:
            return
        ids = [point_id(u.content_key, self.spec) for u in units]
        stored = self.store.retrieve(set(ids))
        new: dict[str, list[Unit]] = {}
        grown: dict[str, tuple[list[str], dict[str, Any]]] = {}  # stored points that gain or change a source
        for pid, unit in zip(ids, units):
            if pid in stored:
                report.present += 1
                source = unit.record.source
                # a file's fields for a point are those of its first unit with that content (a chunk repeated in
                # one file keeps its first place, run after run)
                first = unit.file is None or pid not in unit.file.claimed
                if unit.file is not None:
                    unit.file.claimed.add(pid)
                if source:
                    if pid not in grown:
                        held = Record.from_payload(stored[pid])
                        grown[pid] = (held.sources, held.files)
                    sources, files = grown[pid]
                    fields = unit.record.file_fields()
                    if source not in sources or (first and files.get(source) != fields):  # a new file, new metadata
                        grown[pid] = (
                            [*sources, source] if source not in sources else sources,
                            {**files, source: fields},
                        )
            else:
                new.setdefault(pid, []).append(unit)
        for pid, (sources, files) in grown.items():
            self.store.set_payload(pid, sources_update(sources, files))
        order = list(new)
        vectors, failures = embed_isolating(
            self.embedder, [new[pid][0].input for pid in order], instruction=self.instruction, dim=self.dim
        )
        points: list[Point] = []
        for k, pid in enumerate(order):
            group = new[pid]
            reason = failures.get(k)
            payload: dict[str, Any] = {}
            if reason is None:
                try:
                    for unit in group:
                        if unit.verify is not None:
                            unit.verify()
                    payload = _point_payload(group)
                except Exception as exc:
                    reason = _reason(exc)
            if reason is not None:
                for unit in group:
                    self._fail(unit.file, _where(unit, pid), reason, report, unit.seq)
                continue
            for unit in group:
                if unit.file is not None:
                    unit.file.claimed.add(pid)
            points.append(Point(pid, vectors[k].tolist(), payload))
            report.present += len(group) - 1  # the same content twice in this group
        self._upsert(points, new, report)
        for unit in units:
            if unit.file is not None:
                unit.file.pending -= 1
                self._finish(unit.file, report)

    def _upsert(self, points: list[Point], units: Mapping[str, list[Unit]], report: IndexReport) -> None:
        """Store the group; when that fails, file by file, so that only the files whose points cannot be stored
        fail. A store that takes nothing at all is broken: that is raised (exit 4), not blamed on files."""
        if not points:
            return
        try:
            self.store.upsert(points)
            report.indexed += len(points)
            return
        except (StoreError, ValueError) as exc:
            first = exc
        by_file: dict[int, list[Point]] = {}
        for point in points:
            by_file.setdefault(id(units[point.id][0].file), []).append(point)
        errors: list[tuple[list[Point], Exception]] = []
        for group in by_file.values():
            try:
                self.store.upsert(group)
                report.indexed += len(group)
            except (StoreError, ValueError) as exc:
                errors.append((group, exc))
        if len(errors) == len(by_file) and isinstance(first, StoreError):
            raise first
        for group, exc in errors:
            for point in group:
                for unit in units[point.id]:
                    self._fail(unit.file, _where(unit, point.id), _reason(exc), report, unit.seq)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return f"{exc.field}: {exc.reason}" if getattr(exc, "field", None) else exc.reason
    if isinstance(exc, MemoryError):
        return "out of memory while reading or decoding it"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {display_path(text)}" if text else exc.__class__.__name__


def _where(unit: Unit, pid: str) -> str:
    return display_path(unit.record.describe(chunk=False)) if unit.record.source else f"item {pid}"


def _point_payload(units: list[Unit]) -> dict[str, Any]:
    """The stored payload: the first unit's record, with every source that holds this content; checked to be
    storable."""
    first = units[0]
    files: dict[str, dict[str, Any]] = {}
    for u in units:
        if u.record.source:
            files.setdefault(u.record.source, u.record.file_fields())
    sources = list(files)
    record = replace(first.record, sources=sources, files=files)
    record.content_hash = hashlib.sha256(first.content_key.encode()).hexdigest()
    if sources:
        record.source = sources[0]
    payload = record.to_payload()
    try:
        json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InputError(f"its payload cannot be stored as JSON / UTF-8 ({exc})") from None
    return payload


def embed_isolating(embedder: Any, inputs: list[Any], **kwargs: Any) -> tuple[dict[int, Any], dict[int, str]]:
    """Embed ``inputs``; an input that fails is reported (index -> reason) and the others are still embedded.

    An :class:`InputError` that names its input drops that input and retries the rest; any other failure of a group
    (a processor error, ``MemoryError``, ...) falls back to embedding the inputs one by one, so that only the
    inputs that fail on their own are reported."""
    remaining = list(range(len(inputs)))
    failures: dict[int, str] = {}
    while remaining:
        try:
            out = embedder.embed([inputs[i] for i in remaining], **kwargs)
        except InputError as exc:
            if exc.index is not None and 0 <= exc.index < len(remaining):
                failures[remaining.pop(exc.index)] = _reason(exc)
                continue
            error: Exception = exc
        except Exception as exc:  # noqa: BLE001 - attributed below, input by input
            error = exc
        else:
            return {i: out[k] for k, i in enumerate(remaining)}, failures
        if len(remaining) == 1:
            failures[remaining[0]] = _reason(error)
            return {}, failures
        logger.warning("embedding a group of %d failed (%s): embedding them one by one", len(remaining), error)
        vectors: dict[int, Any] = {}
        for i in remaining:
            try:
                vectors[i] = embedder.embed([inputs[i]], **kwargs)[0]
            except Exception as exc:  # noqa: BLE001
                failures[i] = _reason(exc)
        return vectors, failures
    return {}, failures
